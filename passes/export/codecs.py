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

Other formats (minifloat, block_fp) have no integer-code codec yet: such tensors are stored as
their quantised values in their own dtype (the report marks them ``unpacked``).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
from torch import fx

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph

from ..formats import NumberFormat, format_from_dict, format_from_spec
from ..formats.integer import IntegerFormat, QSpec, quantize_codes_
from ..formats.scaled_integer import ScaledIntegerFormat
from ..transforms.compressed_nodes import get_tensor, is_embedding, is_linear, linear_mask_node

__all__ = ["Codec", "IntegerCodec", "ScaledIntegerCodec", "codec_for", "codec_from_dict", "TensorRole",
           "tensor_roles"]

log = logging.getLogger(__name__)


class Codec:
    """Integer codes of one tensor in one number format (see the module docstring)."""

    name = ""

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
            v = torch.div(x.detach(), f.fixed_scale)
            return v.round_().clamp_(-f.qmax, f.qmax).to(torch.int64)
        s = self._scale64({"amax": self._amax(x).to(torch.float64)}, tuple(x.shape))
        v = x.detach().to(torch.float64) / s
        return v.round_().clamp_(-f.qmax, f.qmax).to(torch.int64)

    def from_codes(self, codes, params, dtype, shape):
        f = self.format
        codes = codes.reshape(shape)
        if f.fixed_scale is not None:
            return codes.to(dtype).mul_(f.fixed_scale)
        return (codes.to(torch.float64) * self._scale64(params, shape)).to(dtype)


_CODECS = {IntegerFormat: IntegerCodec, ScaledIntegerFormat: ScaledIntegerCodec}


def codec_for(spec: Any, channel_dim: Optional[int]) -> "Codec | NumberFormat | None":
    """The codec of a node's format spec (None: float); a NumberFormat without a codec is returned as is."""
    fmt = format_from_spec(spec)
    if fmt is None:
        return None
    cls = _CODECS.get(type(fmt))
    return fmt if cls is None else cls(fmt, channel_dim)


def codec_from_dict(d: Mapping[str, Any], path: str = "format") -> Codec:
    """The codec a manifest entry names; MaseError for a format this version cannot decode."""
    d = dict(d)
    channel_dim = d.pop("channel_dim", None)
    try:
        fmt = format_from_dict(d, path)
    except MaseError as exc:
        raise MaseError(f"{path}: cannot decode this format: {exc}") from None
    cls = _CODECS.get(type(fmt))
    if cls is None:
        raise MaseError(f"{path}.name = {d.get('name')!r} has no integer-code decoder; decodable: "
                        "'integer', 'scaled_integer'")
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
