"""Integer inference on the reference path: a quantised linear computed from its integer codes.

For a linear node with integer (fixed-point) formats -- input ``(wx, fx)``, weight ``(ww, fw)``,
optional bias ``(wb, fb)`` -- :func:`integer_linear` takes the integer codes ``X = xq 2^fx`` (after
quantisation and activation pruning, exactly as the simulation), ``W = q(w) mask 2^fw`` and
``B = q(b) 2^fb``, accumulates ``X W^T`` exactly in int64 (int32 would also hold these sums; int64
never overflows for widths up to 16 and any practical ``K``), aligns the bias to the common fraction
``F = max(fx + fw, fb)`` by an integer shift, and rescales once: ``y = float32(acc) * 2^-F`` (then
``data_out`` is applied as in the simulation).

**When it is bit-identical to the fake-quant simulation** (``compressed_linear``, which multiplies the
dequantised float32 tensors): every product ``x_i w_i`` is exact in float32 (``wx + ww <= 26``),
and every partial sum, in whatever order BLAS adds the terms, is an integer multiple of ``2^-F``;
it is exactly representable if its magnitude is below ``2^24`` units. A sufficient condition is::

    M = K_eff * 2^(wx-1) * 2^(ww-1) * 2^(F - fx - fw)  +  2^(wb-1) * 2^(F - fb)  <=  2^24

(``K_eff``: the number of input features that can be non-zero -- ``K`` minus the per-token pruned
count). Then the simulation's float32 result is the exact value, which is what the integer path
computes, and the two are bit-identical. Lab 2 (8-bit, 4 fraction bits everywhere): ``M = K_eff *
2^14 + 2^11 <= 2^24`` holds for ``K_eff <= 1023``; bert-tiny's largest ``K`` is 512.
:func:`exact_condition` evaluates it per node.

**Where it cannot hold** (larger ``K``): the integer path stays exact up to its one final rounding
(``|y_int - y| <= 2^-24 |y|``), while the float32 simulation rounds partial sums; with ``n = K + 1``
terms and ``u = 2^-24``, ``|y_sim - y| <= gamma_n * sum_i |x_i w_i| + |b|`` with ``gamma_n = n u /
(1 - n u)`` (recursive-summation bound; blocked BLAS sums are tighter). :func:`fp32_error_bound`
returns ``gamma_n * (sum |x_i w_i| + |b|) + u |y|``, the bound on ``|y_sim - y_int|``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import fx

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph

from ..formats import format_from_spec
from ..formats.integer import IntegerFormat, QSpec
from ..transforms.compressed_nodes import get_tensor, linear_mask_node
from ..transforms.ops import compressed_linear, quantize_activation, quantize_prune_input
from ..transforms.quantizers import quantize_weight
from ..transforms.sparsity import num_to_prune

log = logging.getLogger(__name__)

__all__ = ["integer_linear", "integer_graph", "exact_condition", "fp32_error_bound", "linear_codes"]

_U = 2.0 ** -24


def _int_spec(spec: Any, what: str) -> Optional[QSpec]:
    fmt = format_from_spec(spec)
    if fmt is None:
        return None
    if not isinstance(fmt, IntegerFormat):
        raise MaseError(f"integer inference needs integer formats; {what} is {fmt.to_dict()}")
    return fmt.qspec


def linear_codes(x, weight, bias=None, weight_mask=None, *, data_in=None, weight_q=None, bias_q=None,
                 act_prune=None, ste="plain", prepared_input=False, act_seed=None, act_calls=None, **_: Any):
    """``(X, W, B, sx, sw, sb)``: the int64 codes of the quantised, pruned input, the masked weight and
    the bias (or None), and their ``QSpec``s -- the integers the simulation's float tensors encode."""
    sx, sw = _int_spec(data_in, "data_in"), _int_spec(weight_q, "weight_q")
    if sx is None or sw is None:
        raise MaseError("integer inference needs both data_in and weight_q formats on the node")
    sb = _int_spec(bias_q, "bias_q") if bias is not None else None
    if bias is not None and sb is None:
        raise MaseError("integer inference needs a bias_q format when the node has a bias")
    with torch.no_grad():
        xq = x if prepared_input else quantize_prune_input(x, data_in, act_prune, ste, act_seed=act_seed,
                                                           act_calls=act_calls)
        wq = quantize_weight(weight, weight_mask, weight_q, cache=False)
        X = (xq.to(torch.float64) * sx.scale).to(torch.int64)
        W = (wq.to(torch.float64) * sw.scale).to(torch.int64)
        B = None if bias is None else (quantize_weight(bias, None, bias_q, cache=False, channel_dim=None)
                                       .to(torch.float64) * sb.scale).to(torch.int64)
    return X, W, B, sx, sw, sb


def integer_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   weight_mask: Optional[torch.Tensor] = None, *, data_out=None, **settings: Any) -> torch.Tensor:
    """A compressed linear from integer codes: exact int64 accumulation, one rescale (module doc).

    Same arguments as :func:`passes.transforms.ops.compressed_linear` (so a graph node can call
    either); needs integer ``data_in``, ``weight_q`` (and ``bias_q`` with a bias). No gradient.
    """
    X, W, B, sx, sw, sb = linear_codes(x, weight, bias, weight_mask, **settings)
    f_prod = sx.frac_width + sw.frac_width
    F = max(f_prod, sb.frac_width if sb is not None else 0)
    acc = torch.matmul(X, W.t())  # exact: int64
    if F > f_prod:
        acc = acc << (F - f_prod)
    if B is not None:
        acc = acc + (B << (F - sb.frac_width))
    y = acc.to(torch.float32) * (2.0 ** -F)  # the one rescale (exact multiply by a power of two)
    return quantize_activation(y.to(x.dtype), data_out)


def exact_condition(K_eff: int, data_in, weight_q, bias_q=None) -> dict[str, Any]:
    """``{"M", "exact"}``: the bound ``M`` of the module doc and whether ``M <= 2^24`` (bit-identity)."""
    sx, sw = _int_spec(data_in, "data_in"), _int_spec(weight_q, "weight_q")
    sb = _int_spec(bias_q, "bias_q")
    f_prod = sx.frac_width + sw.frac_width
    F = max(f_prod, sb.frac_width if sb is not None else 0)
    M = K_eff * (1 << (sx.width - 1)) * (1 << (sw.width - 1)) * (1 << (F - f_prod))
    if sb is not None:
        M += (1 << (sb.width - 1)) * (1 << (F - sb.frac_width))
    return {"M": M, "exact": M <= (1 << 24) and sx.width + sw.width <= 26}


def fp32_error_bound(x: torch.Tensor, weight: torch.Tensor, bias=None, weight_mask=None, **settings: Any) -> torch.Tensor:
    """Per output element, a bound on ``|simulation - integer path|`` when :func:`exact_condition` fails."""
    X, W, B, sx, sw, sb = linear_codes(x, weight, bias, weight_mask, **settings)
    scale = 2.0 ** -(sx.frac_width + sw.frac_width)
    abs_sum = torch.matmul(X.abs().to(torch.float64), W.abs().t().to(torch.float64)) * scale
    exact = torch.matmul(X, W.t()).to(torch.float64) * scale
    if B is not None:
        b = B.abs().to(torch.float64) * 2.0 ** -sb.frac_width
        abs_sum = abs_sum + b
        exact = exact + B.to(torch.float64) * 2.0 ** -sb.frac_width
    n = X.shape[-1] + 1
    gamma = n * _U / (1 - n * _U)
    return gamma * abs_sum + _U * exact.abs()


def _node_k_eff(graph: MaseGraph, node: fx.Node) -> int:
    w = get_tensor(graph, node.args[1])
    k = int(w.shape[1])
    ap = node.kwargs.get("act_prune")
    if ap is not None and ap[0] > 0 and ap[2] == "token":
        k -= num_to_prune(ap[0], k)
    return k


def integer_graph(graph: MaseGraph) -> tuple[MaseGraph, list[dict[str, Any]]]:
    """A copy of ``graph`` whose integer-quantised linears run :func:`integer_linear` (for inference).

    Returns ``(copy, rows)``: per converted node its ``K_eff``, ``M`` and whether the exactness
    condition holds (then its outputs are bit-identical to the simulation's). Linears without integer
    input and weight formats are left as they are.
    """
    g = graph.copy()
    rows = []
    for node in g.nodes:
        if node.op != "call_function" or node.target is not compressed_linear:
            continue
        kw = node.kwargs
        try:
            sx, sw = _int_spec(kw.get("data_in"), "data_in"), _int_spec(kw.get("weight_q"), "weight_q")
            sb = _int_spec(kw.get("bias_q"), "bias_q")
        except MaseError:
            continue
        has_bias = len(node.args) > 2 and node.args[2] is not None
        if sx is None or sw is None or (has_bias and sb is None):
            continue
        k_eff = _node_k_eff(g, node)
        cond = exact_condition(k_eff, kw.get("data_in"), kw.get("weight_q"), kw.get("bias_q") if has_bias else None)
        node.target = integer_linear
        rows.append({"node": node.name, "K_eff": k_eff, **cond})
    g.gm.recompile()
    return g, rows


integer_linear._mase_op = "linear"  # type: ignore[attr-defined]
