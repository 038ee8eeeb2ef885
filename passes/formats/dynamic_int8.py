"""``dynamic_int8``: the int8 scheme ONNX Runtime runs as integer kernels, simulated exactly.

This is what ``onnxruntime.quantization.quantize_dynamic(per_channel=True)`` deploys, with
mase-lite's own codes and scales, and what ``mase-lite export --format onnx --deployable`` writes
(:mod:`passes.export.deployable`):

* **weights** (``channel_dim`` given: linear weights, embedding tables) -- symmetric int8 per output
  channel (per row of an embedding table)::

      s = float32(amax / qmax)  (1.0 for an all-zero channel)     c = clamp(round(w / s), -qmax, qmax)

  ``amax`` the channel's largest magnitude, ``qmax = 127``, or ``64`` with ``reduce_range`` (ONNX
  Runtime's 7-bit weight range, ``[-64, 64]``); the value is ``c * s`` in float32. The scale follows
  the current weights, so quantisation-aware training needs no calibration.
* **activations** (``channel_dim=None``: a linear's input) -- quantised at run time exactly as ONNX's
  ``DynamicQuantizeLinear``: uint8, asymmetric, one scale for the whole tensor, in float32::

      scale = (max(x, 0) - min(x, 0)) / 255   (1.0 when both are 0)
      zp    = round_half_even(clamp(-min(x, 0) / scale, 0, 255))
      u     = clamp(round_half_even(x / scale) + zp, 0, 255)        value = (u - zp) * scale

  The tensor is the whole batch, padding included: a row's result depends on its batch-mates, so
  the simulation must see the batches the runtime sees.

Linear layers with both roles in this format compute, in inference, what ONNX Runtime's integer
kernels (``DynamicQuantizeMatMul``, ``QAttention``) compute (:meth:`DynamicInt8Format.exact_linear`)::

    y[n] = float32(sum_k (u_k - zp) c_kn) * float32(scale * s_n) + b[n]

The integer sum is exact in float32 while its partial sums stay below ``2**24`` in magnitude
(always for ``K * 255 * qmax <= 2**24``: ``K <= 1028`` with ``reduce_range``, ``K <= 518`` without;
beyond that a partial sum past ``2**24`` is rounded, a relative error below ``2**-24``).
Training uses the dequantised values with straight-through gradients (the same values; only the
order of float32 roundings differs).

Why ``reduce_range`` (default True): on x86 CPUs without VNNI (AVX2, AVX-512F), ONNX Runtime's
u8 x s8 kernels add pairs of products in saturating int16 (``vpmaddubsw``): ``2 * 255 * 127``
overflows, ``2 * 255 * 64 = 32640`` does not. With 8-bit weights (``reduce_range = false``) those
CPUs agree with the simulation only with the session option ``session.x64quantprecision = 1``
(u8 x u8 kernels, slower); VNNI and ARM CPUs are exact either way.

Roles: ``data_in`` and ``weight`` only (biases stay float32, as in ONNX Runtime; an output is not
re-quantised). Storage: 8 bits per weight plus a float32 scale per channel; activations store
nothing (their scale is computed at run time).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mase_lite.errors import ConfigError
from mase_lite.weight_scope import scope_cache

from .base import FormatConfig, NumberFormat, register_format

__all__ = ["DynamicInt8Config", "DynamicInt8Format", "dynamic_quantize_linear", "dynamic_quantize_linear_reference",
           "SCALE_BITS", "UINT8_MAX"]

SCALE_BITS = 32
UINT8_MAX = 255


@dataclasses.dataclass
class DynamicInt8Config(FormatConfig):
    """``reduce_range``: 7-bit weights (``[-64, 64]``), exact on every x86 CPU (module docstring)."""

    name = "dynamic_int8"
    reduce_range: bool = True

    @classmethod
    def search_fields(cls, role, width, *, frac_width=None, granularity="per_channel"):
        if int(width) != 8:
            raise ConfigError(f"space.compression.widths: the dynamic_int8 format takes width 8, not {width}")
        return {} if role in ("data_in", "weight") else None  # biases stay float32

    def validate(self, path: str = "") -> None:
        if not isinstance(self.reduce_range, bool):
            p = f"{path}." if path else ""
            raise ConfigError(f"{p}reduce_range must be true or false, got {self.reduce_range!r}")

    @property
    def qmax(self) -> int:
        return 64 if self.reduce_range else 127


def dynamic_quantize_linear(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(u - zp, scale, zp)`` of ONNX's ``DynamicQuantizeLinear`` on the whole of ``x``: the centred codes
    as float32 integers, the float32 scale and the zero point (0-dim tensors); see the module docstring."""
    x32 = x.detach().to(torch.float32)
    if x32.numel() == 0:
        one = torch.ones((), dtype=torch.float32, device=x.device)
        return x32, one, torch.zeros((), dtype=torch.float32, device=x.device)
    lo, hi = torch.aminmax(x32)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / UINT8_MAX
    scale = torch.where(hi == lo, torch.ones_like(scale), scale)
    zp = torch.round(torch.clamp(0.0 - lo / scale, 0.0, float(UINT8_MAX)))
    # clamp(round(x / scale) + zp, 0, 255) - zp in three passes, not five: every value is a small integer,
    # exact in float32 (a zero code may come out as -0.0: the same value)
    centred = torch.div(x32, scale).round_().clamp_(min=-zp, max=UINT8_MAX - zp)
    return centred, scale, zp


def dynamic_quantize_linear_reference(x: Tensor) -> tuple[Tensor, float, int]:
    """The same, element by element in numpy float32 (slow; for tests): ``(u uint8 codes, scale, zp)``."""
    import numpy as np

    a = x.detach().to(torch.float32).cpu().numpy().reshape(-1)
    lo, hi = np.float32(min(float(a.min()), 0.0)), np.float32(max(float(a.max()), 0.0))
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(255.0))
    zp = int(np.round(np.clip(np.float32(0.0) - lo / scale, 0.0, 255.0)))  # np.round: half to even
    u = np.array([min(max(int(np.round(np.float32(v) / scale)) + zp, 0), 255) for v in a], dtype=np.uint8)
    return torch.from_numpy(u.reshape(tuple(x.shape))), float(scale), zp


@register_format(DynamicInt8Config)
class DynamicInt8Format(NumberFormat):
    """Per-channel symmetric int8 weights, run-time uint8 activations (see the module docstring)."""

    elementwise = False
    roles = ("data_in", "weight")
    short_name = "dyn"
    deployable = True

    def __init__(self, config: DynamicInt8Config) -> None:
        super().__init__(config)
        self.qmax = config.qmax

    # ------------------------------------------------------------------ weights
    def _weight_codes(self, w: Tensor, channel_dim: int) -> tuple[Tensor, Tensor]:
        w32 = w.detach().to(torch.float32)
        dims = [d for d in range(w32.dim()) if d != channel_dim % max(w32.dim(), 1)]
        a = w32.abs()
        amax = a.amax(dim=dims, keepdim=True) if dims and w32.numel() else a
        scale = amax / self.qmax
        scale = torch.where(amax > 0, scale, torch.ones_like(scale))
        codes = torch.round(w32 / scale).clamp_(-self.qmax, self.qmax)
        return codes, scale

    def weight_codes(self, w: Tensor, channel_dim: int = 0) -> tuple[Tensor, Tensor]:
        """``(codes, scales)`` of a weight, float32, scales shaped to broadcast against the codes; cached
        inside a :func:`~mase_lite.weight_scope.frozen_weights` block."""
        store = scope_cache()
        if store is None or (torch.is_grad_enabled() and w.requires_grad):
            return self._weight_codes(w, channel_dim)
        key = ("dynamic_int8_codes", id(w), w._version, w.data_ptr(), tuple(w.shape), self.qmax, channel_dim)
        hit = store.get(key)
        if hit is not None and hit[0] is w:
            return hit[1]
        out = self._weight_codes(w, channel_dim)
        store[key] = (w, out)
        return out

    # ------------------------------------------------------------------ the quantiser
    def quantize(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        if channel_dim is None:
            centred, scale, _ = dynamic_quantize_linear(x)
            return (centred * scale).to(x.dtype)
        codes, scale = self._weight_codes(x, channel_dim)
        return (codes * scale).to(x.dtype)

    def reference(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """Activations through the numpy DynamicQuantizeLinear; weights channel by channel."""
        if channel_dim is None:
            u, scale, zp = dynamic_quantize_linear_reference(x)
            s = torch.tensor(scale, dtype=torch.float32)
            return ((u.to(torch.float32) - zp) * s).to(x.dtype)
        rows = []
        for i in range(x.shape[channel_dim]):
            t = x.select(channel_dim, i).detach().to(torch.float32)
            amax = float(t.abs().max()) if t.numel() else 0.0
            s = torch.tensor(amax, dtype=torch.float32) / self.qmax if amax > 0 else torch.tensor(1.0)
            rows.append(torch.clamp(torch.round(t / s), -self.qmax, self.qmax) * s)
        return torch.stack(rows, dim=channel_dim).to(x.dtype)

    def exact_linear(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_format: Any,
                     weight_mask: Optional[Tensor] = None) -> Optional[Tensor]:
        """``x @ W.T + b`` as ONNX Runtime's integer kernels compute it (module docstring), or None when
        the weight is not in this format."""
        if not isinstance(weight_format, DynamicInt8Format):
            return None
        centred, scale, _ = dynamic_quantize_linear(x)
        codes, wscale = weight_format.weight_codes(weight, 0)
        if weight_mask is not None:
            codes = codes * weight_mask
        with torch.autocast(device_type=x.device.type, enabled=False):  # the runtime's arithmetic is float32
            y = F.linear(centred, codes) * (scale * wscale.reshape(-1))
            if bias is not None:
                y = y + bias.to(torch.float32)
        return y.to(x.dtype)

    # ------------------------------------------------------------------ storage
    def bits_per_value(self) -> int:
        return 8

    def overhead_bits(self, shape: tuple[int, ...], *, channel_dim: Optional[int] = None) -> int:
        if channel_dim is None or not shape:
            return 0  # an activation's scale is computed at run time
        return SCALE_BITS * int(shape[channel_dim])

    code_param_names = ("scale",)

    def to_codes(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        if channel_dim is None:
            raise ConfigError("dynamic_int8 stores weights only; an activation has no stored codes")
        return self._weight_codes(x, channel_dim)[0].to(torch.int64)

    def code_params(self, x: Tensor, channel_dim: Optional[int]) -> dict[str, Tensor]:
        return {"scale": self._weight_codes(x, channel_dim)[1].contiguous()}

    def from_codes(self, codes: Tensor, params: dict[str, Tensor], dtype: torch.dtype, shape: tuple[int, ...],
                   channel_dim: Optional[int]) -> Tensor:
        return (codes.reshape(shape).to(torch.float32) * params["scale"].to(torch.float32)).to(dtype)
