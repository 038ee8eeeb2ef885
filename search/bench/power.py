"""Power of a table design, from the variance components of an existing table (a pilot).

:func:`variance_components` fits, per metric, the additive model ``accuracy = architecture mean + seed
effect (shared by every architecture) + run noise`` to a table: the architecture means shrunk toward
their grand mean by the share of their spread that is not noise (the raw means of S runs overstate
it by sigma^2 / S), the sd of the seed effects and of the run noise, and the correlation of the run
noise and of the seed effects across metrics (one trained model is compressed and fine-tuned). The
run noise is the pilot's whole residual: it includes the part of the pilot's row-sampling noise that
differs between runs, which cannot be told apart without per-row predictions (runs are evaluated on
the same fixed rows, so most of that noise is shared, not binomial per run: the fine-tuned runs of
the 5k table differ by less than the binomial SE of 1,000 rows).

:func:`simulate_power` draws tables of a design (training seeds per architecture, test rows) from
those components, replays the random and grid samplers on them (vectorised,
:func:`search.bench.synthetic.random_search_picks`; TPE cannot be simulated this way and is left
out), adds to the test columns independent binomial noise of ``n_test`` rows (a worst case: as if no
row noise were shared between runs) and runs the held-out test of :mod:`search.bench.heldout` on
each: the power at the pilot's plug-in effect (the effect the shrunk means imply), two-sided and
one-sided, the sd of the estimate and the minimum detectable effect at 80 % power,
``(t_{1-alpha/2} + t_{0.8}) x SE`` with the t quantiles of ``S - 1`` degrees of freedom and SE the
mean jackknife SE (an approximation: the jackknife is conservative).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from . import heldout as ho
from .synthetic import random_search_picks
from .table import METRIC_COLUMNS, BenchTable

METRICS = tuple(METRIC_COLUMNS)


@dataclasses.dataclass
class Components:
    """Per metric (``METRICS`` order): shrunk architecture means ``(n_metrics, n_archs)``, seed-effect sd,
    run-noise sd (the pilot's residual), their correlations across metrics, the pilot's rows per accuracy
    and the ICC."""

    means: np.ndarray
    sd_seed: np.ndarray
    sd_run: np.ndarray
    corr_run: np.ndarray
    corr_seed: np.ndarray
    n_rows: int
    icc: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": list(METRICS), "sd_seed": self.sd_seed.tolist(), "sd_run": self.sd_run.tolist(),
                "sd_arch_means": self.means.std(axis=1, ddof=1).tolist(), "icc": self.icc.tolist(),
                "corr_run": self.corr_run.tolist(), "corr_seed": self.corr_seed.tolist(), "pilot_rows": self.n_rows}


def _measure_var(p: np.ndarray | float, n: int | None) -> np.ndarray | float:
    return p * (1 - p) / n if n else 0.0


def variance_components(table: BenchTable, split: str = "val") -> Components:
    """Fit the additive model to every metric of ``table`` (architectures with a failed run left out)."""
    ys = np.stack([table.array(m, split) for m in METRICS])
    ok = ~np.any(np.isnan(ys), axis=(0, 2))
    ys = ys[:, ok]
    n_metrics, n_archs, n_seeds = ys.shape
    rows, cols, grand = ys.mean(axis=2, keepdims=True), ys.mean(axis=1, keepdims=True), ys.mean(axis=(1, 2), keepdims=True)
    resid = ys - rows - cols + grand
    ms_res = (resid ** 2).sum(axis=(1, 2)) / ((n_archs - 1) * (n_seeds - 1))
    ms_seed = n_archs * ((cols - grand) ** 2).sum(axis=(1, 2)) / (n_seeds - 1)
    ms_arch = n_seeds * ((rows - grand) ** 2).sum(axis=(1, 2)) / (n_archs - 1)
    n_rows = table.n_rows_of(split) or 0
    var_run = np.maximum(ms_res, 1e-12)
    sd_seed = np.sqrt(np.maximum(ms_seed - ms_res, 0.0) / n_archs)
    shrink = np.maximum(0.0, 1.0 - ms_res / np.maximum(ms_arch, 1e-12))  # the arch-mean spread that is not noise
    means = grand[:, :, 0] + shrink[:, None] * (rows[:, :, 0] - grand[:, :, 0])
    flat = resid.reshape(n_metrics, -1)
    corr_run = np.corrcoef(flat) if n_metrics > 1 else np.ones((1, 1))
    corr_seed = np.corrcoef(cols[:, 0, :]) if n_seeds > 2 else np.eye(n_metrics)
    icc = (ms_arch - ms_res) / (ms_arch + (n_seeds - 1) * ms_res)
    return Components(means, sd_seed, np.sqrt(var_run), np.nan_to_num(corr_run), np.nan_to_num(corr_seed),
                      n_rows, icc)


def simulate_tables(c: Components, n_seeds: int, n_test: int | None, n_tables: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(validation, test)`` accuracies, each ``(n_tables, n_metrics, n_archs, n_seeds)``: simulated runs as
    the pilot measured them, and the same runs with independent binomial noise of ``n_test`` rows added
    (normal approximation; none for ``n_test`` None)."""
    n_metrics, n_archs = c.means.shape
    cov_run = c.corr_run * np.outer(c.sd_run, c.sd_run)
    cov_seed = c.corr_seed * np.outer(c.sd_seed, c.sd_seed)
    run = rng.multivariate_normal(np.zeros(n_metrics), cov_run, size=(n_tables, n_archs, n_seeds), method="eigh")
    seed = rng.multivariate_normal(np.zeros(n_metrics), cov_seed, size=(n_tables, n_seeds), method="eigh")
    truth = c.means[None, :, :, None] + np.moveaxis(run, 3, 1) + np.moveaxis(seed, 2, 1)[:, :, None, :]
    p = np.clip(truth, 0.01, 0.99)
    test = truth + np.sqrt(_measure_var(p, n_test)) * rng.standard_normal(truth.shape)
    return truth, test


def _proposals(rng: np.random.Generator, sampler: str, n_runs: int, n_archs: int, budget: int) -> np.ndarray:
    """Random search: uniform with replacement; grid: a random order without replacement (Optuna's grid)."""
    if sampler == "random":
        return rng.integers(0, n_archs, size=(n_runs, budget))
    return np.argsort(rng.random((n_runs, n_archs)), axis=1)[:, :budget]


#: A test of the power analysis: ``(question, target metric, a, b, budget)``. ``q3``: sampler ``a`` (= ``b``)
#: searching on the target (aware) minus searching on trained accuracy (after), paired; ``q1``: sampler ``a``
#: minus sampler ``b`` (``random`` or ``grid``), both searching on the target. Both scored held out.
Test = tuple[str, str, str, str, int]


def simulate_power(c: Components, tests: Sequence[Test], n_seeds: int, n_test: int | None, n_tables: int = 200,
                   n_runs: int = 200, alpha: float = 0.05, seed: int = 0) -> list[dict[str, Any]]:
    """Per test: the plug-in effect (mean over simulated tables of the true difference of the picks), the
    power of the held-out jackknife test at ``alpha`` two-sided and one-sided (``a`` better), the sd of the
    estimate, the mean SE and the two-sided MDE at 80 % power."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    val, test = simulate_tables(c, n_seeds, n_test, n_tables, rng)
    n_archs = c.means.shape[1]
    index = {m: i for i, m in enumerate(METRICS)}
    out = []
    for question, target, a, b, budget in tests:
        t = index[target]
        est, ses, ps, true, one = [], [], [], [], []
        for k in range(n_tables):
            seeds = np.repeat(rng.integers(0, n_seeds, size=(n_runs, 1)), n_archs, axis=1)
            if question == "q3":
                props = _proposals(rng, a, n_runs, n_archs, budget)
                pa = random_search_picks(val[k, t], props, seeds)
                pb = random_search_picks(val[k, index["trained"]], props, seeds)
            else:
                pa = random_search_picks(val[k, t], _proposals(rng, a, n_runs, n_archs, budget), seeds)
                pb = random_search_picks(val[k, t], _proposals(rng, b, n_runs, n_archs, budget), seeds)
            e = ho.mean_difference(test[k, t], pa, pb, level=1 - alpha)
            est.append(e.estimate), ses.append(e.se), ps.append(e.p)
            one.append(e.p / 2 if e.estimate > 0 else 1 - e.p / 2)
            true.append(float(np.mean(c.means[t][pa.arch] - c.means[t][pb.arch])))
        df = n_seeds - 1
        se = float(np.nanmean(ses))
        mde = (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(0.8, df)) * se
        out.append({"test": f"{question}:{target}:{a}-{b}:{budget}", "n_seeds": n_seeds, "n_test": n_test,
                    "plugin_effect": float(np.mean(true)), "power": float(np.mean(np.array(ps) < alpha)),
                    "power_one_sided": float(np.mean(np.array(one) < alpha)),
                    "sd_estimate": float(np.std(est, ddof=1)), "mean_se": se, "mde80": float(mde)})
    return out
