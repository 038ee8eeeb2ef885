"""search.optuna_compat against the pinned Optuna: every private access it wraps still works, and
no private Optuna access is left outside it."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_enqueue_writes_what_enqueue_trial_and_the_grid_sampler_read():
    study = optuna.create_study()
    compat.enqueue(study, {"x": 1}, {"retry_of": 0})  # no grid point: Optuna's enqueue_trial
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert compat.fixed_params_of(queued) == {"x": 1} and queued.user_attrs == {"retry_of": 0}
    assert compat.grid_attrs_of(queued) == {}
    trial = study.ask()
    assert trial.suggest_categorical("x", [0, 1, 2]) == 1
    study.tell(trial, 1.0)
    assert compat.fixed_params_of(study.get_trials()[0]) == {"x": 1}
    sampled = study.ask()
    assert compat.fixed_params_of(study.get_trials()[-1]) is None and sampled.number == 1


def test_a_queued_grid_point_is_the_grid_samplers_point():
    space = {"x": [0, 1, 2]}
    sampler = optuna.samplers.GridSampler(space, seed=0)
    study = optuna.create_study(sampler=sampler)
    names, points, stored_space = compat.grid_points(sampler)
    compat.enqueue(study, {"x": points[2][0]}, {}, grid=compat.grid_attrs(2, stored_space))
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert compat.grid_attrs_of(queued) == {"grid_id": 2, "search_space": stored_space}
    trial = study.ask()  # GridSampler.before_trial keeps the queued grid_id
    assert trial.suggest_categorical("x", [0, 1, 2]) == points[2][0]
    study.tell(trial, 0.0)
    assert compat.grid_attrs_of(study.get_trials()[0]) == {"grid_id": 2, "search_space": stored_space}
    sampled = study.ask()  # the sampler's own trial gets a grid point of its own
    assert compat.grid_attrs_of(study.get_trials()[-1])["search_space"] == stored_space
    assert sampled.suggest_categorical("x", [0, 1, 2]) in (0, 1, 2)


#: Private Optuna names and attributes (and the system attributes of its queue and grid sampler).
PRIVATE = re.compile(r"\._storage\b|\._trial_id\b|\._study_id\b|_all_grids|_thread_local|\._param_names|"
                     r"optuna\.[a-z_.]*\._|from optuna\.[a-z_.]*\._|\"fixed_params\"|\"grid_id\"")
#: Allowed outside the module: a logger's name (at worst its messages are no longer quieted).
ALLOWED = ('logging.getLogger("optuna.study._optimize")',)


def test_no_private_optuna_access_outside_the_compat_module():
    root = Path(__file__).resolve().parents[1]
    found = []
    for folder in ("search", "mase_lite", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.name == "optuna_compat.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE.search(line) and not any(a in line for a in ALLOWED):
                    found.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)
