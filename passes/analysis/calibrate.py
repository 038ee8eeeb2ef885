"""``calibrate``: record the value ranges of every quantisable node from a few batches of data.

For each linear, embedding and attention node (plain or compressed) the pass records, in
``graph.meta(node).annotations["calibration"]``, a range ``{"min", "max", "absmax"}`` per role:

* ``data_in``: the node's float input (a linear's input before any input quantisation or pruning;
  for attention, query, key and value together), over all batches;
* ``data_out``: the node's output, over all batches;
* ``weight`` / ``bias``: the stored tensors (from the tensors, not the data).

The ``quantize`` pass turns these into activation formats (integer ``frac_width = "auto"``,
scaled_integer scales). Data comes through the pass context (:mod:`passes.registry`)::

    run_pass(graph, "calibrate", {"num_batches": 4}, context=PassContext(batches=loader))

Batches are dicts of graph inputs (a ``labels`` entry is ignored); the graph runs in eval mode
without gradients and is left as it was (mode, code, tensors; the call counters of seeded random
activation pruning are restored). The first ``num_batches`` batches are used.

Persistence: the pass returns the measured ranges as its decision ``ranges``, and it is a
*recorded* analysis pass, so the history keeps them and ``MaseGraph.load`` restores the metadata
without data. Given ``ranges`` (a replay), the pass writes them and reads no data.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import torch
from torch import fx

from mase_lite.config import Config, check_range
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph

from ..registry import PassContext, PassExample, PassResult, example_context, register_pass
from ..transforms.compressed_nodes import (
    compressed_input_node,
    get_tensor,
    is_attention,
    is_embedding,
    is_linear,
    module_path,
)

log = logging.getLogger(__name__)

ANNOTATION = "calibration"
RANGE_KEYS = ("min", "max", "absmax")


@dataclasses.dataclass
class CalibrateConfig(Config):
    """``num_batches`` batches of the context's data; ``ranges`` (node -> role -> {min, max, absmax})
    is filled in by the pass (given, it is written without running data). Measured ranges may be
    infinite (an activation that overflowed); they are recorded and replayed as measured, so
    ``ranges`` takes non-finite values (the formats using them decide: see ``auto_frac_width``)."""

    num_batches: int = 8
    ranges: Optional[dict[str, dict[str, dict[str, float]]]] = dataclasses.field(default=None,
                                                                                  metadata={"finite": False})

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if isinstance(self.num_batches, bool):
            raise ConfigError(f"{p}num_batches must be an integer, got {self.num_batches!r}")
        check_range(f"{p}num_batches", self.num_batches, 1)
        for node, roles in (self.ranges or {}).items():
            for role, rng in roles.items():
                if role not in ("data_in", "weight", "bias", "data_out"):
                    raise ConfigError(f"{p}ranges.{node}.{role}: unknown role; choose one of: 'data_in', "
                                      "'weight', 'bias', 'data_out'")
                missing = [k for k in RANGE_KEYS if k not in rng]
                if missing:
                    raise ConfigError(f"missing config key {p}ranges.{node}.{role}.{missing[0]} (a range has "
                                      "min, max and absmax)")


def _quantisable(node: fx.Node) -> bool:
    return is_linear(node) or is_embedding(node) or is_attention(node)


class _Range:
    __slots__ = ("lo", "hi", "amax")

    def __init__(self) -> None:
        self.lo, self.hi, self.amax = float("inf"), float("-inf"), 0.0

    def add(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            return
        t = t.detach()
        lo, hi = float(t.min()), float(t.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.amax = max(self.amax, abs(lo), abs(hi))

    def as_dict(self) -> dict[str, float]:
        return {"min": self.lo, "max": self.hi, "absmax": self.amax}


def _inputs_of(node: fx.Node) -> list[fx.Node]:
    if is_linear(node):
        x = compressed_input_node(node)
        return [x] if isinstance(x, fx.Node) else []
    if is_attention(node):
        return [a for a in node.args[:3] if isinstance(a, fx.Node)]
    return []


def _measure(graph: MaseGraph, batches, num_batches: int) -> dict[str, dict[str, dict[str, float]]]:
    nodes = [n for n in graph.nodes if _quantisable(n)]
    watch_in: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        for x in _inputs_of(n):
            watch_in.setdefault(x, []).append(n)
    ranges = {n: {"data_in": _Range(), "data_out": _Range()} for n in nodes}
    targets = set(nodes)

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            for user in watch_in.get(n, ()):
                ranges[user]["data_in"].add(out)
            if n in targets:
                ranges[n]["data_out"].add(out)
            return out

    counters = {k: b.clone() for k, b in graph.gm.named_buffers() if not b.is_floating_point() and b.dim() == 0}
    was_training = graph.training
    used = 0
    graph.eval()
    try:
        with torch.no_grad():
            interp = _Recorder(graph.gm)
            for batch in batches:
                if used >= num_batches:
                    break
                inputs = {k: v for k, v in dict(batch).items() if k in graph.input_names}
                missing = [k for k in graph.input_names if k not in inputs]
                if missing:
                    raise ConfigError(f"calibrate: a batch lacks the graph inputs {missing} (it has {sorted(batch)})")
                interp.run(*[inputs[k] for k in _placeholder_names(graph)])
                used += 1
    finally:
        graph.train(was_training)
        with torch.no_grad():
            bufs = dict(graph.gm.named_buffers())
            for k, v in counters.items():
                bufs[k].copy_(v)
    if used == 0:
        raise ConfigError("calibrate: the context's batches are empty; give at least one batch")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for n in nodes:
        roles = {r: rng.as_dict() for r, rng in ranges[n].items() if rng.hi >= rng.lo}
        for role, idx in (("weight", 1 if is_linear(n) else 0), ("bias", 2)):
            if role == "bias" and not is_linear(n):
                continue
            if is_attention(n) or len(n.args) <= idx or not isinstance(n.args[idx], fx.Node):
                continue
            r = _Range()
            r.add(get_tensor(graph, n.args[idx]))
            roles[role] = r.as_dict()
        out[n.name] = roles
    log.info("calibrate: %d nodes over %d batches", len(out), used)
    return out


def _placeholder_names(graph: MaseGraph) -> list[str]:
    """The graph inputs in placeholder order (how the GraphModule takes them)."""
    names = [n.target for n in graph.nodes if n.op == "placeholder"]
    return [str(t) for t in names]


@register_pass("calibrate", CalibrateConfig, kind="analysis", takes_context=True, recorded=True,
               provides=(ANNOTATION,), example=PassExample({"num_batches": 2}, context=example_context))
def calibrate(graph: MaseGraph, config: CalibrateConfig, context: PassContext) -> PassResult:
    """Record per-node value ranges (data_in / data_out from data, weight / bias from the tensors)."""
    ranges, decisions = config.ranges, None
    if ranges is None:
        if context.batches is None:
            raise ConfigError("calibrate needs data: run_pass(graph, 'calibrate', config, "
                              "context=PassContext(batches=<iterable of input dicts>)) (or give calibrate.ranges)")
        ranges = _measure(graph, context.batches, config.num_batches)
        decisions = {"ranges": ranges}
    names = {n.name: n for n in graph.nodes}
    for name in ranges:
        if name not in names:
            raise ConfigError(f"calibrate.ranges.{name}: no node of that name in this graph")
    for name, roles in ranges.items():
        graph.set_annotation(names[name], ANNOTATION, {r: dict(v) for r, v in roles.items()})
    rows = [{"node": n, "module": module_path(graph, names[n]), **roles} for n, roles in ranges.items()]
    return PassResult(graph, {"nodes": rows, "num_nodes": len(rows)}, decisions)


# ------------------------------------------------------------------------------------------
# Calibrating automatically before a compression pipeline (used by search.lifecycle)


def pipeline_needs_calibration(pipeline: Any) -> bool:
    """Whether a step of ``pipeline`` (anything :func:`passes.parse_pipeline` takes) requires
    ``"calibration"`` (what this pass provides) before any step provides it: the passes' declared
    requirements (:func:`passes.pipeline.unmet_requirements`; ``quantize`` requires it when an
    activation format needs calibrated ranges), not their names."""
    from ..pipeline import unmet_requirements

    return ANNOTATION in unmet_requirements(pipeline)


def calibration_batches(dataset: Any, pad_id: int = 0, *, num_batches: int = 8, batch_size: int = 32,
                        seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``num_batches`` random batches (seeded) of a tokenised dataset, as :func:`mase_lite.training`
    assembles them (``input_ids``, ``attention_mask``, ``labels``)."""
    from mase_lite.training import TokenArrays, make_batches

    data = TokenArrays.from_dataset(dataset)
    if len(data) == 0:
        raise ConfigError("calibration needs data, but the split given is empty")
    rows = make_batches(data.lengths, batch_size, shuffle=True, seed=seed)[:num_batches]
    return [data.collate(r, pad_id) for r in rows]


def with_calibration(graph: MaseGraph, pipeline: Any, splits: Any = None, *, num_batches: int = 8,
                     batch_size: int = 32, seed: int = 0) -> tuple[Any, Optional[PassContext]]:
    """``(pipeline, context)`` to run: if the pipeline needs calibration
    (:func:`pipeline_needs_calibration`) and ``graph`` is not calibrated yet, a ``calibrate`` step is
    put first and the context holds ``num_batches`` seeded batches of ``splits.train``; otherwise the
    pipeline unchanged and no context. Without ``splits`` the calibrate step itself reports the
    missing data (one ConfigError, nothing changed)."""
    from ..pipeline import parse_pipeline

    if not pipeline_needs_calibration(pipeline):
        return pipeline, None
    if any(ANNOTATION in graph.meta(n).annotations for n in graph.nodes):
        return pipeline, None  # calibrated before: the quantize step uses those ranges
    steps = [("calibrate", {"num_batches": num_batches}), *parse_pipeline(pipeline)]
    context = None
    train = getattr(splits, "train", None) if splits is not None else None
    if train is not None:
        batches = calibration_batches(train, getattr(splits, "pad_id", 0), num_batches=num_batches,
                                      batch_size=batch_size, seed=seed)
        context = PassContext(batches=batches)
    log.info("calibrating on %d training batches before the compression pipeline", num_batches)
    return steps, context
