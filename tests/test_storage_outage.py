"""A storage outage mid-run (issue #22, item 9): workers retry storage calls for
``search.storage_retry_s``, a finished trial is told once the storage is back, and a storage that
stays down ends the worker with one error line (exit 2), its finished trial kept in
``<run dir>/pending/`` for ``--resume``.

PostgreSQL: a server of the test's own (``.ci/postgres.sh``, never CI's shared one), stopped right
after a ``mase-lite search`` worker (in this process) trained a trial, and started again or not.
Journal: an ``OSError`` injected into Optuna's journal file backend. Training is fake
(``_search_helpers``)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from _search_helpers import FakeTraining, fake_lifecycle
from conftest import REPO, in_ci
from mase_lite.cli import main
from search.config import RunConfig
from search.lifecycle import set_default_lifecycle
from search.pending import Result, deliver
from search.storage import StorageUnavailable, enqueue_fixed, n_counted, open_storage
from search.study import run_search

PG = ["bash", str(REPO / ".ci" / "postgres.sh")]

SPACE = {"num_hidden_layers": [1], "num_attention_heads": [2], "hidden_size": [8], "intermediate_size": [16]}
SEARCH = {"name": "outage", "samplers": ["random+nodes"], "n_trials": 4, "gc_after_trial": False,
          "save_graphs": False, "reuse_duplicates": False}


def _cfg(**search) -> RunConfig:
    return RunConfig.from_dict({"search": {**SEARCH, **search}, "space": SPACE,
                                "model": {"vocab_size": 64, "max_position_embeddings": 32},
                                "data": {"max_length": 16, "n_val": 8}, "train": {"progress": False}})


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="outage", storage=open_storage(url, heartbeat_interval=None))


# --------------------------------------------------------------------------- the fault, mid-trial


class Outage:
    """A storage outage that starts when the fake trainer has finished its ``at``-th training call
    (``down()``) and ends ``for_s`` seconds later (``up()``; None: it does not end by itself)."""

    def __init__(self, at: int, for_s: float | None, down, up):
        self.at, self.for_s, self.down, self.up = at, for_s, down, up

    def trainer(self) -> FakeTraining:
        outage = self

        class Faulty(FakeTraining):
            def train_and_eval(self, graph, splits, cfg, train=True, **kw):
                out = super().train_and_eval(graph, splits, cfg, train, **kw)
                if train and sum(c[2] for c in self.calls) == outage.at:
                    outage.down()
                    if outage.for_s is not None:
                        threading.Timer(outage.for_s, outage.up).start()
                return out
        return Faulty()


def _cli(tmp_path: Path, url: str, retry_s: float, resume: bool = False) -> list[str]:
    """``mase-lite search`` arguments for the test's study on ``url`` (run folder ``tmp_path/run``)."""
    cfg = tmp_path / "outage.toml"
    cfg.write_text(f"[search]\nstorage_retry_s = {retry_s}\n")
    return ["search", "--config", str(cfg), "--out", str(tmp_path / "run"), "--storage", url,
            *(["--resume"] if resume else []),
            *[f"--set=search.{k}={json.dumps(v)}" for k, v in SEARCH.items()],
            *[f"--set=space.{k}={json.dumps(v)}" for k, v in SPACE.items()],
            "--set=model.vocab_size=64", "--set=model.max_position_embeddings=32", "--set=data.max_length=16",
            "--set=data.n_val=8", "--set=train.progress=false"]


def _search(args: list[str], fake: FakeTraining) -> int:
    """``mase-lite search ARGS`` in this process with the fake trainer; its exit status."""
    previous = set_default_lifecycle(fake_lifecycle(fake))
    try:
        return main(args)
    finally:
        set_default_lifecycle(previous)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def _assert_exact(url: str, fake: FakeTraining, n: int = 4) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``n`` trials, all complete (none failed, none extra), each trained once."""
    trials = _study(url).get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: n}
    assert sum(c[2] for c in fake.calls) == n  # the outage trial was not trained again
    for t in trials:
        assert t.values == [t.user_attrs["accuracy"]] and "timings" in t.user_attrs
    return trials


# --------------------------------------------------------------------------- PostgreSQL, a server of the test's own


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test only (``.ci/postgres.sh start``), which the test stops and
    starts again (``pause`` / ``resume``); ``(url, folder)``. Skips where PostgreSQL or psycopg is
    missing, except in CI (a failure there)."""
    try:
        import psycopg  # noqa: F401
        why = None if (shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))) \
            else "PostgreSQL is not installed (no initdb)"
    except ImportError:
        why = "the psycopg driver is not installed (pip install mase-lite[postgres])"
    if why and in_ci():
        pytest.fail(f"{why}; in CI ($CI is set) the outage tests must run, not skip", pytrace=False)
    if why:
        pytest.skip(why)
    proc = subprocess.run([*PG, "start"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        yield env["MASE_LITE_TEST_POSTGRES"], env["MASE_LITE_PG_DIR"]
    finally:
        subprocess.run([*PG, "stop", env["MASE_LITE_PG_DIR"]], capture_output=True, timeout=120)


def _pg(action: str, folder: str) -> None:
    proc = subprocess.run([*PG, action, folder], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_postgres_restarted_mid_trial_the_worker_goes_on(own_postgres, tmp_path, capsys, caplog):
    """The server stops while trial 1 trains and is started again 2 s later: the worker waits, tells
    the trial once, completes the budget exactly and exits 0 without a traceback."""
    url, folder = own_postgres
    fake = Outage(2, 2.0, lambda: _pg("pause", folder), lambda: _pg("resume", folder)).trainer()
    with caplog.at_level(logging.WARNING, logger="search.storage_retry"):
        assert _search(_cli(tmp_path, url, retry_s=120), fake) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err
    assert "retrying for up to 120 s (search.storage_retry_s)" in caplog.text and "is back after" in caplog.text
    _assert_exact(url, fake)
    assert not list((tmp_path / "run").glob("pending/*.json"))


def test_postgres_staying_down_exits_2_and_resume_stores_the_finished_trial(own_postgres, tmp_path, capsys):
    """The server stays down past storage_retry_s = 2 after trial 1 trained: one error line naming the
    setting, exit 2, the finished trial kept in the run's pending folder; with the server back,
    --resume tells it (not trained again) and completes the budget exactly."""
    url, folder = own_postgres
    fake = Outage(2, None, lambda: _pg("pause", folder), None).trainer()
    assert _search(_cli(tmp_path, url, retry_s=2), fake) == 2
    line = _one_error_line(capsys.readouterr().err)
    pending = list((tmp_path / "run" / "pending").glob("outage.trial-*.json"))
    assert len(pending) == 1
    assert line.startswith(f"mase-lite search: error: the study storage {url} stayed unreachable for 2 s")
    assert "Connection refused" in line and "search.storage_retry_s" in line and str(pending[0]) in line
    kept = json.loads(pending[0].read_text())
    assert kept["number"] == 1 and len(kept["values"]) == 1

    _pg("resume", folder)
    assert _search(_cli(tmp_path, url, retry_s=2, resume=True), fake) == 0
    trials = _assert_exact(url, fake)
    assert trials[1].values == kept["values"]
    assert not list((tmp_path / "run" / "pending").glob("*.json"))


# --------------------------------------------------------------------------- journal, OSError injected


class JournalFault:
    """OSError (EIO) from every call of Optuna's journal file backend while ``failing``."""

    def __init__(self, monkeypatch):
        from optuna.storages.journal import JournalFileBackend

        self.failing, self.failed = False, 0
        for name in ("append_logs", "read_logs"):
            monkeypatch.setattr(JournalFileBackend, name, self._faulty(getattr(JournalFileBackend, name)))

    def _faulty(self, original):
        def call(backend, *args, **kwargs):
            if self.failing:
                self.failed += 1
                raise OSError(5, "Input/output error")
            return original(backend, *args, **kwargs)
        return call

    def outage(self, at: int, for_s: float | None) -> Outage:
        return Outage(at, for_s, lambda: setattr(self, "failing", True), lambda: setattr(self, "failing", False))


def test_journal_file_system_failing_briefly_the_worker_goes_on(tmp_path, monkeypatch, caplog):
    """The journal file fails with EIO for 1.5 s after trial 1 trained: its storage calls are retried,
    the trial is told once and the budget completed exactly."""
    fault = JournalFault(monkeypatch)
    fake = fault.outage(2, 1.5).trainer()
    url = f"journal:{tmp_path / 'optuna.journal'}"
    with caplog.at_level(logging.WARNING, logger="search.storage_retry"):
        run_search(_cfg(storage_retry_s=30), tmp_path / "run", url, lifecycle=fake_lifecycle(fake))
    assert fault.failed > 0 and "is back after" in caplog.text
    _assert_exact(url, fake)


def test_journal_staying_down_exits_2_and_resume_stores_the_finished_trial(tmp_path, monkeypatch, capsys):
    """The journal keeps failing past storage_retry_s: `mase-lite search` prints one line and exits 2,
    the finished trial kept; --resume (the file system back) tells it and completes the budget."""
    fault = JournalFault(monkeypatch)
    fake = fault.outage(2, None).trainer()
    url = f"journal:{tmp_path / 'optuna.journal'}"
    assert _search(_cli(tmp_path, url, retry_s=0.5), fake) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "stayed unreachable for 0.5 s" in line and "OSError: [Errno 5] Input/output error" in line
    kept = json.loads(next((tmp_path / "run" / "pending").glob("outage.trial-*.json")).read_text())
    fault.failing = False
    assert _search(_cli(tmp_path, url, retry_s=0.5, resume=True), fake) == 0
    trials = _assert_exact(url, fake)
    assert trials[kept["number"]].values == kept["values"]
    assert not list((tmp_path / "run" / "pending").glob("*.json"))


# --------------------------------------------------------------------------- a result whose trial was failed


def _failed_and_requeued(tmp_path: Path, completed_meanwhile: int = 0) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    """A study whose trial 0 was failed by another worker and queued again (``retry_of``),
    after ``completed_meanwhile`` other trials completed."""
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}", None),
                                direction="maximize")
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2, 3])})
    trial.set_user_attr("accuracy", 0.7)
    for _ in range(completed_meanwhile):
        study.tell(study.ask({"x": optuna.distributions.CategoricalDistribution([1, 2, 3])}), 0.5)
    study.tell(trial, state=TrialState.FAIL)
    failed = study.get_trials()[0]
    enqueue_fixed(study, failed.params, {"retry_of": failed.number}, like=failed)
    return study, failed


def test_a_kept_result_goes_into_the_queued_retry_of_its_failed_trial(tmp_path):
    study, failed = _failed_and_requeued(tmp_path)
    told = deliver(study, Result(failed.number, [0.7], {"cost": {"size": 1}}), n_trials=3)
    assert told is not None and told.number == 1 and told.state == TrialState.COMPLETE
    retry = study.get_trials()[1]
    assert retry.state == TrialState.COMPLETE and retry.values == [0.7] and retry.params == failed.params
    assert retry.user_attrs["recovered_from"] == 0 and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["accuracy"] == 0.7 and retry.user_attrs["cost"] == {"size": 1}
    assert n_counted(study) == 1
    assert deliver(study, Result(failed.number, [0.7]), n_trials=3) is None  # its retry ran: dropped


def test_a_kept_result_outside_the_budget_is_dropped_as_over_budget(tmp_path):
    study, failed = _failed_and_requeued(tmp_path, completed_meanwhile=2)  # they fill the budget (2)
    told = deliver(study, Result(failed.number, [0.7]), n_trials=2)
    assert told.number == 3 and told.state == TrialState.PRUNED and told.user_attrs["over_budget"]
    assert n_counted(study) == 2


def test_without_retry_a_down_storage_is_still_one_error(tmp_path, monkeypatch):
    """storage_retry_s = 0: no waiting, but still StorageUnavailable (one line), and the result kept."""
    fault = JournalFault(monkeypatch)
    with pytest.raises(StorageUnavailable, match="stayed unreachable for 0 s"):
        run_search(_cfg(storage_retry_s=0), tmp_path / "run", f"journal:{tmp_path / 'j.journal'}",
                   lifecycle=fake_lifecycle(fault.outage(1, None).trainer()))
    assert len(list((tmp_path / "run" / "pending").glob("*.json"))) == 1


# --------------------------------------------------------------------------- the retrying storage


class _Flaky(optuna.storages.InMemoryStorage):
    """An in-memory storage whose calls fail with ``error`` the next ``fails`` times; ``apply_first``:
    the failing ``set_trial_state_values`` is applied before it fails (a lost acknowledgement)."""

    def __init__(self):
        super().__init__()
        self.fails, self.error, self.apply_first, self.calls = 0, OSError(5, "Input/output error"), False, 0

    def _maybe_fail(self, apply):
        self.calls += 1
        if self.fails:
            self.fails -= 1
            if self.apply_first:
                apply()
            raise self.error
        return apply()

    def set_trial_state_values(self, trial_id, state, values=None):
        parent = super().set_trial_state_values
        return self._maybe_fail(lambda: parent(trial_id, state, values))

    def get_all_trials(self, *args, **kwargs):
        parent = super().get_all_trials
        return self._maybe_fail(lambda: parent(*args, **kwargs))


def test_transient_failures_are_retried_and_others_raised_at_once(monkeypatch):
    from search import storage_retry

    monkeypatch.setattr(storage_retry, "FIRST_DELAY_S", 0.01)
    inner = _Flaky()
    storage = storage_retry.with_retry(inner, 5, "mem")
    study = optuna.create_study(storage=storage)
    inner.fails = 3
    assert study.get_trials() == [] and inner.calls == 4  # 3 failures, then the answer
    with pytest.raises(KeyError):  # no such study: not retried
        storage.get_study_name_from_id(99)
    trial = study.ask()
    inner.fails, inner.apply_first = 1, True  # the tell was stored, its acknowledgement lost
    assert study.tell(trial, 1.0).state == TrialState.COMPLETE
    inner.fails, inner.error = 1, ValueError("not a storage outage")
    with pytest.raises(ValueError, match="not a storage outage"):
        study.get_trials()


def test_an_outage_past_the_retry_time_is_one_line_and_the_next_call_tries_once(monkeypatch):
    from search import storage_retry

    monkeypatch.setattr(storage_retry, "FIRST_DELAY_S", 0.01)
    inner = _Flaky()
    storage = storage_retry.with_retry(inner, 0.2, "journal:/x/optuna.journal")
    study = optuna.create_study(storage=storage)
    inner.fails = 10**6
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        study.get_trials()
    assert 0.2 <= time.monotonic() - t0 < 5
    assert str(info.value).startswith("the study storage journal:/x/optuna.journal stayed unreachable for 0.2 s "
                                      "(get_all_trials: OSError: [Errno 5] Input/output error)")
    calls = inner.calls
    with pytest.raises(StorageUnavailable):  # given up already: one try, no second wait
        study.get_trials()
    assert inner.calls == calls + 1
    inner.fails = 0
    assert study.get_trials() == []


def test_the_retrying_storage_keeps_the_heartbeat(tmp_path):
    from search import optuna_compat as compat

    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert compat.heartbeat_enabled(open_storage(url, heartbeat_interval=60, retry_s=5))
    assert not compat.heartbeat_enabled(open_storage(url, heartbeat_interval=None, retry_s=5))
    assert open_storage(url, heartbeat_interval=60, retry_s=5).engine is not None  # the RDB storage's own attributes


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf")])
def test_storage_retry_s_must_be_finite_and_not_negative(value):
    from mase_lite.errors import ConfigError

    with pytest.raises(ConfigError, match="storage_retry_s"):
        _cfg(storage_retry_s=value)
