"""Queued trials: a grid queued whole when its study is made, and configurations queued again
(an interrupted trial's retry, a trial dropped over budget), each in one storage write."""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from . import optuna_compat as compat
from .config import SearchError


def enqueue_fixed(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any],
                  like: FrozenTrial | None = None, grid: dict[str, Any] | None = None) -> None:
    """Queue a trial of fixed ``params`` with all its attributes in ONE storage write
    (:func:`search.optuna_compat.enqueue`): another worker may take a queued trial the moment it
    exists, so attributes added afterwards could miss it. ``like``: a trial whose grid point
    (GridSampler needs it on every trial) the new one takes; ``grid``: the grid point given directly."""
    point = compat.grid_attrs_of(like) if like is not None else {}
    compat.enqueue(study, params, user_attrs, {**point, **(grid or {})})


def enqueue_grid(study: optuna.Study, sampler: optuna.samplers.GridSampler) -> int:
    """Queue every point of ``sampler``'s grid, in its (seeded) order, each with its ``grid_id``, so
    that several workers take distinct points from the queue (Optuna's ``GridSampler`` alone may give
    two workers the same point). Call once, by the process that created the study. Returns the count."""
    names, points, space = compat.grid_points(sampler)
    for grid_id, values in enumerate(points):
        enqueue_fixed(study, dict(zip(names, values)), {"grid_point": grid_id}, grid=compat.grid_attrs(grid_id, space))
    return len(points)


def wait_for_grid(study: optuna.Study, timeout_s: float = 120.0, poll_s: float = 0.2) -> None:
    """A worker that joined a grid study waits until its creator has queued every point
    (``grid_queued``), so that it neither samples a point itself nor finds the queue empty too early."""
    deadline = time.monotonic() + timeout_s
    # the creator queues the grid before it writes the fingerprint: a study with a fingerprint and no
    # grid_queued was made before grids were queued (it samples its points as it always did)
    while not {"grid_queued", "fingerprint"} & set(study.user_attrs):
        if time.monotonic() > deadline:
            raise SearchError(f"study {study.study_name}: the process that created this grid study did not queue "
                              f"its points within {timeout_s:.0f} s (it may have died); delete the study and run again")
        time.sleep(poll_s)


def requeue_over_budget(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue again the fixed configuration of a trial dropped by :func:`search.budget.admitted` (a grid
    point or a retry), keeping its grid point; a sampled one is not (the sampler proposes again).
    Returns whether queued."""
    fixed = compat.fixed_params_of(trial)
    if not fixed:
        return False
    attrs = {"requeue_of": trial.number}
    for key in ("retry_of", "grid_point"):
        if trial.user_attrs.get(key) is not None:
            attrs[key] = trial.user_attrs[key]
    enqueue_fixed(study, fixed, attrs, like=trial)
    return True
