"""search.optuna_compat against the pinned Optuna: every private access it wraps still works."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search import optuna_compat as compat
from search.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(study_name="c", storage=open_storage(f"sqlite:///{tmp_path / 'c.db'}", 60))


def test_study_and_trial_ids_and_storage(study):
    trial = study.ask()
    storage = compat.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_study_name_from_id(compat.study_id_of(study)) == "c"
    assert storage.get_trial(compat.trial_id_of(trial)).number == trial.number
    frozen = study.get_trials()[0]
    assert compat.trial_id_of(frozen) == compat.trial_id_of(trial)
    live = compat.live_trial(study, compat.trial_id_of(frozen))
    live.set_user_attr("k", 1)
    assert study.get_trials()[0].user_attrs == {"k": 1}


def test_heartbeat(study, tmp_path):
    assert compat.heartbeat_enabled(compat.storage_of(study))
    assert compat.is_heartbeat_storage(compat.cached_storage(open_storage(f"sqlite:///{tmp_path / 'c.db'}", 60)))
    assert not compat.heartbeat_enabled(open_storage(f"journal:{tmp_path / 'j.journal'}"))
    trial = study.ask()
    with compat.heartbeat_thread(compat.trial_id_of(trial), compat.storage_of(study)):
        pass  # beats once on entering
    assert compat.storage_of(study)._get_stale_trial_ids(compat.study_id_of(study)) == []
    assert set(compat.HEARTBEAT_METHODS) <= set(dir(compat.heartbeat_base()))


def test_storage_methods_cover_the_abstract_interface():
    methods = set(compat.storage_methods())
    assert set(optuna.storages.BaseStorage.__abstractmethods__) <= methods
    assert {"get_all_trials", "set_trial_state_values", "create_new_trial", "get_trial"} <= methods


def test_grid_points_are_the_samplers_grid(tmp_path):
    space = {"b": [1, 2], "a": ["x", "y", "z"]}
    sampler = optuna.samplers.GridSampler(space, seed=3)
    names, points, stored_space = compat.grid_points(sampler)
    assert names == ["a", "b"] and stored_space == {"a": ["x", "y", "z"], "b": [1, 2]}
    assert sorted(points) == sorted((a, b) for a in space["a"] for b in space["b"])
    assert len(set(points)) == 6


def test_optimize_loop_lets_a_sampler_stop_the_study(study):
    with pytest.raises(RuntimeError):
        study.stop()  # outside optimize: refused
    with compat.optimize_loop(study):
        study.stop()
    with pytest.raises(RuntimeError):
        study.stop()  # and refused again after it
    trial = study.ask()
    study.tell(trial, 1.0)
    assert study.get_trials()[-1].state == TrialState.COMPLETE
