"""``integer``: MASE's fixed-point integer format, with straight-through gradients.

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

``frac_width = "auto"`` (:meth:`IntegerConfig.resolve`) picks, per tensor, the most fraction bits
that still hold the largest magnitude ``a`` (``max |w|`` of a weight, the calibrated absolute
maximum of an activation) without saturation::

    f = clamp(floor(log2(qmax / a)), 0, width)        qmax = 2**(w-1) - 1

i.e. the largest ``f`` with ``a * 2**f <= qmax`` (then ``round(a * 2**f) <= qmax``); ``a = 0`` gives
``f = width``, and ``a > qmax`` gives ``f = 0`` (it saturates even then: widen the format).
Non-finite values are ignored.
"""


from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal, NamedTuple, Optional, Union

import torch
from torch import Tensor

from mase_lite.errors import ConfigError

from .base import FormatConfig, NumberFormat, register_format

__all__ = [
    "QSpec",
    "STE_MODES",
    "MIN_WIDTH",
    "MAX_WIDTH",
    "check_qspec",
    "qspec",
    "integer_quantize",
    "integer_quantize_reference",
    "quantize_codes_",
    "auto_frac_width",
    "IntegerConfig",
    "IntegerFormat",
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


def auto_frac_width(absmax: float, width: int) -> int:
    """The most fraction bits ``f`` in ``[0, width]`` with ``absmax * 2**f <= 2**(width-1) - 1``
    (see the module docstring); ``absmax = 0`` (or not finite) gives ``width``."""
    qmax = (1 << (width - 1)) - 1
    if not math.isfinite(absmax) or absmax <= 0.0:
        return width
    f = math.floor(math.log2(qmax / absmax))
    f = min(max(f, 0), width)
    # guard the float log2 at exact powers of two
    while f > 0 and absmax * 2.0**f > qmax:
        f -= 1
    while f < width and absmax * 2.0 ** (f + 1) <= qmax:
        f += 1
    return f


def _finite_absmax(t: Tensor) -> float:
    a = t.detach().abs()
    a = a[torch.isfinite(a)]
    return float(a.max()) if a.numel() else 0.0


@dataclasses.dataclass
class IntegerConfig(FormatConfig):
    """``width`` bits (signed, 2-32), ``frac_width`` fraction bits (0..width, or ``"auto"``),
    round half to even or ``floor``."""

    name = "integer"
    takes_frac_width = True

    @classmethod
    def search_fields(cls, role, width, *, frac_width=None, granularity="per_channel"):
        return {"width": int(width), "frac_width": frac_width if frac_width is not None else "auto"}
    width: int
    frac_width: Union[int, Literal["auto"]]
    floor: bool = False

    def validate(self, path: str = "") -> None:
        frac = 0 if self.frac_width == "auto" else self.frac_width
        check_qspec(self.width, frac, path)

    def is_concrete(self) -> bool:
        return self.frac_width != "auto"

    def resolve(self, *, tensor: Optional[Tensor] = None, absmax: Optional[float] = None,
                path: str = "") -> "IntegerConfig":
        if self.frac_width != "auto":
            return self
        if tensor is not None:
            absmax = _finite_absmax(tensor)
        if absmax is None:
            where = f"{path}.frac_width" if path else "frac_width"
            raise ConfigError(f"{where} = 'auto' needs calibration data for this activation: run the "
                              "'calibrate' pass first (run_pass(graph, 'calibrate', ..., "
                              "context=PassContext(batches=...))), or give an integer frac_width")
        return dataclasses.replace(self, frac_width=auto_frac_width(float(absmax), self.width))


@register_format(IntegerConfig)
class IntegerFormat(NumberFormat):
    """MASE's fixed point: ``clamp(round(x 2^f), -2^(w-1), 2^(w-1)-1) / 2^f`` (module docstring)."""

    short_name = "int"
    elementwise = True

    def __init__(self, config: IntegerConfig) -> None:
        super().__init__(config)
        check_qspec(config.width, config.frac_width)
        self.qspec = QSpec(config.width, int(config.frac_width), bool(config.floor))

    @classmethod
    def from_qspec(cls, spec) -> "IntegerFormat":
        """The format of a ``(width, frac_width[, floor])`` tuple (as graph nodes store it)."""
        return _integer_from_qspec(tuple(spec))

    def quantize(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        return _quantize_nograd(x, self.qspec)

    def saturated(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        return ~_in_range(x, self.qspec)

    def quantize_ste(self, x: Tensor, ste: str = "plain", *, channel_dim: Optional[int] = None) -> Tensor:
        s = self.qspec
        return integer_quantize(x, s.width, s.frac_width, floor=s.floor, ste=ste)

    def reference(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        s = self.qspec
        return integer_quantize_reference(x, s.width, s.frac_width, s.floor)

    def bits_per_value(self) -> int:
        return self.qspec.width

    # integer codes (compact export): k = clamp(round(x 2^f), -2^(w-1), 2^(w-1)-1) (floor when the
    # format says so), value k / 2^f; no arrays (the fraction bits are in the manifest)
    def to_codes(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        v = x.detach().to(torch.float64) * self.qspec.scale  # exact: float64 holds every float32 * 2^f
        quantize_codes_(v, self.qspec)
        return v.to(torch.int64)

    def from_codes(self, codes: Tensor, params: dict[str, Tensor], dtype: torch.dtype, shape: tuple[int, ...],
                   channel_dim: Optional[int]) -> Tensor:
        return (codes.to(torch.float64) / self.qspec.scale).to(dtype).reshape(shape)

    def spec(self) -> tuple:
        """``(width, frac_width, floor)``, as graph nodes have always stored integer formats."""
        return tuple(self.qspec)


@functools.lru_cache(maxsize=1024)
def _integer_from_qspec(spec: tuple) -> IntegerFormat:
    q = QSpec(*spec)
    return IntegerFormat(IntegerConfig(width=q.width, frac_width=q.frac_width, floor=bool(q.floor)))
