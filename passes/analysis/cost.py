"""``cost``: parameters, MACs, weight bits, non-zero weights and model size of a (compressed) graph.

Per node that reads parameters, and in total (every stored tensor counted once):

* ``params``: elements of the stored tensors the node reads (see *What is counted* below);
* ``macs``: multiply-accumulates for ``batch_size`` x ``seq_len`` inputs (linear: rows x in x out,
  attention: QK^T and PV); ``macs_sparse``: linear MACs with only the non-zero weights;
* ``bits``: storage bits per element of each tensor -- the number format's
  :meth:`~passes.formats.NumberFormat.bits_per_value` where the node quantises it (integer: its
  width), else the dtype's width (32 for float32); ``overhead_bits``: the format's bits stored once
  per tensor / channel / block (:meth:`~passes.formats.NumberFormat.overhead_bits`: scales, shared
  exponents; 0 for integer), added to the quantised and compressed sizes;
* ``nonzero``: non-zero elements of the effective tensors (``q(w) * mask``), ``pruned``: mask zeros;
  ``rounding_zeros``: elements the mask keeps, non-zero in float, that the format rounds to 0 -- the
  zeros quantisation adds on top of pruning. Totals (all, ``*_embedding``, ``*_non_embedding``) and
  per-node rows (and each tensor) also give ``pruned_fraction`` (pruned / params),
  ``rounding_zero_fraction`` (rounding zeros / params), ``rounding_zero_fraction_of_kept``
  (rounding zeros / (params - pruned)) and ``effective_sparsity`` (1 - nonzero / params: every zero
  of the effective weights);
* sizes in bytes (each tensor's values, and its side data, rounded up to whole bytes):
  (a) ``size_bytes_fp32``: dense float32;
  (b) ``size_bytes_quantized``: dense at the stored precision;
  (c) ``size_bytes_compressed``: quantised + sparse -- for a tensor with a pruning mask, the smallest
  encoding that keeps the mask (rounding zeros are not pruned weights): its non-zero values at the
  stored precision plus a 1-bit-per-element mask, plus 1 bit per kept value when some kept values
  round to zero, or the dense values where that is smaller (:mod:`passes.export.encoding`, what the
  compact export writes); other tensors as (b).

Embedding tables (most of a small BERT's parameters) count at their own precision (float32 unless
quantised) and are also reported separately (``*_embedding`` keys), next to everything else
(``*_non_embedding``). The top-level totals are plain numbers, for search objectives.

What is counted: the model's state, i.e. every entry of ``graph.gm.state_dict()`` that holds numbers
of the model -- every parameter, trainable or frozen (``requires_grad`` says how the model is
trained, not what it stores), and every persistent floating-point buffer -- each tensor once, even
if it has several names. A tensor no node reads (yet stored, so saved with the graph) is counted in
the ``(other)`` row, with those read only by nodes that are not counted on their own. Not counted:

* pruning masks (bool buffers ``*_mask``): a mask is derivable from the zeros of the pruned
  weight (raw pruned weights are exactly zero), so it adds nothing to the dense sizes (a) and (b);
  the sparse format (c) stores it, as the 1 bit per element above;
* integer buffers, e.g. BERT's ``position_ids`` (``arange``) and ``token_type_ids`` (zeros): index
  constants the model's code defines, not weights (and no part of a weight format);
* non-persistent buffers (not in the state dict, not saved): derived or scratch state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
from torch import fx

from mase_lite.config import Config, check_range
from mase_lite.graph import MaseGraph

from ..registry import register_pass
from ..transforms.compressed_nodes import get_tensor, is_embedding, is_linear, linear_mask_node
from ..formats import format_from_spec
from ..formats.integer import IntegerFormat
from ..transforms.quantizers import integer_quantize_reference
from ..export.encoding import masked_nbytes

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CostConfig(Config):
    """MACs are counted for ``batch_size`` x ``seq_len`` inputs."""

    batch_size: int = 1
    seq_len: int = 128

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        check_range(p + "batch_size", self.batch_size, 1)
        check_range(p + "seq_len", self.seq_len, 1)


def _dtype_bits(t: torch.Tensor) -> int:
    return torch.finfo(t.dtype).bits if t.is_floating_point() else torch.iinfo(t.dtype).bits


def _tensor_roles(node: fx.Node) -> dict[str, tuple[fx.Node, Any, fx.Node | None]]:
    """role -> (get_attr node, quant spec or None, mask node or None) for a node's parameters."""
    roles: dict[str, tuple[fx.Node, Any, fx.Node | None]] = {}
    kw = node.kwargs
    if is_linear(node):
        roles["weight"] = (node.args[1], kw.get("weight_q"), linear_mask_node(node))
        if len(node.args) > 2 and isinstance(node.args[2], fx.Node):
            roles["bias"] = (node.args[2], kw.get("bias_q"), None)
    elif is_embedding(node):
        roles["weight"] = (node.args[0], kw.get("weight_q"), None)
    else:
        for i, arg in enumerate(a for a in node.all_input_nodes if a.op == "get_attr"):
            roles[f"param{i}"] = (arg, None, None)
    return roles


def stored_tensors(graph: MaseGraph) -> dict[int, tuple[str, torch.Tensor]]:
    """``id(tensor) -> (name, tensor)`` of the tensors ``cost`` counts (see the module docstring):
    the floating-point entries of ``graph.gm.state_dict()`` (parameters and persistent buffers),
    each tensor once under its first name."""
    out: dict[int, tuple[str, torch.Tensor]] = {}
    for name, t in graph.gm.state_dict(keep_vars=True).items():
        if t.is_floating_point() or t.is_complex():
            out.setdefault(id(t), (name, t))
    return out


def _tensor_cost(name: str, t: torch.Tensor, spec: Any, mask: torch.Tensor | None,
                 channel_dim: int | None = 0) -> dict[str, Any]:
    t = t.detach()
    numel = int(t.numel())
    fmt = format_from_spec(spec)
    bits = fmt.bits_per_value() if fmt is not None else _dtype_bits(t)
    overhead = fmt.overhead_bits(tuple(t.shape), channel_dim=channel_dim) if fmt is not None else 0
    eff = t.float()
    if isinstance(fmt, IntegerFormat):
        eff = integer_quantize_reference(eff, *fmt.qspec)
    elif fmt is not None:
        eff = fmt.quantize(eff, channel_dim=channel_dim)
    pruned = 0
    kept = t != 0
    if mask is not None:
        mask = mask.to(torch.bool)
        eff = eff * mask
        pruned = numel - int(mask.sum())
        kept = kept & mask
    nonzero = int((eff != 0).sum())
    rounding_zeros = int((kept & (eff == 0)).sum())
    # the values and the per-tensor/channel/block side data (scales, shared exponents) are two arrays,
    # each rounded up to whole bytes, as the compact export stores them
    dense_q = math.ceil(numel * bits / 8) + math.ceil(overhead / 8)
    # a masked tensor in the smallest encoding that keeps its mask (rounding zeros are not pruned),
    # as the compact export writes it (passes.export.encoding)
    compressed = (masked_nbytes(numel, numel - pruned, nonzero, bits) + math.ceil(overhead / 8)
                  if mask is not None else dense_q)
    return {"name": name, "numel": numel, "bits": bits, "overhead_bits": overhead, "nonzero": nonzero,
            "pruned": pruned, "rounding_zeros": rounding_zeros, **_fractions(numel, pruned, rounding_zeros, nonzero),
            "size_bytes_fp32": numel * 4, "size_bytes_quantized": dense_q, "size_bytes_compressed": compressed}


def _fractions(numel: int, pruned: int, rounding_zeros: int, nonzero: int) -> dict[str, float]:
    """Pruning zeros, rounding zeros and all zeros as fractions (see the module docstring)."""
    kept = numel - pruned
    return {"pruned_fraction": pruned / numel if numel else 0.0,
            "rounding_zero_fraction": rounding_zeros / numel if numel else 0.0,
            "rounding_zero_fraction_of_kept": rounding_zeros / kept if kept else 0.0,
            "effective_sparsity": 1.0 - nonzero / numel if numel else 0.0}


_SUMS = ("params", "nonzero", "pruned", "rounding_zeros", "size_bytes_fp32", "size_bytes_quantized",
         "size_bytes_compressed")


def _node_tensors(graph: MaseGraph, node: fx.Node, stored: dict[int, tuple[str, torch.Tensor]],
                  seen: set[int]) -> dict[str, dict[str, Any]]:
    """Costs of the stored tensors ``node`` reads, by role, leaving out those already in ``seen`` (then added)."""
    internal = node.meta.get("mase_internal") or node.target is getattr
    roles = _tensor_roles(node) if node.op == "call_function" and not internal else {}
    tensors = {}
    for role, (pnode, spec, mask_node) in roles.items():
        t = get_tensor(graph, pnode)
        if id(t) not in stored or id(t) in seen:
            continue
        seen.add(id(t))
        tensors[role] = _tensor_cost(pnode.target, t, spec, get_tensor(graph, mask_node),
                                     None if role == "bias" else 0)
    return tensors


def _add_sums(row: dict[str, Any], tensors: dict[str, dict[str, Any]], group: dict[str, int]) -> None:
    """Set ``row``'s :data:`_SUMS` over its tensors and add them to the ``group`` totals."""
    for key in _SUMS:
        row[key] = sum(t["numel" if key == "params" else key] for t in tensors.values())
        group[key] += row[key]


def _other_row(stored: dict[int, tuple[str, torch.Tensor]], seen: set[int],
               group: dict[str, int]) -> dict[str, Any] | None:
    """The row of the stored tensors read only by nodes not counted, or by no node at all (None: none)."""
    rest = [(name, t) for tid, (name, t) in stored.items() if tid not in seen]
    if not rest:
        return None
    tensors = {name: _tensor_cost(name, t, None, None) for name, t in rest}
    row = {"node": "(other)", "op": "other", "module": "", "macs": 0, "macs_sparse": 0, "tensors": tensors,
           "weight_bits": None, "weight_sparsity": 0.0}
    _add_sums(row, tensors, group)
    row.update(_fractions(row["params"], row["pruned"], row["rounding_zeros"], row["nonzero"]))
    return row


def _totals(groups: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The :data:`_SUMS` and fractions in all, for the embeddings and for the rest."""
    info: dict[str, Any] = {}
    for key in _SUMS:
        info[key] = groups["embedding"][key] + groups["non_embedding"][key]
        info[f"{key}_embedding"] = groups["embedding"][key]
        info[f"{key}_non_embedding"] = groups["non_embedding"][key]
    for sfx in ("", "_embedding", "_non_embedding"):
        for k, v in _fractions(info["params" + sfx], info["pruned" + sfx], info["rounding_zeros" + sfx],
                               info["nonzero" + sfx]).items():
            info[k + sfx] = v
    return info


@register_pass("cost", CostConfig, kind="analysis", example={"batch_size": 2, "seq_len": 16})
def cost(graph: MaseGraph, config: CostConfig) -> tuple[MaseGraph, dict[str, Any]]:
    """Per-node and total parameters, MACs, weight bits, non-zeros and fp32 / quantised / sparse sizes."""
    b, s = config.batch_size, config.seq_len
    stored = stored_tensors(graph)
    seen: set[int] = set()  # ids of the stored tensors already counted
    rows: list[dict[str, Any]] = []
    groups = {"embedding": dict.fromkeys(_SUMS, 0), "non_embedding": dict.fromkeys(_SUMS, 0)}
    total_macs = total_macs_sparse = 0
    for node in graph.nodes:
        meta = graph.meta(node)
        macs = meta.macs(b, s) if meta.op in ("linear", "matmul", "attention") else 0
        tensors = _node_tensors(graph, node, stored, seen)
        macs_sparse = macs
        if is_linear(node) and "weight" in tensors and macs:
            w = tensors["weight"]
            macs_sparse = macs * w["nonzero"] // max(w["numel"], 1)
        total_macs += macs
        total_macs_sparse += macs_sparse
        if not tensors and not macs:
            continue
        group = "embedding" if meta.op == "embedding" else "non_embedding"
        row: dict[str, Any] = {"node": node.name, "op": meta.op, "module": meta.module_path or "",
                               "macs": macs, "macs_sparse": macs_sparse, "tensors": tensors}
        _add_sums(row, tensors, groups[group])
        row["weight_bits"] = tensors["weight"]["bits"] if "weight" in tensors else None
        row["weight_sparsity"] = (tensors["weight"]["pruned"] / tensors["weight"]["numel"]
                                  if "weight" in tensors and tensors["weight"]["numel"] else 0.0)
        row.update(_fractions(row["params"], row["pruned"], row["rounding_zeros"], row["nonzero"]))
        rows.append(row)
    other = _other_row(stored, seen, groups["non_embedding"])
    if other is not None:
        rows.append(other)
    info = _totals(groups)
    info["macs"] = total_macs
    info["macs_sparse"] = total_macs_sparse
    info["batch_size"], info["seq_len"] = b, s
    info["compression_ratio"] = (info["size_bytes_fp32"] / info["size_bytes_compressed"]
                                 if info["size_bytes_compressed"] else 0.0)
    info["nodes"] = rows
    info["table"] = format_table(rows, info)
    return graph, info


def format_table(rows: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    """A text table of the per-node rows and the totals (``sparsity``: pruned weights; ``round0``:
    rounding zeros / params; ``eff.sp``: effective sparsity, all zeros / params)."""
    head = f"{'node':<16} {'op':<10} {'module':<44} {'params':>9} {'bits':>4} {'sparsity':>8} {'round0':>7} " \
           f"{'eff.sp':>7} {'MACs':>12} {'fp32 B':>10} {'quant B':>10} {'q+sparse B':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        bits = "" if r["weight_bits"] is None else str(r["weight_bits"])
        lines.append(f"{r['node']:<16} {r['op']:<10} {r['module'][:44]:<44} {r['params']:>9} {bits:>4} "
                     f"{r['weight_sparsity']:>8.3f} {r['rounding_zero_fraction']:>7.3f} "
                     f"{r['effective_sparsity']:>7.3f} {r['macs']:>12} {r['size_bytes_fp32']:>10} "
                     f"{r['size_bytes_quantized']:>10} {r['size_bytes_compressed']:>10}")
    lines.append("-" * len(head))
    for group in ("embedding", "non_embedding", None):
        sfx = f"_{group}" if group else ""
        label = group or "total"
        lines.append(f"{label:<16} {'':<10} {'':<44} {totals['params' + sfx]:>9} {'':>4} "
                     f"{totals['pruned_fraction' + sfx]:>8.3f} {totals['rounding_zero_fraction' + sfx]:>7.3f} "
                     f"{totals['effective_sparsity' + sfx]:>7.3f} "
                     f"{totals['macs'] if group is None else '':>12} {totals['size_bytes_fp32' + sfx]:>10} "
                     f"{totals['size_bytes_quantized' + sfx]:>10} {totals['size_bytes_compressed' + sfx]:>10}")
    return "\n".join(lines)
