"""ONNX export of (compressed) graphs for ONNX Runtime: QDQ nodes with power-of-two scales.

This is the *simulation* export (``onnx.json``: ``kind = "simulation"``): faithful, not fast (see
the README's speed table). ``export_onnx(graph, out_dir, deployable=True)`` writes the fast model of
the ``dynamic_int8`` scheme instead (:mod:`passes.export.deployable`, ``kind = "deployable"``).

``export_onnx(graph, out_dir)`` writes ``model.onnx`` (inputs as the graph's, e.g. ``input_ids``,
``attention_mask``, int64, dynamic batch and sequence; output ``logits``) and ``onnx.json`` (what was
exported, the opset, the refusal-free node list). Each compressed node becomes:

* **linear** (``compressed_linear``): input ``QuantizeLinear -> DequantizeLinear`` with scale
  ``2^-f`` and zero point 0 (int8 for widths <= 8, int16 up to 16; a ``Clip`` to
  ``[-2^(w-1), 2^(w-1)-1] 2^-f`` first for widths other than 8 and 16, since QuantizeLinear
  saturates only to the int8/int16 range -- clipping then rounding equals rounding then clipping
  at integer bounds); the weight as an int8/int16 initializer of codes (pruned weights are zero
  codes), transposed, through ``DequantizeLinear``; the bias likewise; ``MatMul`` + ``Add``; the
  output QDQ when ``data_out`` is set.
* **per-token activation pruning** (l1-norm, ``granularity = "token"``, on a quantised input): with
  integer codes ``c`` of a token's ``d`` features, ``key = |c| d + j`` (``j`` the feature index) is
  distinct per feature, and ``TopK(key, d - k)`` keeps the ``d - k`` largest magnitudes with ties
  kept at the *higher* index, i.e. the lower index pruned first -- mase-lite's rule (a plain TopK on
  ``|c|`` would keep the lower index). ``ScatterElements`` turns the indices into the 0/1 mask.
  The keys are float32-exact while ``(2^(w-1) + 1) d <= 2^24``. The masked input is quantised again
  (``q(x mask) = q(x) mask``, exact), so the path ends in a DequantizeLinear and ONNX Runtime can fuse
  ``DQ(x) -> MatMul <- DQ(w)`` into an integer ``MatMulIntegerToFloat`` (int32 accumulation, exact
  under the condition of :mod:`passes.export.integer`); it does so for linears whose input feeds
  one MatMul (not for the shared query/key/value input or the Gemm-fused pooler/classifier).
* **embedding**: ``Gather`` of the int codes, then ``DequantizeLinear``; **attention**: QDQ of query,
  key, value and output around the attention.

Refused with a :class:`~mase_lite.errors.MaseError` naming the node and the field: ``floor = true``
(QuantizeLinear rounds half to even), widths above 16, formats other than ``integer``, random or
``tensor``-granularity activation pruning, activation pruning of an unquantised input.

QuantizeLinear computes ``saturate(round(x / 2^-f))``; ``x / 2^-f`` is exact in float32, and round
is half-to-even as ``torch.round``, so the QDQ values equal the simulation's on identical inputs.
ONNX Runtime's other kernels (LayerNorm, GELU, softmax, matmul blocking) differ from torch's in the
last bits, and a quantiser can turn such a difference into one grid step, so logits agree to a
small tolerance, not bit for bit (tests check labels and the tolerance on IMDb rows).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph

from ..formats import format_from_spec
from ..formats.integer import IntegerFormat, QSpec
from ..transforms.compressed_nodes import SHARED_INPUT_MARK, get_tensor, linear_mask_node
from ..transforms.ops import compressed_embedding, compressed_linear, compressed_sdpa, quantize_prune_input
from ..transforms.sparsity import num_to_prune
from .compact import export_dir

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "onnx_available", "check_exportable", "ort_session", "ONNX_FILE", "OPSET", "export_deployable",
           "check_deployable", "deploy_session"]


def __getattr__(name: str):  # the deployable export's API, re-exported here (imported on first use)
    if name in ("export_deployable", "check_deployable", "deploy_session"):
        from . import deployable

        return getattr(deployable, name)
    raise AttributeError(name)

ONNX_FILE = "model.onnx"
OPSET = 21
MAX_WIDTH = 16


def onnx_available() -> bool:
    """Whether ``onnx``, ``onnxscript`` and ``onnxruntime`` (the ``deploy`` extra) are importable."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def require_deploy_extra() -> None:
    """One MaseError naming the ``deploy`` extra unless :func:`onnx_available`."""
    if not onnx_available():
        raise MaseError("ONNX export needs the deploy extra: pip install 'mase-lite[deploy]' "
                        "(onnx, onnxruntime, onnxscript)")


# ------------------------------------------------------------------------------- custom ops (torch side)

@torch.library.custom_op("mase_onnx::qdq", mutates_args=())
def _qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """QuantizeLinear -> DequantizeLinear (saturating to the zero point's int range)."""
    info = torch.iinfo(zero_point.dtype)
    return torch.clamp(torch.round(x / scale), info.min, info.max) * scale


@_qdq.register_fake
def _(x, scale, zero_point):
    return torch.empty_like(x)


@torch.library.custom_op("mase_onnx::dq", mutates_args=())
def _dq(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """DequantizeLinear: ``codes * scale`` (float32)."""
    return codes.to(torch.float32) * scale


@_dq.register_fake
def _(codes, scale, zero_point):
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


def _translations() -> dict:
    from onnxscript import opset21 as op

    def qdq(x, scale, zero_point):
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero_point), scale, zero_point)

    def dq(codes, scale, zero_point):
        return op.DequantizeLinear(codes, scale, zero_point)

    return {torch.ops.mase_onnx.qdq.default: qdq, torch.ops.mase_onnx.dq.default: dq}


# ------------------------------------------------------------------------------- checks


def _int_format(spec: Any, where: str) -> Optional[QSpec]:
    fmt = format_from_spec(spec)
    if fmt is None:
        return None
    if not isinstance(fmt, IntegerFormat):
        raise MaseError(f"{where}: format {fmt.to_dict()} is not exportable to ONNX; exportable formats: 'integer' "
                        "(power-of-two scales)")
    q = fmt.qspec
    if q.floor:
        raise MaseError(f"{where}: floor = true is not exportable to ONNX (QuantizeLinear rounds half to even); "
                        "use floor = false")
    if q.width > MAX_WIDTH:
        raise MaseError(f"{where}: width {q.width} is not exportable to ONNX; widths 2..{MAX_WIDTH} are "
                        "(int8/int16 QuantizeLinear)")
    return q


def _check_prune(act_prune: Any, data_in: Optional[QSpec], d: int, where: str) -> Optional[int]:
    """The number of features pruned per token, or None; refuses what ONNX cannot express faithfully."""
    if act_prune is None or act_prune[0] <= 0:
        return None
    sparsity, method, granularity = act_prune
    if method != "l1-norm" or granularity != "token":
        raise MaseError(f"{where}: activation pruning method = {method!r}, granularity = {granularity!r} is not "
                        "exportable to ONNX; exportable: method = 'l1-norm', granularity = 'token'")
    if data_in is None:
        raise MaseError(f"{where}: activation pruning of an unquantised input is not exportable to ONNX "
                        "(the tie rule needs integer codes); quantise the node's input (data_in_width)")
    if ((1 << (data_in.width - 1)) + 1) * d > (1 << 24):
        raise MaseError(f"{where}: {d} features of {data_in.width} bits are too many for exact float32 TopK keys")
    return num_to_prune(sparsity, d)


def check_exportable(graph: MaseGraph) -> list[str]:
    """Raise a MaseError naming the first node (and field) ONNX export cannot express; returns the
    names of the compressed nodes."""
    names = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        kw = node.kwargs
        where = f"node {node.name} ({graph.meta(node).module_path or ''})"
        if node.target is compressed_linear:
            din = _int_format(kw.get("data_in"), f"{where} data_in")
            _int_format(kw.get("weight_q"), f"{where} weight")
            _int_format(kw.get("bias_q"), f"{where} bias")
            _int_format(kw.get("data_out"), f"{where} data_out")
            d = int(get_tensor(graph, node.args[1]).shape[1])
            _check_prune(kw.get("act_prune"), din, d, f"{where}")
            names.append(node.name)
        elif node.target is quantize_prune_input:
            din = _int_format(kw.get("data_in"), f"{where} data_in")
            users = [u for u in node.users if u.target is compressed_linear]
            d = int(get_tensor(graph, users[0].args[1]).shape[1]) if users else 0
            _check_prune(kw.get("act_prune"), din, d, where)
        elif node.target is compressed_embedding:
            _int_format(kw.get("weight_q"), f"{where} weight")
            _int_format(kw.get("data_out"), f"{where} data_out")
            names.append(node.name)
        elif node.target is compressed_sdpa:
            _int_format(kw.get("data_in"), f"{where} data_in")
            _int_format(kw.get("data_out"), f"{where} data_out")
            names.append(node.name)
    return names


# ------------------------------------------------------------------------------- runtime functions


def _qparams(q: QSpec) -> tuple[float, torch.dtype, bool]:
    """(scale, zero-point dtype, needs a clip) of an integer format."""
    zdt = torch.int8 if q.width <= 8 else torch.int16
    return 2.0 ** -q.frac_width, zdt, q.width not in (8, 16)


def onnx_qdq(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, lo: Optional[torch.Tensor] = None,
             hi: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Clip (when given) then QDQ."""
    if lo is not None:
        x = torch.clamp(x, lo, hi)
    return torch.ops.mase_onnx.qdq(x, scale, zp)


def onnx_input_path(x: torch.Tensor, scale=None, zp=None, lo=None, hi=None, *, pruned: Optional[int] = None,
                    frac_width: int = 0) -> torch.Tensor:
    """QDQ of the input, then per-token pruning of ``pruned`` features (lower index pruned first among ties)."""
    if scale is None or not pruned:
        return x if scale is None else onnx_qdq(x, scale, zp, lo, hi)
    xq = onnx_qdq(x, scale, zp, lo, hi)
    d = x.shape[-1]
    if pruned >= d:
        return xq * 0.0
    key = torch.abs(xq) * float(2 ** frac_width * d) + torch.arange(d, dtype=x.dtype, device=x.device)
    idx = torch.topk(key, d - pruned, dim=-1).indices
    mask = torch.zeros_like(x).scatter(-1, idx, 1.0)
    # q(x * mask) = q(x) * mask (q(0) = 0): quantising the masked input again ends the path in a
    # DequantizeLinear, so ONNX Runtime can fuse DQ -> MatMul <- DQ into an integer matmul
    return onnx_qdq(x * mask, scale, zp, lo, hi)


def onnx_linear(x, w_codes_t, w_scale, w_zp, b_codes=None, b_scale=None, b_zp=None, in_scale=None, in_zp=None,
                in_lo=None, in_hi=None, out_scale=None, out_zp=None, out_lo=None, out_hi=None, *,
                pruned: Optional[int] = None, frac_width: int = 0, prepared: bool = False) -> torch.Tensor:
    """The ONNX form of ``compressed_linear`` (module doc)."""
    if not prepared:
        x = onnx_input_path(x, in_scale, in_zp, in_lo, in_hi, pruned=pruned, frac_width=frac_width)
    w = torch.ops.mase_onnx.dq(w_codes_t, w_scale, w_zp) if w_zp is not None else w_codes_t
    y = torch.matmul(x, w)
    if b_codes is not None:
        y = y + (torch.ops.mase_onnx.dq(b_codes, b_scale, b_zp) if b_zp is not None else b_codes)
    if out_scale is not None:
        y = onnx_qdq(y, out_scale, out_zp, out_lo, out_hi)
    return y


def onnx_embedding(codes, indices, scale=None, zp=None, out_scale=None, out_zp=None, out_lo=None, out_hi=None):
    """Gather of the codes, then DQ (or a float table), then the output QDQ."""
    rows = codes[indices]
    if zp is not None:
        rows = torch.ops.mase_onnx.dq(rows, scale, zp)
    if out_scale is not None:
        rows = onnx_qdq(rows, out_scale, out_zp, out_lo, out_hi)
    return rows


def onnx_sdpa(query, key, value, attn_mask=None, in_scale=None, in_zp=None, in_lo=None, in_hi=None,
              out_scale=None, out_zp=None, out_lo=None, out_hi=None, *, dropout_p: float = 0.0,
              is_causal: bool = False, scale=None, enable_gqa: bool = False):
    if in_scale is not None:
        query, key, value = (onnx_qdq(t, in_scale, in_zp, in_lo, in_hi) for t in (query, key, value))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0,
                                         is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if out_scale is not None:
        out = onnx_qdq(out, out_scale, out_zp, out_lo, out_hi)
    return out


# ------------------------------------------------------------------------------- graph rewrite


class _Builder:
    """Registers constant buffers on the copied GraphModule and makes get_attr nodes for them."""

    def __init__(self, gm: fx.GraphModule):
        self.gm, self.count = gm, 0

    def const(self, node: fx.Node, value: torch.Tensor) -> fx.Node:
        name = f"_onnx_c{self.count}"
        self.count += 1
        self.gm.register_buffer(name, value.contiguous())
        with self.gm.graph.inserting_before(node):
            return self.gm.graph.get_attr(name)

    def qparams(self, node: fx.Node, q: Optional[QSpec]) -> list[Optional[fx.Node]]:
        """[scale, zp, lo, hi] get_attr nodes (lo/hi None unless a clip is needed); all None for no format."""
        if q is None:
            return [None, None, None, None]
        scale, zdt, clip = _qparams(q)
        out = [self.const(node, torch.tensor(scale, dtype=torch.float32)),
               self.const(node, torch.zeros((), dtype=zdt))]
        if clip:
            out += [self.const(node, torch.tensor(q.qmin * scale, dtype=torch.float32)),
                    self.const(node, torch.tensor(q.qmax * scale, dtype=torch.float32))]
        else:
            out += [None, None]
        return out

    def codes(self, node: fx.Node, t: torch.Tensor, q: Optional[QSpec], mask: Optional[torch.Tensor],
              transpose: bool) -> list[Optional[fx.Node]]:
        """[codes (or the float tensor), scale, zp] for a weight-like tensor."""
        t = t.detach()
        if mask is not None:
            t = t * mask
        if q is None:
            return [self.const(node, (t.t() if transpose else t).float()), None, None]
        v = torch.clamp(torch.round(t.double() * q.scale), q.qmin, q.qmax)
        scale, zdt, _ = _qparams(q)
        codes = v.to(zdt)
        if transpose:
            codes = codes.t()
        return [self.const(node, codes), self.const(node, torch.tensor(scale, dtype=torch.float32)),
                self.const(node, torch.zeros((), dtype=zdt))]


def _rewrite_input(gm: fx.GraphModule, b: _Builder, node: fx.Node, kw: dict[str, Any]) -> None:
    """``quantize_prune_input`` -> :func:`onnx_input_path`."""
    din = _int_format(kw.get("data_in"), node.name)
    users = [u for u in node.users if u.target is compressed_linear]
    d = int(operator_get(gm, users[0].args[1]).shape[1]) if users else 0
    pruned = _check_prune(kw.get("act_prune"), din, d, node.name)
    s, z, lo, hi = b.qparams(node, din)
    node.target = onnx_input_path
    node.args = (node.args[0], s, z, lo, hi)
    node.kwargs = {"pruned": pruned, "frac_width": din.frac_width if din else 0}


def _rewrite_linear(gm: fx.GraphModule, b: _Builder, node: fx.Node, kw: dict[str, Any]) -> None:
    """``compressed_linear`` -> :func:`onnx_linear`, the weight and bias stored as integer codes."""
    x, w, bias = node.args[0], node.args[1], node.args[2] if len(node.args) > 2 else None
    mask_node = linear_mask_node(node)
    wt = operator_get(gm, w)
    mask = operator_get(gm, mask_node) if mask_node is not None else None
    din = _int_format(kw.get("data_in"), node.name)
    qw = _int_format(kw.get("weight_q"), node.name)
    qb = _int_format(kw.get("bias_q"), node.name)
    qo = _int_format(kw.get("data_out"), node.name)
    pruned = _check_prune(kw.get("act_prune"), din, int(wt.shape[1]), node.name)
    wc, ws, wz = b.codes(node, wt, qw, mask, transpose=True)
    if bias is not None:
        bc, bs, bz = b.codes(node, operator_get(gm, bias), qb, None, transpose=False)
    else:
        bc = bs = bz = None
    prepared = bool(kw.get("prepared_input"))
    i_s, i_z, i_lo, i_hi = b.qparams(node, None if prepared else din)
    o_s, o_z, o_lo, o_hi = b.qparams(node, qo)
    node.target = onnx_linear
    node.args = (x, wc, ws, wz, bc, bs, bz, i_s, i_z, i_lo, i_hi, o_s, o_z, o_lo, o_hi)
    node.kwargs = {"pruned": None if prepared else pruned, "frac_width": din.frac_width if din else 0,
                   "prepared": prepared}


def _rewrite_embedding(gm: fx.GraphModule, b: _Builder, node: fx.Node, kw: dict[str, Any]) -> None:
    """``compressed_embedding`` -> :func:`onnx_embedding`."""
    weight, indices = node.args[0], node.args[1]
    qw = _int_format(kw.get("weight_q"), node.name)
    qo = _int_format(kw.get("data_out"), node.name)
    wc, ws, wz = b.codes(node, operator_get(gm, weight), qw, None, transpose=False)
    o_s, o_z, o_lo, o_hi = b.qparams(node, qo)
    node.target = onnx_embedding
    node.args = (wc, indices, ws, wz, o_s, o_z, o_lo, o_hi)
    node.kwargs = {}


def _rewrite_sdpa(b: _Builder, node: fx.Node, kw: dict[str, Any]) -> None:
    """``compressed_sdpa`` -> :func:`onnx_sdpa`."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    vals = dict(zip(names, node.args))
    qi = _int_format(kw.pop("data_in", None), node.name)
    qo = _int_format(kw.pop("data_out", None), node.name)
    kw.pop("ste", None)
    i = b.qparams(node, qi)
    o = b.qparams(node, qo)
    node.target = onnx_sdpa
    node.args = (vals["query"], vals["key"], vals["value"], vals.get("attn_mask"), *i, *o)
    node.kwargs = {"is_causal": bool(vals.get("is_causal", False)),
                   **{k: v for k, v in kw.items() if k in ("scale", "enable_gqa")}}


def _drop_unread_weights(gm: fx.GraphModule) -> None:
    """Drop the float weights no node reads any more (they would be exported as initializers)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()):
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            delattr(mod, leaf)
    for name, _ in list(gm.named_buffers()):
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            if leaf in mod._buffers:
                del mod._buffers[leaf]


def _rewrite(graph: MaseGraph) -> fx.GraphModule:
    import copy

    gm = copy.deepcopy(graph.gm)
    b = _Builder(gm)
    g = gm.graph
    for node in list(g.nodes):
        if node.op != "call_function":
            continue
        kw = dict(node.kwargs)
        if node.target is quantize_prune_input:
            _rewrite_input(gm, b, node, kw)
        elif node.target is compressed_linear:
            _rewrite_linear(gm, b, node, kw)
        elif node.target is compressed_embedding:
            _rewrite_embedding(gm, b, node, kw)
        elif node.target is compressed_sdpa:
            _rewrite_sdpa(b, node, kw)
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()
    _drop_unread_weights(gm)
    return gm


def operator_get(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    import operator

    return operator.attrgetter(node.target)(gm)


class _Logits(nn.Module):
    def __init__(self, gm: fx.GraphModule, names: list[str]):
        super().__init__()
        self.gm, self.names = gm, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.gm(**dict(zip(self.names, inputs)))
        return out.logits if hasattr(out, "logits") else out[0]


def export_onnx(graph: MaseGraph, out_dir: str | Path, *, opset: int = OPSET, deployable: bool = False,
                **options: Any) -> dict[str, Any]:
    """Write ``graph`` as ``out_dir/model.onnx`` for ONNX Runtime; returns a report with ``kind``,
    ``compressed`` (False: a plain fp32 model), the file size and the export time.

    ``deployable=False``: this module's faithful QDQ simulation (``kind = "simulation"``: the
    compressed graph's arithmetic in float ops, not a fast model). ``deployable=True``: the
    ``dynamic_int8`` scheme as ONNX Runtime's integer kernels (``kind = "deployable"``;
    :func:`passes.export.deployable.export_deployable`, which takes ``options``), refusing with one
    MaseError naming the node anything that cannot run fast, and checked against the simulation."""
    if deployable:
        from .deployable import export_deployable

        return export_deployable(graph, out_dir, opset=opset, **options)
    if options:
        raise TypeError(f"unexpected options for the simulation ONNX export: {sorted(options)}")
    require_deploy_extra()
    compressed_nodes = check_exportable(graph)
    out = export_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    graph = graph.copy()
    graph.eval()
    gm = _rewrite(graph)
    gm.eval()
    wrapper = _Logits(gm, list(graph.input_names)).eval()
    from mase_lite.models import random_inputs

    inputs = random_inputs(graph.input_names, graph.model_info.get("hf_config") or {})
    example = tuple(inputs[n] for n in graph.input_names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = (tuple({0: batch, 1: seq} for _ in example),)  # forward(*inputs)
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset, dynamic_shapes=dyn,
                                    input_names=list(graph.input_names), output_names=["logits"],
                                    custom_translation_table=_translations(), verbose=False)
    path = out / ONNX_FILE
    program.save(str(path))
    seconds = time.perf_counter() - t0
    ops = op_histogram(path)
    report = {"format": "onnx", "kind": "simulation", "path": str(path), "opset": opset,
              "compressed": bool(compressed_nodes),
              "compressed_nodes": compressed_nodes, "file_bytes": path.stat().st_size, "ops": ops,
              "export_s": round(seconds, 2), "input_names": list(graph.input_names),
              "ort_disabled_optimizers": list(ORT_DISABLED_OPTIMIZERS)}
    (out / "onnx.json").write_text(json.dumps(report, indent=1))
    log.info("onnx export: %s (%d bytes, %.1f s)", path, report["file_bytes"], seconds)
    return report


def op_histogram(path: str | Path) -> dict[str, int]:
    """``{op_type: count}`` of an ONNX file's nodes (with the domain for non-ONNX ops)."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


#: ONNX Runtime graph optimisers to switch off. QDQ propagation (1.32) moves a QuantizeLinear past a
#: Reshape/Transpose (as after a quantised attention input or embedding output) and, with the
#: int8-to-uint8 rewrite, leaves it with a uint8 zero point and an int8 ``output_dtype``: the session
#: then fails to load ("output_dtype INT8 does not match y_zero_point type UINT8"). The QDQ
#: fusions themselves (DQ -> MatMul ...) stay on.
ORT_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def ort_session(path: str | Path, num_threads: int = 1):
    """An ONNX Runtime CPU session with ``num_threads`` intra-op threads and one inter-op thread
    (pinned counts), all graph optimisations but :data:`ORT_DISABLED_OPTIMIZERS`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
