"""A search process killed with SIGKILL mid-trial resumes with ``--resume``: no completed trial is
lost or repeated, and the interrupted one is run again (fake training; real CLI, storage and kill)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mase_lite.cli import main

TESTS = Path(__file__).resolve().parent

# The worker: fake training that blocks forever in its BLOCK_AT-th training call, after writing MARKER.
WORKER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import _search_helpers as helpers
    from search.lifecycle import set_default_lifecycle

    block_at = int(os.environ["BLOCK_AT"])

    class Blocking(helpers.FakeTraining):
        def train_and_eval(self, graph, splits, cfg, train=True, **kw):
            time.sleep(float(os.environ.get("TRIAL_SLEEP", "0")))
            if train and sum(c[2] for c in self.calls) + 1 == block_at:
                with open(os.environ["MARKER"], "w") as fh:
                    fh.write(str(os.getpid()))
                time.sleep(3600)
            return super().train_and_eval(graph, splits, cfg, train)

    set_default_lifecycle(helpers.fake_lifecycle(Blocking()))
    from mase_lite.cli import main
    sys.exit(main(sys.argv[1:]))
""").format(tests=str(TESTS))

CONFIG = """
[search]
name = "kill"
samplers = ["{sampler}"]
{n_trials}
gc_after_trial = false
heartbeat_interval = 3600
reuse_duplicates = false  # every complete trial trained: the test counts training calls
sampler_options = {{ tpe_startup_trials = 2 }}

[space]
num_hidden_layers = [1]
num_attention_heads = [2, 3]
hidden_size = [8, 12]
intermediate_size = [16]

[model]
vocab_size = 64
max_position_embeddings = 32

[data]
max_length = 16
n_val = 8

[train]
progress = false
"""


def _wait_for(marker: Path, proc: subprocess.Popen, deadline_s: float = 300) -> None:
    """Wait until the worker is inside its blocking trial (fails, not hangs, if it died)."""
    end = time.monotonic() + deadline_s
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}):\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("worker never reached its third training call")
        time.sleep(0.2)


@pytest.mark.parametrize("sampler, n_trials", [("grid", None), ("tpe+nodes", 4)])
def test_sigkill_mid_trial_then_resume(sampler, n_trials, tmp_path, fake_training):  # noqa: F811
    cfg = tmp_path / "kill.toml"
    cfg.write_text(CONFIG.format(sampler=sampler, n_trials=f"n_trials = {n_trials}" if n_trials else ""))
    out = tmp_path / "run"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    marker = tmp_path / "blocked"
    env = {**os.environ, "BLOCK_AT": "3", "MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(script), "search", "--config", str(cfg), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(marker, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-trial: the third trial is RUNNING in storage
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    before = optuna.load_study(study_name="kill", storage=storage).get_trials()
    running = [t for t in before if t.state == TrialState.RUNNING]
    complete = {t.number: t for t in before if t.state == TrialState.COMPLETE}
    assert len(running) == 1 and len(complete) == 2

    assert main(["search", "--config", str(cfg), "--out", str(out), "--resume"]) == 0

    after = optuna.load_study(study_name="kill", storage=storage).get_trials()
    by_number = {t.number: t for t in after}
    # nothing completed before the kill was lost or changed ...
    for n, t in complete.items():
        assert by_number[n].state == TrialState.COMPLETE
        assert (by_number[n].params, by_number[n].values, by_number[n].datetime_complete) == \
            (t.params, t.values, t.datetime_complete)
    # ... nor trained again: the resumed process trained only the missing trials
    trained = [c for c in fake_training.calls if c[2]]
    budget = n_trials or 3  # grid: its 3 buildable combinations
    assert len(trained) == budget - 2
    killed = by_number[running[0].number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["interrupted"]
    assert "interrupted" in killed.user_attrs["fail_reason"]
    done = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(done) == budget
    # the interrupted configuration was run again, once
    assert sum(t.params == killed.params for t in done) == 1
    if sampler == "grid":
        assert len({tuple(sorted(t.params.items())) for t in done}) == budget
    else:
        retry = [t for t in done if t.user_attrs.get("retry_of") == killed.number]
        assert len(retry) == 1 and retry[0].params == killed.params


def test_two_processes_share_one_study(tmp_path):
    """``--storage``/run folder shared by two ``mase-lite search`` processes: the second joins with
    ``--resume``; together they run the study's budget, each trial once, and both did work."""
    cfg = tmp_path / "two.toml"
    cfg.write_text(CONFIG.format(sampler="random", n_trials="n_trials = 6"))
    out = tmp_path / "run"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "BLOCK_AT": "1000", "MARKER": str(tmp_path / "never"), "TRIAL_SLEEP": "0.5"}
    args = [sys.executable, str(script), "search", "--config", str(cfg), "--out", str(out)]
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    storage_url = f"sqlite:///{out / 'optuna.db'}"
    end = time.monotonic() + 300
    db = out / "optuna.db"
    while True:  # join once the first process has created the study and started a trial
        if first.poll() is not None:
            raise AssertionError(f"first worker exited early:\n{first.stderr.read().decode()[-3000:]}")
        if db.exists():  # read-only: opening it through Optuna here would race the worker's schema creation
            try:
                with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                    if con.execute("SELECT count(*) FROM trials").fetchone()[0]:
                        break
            except sqlite3.OperationalError:  # schema not created yet
                pass
        assert time.monotonic() < end, "the first worker never started a trial"
        time.sleep(0.2)
    second = subprocess.Popen(args + ["--resume"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for proc in (first, second):
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
        proc.stderr.close()
    trials = optuna.load_study(study_name="kill", storage=storage_url).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 6
    assert len({t.number for t in done}) == len(done)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2, workers
