"""Statistics of replayed searches and of the table itself (numpy + scipy.stats).

* :func:`curve` — best-so-far (or hypervolume) mean per trial with a 95 % bootstrap band over
  seeds; each point uses only the runs that reached that trial (``n`` per point).
* :func:`compare_samplers` — at each budget: mean regret per sampler (the table's best
  architecture-mean minus the architecture-mean of the architecture a run picked by its *observed*
  value, so a lucky draw earns nothing), with a bootstrap CI; for each sampler pair over paired
  seeds: P(A's pick > B's pick) (ties 1/2), the mean paired difference and its CI, the Wilcoxon
  signed-rank p-value (Holm-corrected over all pairs and budgets of the metric) and the matched-pairs
  rank-biserial correlation.
* :func:`noise_floor` — per architecture, the spread over its training seeds; its median std is
  the gap that matters: a difference smaller than it is within training noise.
* :func:`question2` — does compression keep the ranking (Kendall's tau, Spearman's rho, top-k
  overlap, the architectures compression hurts most)?
* :func:`question3` — compress-after-NAS (search on ``trained``, compress the pick) vs
  compression-aware search (search on ``compressed``/``finetuned``), paired over seeds.
* :func:`analyse` puts them into one JSON-able dict; :func:`format_summary` writes it as text.

Standard deviations over seeds are sample standard deviations (``ddof=1``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from .replay import ReplayRun
from .table import METRIC_COLUMNS, BenchTable

BUDGETS = (5, 10, 20, 50)
N_BOOT = 1000
TOP_K = (1, 3, 5, 10)
METRICS = tuple(METRIC_COLUMNS)


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
    """Mean and 95 % bootstrap band of a per-trial measure over runs: ``best`` (observed accuracy so
    far), ``hypervolume`` or ``auto`` (each run's own, :meth:`ReplayRun.measure`).

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


def question2(table: BenchTable, n_hurt: int = 5) -> dict[str, Any]:
    """Does compression keep the ranking? Correlations of arch-means trained vs compressed and vs
    finetuned, top-k overlaps, and the architectures compression hurts most."""
    t, c, f = table.means("trained"), table.means("compressed"), table.means("finetuned")
    drop = t - c
    order = [i for i in np.argsort(-np.where(np.isnan(drop), -np.inf, drop), kind="stable") if not np.isnan(drop[i])]
    hurt = [{"arch": table.archs[i], "trained": float(t[i]), "compressed": float(c[i]), "finetuned": float(f[i]),
             "drop": float(drop[i])} for i in order[:n_hurt]]
    best = {m: table.best_arch(m)[0] for m in METRICS}
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
    }


# --------------------------------------------------------------------------- searches


def _picked_means(runs: Sequence[ReplayRun], budget: int, metric: str) -> dict[int, float]:
    """``{seed: arch-mean of metric of the pick among the first budget trials}`` (runs without a pick left out)."""
    out = {}
    for r in runs:
        p = r.pick(budget)
        if p is not None and not math.isnan(p.mean(metric)):
            out[r.seed] = p.mean(metric)
    return out


def _paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    seeds = sorted(set(a) & set(b))
    return np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])


def _paired_test(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired comparison of a and b (higher is better): difference a - b."""
    d = a - b
    lo, hi = bootstrap_ci(d, n_boot, seed)
    return {"n": int(d.size), "mean_difference": float(d.mean()) if d.size else math.nan, "ci": [lo, hi],
            "p_a_better": prob_greater(a, b), "wilcoxon_p": wilcoxon_p(d), "rank_biserial": rank_biserial(d)}


def compare_samplers(runs: Mapping[str, Sequence[ReplayRun]], table: BenchTable, metric: str, budgets: Sequence[int],
                     n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Regret per sampler and paired comparisons per sampler pair, at each budget (see the module docstring).

    A pair's ``mean_difference`` is A's picked arch-mean minus B's (= B's regret minus A's): positive
    means A found better architectures.
    """
    best_arch, best = table.best_arch(metric)
    samplers = list(runs)
    per: dict[str, dict[str, Any]] = {s: {} for s in samplers}
    picked: dict[tuple[str, int], dict[int, float]] = {}
    for b in budgets:
        for s in samplers:
            pm = _picked_means(runs[s], b, metric)
            picked[s, b] = pm
            regrets = np.array([best - v for v in pm.values()])
            lo, hi = bootstrap_ci(regrets, n_boot, seed + b)
            best_found = [r.pick(b) for r in runs[s]]
            per[s][str(b)] = {
                "n": int(regrets.size), "mean_regret": float(regrets.mean()) if regrets.size else math.nan,
                "ci": [lo, hi], "median_regret": float(np.median(regrets)) if regrets.size else math.nan,
                "p_found_best": float(np.mean([p is not None and p.arch == best_arch for p in best_found]))
                if best_found else math.nan,
            }
    pairs = []
    for b in budgets:
        for a, c in itertools.combinations(samplers, 2):
            x, y = _paired(picked[a, b], picked[c, b])
            pairs.append({"budget": b, "a": a, "b": c, **_paired_test(x, y, n_boot, seed + b)})
    for p, adj in zip(pairs, holm([p["wilcoxon_p"] for p in pairs])):
        p["p_holm"] = adj
    return {"metric": metric, "best_arch": best_arch, "best_mean": best, "budgets": list(budgets),
            "samplers": per, "pairs": pairs}


def hypervolume_table(runs: Mapping[str, Sequence[ReplayRun]], budgets: Sequence[int], n_boot: int = N_BOOT,
                      seed: int = 0) -> dict[str, Any]:
    """Mean hypervolume (observed accuracy x compressed size) per sampler at each budget, with a CI."""
    out: dict[str, Any] = {}
    for s, rs in runs.items():
        out[s] = {}
        for b in budgets:
            vals = [r.hypervolume()[b - 1] for r in rs if len(r) >= b]
            lo, hi = bootstrap_ci(vals, n_boot, seed + b)
            out[s][str(b)] = {"n": len(vals), "mean": float(np.mean(vals)) if vals else math.nan, "ci": [lo, hi]}
    return out


def question3(runs: Mapping[tuple[str, str], Sequence[ReplayRun]], table: BenchTable, budgets: Sequence[int],
              samplers: Sequence[str] = ("tpe", "random"), n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Compress-after-NAS vs compression-aware search, paired over seeds.

    ``runs[(sampler, metric)]``: replays of ``sampler`` on ``metric``. For target ``compressed``
    (``finetuned``): after = the pick of the ``trained`` search, scored by its arch-mean target
    accuracy; aware = the pick of the search on the target, scored the same way. ``mean_difference``
    is aware minus after (positive: compression-aware search found better compressed models).
    """
    comparisons = []
    for s in samplers:
        if (s, "trained") not in runs:
            continue
        for target in ("compressed", "finetuned"):
            if (s, target) not in runs:
                continue
            for b in budgets:
                after = _picked_means(runs[s, "trained"], b, target)
                aware = _picked_means(runs[s, target], b, target)
                x, y = _paired(aware, after)
                test = _paired_test(x, y, n_boot, seed + b)
                after_ci, aware_ci = bootstrap_ci(y, n_boot, seed + b), bootstrap_ci(x, n_boot, seed + b + 1)
                comparisons.append({
                    "sampler": s, "target": target, "budget": b, "after_mean": float(y.mean()) if y.size else math.nan,
                    "after_ci": list(after_ci), "aware_mean": float(x.mean()) if x.size else math.nan,
                    "aware_ci": list(aware_ci), **test,
                })
    for c, adj in zip(comparisons, holm([c["wilcoxon_p"] for c in comparisons])):
        c["p_holm"] = adj
        c["p_aware_better"] = c.pop("p_a_better")
    return {"samplers": [s for s in samplers if (s, "trained") in runs], "budgets": list(budgets),
            "best": {m: {"arch": table.best_arch(m)[0], "mean": table.best_arch(m)[1]} for m in ("compressed", "finetuned")},
            "comparisons": comparisons}


# --------------------------------------------------------------------------- everything


def analyse(table: BenchTable, runs: Mapping[str, Mapping[str, Sequence[ReplayRun]]], budgets: Sequence[int],
            q3_runs: Mapping[tuple[str, str], Sequence[ReplayRun]] | None = None, n_boot: int = N_BOOT,
            seed: int = 0) -> dict[str, Any]:
    """All statistics: ``runs[metric][sampler]`` are the replays of the search; ``q3_runs`` those of
    question 3 (``{(sampler, metric): runs}``). Budgets beyond the number of architectures or the
    runs' length are dropped."""
    n_trials = max((r.n_trials for by_s in runs.values() for rs in by_s.values() for r in rs), default=None)
    budgets = valid_budgets(budgets, table.n_archs, n_trials)
    noise = noise_floor(table)
    searches, curves, hv = {}, {}, {}
    for metric, by_sampler in runs.items():
        searches[metric] = compare_samplers(by_sampler, table, metric, budgets, n_boot, seed)
        searches[metric]["noise_floor"] = noise["median_std"][metric]
        curves[metric] = {s: {"measure": "hypervolume" if rs and rs[0].multi_objective else "best",
                              "points": curve(rs, "auto", n_boot, seed)} for s, rs in by_sampler.items()}
        if any(rs and rs[0].multi_objective for rs in by_sampler.values()):
            hv[metric] = {"budgets": hypervolume_table(by_sampler, budgets, n_boot, seed),
                          "curves": {s: curve(rs, "hypervolume", n_boot, seed) for s, rs in by_sampler.items()}}
    seeds = sorted({r.seed for by_s in runs.values() for rs in by_s.values() for r in rs})
    out = {
        "table": {"directory": str(table.directory), "n_archs": table.n_archs, "n_unbuildable": len(table.unbuildable),
                  "seeds": table.seeds, "space": table.space, "content_hash": table.manifest["content_hash"]},
        "replay": {"n_seeds": len(seeds), "n_trials": n_trials, "budgets": budgets, "metrics": list(runs),
                   "samplers": list(next(iter(runs.values()), {})), "n_boot": n_boot},
        "noise_floor": noise,
        "searches": searches,
        "hypervolume": hv,
        "curves": curves,
        "q2": question2(table),
        "q3": question3(q3_runs, table, budgets, n_boot=n_boot, seed=seed) if q3_runs else None,
    }
    return out


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
    """A plain-language reading of a paired difference (``better`` wins when diff > 0)."""
    head = f"{what}: mean difference {_f(diff)} (95 % CI {_ci(ci)}), p_holm = {_p(p_holm)}"
    noise_s = _f(noise)
    if p_holm is not None and not math.isnan(p_holm) and p_holm < 0.05:
        winner = better if diff > 0 else worse
        if noise is not None and not math.isnan(noise) and abs(diff) < noise:
            return f"{head}: {winner} is better, but by less than the training noise {noise_s}"
        return f"{head}: {winner} is better, by more than the training noise {noise_s}"
    if noise is not None and not math.isnan(noise) and all(c is not None and abs(c) <= noise for c in ci):
        return (f"{head}: no evidence of a difference (after the Holm correction); the CI rules out gaps larger "
                f"than the training noise {noise_s}")
    return f"{head}: no evidence of a difference larger than the training noise {noise_s}"


def format_summary(stats: Mapping[str, Any]) -> str:
    """``stats`` (from :func:`analyse`) as a readable text report."""
    t, rp, noise = stats["table"], stats["replay"], stats["noise_floor"]["median_std"]
    lines = [
        f"Benchmark replay of {t['directory']}: {t['n_archs']} architectures x {len(t['seeds'])} training seeds "
        f"({t['n_unbuildable']} unbuildable combinations), {rp['n_seeds']} replay seeds, up to {rp['n_trials']} trials, "
        f"budgets {', '.join(map(str, rp['budgets'])) or 'none'}",
        "Noise floor, the gap that matters (median over architectures of the std over training seeds): "
        + ", ".join(f"{m} {_f(noise[m])}" for m in METRICS),
        "A difference smaller than the noise floor is within training noise.",
    ]
    for metric, s in stats["searches"].items():
        samplers, budgets, nf = list(s["samplers"]), s["budgets"], s["noise_floor"]
        lines += ["", f"== Search on {metric} accuracy: table best {s['best_arch']} (mean {_f(s['best_mean'])}) =="]
        lines.append("Mean regret = table best minus the mean accuracy of the architecture each run picked by its observed "
                     "value [95 % bootstrap CI]; found = share of runs that picked the best architecture")
        width = 37
        lines.append("budget  " + "".join(f"{x:<{width}}" for x in samplers))
        for b in budgets:
            cells = [f"{_f(s['samplers'][x][str(b)]['mean_regret'])} {_ci(s['samplers'][x][str(b)]['ci'])} "
                     f"found {_f(s['samplers'][x][str(b)]['p_found_best'], 2)}" for x in samplers]
            lines.append(f"{b:<8}" + "".join(f"{c:<{width}}" for c in cells).rstrip())
        if s["pairs"]:
            lines.append("Pairs (diff = A's picked mean minus B's, > 0: A better; Wilcoxon signed-rank, Holm over all "
                         "pairs and budgets; r_rb = matched-pairs rank-biserial):")
            lines.append(f"{'budget':<8}{'A':<10}{'B':<10}{'diff':>9}  {'95 % CI':<20}{'P(A>B)':>7}{'p_holm':>9}{'r_rb':>7}  n")
            for p in s["pairs"]:
                lines.append(f"{p['budget']:<8}{p['a']:<10}{p['b']:<10}{_f(p['mean_difference']):>9}  {_ci(p['ci']):<20}"
                             f"{_f(p['p_a_better'], 2):>7}{_p(p['p_holm']):>9}{_f(p['rank_biserial'], 2):>7}  {p['n']}")
            lines.append("Reading (every pair at the largest budget, and significant ones at the others):")
            for p in s["pairs"]:
                if p["budget"] != budgets[-1] and not (p["p_holm"] is not None and p["p_holm"] < 0.05):
                    continue
                lines.append("  " + _reading(f"{p['a']} vs {p['b']} at {p['budget']} trials", p["mean_difference"], p["ci"],
                                             p["p_holm"], nf, p["a"], p["b"]))
        hv = stats.get("hypervolume", {}).get(metric)
        if hv:
            lines.append("Hypervolume of (observed accuracy, compressed size / largest size), reference (0, 1.1), mean [CI]:")
            for x, by_b in hv["budgets"].items():
                lines.append(f"  {x:<10}" + "  ".join(f"{b}: {_f(v['mean'])} {_ci(v['ci'])}" for b, v in by_b.items()))
    q2 = stats["q2"]
    lines += ["", "== Question 2: do the best architectures stay the best after compression? (table alone) =="]
    for target in ("compressed", "finetuned"):
        c = q2[f"trained_vs_{target}"]
        overlap = ", ".join(f"top-{k} {_f(v, 2)}" for k, v in q2["top_k_overlap"][target].items())
        lines.append(f"trained vs {target}: Kendall tau {_f(c['kendall_tau'], 3)} (p {_p(c['kendall_p'])}), Spearman rho "
                     f"{_f(c['spearman_rho'], 3)} (p {_p(c['spearman_p'])}), n = {c['n']}; overlap {overlap}")
        tau = c["kendall_tau"]
        if tau is None:
            reading = "the ranking cannot be compared (too few architectures or constant accuracies)"
        elif tau >= 0.7:
            reading = "compression largely keeps the ranking"
        elif tau >= 0.3:
            reading = "compression partly reorders the architectures"
        else:
            reading = "compression reorders the architectures strongly: the best trained are often not the best"
        same = q2["best_arch"]["trained"] == q2["best_arch"][target]
        lines.append(f"  Reading: {reading}; the best trained architecture ({q2['best_arch']['trained']}) is "
                     + ("also" if same else "not") + f" the best {target} one"
                     + ("" if same else f" ({q2['best_arch'][target]})") + ".")
    lines.append(f"Mean drop trained -> compressed {_f(q2['mean_drop_compressed'])}, trained -> finetuned "
                 f"{_f(q2['mean_drop_finetuned'])}. Hurt most by compression:")
    for h in q2["most_hurt"]:
        lines.append(f"  {h['arch']:<20} trained {_f(h['trained'])}  compressed {_f(h['compressed'])}  "
                     f"drop {_f(h['drop'])}  finetuned {_f(h['finetuned'])}")
    q3 = stats.get("q3")
    if q3 and q3["comparisons"]:
        lines += ["", "== Question 3: compression-aware search vs compress-after-NAS (same sampler, paired seeds) =="]
        lines.append("after = best of a search on trained accuracy, then compressed; aware = best of a search on the "
                     "compressed (finetuned) accuracy; both scored by the architecture's mean target accuracy")
        lines.append(f"{'sampler':<9}{'target':<12}{'budget':<8}{'after':>8}{'aware':>8}{'diff':>9}  {'95 % CI':<20}"
                     f"{'P(aware>after)':>15}{'p_holm':>9}  n")
        for c in q3["comparisons"]:
            lines.append(f"{c['sampler']:<9}{c['target']:<12}{c['budget']:<8}{_f(c['after_mean']):>8}{_f(c['aware_mean']):>8}"
                         f"{_f(c['mean_difference']):>9}  {_ci(c['ci']):<20}{_f(c['p_aware_better'], 2):>15}"
                         f"{_p(c['p_holm']):>9}  {c['n']}")
        lines.append("Reading (the largest budget, and significant ones at the others):")
        last = max(c["budget"] for c in q3["comparisons"])
        for c in q3["comparisons"]:
            if c["budget"] != last and not (c["p_holm"] is not None and c["p_holm"] < 0.05):
                continue
            lines.append("  " + _reading(f"{c['sampler']}, {c['target']}, {c['budget']} trials", c["mean_difference"],
                                         c["ci"], c["p_holm"], noise[c["target"]], "compression-aware search",
                                         "compress-after-NAS"))
    return "\n".join(lines) + "\n"
