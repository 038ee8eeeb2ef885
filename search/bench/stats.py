"""Statistics of replayed searches and of the table itself (numpy + scipy.stats).

Every figure a search produced is scored on what it was not selected on, and every interval and
p-value comes from the training runs, not from the replays (:mod:`search.bench.heldout`): a pick's
score is its accuracy on the test split (the validation rows for a schema-1 table) averaged over
the training seeds its run did not draw, and uncertainty is a leave-one-training-seed-out jackknife
(t with ``folds - 1`` degrees of freedom), so adding replays does not narrow it.

* :func:`heldout_curve` -- per trial, the mean held-out score of each sampler's pick so far, with the
  jackknife band; :func:`curve` is the descriptive curve of the *observed* (selected-on) best so far.
* :func:`compare_samplers` -- at each budget: mean held-out regret per sampler (the best held-out score
  any architecture has for the run's seed, minus the pick's), the pick's held-out score beside the
  value the run selected on (their gap is the winner's curse), and for each sampler pair the mean
  paired difference of held-out scores with its CI and p-value (Holm over all pairs and budgets).
* :func:`noise_report` -- per metric and split: median and pooled within-architecture sd, runs at
  chance and collapsed runs, ICC, the two-way ANOVA p-values of architectures and seeds, Friedman's
  test of shared seed effects, and the test-retest Kendall's tau of the ranking between seeds.
  :func:`noise_floor` is the per-architecture spread.
* :func:`question2` -- does compression keep the ranking? Same-run correlations of architecture means
  (inflated: both come from the same models), and the honest comparison: Kendall's tau between the
  trained ranking of one seed and the compressed ranking of another, against the test-retest
  baseline of each ranking.
* :func:`question3` -- compress-after-NAS vs compression-aware search, paired over replay seeds,
  both scored on held-out seeds of the target.
* :func:`analyse` puts them into one JSON-able dict; :func:`format_summary` writes it as text.

Standard deviations over seeds are sample standard deviations (``ddof=1``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from . import heldout as ho
from .heldout import Estimate, Picks
from .replay import ReplayRun, hypervolume_2d
from .table import METRIC_COLUMNS, BenchTable

BUDGETS = (5, 10, 20, 50)
N_BOOT = 1000
TOP_K = (1, 3, 5, 10)
METRICS = tuple(METRIC_COLUMNS)
#: z of the one-sided 97.5 % bound of a binomial accuracy at chance (a run "at chance").
CHANCE_Z = 1.96
#: A run this many robust sds below the median of its architecture's other runs is "collapsed".
COLLAPSE_SDS = 4.0


# --------------------------------------------------------------------------- small tools


def bootstrap_ci(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded); ``(v, v)`` for one value, NaNs for none."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if not np.isnan(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def wilcoxon_p(d: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences ``d`` (1 when all are zero)."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0 or np.all(np.abs(d) < 1e-12):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(d, zero_method="zsplit")
    p = float(res.pvalue)
    return 1.0 if math.isnan(p) else p


def rank_biserial(d: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of ``d`` (nonzero differences ranked by size): +1 when
    every difference is positive, -1 when every one is negative, 0 when all are zero."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    d = d[~np.isnan(d) & (np.abs(d) >= 1e-12)]
    if d.size == 0:
        return 0.0
    r = stats.rankdata(np.abs(d))
    return float((r[d > 0].sum() - r[d < 0].sum()) / r.sum())


def prob_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """P(a > b) over pairs, ties counting 1/2."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0:
        return math.nan
    tie = np.abs(a - b) < 1e-12
    return float(np.mean(np.where(tie, 0.5, (a > b).astype(float))))


def valid_budgets(budgets: Sequence[int], n_archs: int, n_trials: int | None = None) -> list[int]:
    """The budgets that are at most the number of buildable architectures (and ``n_trials``)."""
    limit = min(n_archs, n_trials) if n_trials is not None else n_archs
    return sorted({int(b) for b in budgets if 0 < b <= limit})


# --------------------------------------------------------------------------- curves


def curve(runs: Sequence[ReplayRun], measure: str = "auto", n_boot: int = N_BOOT, seed: int = 0) -> list[dict[str, Any]]:
    """Descriptive: mean and 95 % bootstrap band *over replays* of a per-trial *observed* measure:
    ``best`` (observed accuracy so far: the values selected on, optimistic), ``hypervolume`` or
    ``auto`` (each run's own, :meth:`ReplayRun.measure`). The band resamples replays, not training
    runs: it is not an inference about architectures (:func:`heldout_curve` is).

    At trial ``i`` only runs with at least ``i`` counted trials (and a defined value) count; ``n`` says
    how many did.
    """
    get = {"best": ReplayRun.best_so_far, "hypervolume": ReplayRun.hypervolume, "auto": ReplayRun.measure}[measure]
    series = [get(r) for r in runs]
    out = []
    for i in range(max((len(s) for s in series), default=0)):
        vals = [s[i] for s in series if len(s) > i and not math.isnan(s[i])]
        if not vals:
            continue
        lo, hi = bootstrap_ci(vals, n_boot, seed + i)
        out.append({"trial": i + 1, "mean": float(np.mean(vals)), "lo": lo, "hi": hi, "n": len(vals)})
    return out


def heldout_curve(runs: Sequence[ReplayRun], table: BenchTable, values: np.ndarray) -> list[dict[str, Any]]:
    """Per trial ``i``: the mean held-out score (``values``: the scoring array) of the pick among the first
    ``i`` trials of each run that reached trial ``i``, with its jackknife 95 % band (``lo``, ``hi``),
    ``n`` runs, and ``observed``: the mean value those picks were selected on."""
    out = []
    for i in range(1, max((len(r) for r in runs), default=0) + 1):
        picks = Picks.from_runs([r for r in runs if len(r) >= i], table, i)
        est = ho.mean_score(values, picks)
        if est.n_runs == 0:
            continue
        sel = picks.selected[~np.isnan(picks.selected)]
        out.append({"trial": i, "mean": est.estimate, "lo": est.ci[0], "hi": est.ci[1], "n": est.n_runs,
                    "observed": float(sel.mean()) if sel.size else math.nan})
    return out


# --------------------------------------------------------------------------- the table alone


def noise_floor(table: BenchTable) -> dict[str, Any]:
    """Per architecture and metric: std (ddof=1), min and max over seeds; ``median_std`` per metric."""
    per_arch: dict[str, dict[str, Any]] = {a: {} for a in table.archs}
    median: dict[str, float] = {}
    for metric in METRICS:
        arr = table.array(metric)
        stds = []
        for i, a in enumerate(table.archs):
            v = arr[i][~np.isnan(arr[i])]
            std = float(np.std(v, ddof=1)) if v.size >= 2 else math.nan
            stds.append(std)
            per_arch[a][metric] = {"std": std, "min": float(v.min()) if v.size else math.nan,
                                   "max": float(v.max()) if v.size else math.nan, "n": int(v.size)}
        s = np.asarray(stds)
        median[metric] = float(np.median(s[~np.isnan(s)])) if np.any(~np.isnan(s)) else math.nan
    return {"median_std": median, "per_arch": per_arch}


def row_means(arr: np.ndarray) -> np.ndarray:
    """Mean of each row over its non-NaN values (NaN for a row of NaNs), without warnings."""
    ok = ~np.isnan(arr)
    n = ok.sum(axis=1)
    return np.where(n > 0, np.where(ok, arr, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import stats

    ok = ~np.isnan(x) & ~np.isnan(y)
    if ok.sum() < 3 or np.all(x[ok] == x[ok][0]) or np.all(y[ok] == y[ok][0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(x[ok], y[ok]).statistic)


def retest_tau(arr: np.ndarray, seeds: Sequence[int] | None = None) -> float:
    """Mean Kendall's tau between the architecture rankings of two different seeds (over seed pairs)."""
    cols = range(arr.shape[1]) if seeds is None else seeds
    taus = [_kendall(arr[:, s], arr[:, t]) for s, t in itertools.combinations(cols, 2)]
    taus = [t for t in taus if not math.isnan(t)]
    return float(np.mean(taus)) if taus else math.nan


def cross_tau(a: np.ndarray, b: np.ndarray, seeds: Sequence[int] | None = None) -> float:
    """Mean Kendall's tau between ranking ``a`` of one seed and ranking ``b`` of another (independent runs)."""
    cols = range(a.shape[1]) if seeds is None else seeds
    taus = [_kendall(a[:, s], b[:, t]) for s, t in itertools.permutations(cols, 2)]
    taus = [t for t in taus if not math.isnan(t)]
    return float(np.mean(taus)) if taus else math.nan


def icc_oneway(arr: np.ndarray) -> float:
    """ICC(1) of architectures over seeds (complete architectures only): the share of one run's variance
    due to the architecture, (MSB - MSW) / (MSB + (k - 1) MSW)."""
    y = arr[~np.any(np.isnan(arr), axis=1)]
    n, k = y.shape
    if n < 2 or k < 2:
        return math.nan
    msb = k * float(np.var(y.mean(axis=1), ddof=1))
    msw = float(np.mean(np.var(y, axis=1, ddof=1)))
    den = msb + (k - 1) * msw
    return (msb - msw) / den if den > 0 else math.nan


def two_way_anova(arr: np.ndarray) -> dict[str, float]:
    """Additive two-way ANOVA (architecture + seed, complete architectures): p-values of the architecture
    and seed effects, residual sd, the ICC once seed effects are removed (``icc_seed_adjusted``:
    (MS_arch - MS_res) / (MS_arch + (k - 1) MS_res)), and Friedman's test of seed effects (architectures
    as blocks)."""
    from scipy import stats

    y = arr[~np.any(np.isnan(arr), axis=1)]
    n, k = y.shape
    out = {"arch_p": math.nan, "seed_p": math.nan, "seed_friedman_p": math.nan, "residual_sd": math.nan,
           "icc_seed_adjusted": math.nan}
    if n < 2 or k < 2:
        return out
    g, rows, cols = y.mean(), y.mean(axis=1, keepdims=True), y.mean(axis=0, keepdims=True)
    ss_a, ss_s = k * float(((rows - g) ** 2).sum()), n * float(((cols - g) ** 2).sum())
    df_a, df_s, df_r = n - 1, k - 1, (n - 1) * (k - 1)
    ms_r = float(((y - rows - cols + g) ** 2).sum()) / df_r
    if ms_r > 0:
        out["arch_p"] = float(stats.f.sf(ss_a / df_a / ms_r, df_a, df_r))
        out["seed_p"] = float(stats.f.sf(ss_s / df_s / ms_r, df_s, df_r))
    out["residual_sd"] = math.sqrt(ms_r)
    ms_a = ss_a / df_a
    if ms_a + (k - 1) * ms_r > 0:
        out["icc_seed_adjusted"] = (ms_a - ms_r) / (ms_a + (k - 1) * ms_r)
    if k >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["seed_friedman_p"] = float(stats.friedmanchisquare(*y.T).pvalue)
    return out


def odd_runs(table: BenchTable, arr: np.ndarray, split: str) -> dict[str, list[dict[str, Any]]]:
    """Runs at chance (accuracy within the one-sided 97.5 % binomial bound of chance on the split's rows;
    chance = 1 / data.num_labels) and collapsed runs (at chance, or more than :data:`COLLAPSE_SDS`
    robust sds below the median of the other runs of their architecture; robust sd = 1.4826 x the
    median of those absolute gaps over every run)."""
    chance = 1.0 / float(table.manifest.get("data", {}).get("num_labels") or 2)
    n = table.n_rows_of(split)
    bound = chance + CHANCE_Z * math.sqrt(chance * (1 - chance) / n) if n else chance + 0.02
    resid = np.full(arr.shape, np.nan)
    with warnings.catch_warnings():  # an architecture with no other run that did not fail has no median
        warnings.simplefilter("ignore", RuntimeWarning)
        for j in range(arr.shape[1]):
            resid[:, j] = arr[:, j] - np.nanmedian(np.delete(arr, j, axis=1), axis=1)
    robust = 1.4826 * float(np.nanmedian(np.abs(resid))) if np.any(~np.isnan(resid)) else math.nan
    chance_runs, collapsed = [], []
    for i, j in zip(*np.nonzero(~np.isnan(arr))):
        v = float(arr[i, j])
        run = {"arch": table.archs[i], "seed": table.seeds[j], "accuracy": v}
        if v <= bound:
            chance_runs.append(run)
        if v <= bound or (robust > 0 and resid[i, j] < -COLLAPSE_SDS * robust):
            collapsed.append(run)
    return {"at_chance": chance_runs, "collapsed": collapsed, "chance_bound": bound}


def noise_report(table: BenchTable) -> dict[str, Any]:
    """Per split (``val``, and ``test`` when the table has it) and metric: how noisy one training run is."""
    out: dict[str, Any] = {}
    for split in ("val", "test") if table.has_test else ("val",):
        out[split] = {}
        for metric in METRICS:
            arr = table.array(metric, split)
            var = np.array([np.var(r[~np.isnan(r)], ddof=1) if np.sum(~np.isnan(r)) >= 2 else np.nan for r in arr])
            odd = odd_runs(table, arr, split)
            out[split][metric] = {
                "median_sd": float(np.nanmedian(np.sqrt(var))) if np.any(~np.isnan(var)) else math.nan,
                "pooled_sd": float(np.sqrt(np.nanmean(var))) if np.any(~np.isnan(var)) else math.nan,
                "n_runs": int(np.sum(~np.isnan(arr))), "n_failed": int(np.sum(np.isnan(arr))),
                "n_at_chance": len(odd["at_chance"]), "n_collapsed": len(odd["collapsed"]),
                "collapsed": odd["collapsed"], "chance_bound": odd["chance_bound"],
                "icc": icc_oneway(arr), "retest_tau": retest_tau(arr), **two_way_anova(arr),
            }
    return out


def _ranked(table: BenchTable, metric: str) -> list[str]:
    """Architectures by decreasing mean ``metric`` (ties by id; NaN means last)."""
    m = table.mean(metric)
    return sorted(table.archs, key=lambda a: (math.isnan(m[a]), -m[a] if not math.isnan(m[a]) else 0.0, a))


def top_k_overlap(table: BenchTable, a: str, b: str, ks: Sequence[int] = TOP_K) -> dict[int, float]:
    """``|top-k by a ∩ top-k by b| / k`` for each k below the number of architectures (k = 1 always)."""
    ra, rb = _ranked(table, a), _ranked(table, b)
    n = table.n_archs
    return {k: len(set(ra[:k]) & set(rb[:k])) / k for k in ks if k == 1 or k < n}


def _correlation(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from scipy import stats

    ok = ~np.isnan(x) & ~np.isnan(y)
    x, y = x[ok], y[ok]
    out: dict[str, Any] = {"n": int(x.size)}
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {**out, "kendall_tau": None, "kendall_p": None, "spearman_rho": None, "spearman_p": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kt = stats.kendalltau(x, y)
        sr = stats.spearmanr(x, y)
    return {**out, "kendall_tau": float(kt.statistic), "kendall_p": float(kt.pvalue),
            "spearman_rho": float(sr.statistic), "spearman_p": float(sr.pvalue)}


def rank_agreement(table: BenchTable, a: str, b: str, split: str = "val") -> dict[str, Any]:
    """Kendall's tau of ranking ``a`` of one seed vs ranking ``b`` of another seed (``cross_runs``: independent
    models), against the test-retest taus of each ranking and their geometric mean (``ceiling``: what the
    cross-run tau would be if ``b`` ranked as ``a`` does, given the noise of one run). ``difference`` = cross
    minus ceiling, with its leave-one-seed-out jackknife (negative: ``b`` reorders beyond training noise)."""
    x, y = table.array(a, split), table.array(b, split)
    n_seeds = x.shape[1]

    def parts(drop: int | None) -> tuple[float, float, float, float]:
        seeds = [s for s in range(n_seeds) if s != drop]
        rx, ry = retest_tau(x, seeds), retest_tau(y, seeds)
        ceiling = math.sqrt(max(rx, 0.0) * max(ry, 0.0)) if not (math.isnan(rx) or math.isnan(ry)) else math.nan
        return cross_tau(x, y, seeds), rx, ry, ceiling

    def gap(drop: int | None) -> tuple[float, int]:
        cross_d, _, _, ceiling_d = parts(drop)
        return cross_d - ceiling_d, n_seeds

    cross, rx, ry, ceiling = parts(None)
    diff = ho.jackknife(gap, n_seeds) if n_seeds >= 3 else None  # a fold needs 2 seeds for a cross pair
    return {"split": split, "same_runs": _correlation(row_means(x), row_means(y)),
            "cross_runs": cross, "retest": {a: rx, b: ry}, "ceiling": ceiling,
            "difference": diff.to_dict() if diff is not None else None}


def question2(table: BenchTable, n_hurt: int = 5) -> dict[str, Any]:
    """Does compression keep the ranking? Same-run correlations of arch-means trained vs compressed and vs
    finetuned (inflated: the same models), top-k overlaps, the architectures compression hurts most, and
    :func:`rank_agreement` across independent runs against the test-retest baseline."""
    t, c, f = table.means("trained"), table.means("compressed"), table.means("finetuned")
    drop = t - c
    order = [i for i in np.argsort(-np.where(np.isnan(drop), -np.inf, drop), kind="stable") if not np.isnan(drop[i])]
    hurt = [{"arch": table.archs[i], "trained": float(t[i]), "compressed": float(c[i]), "finetuned": float(f[i]),
             "drop": float(drop[i])} for i in order[:n_hurt]]
    best = {m: table.best_arch(m)[0] for m in METRICS}
    split = ho.scoring_split(table)
    return {
        "n_archs": table.n_archs,
        "trained_vs_compressed": _correlation(t, c),
        "trained_vs_finetuned": _correlation(t, f),
        "top_k_overlap": {"compressed": top_k_overlap(table, "trained", "compressed"),
                          "finetuned": top_k_overlap(table, "trained", "finetuned")},
        "mean_drop_compressed": float(np.nanmean(drop)) if np.any(~np.isnan(drop)) else None,
        "mean_drop_finetuned": float(np.nanmean(t - f)) if np.any(~np.isnan(t - f)) else None,
        "best_arch": best,
        "most_hurt": hurt,
        "independent_runs": {target: rank_agreement(table, "trained", target, split)
                             for target in ("compressed", "finetuned")},
    }


# --------------------------------------------------------------------------- searches


def _est(e: Estimate) -> dict[str, Any]:
    """An estimate's figures under the names the statistics use."""
    return {"se": e.se, "df": e.df, "ci": list(e.ci), "p": e.p}


def _found_best(values: np.ndarray, picks: Picks) -> float:
    """Share of runs whose pick has the best held-out score of its run's seed."""
    h = ho.heldout_means(values)
    ok = picks.arch >= 0
    if not ok.any():
        return math.nan
    best = np.argmax(np.where(np.isnan(h), -np.inf, h), axis=0)
    return float(np.mean(best[picks.seed[ok]] == picks.arch[ok]))


def sampler_summary(values: np.ndarray, picks: Picks) -> dict[str, Any]:
    """Held-out regret and score of one sampler's picks, beside the value they were selected on."""
    regret, score = ho.mean_regret(values, picks), ho.mean_score(values, picks)
    sel = picks.selected[~np.isnan(picks.selected)]
    return {"n": regret.n_runs, "mean_regret": regret.estimate, **_est(regret),
            "heldout_mean": score.estimate, "heldout_ci": list(score.ci),
            "selected_mean": float(sel.mean()) if sel.size else math.nan, "optimism": ho.optimism(values, picks),
            "p_found_best": _found_best(values, picks)}


def paired_comparison(values: np.ndarray, a: Picks, b: Picks) -> dict[str, Any]:
    """Held-out paired difference a - b (jackknife CI and p) and P(a's pick scores higher), over paired runs."""
    est = ho.mean_difference(values, a, b)
    pa, pb = ho.paired(a, b)
    sa, sb = ho.scores(values, pa), ho.scores(values, pb)
    ok = ~np.isnan(sa) & ~np.isnan(sb)
    return {"n": est.n_runs, "mean_difference": est.estimate, **_est(est), "p_a_better": prob_greater(sa[ok], sb[ok])}


def compare_samplers(runs: Mapping[str, Sequence[ReplayRun]], table: BenchTable, metric: str,
                     budgets: Sequence[int]) -> dict[str, Any]:
    """Held-out regret per sampler and paired comparisons per sampler pair, at each budget (module docstring).

    A pair's ``mean_difference`` is A's held-out score minus B's: positive means A found better
    architectures. ``p`` is the jackknife t-test, ``p_holm`` Holm-corrected over all pairs and budgets.
    """
    split = ho.scoring_split(table)
    values = table.array(metric, split)
    means = row_means(values)
    best_i = int(np.nanargmax(means))
    samplers = list(runs)
    per: dict[str, dict[str, Any]] = {s: {} for s in samplers}
    picks = {(s, b): Picks.from_runs(runs[s], table, b) for s in samplers for b in budgets}
    for s, b in picks:
        per[s][str(b)] = sampler_summary(values, picks[s, b])
    pairs = [{"budget": b, "a": x, "b": y, **paired_comparison(values, picks[x, b], picks[y, b])}
             for b in budgets for x, y in itertools.combinations(samplers, 2)]
    for p, adj in zip(pairs, holm([p["p"] for p in pairs])):
        p["p_holm"] = adj
    return {"metric": metric, "split": split, "best_arch": table.archs[best_i],
            "best_mean": float(means[best_i]), "budgets": list(budgets), "samplers": per, "pairs": pairs}


def _front(run: ReplayRun, budget: int) -> list[tuple[str, int, float, float]]:
    """The run's observed Pareto front (max accuracy, min size) among its first ``budget`` trials:
    ``(arch, table seed, observed accuracy, size / size_ref)``."""
    pts = [(t.arch, t.table_seed, t.observed, t.size_bytes_compressed / run.size_ref)
           for t in run.trials[:budget] if not math.isnan(t.observed)]
    return [p for p in pts if not any(q[2] >= p[2] and q[3] <= p[3] and (q[2] > p[2] or q[3] < p[3]) for q in pts)]


def heldout_hypervolume(runs: Sequence[ReplayRun], table: BenchTable, values: np.ndarray, budget: int) -> Estimate:
    """Mean hypervolume of each run's observed front with its points' held-out accuracies (jackknife)."""
    seed_index = {s: j for j, s in enumerate(table.seeds)}
    fronts = [[(table.arch_index[a], seed_index[s], z) for a, s, _, z in _front(r, budget)] for r in runs]

    def stat(drop: int | None) -> tuple[float, int]:
        h = ho.heldout_means(values, drop)
        hv = [hypervolume_2d([(h[a, s], z) for a, s, z in f if not math.isnan(h[a, s])])
              for f in fronts if f and not any(s == drop for _, s, _ in f)]
        return (float(np.mean(hv)) if hv else math.nan), len(hv)

    return ho.jackknife(stat, values.shape[1])


def hypervolume_table(runs: Mapping[str, Sequence[ReplayRun]], table: BenchTable, metric: str,
                      budgets: Sequence[int]) -> dict[str, Any]:
    """Held-out hypervolume (accuracy x compressed size) per sampler at each budget, with its jackknife CI."""
    values = table.array(metric, ho.scoring_split(table))
    out: dict[str, Any] = {}
    for s, rs in runs.items():
        out[s] = {}
        for b in budgets:
            e = heldout_hypervolume([r for r in rs if len(r) >= b], table, values, b)
            out[s][str(b)] = {"n": e.n_runs, "mean": e.estimate, "ci": list(e.ci)}
    return out


def question3(runs: Mapping[tuple[str, str], Sequence[ReplayRun]], table: BenchTable, budgets: Sequence[int],
              samplers: Sequence[str] = ("tpe", "random")) -> dict[str, Any]:
    """Compress-after-NAS vs compression-aware search, paired over replay seeds, scored held out.

    ``runs[(sampler, metric)]``: replays of ``sampler`` on ``metric``. For target ``compressed``
    (``finetuned``): after = the pick of the ``trained`` search, aware = the pick of the search on the
    target; both scored by the target accuracy on held-out seeds (test split when the table has it).
    ``mean_difference`` is aware minus after (positive: compression-aware search found better models);
    ``aware_selected_mean`` is the target value the aware search saw for its pick (optimistic).
    """
    split = ho.scoring_split(table)
    comparisons = []
    for s in samplers:
        if (s, "trained") not in runs:
            continue
        for target in ("compressed", "finetuned"):
            if (s, target) not in runs:
                continue
            values = table.array(target, split)
            for b in budgets:
                after, aware = ho.paired(Picks.from_runs(runs[s, "trained"], table, b),
                                         Picks.from_runs(runs[s, target], table, b))
                a_est, w_est = ho.mean_score(values, after), ho.mean_score(values, aware)
                test = paired_comparison(values, aware, after)
                sel = aware.selected[~np.isnan(aware.selected)]
                comparisons.append({
                    "sampler": s, "target": target, "budget": b, "after_mean": a_est.estimate,
                    "after_ci": list(a_est.ci), "aware_mean": w_est.estimate, "aware_ci": list(w_est.ci),
                    "aware_selected_mean": float(sel.mean()) if sel.size else math.nan, **test})
    for c, adj in zip(comparisons, holm([c["p"] for c in comparisons])):
        c["p_holm"] = adj
        c["p_aware_better"] = c.pop("p_a_better")
    best = {}
    for m in ("compressed", "finetuned"):
        means = row_means(table.array(m, split))
        i = int(np.nanargmax(means))
        best[m] = {"arch": table.archs[i], "mean": float(means[i])}
    return {"samplers": [s for s in samplers if (s, "trained") in runs], "budgets": list(budgets), "split": split,
            "best": best, "comparisons": comparisons}


# --------------------------------------------------------------------------- everything


def describe_seeds(seeds: Sequence[int]) -> str:
    """``[0, 1, ..., 199]`` -> ``"0-199"``; other lists comma-separated."""
    s = sorted(seeds)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ",".join(map(str, s))


def analyse(table: BenchTable, runs: Mapping[str, Mapping[str, Sequence[ReplayRun]]], budgets: Sequence[int],
            q3_runs: Mapping[tuple[str, str], Sequence[ReplayRun]] | None = None) -> dict[str, Any]:
    """All statistics: ``runs[metric][sampler]`` are the replays of the search; ``q3_runs`` those of
    question 3 (``{(sampler, metric): runs}``). Budgets beyond the number of architectures or the
    runs' length are dropped."""
    all_runs = [r for by_s in runs.values() for rs in by_s.values() for r in rs]
    n_trials = max((r.n_trials for r in all_runs), default=None)
    budgets = valid_budgets(budgets, table.n_archs, n_trials)
    split = ho.scoring_split(table)
    searches, curves, hv = {}, {}, {}
    for metric, by_sampler in runs.items():
        searches[metric] = compare_samplers(by_sampler, table, metric, budgets)
        values = table.array(metric, split)
        curves[metric] = {s: {"measure": "heldout", "points": heldout_curve(rs, table, values)}
                          for s, rs in by_sampler.items()}
        multi = {s: rs for s, rs in by_sampler.items() if rs and rs[0].multi_objective}
        if multi:
            hv[metric] = {"budgets": hypervolume_table(multi, table, metric, budgets)}
    modes = sorted({r.seed_mode for r in all_runs})
    seeds = sorted({r.seed for r in all_runs})
    return {
        "table": {"directory": str(table.directory), "n_archs": table.n_archs, "n_unbuildable": len(table.unbuildable),
                  "seeds": table.seeds, "space": table.space, "content_hash": table.manifest["content_hash"],
                  "schema_version": table.schema_version, "has_test": table.has_test},
        "replay": {"n_seeds": len(seeds), "seeds": describe_seeds(seeds), "seed_mode": ",".join(modes),
                   "n_trials": n_trials, "budgets": budgets, "metrics": list(runs),
                   "samplers": list(next(iter(runs.values()), {}))},
        "scoring": {"split": split, "heldout_seeds": True, "note": ho.scoring_note(table),
                    "inference": ho.INFERENCE, "n_training_seeds": len(table.seeds)},
        "noise": noise_report(table),
        "noise_floor": noise_floor(table),
        "searches": searches,
        "hypervolume": hv,
        "curves": curves,
        "q2": question2(table),
        "q3": question3(q3_runs, table, budgets) if q3_runs else None,
    }


def to_jsonable(obj: Any, digits: int = 6) -> Any:
    """``obj`` with numpy types made plain, floats rounded to ``digits`` significant digits, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, digits) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return None if not math.isfinite(v) else float(f"{v:.{digits}g}")
    return obj


# --------------------------------------------------------------------------- text


def _f(v: Any, nd: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _p(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def _ci(ci: Sequence[Any]) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]"


def _reading(what: str, diff: float, ci: Sequence[float], p_holm: float, noise: float, better: str, worse: str) -> str:
    """A plain-language reading of a paired held-out difference (``better`` wins when diff > 0); ``noise``:
    the pooled sd of one training run."""
    head = f"{what}: {_f(diff)} (95 % CI {_ci(ci)}), p_holm = {_p(p_holm)}"
    noise_s = f"the sd of one training run ({_f(noise)})"
    if p_holm is not None and not math.isnan(p_holm) and p_holm < 0.05:
        winner = better if diff > 0 else worse
        size = "less" if noise is not None and not math.isnan(noise) and abs(diff) < noise else "more"
        return f"{head}: {winner} is better, by {size} than {noise_s}"
    if any(c is None or math.isnan(c) for c in ci):
        return f"{head}: no evidence of a difference (too few training seeds for an interval)"
    return (f"{head}: no evidence of a difference; the data allow anything from {_f(ci[0])} to {_f(ci[1])} "
            f"({noise_s})")


def _format_head(stats: Mapping[str, Any]) -> list[str]:
    t, rp, sc = stats["table"], stats["replay"], stats["scoring"]
    mode = {"run": "one training seed per run, for every architecture (as a live study, whose trials all train "
                   "with one seed)", "arch": "one training seed per architecture (not as a live study)"}
    return [
        f"Benchmark replay of {t['directory']}: {t['n_archs']} architectures x {len(t['seeds'])} training seeds "
        f"(schema {t.get('schema_version', 1)}, {t['n_unbuildable']} unbuildable combinations), {rp['n_seeds']} replay "
        f"runs per sampler (replay seeds {rp.get('seeds', '?')}), up to {rp['n_trials']} trials, budgets "
        f"{', '.join(map(str, rp['budgets'])) or 'none'}",
        f"Noise: {mode.get(rp.get('seed_mode'), rp.get('seed_mode'))} (seed_mode = {rp.get('seed_mode')}).",
        f"Scoring: {sc['note']}.",
        f"Intervals and p-values: {sc['inference']}; {sc['n_training_seeds']} training seeds are the sample, so more "
        "replays do not narrow them. 'selected' is the value a run picked its architecture by (optimistic: the "
        "winner's curse); it is shown for contrast and never used as a result.",
    ]


def _format_noise(stats: Mapping[str, Any]) -> list[str]:
    lines = []
    for split, by_metric in stats["noise"].items():
        lines += ["", f"== Noise of one training run ({'test split' if split == 'test' else 'validation rows'}) ==",
                  f"{'metric':<12}{'median sd':>10}{'pooled sd':>10}{'at chance':>10}{'collapsed':>10}{'ICC':>7}"
                  f"{'ICC adj':>8}{'arch p':>8}{'seed p':>8}{'Friedman':>9}{'retest tau':>11}"]
        for m, n in by_metric.items():
            lines.append(f"{m:<12}{_f(n['median_sd']):>10}{_f(n['pooled_sd']):>10}{n['n_at_chance']:>10}"
                         f"{n['n_collapsed']:>10}{_f(n['icc'], 2):>7}{_f(n['icc_seed_adjusted'], 2):>8}"
                         f"{_p(n['arch_p']):>8}{_p(n['seed_p']):>8}"
                         f"{_p(n['seed_friedman_p']):>9}{_f(n['retest_tau'], 2):>11}")
        for m, n in by_metric.items():
            if n["collapsed"]:
                lines.append(f"  collapsed {m} runs: " + ", ".join(
                    f"{c['arch']} seed {c['seed']} {_f(c['accuracy'], 3)}" for c in n["collapsed"]))
    lines += ["median/pooled sd: of one run around its architecture's mean (pooled: sqrt of the mean variance; "
              "collapsed runs weigh in); at chance: within the 97.5 % binomial bound of chance on the rows "
              f"evaluated; collapsed: at chance or > {COLLAPSE_SDS:g} robust sds below the median of its architecture's other "
              "runs; ICC: share of a run's variance due to the architecture (ICC adj: once seed effects shared by every "
              "architecture are removed); arch p / seed p: two-way ANOVA (architecture + seed); "
              "Friedman: seed effects shared across architectures; retest tau: Kendall's tau between the "
              "architecture rankings of two seeds (how well one training run ranks architectures)."]
    return lines


def _format_search(metric: str, s: Mapping[str, Any], noise: float, hv: Mapping[str, Any] | None) -> list[str]:
    samplers, budgets = list(s["samplers"]), s["budgets"]
    lines = ["", f"== Search on {metric} accuracy (scored on {s['split']}, held-out seeds): best held-out "
                 f"architecture {s['best_arch']} (mean {_f(s['best_mean'])}) ==",
             "regret: best held-out score of the run's seed minus the pick's [95 % CI]; heldout: the pick's held-out "
             "score; selected: the value it was picked by; found: share of runs that picked the best architecture",
             f"{'budget':<8}{'sampler':<10}{'regret':>8}  {'95 % CI':<20}{'heldout':>8}{'selected':>9}{'found':>7}  n"]
    for b in budgets:
        for x in samplers:
            v = s["samplers"][x][str(b)]
            lines.append(f"{b:<8}{x:<10}{_f(v['mean_regret']):>8}  {_ci(v['ci']):<20}{_f(v['heldout_mean']):>8}"
                         f"{_f(v['selected_mean']):>9}{_f(v['p_found_best'], 2):>7}  {v['n']}")
    if s["pairs"]:
        lines.append("Pairs (diff = A's held-out score minus B's, > 0: A better; p: jackknife t-test, Holm over all "
                     "pairs and budgets; P(A>B): share of paired replays, descriptive):")
        lines.append(f"{'budget':<8}{'A':<10}{'B':<10}{'diff':>9}  {'95 % CI':<20}{'p':>8}{'p_holm':>9}{'P(A>B)':>8}  n")
        for p in s["pairs"]:
            lines.append(f"{p['budget']:<8}{p['a']:<10}{p['b']:<10}{_f(p['mean_difference']):>9}  {_ci(p['ci']):<20}"
                         f"{_p(p['p']):>8}{_p(p['p_holm']):>9}{_f(p['p_a_better'], 2):>8}  {p['n']}")
        lines.append("Reading (every pair at the largest budget, and significant ones at the others):")
        for p in s["pairs"]:
            if p["budget"] == budgets[-1] or (p["p_holm"] is not None and p["p_holm"] < 0.05):
                lines.append("  " + _reading(f"{p['a']} vs {p['b']} at {p['budget']} trials", p["mean_difference"],
                                             p["ci"], p["p_holm"], noise, p["a"], p["b"]))
    if hv:
        lines.append("Hypervolume of each run's observed front with held-out accuracies (accuracy x compressed size / "
                     "largest, reference (0, 1.1)), mean [95 % CI]:")
        for x, by_b in hv["budgets"].items():
            lines.append(f"  {x:<10}" + "  ".join(f"{b}: {_f(v['mean'])} {_ci(v['ci'])}" for b, v in by_b.items()))
    return lines


def _format_q2(q2: Mapping[str, Any]) -> list[str]:
    lines = ["", "== Question 2: do the best architectures stay the best after compression? (table alone) =="]
    for target in ("compressed", "finetuned"):
        c, ind = q2[f"trained_vs_{target}"], q2["independent_runs"][target]
        overlap = ", ".join(f"top-{k} {_f(v, 2)}" for k, v in q2["top_k_overlap"][target].items())
        lines.append(f"trained vs {target}, same models (inflated: one run gives both): Kendall tau "
                     f"{_f(c['kendall_tau'], 3)}, Spearman rho {_f(c['spearman_rho'], 3)}, n = {c['n']}; overlap {overlap}")
        d = ind["difference"]
        lines.append(f"  independent runs ({ind['split']}): tau(trained of one seed, {target} of another) "
                     f"{_f(ind['cross_runs'], 3)}; test-retest tau trained {_f(ind['retest']['trained'], 3)}, {target} "
                     f"{_f(ind['retest'][target], 3)}; ceiling (their geometric mean) {_f(ind['ceiling'], 3)}"
                     + (f"; cross minus ceiling {_f(d['estimate'], 3)} (95 % CI {_ci(d['ci'])}, p {_p(d['p'])})" if d else ""))
        lines.append("  Reading: " + _q2_reading(target, ind))
    lines.append(f"Mean drop trained -> compressed {_f(q2['mean_drop_compressed'])}, trained -> finetuned "
                 f"{_f(q2['mean_drop_finetuned'])}. Hurt most by compression (architecture means):")
    for h in q2["most_hurt"]:
        lines.append(f"  {h['arch']:<20} trained {_f(h['trained'])}  compressed {_f(h['compressed'])}  "
                     f"drop {_f(h['drop'])}  finetuned {_f(h['finetuned'])}")
    return lines


def _q2_reading(target: str, ind: Mapping[str, Any]) -> str:
    d = ind["difference"]
    if d is None or d["ci"][0] is None or math.isnan(d["ci"][0]):
        return "too few training seeds to compare the rankings across independent runs"
    if d["ci"][1] < 0:
        return (f"the {target} ranking agrees with the trained one less than retraining agrees with itself: "
                f"compression reorders the architectures beyond training noise")
    if d["ci"][0] > 0:
        return f"the {target} ranking agrees with the trained one more than the retest baseline predicts"
    return (f"not identifiable: across independent runs the {target} ranking agrees with the trained one about as "
            f"well as a second training run would (the CI of the gap includes 0); one run ranks architectures "
            f"poorly (retest tau trained {_f(ind['retest']['trained'], 2)})")


def _format_q3(q3: Mapping[str, Any], noise: Mapping[str, float]) -> list[str]:
    lines = ["", f"== Question 3: compression-aware search vs compress-after-NAS (same sampler, paired replays, "
                 f"scored on {q3['split']} of held-out seeds) ==",
             "after = the pick of a search on trained accuracy, compressed; aware = the pick of a search on the "
             "compressed (fine-tuned) accuracy; aware selected = the value the aware search saw for its pick",
             f"{'sampler':<9}{'target':<12}{'budget':<8}{'after':>8}{'aware':>8}{'aware selected':>15}{'diff':>9}  "
             f"{'95 % CI':<20}{'p':>8}{'p_holm':>9}  n"]
    for c in q3["comparisons"]:
        lines.append(f"{c['sampler']:<9}{c['target']:<12}{c['budget']:<8}{_f(c['after_mean']):>8}{_f(c['aware_mean']):>8}"
                     f"{_f(c['aware_selected_mean']):>15}{_f(c['mean_difference']):>9}  {_ci(c['ci']):<20}"
                     f"{_p(c['p']):>8}{_p(c['p_holm']):>9}  {c['n']}")
    lines.append("Reading (the largest budget, and significant ones at the others):")
    last = max(c["budget"] for c in q3["comparisons"])
    for c in q3["comparisons"]:
        if c["budget"] == last or (c["p_holm"] is not None and c["p_holm"] < 0.05):
            lines.append("  " + _reading(f"{c['sampler']}, {c['target']}, {c['budget']} trials", c["mean_difference"],
                                         c["ci"], c["p_holm"], noise[c["target"]], "compression-aware search",
                                         "compress-after-NAS"))
    return lines


def format_summary(stats: Mapping[str, Any]) -> str:
    """``stats`` (from :func:`analyse`) as a readable text report."""
    split = stats["scoring"]["split"]
    noise = {m: v["pooled_sd"] for m, v in stats["noise"][split].items()}
    lines = _format_head(stats)
    if stats.get("preregistered"):
        lines += _format_preregistered(stats["preregistered"])
    lines += _format_noise(stats)
    for metric, s in stats["searches"].items():
        lines += _format_search(metric, s, noise[metric], (stats.get("hypervolume") or {}).get(metric))
    lines += _format_q2(stats["q2"])
    q3 = stats.get("q3")
    if q3 and q3["comparisons"]:
        lines += _format_q3(q3, noise)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- pre-registered hypotheses


def _find_hypothesis(stats: Mapping[str, Any], h: Mapping[str, Any]) -> dict[str, Any] | None:
    """The estimate of hypothesis ``h`` (:func:`search.bench.plan.parse_hypothesis`) in ``stats``, signed so
    that positive favours its first arm; None when the replay did not compute it."""
    if h["question"] == "q2":
        d = ((stats.get("q2") or {}).get("independent_runs") or {}).get(h["target"], {}).get("difference")
        return None if d is None else {"estimate": d["estimate"], "ci": d["ci"], "p": d["p"]}
    if h["question"] == "q3":
        for c in (stats.get("q3") or {}).get("comparisons", []):
            if (c["sampler"], c["target"], c["budget"]) == (h["sampler"], h["target"], h["budget"]):
                return {"estimate": c["mean_difference"], "ci": c["ci"], "p": c["p"]}
        return None
    for p in (stats.get("searches") or {}).get(h["target"], {}).get("pairs", []):
        if p["budget"] != h["budget"] or {p["a"], p["b"]} != {h["a"], h["b"]}:
            continue
        if p["a"] == h["a"]:
            return {"estimate": p["mean_difference"], "ci": p["ci"], "p": p["p"]}
        flip = [None if v is None else -v for v in p["ci"][::-1]]
        return {"estimate": None if p["mean_difference"] is None else -p["mean_difference"], "ci": flip, "p": p["p"]}
    return None


def preregistered(stats: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any] | None:
    """The table's pre-registered hypotheses (manifest ``preregistration``) evaluated on ``stats`` (to_jsonable
    form): estimate, CI, p for the pre-registered alternative (``greater``: one-sided, from the two-sided
    jackknife t), and Holm over each family (``primary``, ``secondary``) at ``alpha``."""
    from .plan import parse_hypothesis

    if not plan or not (plan.get("primary") or plan.get("secondary")):
        return None
    out: dict[str, Any] = {"alpha": plan.get("alpha", 0.05)}
    for family in ("primary", "secondary"):
        rows = []
        for text in plan.get(family, []):
            h = parse_hypothesis(text, f"preregistration.{family}")
            found = _find_hypothesis(stats, h)
            row: dict[str, Any] = {"hypothesis": text, "alternative": h.get("alternative", "estimate")}
            if found is None:
                rows.append({**row, "missing": "not computed by this replay (sampler, metric or budget not replayed)"})
                continue
            p, est = found["p"], found["estimate"]
            if h.get("alternative") == "greater" and p is not None and est is not None:
                p = p / 2 if est > 0 else 1 - p / 2
            rows.append({**row, "estimate": est, "ci": found["ci"], "p": p if h["question"] != "q2" else None})
        tested = [i for i, r in enumerate(rows) if r.get("p") is not None]
        for i, adj in zip(tested, holm([rows[i]["p"] for i in tested])):
            rows[i]["p_holm"] = adj
        out[family] = rows
    return out


def _format_preregistered(pre: Mapping[str, Any]) -> list[str]:
    lines = ["", f"== Pre-registered hypotheses (the table's manifest; Holm within each family, alpha "
                 f"{pre['alpha']}) =="]
    for family in ("primary", "secondary"):
        for r in pre.get(family, []):
            if "missing" in r:
                lines.append(f"{family:<10}{r['hypothesis']}: {r['missing']}")
                continue
            verdict = ("estimation only" if r.get("p") is None else
                       "supported" if r.get("p_holm") is not None and r["p_holm"] < pre["alpha"] else "not supported")
            lines.append(f"{family:<10}{r['hypothesis']}: {_f(r['estimate'])} (95 % CI {_ci(r['ci'])})"
                         + (f", p ({r['alternative']}) {_p(r['p'])}, p_holm {_p(r.get('p_holm'))}" if r.get("p") is not None
                            else "") + f": {verdict}")
    return lines
