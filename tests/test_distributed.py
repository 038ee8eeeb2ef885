"""Several real ``mase-lite search`` processes on one study, through PostgreSQL (a real server:
``postgres_url``, see ``tests/conftest.py``) and through a journal file: exact trial counts, a grid
evaluated once per point, a worker killed with SIGKILL mid-trial (failed by the heartbeat or, on
this host, by its missing process, and run again while the others go on), complete summaries.
Training is fake (``_search_helpers``), each training call sleeping ``TRIAL_SLEEP`` seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.storage import open_storage

TESTS = Path(__file__).resolve().parent

# A worker: fake training sleeping TRIAL_SLEEP s a call; with BLOCK_AT it writes MARKER and hangs in
# that training call (to be killed); FAKE_HOST makes it record another host (only a heartbeat can
# then tell that it died).
WORKER = textwrap.dedent("""
    import functools, hashlib, json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import _search_helpers as helpers
    import search.objectives as objectives
    from mase_lite.graph import MaseGraph
    from search.lifecycle import set_default_lifecycle

    block_at = int(os.environ.get("BLOCK_AT", "0"))
    if os.environ.get("FAKE_HOST"):
        objectives.worker_id = lambda: os.environ["FAKE_HOST"] + ":" + str(os.getpid())

    class Slow(helpers.FakeTraining):
        def train_and_eval(self, graph, splits, cfg, train=True, **kw):
            if train and block_at and sum(c[2] for c in self.calls) + 1 == block_at:
                with open(os.environ["MARKER"], "w") as fh:
                    fh.write(str(os.getpid()))
                time.sleep(3600)
            time.sleep(float(os.environ.get("TRIAL_SLEEP", "0")))
            out = super().train_and_eval(graph, splits, cfg, train, **kw)
            if kw.get("split", "val") != "test":  # the held-out evaluation of a best trial trains nothing
                with open(os.environ["CALLS"], "a") as fh:
                    fh.write(f"{{os.getpid()}}\\n")
            return out

    @functools.lru_cache(maxsize=None)
    def traced(config_json):  # traced once for all workers (GRAPH_CACHE), loaded once per process
        path = Path(os.environ["GRAPH_CACHE"]) / hashlib.sha256(config_json.encode()).hexdigest()[:16]
        if not path.is_dir():
            graph = helpers._traced(config_json, None)
            part = path.with_name(path.name + f".{{os.getpid()}}")
            graph.save(part)
            try:
                part.rename(path)
            except OSError:
                pass
            return graph
        return MaseGraph.load(path)

    class Cached(helpers.FakeLifecycle):
        def build(self, config):
            return traced(json.dumps(config.to_dict(), sort_keys=True)).copy()

    set_default_lifecycle(Cached(trainer=Slow()))
    from mase_lite.cli import main
    sys.exit(main(sys.argv[1:]))
""").format(tests=str(TESTS))

CONFIG = """
[search]
name = "dist"
samplers = ["{sampler}"]
{n_trials}
gc_after_trial = false
save_graphs = {save_graphs}
heartbeat_interval = {heartbeat}  # the kill test: a dead worker is found after 2 x this
reuse_duplicates = false  # every complete trial trains: the test counts training calls

[space]  # grid: 4 points; random+nodes: one architecture (traced once), 2^5 identity choices
num_hidden_layers = [1]
num_attention_heads = {heads}
hidden_size = [8]
intermediate_size = {inter}

[model]
vocab_size = 64
max_position_embeddings = 32

[data]
max_length = 16
n_val = 8

[train]
progress = false
"""


def _setup(tmp_path: Path, sampler: str, n_trials: int | None, save_graphs: bool = False) -> Path:
    cfg = tmp_path / "dist.toml"
    grid = sampler == "grid"
    cfg.write_text(CONFIG.format(sampler=sampler, n_trials=f"n_trials = {n_trials}" if n_trials else "",
                                 save_graphs=str(save_graphs).lower(), heads="[1, 2]" if grid else "[2]",
                                 inter="[16, 32]" if grid else "[16]", heartbeat=3 if not grid else 60))
    (tmp_path / "worker.py").write_text(WORKER)
    return cfg


def _start(tmp_path: Path, cfg: Path, storage: str, i: int, resume: bool, **env: str) -> subprocess.Popen:
    args = [sys.executable, str(tmp_path / "worker.py"), "search", "--config", str(cfg),
            "--out", str(tmp_path / f"run{i}"), "--storage", storage, *(["--resume"] if resume else [])]
    full = {**os.environ, "TRIAL_SLEEP": "0.3", "CALLS": str(tmp_path / "calls"),
            "GRAPH_CACHE": str(tmp_path / "graphs"), **env}
    (tmp_path / "graphs").mkdir(exist_ok=True)
    return subprocess.Popen(args, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_trials(storage: str, proc: subprocess.Popen, n: int = 1, deadline_s: float = 300) -> None:
    """Wait until the study exists and has ``n`` trials (the first worker made it; others may join)."""
    end = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"first worker exited early ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        try:
            study = optuna.load_study(study_name="dist", storage=open_storage(storage, heartbeat_interval=None))
            if len(study.get_trials(deepcopy=False)) >= n and "fingerprint" in study.user_attrs:
                return
        except KeyError:
            pass
        assert time.monotonic() < end, "the first worker never started a trial"
        time.sleep(0.2)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def _study(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="dist", storage=open_storage(storage, heartbeat_interval=None))


@pytest.fixture(params=["postgres", "journal"])
def storage_url(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"journal:{tmp_path / 'shared' / 'optuna.journal'}"


def test_three_workers_exact_count_and_a_killed_worker(storage_url, tmp_path):
    """4 workers (one killed with SIGKILL in its first trial, while the others work), n_trials 8: exactly 8 complete trials,
    8 training calls that finished, the killed trial failed as interrupted and run again, every
    worker's summary consistent, the last one complete."""
    n = 8
    cfg = _setup(tmp_path, "random+nodes", n)
    marker = tmp_path / "blocked"
    # On PostgreSQL the victim claims another host, so only the heartbeat can find it dead; on the
    # journal (no heartbeat) the others find its process gone on this host.
    victim_env = {"BLOCK_AT": "1", "MARKER": str(marker)}
    if storage_url.startswith("postgresql"):
        victim_env["FAKE_HOST"] = "elsewhere"
    # the victim makes the study and hangs in its first trial; the others join and work meanwhile
    victim = _start(tmp_path, cfg, storage_url, 1, resume=False, **victim_env)
    end = time.monotonic() + 300
    while not marker.exists():
        assert victim.poll() is None, victim.stderr.read()[-3000:]
        assert time.monotonic() < end, "the victim never reached its blocking trial"
        time.sleep(0.1)
    others = [_start(tmp_path, cfg, storage_url, i, resume=True) for i in (0, 2, 3)]
    while not any(t.state == TrialState.COMPLETE for t in _study(storage_url).get_trials(deepcopy=False)):
        assert all(p.poll() is None for p in others) and time.monotonic() < end
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)  # mid-trial: its trial stays RUNNING in storage
    victim.communicate()
    outs = _finish(others)

    trials = _study(storage_url).get_trials()
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == n, states
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].user_attrs["worker"].split(":")[1] == marker.read_text()
    assert killed[0].user_attrs.get("interrupted") or any(t.user_attrs.get("retry_of") == killed[0].number for t in trials)
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed[0].params
    # no trial trained beyond the budget: finished training calls == complete trials (+ dropped over-budget ones)
    calls = (tmp_path / "calls").read_text().split()
    dropped = [t for t in trials if t.user_attrs.get("over_budget")]
    assert len(calls) == n + sum("accuracy_trained" in t.user_attrs for t in dropped)
    assert len({t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}) >= 2
    # the summary of the worker that finished last holds every trial
    summaries = [json.loads((tmp_path / f"run{i}" / "summary.json").read_text())[0] for i in (0, 2, 3)]
    last = max(summaries, key=lambda s: s["trials"]["complete"])
    assert last["trials"]["complete"] == n and last["trials"]["running"] == 0
    assert last["trials"]["interrupted"] == 1
    best = max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert last["best"][0]["accuracy"] == pytest.approx(best)
    assert all("run folder" in o for o in outs)


def test_grid_is_evaluated_once_per_point_across_workers(storage_url, tmp_path):
    """3 workers on a grid of 4 points (n_trials = the grid): every point exactly once."""
    cfg = _setup(tmp_path, "grid", None)
    first = _start(tmp_path, cfg, storage_url, 0, resume=False)
    _wait_for_trials(storage_url, first)
    _finish([first, *[_start(tmp_path, cfg, storage_url, i, resume=True) for i in (1, 2)]])
    trials = _study(storage_url).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    points = Counter(tuple(sorted(t.params.items())) for t in done)
    assert len(done) == 4 and len(points) == 4 and set(points.values()) == {1}
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len((tmp_path / "calls").read_text().split()) == 4 + sum(
        "accuracy_trained" in t.user_attrs for t in trials if t.user_attrs.get("over_budget"))


def test_journal_killed_worker_is_rerun_by_resume(tmp_path):
    """Journal storage has no heartbeat: the sole worker killed mid-trial leaves its trial RUNNING;
    the next ``--resume`` fails it as interrupted, runs its configuration again and completes the budget."""
    n = 4
    cfg = _setup(tmp_path, "random+nodes", n)
    url = f"journal:{tmp_path / 'optuna.journal'}"
    marker = tmp_path / "blocked"
    proc = _start(tmp_path, cfg, url, 0, resume=False, BLOCK_AT="3", MARKER=str(marker))
    end = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < end
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    before = _study(url).get_trials()
    assert Counter(t.state for t in before) == {TrialState.COMPLETE: 2, TrialState.RUNNING: 1}
    running = next(t for t in before if t.state == TrialState.RUNNING)
    _finish([_start(tmp_path, cfg, url, 0, resume=True)])
    after = {t.number: t for t in _study(url).get_trials()}
    assert after[running.number].state == TrialState.FAIL and after[running.number].user_attrs["interrupted"]
    done = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert len(done) == n
    assert [t.params for t in done if t.user_attrs.get("retry_of") == running.number] == [running.params]
