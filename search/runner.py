"""The study runner: how every study mase-lite drives is run (a search's studies, a benchmark
table's build, the benchmark scripts), alone or by several workers on one storage.

1. :func:`open_study` makes the study, or joins it: the process that makes a grid study queues
   every grid point (:func:`search.queue.enqueue_grid`), and a joining worker waits until it has,
   so no point is evaluated twice;
2. :func:`catch_up` stores the results kept through a storage outage (:mod:`search.pending`) and
   fails and queues again the trials of dead workers (:mod:`search.liveness`); it returns the
   trials counted so far;
3. :func:`run_trials` runs trials one at a time until the budget is used, each started only while
   the budget has room (:func:`search.budget.budget_state`; objectives check
   :func:`search.budget.admitted` themselves), asked and told by :func:`search.trial_loop.run_trial`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna

from .budget import Budget, budget_state, n_counted
from .liveness import fail_dead_workers, recover_interrupted
from .pending import tell_pending
from .queue import enqueue_grid, wait_for_grid
from .trial_loop import run_trial

#: Seconds between looks at the storage while other workers' trials fill the budget.
WAIT_POLL_S = 0.5


def open_study(name: str, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler,
               directions: list[str], pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create study ``name``, or load it when another process made it (atomically: one process
    creates it). A grid sampler's points are queued whole by the creator, before anything else it
    writes (``grid_queued``); a process that loads a grid study waits for them."""
    grid = isinstance(sampler, optuna.samplers.GridSampler)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                                    load_if_exists=False, pruner=pruner)
        if grid:
            study.set_user_attr("grid_queued", enqueue_grid(study, sampler))
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        if grid:
            wait_for_grid(study)
    return study


def catch_up(study: optuna.Study, run_dir: Path | None, n_trials: int) -> int:
    """Before running: store the results kept in ``run_dir`` through a storage outage (first, before
    recovery), fail the trials of dead workers on this host and queue interrupted ones again.
    Returns the trials counted against ``n_trials``."""
    if run_dir is not None:
        tell_pending(study, run_dir, n_trials)
    recover_interrupted(study)
    return n_counted(study)


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], Any], n_trials: int, *,
               run_dir: Path | None, max_failures: int = 0, bar: Any = None,
               gc_after_trial: bool = False) -> str | None:
    """Run trials of ``objective`` until ``n_trials`` are counted (or the queue of a grid study is
    empty), with any number of workers doing the same on the study's storage.

    ``run_dir``: where a finished result is kept through a storage outage (None: not kept);
    ``max_failures``: stop after that many failures in a row (0: never); ``bar``: a progress bar.
    Returns why it stopped early (too many failures), None when the budget is used.
    """
    queue_only = "grid_queued" in study.user_attrs  # grid: points come from the queue only
    budget = Budget(n_trials, max_failures, bar, in_optimize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while budget.aborted is None:  # one trial at a time, each started only while the budget has room
            state = budget_state(study, n_trials, queue_only)
            if state == "done":
                break
            if state == "wait":  # the running trials fill the budget; one may die and be queued again
                time.sleep(WAIT_POLL_S)
                fail_dead_workers(study)
                continue
            run_trial(study, objective, run_dir=run_dir, n_trials=n_trials, callbacks=[budget],
                      gc_after_trial=gc_after_trial)
    return budget.aborted
