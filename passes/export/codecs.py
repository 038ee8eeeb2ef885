"""The integer codes a compact export stores for each tensor, and which tensor uses which format.

Formats come from the number-format interface (:mod:`passes.formats`: a node's kwarg spec ->
:func:`~passes.formats.format_from_spec`), and so does their storage: a format that implements
:meth:`~passes.formats.NumberFormat.to_codes`, ``code_params``, ``from_codes`` and ``code_is_zero``
(each in its own file under ``passes/formats/``) is stored as codes; this module names no format.
A :class:`Codec` is one such format with the ``channel_dim`` of the tensor it stores: ``codes(x)``
(int64 codes), ``params(x)`` (the per-tensor arrays the codes need, e.g. scales, named as the
format's ``code_param_names``), ``from_codes(codes, params, dtype, shape)`` (exactly
``format.quantize(x)``), ``bits`` (stored bits per code: ``format.bits_per_value()``) and
``to_dict()`` (the format's dict and ``channel_dim``, in the manifest). What each built-in format
stores is documented beside its code methods.

A value is a *zero* (for the masked encodings' non-zero bits, :meth:`Codec.is_zero`) when it
equals 0: ``+0.0`` and ``-0.0`` alike, as the ``cost`` pass counts non-zeros. Pruned positions are
stored as code 0 (``+0.0``); a kept ``-0.0`` keeps its sign except in the ``mask_nonzero``
encoding, which stores no codes for zeros (it comes back as ``+0.0``, an equal value).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
from torch import fx

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph

from ..formats import NumberFormat, format_from_dict, format_from_spec
from ..transforms.compressed_nodes import get_tensor, is_embedding, is_linear, linear_mask_node

__all__ = ["Codec", "codec_for", "codec_from_dict", "TensorRole", "tensor_roles"]

log = logging.getLogger(__name__)


class Codec:
    """The integer codes of one tensor in one number format, through the format's code methods."""

    def __init__(self, fmt: NumberFormat, channel_dim: Optional[int] = None):
        if not type(fmt).has_codes():
            raise MaseError(f"the {fmt.name!r} format has no integer codes (NumberFormat.to_codes)")
        self.format, self.channel_dim = fmt, channel_dim

    @property
    def name(self) -> str:
        return self.format.name

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the arrays :meth:`params` returns (stored beside the codes, handed back to ``from_codes``)."""
        return tuple(self.format.code_param_names)

    @property
    def bits(self) -> int:
        return int(self.format.bits_per_value())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.format.quantize(x, channel_dim=self.channel_dim)

    def params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.format.code_params(x.detach(), self.channel_dim)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.format.to_codes(x.detach(), self.channel_dim)

    def is_zero(self, codes: torch.Tensor) -> torch.Tensor:
        """Where the codes decode to a zero value (``+0.0`` or ``-0.0``)."""
        return self.format.code_is_zero(codes)

    def from_codes(self, codes: torch.Tensor, params: Mapping[str, torch.Tensor], dtype: torch.dtype,
                   shape: tuple[int, ...]) -> torch.Tensor:
        return self.format.from_codes(codes, dict(params), dtype, tuple(shape), self.channel_dim)

    def to_dict(self) -> dict[str, Any]:
        return {**self.format.to_dict(), "channel_dim": self.channel_dim}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))


def codec_for(spec: Any, channel_dim: Optional[int]) -> "Codec | NumberFormat | None":
    """The codec of a node's format spec (None: float); a NumberFormat without integer codes is returned as is."""
    fmt = format_from_spec(spec)
    if fmt is None:
        return None
    return Codec(fmt, channel_dim) if type(fmt).has_codes() else fmt


def codec_from_dict(d: Mapping[str, Any], path: str = "format") -> Codec:
    """The codec a manifest entry names; MaseError for a format this version cannot decode."""
    d = dict(d)
    channel_dim = d.pop("channel_dim", None)
    try:
        fmt = format_from_dict(d, path)
    except MaseError as exc:
        raise MaseError(f"{path}: cannot decode this format: {exc}") from None
    if not type(fmt).has_codes():
        from ..formats import format_names, get_format

        decodable = [n for n in format_names() if get_format(n).has_codes()]
        raise MaseError(f"{path}.name = {d.get('name')!r} has no integer-code decoder; decodable: "
                        f"{', '.join(map(repr, decodable))}")
    return Codec(fmt, channel_dim)


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
