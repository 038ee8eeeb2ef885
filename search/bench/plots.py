"""Figures of a benchmark replay (matplotlib Agg, the style of :mod:`search.plots`) and their CSVs.

* ``best_so_far.png`` — per metric, the mean best observed accuracy so far per sampler with its
  95 % bootstrap band (a second row with hypervolume when a multi-objective sampler was replayed);
  ``best_so_far.csv`` holds every point (with ``n``, the runs that reached it).
* ``q2_scatter.png`` — arch-mean trained vs compressed (and finetuned) accuracy, with y = x.
* ``q3_compress_after_vs_aware.png`` — compress-after-NAS vs compression-aware search: mean target
  accuracy of the pick with its 95 % CI, per budget, sampler and target.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from search.plots import _figure, _finish

from .table import BenchTable

_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]


def write_curves_csv(stats: Mapping[str, Any], path: Path) -> Path:
    """Every curve point: metric, sampler, measure, trial, mean, lo, hi, n."""
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "sampler", "measure", "trial", "mean", "lo", "hi", "n"])
        for metric, by_sampler in stats["curves"].items():
            for sampler, c in by_sampler.items():
                for p in c["points"]:
                    w.writerow([metric, sampler, c["measure"], p["trial"], p["mean"], p["lo"], p["hi"], p["n"]])
            for sampler, points in stats.get("hypervolume", {}).get(metric, {}).get("curves", {}).items():
                if by_sampler.get(sampler, {}).get("measure") == "hypervolume":
                    continue  # already written
                for p in points:
                    w.writerow([metric, sampler, "hypervolume", p["trial"], p["mean"], p["lo"], p["hi"], p["n"]])
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


def plot_best_so_far(stats: Mapping[str, Any], png: Path) -> Path:
    """One column per replayed metric: best observed accuracy so far (mean and 95 % band) per sampler."""
    from matplotlib.ticker import MaxNLocator

    metrics = list(stats["curves"])
    hv = stats.get("hypervolume") or {}
    rows = 2 if hv else 1
    fig = _figure(5.5 * max(1, len(metrics)), 4.2 * rows)
    n_seeds = stats["replay"]["n_seeds"]
    for j, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, len(metrics), j + 1)
        for i, (sampler, c) in enumerate(stats["curves"][metric].items()):
            if c["measure"] == "best":
                _band(ax, c["points"], sampler, i)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _label(ax, "trial (counted trials)", f"best observed {metric} accuracy so far",
               f"{metric}: mean of {n_seeds} replays, 95 % band")
        if hv:
            ax2 = fig.add_subplot(rows, len(metrics), len(metrics) + j + 1)
            for i, (sampler, points) in enumerate(hv.get(metric, {}).get("curves", {}).items()):
                _band(ax2, points, sampler, i)
            ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
            _label(ax2, "trial (counted trials)", "hypervolume (accuracy x size)",
                   f"{metric}: hypervolume of the front so far")
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
        _label(ax, "budget (trials)", f"mean {target} accuracy of the pick", f"Question 3: {target}")
    fig.tight_layout()
    fig.savefig(png)
    return Path(png)
