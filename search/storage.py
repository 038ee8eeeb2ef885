"""Optuna RDB storage for searches, and recovery of trials whose worker was interrupted."""

from __future__ import annotations

import logging
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState
from .config import SearchError



log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- storage


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str, heartbeat_interval: int | None = 60) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``, connected now: SearchError naming the URL if it cannot be."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                heartbeat_stale_trial_callback=_stale_trial_callback if heartbeat_interval else None,
            )
        if url.startswith("sqlite"):
            _sqlite_wal(storage)
        return storage
    except Exception as exc:  # driver missing, server unreachable, bad URL, unwritable file...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SearchError(f"cannot open the study storage {redact(url)}: {type(exc).__name__}: {msg}") from exc


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal with ``synchronous=NORMAL``: a commit no longer waits for fsync (a dozen per trial),
    and a killed process still loses nothing committed (only a power loss could drop the last ones)."""
    import sqlalchemy

    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened before the listener reconnect with it


def study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    return set(optuna.study.get_all_study_names(storage))


# --------------------------------------------------------------------------- interrupted trials


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"  # a zombie is dead
    except (OSError, IndexError):
        return True


def _worker_gone(trial: FrozenTrial) -> bool:
    """Whether a RUNNING trial's worker process, on this host, no longer exists (or is this process)."""
    worker = trial.user_attrs.get("worker", "")
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine: its heartbeat decides
    return int(pid) == os.getpid() or not _pid_alive(int(pid))


def interrupted_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials that were interrupted (marked so, or queued again as ``retry_of``)."""
    out = set()
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            out.add(t.number)
        if t.user_attrs.get("retry_of") is not None:
            out.add(int(t.user_attrs["retry_of"]))
    return out


def _requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed, interrupted trial's configuration again (once), keeping its grid point if any."""
    if not trial.params:
        return
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    if "grid_id" in trial.system_attrs:
        # GridSampler needs every trial to carry its grid point; the retry takes the interrupted one's.
        retry = next(t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                     if t.user_attrs.get("retry_of") == trial.number)
        for key in ("grid_id", "search_space"):
            study._storage.set_trial_system_attr(retry._trial_id, key, trial.system_attrs[key])
    log.warning("study %s: trial %d was interrupted; its configuration is queued again", study.study_name, trial.number)


def _stale_trial_callback(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat: a trial whose worker stopped beating was failed by Optuna; run it again."""
    _requeue(study, trial)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker on this host is gone, and requeue every interrupted trial.

    Returns the numbers of the trials requeued.
    """
    storage = study._storage
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING and _worker_gone(t):
            try:
                storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                            f"interrupted: worker {t.user_attrs.get('worker', '?')} stopped mid-trial")
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
            t = storage.get_trial(t._trial_id)
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            _requeue(study, t)
            out.append(t.number)
    return out


def n_counted(study: optuna.Study) -> int:
    """Trials that used the budget: complete, or failed other than by an interruption."""
    trials = study.get_trials(deepcopy=False)
    skip = interrupted_numbers(trials)
    return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in skip)
               for t in trials)


class Budget:
    """Stops a study when its budget is used, or after too many failures in a row (then ``aborted``)."""

    def __init__(self, n_trials: int, max_failures: int, bar=None):
        self.n_trials = n_trials
        self.max_failures = max_failures
        self.streak = 0
        self.aborted: str | None = None
        self.bar = bar

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted"):
            self.streak += 1  # (a heartbeat-failed trial of another worker never reaches this callback)
        elif trial.state == TrialState.COMPLETE:
            self.streak = 0
        done = n_counted(study)
        if self.bar is not None:
            self.bar.n = min(done, self.n_trials)
            best = _best_accuracy(study)
            if best is not None:
                self.bar.set_postfix(best=f"{best:.4f}", refresh=False)
            self.bar.refresh()
        if done >= self.n_trials:
            study.stop()
        elif self.max_failures and self.streak >= self.max_failures:
            self.aborted = f"{self.streak} trials in a row failed (last: {trial.user_attrs.get('fail_reason', '?')})"
            log.error("study %s stopped: %s", study.study_name, self.aborted)
            study.stop()


def _best_accuracy(study: optuna.Study) -> float | None:
    accs = [t.user_attrs.get("accuracy") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    accs = [a for a in accs if a is not None]
    return max(accs) if accs else None


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's best trials, earliest first: every complete trial whose value ties the best value
    (one objective; Optuna picks an arbitrary one of tied trials, and storages order them
    differently), or the Pareto front (several objectives)."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not done:
        return []
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best = pick(t.values[0] for t in done)
    return sorted((t for t in done if t.values[0] == best), key=lambda t: t.number)

