"""Quantising weights (any registered number format, cached in evaluation), and the integer
quantiser's historical import path.

The fixed-point ``integer`` format itself lives in :mod:`passes.formats.integer`; its functions
(``QSpec``, ``check_qspec``, ``qspec``, ``integer_quantize``, ``integer_quantize_reference``,
``quantize_codes_``) are re-exported here unchanged so existing code keeps importing them from
this module. :func:`quantize_weight` takes a format in any form :func:`passes.formats.format_from_spec`
accepts (an integer ``(width, frac_width, floor)`` tuple as before, a named-format spec tuple, a
:class:`~passes.formats.NumberFormat`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from mase_lite.weight_scope import scope_cache

from ..formats import NumberFormat, format_from_spec
from ..formats.integer import (  # noqa: F401  (re-exported: the historical import path)
    MAX_WIDTH,
    MIN_WIDTH,
    STE_MODES,
    QSpec,
    _in_range,
    _IntegerQuantize,
    _quantize_nograd,
    _upper_bound,
    check_qspec,
    integer_quantize,
    integer_quantize_reference,
    qspec,
    quantize_codes_,
)
from ..formats.integer import IntegerFormat

__all__ = [
    "QSpec",
    "STE_MODES",
    "check_qspec",
    "qspec",
    "integer_quantize",
    "integer_quantize_reference",
    "quantize_codes_",
    "quantize_weight",
    "as_weight_format",
    "clear_weight_cache",
]

# ---------------------------------------------------------------------------------------------
# Weights: quantise + mask, cached within a frozen-weights block when no gradient is needed.

def as_weight_format(spec: Any) -> "QSpec | NumberFormat | None":
    """The integer fast path's :class:`QSpec` for integer formats (however given), the
    :class:`NumberFormat` for any other format, ``None`` for no quantisation."""
    if spec is None or isinstance(spec, QSpec):
        return spec
    fmt = format_from_spec(spec)
    if isinstance(fmt, IntegerFormat):
        return fmt.qspec
    return fmt


def _quantize_any(w: torch.Tensor, spec: "QSpec | NumberFormat", channel_dim: Optional[int]) -> torch.Tensor:
    if isinstance(spec, QSpec):
        return _quantize_nograd(w, spec)
    out = spec.quantize(w, channel_dim=channel_dim)
    return out if out is not w else out.clone()


def _inside_any(w: torch.Tensor, spec: "QSpec | NumberFormat", channel_dim: Optional[int]) -> torch.Tensor:
    if isinstance(spec, QSpec):
        return _in_range(w, spec)
    return ~spec.saturated(w, channel_dim=channel_dim)


class _QuantizeMaskWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, mask, spec, clipped: bool, channel_dim=0):  # type: ignore[override]
        with torch.no_grad():
            out = _quantize_any(w, spec, channel_dim) if spec is not None else w.clone()
        if mask is not None:
            out.mul_(mask)
        keep = mask
        if spec is not None and clipped:
            inside = _inside_any(w, spec, channel_dim)
            keep = inside if mask is None else inside & mask.bool()
        ctx.save_for_backward(keep)
        ctx.has_keep = keep is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.has_keep:
            (keep,) = ctx.saved_tensors
            grad = grad * keep
        return grad, None, None, None, None


def clear_weight_cache() -> None:
    """Forget the cached quantised/masked weights of the current :func:`~mase_lite.weight_scope.frozen_weights`
    block (there is no cache outside one)."""
    cache = scope_cache()
    if cache is not None:
        for key in [k for k in cache if isinstance(k, tuple) and k and k[0] == _CACHE_TAG]:
            del cache[key]


_CACHE_TAG = "quantize_weight"


def _cache_key(w: torch.Tensor, mask: Optional[torch.Tensor], spec, channel_dim) -> tuple:
    mkey = None if mask is None else (id(mask), mask._version, mask.data_ptr())
    skey = spec if spec is None or isinstance(spec, QSpec) else (spec.spec(), channel_dim)
    return (_CACHE_TAG, id(w), w._version, w.data_ptr(), tuple(w.shape), w.dtype, w.device, mkey, skey)


def quantize_weight(w: torch.Tensor, mask: Optional[torch.Tensor] = None, spec: Any = None,
                    *, ste: str = "plain", cache: bool = True, channel_dim: Optional[int] = 0) -> torch.Tensor:
    """``q(w) * mask`` (either part optional); gradient ``grad * mask`` (times the in-range mask for
    the clipped STE). ``spec``: any form :func:`as_weight_format` takes; ``channel_dim``: the output
    channel dimension, for formats with per-channel parameters.

    Caching: only inside a :func:`mase_lite.weight_scope.frozen_weights` block (evaluation opens one),
    when no gradient is needed and ``cache`` is true, the result is kept for the rest of the block
    (keyed by the weight and mask objects, their shapes and ``spec``) and then dropped. Outside such a
    block every call recomputes, so the result is correct however the weights were updated
    (fused optimizers, ``load_state_dict``, ``.data`` edits, ``.to()``).
    """
    spec = as_weight_format(spec)
    if spec is None and mask is None:
        return w
    if torch.is_grad_enabled() and w.requires_grad:
        return _QuantizeMaskWeight.apply(w, mask, spec, ste == "clipped", channel_dim)
    store = scope_cache() if cache else None
    if store is None:
        with torch.no_grad():
            return _QuantizeMaskWeight.forward(_Ctx(), w, mask, spec, False, channel_dim)
    key = _cache_key(w, mask, spec, channel_dim)
    hit = store.get(key)
    # the tensors themselves are kept with the value, so an id cannot be reused within the block
    if hit is not None and hit[0] is w and hit[1] is mask:
        return hit[2]
    with torch.no_grad():
        out = _QuantizeMaskWeight.forward(_Ctx(), w, mask, spec, False, channel_dim)
    store[key] = (w, mask, out)
    return out


class _Ctx:
    """Stand-in autograd context for calling a Function's forward directly."""

    def save_for_backward(self, *tensors):
        pass
