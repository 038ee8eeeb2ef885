"""``block_fp``: block floating point (MASE's ``block_fp`` quantiser, Microsoft's MSFP).

The last dimension of a tensor (the input dimension of a linear layer's ``[out, in]`` weight and of
its ``[..., in]`` activations) is cut into blocks of ``block_size`` consecutive values; each block
stores one shared exponent ``s`` (``exponent_width`` bits with ``bias``, so
``s`` in ``[-bias, 2^exponent_width - 1 - bias]``) and each value a sign and an ``m = mantissa_width``
bit magnitude ``k``::

    value = (-1)^sign * k * 2^(s - m),        k in [0, 2^m - 1]

The shared exponent comes from the block's largest magnitude ``amax``: the smallest ``s`` with
``amax < 2^s`` (``floor(log2 amax) + 1``), clamped to the exponent range. Then
``k = min(round(|x| * 2^(m - s)), 2^m - 1)``, rounding half to even. So every value of a block is
within half a step ``2^(s-m-1)`` of ``x``, except those within half a step of ``2^s``, which saturate
to ``(2^m - 1) 2^(s-m)`` (error below one step); values beyond the largest exponent saturate to
``+-(2^m - 1) 2^(s_max - m)``.

Special values: a NaN stays NaN and is ignored when choosing the block's exponent; ``+-inf`` gives
the block the largest exponent and saturates. Zeros, and values that round to zero, keep their sign.

Differences from MASE's ``_block_fp_quantize`` (``width`` there is ``1 + mantissa_width`` here):

* MASE takes ``s = ceil(log2 amax)``. That is the same except when ``amax`` is an exact power of two,
  where MASE's ``s`` is one lower and the block's largest value saturates to ``(1 - 2^-m) amax``
  (not idempotent: quantising twice moves values again); here a power of two is kept exactly and
  quantising is idempotent.
* MASE adds ``1e-9`` to ``|x|`` before rounding and returns values with ``|x| <= 1e-8`` unchanged (its
  ``isclose(x, 0)`` guard, for the gradient); here rounding is exact, ties to even, and every value is
  quantised (the straight-through gradient is the identity anyway).
* MASE pads a last dimension that the block size does not divide; here that is a ConfigError
  (:meth:`BlockFPFormat.check_shape`): for weights and biases when the ``quantize`` pass resolves
  the format (:meth:`BlockFPConfig.resolve`, before it changes anything), for activations when the
  quantised graph first runs on such a tensor.
* MASE also offers multi-dimensional blocks; here blocks run along the last dimension only.

Dtypes: any shape (a 0-d tensor is one value); the result has ``x``'s dtype. float32, bfloat16 and
float16 inputs are computed exactly in float32 when every scale ``2^(m - s)`` is a normal float32
(e.g. ``exponent_width <= 7``), else in float64 (the defaults, e8 with bias 127 and m7, reach
``2^134`` at the smallest exponent, so they take the float64 path). All values of the format are float32 numbers (checked by
``validate``); a bfloat16 result is exact for ``mantissa_width <= 8`` (down to bfloat16's smallest
subnormal, ``2^-133``), else the format's value rounded to bfloat16.

Straight-through gradient: ``ste = "clipped"`` zeroes it where the value saturated (its magnitude
code would exceed ``2^m - 1``) and at NaN/inf.

Storage: ``1 + mantissa_width`` bits per value plus ``exponent_width`` bits per block.

In a ``quantize`` entry (fields per role, see :mod:`passes.transforms.quantize`)::

    [passes.quantize.linear.config]
    name = "block_fp"
    mantissa_width = 7                # shared by every role given below
    exponent_width = 8
    weight_block_size = 16
    data_in_block_size = 16
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Optional

import torch
from torch import Tensor

from mase_lite.config import check_range
from mase_lite.errors import ConfigError

from .base import FormatConfig, NumberFormat, check_no_nan, register_format, signed_codes

__all__ = ["BlockFPConfig", "BlockFPFormat"]

EXPONENT_WIDTHS = (1, 8)
MANTISSA_WIDTHS = (1, 15)
_F32_MAX_EXP, _F32_MIN_SUB_EXP = 128, -149  # values < 2^128; smallest float32 subnormal 2^-149


@dataclasses.dataclass
class BlockFPConfig(FormatConfig):
    """``name = "block_fp"``: ``block_size`` values along the last dimension share an
    ``exponent_width``-bit exponent (``bias`` defaults to ``2^(exponent_width-1) - 1``); each value
    keeps a sign and ``mantissa_width`` magnitude bits. Defaults are MASE's (width 8 = 1 + 7, 8-bit
    exponent, blocks of 16)."""

    name: ClassVar[str] = "block_fp"

    @classmethod
    def search_fields(cls, role, width, *, frac_width=None, granularity="per_channel"):
        return {"mantissa_width": int(width) - 1}

    mantissa_width: int = 7
    exponent_width: int = 8
    bias: Optional[int] = None
    block_size: int = 16

    def __post_init__(self) -> None:
        if self.bias is None and isinstance(self.exponent_width, int) and not isinstance(self.exponent_width, bool):
            self.bias = 2 ** (self.exponent_width - 1) - 1

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        for key, valid in (("mantissa_width", MANTISSA_WIDTHS), ("exponent_width", EXPONENT_WIDTHS),
                           ("block_size", (1, None)), ("bias", (None, None))):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{p}{key} must be an integer, got {value!r}")
            check_range(f"{p}{key}", value, *valid)
        lo = 2**self.exponent_width - 1 - _F32_MAX_EXP
        hi = -self.mantissa_width - _F32_MIN_SUB_EXP
        if not lo <= self.bias <= hi:
            raise ConfigError(f"{p}bias = {self.bias!r} is out of range for exponent_width = {self.exponent_width}, "
                              f"mantissa_width = {self.mantissa_width}; it must be in [{lo}, {hi}] so that every "
                              "value is a float32 number")


    def resolve(self, *, tensor: Optional[Tensor] = None, absmax: Optional[float] = None,
                path: str = "") -> "BlockFPConfig":
        """Itself (nothing is data-dependent); but a stored ``tensor`` whose last dimension
        ``block_size`` does not divide is a ConfigError naming ``<path>.block_size`` (the ``quantize``
        pass resolves every format before it edits the graph)."""
        if tensor is not None:
            BlockFPFormat(self).check_shape(tuple(tensor.shape), path)
        return self


def _pow2(k: Tensor, dtype: torch.dtype) -> Tensor:
    """``2.0**k`` for an integer tensor ``k`` of normal exponents, built from the bits (exact)."""
    if dtype == torch.float32:
        return ((k.to(torch.int32) + 127) << 23).view(torch.float32)
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@register_format(BlockFPConfig)
class BlockFPFormat(NumberFormat):
    """The :class:`BlockFPConfig` format (see the module docstring for the exact semantics)."""

    short_name = "bfp"
    elementwise: ClassVar[bool] = False

    def __init__(self, config: BlockFPConfig) -> None:
        super().__init__(config)
        self.m, self.block_size = config.mantissa_width, config.block_size
        self.emin = -config.bias
        self.emax = 2**config.exponent_width - 1 - config.bias
        self.kmax = 2**self.m - 1
        self.max_value = math.ldexp(self.kmax, self.emax - self.m)
        self._f32_exact = -126 <= self.m - self.emax and self.m - self.emin <= 127

    # ------------------------------------------------------------------ shapes
    def check_shape(self, shape: tuple[int, ...], path: str = "") -> None:
        """A ConfigError naming ``block_size`` unless it divides the last dimension of ``shape``."""
        n = int(shape[-1]) if len(shape) else 1
        if n % self.block_size:
            p = f"{path}." if path else ""
            raise ConfigError(f"{p}block_size = {self.block_size} does not divide the last (input) dimension "
                              f"{n} of a tensor of shape {tuple(shape)}; valid block sizes: "
                              f"{', '.join(map(str, _divisors(n)))}")

    def _blocks(self, x: Tensor) -> Tensor:
        self.check_shape(tuple(x.shape), "block_fp")
        flat = x.reshape(1) if x.ndim == 0 else x
        return flat.reshape(*flat.shape[:-1], flat.shape[-1] // self.block_size, self.block_size)

    def shared_exponents(self, x: Tensor) -> Tensor:
        """The shared exponent ``s`` of every block (shape ``[..., n_blocks, 1]``, int32)."""
        return self._block_exponents(self._blocks(x.detach()))

    def _block_exponents(self, xb: Tensor) -> Tensor:
        lo, hi = torch.aminmax(xb, dim=-1, keepdim=True)  # one pass over the values
        amax = torch.maximum(hi, lo.neg_())
        if bool(torch.isnan(amax).any()):  # a block holding NaN: its exponent comes from the other values
            amax = xb.abs().nan_to_num_(nan=0.0, posinf=math.inf).amax(-1, keepdim=True)
        amax = amax.clamp_(max=torch.finfo(amax.dtype).max)  # inf: the largest exponent (after the clamp below)
        _, ex = torch.frexp(amax)  # amax = f * 2^ex, f in [0.5, 1): the smallest s with amax < 2^s
        return ex.clamp_(self.emin, self.emax)

    # ------------------------------------------------------------------ quantiser
    def quantize(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        if not x.is_floating_point():
            raise TypeError(f"block_fp quantize needs a floating-point tensor, got {x.dtype}")
        work = torch.float32 if self._f32_exact and x.dtype != torch.float64 else torch.float64
        xb = self._blocks(x.detach().to(work))
        scale = _pow2(self.m - self._block_exponents(xb), work)  # one step is 1 / scale
        # rounding the signed value keeps the sign of zeros (round(-0.4) = -0.0); NaN stays NaN
        q = (xb * scale).round_().clamp_(-self.kmax, self.kmax).div_(scale)
        return q.reshape(x.shape).to(x.dtype)

    def saturated(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """Where the magnitude code would exceed ``2^m - 1`` (the value was clipped), or NaN/inf."""
        xb = self._blocks(x.detach().to(torch.float64))
        scale = _pow2(self.m - self._block_exponents(xb), torch.float64)
        out = ~(torch.round(xb.abs() * scale) <= self.kmax)
        return out.reshape(x.shape)

    def reference(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """Block by block in Python: the exponent by searching powers of two, each value the nearest
        of ``k 2^(s-m)`` (ties: even ``k``)."""
        xb = self._blocks(x.detach().to(torch.float64))
        rows = xb.reshape(-1, self.block_size).tolist()
        out = []
        for row in rows:
            finite = [abs(v) for v in row if not math.isnan(v)]
            amax = max(finite, default=0.0)
            s = self.emin
            while s < self.emax and not amax < 2.0**s:
                s += 1
            step = math.ldexp(1.0, s - self.m)
            for v in row:
                if math.isnan(v):
                    out.append(math.nan)
                    continue
                r = abs(v) / step  # exact: step is a power of two
                if r >= self.kmax:
                    k = self.kmax
                else:
                    k = math.floor(r)
                    if r - k > 0.5 or (r - k == 0.5 and k % 2 == 1):
                        k += 1
                out.append(math.copysign(k * step, v))
        return torch.tensor(out, dtype=torch.float64).reshape(x.shape).to(x.dtype)

    # ------------------------------------------------------------------ storage
    def bits_per_value(self) -> int:
        return 1 + self.m

    def overhead_bits(self, shape: tuple[int, ...], *, channel_dim: Optional[int] = None) -> int:
        """``exponent_width`` bits per block of ``block_size`` values."""
        n = math.prod(shape) if len(shape) else 1
        return self.config.exponent_width * (n // self.block_size)

    # ------------------------------------------------------------------ integer codes (compact export)
    # Per value sign | k (1 + m bits, sign-magnitude laid out as two's-complement bits: +0 is code 0);
    # per block the shared exponent s as the unsigned exponent_width-bit code s + bias, bit-packed into
    # one uint8 array ``exponents`` of ceil(n_blocks * exponent_width / 8) bytes (overhead_bits rounded
    # up, as the cost pass counts it: codes and exponents are rounded up to whole bytes separately).
    # NaN cannot be stored (MaseError).
    code_param_names = ("exponents",)

    def _code_exponents(self, x: Tensor) -> Tensor:
        return self._block_exponents(self._blocks(x.detach().to(torch.float64))).to(torch.int64)  # [..., nb, 1]

    def code_params(self, x: Tensor, channel_dim: Optional[int]) -> dict[str, Tensor]:
        from ..export import packing  # the export's bit packing (imported late: passes.export imports formats)

        ew = self.config.exponent_width
        u = self._code_exponents(x).reshape(-1) + self.config.bias
        return {"exponents": packing.pack_codes(signed_codes(u, ew), ew)}

    def to_codes(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        q = self.quantize(x, channel_dim=channel_dim).detach().to(torch.float64)
        check_no_nan(q, f"block_fp {self.to_dict()}")
        s = self._code_exponents(x)
        qb = self._blocks(q)
        k = torch.ldexp(qb.abs(), (self.m - s).to(torch.float64)).to(torch.int64)  # exact, <= 2^m - 1
        u = (torch.signbit(qb).to(torch.int64) << self.m) | k
        return signed_codes(u.reshape(-1), 1 + self.m).reshape(x.shape)

    def code_is_zero(self, codes: Tensor) -> Tensor:
        return (codes & ((1 << self.m) - 1)) == 0

    def from_codes(self, codes: Tensor, params: dict[str, Tensor], dtype: torch.dtype, shape: tuple[int, ...],
                   channel_dim: Optional[int]) -> Tensor:
        from ..export import packing

        ew, m = self.config.exponent_width, self.m
        numel = math.prod(shape) if len(shape) else 1
        nb = numel // self.block_size
        e = packing.unpack_codes(params["exponents"], ew, nb) & ((1 << ew) - 1)
        s = (e - self.config.bias).reshape(-1, 1)
        u = (codes.to(torch.int64) & ((1 << (1 + m)) - 1)).reshape(nb, self.block_size)
        k = (u & ((1 << m) - 1)).to(torch.float64)
        v = torch.ldexp(k, (s - m).to(torch.float64).expand_as(k))
        v = torch.copysign(v, torch.where((u >> m) == 1, -1.0, 1.0).to(torch.float64))
        return v.to(dtype).reshape(shape)
