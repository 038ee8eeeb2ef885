"""Search bookkeeping at its ties and boundaries: tied best trials, a trial exactly at the size
budget, the failure streak that stops a study, and the replay statistics' tie rules (P(a > b) with
ties 1/2, Holm's step-down maximum, budgets and top-k at the number of architectures, the sample
standard deviation, the earliest of tied picks, a dominated point in the hypervolume). Expected
values are worked out by hand from the textbook definitions."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.bench.replay import ReplayRun, ReplayTrial, hypervolume_2d
from search.bench.stats import holm, noise_floor, prob_greater, top_k_overlap, valid_budgets
from search.storage import Budget, best_trials, is_feasible


def _study(direction: str, trials: list[dict]) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for t in trials:
        study.add_trial(create_trial(**t))
    return study


# ------------------------------------------------------------------------------------ storage


def test_best_trials_are_every_feasible_tie_including_one_exactly_at_the_budget():
    study = _study("maximize", [
        {"value": 0.5},
        {"value": 0.7},
        {"value": 0.9, "constraints": {"size": 1.0}},   # over the budget: never best
        {"value": 0.7, "constraints": {"size": 0.0}},   # exactly at the budget: feasible
        {"value": 0.6},
    ])
    assert [t.number for t in best_trials(study)] == [1, 3]
    assert [is_feasible(t) for t in study.trials] == [True, True, False, True, True]
    low = _study("minimize", [{"value": 0.5}, {"value": 0.3}, {"value": 0.3}, {"value": 0.4}])
    assert [t.number for t in best_trials(low)] == [1, 2]


def test_a_study_stops_at_exactly_max_failures_in_a_row():
    study = optuna.create_study()
    budget = Budget(n_trials=20, max_failures=3)

    def fail(trial):
        raise ValueError("broken")

    study.optimize(fail, n_trials=20, catch=(ValueError,), callbacks=[budget])
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert budget.aborted is not None and budget.aborted.startswith("3 trials in a row failed")
    ok = optuna.create_study()
    done = Budget(n_trials=2, max_failures=3)
    ok.optimize(lambda t: 1.0, n_trials=20, callbacks=[done])
    assert len(ok.trials) == 2 and done.aborted is None


# ------------------------------------------------------------------------------------ statistics


def test_prob_greater_counts_ties_as_one_half():
    assert prob_greater([1.0, 2.0, 3.0], [1.0, 1.0, 4.0]) == 0.5  # (1/2 + 1 + 0) / 3
    assert prob_greater([2.0, 2.0], [2.0, 2.0]) == 0.5


def test_holm_is_the_step_down_running_maximum():
    # sorted p: 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> the running maximum 0.06)
    got = holm([0.01, 0.04, 0.03, math.nan])
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(got[3])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])


def test_budgets_up_to_and_including_the_number_of_architectures():
    assert valid_budgets([5, 10, 20, 0], n_archs=10) == [5, 10]
    assert valid_budgets([5, 10, 20], n_archs=20, n_trials=10) == [5, 10]


class _Table:
    """The parts of a BenchTable the table-only statistics read."""

    def __init__(self, archs, values):
        self.archs = list(archs)
        self.values = values  # metric -> (n_archs, n_seeds) array

    @property
    def n_archs(self):
        return len(self.archs)

    def array(self, metric):
        return self.values[metric]

    def mean(self, metric):
        return {a: float(np.nanmean(r)) for a, r in zip(self.archs, self.values[metric])}


def test_top_k_overlap_stops_below_the_number_of_architectures_and_ranks_ties_by_id():
    t = _Table(["a", "b", "c"], {"trained": np.array([[0.9], [0.8], [0.7]]),
                                 "compressed": np.array([[0.5], [0.6], [0.6]])})
    # by trained: a, b, c; by compressed: b, c (tie: by id), a
    assert top_k_overlap(t, "trained", "compressed", ks=(1, 2, 3, 5)) == {1: 0.0, 2: 0.5}


def test_noise_floor_uses_the_sample_standard_deviation():
    a = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, np.nan]])
    t = _Table(["x", "y"], {"trained": a, "compressed": a, "finetuned": a})
    nf = noise_floor(t)
    assert nf["per_arch"]["x"]["trained"]["std"] == pytest.approx(1.0)  # sqrt(((-1)^2 + 0 + 1^2) / (3 - 1))
    assert nf["per_arch"]["y"]["trained"] == {"std": 0.0, "min": 2.0, "max": 2.0, "n": 2}
    assert nf["median_std"]["trained"] == pytest.approx(0.5)


def _run(observed: list[float]) -> ReplayRun:
    trials = [ReplayTrial(i + 1, i, f"arch{i}", 0, v, 0.0, 0.0, 0.0, 100.0) for i, v in enumerate(observed)]
    return ReplayRun("tpe", 0, "trained", len(trials), ["accuracy"], trials)


def test_the_pick_is_the_earliest_of_tied_best_values():
    run = _run([0.5, 0.8, math.nan, 0.8, 0.7])
    assert run.pick().trial == 2
    assert run.pick(1).trial == 1
    assert run.best_so_far()[1:] == [0.8, 0.8, 0.8, 0.8]


def test_a_dominated_point_adds_nothing_to_the_hypervolume():
    # (accuracy, size): (0.8, 0.5) dominates (0.6, 0.7); the union of the rectangles [s, 1.1] x [0, a]
    assert hypervolume_2d([(0.8, 0.5), (0.6, 0.7)], 1.1) == pytest.approx(0.8 * 0.6)
    # a third, non-dominated point (0.9, 0.9) adds [0.9, 1.1] x [0.8, 0.9]
    assert hypervolume_2d([(0.8, 0.5), (0.6, 0.7), (0.9, 0.9)], 1.1) == pytest.approx(0.48 + 0.2 * 0.1)
