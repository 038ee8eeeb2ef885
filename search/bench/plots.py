"""Figures of a benchmark replay (matplotlib Agg, the style of :mod:`search.plots`) and their CSVs.

* ``best_so_far.png`` — per metric, the mean held-out score of each sampler's pick so far with its
  95 % jackknife band over training seeds (solid), and the mean value those picks were selected on
  (dotted: optimistic); ``best_so_far.csv`` holds every point (with ``n``, the runs that reached it).
* ``q2_scatter.png`` — arch-mean trained vs compressed (and finetuned) accuracy, with y = x.
* ``q3_compress_after_vs_aware.png`` — compress-after-NAS vs compression-aware search: mean held-out
  target accuracy of the pick with its 95 % CI, per budget, sampler and target.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from search.plots import _figure, _finish

from .table import BenchTable

_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]


def write_curves_csv(stats: Mapping[str, Any], path: Path) -> Path:
    """Every curve point: metric, sampler, measure, trial, mean (held out), lo, hi, n, observed (selected on)."""
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "sampler", "measure", "trial", "mean", "lo", "hi", "n", "observed"])
        for metric, by_sampler in stats["curves"].items():
            for sampler, c in by_sampler.items():
                for p in c["points"]:
                    w.writerow([metric, sampler, c["measure"], p["trial"], p["mean"], p["lo"], p["hi"], p["n"],
                                p.get("observed")])
    return Path(path)


def _label(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")


def _band(ax: Any, points: list[dict[str, Any]], label: str, i: int) -> None:
    pts = [p for p in points if p["mean"] is not None]
    if not pts:
        return
    x = [p["trial"] for p in pts]
    ls, marker = _STYLES[i % len(_STYLES)]
    (line,) = ax.plot(x, [p["mean"] for p in pts], linestyle=ls, marker=marker, markersize=3,
                      drawstyle="steps-post", label=label)
    lo = [p["lo"] if p["lo"] is not None else p["mean"] for p in pts]
    hi = [p["hi"] if p["hi"] is not None else p["mean"] for p in pts]
    ax.fill_between(x, lo, hi, step="post", alpha=0.2, color=line.get_color())
    obs = [(p["trial"], p["observed"]) for p in pts if p.get("observed") is not None]
    if obs:
        ax.plot([o[0] for o in obs], [o[1] for o in obs], linestyle=":", linewidth=1, drawstyle="steps-post",
                color=line.get_color())


def plot_best_so_far(stats: Mapping[str, Any], png: Path) -> Path:
    """One column per replayed metric: held-out score of the pick so far (mean and jackknife 95 % band) per
    sampler, with the value the picks were selected on (dotted)."""
    from matplotlib.ticker import MaxNLocator

    metrics = list(stats["curves"])
    fig = _figure(5.5 * max(1, len(metrics)), 4.2)
    n_seeds = stats["replay"]["n_seeds"]
    split = (stats.get("scoring") or {}).get("split", "val")
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), j + 1)
        for i, (sampler, c) in enumerate(stats["curves"][metric].items()):
            _band(ax, c["points"], sampler, i)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _label(ax, "trial (counted trials)", f"held-out {metric} accuracy of the pick ({split})",
               f"{metric} ({n_seeds} replays)")
    fig.suptitle("mean held-out score of the pick so far; band: 95 % jackknife CI over training seeds; "
                 "dotted: the value the picks were selected on", fontsize="small")
    fig.tight_layout()
    fig.savefig(png)
    return Path(png)


def plot_q2_scatter(table: BenchTable, png: Path) -> Path:
    """Arch-mean trained (x) vs compressed and finetuned (y) accuracy, with the line y = x."""
    t, c, f = table.means("trained"), table.means("compressed"), table.means("finetuned")
    fig = _figure(6.0, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(t, c, s=18, alpha=0.7, marker="o", label="compressed")
    ax.scatter(t, f, s=18, alpha=0.7, marker="^", label="compressed + fine-tuned")
    vals = [v for v in (*t, *c, *f) if v == v]
    if vals:
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.05 or 0.01
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linewidth=1, linestyle="--", label="y = x")
    _finish(fig, ax, Path(png), "mean accuracy after training (over seeds)", "mean accuracy after compression",
            f"Question 2: {table.n_archs} architectures", legend_loc="lower right")
    return Path(png)


def plot_q3(stats: Mapping[str, Any], png: Path) -> Path:
    """Mean target accuracy (95 % CI) of compress-after-NAS vs compression-aware picks, per budget."""
    q3 = stats.get("q3") or {"comparisons": []}
    targets = [t for t in ("compressed", "finetuned") if any(c["target"] == t for c in q3["comparisons"])] or ["compressed"]
    fig = _figure(5.5 * len(targets), 4.5)
    samplers = q3.get("samplers") or []
    for j, target in enumerate(targets):
        ax = fig.add_subplot(1, len(targets), j + 1)
        rows = [c for c in q3["comparisons"] if c["target"] == target]
        budgets = sorted({c["budget"] for c in rows})
        n = max(1, len(samplers))
        for k, sampler in enumerate(samplers):
            for m, (key, label, marker) in enumerate((("after", "compress after NAS", "o"),
                                                      ("aware", "compression-aware", "s"))):
                pts = [c for c in rows if c["sampler"] == sampler]
                pts.sort(key=lambda c: c["budget"])
                if not pts:
                    continue
                offset = (k * 2 + m - (2 * n - 1) / 2) * 0.08
                x = [budgets.index(c["budget"]) + offset for c in pts]
                y = [c[f"{key}_mean"] for c in pts]
                err = [[max(0.0, c[f"{key}_mean"] - c[f"{key}_ci"][0]) if c[f"{key}_ci"][0] is not None else 0.0 for c in pts],
                       [max(0.0, c[f"{key}_ci"][1] - c[f"{key}_mean"]) if c[f"{key}_ci"][1] is not None else 0.0 for c in pts]]
                ax.errorbar(x, y, yerr=err, fmt=marker, capsize=3, markersize=5, label=f"{sampler}: {label}")
        best = (q3.get("best") or {}).get(target)
        if best and best.get("mean") is not None:
            ax.axhline(best["mean"], color="grey", linestyle=":", linewidth=1, label=f"table best ({best['arch']})")
        ax.set_xticks(range(len(budgets)))
        ax.set_xticklabels([str(b) for b in budgets])
        _label(ax, "budget (trials)", f"held-out {target} accuracy of the pick", f"Question 3: {target}")
    fig.tight_layout()
    fig.savefig(png)
    return Path(png)
