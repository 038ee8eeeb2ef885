"""``mase-lite report``: trace a model and print its graph report."""

from __future__ import annotations

import argparse
import json

from .common import add_model_args, lifecycle, model_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="trace a model and print its graph report",
                       description="Trace a model into a MaseGraph and print a per-node (or per-module) table "
                                   "of op kinds, shapes, parameters and MACs, with totals.")
    add_model_args(p)
    p.add_argument("--by", choices=["node", "module"], default="node", help="one row per node or per module")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for MAC counts (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for MAC counts (default 128)")
    p.add_argument("--ops", nargs="*", help="only show nodes of these op kinds (e.g. linear attention)")
    p.add_argument("--json", action="store_true", help="print rows and totals as JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from passes import run_pass

    lc = lifecycle()
    model = model_from_args(args, lc=lc)
    graph = lc.trace(model)
    cfg = {"by": args.by, "batch_size": args.batch_size, "seq_len": args.seq_len}
    if args.ops:
        cfg["ops"] = args.ops
    _, info = run_pass(graph, "report_graph", cfg)
    if args.json:
        print(json.dumps({"rows": info["rows"], "totals": info["totals"]}, indent=2))
    else:
        print(f"{model_name(model)}: {type(model).__name__}")
        print(info["table"])
    return 0


def model_name(model) -> str:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return type(model).__name__
    return (f"{cfg.model_type} L{getattr(cfg, 'num_hidden_layers', '?')} H{getattr(cfg, 'hidden_size', '?')} "
            f"A{getattr(cfg, 'num_attention_heads', '?')} I{getattr(cfg, 'intermediate_size', '?')}")
