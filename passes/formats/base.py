"""The number-format interface: how one tensor role (``data_in`` / ``weight`` / ``bias`` / ``data_out``)
is stored and rounded, registered by name.

A format is two classes in one file ``passes/formats/<name>.py``:

* a :class:`FormatConfig` dataclass (its fields are the format's parameters; ``name`` is a ClassVar,
  the registry key), validated at the edge and round-tripping to dict/TOML like every config;
* a :class:`NumberFormat` built from a *concrete* config, giving the quantiser, its straight-through
  gradient, a slow reference for tests, the bits per stored value and the per-tensor/per-block
  overhead bits, and a dict form.

Registering (``@register_format(MyConfig)`` on the format class) and importing the module from
``passes/formats/__init__.py`` is all it takes: the ``quantize`` pass, ``cost``, the weight cache,
the activation path, saved graphs and reports find formats through :func:`get_format`,
:func:`format_names` and :func:`format_from_dict`. A format that also implements the integer-code
methods (:meth:`NumberFormat.to_codes`, ``code_params``, ``from_codes``, ``code_is_zero``) is written
by the compact export as bit-packed codes and read back bit for bit, with no other file to change.

Data-dependent parameters: a config may leave a parameter to be chosen from data (e.g. integer's
``frac_width = "auto"``, scaled_integer's activation ``scale``). :meth:`FormatConfig.resolve` turns
such a config into a concrete one, given the tensor (for stored weights) or the calibrated absolute
maximum (for activations, from the ``calibrate`` pass); the ``quantize`` pass calls it once, when it
runs, and records the concrete values in the graph's history, so a replay rebuilds the same graph.

Graph nodes hold formats as plain, hashable, printable values (:meth:`NumberFormat.spec`): a tuple
``(name, ((field, value), ...))`` -- except integer, which keeps its historical
``(width, frac_width, floor)`` -- and :func:`format_from_spec` turns one back into a (cached) format.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from mase_lite.config import Config, _suggest
from mase_lite.errors import ConfigError, MaseError
from mase_lite.registry import Registry

__all__ = [
    "ROLES",
    "STE_MODES",
    "FormatConfig",
    "NumberFormat",
    "register_format",
    "get_format",
    "get_config_cls",
    "format_names",
    "format_config_from_dict",
    "format_from_dict",
    "format_from_spec",
    "check_ste",
    "signed_codes",
    "check_no_nan",
]

#: The tensor roles a format can be given for.
ROLES = ("data_in", "weight", "bias", "data_out")
#: Straight-through gradient modes: ``plain`` = identity, ``clipped`` = zero where saturated.
STE_MODES = ("plain", "clipped")


def check_ste(ste: object, path: str = "ste") -> str:
    """``ste`` if it is one of :data:`STE_MODES`, else a ConfigError naming ``path``."""
    if ste not in STE_MODES:
        raise ConfigError(f"{path} = {ste!r} is not valid; choose one of: {', '.join(map(repr, STE_MODES))}")
    return ste  # type: ignore[return-value]


def signed_codes(u: Tensor, width: int) -> Tensor:
    """Unsigned ``width``-bit fields (e.g. ``sign | exponent | mantissa``) as the signed codes the
    compact export bit-packs (the same ``width`` bits in two's complement; 1-bit fields stay unsigned)."""
    if width == 1:
        return u
    return torch.where(u >= (1 << (width - 1)), u - (1 << width), u)


def check_no_nan(q: Tensor, what: str) -> None:
    """A MaseError unless ``q`` is free of NaN (for formats without a NaN code; ``what`` names the format)."""
    if bool(torch.isnan(q).any()):
        raise MaseError(f"{what} has no code for NaN; a tensor holding NaN cannot be stored as codes")


@dataclasses.dataclass
class FormatConfig(Config):
    """Parameters of one number format (fields) and its registry key (``name``, a ClassVar)."""

    name: ClassVar[str] = ""
    #: Whether search samples a fraction width for this format (``integer``'s fixed point).
    takes_frac_width: ClassVar[bool] = False

    @classmethod
    def search_fields(cls, role: str, width: int, *, frac_width: Any = None,
                      granularity: str = "per_channel") -> Optional[dict[str, Any]]:
        """The fields of ``role`` for a search choice of ``width`` bits (``search/space.py``): a dict of
        ``<field>: value`` (empty: the format's defaults), or None if the format does not take the role.
        A width the format cannot take is a ConfigError. Default: ``{"width": width}``."""
        return {"width": int(width)}

    # Error paths follow Config's convention: a field is named ``f"{path}.{field}"``.
    def validate(self, path: str = "") -> None:
        """Raise a ConfigError naming the field and its valid range. Override."""

    def is_concrete(self) -> bool:
        """Whether every parameter is fixed (no ``"auto"``, no scale still to be calibrated)."""
        return True

    def resolve(self, *, tensor: Optional[Tensor] = None, absmax: Optional[float] = None,
                path: str = "") -> "FormatConfig":
        """A concrete config: data-dependent parameters chosen from ``tensor`` (a stored weight or
        bias, whose current values the format may also read at run time) or ``absmax`` (the
        calibrated absolute maximum of an activation; ``None`` if not calibrated). A config that
        needs data it was not given raises a ConfigError naming ``path`` and how to calibrate."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, with ``name`` first."""
        return {"name": self.name, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, path: str = ""):  # type: ignore[override]
        """Build and validate from a mapping; a ``name`` key, if present, must be this format's."""
        data = dict(data or {})
        if "name" in data:
            name = data.pop("name")
            if name != cls.name:
                raise ConfigError(f"{path + '.' if path else ''}name = {name!r} does not match the {cls.name!r} "
                                  f"format's config")
        return super().from_dict(data, path)


class NumberFormat(ABC):
    """A number format: how one tensor role (data_in / weight / bias / data_out) is stored and rounded.

    Contract: ``quantize(x)`` returns a tensor of ``x``'s shape and dtype on the format's grid and is
    idempotent; ``reference(x)`` computes the same values by a straightforward (slow, obviously
    correct) method, for tests; ``quantize_ste(x, ste)`` is ``quantize`` in the forward pass with a
    straight-through gradient (``"plain"``: identity; ``"clipped"``: zero where :meth:`saturated`).
    ``channel_dim``: the output-channel dimension of a weight (0 for linear and embedding weights), for
    formats with per-channel parameters; ``None`` for activations. Formats are immutable and hashable
    by :meth:`spec`.
    """

    config_cls: ClassVar[type[FormatConfig]]
    name: ClassVar[str]
    #: Whether ``quantize`` acts element by element (so ``q(W)[i] == q(W[i])``: an embedding may
    #: quantise only the rows it looks up). Formats with shared scales or exponents set False.
    elementwise: ClassVar[bool] = False
    #: The tensor roles the format can be given for (the ``quantize`` pass refuses others by name).
    roles: ClassVar[tuple[str, ...]] = ROLES
    #: A short label for summaries and tables (``int8``, ``sint8``, ...: the label, then the bits).
    short_name: ClassVar[str] = ""
    #: Whether ONNX Runtime runs this format as integer kernels (``mase-lite export --deployable``;
    #: every other format is refused there, with the node and the reason).
    deployable: ClassVar[bool] = False
    #: Names of the per-tensor arrays :meth:`code_params` returns (formats that store integer codes).
    code_param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: FormatConfig) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        if not config.is_concrete():
            raise ConfigError(f"{self.name} format {config.to_dict()} still has data-dependent parameters; "
                              f"resolve it first (FormatConfig.resolve)")
        self.config = config

    # ---------------------------------------------------------------- the quantiser
    @abstractmethod
    def quantize(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """``x`` rounded onto the format's grid (same shape and dtype); no gradient needed."""

    def check_shape(self, shape: tuple[int, ...], path: str = "") -> None:
        """Raise a ConfigError naming ``path`` if this format cannot hold a tensor of ``shape``
        (e.g. block_fp's block size must divide the last dimension). Default: any shape."""

    def saturated(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """Bool mask: where ``x`` lies outside the representable range (the clipped STE's zeros).
        Default: nowhere."""
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)

    def quantize_ste(self, x: Tensor, ste: str = "plain", *, channel_dim: Optional[int] = None) -> Tensor:
        """:meth:`quantize` with a straight-through gradient (see the class docstring)."""
        check_ste(ste)
        if torch.is_grad_enabled() and x.requires_grad:
            return _STE.apply(x, self, ste == "clipped", channel_dim)
        return self.quantize(x, channel_dim=channel_dim)

    @abstractmethod
    def reference(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        """The same values as :meth:`quantize`, computed the obvious way (for tests)."""

    # ---------------------------------------------------------------- storage cost
    @abstractmethod
    def bits_per_value(self) -> int:
        """Stored bits per element."""

    def overhead_bits(self, shape: tuple[int, ...], *, channel_dim: Optional[int] = None) -> int:
        """Bits stored once per tensor/channel/block besides the elements (scales, shared exponents)."""
        return 0

    def exact_linear(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_format: Any,
                     weight_mask: Optional[Tensor] = None) -> Optional[Tensor]:
        """A linear layer with this input format and ``weight_format`` computed as the deployed integer
        kernel computes it (used in inference, with no activation pruning), or None: the generic
        path, ``F.linear(q(x), q(w) * mask, b)``. Default None."""
        return None

    # ---------------------------------------------------------------- integer codes (compact export)
    # A format stores a tensor as int64 codes (:meth:`bits_per_value` bits each, as two's-complement
    # bit fields: see :func:`signed_codes`) plus the arrays of :attr:`code_param_names`, and decodes
    # them back to exactly ``quantize(x)``. The compact export (:mod:`passes.export.codecs`) knows no
    # format by name: it calls these methods. A format without them is stored in its own dtype.
    def to_codes(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        """The integer codes of ``x`` (int64, ``x``'s shape)."""
        raise NotImplementedError(f"the {self.name!r} format has no integer codes")

    def code_params(self, x: Tensor, channel_dim: Optional[int]) -> dict[str, Tensor]:
        """The arrays the codes of ``x`` need to be decoded (e.g. scales), named as :attr:`code_param_names`."""
        return {}

    def from_codes(self, codes: Tensor, params: dict[str, Tensor], dtype: torch.dtype, shape: tuple[int, ...],
                   channel_dim: Optional[int]) -> Tensor:
        """``quantize(x)`` back from :meth:`to_codes` (any shape of ``shape``'s size) and :meth:`code_params`."""
        raise NotImplementedError(f"the {self.name!r} format has no integer codes")

    def code_is_zero(self, codes: Tensor) -> Tensor:
        """Where the codes decode to a zero value, ``+0.0`` or ``-0.0`` (the masked encodings store no
        codes for zeros; a pruned position is stored as code 0, which must decode to ``+0.0``).
        Default: code 0 (formats whose ``-0.0`` has its own code override this)."""
        return codes == 0

    @classmethod
    def has_codes(cls) -> bool:
        """Whether the format implements :meth:`to_codes` / :meth:`from_codes` itself."""
        return cls.to_codes is not NumberFormat.to_codes

    # ---------------------------------------------------------------- plain forms
    def to_dict(self) -> dict[str, Any]:
        """For reports and saved history: ``{"name": ..., <fields>}``."""
        return self.config.to_dict()

    def spec(self) -> tuple:
        """The hashable plain-value form stored in graph-node kwargs (see :func:`format_from_spec`)."""
        d = self.config.to_dict()
        d.pop("name")
        return (self.name, tuple(d.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberFormat) and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class _STE(torch.autograd.Function):
    """Generic straight-through estimator for any :class:`NumberFormat`."""

    @staticmethod
    def forward(ctx, x, fmt: NumberFormat, clipped: bool, channel_dim):  # type: ignore[override]
        ctx.clipped = clipped
        if clipped:
            ctx.save_for_backward(~fmt.saturated(x, channel_dim=channel_dim))
        with torch.no_grad():
            return fmt.quantize(x, channel_dim=channel_dim)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.clipped:
            (inside,) = ctx.saved_tensors
            grad = grad * inside
        return grad, None, None, None


# --------------------------------------------------------------------------------- registry

#: name -> format class; a name taken by another class is a DuplicateRegistration (mase_lite.registry).
_FORMATS: Registry[type[NumberFormat]] = Registry("number format")


def register_format(config_cls: type[FormatConfig]) -> Callable[[type[NumberFormat]], type[NumberFormat]]:
    """Class decorator: register a :class:`NumberFormat` subclass under ``config_cls.name``."""
    name = config_cls.name
    if not name:
        raise ValueError(f"{config_cls.__name__} has no name")

    def deco(fmt_cls: type[NumberFormat]) -> type[NumberFormat]:
        _FORMATS.register(name, fmt_cls)  # first: a taken name changes nothing
        fmt_cls.config_cls = config_cls
        fmt_cls.name = name
        format_from_spec.cache_clear()
        return fmt_cls

    return deco


def _load_builtin() -> None:
    import passes.formats  # noqa: F401  (importing the package registers the built-in formats)


def format_names() -> tuple[str, ...]:
    """The registered format names, sorted."""
    _load_builtin()
    return tuple(sorted(_FORMATS))


def get_format(name: str, path: str = "name") -> type[NumberFormat]:
    """The format class registered as ``name``; a ConfigError naming ``path`` and listing the valid
    names otherwise."""
    _load_builtin()
    if not isinstance(name, str) or name not in _FORMATS:
        hint = _suggest(name, list(_FORMATS)) if isinstance(name, str) else ""
        raise ConfigError(f"{path} = {name!r} is not a known number format{hint}; choose one of: "
                          f"{', '.join(map(repr, format_names()))}")
    return _FORMATS[name]


def get_config_cls(name: str, path: str = "name") -> type[FormatConfig]:
    """The config class of format ``name`` (its dataclass fields are the format's parameters)."""
    return get_format(name, path).config_cls


def format_config_from_dict(data: Mapping[str, Any], path: str = "") -> FormatConfig:
    """A validated :class:`FormatConfig` from ``{"name": ..., <fields>}`` (may still be data-dependent)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'format'} must be a table/dict with a 'name', got {data!r}")
    p = f"{path}." if path else ""
    if "name" not in data:
        raise ConfigError(f"missing config key {p}name; choose one of: {', '.join(map(repr, format_names()))}")
    cls = get_config_cls(data["name"], f"{p}name")
    return cls.from_dict(data, path)


def format_from_dict(data: Mapping[str, Any], path: str = "") -> NumberFormat:
    """A :class:`NumberFormat` from ``{"name": ..., <fields>}``; unknown names and bad fields are
    ConfigErrors naming the field and the valid values. The config must be concrete."""
    cfg = format_config_from_dict(data, path)
    if not cfg.is_concrete():
        raise ConfigError(f"{path or 'format'} = {cfg.to_dict()} has data-dependent parameters; "
                          "resolve it (FormatConfig.resolve) before building the format")
    return get_format(cfg.name)(cfg)


@functools.lru_cache(maxsize=4096)
def _from_named_spec(spec: tuple) -> NumberFormat:
    name, items = spec
    return format_from_dict({"name": name, **dict(items)})


def format_from_spec(spec: Any) -> Optional[NumberFormat]:
    """The format of a graph-node kwarg: ``None`` -> None; a :class:`NumberFormat` -> itself; a
    ``(name, ((field, value), ...))`` tuple -> that format; an integer ``(width, frac_width[, floor])``
    tuple -> the ``integer`` format. Cached: cheap to call on every forward."""
    if spec is None or isinstance(spec, NumberFormat):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        return _from_named_spec(spec)
    from .integer import IntegerFormat

    return IntegerFormat.from_qspec(spec)


format_from_spec.cache_clear = _from_named_spec.cache_clear  # type: ignore[attr-defined]
