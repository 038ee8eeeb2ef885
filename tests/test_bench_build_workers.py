"""``bench build`` by two worker processes on one storage (the same command run twice): the study
runner gives each (architecture, seed) row to exactly one of them. Training is fake
(``_search_helpers``), each call sleeping a little, and no trial trains before both workers are up,
so their trials overlap."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search import optuna_compat as compat
from search.storage import default_storage_url, open_storage

TESTS = Path(__file__).resolve().parent

# A worker: fake training that waits until both workers are up (a file each in READY) and writes
# STARTED when its first trial trains (the study exists then).
WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import _search_helpers as helpers
    from search.bench.build import build_table
    from search.lifecycle import set_default_lifecycle
    from test_bench_build import bench_config

    ready = Path(os.environ["READY"])

    class Slow(helpers.FakeTraining):
        def train_and_eval(self, graph, splits, cfg, train=True, **kw):
            Path(os.environ["STARTED"]).touch()
            deadline = time.monotonic() + 120
            while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            return super().train_and_eval(graph, splits, cfg, train, **kw)

    set_default_lifecycle(helpers.fake_lifecycle(Slow()))
    (ready / str(os.getpid())).touch()
    result = build_table(bench_config(), sys.argv[1], seeds=[0, 1, 2])
    print(result.rows_done, result.rows_total, result.table is not None)
""").format(tests=str(TESTS))


def _start(tmp_path: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "READY": str(tmp_path / "ready"), "STARTED": str(tmp_path / "started")}
    return subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_a_trial(started: Path, proc: subprocess.Popen, deadline_s: float = 300) -> None:
    """Wait until the first worker has made the study and started a trial (it then waits for the second)."""
    end = time.monotonic() + deadline_s
    while not started.exists():
        assert proc.poll() is None, f"the first worker exited early:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < end, "the first worker never started a trial"
        time.sleep(0.1)


def test_two_build_workers_train_each_row_once(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "ready").mkdir()
    out = tmp_path / "table"
    first = _start(tmp_path, out)
    _wait_for_a_trial(tmp_path / "started", first)  # one process makes the sqlite file and the study; one joins
    procs = [first, _start(tmp_path, out)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(stdout.split())
    # 3 buildable architectures x 3 seeds = 9 rows; the grid has 12 points (hidden 8 with 3 heads cannot be built)
    assert outs == [["9", "9", "True"]] * 2
    storage = open_storage(default_storage_url(out), heartbeat_interval=None)
    trials = optuna.load_study(study_name="t-table", storage=storage).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    rows = Counter(tuple(sorted(t.params.items())) for t in done)
    assert len(done) == 9 and len(rows) == 9 and set(rows.values()) == {1}
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    # points left queued once the budget was used can only be unbuildable ones (they would cost nothing)
    left = [compat.fixed_params_of(t) for t in trials if t.state == TrialState.WAITING]
    assert all((p["hidden_size"], p["num_attention_heads"]) == (8, 3) for p in left)
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers built rows
    assert len((out / "table.csv").read_text().splitlines()) == 1 + 9
