"""A deployable ONNX export: the ``dynamic_int8`` scheme as ONNX Runtime's integer CPU kernels.

``export_deployable(graph, out_dir)`` (also ``export_onnx(graph, out_dir, deployable=True)`` and
``mase-lite export GRAPH --format onnx --deployable --out DIR``) writes ``model.onnx`` -- inputs as
the graph's (``input_ids``, ``attention_mask``: int64, dynamic batch and sequence), output
``logits`` -- and ``onnx.json`` with ``kind = "deployable"``. The kernel structure is what
``quantize_dynamic(per_channel=True)`` of an ORT-fused float model gives, with mase-lite's codes and
scales (:mod:`passes.formats.dynamic_int8`):

* query/key/value linears of one attention (same input, all ``dynamic_int8``) and the attention
  itself -> ``DynamicQuantizeLinear`` + ``QAttention`` (com.microsoft): one u8 x s8 GEMM with the
  three weights side by side and per-column scales, then float32 attention with the padding mask;
* every other ``dynamic_int8`` linear -> ``DynamicQuantizeMatMul`` (com.microsoft: the input's
  ``DynamicQuantizeLinear``, the integer GEMM and ``acc * (scale * w_scale) + bias`` in one kernel);
* ``dynamic_int8`` embedding tables -> int8 codes, ``Gather`` + ``Cast`` + ``Mul`` by the gathered
  per-row scale;
* then ``onnxruntime.transformers.optimizer``'s fusions of what is left in float32 (``Add`` +
  ``LayerNormalization`` -> ``SkipLayerNormalization``, GELU), which keep the computation the same.

Weight sparsity stays zeros in the int8 codes (ONNX Runtime has no sparse CPU kernels). Anything the
runtime cannot run as a fast model is refused by :func:`check_deployable` with one
:class:`~mase_lite.errors.MaseError` naming the node and the reason: other number formats (Lab 2's
fixed point becomes QuantizeLinear/DequantizeLinear float ops: the simulation export, not this
one), activation pruning (TopK per token), quantised attention matmuls or outputs, weight-only or
input-only int8.

Before anything is written the model is run in ONNX Runtime against the simulation (the graph
itself) on seeded random batches -- one unpadded row, and padded rows -- and the export fails with
a MaseError, leaving no file, if a predicted label differs or a logit differs by more than
``LOGIT_ATOL + LOGIT_RTOL * max|logit|`` (labels: on every row whose simulated margin exceeds twice
that). Why not bit for bit: ONNX Runtime's LayerNorm, GELU, softmax and float GEMM kernels differ
from torch's in the last float32 bits; where such a difference moves an activation across a
rounding boundary of ``DynamicQuantizeLinear``, that element's code moves by one step (up to
``range / 255`` of the tensor), and later layers carry it on. Everything integer is identical (the
tests check the kernels against the simulation on their own, bit for bit). On MiniLM (IMDb rows)
the difference reaches about 11 % of the largest logit; the simulation itself moves as much when
only its LayerNorm's last bit changes (docs/deploying.md), so the tolerance is that of the scheme.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import operator
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph
from mase_lite.weight_scope import frozen_weights

from ..formats import format_from_spec
from ..formats.dynamic_int8 import DynamicInt8Format, dynamic_quantize_linear
from ..transforms.compressed_nodes import get_tensor, linear_mask_node
from ..transforms.ops import compressed_embedding, compressed_linear, compressed_sdpa
from .onnx import _Logits, op_histogram  # _Logits: the graph as forward(*inputs) -> logits

log = logging.getLogger(__name__)

__all__ = ["export_deployable", "check_deployable", "DeployPlan", "LOGIT_ATOL", "LOGIT_RTOL", "KIND"]

KIND = "deployable"
ONNX_FILE = "model.onnx"
OPSET = 21
#: Logit tolerance of the export's check (module docstring): ``LOGIT_ATOL + LOGIT_RTOL * max|logit|``;
#: labels must agree on every row whose simulated top-2 margin exceeds twice that.
LOGIT_ATOL, LOGIT_RTOL = 1e-3, 0.15

aten = torch.ops.aten
#: Ops that only move or view data between a q/k/v linear and the attention, or after it.
_SHAPE_OPS = {aten.view.default, aten.reshape.default, aten.transpose.int, aten.permute.default,
              aten.contiguous.default, aten.clone.default, aten._unsafe_view.default}
_SDPA_TARGETS = (aten.scaled_dot_product_attention.default, compressed_sdpa)
_LINEAR_TARGETS = (aten.linear.default, compressed_linear)
_EMBEDDING_TARGETS = (aten.embedding.default, compressed_embedding)


# ------------------------------------------------------------------------------------ the plan


@dataclass
class _AttentionGroup:
    sdpa: fx.Node
    q: fx.Node
    k: fx.Node
    v: fx.Node
    out: fx.Node  # the node whose output is the merged heads [batch, seq, heads * head_dim]
    num_heads: int
    mask: Optional[fx.Node]  # the attention_mask placeholder


@dataclass
class DeployPlan:
    """What the export does with each node (:func:`check_deployable`)."""

    linears: list[fx.Node] = field(default_factory=list)       # -> DynamicQuantizeMatMul
    attentions: list[_AttentionGroup] = field(default_factory=list)  # -> DynamicQuantizeLinear + QAttention
    embeddings: list[fx.Node] = field(default_factory=list)    # -> int8 Gather
    float_linears: list[str] = field(default_factory=list)     # left in float32 (not quantised)

    def summary(self) -> dict[str, Any]:
        return {"dynamic_quantize_matmul": [n.name for n in self.linears],
                "qattention": [{"attention": g.sdpa.name, "qkv": [g.q.name, g.k.name, g.v.name],
                                "num_heads": g.num_heads} for g in self.attentions],
                "int8_embeddings": [n.name for n in self.embeddings], "float_linears": list(self.float_linears)}


def _where(graph: MaseGraph, node: fx.Node) -> str:
    path = graph.meta(node).module_path if "mase" in node.meta else None
    return f"node {node.name}" + (f" ({path})" if path else "")


def _format_reason(fmt: Any) -> str:
    d = fmt.to_dict()
    if d.get("floor") or (fmt.name == "integer" and getattr(fmt, "qspec", (0, 0, False))[2]):
        return (f"format {d} rounds with floor = true, which ONNX Runtime's QuantizeLinear cannot do, and its fixed "
                "point runs as float QuantizeLinear/DequantizeLinear ops anyway")
    return (f"format {d} has no integer kernel in ONNX Runtime (only a QuantizeLinear/DequantizeLinear float "
            "simulation: export it without --deployable); deployable formats: 'dynamic_int8'")


def _deployable_format(graph: MaseGraph, node: fx.Node, spec: Any, role: str) -> Optional[DynamicInt8Format]:
    fmt = format_from_spec(spec)
    if fmt is None:
        return None
    if not getattr(fmt, "deployable", False):
        raise MaseError(f"{_where(graph, node)} {role}: {_format_reason(fmt)}")
    return fmt


def _check_linear(graph: MaseGraph, node: fx.Node) -> bool:
    """True: an int8 linear; False: a float32 one. MaseError naming the node if neither."""
    if node.target is not compressed_linear:
        return False
    kw = node.kwargs
    act = kw.get("act_prune")
    if act is not None and act[0] > 0:
        raise MaseError(f"{_where(graph, node)}: activation pruning (sparsity {act[0]}, {act[1]}, {act[2]}) is a "
                        "TopK per token in ONNX, with no fast kernel; remove it to deploy (weight pruning is fine)")
    fin = _deployable_format(graph, node, kw.get("data_in"), "data_in")
    fw = _deployable_format(graph, node, kw.get("weight_q"), "weight")
    for role, key in (("bias", "bias_q"), ("data_out", "data_out")):
        fmt = format_from_spec(kw.get(key))
        if fmt is not None:
            raise MaseError(f"{_where(graph, node)} {role}: quantising a linear's {role} ({fmt.to_dict()}) has no "
                            "integer kernel in ONNX Runtime; the deployable scheme keeps it float32")
    if (fin is None) != (fw is None):
        which = "input (data_in)" if fin is None else "weight"
        raise MaseError(f"{_where(graph, node)}: only the {'weight' if fin is None else 'input'} is int8; ONNX "
                        f"Runtime's integer matmul needs both: quantise its {which} with dynamic_int8 too")
    return fin is not None


def _check_node(graph: MaseGraph, node: fx.Node, plan: DeployPlan) -> None:
    kw = node.kwargs
    # a shared input node (quantize_prune_input) is judged through the linears reading it, which carry
    # its settings and are named in the error
    if node.target in _LINEAR_TARGETS:
        if _check_linear(graph, node):
            plan.linears.append(node)
        else:
            plan.float_linears.append(node.name)
    elif node.target is compressed_embedding:
        if _deployable_format(graph, node, kw.get("weight_q"), "weight") is not None:
            plan.embeddings.append(node)
        if kw.get("data_out") is not None:
            raise MaseError(f"{_where(graph, node)} data_out: a quantised embedding output has no integer kernel "
                            "in ONNX Runtime; the deployable scheme quantises only the table")
    elif node.target is compressed_sdpa and (kw.get("data_in") is not None or kw.get("data_out") is not None):
        raise MaseError(f"{_where(graph, node)}: quantised attention matmuls have no integer kernel in ONNX "
                        "Runtime's CPU provider; the deployable scheme keeps attention float32 (quantise linears "
                        "and embeddings only)")


def check_deployable(graph: MaseGraph) -> DeployPlan:
    """The plan of a deployable export of ``graph``, or one MaseError naming the first node that ONNX
    Runtime cannot run as a fast model and why (module docstring)."""
    plan = DeployPlan()
    for node in graph.nodes:
        if node.op == "call_function":
            _check_node(graph, node, plan)
    if not plan.linears and not plan.embeddings:
        raise MaseError("the graph has no dynamic_int8 linear or embedding: there is nothing to deploy as int8 "
                        "(quantise it with the dynamic_int8 format, e.g. examples/deploy_minilm.toml)")
    for sdpa in [n for n in graph.nodes if n.op == "call_function" and n.target in _SDPA_TARGETS]:
        group = _attention_group(graph, sdpa, set(plan.linears))
        if group is None:
            log.warning("deployable export: %s is not fused into QAttention (its query/key/value are not three "
                        "int8 linears of one input, or it is causal, scaled or masked otherwise); its linears "
                        "become DynamicQuantizeMatMul and the attention stays in float ops", _where(graph, sdpa))
            continue
        plan.attentions.append(group)
        for lin in (group.q, group.k, group.v):
            plan.linears.remove(lin)
    return plan


# ------------------------------------------------------------------------------------ attention matching


def _back_to_linear(node: Any) -> tuple[Optional[fx.Node], list[fx.Node]]:
    chain = []
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in _SHAPE_OPS:
        chain.append(node)
        node = node.args[0]
    ok = isinstance(node, fx.Node) and node.op == "call_function" and node.target in _LINEAR_TARGETS
    return (node if ok else None), chain


def _heads_layout(chain: list[fx.Node]) -> Optional[int]:
    """The head size if ``chain`` (from the attention back to the linear) is ``view/reshape(x, [b, s, h, d])``
    then ``transpose(1, 2)`` (or ``permute(0, 2, 1, 3)``), with nothing else; else None."""
    if len(chain) != 2:
        return None
    move, split = chain
    if split.target not in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        return None
    shape = split.args[1]
    if len(shape) != 4 or not isinstance(shape[3], int):
        return None
    swaps = (move.target is aten.transpose.int and sorted(move.args[1:3]) == [1, 2]) or \
        (move.target is aten.permute.default and list(move.args[1]) == [0, 2, 1, 3])
    return int(shape[3]) if swaps else None


def _merged_output(sdpa: fx.Node) -> Optional[fx.Node]:
    """The node after ``sdpa`` whose output is the heads merged back, ``[b, s, h * d]``: a chain of one-user
    shape ops with exactly one swap of dims 1 and 2, ending in a 3-D view/reshape."""
    node, swaps = sdpa, 0
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op != "call_function" or user.target not in _SHAPE_OPS:
            break
        if user.target is aten.transpose.int:
            if sorted(user.args[1:3]) != [1, 2]:
                return None
            swaps += 1
        elif user.target is aten.permute.default:
            if list(user.args[1]) != [0, 2, 1, 3]:
                return None
            swaps += 1
        elif user.target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            shape = user.args[1]
            if len(shape) == 3:
                return user if swaps == 1 else None
            if len(shape) != 4 or swaps != 0:
                return None  # only the no-op [b, h, s, d] reshape may come before the swap
        node = user
    return None


def _mask_placeholder(graph: MaseGraph, mask: Any) -> tuple[bool, Optional[fx.Node]]:
    """(ok, the attention_mask placeholder) if ``mask`` is None or derives from the attention_mask input alone."""
    if mask is None:
        return True, None
    seen, stack, found = set(), [mask], None
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            if n.name != "attention_mask":
                return False, None
            found = n
            continue
        if n.op == "call_function" and getattr(n.target, "__name__", "") == "sym_size.int":
            continue  # a size, not data
        stack.extend(a for a in n.all_input_nodes)
    return found is not None, found


def _attention_group(graph: MaseGraph, sdpa: fx.Node, int8_linears: set) -> Optional[_AttentionGroup]:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    args = dict(zip(names, sdpa.args))
    args.update({k: v for k, v in sdpa.kwargs.items() if k in names or k in ("scale", "enable_gqa")})
    if args.get("is_causal") or sdpa.kwargs.get("enable_gqa"):
        return None
    found = [_back_to_linear(args[k]) for k in ("query", "key", "value")]
    lins = [f[0] for f in found]
    if any(lin is None or lin not in int8_linears for lin in lins) or len(set(lins)) != 3:
        return None
    if len({lin.args[0] for lin in lins}) != 1 or len({(lin.kwargs.get("data_in"), lin.kwargs.get("weight_q"))
                                                       for lin in lins}) != 1:
        return None
    dims = {_heads_layout(chain) for _, chain in found}
    if len(dims) != 1 or None in dims:
        return None
    d = dims.pop()
    outs = {int(get_tensor(graph, lin.args[1]).shape[0]) for lin in lins}
    if len(outs) != 1 or outs.copy().pop() % d:
        return None
    scale = args.get("scale")
    if scale is not None and not math.isclose(float(scale), 1.0 / math.sqrt(d), rel_tol=1e-6):
        return None
    if any(len(lin.users) != 1 for lin in lins):
        return None
    ok, mask = _mask_placeholder(graph, args.get("attn_mask"))
    out = _merged_output(sdpa)
    if not ok or out is None:
        return None
    return _AttentionGroup(sdpa, *lins, out=out, num_heads=outs.pop() // d, mask=mask)


# ------------------------------------------------------------------------------------ runtime ops (torch side)
# Each is the exact arithmetic of the ONNX Runtime kernel it becomes; the rewritten graph runs them in
# torch for the rewrite's own check, and the exporter translates them (:func:`_translations`).


@torch.library.custom_op("mase_deploy::dq_matmul", mutates_args=())
def _dq_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor,
               bias: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeMatMul: ``codes`` int8 [K, N], per-column ``scale`` [N], ``bias`` [N]."""
    centred, xs, _ = dynamic_quantize_linear(x)
    return torch.matmul(centred, codes.to(torch.float32)) * (xs * scale) + bias


@_dq_matmul.register_fake
def _(x, codes, scale, zp, bias):
    return x.new_empty((*x.shape[:-1], codes.shape[1]))


@torch.library.custom_op("mase_deploy::qattention", mutates_args=())
def _qattention(x: torch.Tensor, mask: Optional[torch.Tensor], codes: torch.Tensor, scale: torch.Tensor,
                zp: torch.Tensor, bias: torch.Tensor, num_heads: int) -> torch.Tensor:
    """DynamicQuantizeLinear + QAttention: q/k/v from one integer GEMM (``codes`` [K, 3N]), float32
    attention with ``mask`` (``[batch, seq]``, 1 = attend) over the keys; output ``[batch, seq, N]``."""
    centred, xs, _ = dynamic_quantize_linear(x)
    qkv = torch.matmul(centred, codes.to(torch.float32)) * (xs * scale) + bias
    b, s, n3 = qkv.shape
    d = n3 // 3 // num_heads
    q, k, v = (t.reshape(b, s, num_heads, d).transpose(1, 2) for t in qkv.split(n3 // 3, dim=-1))
    keep = None if mask is None else (mask != 0)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return out.transpose(1, 2).reshape(b, s, n3 // 3)


@_qattention.register_fake
def _(x, mask, codes, scale, zp, bias, num_heads):
    return x.new_empty((*x.shape[:-1], codes.shape[1] // 3))


@torch.library.custom_op("mase_deploy::int8_gather", mutates_args=())
def _int8_gather(codes: torch.Tensor, scales: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows of an int8 table times their float32 scales (``scales`` [V, 1])."""
    return codes[indices].to(torch.float32) * scales[indices]


@_int8_gather.register_fake
def _(codes, scales, indices):
    return torch.empty((*indices.shape, codes.shape[1]), dtype=torch.float32, device=codes.device)


@torch.library.custom_op("mase_deploy::skip_layer_norm", mutates_args=())
def _skip_layer_norm(x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """SkipLayerNormalization: ``layer_norm(x + skip)`` over the last dimension (``skip`` may be ``[1, s, h]``)."""
    return F.layer_norm(x + skip, (x.shape[-1],), gamma, beta, eps)


@_skip_layer_norm.register_fake
def _(x, skip, gamma, beta, eps):
    return torch.empty_like(x)


def _param(name: str, type_str: str, optional: bool = False):
    from onnx.defs import OpSchema

    option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name, type_str, "", param_option=option)


def _register_contrib_schemas() -> None:
    """ONNX schemas (ONNX Runtime's signatures: inputs, outputs, types; no shape inference) of the
    com.microsoft ops the translations emit, so that the exporter can build their nodes; ONNX Runtime
    has the kernels. Registered once per process, only where onnx has none."""
    import onnx.defs as defs
    from onnx.defs import OpSchema

    fl, i8, i32 = ["tensor(float)"], ["tensor(int8)", "tensor(uint8)"], ["tensor(int32)"]
    schemas = [
        OpSchema("DynamicQuantizeMatMul", "com.microsoft", 1,
                 inputs=[_param("A", "T1"), _param("B", "T2"), _param("b_scale", "T1"),
                         _param("b_zero_point", "T2", True), _param("bias", "T1", True)],
                 outputs=[_param("Y", "T1")], type_constraints=[("T1", fl, ""), ("T2", i8, "")]),
        OpSchema("QAttention", "com.microsoft", 1,
                 inputs=[_param("input", "T1"), _param("weight", "T2"), _param("bias", "T3"),
                         _param("input_scale", "T3"), _param("weight_scale", "T3"), _param("mask_index", "T4", True),
                         _param("input_zero_point", "T1", True), _param("weight_zero_point", "T2", True),
                         _param("past", "T3", True)],
                 outputs=[_param("output", "T3")],  # (ORT's optional "present": a second output would be built)
                 type_constraints=[("T1", i8, ""), ("T2", i8, ""), ("T3", fl, ""), ("T4", i32, "")],
                 attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "", required=True),
                             OpSchema.Attribute("unidirectional", OpSchema.AttrType.INT, "", required=False),
                             OpSchema.Attribute("do_rotary", OpSchema.AttrType.INT, "", required=False),
                             OpSchema.Attribute("past_present_share_buffer", OpSchema.AttrType.INT, "", required=False),
                             OpSchema.Attribute("mask_filter_value", OpSchema.AttrType.FLOAT, "", required=False),
                             OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "", required=False)]),
        OpSchema("SkipLayerNormalization", "com.microsoft", 1,
                 inputs=[_param("input", "T"), _param("skip", "T"), _param("gamma", "T"), _param("beta", "T", True),
                         _param("bias", "T", True)],
                 outputs=[_param("output", "T")], type_constraints=[("T", fl + ["tensor(float16)"], "")],
                 attributes=[OpSchema.Attribute("epsilon", OpSchema.AttrType.FLOAT, "", required=False)]),
    ]
    for schema in schemas:
        try:
            defs.get_schema(schema.name, 1, schema.domain)
        except defs.SchemaError:
            defs.register_schema(schema)


def _translations() -> dict:
    from onnxscript import FLOAT, INT32
    from onnxscript import opset21 as op
    from onnxscript.values import Opset

    _register_contrib_schemas()
    ms = Opset("com.microsoft", 1)

    def dq_matmul(x, codes, scale, zp, bias):
        return ms.DynamicQuantizeMatMul(x, codes, scale, zp, bias)

    def qattention(x, mask, codes, scale, zp, bias, num_heads: int):
        xq, xs, xz = op.DynamicQuantizeLinear(x)
        m = None if mask is None else op.Cast(mask, to=INT32.dtype)
        return ms.QAttention(xq, codes, bias, xs, scale, m, xz, zp, num_heads=num_heads)

    def int8_gather(codes, scales, indices):
        return op.Mul(op.Cast(op.Gather(codes, indices), to=FLOAT.dtype), op.Gather(scales, indices))

    def skip_layer_norm(x, skip, gamma, beta, eps: float):
        return ms.SkipLayerNormalization(x, skip, gamma, beta, epsilon=eps)

    return {torch.ops.mase_deploy.skip_layer_norm.default: skip_layer_norm,
            torch.ops.mase_deploy.dq_matmul.default: dq_matmul,
            torch.ops.mase_deploy.qattention.default: qattention,
            torch.ops.mase_deploy.int8_gather.default: int8_gather}


# ------------------------------------------------------------------------------------ graph rewrite


class _Consts:
    """Registers constant buffers (the ONNX initializers) on the copied module, named after their node."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm

    def add(self, before: fx.Node, name: str, value: torch.Tensor) -> fx.Node:
        key = "deploy_" + name.replace(".", "_")
        self.gm.register_buffer(key, value.contiguous())
        with self.gm.graph.inserting_before(before):
            return self.gm.graph.get_attr(key)


def _int8_weight(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [out, in], scales float32 [out]) of an int8 linear node, pruned weights as code 0."""
    fmt = format_from_spec(node.kwargs["weight_q"])
    w = operator.attrgetter(node.args[1].target)(gm)
    codes, scale = fmt.weight_codes(w, 0)
    mask_node = linear_mask_node(node)
    if mask_node is not None:
        codes = codes * operator.attrgetter(mask_node.target)(gm)
    return codes.to(torch.int8), scale.reshape(-1).to(torch.float32)


def _linear_bias(gm: fx.GraphModule, node: fx.Node, n: int) -> torch.Tensor:
    b = node.args[2] if len(node.args) > 2 else None
    if b is None:
        return torch.zeros(n, dtype=torch.float32)
    return operator.attrgetter(b.target)(gm).detach().to(torch.float32)


def _rewrite_linear(gm: fx.GraphModule, consts: _Consts, node: fx.Node) -> None:
    codes, scale = _int8_weight(gm, node)
    args = [consts.add(node, f"{node.name}.weight_int8", codes.t()), consts.add(node, f"{node.name}.weight_scale", scale),
            consts.add(node, f"{node.name}.weight_zero_point", torch.zeros_like(codes[:, 0])),
            consts.add(node, f"{node.name}.bias", _linear_bias(gm, node, codes.shape[0]))]
    node.target = torch.ops.mase_deploy.dq_matmul.default
    node.args, node.kwargs = (node.args[0], *args), {}


def _rewrite_attention(gm: fx.GraphModule, consts: _Consts, group: _AttentionGroup) -> None:
    parts = [_int8_weight(gm, lin) for lin in (group.q, group.k, group.v)]
    codes = torch.cat([c for c, _ in parts], dim=0).t()  # [K, 3N]: q, k, v side by side
    scale = torch.cat([s for _, s in parts])
    bias = torch.cat([_linear_bias(gm, lin, c.shape[0]) for lin, (c, _) in zip((group.q, group.k, group.v), parts)])
    at, name = group.out, group.sdpa.name
    args = [consts.add(at, f"{name}.qkv_weight_int8", codes), consts.add(at, f"{name}.qkv_weight_scale", scale),
            consts.add(at, f"{name}.qkv_weight_zero_point", torch.zeros(codes.shape[1], dtype=torch.int8)),
            consts.add(at, f"{name}.qkv_bias", bias)]
    with gm.graph.inserting_before(at):
        fused = gm.graph.call_function(torch.ops.mase_deploy.qattention.default,
                                       (group.q.args[0], group.mask, *args, group.num_heads))
    fused.meta.update({k: v for k, v in at.meta.items() if k in ("val", "tensor_meta")})
    at.replace_all_uses_with(fused)


def _rewrite_embedding(gm: fx.GraphModule, consts: _Consts, node: fx.Node) -> None:
    fmt = format_from_spec(node.kwargs["weight_q"])
    table = operator.attrgetter(node.args[0].target)(gm)
    codes, scale = fmt.weight_codes(table, 0)
    args = [consts.add(node, f"{node.name}.weight_int8", codes.to(torch.int8)),
            consts.add(node, f"{node.name}.weight_scale", scale.reshape(-1, 1).to(torch.float32))]
    node.target = torch.ops.mase_deploy.int8_gather.default
    node.args, node.kwargs = (*args, node.args[1]), {}


def _fold_float_linears(gm: fx.GraphModule, consts: _Consts) -> None:
    """Float32 linears that still carry a pruning mask: the masked weight as a constant, a plain linear."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is compressed_linear:
            w = operator.attrgetter(node.args[1].target)(gm).detach()
            mask_node = linear_mask_node(node)
            if mask_node is not None:
                w = w * operator.attrgetter(mask_node.target)(gm)
            wnode = consts.add(node, f"{node.name}.weight", w.to(torch.float32))
            bias = node.args[2] if len(node.args) > 2 else None
            node.target, node.args, node.kwargs = aten.linear.default, (node.args[0], wnode, bias), {}


def _shape(node: Any) -> Optional[tuple]:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _skip_pair(add: fx.Node) -> Optional[tuple[fx.Node, fx.Node]]:
    """``(input, skip)`` of a residual ``add(a, b)`` that SkipLayerNormalization can take: both tensors, the
    input ``[b, s, h]`` and the skip the same shape or ``[1, s, h]``; None otherwise."""
    if len(add.args) != 2 or add.kwargs or not all(isinstance(a, fx.Node) for a in add.args):
        return None
    a, b = add.args
    sa, sb = _shape(a), _shape(b)
    if sa is None or sb is None or len(sa) != 3 or len(sb) != 3:
        return None
    for x, skip, sx, ss in ((a, b, sa, sb), (b, a, sb, sa)):
        if ss == sx or (ss[0] == 1 and ss[1:] == sx[1:] and sx[0] != 1):
            return x, skip
    return None


def _fuse_skip_layer_norms(gm: fx.GraphModule) -> int:
    """``layer_norm(add(x, skip))`` over the last dimension -> SkipLayerNormalization (when the sum has no
    other user): what ONNX Runtime's transformer optimizer fuses, done here where shapes are known."""
    fused = 0
    for ln in list(gm.graph.nodes):
        if ln.op != "call_function" or ln.target is not aten.layer_norm.default or len(ln.args) < 4:
            continue
        add, shape, gamma, beta = ln.args[:4]
        eps = ln.args[4] if len(ln.args) > 4 else 1e-5
        if not (isinstance(add, fx.Node) and add.target is aten.add.Tensor and len(add.users) == 1
                and gamma is not None and beta is not None and len(shape) == 1):
            continue
        pair = _skip_pair(add)
        if pair is None:
            continue
        with gm.graph.inserting_before(ln):
            node = gm.graph.call_function(torch.ops.mase_deploy.skip_layer_norm.default, (*pair, gamma, beta, float(eps)))
        node.meta.update({k: v for k, v in ln.meta.items() if k in ("val", "tensor_meta")})
        ln.replace_all_uses_with(node)
        fused += 1
    return fused


def _drop_unused(gm: fx.GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            if leaf in mod._parameters:
                delattr(mod, leaf)
            elif leaf in mod._buffers:
                del mod._buffers[leaf]


def rewrite(graph: MaseGraph, plan: DeployPlan) -> fx.GraphModule:
    """A copy of the graph's module with the plan's nodes turned into the deployable kernels' ops."""
    gm = copy.deepcopy(graph.gm)
    by_name = {n.name: n for n in gm.graph.nodes}

    def mine(node: fx.Node) -> fx.Node:
        return by_name[node.name]

    consts = _Consts(gm)
    for group in plan.attentions:
        _rewrite_attention(gm, consts, _AttentionGroup(
            mine(group.sdpa), mine(group.q), mine(group.k), mine(group.v), mine(group.out), group.num_heads,
            None if group.mask is None else mine(group.mask)))
    for node in plan.linears:
        _rewrite_linear(gm, consts, mine(node))
    for node in plan.embeddings:
        _rewrite_embedding(gm, consts, mine(node))
    gm.graph.eliminate_dead_code()
    _fold_float_linears(gm, consts)
    _fuse_skip_layer_norms(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    _drop_unused(gm)
    return gm


# ------------------------------------------------------------------------------------ export, fuse, check


def check_batches(graph: MaseGraph, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Seeded random batches for the export's check: one unpadded row of 24 tokens, and 4 rows of 8-24
    tokens right-padded to 24 with the model's pad id."""
    from mase_lite.models import random_inputs

    hf = graph.model_info.get("hf_config") or {}
    one = random_inputs(graph.input_names, hf, 1, 24, seed)
    four = random_inputs(graph.input_names, hf, 4, 24, seed + 1)
    pad = hf.get("pad_token_id")
    for row, n in enumerate((24, 17, 8, 12)):
        for name, t in four.items():
            if name == "input_ids":
                t[row, n:] = pad if isinstance(pad, int) else 0
            elif "mask" in name:
                t[row, n:] = 0
    return [one, four]


def compare(graph: MaseGraph, session: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Labels and logits of ONNX Runtime ``session`` against the simulation (``graph``) on ``batches``,
    each fed as it is to both: rows, agreeing labels, max |logit difference|, max |logit|, and per row the
    simulated label, its margin (top two logits) and whether the runtime disagrees."""
    import numpy as np

    graph.eval()
    sims, orts = [], []
    with torch.inference_mode(), frozen_weights():  # weights are quantised once, not per batch
        for batch in batches:
            inputs = {n: batch[n] for n in graph.input_names}
            sims.append(graph(**inputs).logits.float().numpy())
            orts.append(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
    sim, ort = np.concatenate(sims), np.concatenate(orts)
    top2 = np.sort(sim, axis=-1)[:, -2:] if sim.shape[-1] > 1 else np.zeros((len(sim), 2))
    labels, diff = sim.argmax(-1), np.abs(sim - ort)
    disagree = labels != ort.argmax(-1)
    return {"rows": len(sim), "labels_agree": int((~disagree).sum()),
            "max_logit_diff": float(diff.max()), "max_abs_logit": float(np.abs(sim).max()),
            "median_row_diff": float(np.median(diff.max(-1))),
            "labels": labels.tolist(), "margins": (top2[:, 1] - top2[:, 0]).tolist(), "disagree": disagree.tolist()}


def _within(result: dict[str, Any], atol: float, rtol: float) -> bool:
    tol = atol + rtol * result["max_abs_logit"]
    clear = [d for d, m in zip(result["disagree"], result["margins"]) if m > 2 * tol]
    return result["max_logit_diff"] <= tol and not any(clear)


def _torch_export(gm: fx.GraphModule, graph: MaseGraph, path: Path, opset: int) -> None:
    from mase_lite.models import random_inputs

    wrapper = _Logits(gm, list(graph.input_names)).eval()
    inputs = random_inputs(graph.input_names, graph.model_info.get("hf_config") or {})
    example = tuple(inputs[n] for n in graph.input_names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = (tuple({0: batch, 1: seq} for _ in example),)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset, dynamic_shapes=dyn,
                                    input_names=list(graph.input_names), output_names=["logits"],
                                    custom_translation_table=_translations(), verbose=False)
    program.save(str(path))


def _fuse(src: Path, dst: Path, graph: MaseGraph) -> dict[str, int]:
    """ONNX Runtime's transformer fusions of the float32 remainder (skip layer norm, GELU, ...)."""
    import onnx
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    hf = graph.model_info.get("hf_config") or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        options = FusionOptions("bert")
        # attention and skip layer norm are fused already (QAttention, SkipLayerNormalization); the
        # symbolic shape inference the optimizer would run does not know the com.microsoft int8 ops
        options.enable_attention = options.enable_skip_layer_norm = options.enable_embed_layer_norm = False
        options.enable_bias_skip_layer_norm = options.enable_shape_inference = False
        model = optimizer.optimize_model(str(src), model_type="bert", opt_level=0, use_gpu=False,
                                         num_heads=int(hf.get("num_attention_heads") or 0),
                                         hidden_size=int(hf.get("hidden_size") or 0), optimization_options=options)
    model.save_model_to_file(str(dst))
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    onnx.checker.check_model(str(dst))
    return fused


def _self_check(graph: MaseGraph, gm: fx.GraphModule, batches: list[dict[str, torch.Tensor]]) -> None:
    """The rewritten module (the kernels' arithmetic in torch) against the graph: catches a fused
    attention whose mask or layout is not what the graph computes, before any ONNX work."""
    wrapper = _Logits(gm, list(graph.input_names)).eval()
    graph.eval()
    with torch.inference_mode(), frozen_weights():
        for batch in batches:
            ref = graph(**{n: batch[n] for n in graph.input_names}).logits.float()
            out = wrapper(*(batch[n] for n in graph.input_names)).float()
            diff = float((ref - out).abs().max())
            if diff > LOGIT_ATOL + LOGIT_RTOL * float(ref.abs().max()):
                raise MaseError(f"deployable export: the rewritten graph differs from the simulation by {diff:.3g} in "
                                "the logits before ONNX export (an attention whose mask or head layout is not the "
                                "padding-mask QAttention computes?); nothing was written")


#: The session option that makes ONNX Runtime's u8 x s8 kernels exact on x86 CPUs without VNNI
#: (u8 x u8 kernels, slower), needed there by 8-bit weights (``reduce_range = false``).
PRECISE_U8S8 = {"session.x64quantprecision": "1"}


def cpu_has_vnni() -> bool:
    """Whether this CPU has AVX512-VNNI or AVX-VNNI (ORT's u8 x s8 kernels then never saturate)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: assume a VNNI or ARM CPU (exactness is checked at export anyway)
    return "avx512_vnni" in flags or "avx_vnni" in flags or "avx2" not in flags


def session_config(plan: DeployPlan) -> dict[str, str]:
    """Session options the model needs to agree with the simulation on this CPU."""
    wide = any(format_from_spec(n.kwargs["weight_q"]).qmax > 64 for n in plan.linears) or any(
        format_from_spec(g.q.kwargs["weight_q"]).qmax > 64 for g in plan.attentions)
    return dict(PRECISE_U8S8) if wide and not cpu_has_vnni() else {}


def deploy_session(path: str | Path, num_threads: int = 1, config: Optional[dict[str, str]] = None):
    """An ONNX Runtime CPU session for a deployable model: all graph optimisations, ``num_threads``
    intra-op threads, one inter-op thread, and the session options its ``onnx.json`` records
    (``session_config``; or ``config``)."""
    import onnxruntime as ort

    path = Path(path)
    if config is None:
        meta = path.parent / "onnx.json"
        config = json.loads(meta.read_text()).get("session_config", {}) if meta.exists() else {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_deployable(graph: MaseGraph, out_dir: str | Path, *, opset: int = OPSET,
                      batches: Optional[list[dict[str, torch.Tensor]]] = None, atol: float = LOGIT_ATOL,
                      rtol: float = LOGIT_RTOL) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` and ``onnx.json`` (module docstring); returns the report.

    ``batches``: what the check feeds both the simulation and ONNX Runtime (default
    :func:`check_batches`). A graph that cannot be made fast, or a model that fails the check, is one
    MaseError and leaves ``out_dir`` as it was."""
    from .compact import export_dir
    from .onnx import require_deploy_extra

    require_deploy_extra()
    plan = check_deployable(graph)
    out = export_dir(out_dir)
    graph = graph.copy()
    graph.eval()
    batches = batches or check_batches(graph)
    t0 = time.perf_counter()
    gm = rewrite(graph, plan)
    _self_check(graph, gm, batches)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".deploy-", dir=out.parent))
    try:
        _torch_export(gm, graph, work / "raw.onnx", opset)
        fused = _fuse(work / "raw.onnx", work / ONNX_FILE, graph)
        config = session_config(plan)
        result = compare(graph, deploy_session(work / ONNX_FILE, 1, config), batches)
        if not _within(result, atol, rtol):  # clear labels must agree; logits within the tolerance
            raise MaseError(f"deployable export: ONNX Runtime disagrees with the simulation ({result['labels_agree']}/"
                            f"{result['rows']} labels agree, max |logit difference| {result['max_logit_diff']:.3g}, "
                            f"allowed {atol} + {rtol} x {result['max_abs_logit']:.3g}); nothing was written")
        report = _report(out, work, plan, fused, config, result, opset, time.perf_counter() - t0, graph)
        out.mkdir(parents=True, exist_ok=True)
        os.replace(work / ONNX_FILE, out / ONNX_FILE)
        (out / "onnx.json").write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("deployable onnx export: %s (%d bytes, %.1f s)", out / ONNX_FILE, report["file_bytes"], report["export_s"])
    return report


def _report(out: Path, work: Path, plan: DeployPlan, fused: dict[str, int], config: dict[str, str],
            result: dict[str, Any], opset: int, seconds: float, graph: MaseGraph) -> dict[str, Any]:
    return {"format": "onnx", "kind": KIND, "path": str(out / ONNX_FILE), "opset": opset, "compressed": True,
            "compressed_nodes": [n.name for n in plan.linears] + [g.sdpa.name for g in plan.attentions]
            + [n.name for n in plan.embeddings],
            "plan": plan.summary(), "ort_fusions": fused, "ops": op_histogram(work / ONNX_FILE),
            "file_bytes": (work / ONNX_FILE).stat().st_size, "input_names": list(graph.input_names),
            "output_names": ["logits"], "session_config": config,
            "check": {**{k: v for k, v in result.items() if k not in ("labels", "margins", "disagree")},
                      "atol": LOGIT_ATOL, "rtol": LOGIT_RTOL},
            "export_s": round(seconds, 2)}
