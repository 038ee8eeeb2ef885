"""A study's best trials: feasible (within ``search.size_budget_bytes``), tied ones all kept."""

from __future__ import annotations

from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether ``trial`` meets its constraints (``search.size_budget_bytes``; no constraints: yes).
    Infeasible trials never count as best: not in the summary, the figures nor the progress bar."""
    return not any(c > 0 for c in trial.constraints.values())


def best_accuracy(trials: Sequence[FrozenTrial]) -> float | None:
    """The highest ``accuracy`` of the complete, feasible ``trials`` (None when there is none)."""
    accs = [t.user_attrs.get("accuracy") for t in trials if t.state == TrialState.COMPLETE and is_feasible(t)]
    accs = [a for a in accs if a is not None]
    return max(accs) if accs else None


def _best_accuracy(study: optuna.Study) -> float | None:
    return best_accuracy(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's best trials, earliest first: every complete trial whose value ties the best value
    (one objective; Optuna picks an arbitrary one of tied trials, and storages order them
    differently), or the Pareto front (several objectives)."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values
            and is_feasible(t)]  # feasible only (search.size_budget_bytes)
    if not done:
        return []
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best = pick(t.values[0] for t in done)
    return sorted((t for t in done if t.values[0] == best), key=lambda t: t.number)
