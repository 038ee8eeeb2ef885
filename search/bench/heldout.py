"""Held-out scoring of replayed picks, and uncertainty at the level of training runs.

**Scoring.** A replay run selects its pick on the values of one training seed (:data:`SEED_MODES`:
``run`` -- every architecture's value comes from the run's seed, as in a live study, whose trials all
train with one seed; ``arch`` -- each architecture has its own drawn seed). The value a run selected
on is optimistic (the winner's curse: the pick is the architecture whose draw was luckiest), and so
is any mean that includes it. A pick is therefore scored on what it was not selected on: the mean,
over the table's *other* training seeds, of the pick's accuracy on the test split
(:attr:`BenchTable.has_test`) -- or, for a table without test columns (schema 1), on the validation
rows of those other seeds (held out by seed only; :func:`scoring_split` says which).

**Uncertainty.** A table holds S training runs per architecture; hundreds of replays resample the
same S x A numbers, so their number must not narrow an interval. Every estimate here is a mean over
replay runs, and its uncertainty comes from a leave-one-training-seed-out jackknife: fold ``c``
removes seed ``c`` from the table (the runs that selected on ``c`` are dropped, and ``c`` is left out
of every held-out score), the statistic is recomputed on what is left, and

    SE^2 = (k - 1) / k * sum_c (theta_c - mean theta)^2,   t = theta / SE  with k - 1 degrees of freedom

(k: folds with a value, normally S), CI = theta +- t_{0.975, k-1} * SE. Replays are nested in the
seed they selected on, so their noise is inside each fold; with few seeds the t reference is wide,
as it must be. In ``arch`` mode a run's selection used several seeds; a fold drops the runs whose
*pick* came from seed ``c`` (an approximation: the other architectures' draws from ``c`` still
shaped the selection). Seed effects shared by every architecture cancel in ``run`` mode (they shift
every candidate of a run alike) but not in ``arch`` mode.

Everything works on ``(n_archs, n_seeds)`` arrays, so statistical tests can drive it with
thousands of simulated tables (:mod:`search.bench.synthetic`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

#: How a replay run draws training seeds: one per run (as a live study) or one per architecture.
SEED_MODES = ("run", "arch")
DEFAULT_SEED_MODE = "run"
LEVEL = 0.95
INFERENCE = ("leave-one-training-seed-out jackknife over the table's seeds (t with folds - 1 degrees of "
             "freedom); replays are nested in the seed they selected on")


def scoring_split(table: Any) -> str:
    """``test`` when the table has test-split accuracies, else ``val`` (held-out seeds only)."""
    return "test" if table.has_test else "val"


def scoring_note(table: Any) -> str:
    """One sentence saying what picks are scored on."""
    if table.has_test:
        n = table.n_rows_of("test")
        return (f"each pick is scored on the test split ({n if n is not None else 'all'} rows, never used for "
                f"selection), averaged over the training seeds its run did not draw")
    return ("this table has no test columns (schema 1): each pick is scored on its validation accuracy averaged "
            "over the training seeds its run did not draw -- held out by seed, not by rows (the validation rows "
            "are the ones selection used)")


# --------------------------------------------------------------------------- picks


@dataclasses.dataclass(frozen=True)
class Picks:
    """One pick per replay run, as arrays of equal length.

    ``run``: the replay seed (pairs the runs of two arms); ``arch``: index of the picked architecture
    (-1: the run has no pick); ``seed``: index of the training seed the pick was selected on;
    ``selected``: the value it was selected on (NaN without a pick).
    """

    run: np.ndarray
    arch: np.ndarray
    seed: np.ndarray
    selected: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.run)
        if not (len(self.arch) == len(self.seed) == len(self.selected) == n):
            raise ValueError("Picks: run, arch, seed and selected must have one entry per run")

    def __len__(self) -> int:
        return len(self.run)

    @classmethod
    def make(cls, run: Sequence[int], arch: Sequence[int], seed: Sequence[int], selected: Sequence[float]) -> "Picks":
        return cls(np.asarray(run, dtype=np.int64), np.asarray(arch, dtype=np.int64),
                   np.asarray(seed, dtype=np.int64), np.asarray(selected, dtype=float))

    @classmethod
    def from_runs(cls, runs: Sequence[Any], table: Any, budget: int | None = None) -> "Picks":
        """The pick of each :class:`~search.bench.replay.ReplayRun` among its first ``budget`` trials."""
        seed_index = {s: j for j, s in enumerate(table.seeds)}
        rows = []
        for r in runs:
            p = r.pick(budget)
            rows.append((r.seed, -1, 0, math.nan) if p is None else
                        (r.seed, table.arch_index[p.arch], seed_index[p.table_seed], p.observed))
        if not rows:
            return cls.make([], [], [], [])
        return cls.make(*zip(*rows))

    def subset(self, index: np.ndarray) -> "Picks":
        return Picks(self.run[index], self.arch[index], self.seed[index], self.selected[index])


def paired(a: Picks, b: Picks) -> tuple[Picks, Picks]:
    """The runs ``a`` and ``b`` share (same replay seed), in the same order."""
    common, ia, ib = np.intersect1d(a.run, b.run, assume_unique=False, return_indices=True)
    return a.subset(ia), b.subset(ib)


# --------------------------------------------------------------------------- held-out scores


def heldout_means(values: np.ndarray, drop: int | None = None) -> np.ndarray:
    """``H[a, j]`` = mean of ``values[a, s]`` over the seeds ``s != j`` (and ``s != drop``), NaN cells
    (failed runs) skipped; NaN where no seed is left."""
    v = np.asarray(values, dtype=float)
    ok = ~np.isnan(v)
    if drop is not None:
        ok[:, drop] = False
    x = np.where(ok, v, 0.0)
    total = x.sum(axis=1, keepdims=True) - x
    count = ok.sum(axis=1, keepdims=True) - ok
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def scores(values: np.ndarray, picks: Picks, drop: int | None = None) -> np.ndarray:
    """Held-out score of each pick (NaN: no pick, or the run selected on the dropped seed)."""
    h = heldout_means(values, drop)
    ok = picks.arch >= 0
    if drop is not None:
        ok &= picks.seed != drop
    out = np.full(len(picks), np.nan)
    out[ok] = h[picks.arch[ok], picks.seed[ok]]
    return out


def oracle(values: np.ndarray, picks: Picks, drop: int | None = None) -> np.ndarray:
    """For each run, the best held-out score any architecture has for the run's seed (regret's reference)."""
    best = np.where(np.isnan(heldout_means(values, drop)), -np.inf, heldout_means(values, drop)).max(axis=0)
    best[np.isneginf(best)] = np.nan
    out = best[picks.seed]
    bad = picks.arch < 0
    if drop is not None:
        bad |= picks.seed == drop
    out[bad] = np.nan
    return out


# --------------------------------------------------------------------------- the jackknife


@dataclasses.dataclass
class Estimate:
    """A mean over replay runs with its leave-one-seed-out jackknife SE, CI and two-sided p (H0: 0)."""

    estimate: float
    se: float
    df: int
    ci: tuple[float, float]
    p: float
    n_runs: int
    folds: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "se": self.se, "df": self.df, "ci": list(self.ci), "p": self.p,
                "n_runs": self.n_runs, "folds": list(self.folds)}


def jackknife(statistic: Callable[[int | None], tuple[float, int]], n_seeds: int, level: float = LEVEL) -> Estimate:
    """Leave-one-seed-out jackknife of ``statistic(drop) -> (value, n_runs)`` (``drop=None``: all seeds)."""
    from scipy import stats

    theta, n = statistic(None)
    folds = np.array([statistic(c)[0] for c in range(n_seeds)], dtype=float)
    ok = folds[np.isfinite(folds)]
    k = ok.size
    if not math.isfinite(theta) or k < 2:
        return Estimate(theta, math.nan, max(k - 1, 0), (math.nan, math.nan), math.nan, n, folds.tolist())
    se = math.sqrt((k - 1) / k * float(np.sum((ok - ok.mean()) ** 2)))
    df = k - 1
    if se == 0.0:
        p = 1.0 if theta == 0.0 else 0.0
        return Estimate(theta, 0.0, df, (theta, theta), p, n, folds.tolist())
    q = float(stats.t.ppf(0.5 + level / 2, df))
    p = float(2 * stats.t.sf(abs(theta) / se, df))
    return Estimate(theta, se, df, (theta - q * se, theta + q * se), p, n, folds.tolist())


def _mean(x: np.ndarray) -> tuple[float, int]:
    x = x[~np.isnan(x)]
    return (float(x.mean()) if x.size else math.nan), int(x.size)


def mean_score(values: np.ndarray, picks: Picks, level: float = LEVEL) -> Estimate:
    """Mean held-out score of the picks."""
    return jackknife(lambda d: _mean(scores(values, picks, d)), values.shape[1], level)


def mean_regret(values: np.ndarray, picks: Picks, level: float = LEVEL) -> Estimate:
    """Mean held-out regret: the best held-out score of the run's seed minus the pick's."""
    return jackknife(lambda d: _mean(oracle(values, picks, d) - scores(values, picks, d)), values.shape[1], level)


def mean_difference(values: np.ndarray, a: Picks, b: Picks, level: float = LEVEL) -> Estimate:
    """Mean paired difference of held-out scores, ``a`` minus ``b`` (runs paired by replay seed)."""
    a, b = paired(a, b)
    return jackknife(lambda d: _mean(scores(values, a, d) - scores(values, b, d)), values.shape[1], level)


def optimism(values: np.ndarray, picks: Picks) -> float:
    """Mean of (value the pick was selected on - its held-out score): the winner's curse (descriptive)."""
    return _mean(picks.selected - scores(values, picks))[0]
