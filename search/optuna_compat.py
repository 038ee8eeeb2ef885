"""Every use of Optuna's private API, in one place (tested against the pinned Optuna in
``tests/test_optuna_compat.py``).

The rest of mase-lite uses Optuna's public API, and these helpers where there is none: a study's
storage and id, a trial's storage id, the heartbeat, the RDB cache wrapper, a grid sampler's
points, and the system attributes of a queued trial (``fixed_params``; a grid point's ``grid_id``
and ``search_space``). When Optuna is upgraded, this module (and its test) is what to check.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, ContextManager, Iterator

import optuna
from optuna.trial import FrozenTrial

__all__ = ["cached_storage", "enqueue", "fixed_params_of", "grid_attrs", "grid_attrs_of", "grid_points",
           "heartbeat_enabled", "heartbeat_thread", "is_heartbeat_storage", "live_trial", "optimize_loop",
           "storage_methods", "storage_of", "study_id_of", "trial_id_of"]


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object a study reads and writes through (``Study._storage``)."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    """The study's id in its storage (``Study._study_id``)."""
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in its storage (``_trial_id`` of a ``Trial`` or ``FrozenTrial``), not its number."""
    return trial._trial_id


def live_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """An ``optuna.Trial`` for the stored trial ``trial_id`` (to set attributes and constraints of a
    trial this process did not ask for, e.g. one told again after a storage outage)."""
    return optuna.Trial(study, trial_id)


@contextlib.contextmanager
def optimize_loop(study: optuna.Study) -> Iterator[None]:
    """Run an ask-and-tell loop of one's own as ``study.optimize``'s loop: samplers may call
    ``study.stop()`` when they are done (``GridSampler.after_trial``), which Optuna refuses outside
    ``optimize``, and ``ask`` warns about a heartbeat storage outside it."""
    local = study._thread_local
    before = local.in_optimize_loop
    local.in_optimize_loop = True
    try:
        yield
    finally:
        local.in_optimize_loop = before


def cached_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """``storage`` as a study wraps it itself (an RDB storage behind Optuna's trial cache); needed
    when ``storage`` is handed over inside a wrapper of ours, which Optuna would not wrap."""
    from optuna.storages import get_storage

    return get_storage(storage)


def is_heartbeat_storage(storage: Any) -> bool:
    """Whether ``storage`` implements Optuna's heartbeat interface (``BaseHeartbeat``)."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return isinstance(storage, BaseHeartbeat)


def heartbeat_base() -> type:
    """Optuna's ``BaseHeartbeat`` class (a storage wrapper subclasses it to keep the heartbeat)."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return BaseHeartbeat


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether ``storage`` has a heartbeat (an RDB storage with ``heartbeat_interval``)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def heartbeat_thread(trial_id: int, storage: optuna.storages.BaseStorage) -> ContextManager[None]:
    """The context that beats for ``trial_id`` while a trial runs (a no-op without a heartbeat), as
    ``study.optimize`` does around each trial."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id, storage)


#: Heartbeat methods of a storage: ``_get_stale_trial_ids`` is called by ``fail_stale_trials``.
HEARTBEAT_METHODS = ("record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
                     "get_failed_trial_callback", "get_heartbeat_stale_trial_callback")


def storage_methods() -> tuple[str, ...]:
    """The public methods of ``BaseStorage``: every call a study makes to its storage."""
    return tuple(sorted(name for name, _ in inspect.getmembers(optuna.storages.BaseStorage, inspect.isfunction)
                        if not name.startswith("_")))


def grid_points(sampler: optuna.samplers.GridSampler) -> tuple[list[str], list[tuple[Any, ...]], dict[str, list[Any]]]:
    """A grid sampler's parameter names, its points in its (seeded) order -- each a tuple of values
    in the order of the names -- and its search space (what it stores as ``search_space``)."""
    return list(sampler._param_names), list(sampler._all_grids), sampler._search_space


# --------------------------------------------------------------------------- queued trials
#
# ``enqueue_trial`` stores the parameters as the system attribute ``fixed_params``; GridSampler
# reads a trial's grid point from ``grid_id`` and ``search_space`` (and leaves a trial that has
# ``fixed_params`` or ``grid_id`` to them, ``GridSampler.before_trial``).

_GRID_KEYS = ("grid_id", "search_space")


def fixed_params_of(trial: FrozenTrial) -> dict[str, Any] | None:
    """The parameters a queued trial was given (``enqueue_trial``'s ``fixed_params``), None for a sampled one."""
    return trial.system_attrs.get("fixed_params")


def grid_attrs(grid_id: int, space: dict[str, list[Any]]) -> dict[str, Any]:
    """The system attributes that make a queued trial grid point ``grid_id`` of a grid on ``space``."""
    return {"grid_id": grid_id, "search_space": space}


def grid_attrs_of(trial: FrozenTrial) -> dict[str, Any]:
    """``trial``'s grid point as :func:`grid_attrs` (empty when it is not a grid sampler's trial)."""
    return {k: trial.system_attrs[k] for k in _GRID_KEYS} if "grid_id" in trial.system_attrs else {}


def enqueue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any],
            grid: dict[str, Any] | None = None) -> None:
    """Queue a trial of fixed ``params`` with its user attributes and grid point (:func:`grid_attrs`)
    in ONE storage write: ``study.enqueue_trial`` when there is no grid point, else its write plus
    the grid attributes (another worker may take a queued trial the moment it exists)."""
    if not grid:
        study.enqueue_trial(dict(params), user_attrs=dict(user_attrs))
        return
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, user_attrs=dict(user_attrs),
        system_attrs={"fixed_params": dict(params), **grid}))
