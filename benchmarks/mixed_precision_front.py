"""The figure and tables of a per-node mixed-precision search (``examples/mixed_precision_nsga2.toml``).

Reads the run's storage and writes into ``--out``:

* ``pareto.png``: validation accuracy vs the compressed size of the non-embedding parameters (KB),
  every complete trial, the Pareto front (the study's own, i.e. of its two objectives), the fp32 size
  of those parameters and the trained accuracy before compression as references;
* ``trials.csv``: one row per complete trial (accuracies, sizes, zeros from pruning and rounding, the
  per-node choices counted as in the summary);
* ``front.json``: the front's trials with their full per-node choices, and the run's setup.

    python benchmarks/mixed_precision_front.py --run /tmp/mp-run --out docs/results/mixed_precision
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.summary import choices_str  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run folder of mase-lite search")
    ap.add_argument("--study", help="study name (default: the run's only study)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/mixed_precision"))
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{(args.run / 'optuna.db').resolve()}"
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    study = optuna.load_study(study_name=args.study or names[0], storage=storage)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    front = {t.number for t in study.best_trials}
    rows = []
    for t in done:
        ua, cost, sp = t.user_attrs, t.user_attrs.get("cost") or {}, t.user_attrs.get("sparsity") or {}
        rows.append({
            "trial": t.number, "on_front": t.number in front, "accuracy": ua.get("accuracy"),
            "accuracy_trained": ua.get("accuracy_trained"),
            "size_kb_non_embedding": cost.get("size_bytes_compressed_non_embedding", 0) / 1e3,
            "fp32_kb_non_embedding": cost.get("size_bytes_fp32_non_embedding", 0) / 1e3,
            "size_mb_total": cost.get("size_bytes_compressed", 0) / 1e6,
            "pruned_fraction": sp.get("pruned_fraction"),
            "rounding_zero_fraction_of_kept": sp.get("rounding_zero_fraction_of_kept"),
            "effective_sparsity": sp.get("effective_sparsity"),
            "choices": choices_str(ua.get("compression_choices")),
            "reused_from": ua.get("reused_from", ""),
        })
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "trials.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run_cfg = json.loads((args.run / "run_config.json").read_text()) if (args.run / "run_config.json").is_file() else {}
    (args.out / "front.json").write_text(json.dumps({
        "study": study.study_name, "objectives": study.user_attrs.get("objectives"),
        "n_complete": len(done), "config": {k: run_cfg.get(k) for k in ("search", "space", "data", "train")},
        "front": [{**r, "compression_choices": next(t for t in done if t.number == r["trial"]).user_attrs.get(
            "compression_choices")} for r in sorted(rows, key=lambda r: r["size_kb_non_embedding"]) if r["on_front"]],
    }, indent=1) + "\n")
    plot(rows, args.out / "pareto.png", study.study_name)
    print(f"{len(done)} complete trials, {len(front)} on the front; wrote {args.out}/pareto.png, trials.csv, front.json")
    return 0


def plot(rows: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["size_kb_non_embedding"] for r in rows], [r["accuracy"] for r in rows], s=16, alpha=0.45,
               label="trials")
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["size_kb_non_embedding"])
    ax.plot([r["size_kb_non_embedding"] for r in front], [r["accuracy"] for r in front], marker="o",
            drawstyle="steps-post", color="C3", label="Pareto front")
    trained = rows[0]["accuracy_trained"]
    if trained is not None and all(r["accuracy_trained"] == trained for r in rows):
        ax.axhline(trained, color="grey", ls="--", lw=1, label=f"trained, uncompressed ({trained:.3f})")
    fp32 = rows[0]["fp32_kb_non_embedding"]
    ax.axvline(fp32, color="grey", ls=":", lw=1, label=f"fp32 size ({fp32:.0f} KB)")
    ax.set_xlabel("compressed size of the non-embedding parameters (KB)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{title}: per-node formats, widths and sparsity (NSGA-II)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
