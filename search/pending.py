"""Finished trials whose result could not be stored: kept in a local file, told when the storage is back.

When the study storage stays unreachable past ``search.storage_retry_s`` after a trial finished
(:class:`search.storage_retry.StorageUnavailable`), the worker writes the trial's result to
``<run dir>/pending/<study>.trial-<number>.json`` before it exits, and the next run with
``--resume`` (same run folder) stores it before it starts any trial (:func:`tell_pending`):

* the trial is still RUNNING in the storage (nobody failed it meanwhile): its attributes are set
  and it is told COMPLETE with its values;
* another worker failed it as interrupted meanwhile (its heartbeat went stale, or its process was
  found gone) and queued its configuration again: the result goes into that queued retry when it is
  still waiting (``recovered_from``: the original trial), within the budget; if the retry already
  runs or ran, the configuration's result is (being) computed again and the kept one is dropped;
* it is already COMPLETE with these values: nothing to do.

:func:`deliver` is also what a worker does when its own tell finds its trial failed by another
worker (a late heartbeat after an outage).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import optuna_compat as compat
from .storage_retry import StorageUnavailable

log = logging.getLogger(__name__)

#: Attributes of the original trial that a retry keeps its own values of, or never takes over (the
#: original's saved graph stays the original's: it is removed with the graphs of trials not best).
_NOT_COPIED = ("interrupted", "fail_reason", "retry_of", "requeue_of", "grid_point", "over_budget", "prune_reason",
               "graph_dir", "graph_artifact")
#: Optuna constraints that trials record as a user attribute too (``search.size_budget_bytes``).
_CONSTRAINT_ATTRS = {"size_budget_bytes": "size_excess_bytes"}


@dataclasses.dataclass
class Result:
    """A finished trial's result: trial ``number``, its objective ``values`` and user ``attrs``
    (those not yet written, or all of them)."""

    number: int
    values: list[float]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


def pending_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "pending"


def keep(run_dir: Path, study: optuna.Study, result: Result, exc: StorageUnavailable) -> StorageUnavailable:
    """Write ``result`` of a trial of ``study`` to the run's pending folder; returns the error to raise
    (``exc``'s line, naming the file)."""
    path = pending_dir(run_dir) / f"{study.study_name}.trial-{result.number:05d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + f".{os.getpid()}.part")
    part.write_text(json.dumps({"study": study.study_name, **dataclasses.asdict(result)}, default=str, indent=1))
    part.replace(path)  # whole or not at all
    log.info("trial %d of study %s finished but could not be stored; kept in %s", result.number, study.study_name, path)
    return StorageUnavailable(f"{exc} (the finished trial {result.number} of study {study.study_name} is kept "
                              f"in {path} until then)")


def tell_pending(study: optuna.Study, run_dir: Path, n_trials: int) -> list[int]:
    """Store the results kept in ``run_dir`` for ``study`` (see the module); each file is removed once
    its result is stored or found superseded. Returns the numbers of the trials stored."""
    out = []
    for path in sorted(pending_dir(run_dir).glob(f"{study.study_name}.trial-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("pending result %s cannot be read (%s); left as it is", path, exc)
            continue
        if data.get("study") != study.study_name:
            continue
        stored = deliver(study, Result(int(data["number"]), list(data["values"]), dict(data.get("attrs") or {})),
                         n_trials)
        if stored is not None:
            out.append(stored.number)
        path.unlink()
    return out


def deliver(study: optuna.Study, result: Result, n_trials: int) -> FrozenTrial | None:
    """Store ``result`` (see the module); returns the trial that holds it, or None when it was dropped."""
    trials = study.get_trials(deepcopy=False)
    original = next((t for t in trials if t.number == result.number), None)
    if original is None:
        log.warning("study %s has no trial %d; its kept result is dropped", study.study_name, result.number)
        return None
    if original.state == TrialState.RUNNING:
        return _tell(study, original, result, n_trials, claimed=False)
    if original.state == TrialState.COMPLETE and list(original.values or []) == list(result.values):
        return original  # stored already (the acknowledgement was lost)
    retry = next((t for t in trials if t.user_attrs.get("retry_of") == original.number
                  and t.state == TrialState.WAITING), None)
    storage = compat.storage_of(study)
    if retry is None or not storage.set_trial_state_values(compat.trial_id_of(retry), TrialState.RUNNING):
        log.warning("trial %d of study %s was failed by another worker while its result could not be stored, "
                    "and its configuration runs again (or ran); the kept result is dropped",
                    original.number, study.study_name)
        return None
    attrs = {k: v for k, v in {**original.user_attrs, **result.attrs}.items() if k not in _NOT_COPIED}
    result = dataclasses.replace(result, attrs={**attrs, "recovered_from": original.number})
    for name, value in original.params.items():
        dist = original.distributions[name]
        storage.set_trial_param(compat.trial_id_of(retry), name, dist.to_internal_repr(value), dist)
    log.info("trial %d of study %s: the result of trial %d (failed by another worker meanwhile) stored into "
             "its queued retry", retry.number, study.study_name, original.number)
    return _tell(study, retry, result, n_trials, claimed=True)


def _tell(study: optuna.Study, target: FrozenTrial, result: Result, n_trials: int, claimed: bool) -> FrozenTrial:
    """Write ``result``'s attributes and constraints into the RUNNING trial ``target`` and tell it
    COMPLETE; a ``claimed`` retry outside the budget is dropped as the objective drops one."""
    from .objectives import worker_id
    from .budget import admitted
    from .queue import requeue_over_budget

    trial = compat.live_trial(study, compat.trial_id_of(target))
    attrs = {**result.attrs, "worker": worker_id()} if claimed else result.attrs
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    for name, attr in _CONSTRAINT_ATTRS.items():
        if attr in attrs:
            with warnings.catch_warnings():  # Optuna warns, and keeps the value, when it is set already
                warnings.simplefilter("ignore")
                trial.set_constraint(name, float(attrs[attr]))
    if claimed and not admitted(study, target.number, n_trials):
        reason = f"over budget: n_trials = {n_trials} trials were already counted or running"
        trial.set_user_attr("over_budget", True)
        trial.set_user_attr("prune_reason", reason)
        requeue_over_budget(study, compat.storage_of(study).get_trial(compat.trial_id_of(target)))
        log.info("trial %d dropped: %s", target.number, reason)
        return study.tell(target.number, state=TrialState.PRUNED, skip_if_finished=True)
    return study.tell(target.number, result.values, skip_if_finished=True)
