"""One trial, asked and told by the worker itself: ``study.optimize(n_trials=1, catch=(Exception,))``
as Optuna runs it (stale heartbeats failed first, the heartbeat beating while the objective runs,
callbacks after the tell, garbage collected), plus what a storage outage needs:

* the storage calls themselves are retried (:mod:`search.storage_retry`);
* a trial that finished while the storage stays unreachable past ``search.storage_retry_s`` is kept
  in the run's pending folder (:mod:`search.pending`; ``run_dir``, None: not kept) and the error
  raised names it -- nothing that finished is lost, and ``--resume`` stores it;
* a trial that another worker failed meanwhile (its heartbeat looked stale after the outage) is
  not an error: its result goes into the configuration's queued retry (:func:`search.pending.deliver`).
"""

from __future__ import annotations

import gc
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import optuna_compat as compat
from .pending import Result, deliver, keep
from .storage_retry import StorageUnavailable

log = logging.getLogger(__name__)

Callback = Callable[[optuna.Study, FrozenTrial], None]


def run_trial(study: optuna.Study, objective: Callable[[optuna.Trial], Any], *, run_dir: Path | None, n_trials: int,
              callbacks: Sequence[Callback] = (), gc_after_trial: bool = False) -> FrozenTrial | None:
    """Ask a trial, run ``objective`` on it, tell its result and call ``callbacks`` with the told trial.

    An objective that raises fails the trial (``TrialPruned``: pruned) and the study goes on;
    KeyboardInterrupt fails it and is raised again. Returns the trial that holds the result (None
    when another worker had failed it and its result was dropped, see :func:`search.pending.deliver`).
    """
    if compat.heartbeat_enabled(compat.storage_of(study)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    with compat.optimize_loop(study):  # a sampler's study.stop() (grid) is allowed, and ignored: see budget_state
        trial = study.ask()
        try:
            state, values = _run_objective(study, trial, objective, run_dir)
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        frozen = _tell(study, trial, state, values, run_dir, n_trials)
        if frozen is not None:
            for cb in callbacks:
                cb(study, frozen)
    if gc_after_trial:
        gc.collect()
    return frozen


def _run_objective(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], Any],
                   run_dir: Path | None) -> tuple[TrialState, list[float] | None]:
    """The objective's state and values; a finished result the storage could not take is kept."""
    with compat.heartbeat_thread(compat.trial_id_of(trial), compat.storage_of(study)):
        try:
            out = objective(trial)
        except optuna.TrialPruned:
            return TrialState.PRUNED, None
        except StorageUnavailable as exc:
            rec = getattr(exc, "record", None)
            if rec is not None and rec.values is not None:
                raise _kept(run_dir, study, Result(trial.number, list(rec.values), dict(rec.attrs)), exc) from exc
            raise
        except Exception as exc:  # recorded by the objective (fail_reason); the study goes on
            log.debug("trial %d failed: %r", trial.number, exc)
            return TrialState.FAIL, None
    return TrialState.COMPLETE, [float(v) for v in (out if isinstance(out, Sequence) else [out])]


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None,
          run_dir: Path | None, n_trials: int) -> FrozenTrial | None:
    """Tell the trial; a COMPLETE result is kept when the storage stays down, and delivered to its
    retry when another worker failed the trial meanwhile."""
    try:
        told = study.tell(trial, values, state=state, skip_if_finished=True)
    except StorageUnavailable as exc:
        if state == TrialState.COMPLETE:
            raise _kept(run_dir, study, Result(trial.number, values or []), exc) from exc
        raise
    except optuna.exceptions.UpdateFinishedTrialError:  # finished by another worker since tell looked
        told = compat.storage_of(study).get_trial(compat.trial_id_of(trial))
    if told.state == state and (state != TrialState.COMPLETE or list(told.values or []) == values):
        return told
    log.warning("study %s: trial %d was failed by another worker (its heartbeat was late)%s", study.study_name,
                trial.number, "; its result goes to its queued retry" if state == TrialState.COMPLETE else "")
    if state != TrialState.COMPLETE:
        return None
    return deliver(study, Result(trial.number, values or []), n_trials)


def _kept(run_dir: Path | None, study: optuna.Study, result: Result, exc: StorageUnavailable) -> StorageUnavailable:
    """The error to raise for a finished ``result`` the storage could not take: kept in ``run_dir``'s
    pending folder (:func:`search.pending.keep`), or ``exc`` itself without a run folder."""
    return exc if run_dir is None else keep(run_dir, study, result, exc)
