"""Storage: printable URLs, journal files, a missing driver, the budget checks of several workers,
reuse of duplicate configurations, and best graphs shared through an artifact store."""

from __future__ import annotations

import sys
import types

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from mase_lite.cli import main
from mase_lite.graph import MaseGraph
from search import optuna_compat as compat
from search.config import RunConfig, SearchError
from search.objectives import BaselineObjective, OverBudget, TrialRecord
from search.space import describe_graph
from search.storage import (admitted, budget_state, is_journal, open_storage, redact, requeue_over_budget)
from search.study import finish, plan_studies, run_search


@pytest.mark.parametrize("url, shown", [
    ("sqlite:///runs/x/optuna.db", "sqlite:///runs/x/optuna.db"),                 # relative
    ("sqlite:////tmp/runs/x/optuna.db", "sqlite:////tmp/runs/x/optuna.db"),       # absolute
    ("postgresql://postgres@127.0.0.1:55432/optuna", "postgresql://postgres@127.0.0.1:55432/optuna"),
    ("postgresql+psycopg://me:s3cr:et@db.example:5432/optuna", "postgresql+psycopg://me:***@db.example:5432/optuna"),
    ("mysql+pymysql://root:pw@localhost/optuna?charset=utf8", "mysql+pymysql://root:***@localhost/optuna?charset=utf8"),
    ("journal:/shared/run/optuna.journal", "journal:/shared/run/optuna.journal"),
    ("journal:rel/optuna.journal", "journal:rel/optuna.journal"),
])
def test_redact_keeps_the_url_and_hides_only_the_password(url, shown):
    assert redact(url) == shown
    assert "s3cr" not in redact(url) and "pw@" not in redact(url)


def test_printed_storage_url_is_not_mangled(tmp_path, capsys, fake_training, monkeypatch):
    """The run's files list shows a non-SQLite storage as its URL (it was a Path, losing a '/')."""
    from search import study as study_mod

    cfg = _tiny(n_trials=1)
    storage, url, specs = study_mod.prepare(cfg, tmp_path / "run", f"journal:{tmp_path / 'j.journal'}", False)
    (tmp_path / "run").mkdir()
    result = finish(storage, url, specs, tmp_path / "run")
    assert result.files["storage"] == f"journal:{tmp_path / 'j.journal'}"
    result = finish(storage, "postgresql://postgres@127.0.0.1:55432/optuna", specs, tmp_path / "run")
    assert str(result.files["storage"]) == "postgresql://postgres@127.0.0.1:55432/optuna"


def test_journal_storage_opens_and_is_shared(tmp_path):
    url = f"journal:{tmp_path / 'sub' / 'optuna.journal'}"
    assert is_journal(url) and not is_journal("sqlite:///x.db")
    a = open_storage(url)
    assert isinstance(a, optuna.storages.JournalStorage)
    optuna.create_study(study_name="s", storage=a).enqueue_trial({"x": 1})
    b = open_storage(url)  # another handle (as another process would open it) sees the study and its queue
    assert optuna.study.get_all_study_names(b) == ["s"]
    assert [t.state for t in optuna.load_study(study_name="s", storage=b).get_trials()] == [TrialState.WAITING]
    with pytest.raises(SearchError, match="give the journal file"):
        open_storage("journal:")


def test_missing_postgres_driver_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if mase-lite[postgres] were not installed
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[search]\nname = "x"\n[space]\nnum_hidden_layers = [1]\nnum_attention_heads = [2]\n'
                   'hidden_size = [8]\nintermediate_size = [16]\n[model]\nvocab_size = 64\nmax_position_embeddings = 32\n'
                   '[data]\nmax_length = 16\nn_val = 8\n')
    for url in ("postgresql+psycopg://u@127.0.0.1:1/db", "postgresql://u@127.0.0.1:1/db"):
        rc = main(["search", "--config", str(cfg), "--out", str(tmp_path / "run"), "--storage", url])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.strip().splitlines() == [
            f"mase-lite search: error: cannot open the study storage {url}: its database driver is not installed; "
            f"install mase-lite[postgres]"]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- budget of several workers


def _trial(study, state, number_attrs=None, params=None, system_attrs=None):
    params = params or {}
    study.add_trial(create_trial(
        state=state, value=0.5 if state == TrialState.COMPLETE else None, params=params,
        distributions={k: CategoricalDistribution([0, 1, 2, 3]) for k in params},
        user_attrs=number_attrs or {}, system_attrs=system_attrs or {}))


@pytest.fixture
def mixed_study():
    """Trials 0..6: complete, interrupted fail (retried by 6), unbuildable pruned, over-budget
    pruned, running (worker elsewhere), plain fail, waiting retry of 1."""
    study = optuna.create_study()
    _trial(study, TrialState.COMPLETE)                                            # 0: counts
    _trial(study, TrialState.FAIL, {"interrupted": True, "worker": "h:1"})        # 1: does not
    _trial(study, TrialState.PRUNED, {"prune_reason": "unbuildable"})             # 2: does not
    _trial(study, TrialState.PRUNED, {"over_budget": True})                       # 3: does not
    _trial(study, TrialState.RUNNING, {"worker": "elsewhere:7"})                  # 4: may
    _trial(study, TrialState.FAIL, {"fail_reason": "nan"})                        # 5: counts
    _trial(study, TrialState.WAITING, {"retry_of": 1})                            # 6: may
    return study


@pytest.mark.parametrize("number, n_trials, expected", [
    # ahead of 7 (a new trial): 0, 4, 5, 6 -> 4 slots taken
    (7, 4, False), (7, 5, True),
    # ahead of 5: 0 and 4 -> 2
    (5, 2, False), (5, 3, True),
    # ahead of 4: only 0 (1, 2, 3 do not count)
    (4, 1, False), (4, 2, True),
    (0, 1, True),
])
def test_admitted_counts_what_may_use_the_budget_below_the_trial(mixed_study, number, n_trials, expected):
    assert admitted(mixed_study, number, n_trials) is expected


def test_budget_state(mixed_study):
    # counted: 0 and 5; running: 4 (another host: without a heartbeat nobody can tell it died)
    assert budget_state(mixed_study, 2) == "done"
    assert budget_state(mixed_study, 4) == "go"            # 2 counted + 1 running < 4
    assert budget_state(mixed_study, 3) == "done"          # full with the remote running one, no heartbeat
    assert budget_state(mixed_study, 4, queue_only=True) == "go"  # a waiting trial is there
    local = optuna.create_study()
    _trial(local, TrialState.RUNNING, {})                   # no worker yet: this host's, just started
    assert budget_state(local, 1) == "wait"
    empty = optuna.create_study()
    assert budget_state(empty, 1) == "go" and budget_state(empty, 1, queue_only=True) == "done"


def test_over_budget_trial_is_dropped_and_its_queued_point_queued_again():
    study = optuna.create_study()
    _trial(study, TrialState.COMPLETE, params={"a": 1})
    study.enqueue_trial({"a": 2}, user_attrs={"grid_point": 5})
    trial = study.ask()  # the queued point, numbered 1: one complete trial is ahead of it
    sys_attrs = compat.storage_of(study).get_trial(compat.trial_id_of(trial)).system_attrs
    assert trial.number == 1 and trial.params == {} and sys_attrs["fixed_params"] == {"a": 2}
    objective = BaselineObjective(types.SimpleNamespace(n_trials=2))
    objective._check_budget(trial, TrialRecord(trial))  # 1 ahead < 2: goes on
    objective = BaselineObjective(types.SimpleNamespace(n_trials=1))
    with pytest.raises(OverBudget, match="over budget: n_trials = 1"):
        objective._check_budget(trial, TrialRecord(trial))
    frozen = compat.storage_of(study).get_trial(compat.trial_id_of(trial))
    assert frozen.user_attrs["over_budget"] is True
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs) for t in waiting] == [
        ({"a": 2}, {"requeue_of": 1, "grid_point": 5})]
    sampled = study.ask()  # pops the requeued point
    assert compat.storage_of(study).get_trial(compat.trial_id_of(sampled)).system_attrs["fixed_params"] == {"a": 2}
    plain = study.ask()   # a sampled trial (no fixed params) is not queued again
    assert requeue_over_budget(study, compat.storage_of(study).get_trial(compat.trial_id_of(plain))) is False


# --------------------------------------------------------------------------- duplicates and artifacts


def _tiny(**search) -> RunConfig:
    return RunConfig.from_dict({
        "search": {"name": "t", "samplers": ["random"], "n_trials": 3, "gc_after_trial": False, **search},
        "space": {"num_hidden_layers": [1], "num_attention_heads": [2], "hidden_size": [8, 12],
                  "intermediate_size": [16]},
        "model": {"vocab_size": 64, "max_position_embeddings": 32},
        "data": {"max_length": 16, "n_val": 8},
        "train": {"progress": False},
    })


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_duplicate_configuration_reuses_the_result(sampler, fake_training, tmp_path):
    """Two architectures, 6 trials: the sampler must repeat; repeats train nothing, count, and copy the result."""
    result = run_search(_tiny(samplers=[sampler], n_trials=6, sampler_options={"tpe_startup_trials": 2}), tmp_path / "r")
    trials = optuna.load_study(study_name="t", storage=open_storage(result.storage_url)).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6
    first_of: dict = {}
    for t in done:
        key = tuple(sorted(t.params.items()))
        if key not in first_of:
            first_of[key] = t
            assert "reused_from" not in t.user_attrs
        else:
            orig = first_of[key]
            assert t.user_attrs["reused_from"] == orig.number
            assert t.values == orig.values and t.user_attrs["accuracy"] == orig.user_attrs["accuracy"]
            assert t.user_attrs["cost"] == orig.user_attrs["cost"]
    trained = [c for c in fake_training.calls if c[2]]
    assert len(trained) == len(first_of) == 2  # one training per distinct configuration
    assert result.summary[0]["trials"]["reused"] == 4 and result.summary[0]["trials"]["complete"] == 6

    again = run_search(_tiny(samplers=[sampler], n_trials=6, reuse_duplicates=False,
                             sampler_options={"tpe_startup_trials": 2}), tmp_path / "r2")
    assert len([c for c in fake_training.calls if c[2]]) == 2 + 6  # switched off: every trial trains
    assert again.summary[0]["trials"]["reused"] == 0


def test_best_graph_of_another_worker_is_fetched_from_the_artifact_store(fake_training, tmp_path):
    shared = tmp_path / "shared-artifacts"
    url = f"journal:{tmp_path / 'optuna.journal'}"
    cfg = _tiny(n_trials=3, artifacts=str(shared))
    a = run_search(cfg, tmp_path / "worker-a", storage_url=url)
    best = a.summary[0]["best"][0]
    assert best["graph_artifact"] and (shared / best["graph_artifact"]).is_file()
    # only the best trial's graph stays in the store
    assert sorted(p.name for p in shared.iterdir()) == [best["graph_artifact"]]

    # another worker, another run folder (another machine: worker a's folder is gone)
    import shutil

    shutil.rmtree(tmp_path / "worker-a")
    storage = open_storage(url)
    from search.study import artifact_store

    b = finish(storage, url, plan_studies(cfg), tmp_path / "worker-b", artifacts=artifact_store(cfg, tmp_path / "worker-b"))
    row = b.summary[0]["best"][0]
    assert row["trial"] == best["trial"]
    assert row["graph_dir"] == str(tmp_path / "worker-b" / "t" / "graphs" / f"trial-{row['trial']:05d}")
    seen = describe_graph(MaseGraph.load(row["graph_dir"]))
    assert (seen["num_hidden_layers"], seen["num_attention_heads"], seen["hidden_size"]) == \
        (row["arch"]["num_hidden_layers"], row["arch"]["num_attention_heads"], row["arch"]["hidden_size"])
    summary_json = (tmp_path / "worker-b" / "summary.json").read_text()
    assert str(tmp_path / "worker-b") in summary_json and "worker-a" not in summary_json


def test_grid_points_are_queued_whole_even_when_a_worker_takes_one_at_once(tmp_path):
    """Each grid point is queued in one write with its grid attributes: a worker that takes a point
    the moment it is queued (here, between two inserts) gets the point's parameters and grid_id, and
    the creator queues every point exactly once without failing."""
    from search.storage import enqueue_grid

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'g.db'}")
    space = {"x": [0, 1, 2]}
    study = optuna.create_study(study_name="s", storage=storage, sampler=optuna.samplers.GridSampler(space, seed=0))
    other = optuna.load_study(study_name="s", storage=storage, sampler=optuna.samplers.GridSampler(space, seed=0))
    taken = []
    add = study.add_trial

    def add_then_pop(trial):
        add(trial)
        if not taken:
            t = other.ask()
            x = t.suggest_categorical("x", [0, 1, 2])
            taken.append((x, storage.get_trial(compat.trial_id_of(t)).system_attrs.get("grid_id")))

    study.add_trial = add_then_pop
    assert enqueue_grid(study, study.sampler) == 3
    waiting = study.get_trials(states=(TrialState.WAITING,))
    points = sorted([taken[0][0]] + [t.system_attrs["fixed_params"]["x"] for t in waiting])
    assert points == [0, 1, 2] and taken[0][1] is not None
    assert all("grid_id" in t.system_attrs and "search_space" in t.system_attrs for t in waiting)


def test_a_worker_joining_a_grid_study_waits_for_its_points(tmp_path):
    from search.storage import wait_for_grid

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'w.db'}")
    with pytest.raises(SearchError, match=r"did not queue its points within 0 s"):
        wait_for_grid(study, timeout_s=0.05, poll_s=0.01)
    study.set_user_attr("grid_queued", 3)
    wait_for_grid(study, timeout_s=0.05)  # queued: returns at once
    legacy = optuna.create_study(study_name="old", storage=f"sqlite:///{tmp_path / 'w.db'}")
    legacy.set_user_attr("fingerprint", {"digest": "x"})
    wait_for_grid(legacy, timeout_s=0.05)  # made before grids were queued: nothing to wait for


def test_over_budget_trials_are_labelled_so_and_a_tied_best_has_its_graph():
    from search.summary import summarize, trial_status

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    dist = {"hidden_size": CategoricalDistribution([8, 16])}
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"hidden_size": 8}, distributions=dist,
                                 user_attrs={"over_budget": True}))
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.8], params={"hidden_size": 8},
                                 distributions=dist, user_attrs={"accuracy": 0.8}))   # tied, finished later, no graph
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.8], params={"hidden_size": 16},
                                 distributions=dist, user_attrs={"accuracy": 0.8, "graph_dir": "g/trial-00002"}))
    trials = study.get_trials()
    assert [trial_status(t) for t in trials] == ["over-budget", "complete", "complete"]
    (summary,) = summarize(storage, ["s"])
    assert [b["trial"] for b in summary["best"]] == [2]
