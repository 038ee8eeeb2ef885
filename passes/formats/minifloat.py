"""``minifloat``: a small binary floating-point format (sign, exponent and mantissa fields, a bias).

A value has ``1 + exponent_width + mantissa_width`` bits (at most 16). With ``e = exponent_width``,
``m = mantissa_width`` and an exponent field ``E``, mantissa field ``M``:

* ``E = 0``: subnormal, ``(-1)^s * M * 2^(1 - bias - m)`` (gradual underflow down to ``2^(1-bias-m)``);
* otherwise normal, ``(-1)^s * (2^m + M) * 2^(E - bias - m)``.

``special`` says what the top exponent field ``2^e - 1`` encodes:

* ``"ieee"`` (default): infinities (``M = 0``) and NaNs, as IEEE 754; the largest finite value is
  ``(2 - 2^-m) * 2^(2^e - 2 - bias)`` (``fp8_e5m2``: 57344);
* ``"fn"`` (finite and NaN, OCP's E4M3FN): normal numbers, except that all-ones ``M`` is NaN; no
  infinities; the largest value is ``(2 - 2^(1-m)) * 2^(2^e - 1 - bias)`` (``fp8_e4m3``: 448);
* ``"none"``: normal numbers only (MASE's ``minifloat_ieee`` quantiser), largest ``(2 - 2^-m) * 2^(2^e - 1 - bias)``.

Presets: ``fp8_e4m3`` = OCP E4M3FN (e4 m3, bias 7, ``special = "fn"``: max 448, smallest subnormal
``2^-9``) and ``fp8_e5m2`` (e5 m2, bias 15, ``special = "ieee"``: max 57344, smallest subnormal ``2^-16``).
``bias`` defaults to ``2^(e-1) - 1``.

Rounding: to the nearest representable value, ties to the one with the even code: the even mantissa
field, as IEEE 754 and torch's float8 casts (with ``mantissa_width = 0``, the even exponent field).

Saturation (``saturate = true``, the default, as in the usual fake-quantisation practice and torch's
``float8_e4m3fn`` cast): any value beyond the largest finite value, ``+-inf`` included, becomes
``+-max``. With ``saturate = false``, overflow follows IEEE round-to-nearest: a value that rounds past
the largest finite value (``|x| >= max + half a step`` for ``"ieee"``, ties going to the even code)
becomes ``+-inf`` for ``"ieee"`` (exactly torch's ``float8_e5m2`` cast) and NaN for ``"fn"`` (its
only non-finite code); ``"none"`` has nowhere to overflow to and must saturate.

NaN inputs give NaN. Zeros keep their sign, and so do values that round to zero (``-2^-11 -> -0.0``
in ``fp8_e4m3``).

Dtypes: any shape; the result has ``x``'s dtype. float32, bfloat16 and float16 inputs are computed
in float32, exactly, when every scale factor of the format is a normal float32 (all presets), else in
float64; float64 in float64. The format's values are all float32 numbers (checked by ``validate``),
so float32 results are exact; a bfloat16 or float16 result is the format's value rounded to that
dtype, exact when it is a number of that dtype (bfloat16: ``mantissa_width <= 7`` and not below its
smallest subnormal ``2^-133``; float16: ``mantissa_width <= 10`` and within float16's range).

Straight-through gradient: ``ste = "clipped"`` zeroes it where ``|x| > max`` (saturated or
overflowed) and for NaN/inf inputs.

Storage: ``1 + e + m`` bits per value, no overhead.

In a ``quantize`` entry (fields per role, see :mod:`passes.transforms.quantize`)::

    [passes.quantize.linear.config]
    name = "minifloat"
    weight_preset = "fp8_e4m3"
    data_in_preset = "fp8_e4m3"
    bias_exponent_width = 5           # or any widths: e5m10 is float16
    bias_mantissa_width = 10
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import Tensor

from mase_lite.config import check_choice, check_range
from mase_lite.errors import ConfigError

from .base import FormatConfig, NumberFormat, check_no_nan, register_format, signed_codes

__all__ = ["PRESETS", "SPECIALS", "MinifloatConfig", "MinifloatFormat"]

#: Named formats: their field values.
PRESETS: dict[str, dict[str, Any]] = {
    "fp8_e4m3": {"exponent_width": 4, "mantissa_width": 3, "bias": 7, "special": "fn"},
    "fp8_e5m2": {"exponent_width": 5, "mantissa_width": 2, "bias": 15, "special": "ieee"},
}
SPECIALS = ("ieee", "fn", "none")
MAX_TOTAL_BITS = 16
EXPONENT_WIDTHS = (2, 8)
MANTISSA_WIDTHS = (0, 13)
# float32's exponent range: the largest finite power of two and the smallest subnormal
_F32_MAX_EXP, _F32_MIN_SUB_EXP = 127, -149


#: Widths a search may choose for minifloat, and the exponent/mantissa split each means (8: e4m3, as
#: fp8_e4m3's layout; 16: e5m10, IEEE half's layout).
SEARCH_WIDTHS = {8: (4, 3), 16: (5, 10)}


@dataclasses.dataclass
class MinifloatConfig(FormatConfig):
    """``name = "minifloat"``: a ``preset`` or ``exponent_width`` + ``mantissa_width`` (and optionally
    ``bias``, ``special``); ``saturate`` chooses what overflow does (see the module docstring).

    Fields left out take the preset's values (or the defaults: ``bias = 2^(e-1) - 1``,
    ``special = "ieee"``); a field that contradicts the preset is an error.
    """

    name: ClassVar[str] = "minifloat"

    @classmethod
    def search_fields(cls, role, width, *, frac_width=None, granularity="per_channel"):
        if width not in SEARCH_WIDTHS:
            raise ConfigError(f"space.compression.widths: the minifloat format takes widths {sorted(SEARCH_WIDTHS)}, "
                              f"not {width}")
        e, m = SEARCH_WIDTHS[width]
        return {"exponent_width": e, "mantissa_width": m}

    preset: Optional[str] = None
    exponent_width: Optional[int] = None
    mantissa_width: Optional[int] = None
    bias: Optional[int] = None
    special: Optional[Literal["ieee", "fn", "none"]] = None
    saturate: bool = True

    def __post_init__(self) -> None:
        given = PRESETS.get(self.preset, {}) if isinstance(self.preset, str) else {}
        self._explicit = {k: getattr(self, k) for k in given if getattr(self, k) is not None}
        for key, value in given.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.bias is None and isinstance(self.exponent_width, int) and not isinstance(self.exponent_width, bool):
            self.bias = 2 ** (self.exponent_width - 1) - 1
        if self.special is None:
            self.special = "ieee"

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.preset is not None:
            check_choice(f"{p}preset", self.preset, tuple(PRESETS))
            for key, value in self._explicit.items():
                if value != PRESETS[self.preset][key]:
                    raise ConfigError(f"{p}{key} = {value!r} contradicts {p}preset = {self.preset!r} "
                                      f"({key} = {PRESETS[self.preset][key]!r}); leave it out or drop the preset")
        for key in ("exponent_width", "mantissa_width"):
            if getattr(self, key) is None:
                raise ConfigError(f"missing config key {p}{key} (or give {p}preset, one of: "
                                  f"{', '.join(map(repr, PRESETS))})")
            _check_int(f"{p}{key}", getattr(self, key))
        e, m = self.exponent_width, self.mantissa_width
        check_range(f"{p}exponent_width", e, *EXPONENT_WIDTHS)
        check_range(f"{p}mantissa_width", m, *MANTISSA_WIDTHS)
        _check_int(f"{p}bias", self.bias)
        if 1 + e + m > MAX_TOTAL_BITS:
            raise ConfigError(f"{p}exponent_width + {p}mantissa_width = {e} + {m} does not fit: with the sign bit "
                              f"a minifloat has at most {MAX_TOTAL_BITS} bits, so exponent_width + mantissa_width "
                              f"must be <= {MAX_TOTAL_BITS - 1}")
        check_choice(f"{p}special", self.special, SPECIALS)
        if self.special == "fn" and m < 1:
            raise ConfigError(f"{p}special = 'fn' needs {p}mantissa_width >= 1 (its all-ones mantissa is NaN); "
                              f"got mantissa_width = {m}")
        if self.special == "none" and not self.saturate:
            raise ConfigError(f"{p}saturate = false needs {p}special = 'ieee' or 'fn' (a format without "
                              "infinities or NaN can only saturate)")
        # every value of the format must be a float32 number
        lo = _top_normal_field(e, self.special) - _F32_MAX_EXP
        hi = 1 - m - _F32_MIN_SUB_EXP
        if not lo <= self.bias <= hi:
            raise ConfigError(f"{p}bias = {self.bias!r} is out of range for exponent_width = {e}, mantissa_width = "
                              f"{m}, special = {self.special!r}; it must be in [{lo}, {hi}] so that every value "
                              "is a float32 number")


def _check_int(path: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path} must be an integer, got {value!r}")


def _top_normal_field(e: int, special: str) -> int:
    """The largest exponent field holding finite normal numbers."""
    return 2**e - 2 if special == "ieee" else 2**e - 1


def _pow2(k: Tensor, dtype: torch.dtype) -> Tensor:
    """``2.0**k`` for an integer tensor ``k`` of normal exponents, built from the bits (exact)."""
    if dtype == torch.float32:
        return ((k.to(torch.int32) + 127) << 23).view(torch.float32)
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


@register_format(MinifloatConfig)
class MinifloatFormat(NumberFormat):
    """The :class:`MinifloatConfig` format (see the module docstring for the exact semantics)."""

    short_name = "fp"
    elementwise: ClassVar[bool] = True

    def __init__(self, config: MinifloatConfig) -> None:
        super().__init__(config)
        c = config
        self.e, self.m, self.bias, self.special, self.saturate = (
            c.exponent_width, c.mantissa_width, c.bias, c.special, c.saturate)
        self.emin = 1 - self.bias  # exponent of the smallest normal (and the subnormals' scale)
        self.emax = _top_normal_field(self.e, self.special) - self.bias
        top_mantissa = 2**self.m - (2 if self.special == "fn" else 1)
        self.max_value = math.ldexp(2**self.m + top_mantissa, self.emax - self.m)
        self.min_subnormal = math.ldexp(1.0, self.emin - self.m)
        # float32 arithmetic is exact when every scale 2^(m - E), E in [emin, emax + 1], is a normal float32
        self._f32_exact = -126 <= self.m - self.emax - 1 and self.m - self.emin <= 127
        # the float32 exponent field then gives the scale directly (subnormal float32 inputs lie
        # below the format's smallest normal, where the exponent is clamped anyway)
        self._f32_bits = self._f32_exact and self.emin >= -126 and self.m >= 1

    # ------------------------------------------------------------------ quantiser
    def quantize(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        if not x.is_floating_point():
            raise TypeError(f"minifloat quantize needs a floating-point tensor, got {x.dtype}")
        work = torch.float32 if self._f32_exact and x.dtype != torch.float64 else torch.float64
        xw = x.detach().to(work)
        if work == torch.float32 and self._f32_bits:
            return self._quantize_f32(xw).to(x.dtype)
        a = xw.abs()
        _, ex = torch.frexp(a)  # a = f * 2^ex with f in [0.5, 1), so floor(log2 a) = ex - 1
        exp = (ex - 1).clamp_(self.emin, self.emax + 1)
        scale = _pow2(self.m - exp, work)  # one grid step is 1 / scale
        r = a * scale  # exact: scaling by powers of two
        k = torch.round(r)  # round half to even
        if self.m == 0:  # every significand is 1: a tie goes to the even exponent field (the even code)
            k = torch.where((r == 1.5) & ((exp + self.bias) % 2 == 0), torch.ones_like(k), k)
        q = k.div_(scale)
        if self.saturate:
            q = q.clamp_(max=self.max_value)  # inf -> max too; NaN stays NaN
        else:
            q = q.masked_fill_(q > self.max_value, math.inf if self.special == "ieee" else math.nan)
        q = torch.copysign(q, xw)
        return q.to(x.dtype)

    def _quantize_f32(self, x: Tensor) -> Tensor:
        """The same for float32 ``x``, in fewer kernels: the exponent from the float32 bits, signs
        kept by rounding the signed value (``round(-0.4) = -0.0``)."""
        field = (x.view(torch.int32) >> 23).bitwise_and_(0xFF)  # floor(log2 |x|) + 127 for normal x
        field.clamp_(self.emin + 127, self.emax + 128)  # E + 127 with E in [emin, emax + 1]
        scale = field.neg_().add_(self.m + 254).bitwise_left_shift_(23).view(torch.float32)  # 2^(m - E)
        q = (x * scale).round_().div_(scale)
        if self.saturate:
            return q.clamp_(-self.max_value, self.max_value)
        over = q.abs() > self.max_value
        return torch.where(over, q * math.inf if self.special == "ieee" else math.nan, q)

    def saturated(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """Where ``|x|`` exceeds the largest finite value (saturated or overflowed), or is NaN."""
        return ~(x.abs() <= self.max_value)

    # ------------------------------------------------------------------ reference
    def values(self) -> list[tuple[int, float]]:
        """``(code, value)`` of every finite non-negative code, in code order (= value order), decoded
        field by field."""
        out = []
        top = 2**self.e - 1
        for code in range(2 ** (self.e + self.m)):
            field, mant = code >> self.m, code & (2**self.m - 1)
            if field == top and (self.special == "ieee" or (self.special == "fn" and mant == 2**self.m - 1)):
                continue  # inf / NaN codes
            if field == 0:
                value = math.ldexp(mant, 1 - self.bias - self.m)
            else:
                value = math.ldexp(2**self.m + mant, field - self.bias - self.m)
            out.append((code, value))
        return out

    def reference(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """Nearest value among all decoded codes (ties: even code), element by element in Python."""
        table = self.values()
        codes = [c for c, _ in table]
        grid = [v for _, v in table]
        top_code = codes[-1]
        # the code after the largest finite one, decoded as if it were a normal number: where rounding
        # would go on overflow (inf for "ieee", the NaN code for "fn")
        beyond = math.ldexp(1.0, self.emax + 1) if self.special == "ieee" else math.ldexp(
            2 ** (self.m + 1) - 1, self.emax - self.m)
        overflow = math.inf if self.special == "ieee" else math.nan
        out = []
        for v in x.detach().to(torch.float64).flatten().tolist():
            if math.isnan(v):
                out.append(math.nan)
                continue
            a = abs(v)
            if a > grid[-1]:
                if self.saturate:
                    r = grid[-1]
                else:
                    mid = (grid[-1] + beyond) / 2
                    to_max = a < mid or (a == mid and top_code % 2 == 0)
                    r = grid[-1] if to_max else overflow
            else:
                i = bisect.bisect_left(grid, a)
                if grid[i] == a:
                    r = a
                else:
                    lo, hi = grid[i - 1], grid[i]
                    mid = (lo + hi) / 2
                    r = lo if a < mid or (a == mid and codes[i - 1] % 2 == 0) else hi
            out.append(math.copysign(r, v))
        return torch.tensor(out, dtype=torch.float64).reshape(x.shape).to(x.dtype)

    # ------------------------------------------------------------------ storage
    def bits_per_value(self) -> int:
        return 1 + self.e + self.m

    # ------------------------------------------------------------------ integer codes (compact export)
    # The code of a quantised value is its bit pattern sign | exponent | mantissa (1 + e + m bits,
    # stored as that many two's-complement bits, so the sign bit is the code's sign: +0.0 is code 0,
    # -0.0 is -2^(e+m)). Subnormals have exponent field 0; the top exponent field follows ``special``
    # ("ieee": M = 0 is inf, NaN is M = 2^(m-1); "fn": all-ones M is NaN; "none": normal numbers).
    # Decoding gives quantize(x) bit for bit (a NaN comes back as the format's NaN code with its sign);
    # no arrays. A NaN in a format without a NaN code ("none", or "ieee" with m = 0) is a MaseError.
    def _nan_mantissa(self) -> Optional[int]:
        if self.special == "fn":
            return (1 << self.m) - 1
        if self.special == "ieee" and self.m >= 1:
            return 1 << (self.m - 1)
        return None

    def to_codes(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        e, m, top, nan_mantissa = self.e, self.m, (1 << self.e) - 1, self._nan_mantissa()
        q = self.quantize(x, channel_dim=channel_dim).detach().to(torch.float64)
        nan = torch.isnan(q)
        if nan_mantissa is None and bool(nan.any()):
            check_no_nan(q, f"minifloat {self.to_dict()}")
        sign = torch.signbit(q).to(torch.int64)
        a = q.abs()
        inf = torch.isinf(a)
        finite = torch.where(nan | inf, torch.zeros_like(a), a)
        _, ex = torch.frexp(finite)  # finite = f 2^ex, f in [0.5, 1): floor(log2) = ex - 1
        exp = (ex.to(torch.int64) - 1).clamp_(min=self.emin)
        normal = finite >= math.ldexp(1.0, self.emin)
        field = torch.where(normal, exp + self.bias, torch.zeros_like(exp))
        sig = torch.ldexp(finite, (m - exp).to(torch.float64)).to(torch.int64)  # exact integer significand
        mant = torch.where(normal, sig - (1 << m), sig)
        if self.special == "ieee":
            field = torch.where(inf, torch.full_like(field, top), field)
            mant = torch.where(inf, torch.zeros_like(mant), mant)
        if nan_mantissa is not None:
            field = torch.where(nan, torch.full_like(field, top), field)
            mant = torch.where(nan, torch.full_like(mant, nan_mantissa), mant)
        u = (sign << (e + m)) | (field << m) | mant
        return signed_codes(u, 1 + e + m)

    def code_is_zero(self, codes: Tensor) -> Tensor:
        return (codes & ((1 << (self.e + self.m)) - 1)) == 0

    def from_codes(self, codes: Tensor, params: dict[str, Tensor], dtype: torch.dtype, shape: tuple[int, ...],
                   channel_dim: Optional[int]) -> Tensor:
        e, m, top = self.e, self.m, (1 << self.e) - 1
        u = codes.to(torch.int64) & ((1 << (1 + e + m)) - 1)
        sign = (u >> (e + m)) & 1
        field = (u >> m) & top
        mant = u & ((1 << m) - 1)
        sub = field == 0
        sig = torch.where(sub, mant, mant + (1 << m)).to(torch.float64)
        exp = torch.where(sub, torch.full_like(field, self.emin), field - self.bias) - m
        v = torch.ldexp(sig, exp.to(torch.float64))
        at_top = field == top
        if self.special == "ieee":
            v = torch.where(at_top & (mant == 0), torch.full_like(v, math.inf), v)
            v = torch.where(at_top & (mant != 0), torch.full_like(v, math.nan), v)
        elif self.special == "fn":
            v = torch.where(at_top & (mant == self._nan_mantissa()), torch.full_like(v, math.nan), v)
        v = torch.copysign(v, torch.where(sign == 1, -1.0, 1.0).to(torch.float64))
        return v.to(dtype).reshape(shape)
