"""Figures and their CSVs, read back from study storage (matplotlib, no display needed).

* :func:`plot_best_so_far` — best validation accuracy so far vs trial, one curve per label (the
  study name without its seed: a sampler for Task 1, a variant for Task 2). A label run with several
  seeds is drawn as the mean over seeds with a min-max band. The x axis counts trials that trained
  (complete, failed or early-stopped by the pruner), in trial order; pruned (unbuildable) and
  interrupted trials are skipped, and the best so far carries over failed and early-stopped trials;
  early-stopped trials are marked (``x``, "early-stopped" in the legend and the CSV's ``status``). Written as ``best_so_far.png``, ``best_so_far.csv``
  (one row per study and trial) and ``best_so_far_mean.csv`` (one row per label and trial).
* :func:`plot_pareto` — for multi-objective studies: accuracy vs compressed size of every complete
  trial, with the Pareto front drawn; ``pareto.png`` and ``pareto.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import optuna
from optuna.trial import TrialState

from .objectives import compressed_size


@dataclasses.dataclass
class Curve:
    """One study's accuracies per trained trial (None for a failed one), in trial order."""

    study: str
    label: str
    seed: int | None
    trials: list[int]  # Optuna trial numbers
    accuracies: list[float | None]
    #: per trial: "complete", "failed", "early-stopped" or "infeasible" (complete, over the size budget:
    #: no accuracy counted); None: complete where an accuracy, else failed
    status: list[str] | None = None

    def statuses(self) -> list[str]:
        if self.status is not None:
            return list(self.status)
        return ["failed" if a is None else "complete" for a in self.accuracies]

    @property
    def best_so_far(self) -> list[float]:
        return best_so_far(self.accuracies)


def best_so_far(values: Sequence[float | None]) -> list[float]:
    """Running maximum; NaN until the first value, failed (None) entries carry the previous best."""
    out, best = [], math.nan
    for v in values:
        if v is not None and not math.isnan(v) and (math.isnan(best) or v > best):
            best = v
        out.append(best)
    return out


def study_curve(study: optuna.Study) -> Curve:
    """The :class:`Curve` of a study (label and seed from its user attributes)."""
    from .best import is_feasible
    from .budget import is_early_stopped
    from .liveness import interrupted_numbers

    trials, accs, status = [], [], []
    all_trials = study.get_trials(deepcopy=False)
    skip = interrupted_numbers(all_trials)
    for t in sorted(all_trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and not is_feasible(t):  # over search.size_budget_bytes: never best
            accs.append(None)
            status.append("infeasible")
        elif t.state == TrialState.COMPLETE:
            acc = t.user_attrs.get("accuracy")
            accs.append(float(acc) if acc is not None else (t.values[0] if t.values else None))
            status.append("complete")
        elif t.state == TrialState.FAIL and t.number not in skip:
            accs.append(None)
            status.append("failed")
        elif is_early_stopped(t):  # it trained (part of an epoch): it costs a trial, has no final accuracy
            accs.append(None)
            status.append("early-stopped")
        else:
            continue
        trials.append(t.number)
    ua = study.user_attrs
    return Curve(study.study_name, str(ua.get("curve") or study.study_name), ua.get("seed"), trials, accs, status)


def aggregate(curves: Iterable[Curve]) -> dict[str, list[dict[str, float]]]:
    """Per label and trial index: mean, min and max best-so-far over the label's studies (seeds)."""
    by_label: dict[str, list[list[float]]] = {}
    for c in curves:
        by_label.setdefault(c.label, []).append(c.best_so_far)
    out: dict[str, list[dict[str, float]]] = {}
    for label, runs in by_label.items():
        rows = []
        for i in range(max(len(r) for r in runs)):
            vals = [r[i] for r in runs if i < len(r) and not math.isnan(r[i])]
            if not vals:
                continue
            rows.append({"trial": i + 1, "mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals),
                         "n_seeds": len(vals)})
        out[label] = rows
    return out


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_best_so_far(curves: Sequence[Curve], png: Path, csv_path: Path, title: str | None = None) -> dict[str, Path]:
    """Draw best-so-far accuracy curves (mean and min-max band for several seeds); write PNG and CSVs."""
    png, csv_path = Path(png), Path(csv_path)
    mean_path = csv_path.with_name(csv_path.stem + "_mean.csv")
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["curve", "study", "seed", "trial", "trial_number", "accuracy", "best_so_far", "status"])
        for c in curves:
            for i, (n, acc, best, st) in enumerate(zip(c.trials, c.accuracies, c.best_so_far, c.statuses())):
                w.writerow([c.label, c.study, c.seed, i + 1, n, "" if acc is None else acc,
                            "" if math.isnan(best) else best, st])
    agg = aggregate(curves)
    with mean_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["curve", "trial", "mean", "min", "max", "n_seeds"])
        for label, rows in agg.items():
            for r in rows:
                w.writerow([label, r["trial"], r["mean"], r["min"], r["max"], r["n_seeds"]])
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    n_seeds = {label: sum(c.label == label for c in curves) for label in agg}
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]  # overlapping curves stay visible
    for i, (label, rows) in enumerate(agg.items()):
        if not rows:
            continue
        x = [r["trial"] for r in rows]
        mean = [r["mean"] for r in rows]
        name = f"{label} (mean of {n_seeds[label]} seeds)" if n_seeds[label] > 1 else label
        ls, marker = styles[i % len(styles)]
        (line,) = ax.plot(x, mean, linestyle=ls, marker=marker, markersize=4, drawstyle="steps-post", label=name)
        if n_seeds[label] > 1:
            ax.fill_between(x, [r["min"] for r in rows], [r["max"] for r in rows], step="post",
                            alpha=0.2, color=line.get_color())
    stopped = [(i + 1, b) for c in curves for i, (b, st) in enumerate(zip(c.best_so_far, c.statuses()))
               if st == "early-stopped" and not math.isnan(b)]
    if stopped:
        ax.scatter([x for x, _ in stopped], [y for _, y in stopped], marker="x", color="black", s=24, zorder=3,
                   label=f"early-stopped ({len(stopped)})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(fig, ax, png, "trial (trained trials, in order)", "best validation accuracy so far",
            title or "Best accuracy so far", legend_loc="best")
    return {"best_so_far_png": png, "best_so_far_csv": csv_path, "best_so_far_mean_csv": mean_path}


def pareto_points(study: optuna.Study) -> list[dict[str, Any]]:
    """Complete trials of a study with accuracy, compressed size and whether they are on the Pareto
    front *of the plotted axes* (higher accuracy, smaller compressed size; feasible trials only), whatever
    the study's second objective was (its front in e.g. latency is another set of trials)."""
    from .best import is_feasible

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        try:
            size = compressed_size(t.user_attrs.get("cost") or {})
        except Exception:
            continue
        out.append({"study": study.study_name, "trial": t.number, "accuracy": t.user_attrs.get("accuracy"),
                    "compressed_size_bytes": size, "feasible": is_feasible(t)})
    if len(study.directions) > 1:
        cand = [p for p in out if p["feasible"] and p["accuracy"] is not None]
        for p in out:
            p["on_front"] = p in cand and not any(
                q["accuracy"] >= p["accuracy"] and q["compressed_size_bytes"] <= p["compressed_size_bytes"]
                and (q["accuracy"] > p["accuracy"] or q["compressed_size_bytes"] < p["compressed_size_bytes"])
                for q in cand)
    else:
        for p in out:
            p["on_front"] = False
    for p in out:
        del p["feasible"]
    return out


def _finish(fig: Any, ax: Any, png: Path, xlabel: str, ylabel: str, title: str, legend_loc: str) -> None:
    """Label, grid and legend the axes, then write the figure to ``png``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=legend_loc, fontsize="small")
    fig.tight_layout()
    fig.savefig(png)


def plot_pareto(points: Sequence[dict[str, Any]], png: Path, csv_path: Path, title: str | None = None) -> dict[str, Path]:
    """Accuracy vs compressed size, Pareto front highlighted, one colour per study; PNG and CSV."""
    png, csv_path = Path(png), Path(csv_path)
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["study", "trial", "accuracy", "compressed_size_bytes", "on_front"])
        w.writeheader()
        w.writerows(points)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for study in dict.fromkeys(p["study"] for p in points):
        pts = [p for p in points if p["study"] == study and p["accuracy"] is not None]
        sc = ax.scatter([p["compressed_size_bytes"] / 1e6 for p in pts], [p["accuracy"] for p in pts],
                        s=14, alpha=0.4, label=f"{study}: trials")
        front = sorted((p for p in pts if p["on_front"]), key=lambda p: p["compressed_size_bytes"])
        if front:
            ax.plot([p["compressed_size_bytes"] / 1e6 for p in front], [p["accuracy"] for p in front],
                    marker="o", drawstyle="steps-post", color=sc.get_facecolor()[0][:3], label=f"{study}: Pareto front")
    _finish(fig, ax, png, "compressed size (MB, quantised + sparse)", "validation accuracy",
            title or "Accuracy vs compressed size", legend_loc="lower right")
    return {"pareto_png": png, "pareto_csv": csv_path}


def _title(studies: Sequence[optuna.Study]) -> str:
    attrs = [s.user_attrs for s in studies]
    samplers = {a.get("sampler") for a in attrs}
    variants = {a.get("variant") for a in attrs}
    run = ", ".join(sorted({str(a.get("run")) for a in attrs if a.get("run")}))
    if len(variants) > 1 and len(samplers) == 1:
        what = f"compression variants ({next(iter(samplers))})"
    elif len(samplers) > 1 and len(variants) == 1:
        what = f"sampler comparison ({next(iter(variants))})"
    else:
        what = "studies"
    return f"{run}: {what}" if run else what


def run_study_names(storage, run: str | None = None) -> list[str]:
    """Names of the studies in ``storage`` (those whose ``run`` attribute is ``run``, if given)."""
    names = []
    for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
        if run is None or s.user_attrs.get("run") == run:
            names.append(s.study_name)
    return names


def write_figures(storage, study_names: Sequence[str], out_dir: Path, prefix: str = "") -> dict[str, Path]:
    """The best-so-far figure of the studies (and a Pareto figure if any is multi-objective) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    studies = []
    for name in study_names:
        try:
            studies.append(optuna.load_study(study_name=name, storage=storage))
        except KeyError:
            continue
    files: dict[str, Path] = {}
    if not studies:
        return files
    title = _title(studies)
    files.update(plot_best_so_far([study_curve(s) for s in studies], out_dir / f"{prefix}best_so_far.png",
                                  out_dir / f"{prefix}best_so_far.csv", title))
    multi = [s for s in studies if len(s.directions) > 1]
    if multi:
        points = [p for s in multi for p in pareto_points(s)]
        files.update(plot_pareto(points, out_dir / f"{prefix}pareto.png", out_dir / f"{prefix}pareto.csv",
                                 title.replace("studies", "Pareto fronts")))
    return files
