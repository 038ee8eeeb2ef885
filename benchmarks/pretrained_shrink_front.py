"""The figure and table of a search from a pretrained start (``examples/pretrained_shrink_minilm.toml``).

Reads the run's storage and saved graphs and writes into ``--out``:

* ``trials.csv``: one row per complete trial: the shrink choices (layers kept, heads per layer, FFN
  width), validation accuracy after fine-tuning and after compression, the compressed size of the
  non-embedding parameters, parameters and MACs (``cost`` at ``seq_len`` 128, batch 1), whether it is
  on the study's Pareto front, and for the front (whose graphs the search keeps) the measured forward
  time of the saved compressed graph on one batch of ``--batch`` x 128 random tokens (median of
  ``--repeats``, the front's graphs in alternation, ``--threads`` threads);
* ``pareto.png``: accuracy against compressed non-embedding size (left) and against MACs (right),
  every trial, the front marked, with reference lines given by ``--ref`` (``label=accuracy``);
* ``front.json``: the front's rows and the run's setup.

    python benchmarks/pretrained_shrink_front.py --run /tmp/minilm-shrink --out docs/results/pretrained_shrink \\
        --ref "unshrunk MiniLM, int8=0.856" --ref "Lab 2 best from scratch=0.847"
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def forward_ms(graphs: dict[int, torch.nn.Module], batch: int, repeats: int, threads: int) -> dict[int, float]:
    """Median forward time (ms) of each graph on the same random batch, graphs in alternation."""
    from mase_lite.training import torch_threads

    ids = torch.randint(1000, 20000, (batch, 128), generator=torch.Generator().manual_seed(0))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    times: dict[int, list[float]] = {k: [] for k in graphs}
    with torch_threads(threads), torch.inference_mode():
        for g in graphs.values():
            g.eval()(**x)  # warm-up
        for _ in range(repeats):
            for k, g in graphs.items():
                t0 = time.perf_counter()
                g(**x)
                times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def _trial_rows(study: optuna.Study) -> list[dict]:
    """One row per complete trial: its shrink choices, accuracies, size, parameters, MACs and graph folder."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    front = {t.number for t in study.best_trials} if len(study.directions) > 1 else set()
    rows = []
    for t in done:
        ua, cost, sh = t.user_attrs, t.user_attrs.get("cost") or {}, t.user_attrs.get("shrink") or {}
        heads = sh.get("heads") or {}
        rows.append({
            "trial": t.number, "on_front": t.number in front,
            "layers_kept": " ".join(map(str, sh.get("layers_kept") or [])),
            "heads": "/".join(str(heads[k]) for k in sorted(heads, key=int)), "ffn": sh.get("ffn"),
            "accuracy_finetuned": ua.get("accuracy_trained"), "accuracy": ua.get("accuracy"),
            "size_mb_non_embedding": cost.get("size_bytes_compressed_non_embedding", 0) / 1e6,
            "params": cost.get("params"), "gmacs": (cost.get("macs") or 0) / 1e9,
            "graph_dir": ua.get("graph_dir") or "", "seconds": (ua.get("timings") or {}).get("total"),
        })
    return rows


def _plot(rows: list[dict], on: list[dict], refs: list[tuple[str, float]], study_name: str, path: Path) -> None:
    """``pareto.png``: accuracy against compressed non-embedding size and against MACs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in ((axes[0], "size_mb_non_embedding", "compressed non-embedding size (MB)"),
                           (axes[1], "gmacs", "GMACs per 128-token row")):
        ax.scatter([r[key] for r in rows], [r["accuracy"] for r in rows], c="tab:blue", alpha=0.6, label="trials")
        ax.plot([r[key] for r in sorted(on, key=lambda r: r[key])], [r["accuracy"] for r in sorted(on, key=lambda r: r[key])],
                "o-", c="tab:red", label="Pareto front")
        for i, (name, acc) in enumerate(refs):
            ax.axhline(acc, ls="--", c=f"C{i + 2}", label=name)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (compressed)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{study_name}: {len(rows)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run folder of mase-lite search")
    ap.add_argument("--study", help="study name (default: the run's only study)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/pretrained_shrink"))
    ap.add_argument("--ref", action="append", default=[], help="a reference accuracy line: 'label=accuracy'")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    from mase_lite.graph import MaseGraph

    storage = f"sqlite:///{(args.run / 'optuna.db').resolve()}"
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    study = optuna.load_study(study_name=args.study or names[0], storage=storage)
    rows = _trial_rows(study)
    saved = {r["trial"]: MaseGraph.load(r["graph_dir"]) for r in rows
             if r["on_front"] and r["graph_dir"] and Path(r["graph_dir"]).is_dir()}
    times = forward_ms(saved, args.batch, args.repeats, args.threads) if saved else {}
    for r in rows:
        r["forward_ms"] = round(times[r["trial"]], 1) if r["trial"] in times else None
        del r["graph_dir"]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "trials.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    refs = [(label, float(acc)) for label, _, acc in (r.rpartition("=") for r in args.ref)]
    on = sorted((r for r in rows if r["on_front"]), key=lambda r: r["size_mb_non_embedding"])
    (args.out / "front.json").write_text(json.dumps({
        "study": study.study_name, "n_complete": len(rows), "n_trials_planned": None, "front": on,
        "references": dict(refs), "forward": {"batch": args.batch, "seq": 128, "repeats": args.repeats,
                                               "threads": args.threads},
        "command": "python benchmarks/pretrained_shrink_front.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }, indent=2) + "\n")
    _plot(rows, on, refs, study.study_name, args.out / "pareto.png")
    for r in on:
        print(f"trial {r['trial']:3d}: layers {r['layers_kept']:<12} heads {r['heads']:<18} ffn {r['ffn']:>5}  "
              f"acc {r['accuracy']:.3f} (fine-tuned {r['accuracy_finetuned']:.3f})  "
              f"{r['size_mb_non_embedding']:.2f} MB  {r['gmacs']:.2f} GMACs  forward {r['forward_ms']} ms")
    print(f"wrote {args.out}/trials.csv, front.json, pareto.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
