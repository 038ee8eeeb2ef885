"""``scaled_integer``: symmetric signed integers with a scale per tensor or per output channel.

For width ``w`` (2-16) the codes are ``k`` in ``[-qmax, qmax]``, ``qmax = 2**(w-1) - 1`` (the code
``-2**(w-1)`` is unused, so the grid is symmetric), and::

    q(x) = clamp(round(x / s), -qmax, qmax) * s          s = amax / qmax

``round`` is round half to even (``torch.round``). ``amax``:

* **weights and biases** (``scale`` not given): ``max |w|`` of the tensor (``per_tensor``) or of
  each output channel (``per_channel``: every index of ``channel_dim``, dimension 0 of linear and
  embedding weights), taken from the tensor's current values at run time, so the format follows
  the weights through quantisation-aware training and needs no calibration. These are computed in
  float64 and rounded once to the tensor's dtype, so the largest magnitude maps exactly to itself
  and the format is idempotent. Nothing saturates (the clipped STE equals the plain one).
* **activations**: a fixed ``scale``, chosen by :meth:`ScaledIntegerConfig.resolve` from the
  calibrated absolute maximum (``calibrate`` pass) as ``amax / qmax`` rounded to float32 and recorded
  in the config; values beyond ``qmax * scale`` saturate (the clipped STE passes no gradient there).
  Activations are per tensor.

Zero tensors/channels (``amax = 0``) quantise to zeros (``s = 1`` is used for them, any ``s`` gives
0); a calibrated ``amax`` of 0 gives ``scale = 2**-126`` (the smallest normal float32), so every value
but 0 saturates at ``+-qmax * scale``. NaN stays NaN, +-inf saturate (a fixed scale) or, as an
``amax``, make the tensor's scale infinite (non-finite weights are a diverged model).

Storage: ``width`` bits per value plus one float32 scale per tensor, or per channel (none for a
recorded fixed ``scale``, which is part of the config).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import torch
from torch import Tensor

from mase_lite.config import check_range
from mase_lite.errors import ConfigError

from .base import FormatConfig, NumberFormat, register_format

__all__ = ["ScaledIntegerConfig", "ScaledIntegerFormat", "MIN_WIDTH", "MAX_WIDTH", "SCALE_BITS"]

MIN_WIDTH, MAX_WIDTH = 2, 16
#: Bits of one stored scale (float32).
SCALE_BITS = 32
_TINY = float(torch.finfo(torch.float32).tiny)


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


@dataclasses.dataclass
class ScaledIntegerConfig(FormatConfig):
    """``width`` bits (2-16), ``granularity`` of the weight scale, and a fixed ``scale`` (activations:
    set from calibration; leave it unset for weights, whose scale comes from the tensor)."""

    name = "scaled_integer"

    @classmethod
    def search_fields(cls, role, width, *, frac_width=None, granularity="per_channel"):
        return {"width": int(width), **({"granularity": granularity} if role == "weight" else {})}
    width: int
    granularity: Literal["per_tensor", "per_channel"] = "per_tensor"
    scale: Optional[float] = None

    def validate(self, path: str = "") -> None:
        p = _field_prefix(path)
        if isinstance(self.width, bool) or not isinstance(self.width, int):
            raise ConfigError(f"{p}width must be an integer, got {self.width!r}")
        check_range(f"{p}width", self.width, MIN_WIDTH, MAX_WIDTH)
        if self.scale is not None:
            if not (self.scale > 0.0 and self.scale < float("inf")):
                raise ConfigError(f"{p}scale = {self.scale!r} is out of range; it must be a positive finite number")
            if self.granularity != "per_tensor":
                raise ConfigError(f"{p}scale is a per-tensor scale; with it, {p}granularity must be 'per_tensor', "
                                  f"not {self.granularity!r}")

    @property
    def qmax(self) -> int:
        return (1 << (self.width - 1)) - 1

    def resolve(self, *, tensor: Optional[Tensor] = None, absmax: Optional[float] = None,
                path: str = "") -> "ScaledIntegerConfig":
        if tensor is not None or self.scale is not None:
            return self  # weights: the scale is the tensor's own; or already fixed
        p = _field_prefix(path)
        if self.granularity != "per_tensor":
            raise ConfigError(f"{p}granularity = {self.granularity!r} is not valid for an activation; "
                              "choose one of: 'per_tensor' (per-channel scales are for weights)")
        if absmax is None:
            raise ConfigError(f"{p}scale is not given and this activation is not calibrated: run the 'calibrate' "
                              "pass first (run_pass(graph, 'calibrate', ..., context=PassContext(batches=...))), "
                              "or give a scale")
        absmax = float(absmax)
        if not absmax < float("inf"):
            raise ConfigError(f"{p}scale: the calibrated range is not finite ({absmax!r})")
        scale = _f32(absmax / self.qmax) if absmax > 0 else _TINY
        return dataclasses.replace(self, scale=max(scale, _TINY))


def _field_prefix(path: str) -> str:
    return f"{path}." if path else ""


def _work_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32: the fixed-scale path divides and rounds in it."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@register_format(ScaledIntegerConfig)
class ScaledIntegerFormat(NumberFormat):
    """Symmetric int with a per-tensor/per-channel scale ``amax / qmax`` (see the module docstring)."""

    short_name = "sint"
    elementwise = False

    def __init__(self, config: ScaledIntegerConfig) -> None:
        super().__init__(config)
        self.width = config.width
        self.qmax = config.qmax
        self.fixed_scale = config.scale
        self.per_channel = config.granularity == "per_channel"

    # scale of a tensor (float64, shaped to broadcast against x)
    def _dynamic_scale(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        a = x.detach().abs().to(torch.float64)
        if self.per_channel and channel_dim is not None and x.dim() > 0:
            dims = [d for d in range(x.dim()) if d != channel_dim % x.dim()]
            amax = a.amax(dim=dims, keepdim=True) if dims else a
        else:
            amax = a.max() if a.numel() else a.new_zeros(())
        s = amax / self.qmax
        return torch.where(s > 0, s, torch.ones_like(s))

    def quantize(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        if self.fixed_scale is not None:
            s = self.fixed_scale
            v = torch.div(x.to(_work_dtype(x)), s)  # bf16/fp16 would round x / s before the rounding
            v.round_().clamp_(-self.qmax, self.qmax)
            return v.mul_(s).to(x.dtype)
        s = self._dynamic_scale(x, channel_dim)
        v = x.to(torch.float64) / s
        v.round_().clamp_(-self.qmax, self.qmax)
        return v.mul_(s).to(x.dtype)

    def saturated(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        if self.fixed_scale is None:
            return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        return (x.to(_work_dtype(x)) / self.fixed_scale).abs() > self.qmax

    def reference(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """Channel by channel, with the formula written out (slow)."""
        if self.fixed_scale is not None:
            work = _work_dtype(x)
            s = torch.tensor(self.fixed_scale, dtype=work)
            return (torch.clamp(torch.round(x.to(work) / s), -self.qmax, self.qmax) * s).to(x.dtype)
        if self.per_channel and channel_dim is not None and x.dim() > 0:
            parts = [self._reference_slice(x.select(channel_dim, i)) for i in range(x.shape[channel_dim])]
            return torch.stack(parts, dim=channel_dim)
        return self._reference_slice(x)

    def _reference_slice(self, t: Tensor) -> Tensor:
        t64 = t.double()
        amax = float(t64.abs().max()) if t64.numel() else 0.0
        s = amax / self.qmax if amax > 0 else 1.0
        return (torch.clamp(torch.round(t64 / s), -self.qmax, self.qmax) * s).to(t.dtype)

    def bits_per_value(self) -> int:
        return self.width

    def overhead_bits(self, shape: tuple[int, ...], *, channel_dim: Optional[int] = None) -> int:
        if self.fixed_scale is not None:
            return 0  # a recorded scale is part of the format's config (the export manifest), not stored data
        if self.per_channel and channel_dim is not None and len(shape) > 0:
            return SCALE_BITS * int(shape[channel_dim])
        return SCALE_BITS

    # ------------------------------------------------------------------ integer codes (compact export)
    # code k = clamp(round(x / s), -qmax, qmax), value k s. Without a fixed scale the tensor's (or each
    # channel's) amax is stored as one float32 each (array ``amax``; float32-exact, so s is recomputed
    # exactly; its size is overhead_bits); a fixed ``scale`` is in the manifest.
    code_param_names = ("amax",)

    def _code_amax(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        a = x.detach().abs()
        if self.per_channel and channel_dim is not None and x.dim() > 0:
            dims = [d for d in range(x.dim()) if d != channel_dim % x.dim()]
            return (a.amax(dim=dims, keepdim=True) if dims else a).contiguous()
        return (a.max() if a.numel() else a.new_zeros(())).reshape(1)

    def _code_scale(self, amax: Tensor) -> Tensor:
        s = amax.to(torch.float64) / self.qmax
        s = torch.where(s > 0, s, torch.ones_like(s))
        return s if s.numel() != 1 else s.reshape(())

    def code_params(self, x: Tensor, channel_dim: Optional[int]) -> dict[str, Tensor]:
        if self.fixed_scale is not None:
            return {}
        return {"amax": self._code_amax(x, channel_dim).to(torch.float32)}

    def to_codes(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        if self.fixed_scale is not None:
            v = torch.div(x.detach().to(_work_dtype(x)), self.fixed_scale)
            return v.round_().clamp_(-self.qmax, self.qmax).to(torch.int64)
        s = self._code_scale(self._code_amax(x, channel_dim))
        v = x.detach().to(torch.float64) / s
        return v.round_().clamp_(-self.qmax, self.qmax).to(torch.int64)

    def from_codes(self, codes: Tensor, params: dict[str, Tensor], dtype: torch.dtype, shape: tuple[int, ...],
                   channel_dim: Optional[int]) -> Tensor:
        codes = codes.reshape(shape)
        if self.fixed_scale is not None:
            work = torch.float64 if dtype == torch.float64 else torch.float32  # as quantize
            return codes.to(work).mul_(self.fixed_scale).to(dtype)
        return (codes.to(torch.float64) * self._code_scale(params["amax"])).to(dtype)
