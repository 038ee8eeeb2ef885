"""``mase-lite transform``: trace a model, run configured passes, optionally evaluate, save graph and report.

The config file (TOML)::

    checkpoint = "path/to/hf_checkpoint"     # or a [model] table (ModelConfig), or CLI model flags
    [model]
    num_hidden_layers = 2
    ...
    [data]                                    # optional: evaluate accuracy (mase_lite.data.DataConfig)
    n_test = 1000
    [eval]                                    # optional: split = "test" | "val", batch_size, precision
    split = "test"
    [passes.quantize]                         # the passes, run in document order (passes.pipeline)
    ...

``--graph DIR`` starts from a saved graph instead (the output of ``mase-lite train --out DIR``, or
``DIR/graph`` of an earlier transform): no tracing, the graph's recorded passes stay, and the
config's passes run after them -- so a trained model is compressed from the CLI.

Writes ``DIR/graph/`` (``MaseGraph.save``; ``MaseGraph.load`` restores it) and ``DIR/report.json``:
per node its precision and achieved weight sparsity, the ``cost`` totals, each pass's info and the
accuracy when evaluated. Every key is checked before anything runs: a typo is one error naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal, Optional

from ..config import Config, check_range, load_toml
from ..data import DataConfig
from ..errors import ConfigError
from .common import add_model_args, check_out_dir, lifecycle, model_config_from_args, model_from_args

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSection(Config):
    """``[eval]``: which split to evaluate on and how (see ``mase_lite.training.evaluate``)."""

    split: Literal["test", "val"] = "test"
    batch_size: int = 128
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_threads: Optional[int] = None
    device: str = "auto"

    def validate(self, path: str = "") -> None:
        from ..training import check_device

        p = f"{path}." if path else ""
        check_device(p + "device", self.device)
        check_range(p + "batch_size", self.batch_size, 1)
        if self.num_threads is not None:
            check_range(p + "num_threads", self.num_threads, 1)


@dataclasses.dataclass
class TransformFile(Config):
    """The whole ``transform`` config file."""

    checkpoint: Optional[str] = None
    model: Optional[dict[str, Any]] = None
    data: Optional[DataConfig] = None
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    passes: Any = None

    def validate(self, path: str = "") -> None:
        if self.passes is None:
            raise ConfigError("the config has no [passes] section; add [passes.<name>] tables (e.g. [passes.quantize])")
        if self.checkpoint is not None and self.model is not None:
            raise ConfigError("give either checkpoint or a [model] table, not both")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transform", help="run compression passes on a model and save the graph and a JSON report",
        description="Trace a model (HF checkpoint directory or config), run the [passes] of a TOML config in "
                    "order, evaluate accuracy on the [data] section's IMDb split if given, and write the "
                    "transformed graph (DIR/graph) and a report (DIR/report.json).",
    )
    p.add_argument("--config", type=Path, required=True, help="TOML config with [passes] (and [model], [data], [eval])")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation even if [data] is given")
    p.add_argument("--device", help="eval.device: auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--graph", type=Path, metavar="DIR",
                   help="start from a saved graph (e.g. the output of 'mase-lite train' or of another transform) "
                        "instead of tracing a model; its recorded passes are kept and the config's run after them")
    add_model_args(p)
    p.set_defaults(run=run)


def _load(args: argparse.Namespace) -> TransformFile:
    data = load_toml(args.config)
    if getattr(args, "device", None) is not None:
        data = {**data, "eval": {**(data.get("eval") or {}), "device": args.device}}
    cfg = TransformFile.from_dict(data)
    if cfg.data is not None and not getattr(args, "no_eval", False):
        from ..training import resolve_device

        resolve_device(cfg.eval.device, "eval.device")  # cuda without CUDA: an error before any work
    from passes import parse_pipeline

    parse_pipeline({"passes": cfg.passes})  # every pass name and config checked before any work
    if cfg.model is not None:
        model_config_from_args(args, cfg.model)  # checks the [model] table too
    return cfg


def node_rows(graph) -> list[dict[str, Any]]:
    """Per compressed-able node: op, module, precision of each tensor, weight/activation sparsity."""
    from passes.transforms.compressed_nodes import is_attention, is_embedding, is_linear
    from passes.transforms.prune import node_sparsity
    from passes.transforms.quantize import node_precision

    rows = []
    for node in graph.nodes:
        if not (is_linear(node) or is_embedding(node) or is_attention(node)):
            continue
        meta = graph.meta(node)
        row: dict[str, Any] = {"node": node.name, "op": meta.op, "module": meta.module_path,
                               "precision": node_precision(node)}
        if is_linear(node):
            s = node_sparsity(graph, node)
            row["weight_sparsity"] = s["weight_sparsity"]
            row["activation_pruning"] = s["activation"]
        rows.append(row)
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _load_saved_graph(path: Path, cfg: TransformFile, checkpoint: Optional[Path], lc):
    """``--graph DIR``: the saved graph (``lc.load``), which replaces any model source; a [data]
    table without a tokenizer takes the one the graph was trained with (its training.json)."""
    if checkpoint is not None or cfg.model is not None:
        raise ConfigError("--graph starts from a saved graph; give no checkpoint, --checkpoint or [model] table with it")
    if not (path / "graph.json").is_file() and not (path / "export.json").is_file():
        raise ConfigError(f"--graph {path}: not a saved graph directory (no graph.json); give the directory "
                          "'mase-lite train --out' or 'mase-lite transform' (DIR/graph) wrote")
    record = path / "training.json"
    if cfg.data is not None and cfg.data.tokenizer is None and record.is_file():
        tok = (json.loads(record.read_text()).get("data") or {}).get("tokenizer")
        if tok:
            cfg.data = cfg.data.replace(tokenizer=tok)
    return lc.load(path).eval()


def _load_data(cfg: TransformFile, args: argparse.Namespace, model, lc):
    """The splits, when the run evaluates or its passes need calibration (before the passes run, so
    that data problems surface first); else None."""
    from passes.analysis.calibrate import pipeline_needs_calibration

    needs_calibration = pipeline_needs_calibration({"passes": cfg.passes})
    if needs_calibration and cfg.data is None:
        raise ConfigError("the [passes] need calibration data (integer frac_width = \"auto\" or scaled_integer "
                          "activations); add a [data] table: its training rows calibrate the activation ranges")
    if (cfg.data is not None and not args.no_eval) or needs_calibration:
        return lc.load_data(cfg.data, model)
    return None


def _evaluation(graph, splits, cfg: TransformFile, lc) -> dict[str, Any]:
    """Accuracy and loss on ``[eval] split`` with the ``[eval]`` settings."""
    from ..training import TrainConfig

    e = cfg.eval
    recipe = TrainConfig(eval_batch_size=e.batch_size, precision=e.precision, num_threads=e.num_threads,
                         device=e.device)
    ev = lc.evaluate(graph, splits, recipe, e.split)
    return {"split": e.split, "rows": ev["n"], "accuracy": ev["accuracy"], "loss": ev["loss"]}


def _report(graph, cost: dict[str, Any], infos: dict[str, Any], checkpoint: Optional[Path],
            saved: Optional[Path]) -> dict[str, Any]:
    return {
        "model": graph.model_info.get("class"),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "graph": str(saved) if saved is not None else None,
        "passes": [name for name, _ in graph.history],
        "history": [{"name": n, "config": c} for n, c in graph.history],
        "nodes": node_rows(graph),
        "cost": {k: v for k, v in cost.items() if k not in ("nodes", "table")},
        "cost_nodes": cost["nodes"],
        "pass_info": {k: {kk: vv for kk, vv in v.items() if kk != "table"} for k, v in infos.items()},
    }


def _print_report(report: dict[str, Any], cost: dict[str, Any], out: Path) -> None:
    print(cost["table"])
    print(f"passes: {', '.join(report['passes']) or '(none)'}")
    print(f"size: fp32 {cost['size_bytes_fp32']} B, quantised {cost['size_bytes_quantized']} B, "
          f"quantised+sparse {cost['size_bytes_compressed']} B (non-embedding: {cost['size_bytes_fp32_non_embedding']}"
          f" -> {cost['size_bytes_compressed_non_embedding']} B)")
    if "evaluation" in report:
        e = report["evaluation"]
        print(f"accuracy on {e['split']} ({e['rows']} rows): {e['accuracy']:.4f}  loss {e['loss']:.4f}")
    print(f"graph: {out / 'graph'}\nreport: {out / 'report.json'}")


def run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    out = Path(args.out)
    check_out_dir(out)  # before any work, not after it
    lc = lifecycle()
    checkpoint = args.checkpoint or (Path(cfg.checkpoint) if cfg.checkpoint else None)
    saved = getattr(args, "graph", None)
    if saved is not None:
        model = _load_saved_graph(saved, cfg, checkpoint, lc)
    else:
        model = model_from_args(args, cfg.model, cfg.checkpoint, lc)
    splits = _load_data(cfg, args, model, lc)
    graph = model if saved is not None else lc.trace(model)
    graph, infos = lc.compress_with_info(graph, {"passes": cfg.passes}, splits,
                                         seed=cfg.data.seed if cfg.data is not None else 0)
    seq = cfg.data.max_length if cfg.data is not None else 128
    cost = lc.cost_report(graph, {"batch_size": 1, "seq_len": seq})
    report = _report(graph, cost, infos, checkpoint, saved)
    if cfg.data is not None and not args.no_eval:
        report["evaluation"] = _evaluation(graph, splits, cfg, lc)
    graph.save(out / "graph")
    (out / "report.json").write_text(json.dumps(_jsonable(report), indent=2))
    _print_report(report, cost, out)
    return 0
