"""``quantize``: MASE-compatible integer (fixed-point) quantisation of linear, embedding and attention nodes.

Config (MASE's ``quantize_transform_pass`` format)::

    [passes.quantize]
    by = "type"                       # "type" | "name" | "regex_name"
    [passes.quantize.default.config]
    name = "NA"                       # not quantised ("NA", "none" or no name: skip)
    [passes.quantize.linear.config]
    name = "integer"
    data_in_width = 8                 # each (width, frac_width) pair is optional;
    data_in_frac_width = 4            # a tensor without one stays float32
    weight_width = 8
    weight_frac_width = 4
    bias_width = 8
    bias_frac_width = 4
    # data_out_width / data_out_frac_width, floor = true, ste = "clipped" are optional

Entries: with ``by = "type"`` the keys are op types -- ``linear`` (inputs, weight, bias, output),
``embedding`` (the table's rows by ``weight_*``, the output by ``data_out_*``; its integer indices
are not quantised), ``attention`` (``aten.scaled_dot_product_attention``: query, key and value by
``data_in_*``, the output by ``data_out_*``; alias ``scaled_dot_product_attention``); ``default``
applies to nodes of these types without an entry. With ``by = "name"`` the keys are node names or
module paths (``bert.encoder.layer.0.attention.self.query``); with ``by = "regex_name"`` regular
expressions ``re.match``-ed (anchored at the start, as MASE) against node names and module paths,
first matching entry winning. A name or regex that matches no quantisable node is an error.

Semantics: :mod:`passes.transforms.quantizers` (``q(x) = clamp(round(x 2^f), -2^(w-1), 2^(w-1)-1) / 2^f``,
round half to even or ``floor``; straight-through gradients, ``ste = "plain"`` as MASE or
``"clipped"``). The graph stays trainable: quantisation-aware fine-tuning just trains it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal, Mapping, Optional

from torch import fx

from mase_lite.config import Config, check_choice, unknown_key_error
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph

from ..registry import register_pass
from .compressed_nodes import (
    as_compressed_embedding,
    as_compressed_linear,
    assign_by_key,
    as_compressed_sdpa,
    check_regex,
    is_attention,
    is_embedding,
    is_linear,
    module_path,
    refresh_shared_inputs,
    update_kwargs,
)
from .quantizers import check_qspec

log = logging.getLogger(__name__)

OP_TYPES = ("linear", "embedding", "attention")
TYPE_ALIASES = {"scaled_dot_product_attention": "attention"}
QUANTIZER_NAMES = ("integer",)
SKIP_NAMES = ("NA", "none")
_PAIRS = ("data_in", "weight", "bias", "data_out")


@dataclasses.dataclass
class IntegerQuantConfig(Config):
    """One entry's ``config`` table: ``name = "integer"`` and the fixed-point formats."""

    name: Optional[str] = None
    data_in_width: Optional[int] = None
    data_in_frac_width: Optional[int] = None
    weight_width: Optional[int] = None
    weight_frac_width: Optional[int] = None
    bias_width: Optional[int] = None
    bias_frac_width: Optional[int] = None
    data_out_width: Optional[int] = None
    data_out_frac_width: Optional[int] = None
    floor: bool = False
    ste: Literal["plain", "clipped"] = "plain"

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.name is not None:
            check_choice(f"{p}name", self.name, (*QUANTIZER_NAMES, *SKIP_NAMES))
        given = []
        for pair in _PAIRS:
            w, f = getattr(self, f"{pair}_width"), getattr(self, f"{pair}_frac_width")
            if (w is None) != (f is None):
                missing = f"{pair}_frac_width" if f is None else f"{pair}_width"
                raise ConfigError(f"missing config key {p}{missing} (give {pair}_width and {pair}_frac_width together)")
            if w is not None:
                check_qspec(w, f, path, width_key=f"{pair}_width", frac_key=f"{pair}_frac_width")
                given.append(pair)
        if self.active and not given:
            raise ConfigError(f"{p}name = 'integer' but no format is given; set data_in_width/data_in_frac_width, "
                              "weight_width/weight_frac_width, bias_width/bias_frac_width or "
                              "data_out_width/data_out_frac_width")

    @property
    def active(self) -> bool:
        return self.name == "integer"

    def spec(self, pair: str) -> Optional[tuple[int, int, bool]]:
        """``(width, frac_width, floor)`` of ``data_in``/``weight``/``bias``/``data_out``, or None."""
        w = getattr(self, f"{pair}_width")
        return None if w is None else (w, getattr(self, f"{pair}_frac_width"), self.floor)


@dataclasses.dataclass
class QuantEntry(Config):
    """An entry of the quantize config: ``{config = {...}}``."""

    config: IntegerQuantConfig = dataclasses.field(default_factory=IntegerQuantConfig)


@dataclasses.dataclass
class QuantizeConfig(Config):
    """The ``quantize`` pass config; entries are the MASE-style top-level keys other than ``by``/``default``."""

    by: Literal["type", "name", "regex_name"] = "type"
    default: Optional[QuantEntry] = None
    entries: dict[str, QuantEntry] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, path: str = "") -> "QuantizeConfig":
        if isinstance(data, cls):
            return data
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'quantize'} must be a table/dict, got {data!r}")
        p = f"{path}." if path else ""
        by = check_choice(f"{p}by", data.get("by", "type"), ("type", "name", "regex_name"))
        default = None
        if data.get("default") is not None:
            default = QuantEntry.from_dict(data["default"], path=f"{p}default")
        entries: dict[str, QuantEntry] = {}
        for key, value in data.items():
            if key in ("by", "default"):
                continue
            key = str(key)
            if by == "type" and key not in OP_TYPES and key not in TYPE_ALIASES:
                raise unknown_key_error(path, key, ["by", "default", *OP_TYPES])
            if by == "regex_name":
                check_regex(f"{p}{key}", key)
            entries[key] = QuantEntry.from_dict(value, path=f"{p}{key}")
        if by == "type":
            canon = [TYPE_ALIASES.get(k, k) for k in entries]
            dup = {k for k in canon if canon.count(k) > 1}
            if dup:
                raise ConfigError(f"{p}{sorted(dup)[0]} is given twice (once under an alias)")
        obj = cls(by=by, default=default, entries=entries)
        obj.validate(path)
        return obj

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"by": self.by}
        if self.default is not None:
            out["default"] = self.default.to_dict()
        for k, v in self.entries.items():
            out[k] = v.to_dict()
        return out


def _op_type(node: fx.Node) -> Optional[str]:
    if is_linear(node):
        return "linear"
    if is_embedding(node):
        return "embedding"
    if is_attention(node):
        return "attention"
    return None


def _assign(graph: MaseGraph, config: QuantizeConfig, nodes: list[fx.Node]) -> dict[fx.Node, IntegerQuantConfig]:
    """Which entry applies to each quantisable node (validated against the graph first)."""
    out: dict[fx.Node, IntegerQuantConfig] = {}
    if config.by == "type":
        by_type = {TYPE_ALIASES.get(k, k): e.config for k, e in config.entries.items()}
        for n in nodes:
            entry = by_type.get(_op_type(n))
            if entry is None and config.default is not None:
                entry = config.default.config
            if entry is not None:
                out[n] = entry
        return out
    entries = {key: entry.config for key, entry in config.entries.items()}
    out = assign_by_key(graph, nodes, entries, config.by == "regex_name", "quantize", "quantisable node")
    if config.default is not None:
        for n in nodes:
            out.setdefault(n, config.default.config)
    return out


def node_precision(node: fx.Node) -> dict[str, Any]:
    """``{data_in, weight, bias, data_out: {"width", "frac_width", "floor"} | None}`` of a node."""
    kw = node.kwargs
    keys = {"data_in": "data_in", "weight": "weight_q", "bias": "bias_q", "data_out": "data_out"}
    out: dict[str, Any] = {}
    for name, kwname in keys.items():
        spec = kw.get(kwname)
        out[name] = None if spec is None else {"width": spec[0], "frac_width": spec[1], "floor": bool(spec[2])}
    return out


@register_pass("quantize", QuantizeConfig, kind="transform")
def quantize(graph: MaseGraph, config: QuantizeConfig) -> tuple[MaseGraph, dict[str, Any]]:
    """Integer-quantise linear/embedding/attention nodes (MASE's config format); trainable by STE."""
    nodes = [n for n in graph.nodes if _op_type(n) is not None]
    assignment = _assign(graph, config, nodes)
    changed, skipped = [], []
    for node in nodes:
        entry = assignment.get(node)
        op = _op_type(node)
        if entry is None or not entry.active:
            skipped.append(node.name)
            continue
        if op == "linear":
            as_compressed_linear(node)
            update_kwargs(node, data_in=entry.spec("data_in"), weight_q=entry.spec("weight"),
                          bias_q=entry.spec("bias"), data_out=entry.spec("data_out"), ste=entry.ste)
        elif op == "embedding":
            as_compressed_embedding(node)
            update_kwargs(node, weight_q=entry.spec("weight"), data_out=entry.spec("data_out"), ste=entry.ste)
        else:
            as_compressed_sdpa(node)
            update_kwargs(node, data_in=entry.spec("data_in"), data_out=entry.spec("data_out"), ste=entry.ste)
        graph.meta(node).annotations["quant"] = node_precision(node)
        changed.append({"node": node.name, "op": op, "module": module_path(graph, node), **node_precision(node)})
    shared = refresh_shared_inputs(graph)
    graph.recompile()
    log.info("quantize: %d nodes quantised, %d shared input nodes", len(changed), shared)
    return graph, {"quantized": changed, "skipped": skipped, "shared_inputs": shared,
                   "ops_covered": list(OP_TYPES)}
