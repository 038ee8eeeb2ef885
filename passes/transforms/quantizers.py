"""Fixed-point integer quantiser (MASE's ``integer`` quantiser) with straight-through gradients.

For width ``w`` and fraction bits ``f`` the quantiser is::

    q(x) = clamp(round(x * 2**f), -2**(w-1), 2**(w-1) - 1) / 2**f

``round`` is round-half-to-even (``torch.round``, as MASE); with ``floor=True`` it is ``torch.floor``.
The result lies on the grid ``k / 2**f`` for integers ``k`` in ``[-2**(w-1), 2**(w-1) - 1]``.

Exactness: multiplying and dividing by a power of two is exact in binary floating point, so for
float32 inputs the result is bit-exact whenever the integer codes fit the 24-bit significand
(``w <= 25``). For wider grids the upper bound ``2**(w-1) - 1`` is not a float32 number; it is then
replaced by the largest float32 below it, so outputs stay on the grid and inside the range.
NaN inputs stay NaN; +-inf saturate.

Gradients (straight-through estimation, STE):

* ``ste="plain"`` (default, as MASE): the quantiser is the identity in the backward pass, also
  for inputs outside the clamp range -- a saturated value still receives the full gradient.
* ``ste="clipped"``: the gradient is passed where ``x * 2**f`` lies inside the clamp range
  ``[-2**(w-1), 2**(w-1) - 1]`` and is zero where the value was saturated.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from mase_lite.errors import ConfigError
from mase_lite.weight_scope import scope_cache

__all__ = [
    "QSpec",
    "STE_MODES",
    "check_qspec",
    "qspec",
    "integer_quantize",
    "integer_quantize_reference",
    "quantize_codes_",
    "quantize_weight",
    "clear_weight_cache",
]

STE_MODES = ("plain", "clipped")
MIN_WIDTH, MAX_WIDTH = 2, 32


class QSpec(NamedTuple):
    """A fixed-point format: ``width`` total bits (signed), ``frac_width`` fraction bits, rounding."""

    width: int
    frac_width: int
    floor: bool = False

    @property
    def scale(self) -> float:
        """``2**frac_width``: the number of grid steps per unit."""
        return float(2.0**self.frac_width)

    @property
    def qmin(self) -> int:
        return -(1 << (self.width - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.width - 1)) - 1


def check_qspec(width: object, frac_width: object, path: str = "", *, width_key: str = "width",
                frac_key: str = "frac_width") -> None:
    """Raise a ConfigError unless ``2 <= width <= 32`` and ``0 <= frac_width <= width`` (integers)."""
    where = f"{path}." if path else ""
    for key, val in ((width_key, width), (frac_key, frac_width)):
        if isinstance(val, bool) or not isinstance(val, int):
            raise ConfigError(f"{where}{key} must be an integer, got {val!r}")
    if not MIN_WIDTH <= width <= MAX_WIDTH:  # type: ignore[operator]
        raise ConfigError(
            f"{where}{width_key} = {width!r} is out of range; it must be in [{MIN_WIDTH}, {MAX_WIDTH}]"
        )
    if not 0 <= frac_width <= width:  # type: ignore[operator]
        raise ConfigError(
            f"{where}{frac_key} = {frac_width!r} is out of range; it must be in [0, {where}{width_key}"
            f" = {width}]"
        )


def qspec(spec: "QSpec | tuple | None") -> Optional[QSpec]:
    """Normalise ``(width, frac_width[, floor])`` (as stored in graph-node kwargs) to a QSpec."""
    if spec is None:
        return None
    if isinstance(spec, QSpec):
        return spec
    spec = QSpec(*spec)
    check_qspec(spec.width, spec.frac_width)
    return spec


def _upper_bound(spec: QSpec, dtype: torch.dtype) -> float:
    """``qmax`` as a number of ``dtype`` that is <= qmax (exact for narrow grids)."""
    hi = spec.qmax
    t = torch.tensor(float(hi), dtype=dtype)
    if float(t) > hi:
        t = torch.nextafter(t, torch.zeros((), dtype=dtype))
    return float(t)


def integer_quantize_reference(x: torch.Tensor, width: int, frac_width: int, floor: bool = False) -> torch.Tensor:
    """The straightforward formula, for tests: ``clamp(round(x * 2^f), lo, hi) / 2^f`` (no STE)."""
    spec = QSpec(width, frac_width, floor)
    scale = 2.0**frac_width
    v = torch.floor(x * scale) if floor else torch.round(x * scale)
    return torch.clamp(v, spec.qmin, _upper_bound(spec, x.dtype)) / scale


def quantize_codes_(v: torch.Tensor, spec: QSpec) -> torch.Tensor:
    """In place: turn ``v = x * 2^f`` into the integer codes ``clamp(round(v), lo, hi)`` (as floats)."""
    (v.floor_() if spec.floor else v.round_())
    return v.clamp_(spec.qmin, _upper_bound(spec, v.dtype))


def _in_range(x: torch.Tensor, spec: QSpec) -> torch.Tensor:
    # where the STE passes the gradient in clipped mode: x * 2^f inside [qmin, qmax] before rounding
    lo, hi = spec.qmin / spec.scale, _upper_bound(spec, x.dtype) / spec.scale
    return (x >= lo) & (x <= hi)


def _quantize_nograd(x: torch.Tensor, spec: QSpec) -> torch.Tensor:
    v = x * spec.scale  # one allocation; the rest in place
    quantize_codes_(v, spec)
    return v.mul_(1.0 / spec.scale)  # exact: multiplying by a power of two


class _IntegerQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec: QSpec, clipped: bool):  # type: ignore[override]
        if clipped:
            ctx.save_for_backward(_in_range(x, spec))
        ctx.clipped = clipped
        return _quantize_nograd(x, spec)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.clipped:
            (inside,) = ctx.saved_tensors
            return grad * inside, None, None
        return grad, None, None


def integer_quantize(x: torch.Tensor, width: int, frac_width: int, *, floor: bool = False,
                     ste: str = "plain") -> torch.Tensor:
    """Quantise ``x`` to the ``(width, frac_width)`` fixed-point grid; differentiable by STE.

    Bit-identical to :func:`integer_quantize_reference` in the forward pass (a few fused in-place
    kernels instead of the five of the formula).
    """
    spec = QSpec(width, frac_width, floor)
    if ste not in STE_MODES:
        raise ConfigError(f"ste = {ste!r} is not valid; choose one of: {', '.join(map(repr, STE_MODES))}")
    if torch.is_grad_enabled() and x.requires_grad:
        return _IntegerQuantize.apply(x, spec, ste == "clipped")
    return _quantize_nograd(x, spec)


# ---------------------------------------------------------------------------------------------
# Weights: quantise + mask, cached within a frozen-weights block when no gradient is needed.

class _QuantizeMaskWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, mask, spec: Optional[QSpec], clipped: bool):  # type: ignore[override]
        out = _quantize_nograd(w, spec) if spec is not None else w.clone()
        if mask is not None:
            out.mul_(mask)
        keep = mask
        if spec is not None and clipped:
            inside = _in_range(w, spec)
            keep = inside if mask is None else inside & mask.bool()
        ctx.save_for_backward(keep)
        ctx.has_keep = keep is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.has_keep:
            (keep,) = ctx.saved_tensors
            grad = grad * keep
        return grad, None, None, None


def clear_weight_cache() -> None:
    """Forget the cached quantised/masked weights of the current :func:`~mase_lite.weight_scope.frozen_weights`
    block (there is no cache outside one)."""
    cache = scope_cache()
    if cache is not None:
        for key in [k for k in cache if isinstance(k, tuple) and k and k[0] == _CACHE_TAG]:
            del cache[key]


_CACHE_TAG = "quantize_weight"


def _cache_key(w: torch.Tensor, mask: Optional[torch.Tensor], spec: Optional[QSpec]) -> tuple:
    mkey = None if mask is None else (id(mask), mask._version, mask.data_ptr())
    return (_CACHE_TAG, id(w), w._version, w.data_ptr(), tuple(w.shape), w.dtype, w.device, mkey, spec)


def quantize_weight(w: torch.Tensor, mask: Optional[torch.Tensor] = None, spec: "QSpec | tuple | None" = None,
                    *, ste: str = "plain", cache: bool = True) -> torch.Tensor:
    """``q(w) * mask`` (either part optional); gradient ``grad * mask`` (times the in-range mask for
    the clipped STE).

    Caching: only inside a :func:`mase_lite.weight_scope.frozen_weights` block (evaluation opens one),
    when no gradient is needed and ``cache`` is true, the result is kept for the rest of the block
    (keyed by the weight and mask objects, their shapes and ``spec``) and then dropped. Outside such a
    block every call recomputes, so the result is correct however the weights were updated
    (fused optimizers, ``load_state_dict``, ``.data`` edits, ``.to()``).
    """
    spec = qspec(spec)
    if spec is None and mask is None:
        return w
    if torch.is_grad_enabled() and w.requires_grad:
        return _QuantizeMaskWeight.apply(w, mask, spec, ste == "clipped")
    store = scope_cache() if cache else None
    if store is None:
        with torch.no_grad():
            return _QuantizeMaskWeight.forward(_Ctx(), w, mask, spec, False)
    key = _cache_key(w, mask, spec)
    hit = store.get(key)
    # the tensors themselves are kept with the value, so an id cannot be reused within the block
    if hit is not None and hit[0] is w and hit[1] is mask:
        return hit[2]
    with torch.no_grad():
        out = _QuantizeMaskWeight.forward(_Ctx(), w, mask, spec, False)
    store[key] = (w, mask, out)
    return out


class _Ctx:
    """Stand-in autograd context for calling a Function's forward directly."""

    def save_for_backward(self, *tensors):
        pass
