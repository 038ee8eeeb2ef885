"""The budget protocol: which trials count against ``n_trials``, and exact budgets with several workers.

``n_trials`` counts the trials that trained: complete (reused ones too), early-stopped by the
pruner, or failed other than by an interruption; not unbuildable ones (pruned: they cost nothing),
trials dropped over budget, nor interrupted ones (their configuration runs again).

Exact budgets with several workers. Trial numbers are unique and follow creation order in every
storage (the RDB storage creates a trial under a row lock on its study; a journal is one ordered
log), so a trial that might still use the budget is RUNNING or WAITING, or has finished counted.
Two checks use that:

* before a worker creates a trial (:func:`budget_state`, like Optuna's ``MaxTrialsCallback``):
  only when counted + running trials leave a slot; otherwise it waits for the running ones (one
  of them may be interrupted and queued again) or stops;
* inside the trial, at its start and again before it reports its result (:func:`admitted`): it
  goes on only while fewer than ``n_trials`` trials numbered below it are counted, running or
  waiting. Of the trials that end up counted, take the highest-numbered one: when it last checked,
  every lower-numbered trial that ends up counted already existed and was counted, running or
  waiting, so fewer than ``n_trials`` of them are counted and the total is at most ``n_trials``.
  A trial that fails the check is pruned with ``over_budget`` (it does not count; a queued
  configuration, e.g. a grid point, is queued again: :func:`search.queue.requeue_over_budget`).
  Since the budget is only reached when the loop finds ``n_trials`` counted, the total is exactly
  ``n_trials``.
"""

from __future__ import annotations

import logging
from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import optuna_compat as compat
from .best import best_accuracy
from .liveness import has_heartbeat, interrupted_numbers, on_this_host

log = logging.getLogger(__name__)


def is_early_stopped(trial: FrozenTrial) -> bool:
    """Whether a trial was stopped by the study's pruner (it trained, so it counts against the budget),
    as opposed to one pruned because its architecture cannot be built (it cost nothing)."""
    return trial.state == TrialState.PRUNED and bool(trial.user_attrs.get("early_stopped"))


def is_counted(trial: FrozenTrial, interrupted: set[int]) -> bool:
    """Whether a finished trial used the budget: complete (reused ones too), early-stopped by the
    pruner, or failed other than by an interruption (``interrupted``: :func:`interrupted_numbers`)."""
    return (trial.state == TrialState.COMPLETE or is_early_stopped(trial)
            or (trial.state == TrialState.FAIL and trial.number not in interrupted))


def count(trials: Sequence[FrozenTrial]) -> int:
    """How many of ``trials`` (all of a study's) used the budget."""
    skip = interrupted_numbers(trials)
    return sum(is_counted(t, skip) for t in trials)


def n_counted(study: optuna.Study) -> int:
    """Trials that used the budget: complete, early-stopped by the pruner, or failed other than by an
    interruption."""
    return count(study.get_trials(deepcopy=False))


def admitted(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` may use the budget: fewer than ``n_trials`` trials numbered below it
    are counted, running or waiting (see the module)."""
    trials = study.get_trials(deepcopy=False)
    skip = interrupted_numbers(trials)
    ahead = sum(t.number < number and (t.state in (TrialState.RUNNING, TrialState.WAITING) or is_counted(t, skip))
                for t in trials)
    return ahead < n_trials


def budget_state(study: optuna.Study, n_trials: int, queue_only: bool = False) -> str:
    """What a worker does next: ``"go"`` (start a trial), ``"wait"`` (the running trials fill the
    budget, but one of them may still be interrupted and queued again) or ``"done"``.

    ``queue_only``: trials come only from the queue (grid: its points are queued when the study is
    made), so with no waiting trial there is nothing to start. Running trials are waited for when a
    dead worker's trial would be found out: with a heartbeat (RDB), or when it runs on this host.
    """
    trials = study.get_trials(deepcopy=False)
    done = count(trials)
    if done >= n_trials:
        return "done"
    running = [t for t in trials if t.state == TrialState.RUNNING]
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if done + len(running) < n_trials and (waiting or not queue_only):
        return "go"
    if running and (has_heartbeat(compat.storage_of(study)) or any(on_this_host(t) for t in running)):
        return "wait"
    if running:
        log.info("study %s: %d trials still run on other hosts; without a heartbeat this worker cannot tell "
                 "whether they finish (run again with --resume if one of them died)", study.study_name, len(running))
    return "done"


class Budget:
    """Stops a study when its budget is used, or after too many failures in a row (then ``aborted``).

    A callback of ``study.optimize`` (it calls ``study.stop()``), or of a loop of one's own
    (``in_optimize=False``: it only sets ``stopped``)."""

    def __init__(self, n_trials: int, max_failures: int, bar=None, in_optimize: bool = True):
        self.n_trials = n_trials
        self.max_failures = max_failures
        self.streak = 0
        self.aborted: str | None = None
        self.bar = bar
        self.in_optimize = in_optimize
        self.stopped = False

    def _stop(self, study: optuna.Study) -> None:
        self.stopped = True
        if self.in_optimize:
            study.stop()

    def _show(self, trials: Sequence[FrozenTrial], done: int) -> None:
        """The progress bar: trials counted, and the best feasible accuracy so far."""
        self.bar.n = min(done, self.n_trials)
        best = best_accuracy(trials)
        if best is not None:
            self.bar.set_postfix(best=f"{best:.4f}", refresh=False)
        self.bar.refresh()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted"):
            self.streak += 1  # (a heartbeat-failed trial of another worker never reaches this callback)
        elif trial.state == TrialState.COMPLETE or is_early_stopped(trial):
            self.streak = 0
        trials = study.get_trials(deepcopy=False)  # one read of the trials per trial
        done = count(trials)
        if self.bar is not None:
            self._show(trials, done)
        if done >= self.n_trials:
            self._stop(study)
        elif self.max_failures and self.streak >= self.max_failures:
            self.aborted = f"{self.streak} trials in a row failed (last: {trial.user_attrs.get('fail_reason', '?')})"
            log.error("study %s stopped: %s", study.study_name, self.aborted)
            self._stop(study)
