"""Process liveness: trials whose worker died are failed as ``interrupted`` and their configuration
queued again once (a trial with ``retry_of``).

A worker is found dead by its process (on this host: the ``worker`` attribute ``host:pid`` names
a process that is gone) or by Optuna's heartbeat (an RDB storage with ``heartbeat_interval``; a
worker on another host).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import optuna_compat as compat
from .queue import enqueue_fixed

log = logging.getLogger(__name__)


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether ``storage`` fails the trials of dead workers by itself (an RDB storage with a heartbeat)."""
    return compat.heartbeat_enabled(storage)


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


def on_this_host(trial: FrozenTrial) -> bool:
    """Whether ``trial``'s worker runs on this host (or has not said yet: it has just started here)."""
    worker = trial.user_attrs.get("worker")
    return worker is None or worker.rpartition(":")[0] == socket.gethostname()


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
    enqueue_fixed(study, trial.params, {"retry_of": trial.number}, like=trial)
    log.warning("study %s: trial %d was interrupted; its configuration is queued again", study.study_name, trial.number)


def stale_trial_callback(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat: a trial whose worker stopped beating was failed by Optuna; run it again."""
    _requeue(study, trial)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker on this host is gone, and requeue every interrupted trial.

    Returns the numbers of the trials requeued.
    """
    storage = compat.storage_of(study)
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING and _worker_gone(t):
            tid = compat.trial_id_of(t)
            try:
                storage.set_trial_user_attr(tid, "interrupted", True)
                storage.set_trial_user_attr(tid, "fail_reason",
                                            f"interrupted: worker {t.user_attrs.get('worker', '?')} stopped mid-trial")
                storage.set_trial_state_values(tid, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
            t = storage.get_trial(tid)
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            _requeue(study, t)
            out.append(t.number)
    return out


def fail_dead_workers(study: optuna.Study) -> list[int]:
    """Fail the trials of dead workers now: stale heartbeats (RDB) and gone processes on this host;
    their configurations are queued again. Returns the numbers requeued."""
    optuna.storages.fail_stale_trials(study)
    return recover_interrupted(study)
