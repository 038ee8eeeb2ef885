"""The number formats a compact export stores as integer codes, and which tensor uses which.

Formats come from the number-format interface (:mod:`passes.formats`: a node's kwarg spec ->
:func:`~passes.formats.format_from_spec`). A *codec* adapts one :class:`~passes.formats.NumberFormat`
to storage: ``codes(x)`` (int64 codes), ``params(x)`` (per-tensor arrays the codes need, e.g.
scales), ``from_codes(codes, params, dtype)`` (exactly ``format.quantize(x)``), ``bits`` (stored bits
per code: ``format.bits_per_value()``) and ``to_dict()`` (the format's dict, in the manifest).

* ``integer`` (Lab 2's fixed point): code ``k = clamp(round(x 2^f), -2^(w-1), 2^(w-1)-1)``
  (``floor`` when the format says so), value ``k / 2^f``; no arrays (the fraction bits are in the
  manifest).
* ``scaled_integer``: code ``k = clamp(round(x / s), -qmax, qmax)``, value ``k s``. Weights: ``s =
  amax / qmax`` with ``amax`` the tensor's (or each output channel's) largest magnitude, stored as
  one float32 per tensor/channel (``amax`` array; float32-exact, so ``s`` is recomputed exactly, and
  the size is the format's ``overhead_bits``); a fixed ``scale`` is in the manifest.
* ``minifloat``: the code of a quantised value is its bit pattern ``sign | exponent | mantissa``
  (``1 + e + m`` bits, stored as that many two's-complement bits, so the sign bit is the code's
  sign: ``+0.0`` is code 0, ``-0.0`` is ``-2^(e+m)``). Subnormals have exponent field 0; the top
  exponent field follows ``special`` (``"ieee"``: ``M = 0`` is inf, NaN is ``M = 2^(m-1)``; ``"fn"``:
  all-ones ``M`` is NaN; ``"none"``: normal numbers). Decoding gives ``format.quantize(x)`` bit for
  bit (a NaN comes back as the format's NaN code with its sign); no arrays. A NaN in a format without
  a NaN code (``"none"``, or ``"ieee"`` with ``m = 0``) cannot be stored (MaseError).
* ``block_fp``: per value ``sign | k`` (``1 + mantissa_width`` bits, sign-magnitude laid out as
  two's-complement bits: ``+0`` is code 0); per block of ``block_size`` along the last dimension the
  shared exponent ``s`` as the unsigned ``exponent_width``-bit code ``s + bias``, bit-packed into one
  uint8 array ``exponents`` of ``ceil(n_blocks * exponent_width / 8)`` bytes (the format's
  ``overhead_bits`` rounded up, as the ``cost`` pass counts it: codes and exponents are rounded up
  to whole bytes separately, as stored). NaN cannot be stored (MaseError).

A value is a *zero* (for the masked encodings' non-zero bits, :meth:`Codec.is_zero`) when it
equals 0: ``+0.0`` and ``-0.0`` alike, as the ``cost`` pass counts non-zeros. Pruned positions are
stored as code 0 (``+0.0``); a kept ``-0.0`` keeps its sign except in the ``mask_nonzero``
encoding, which stores no codes for zeros (it comes back as ``+0.0``, an equal value).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional

import torch
from torch import fx

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph

from ..formats import NumberFormat, format_from_dict, format_from_spec
from ..formats.integer import IntegerFormat, QSpec, quantize_codes_
from ..formats.block_fp import BlockFPFormat
from ..formats.minifloat import MinifloatFormat
from ..formats.scaled_integer import ScaledIntegerFormat, _work_dtype
from . import packing
from ..transforms.compressed_nodes import get_tensor, is_embedding, is_linear, linear_mask_node

__all__ = ["Codec", "FormatCodec", "IntegerCodec", "ScaledIntegerCodec", "MinifloatCodec", "BlockFPCodec", "codec_for", "codec_from_dict", "TensorRole",
           "tensor_roles"]

log = logging.getLogger(__name__)


class Codec:
    """Integer codes of one tensor in one number format (see the module docstring)."""

    name = ""
    #: names of the arrays ``params`` returns (stored beside the codes, handed back to ``from_codes``)
    param_names: tuple[str, ...] = ()

    def __init__(self, fmt: NumberFormat, channel_dim: Optional[int]):
        self.format, self.channel_dim = fmt, channel_dim

    @property
    def bits(self) -> int:
        return int(self.format.bits_per_value())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.format.quantize(x, channel_dim=self.channel_dim)

    def params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def is_zero(self, codes: torch.Tensor) -> torch.Tensor:
        """Where the codes decode to a zero value (``+0.0`` or ``-0.0``)."""
        return codes == 0

    def from_codes(self, codes: torch.Tensor, params: Mapping[str, torch.Tensor], dtype: torch.dtype,
                   shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {**self.format.to_dict(), "channel_dim": self.channel_dim}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))


class IntegerCodec(Codec):
    """Fixed point ``(width, frac_width, floor)``: codes are the integers ``round(x * 2^frac_width)``."""

    name = "integer"

    def __init__(self, fmt: IntegerFormat, channel_dim: Optional[int] = None):
        super().__init__(fmt, channel_dim)
        self.spec: QSpec = fmt.qspec

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        v = x.detach().to(torch.float64) * self.spec.scale  # exact: float64 holds every float32 * 2^f
        quantize_codes_(v, self.spec)
        return v.to(torch.int64)

    def from_codes(self, codes, params, dtype, shape):
        return (codes.to(torch.float64) / self.spec.scale).to(dtype).reshape(shape)


class ScaledIntegerCodec(Codec):
    """Symmetric integers times a scale; weights keep ``amax`` per tensor/channel (float32)."""

    name = "scaled_integer"
    param_names = ("amax",)

    def __init__(self, fmt: ScaledIntegerFormat, channel_dim: Optional[int] = None):
        super().__init__(fmt, channel_dim)

    def _amax(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().abs()
        f = self.format
        if f.per_channel and self.channel_dim is not None and x.dim() > 0:
            dims = [d for d in range(x.dim()) if d != self.channel_dim % x.dim()]
            return (a.amax(dim=dims, keepdim=True) if dims else a).contiguous()
        return (a.max() if a.numel() else a.new_zeros(())).reshape(1)

    def params(self, x):
        if self.format.fixed_scale is not None:
            return {}
        return {"amax": self._amax(x).to(torch.float32)}

    def _scale64(self, params, shape):
        s = params["amax"].to(torch.float64) / self.format.qmax
        s = torch.where(s > 0, s, torch.ones_like(s))
        return s if s.numel() != 1 else s.reshape(())

    def codes(self, x):
        f = self.format
        if f.fixed_scale is not None:
            v = torch.div(x.detach().to(_work_dtype(x)), f.fixed_scale)
            return v.round_().clamp_(-f.qmax, f.qmax).to(torch.int64)
        s = self._scale64({"amax": self._amax(x).to(torch.float64)}, tuple(x.shape))
        v = x.detach().to(torch.float64) / s
        return v.round_().clamp_(-f.qmax, f.qmax).to(torch.int64)

    def from_codes(self, codes, params, dtype, shape):
        f = self.format
        codes = codes.reshape(shape)
        if f.fixed_scale is not None:
            work = torch.float64 if dtype == torch.float64 else torch.float32  # as the format's quantize
            return codes.to(work).mul_(f.fixed_scale).to(dtype)
        return (codes.to(torch.float64) * self._scale64(params, shape)).to(dtype)


def _to_signed(u: torch.Tensor, width: int) -> torch.Tensor:
    """Unsigned ``width``-bit fields as the signed codes :func:`~.packing.pack_codes` stores (same bits)."""
    if width == 1:
        return u  # 1-bit fields are packed unsigned
    return torch.where(u >= (1 << (width - 1)), u - (1 << width), u)


def _check_no_nan(q: torch.Tensor, what: str) -> None:
    if bool(torch.isnan(q).any()):
        raise MaseError(f"{what} has no code for NaN; a tensor holding NaN cannot be stored as codes")


class MinifloatCodec(Codec):
    """Minifloat values as their bit patterns ``sign | exponent | mantissa`` (``1 + e + m`` bits)."""

    name = "minifloat"

    def __init__(self, fmt: MinifloatFormat, channel_dim: Optional[int] = None):
        super().__init__(fmt, channel_dim)
        f = fmt
        self.e, self.m, self.bias, self.special = f.e, f.m, f.bias, f.special
        self.width = 1 + f.e + f.m
        self.top = (1 << f.e) - 1
        if f.special == "fn":
            self.nan_mantissa: Optional[int] = (1 << f.m) - 1
        elif f.special == "ieee" and f.m >= 1:
            self.nan_mantissa = 1 << (f.m - 1)
        else:
            self.nan_mantissa = None

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantize(x).detach().to(torch.float64)
        nan = torch.isnan(q)
        if self.nan_mantissa is None and bool(nan.any()):
            _check_no_nan(q, f"minifloat {self.to_dict()}")
        sign = torch.signbit(q).to(torch.int64)
        a = q.abs()
        inf = torch.isinf(a)
        finite = torch.where(nan | inf, torch.zeros_like(a), a)
        _, ex = torch.frexp(finite)  # finite = f 2^ex, f in [0.5, 1): floor(log2) = ex - 1
        exp = (ex.to(torch.int64) - 1).clamp_(min=self.f_emin)
        normal = finite >= math.ldexp(1.0, self.f_emin)
        field = torch.where(normal, exp + self.bias, torch.zeros_like(exp))
        sig = torch.ldexp(finite, (self.m - exp).to(torch.float64)).to(torch.int64)  # exact integer significand
        mant = torch.where(normal, sig - (1 << self.m), sig)
        if self.special == "ieee":
            field = torch.where(inf, torch.full_like(field, self.top), field)
            mant = torch.where(inf, torch.zeros_like(mant), mant)
        if self.nan_mantissa is not None:
            field = torch.where(nan, torch.full_like(field, self.top), field)
            mant = torch.where(nan, torch.full_like(mant, self.nan_mantissa), mant)
        u = (sign << (self.e + self.m)) | (field << self.m) | mant
        return _to_signed(u, self.width)

    @property
    def f_emin(self) -> int:
        return 1 - self.bias

    def is_zero(self, codes):
        return (codes & ((1 << (self.e + self.m)) - 1)) == 0

    def from_codes(self, codes, params, dtype, shape):
        u = codes.to(torch.int64) & ((1 << self.width) - 1)
        sign = (u >> (self.e + self.m)) & 1
        field = (u >> self.m) & self.top
        mant = u & ((1 << self.m) - 1)
        sub = field == 0
        sig = torch.where(sub, mant, mant + (1 << self.m)).to(torch.float64)
        exp = torch.where(sub, torch.full_like(field, self.f_emin), field - self.bias) - self.m
        v = torch.ldexp(sig, exp.to(torch.float64))
        top = field == self.top
        if self.special == "ieee":
            v = torch.where(top & (mant == 0), torch.full_like(v, math.inf), v)
            v = torch.where(top & (mant != 0), torch.full_like(v, math.nan), v)
        elif self.special == "fn":
            v = torch.where(top & (mant == self.nan_mantissa), torch.full_like(v, math.nan), v)
        v = torch.copysign(v, torch.where(sign == 1, -1.0, 1.0).to(torch.float64))
        return v.to(dtype).reshape(shape)


class BlockFPCodec(Codec):
    """Block floating point: ``sign | k`` per value, the shared exponents bit-packed (``exponents``)."""

    name = "block_fp"
    param_names = ("exponents",)

    def __init__(self, fmt: BlockFPFormat, channel_dim: Optional[int] = None):
        super().__init__(fmt, channel_dim)
        self.m, self.block_size = fmt.m, fmt.block_size
        self.ew, self.bias = fmt.config.exponent_width, fmt.config.bias
        self.width = 1 + self.m

    def _exponents(self, x: torch.Tensor) -> torch.Tensor:
        f = self.format
        return f._block_exponents(f._blocks(x.detach().to(torch.float64))).to(torch.int64)  # [..., nb, 1]

    def params(self, x):
        u = self._exponents(x).reshape(-1) + self.bias
        return {"exponents": packing.pack_codes(_to_signed(u, self.ew), self.ew)}

    def codes(self, x):
        q = self.quantize(x).detach().to(torch.float64)
        _check_no_nan(q, f"block_fp {self.to_dict()}")
        s = self._exponents(x)
        qb = self.format._blocks(q)
        k = torch.ldexp(qb.abs(), (self.m - s).to(torch.float64)).to(torch.int64)  # exact, <= 2^m - 1
        u = (torch.signbit(qb).to(torch.int64) << self.m) | k
        return _to_signed(u.reshape(-1), self.width).reshape(x.shape)

    def is_zero(self, codes):
        return (codes & ((1 << self.m) - 1)) == 0

    def from_codes(self, codes, params, dtype, shape):
        numel = math.prod(shape) if len(shape) else 1
        nb = numel // self.block_size
        e = packing.unpack_codes(params["exponents"], self.ew, nb) & ((1 << self.ew) - 1)
        s = (e - self.bias).reshape(-1, 1)
        u = (codes.to(torch.int64) & ((1 << self.width) - 1)).reshape(nb, self.block_size)
        k = (u & ((1 << self.m) - 1)).to(torch.float64)
        v = torch.ldexp(k, (s - self.m).to(torch.float64).expand_as(k))
        v = torch.copysign(v, torch.where((u >> self.m) == 1, -1.0, 1.0).to(torch.float64))
        return v.to(dtype).reshape(shape)


class FormatCodec(Codec):
    """The codec of a format that stores its own codes (``NumberFormat.to_codes`` / ``code_params`` /
    ``from_codes``, e.g. ``dynamic_int8``): a new format needs nothing here."""

    def __init__(self, fmt: NumberFormat, channel_dim: Optional[int] = None):
        super().__init__(fmt, channel_dim)
        self.name = fmt.name
        self.param_names = tuple(fmt.code_param_names)

    def codes(self, x):
        return self.format.to_codes(x.detach(), self.channel_dim)

    def params(self, x):
        return self.format.code_params(x.detach(), self.channel_dim)

    def from_codes(self, codes, params, dtype, shape):
        return self.format.from_codes(codes, dict(params), dtype, tuple(shape), self.channel_dim)


_CODECS = {IntegerFormat: IntegerCodec, ScaledIntegerFormat: ScaledIntegerCodec, MinifloatFormat: MinifloatCodec,
           BlockFPFormat: BlockFPCodec}


def codec_for(spec: Any, channel_dim: Optional[int]) -> "Codec | NumberFormat | None":
    """The codec of a node's format spec (None: float); a NumberFormat without a codec is returned as is."""
    fmt = format_from_spec(spec)
    if fmt is None:
        return None
    cls = _codec_class(fmt)
    return fmt if cls is None else cls(fmt, channel_dim)


def _codec_class(fmt: NumberFormat) -> Optional[type]:
    """The built-in codec of a format, else :class:`FormatCodec` if the format stores its own codes."""
    cls = _CODECS.get(type(fmt))
    return FormatCodec if cls is None and type(fmt).has_codes() else cls


def codec_from_dict(d: Mapping[str, Any], path: str = "format") -> Codec:
    """The codec a manifest entry names; MaseError for a format this version cannot decode."""
    d = dict(d)
    channel_dim = d.pop("channel_dim", None)
    try:
        fmt = format_from_dict(d, path)
    except MaseError as exc:
        raise MaseError(f"{path}: cannot decode this format: {exc}") from None
    cls = _codec_class(fmt)
    if cls is None:
        from ..formats import format_names, get_format

        decodable = [n for n in format_names() if get_format(n) in _CODECS or get_format(n).has_codes()]
        raise MaseError(f"{path}.name = {d.get('name')!r} has no integer-code decoder; decodable: "
                        f"{', '.join(map(repr, decodable))}")
    return cls(fmt, channel_dim)


class TensorRole:
    """What the graph does with one stored tensor: its codec (None: float), pruning mask, group."""

    def __init__(self, codec: "Codec | NumberFormat | None", mask_name: Optional[str], group: str, node: str):
        self.codec, self.mask_name, self.group, self.node = codec, mask_name, group, node


def tensor_roles(graph: MaseGraph) -> dict[str, TensorRole]:
    """``state-dict name -> TensorRole`` of the tensors linear and embedding nodes read.

    A tensor read with two different formats (or masks) cannot be stored as one set of codes: it is
    left out (stored in its own dtype) and a warning names it.
    """
    names = {id(t): n for n, t in reversed(list(graph.gm.state_dict(keep_vars=True).items()))}
    out: dict[str, TensorRole] = {}
    conflicts: set[str] = set()

    def add(pnode: Any, spec: Any, mask_node: Optional[fx.Node], group: str, node: fx.Node,
            channel_dim: Optional[int]) -> None:
        if not isinstance(pnode, fx.Node) or pnode.op != "get_attr":
            return
        t = get_tensor(graph, pnode)
        name = names.get(id(t))
        if name is None:
            return
        mask_name = None
        if mask_node is not None:
            mask_name = names.get(id(get_tensor(graph, mask_node)))
        role = TensorRole(codec_for(spec, channel_dim), mask_name, group, node.name)
        old = out.get(name)
        if old is not None and (old.codec != role.codec or old.mask_name != role.mask_name):
            conflicts.add(name)
        out.setdefault(name, role)

    for node in graph.nodes:
        if node.op != "call_function":
            continue
        kw = node.kwargs
        if is_linear(node):
            add(node.args[1], kw.get("weight_q"), linear_mask_node(node), "non_embedding", node, 0)
            if len(node.args) > 2:
                add(node.args[2], kw.get("bias_q"), None, "non_embedding", node, None)
        elif is_embedding(node):
            add(node.args[0], kw.get("weight_q"), None, "embedding", node, 0)
    for name in conflicts:
        log.warning("export: %s is read with different formats; stored unquantised", name)
        out[name] = TensorRole(None, None, out[name].group, out[name].node)
    return out
