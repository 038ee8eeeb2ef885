"""``quantize``: quantisation of linear, embedding and attention nodes to any registered number format.

Config (MASE's ``quantize_transform_pass`` format)::

    [passes.quantize]
    by = "type"                       # "type" | "name" | "regex_name"
    [passes.quantize.default.config]
    name = "NA"                       # not quantised ("NA", "none" or no name: skip)
    [passes.quantize.linear.config]
    name = "integer"                  # a format of passes.formats.format_names()
    data_in_width = 8                 # <role>_<field>: the format's fields per role;
    data_in_frac_width = 4            # a role without any key stays float32
    weight_width = 8
    weight_frac_width = 4
    bias_width = 8
    bias_frac_width = 4
    # data_out_width / data_out_frac_width, floor = true, ste = "clipped" are optional

Formats (:mod:`passes.formats`; ``format_names()`` lists them, each config class's dataclass
fields are its parameters). Within an entry's ``config`` table:

* ``name``: the format of every role of the entry; ``ste``: ``"plain"`` (as MASE) or ``"clipped"``;
* ``<role>_<field>`` for the roles ``data_in``, ``weight``, ``bias``, ``data_out``: a role is
  quantised iff at least one of its keys is given; every field without a default must then be
  given (integer: ``<role>_width`` and ``<role>_frac_width``);
* ``<field>`` without a role prefix: the default of that field for every quantised role (e.g.
  integer's ``floor``, scaled_integer's ``granularity``);
* ``<role> = {name = ..., <field> = ...}``: a sub-table giving that role its own format (e.g.
  minifloat weights with scaled-integer activations); its ``name`` defaults to the entry's.

Examples::

    [passes.quantize.linear.config]      # int8 weights with per-channel scales, calibrated inputs
    name = "scaled_integer"
    weight_width = 8
    weight_granularity = "per_channel"
    data_in_width = 8                    # its scale: from the calibrate pass

    [passes.quantize.linear.config]      # fixed point, fraction bits chosen from the data
    name = "integer"
    weight_width = 8
    weight_frac_width = "auto"           # per tensor, from max |w|
    data_in_width = 8
    data_in_frac_width = "auto"          # from the calibrated range

Data-dependent choices (``"auto"`` fraction widths, activation scales) are made when the pass runs:
weights from the weight tensor, activations from the ranges the ``calibrate`` pass recorded in the
node metadata (no calibration: one ConfigError, graph unchanged). The concrete formats are recorded
in the history config under ``resolved`` (``{node: {role: {"name": ..., <fields>}}}``), so
``MaseGraph.load`` replays exactly the same graph; a ``resolved`` entry overrides the entry's format
for that node and role.

Entries: with ``by = "type"`` the keys are op types -- ``linear`` (inputs, weight, bias, output),
``embedding`` (the table's rows by ``weight_*``, the output by ``data_out_*``; its integer indices
are not quantised), ``attention`` (``aten.scaled_dot_product_attention``: query, key and value by
``data_in_*``, the output by ``data_out_*``; alias ``scaled_dot_product_attention``); ``default``
applies to nodes of these types without an entry. With ``by = "name"`` the keys are node names or
module paths (``bert.encoder.layer.0.attention.self.query``); with ``by = "regex_name"`` regular
expressions ``re.match``-ed (anchored at the start, as MASE) against node names and module paths,
first matching entry winning. A name or regex that matches no quantisable node is an error.

Semantics: :mod:`passes.formats` (integer: ``q(x) = clamp(round(x 2^f), -2^(w-1), 2^(w-1)-1) / 2^f``,
round half to even or ``floor``); straight-through gradients, ``ste = "plain"`` as MASE or
``"clipped"``. The graph stays trainable: quantisation-aware fine-tuning just trains it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal, Mapping, Optional

from torch import fx

from mase_lite.config import Config, check_choice, unknown_key_error
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph

from ..formats import ROLES, FormatConfig, format_config_from_dict, format_names, get_config_cls
from ..formats.base import check_ste
from ..formats.integer import IntegerFormat
from ..registry import PassResult, register_pass
from .compressed_nodes import (
    as_compressed_embedding,
    as_compressed_linear,
    assign_by_key,
    as_compressed_sdpa,
    check_regex,
    get_tensor,
    is_attention,
    is_embedding,
    is_linear,
    module_path,
    refresh_shared_inputs,
    update_kwargs,
)

log = logging.getLogger(__name__)

OP_TYPES = ("linear", "embedding", "attention")
TYPE_ALIASES = {"scaled_dot_product_attention": "attention"}
SKIP_NAMES = ("NA", "none")
#: Which roles each op type uses (others given in its entry are ignored, as before).
OP_ROLES = {"linear": ("data_in", "weight", "bias", "data_out"), "embedding": ("weight", "data_out"),
            "attention": ("data_in", "data_out")}
#: The kwarg of each role on a compressed node.
ROLE_KWARGS = {"data_in": "data_in", "weight": "weight_q", "bias": "bias_q", "data_out": "data_out"}
#: Calibration key (``calibrate`` pass annotations) of each activation role.
WEIGHT_ROLES = ("weight", "bias")


def quantizer_names() -> tuple[str, ...]:
    """The format names a quantize entry accepts (the registered formats)."""
    return format_names()


def __getattr__(name: str):  # QUANTIZER_NAMES follows the registry (formats may register late)
    if name == "QUANTIZER_NAMES":
        return format_names()
    raise AttributeError(name)


def _rename(exc: ConfigError, path: str, role: str) -> ConfigError:
    """Name a role's field by its flat key: ``<path>.<role>.<field>`` -> ``<path>.<role>_<field>``."""
    return ConfigError(str(exc).replace(f"{path}.{role}.", f"{path}.{role}_"))


def _sort_entry_keys(
    data: Mapping[str, Any], fields: list[str], path: str, valid: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Mapping[str, Any]]]:
    """An entry's keys (``name``/``ste`` taken out) as (shared fields, ``<role>_<field>`` keys per role,
    role tables); an unknown key is a ConfigError listing ``valid``."""
    p = f"{path}." if path else ""
    shared: dict[str, Any] = {}
    per_role: dict[str, dict[str, Any]] = {}
    tables: dict[str, Mapping[str, Any]] = {}
    for key, value in data.items():
        key = str(key)
        if key in ROLES and (isinstance(value, Mapping) or key not in fields):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{p}{key} must be a table {{name = ..., <field> = ...}}, got {value!r}")
            tables[key] = value
            continue
        if key in fields:
            shared[key] = value
            continue
        role = next((r for r in ROLES if key.startswith(r + "_") and key[len(r) + 1:] in fields), None)
        if role is None:
            raise unknown_key_error(path, key, valid)
        per_role.setdefault(role, {})[key[len(role) + 1:]] = value
    return shared, per_role, tables


def _role_formats(shared: dict[str, Any], per_role: dict[str, dict[str, Any]], tables: dict[str, Mapping[str, Any]],
                  fcls: type, fmt_name: str, path: str) -> dict[str, FormatConfig]:
    """The format config of each role given by a table or by ``<role>_<field>`` keys (plus the shared fields)."""
    p = f"{path}." if path else ""
    roles: dict[str, FormatConfig] = {}
    for role in ROLES:
        if role in tables:
            if role in per_role:
                raise ConfigError(f"{p}{role} is given both as a table and by {role}_* keys; use one")
            sub = dict(tables[role])
            sub.setdefault("name", fmt_name)
            roles[role] = format_config_from_dict(sub, f"{p}{role}")
            continue
        if role not in per_role:
            continue
        given = {**shared, **per_role[role]}
        required = [f.name for f in dataclasses.fields(fcls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [f for f in required if f not in given]
        if missing:
            need = " and ".join(f"{role}_{f}" for f in required)
            raise ConfigError(f"missing config key {p}{role}_{missing[0]} (the {fmt_name!r} format needs {need} "
                              f"together)")
        try:
            roles[role] = fcls.from_dict(given, f"{p}{role}")
        except ConfigError as exc:
            raise _rename(exc, path, role) from None
    return roles


@dataclasses.dataclass
class QuantEntryConfig(Config):
    """One entry's ``config`` table: the format ``name``, ``ste``, and the format of each role."""

    name: Optional[str] = None
    ste: Literal["plain", "clipped"] = "plain"
    roles: dict[str, FormatConfig] = dataclasses.field(default_factory=dict)
    #: keys without a role prefix, kept to write the table back as given
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: str = dataclasses.field(default="", compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, path: str = "") -> "QuantEntryConfig":
        if isinstance(data, cls):
            return data
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'config'} must be a table (e.g. {{name = \"integer\", ...}}), got {data!r}")
        data = dict(data or {})
        p = f"{path}." if path else ""
        name = data.pop("name", None)
        ste = check_ste(data.pop("ste", "plain"), f"{p}ste")
        if name is not None:
            check_choice(f"{p}name", name, (*format_names(), *SKIP_NAMES))
        active = name is not None and name not in SKIP_NAMES
        # an inactive entry is read as integer keys (as before: validated, not applied)
        fmt_name = name if active else "integer"
        fcls = get_config_cls(fmt_name)
        fields = [f.name for f in dataclasses.fields(fcls)]
        valid = list(dict.fromkeys(["name", "ste", *ROLES, *fields, *(f"{r}_{f}" for r in ROLES for f in fields)]))
        shared, per_role, tables = _sort_entry_keys(data, fields, path, valid)
        roles = _role_formats(shared, per_role, tables, fcls, fmt_name, path)
        if active and not roles:
            keys = ", ".join(f"{r}_{f}" for r in ROLES for f in fields[:2])
            raise ConfigError(f"{p}name = {name!r} but no format is given; set keys of at least one role ({keys}, "
                              f"...) or a role table")
        return cls(name=name, ste=ste, roles=roles, shared=shared, path=path)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.name is None else {"name": self.name}
        fmt_name = self.name if self.active else "integer"
        for role in ROLES:
            cfg = self.roles.get(role)
            if cfg is None:
                continue
            d = cfg.to_dict()
            if cfg.name != fmt_name:
                out[role] = d
                continue
            d.pop("name")
            defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
            keys = 0
            for k, v in d.items():
                if k in self.shared:
                    if self.shared[k] == v:
                        continue
                elif defaults.get(k, dataclasses.MISSING) == v:
                    continue  # the field's default: implied
                if v is not None:
                    out[f"{role}_{k}"] = v
                    keys += 1
            if not keys and not any(k in self.shared for k in d):
                out[role] = {}  # every field at its default (e.g. dynamic_int8): the role is still quantised
        for k, v in self.shared.items():
            out[k] = v
        if fmt_name == "integer" and "floor" not in out:  # the historical form always names floor
            out["floor"] = all(getattr(c, "floor", False) for c in self.roles.values()) if self.roles else False
            if any(getattr(c, "floor", False) != out["floor"] for c in self.roles.values()):
                del out["floor"]
        out["ste"] = self.ste
        return out

    @property
    def active(self) -> bool:
        return self.name is not None and self.name not in SKIP_NAMES

    def spec(self, pair: str) -> Optional[tuple]:
        """The graph-node form of the format of ``pair`` (concrete configs only), or None."""
        cfg = self.roles.get(pair)
        if cfg is None:
            return None
        from ..formats import get_format

        return get_format(cfg.name)(cfg).spec()


# the historical name of the entry config
IntegerQuantConfig = QuantEntryConfig


@dataclasses.dataclass
class QuantEntry(Config):
    """An entry of the quantize config: ``{config = {...}}``."""

    config: QuantEntryConfig = dataclasses.field(default_factory=QuantEntryConfig)


@dataclasses.dataclass
class QuantizeConfig(Config):
    """The ``quantize`` pass config; entries are the MASE-style top-level keys other than
    ``by``/``default``/``resolved``; ``resolved`` holds the concrete formats of data-dependent choices
    (the pass's decision, recorded by the runner; see the module docstring)."""

    by: Literal["type", "name", "regex_name"] = "type"
    default: Optional[QuantEntry] = None
    entries: dict[str, QuantEntry] = dataclasses.field(default_factory=dict)
    resolved: Optional[dict[str, dict[str, FormatConfig]]] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, path: str = "") -> "QuantizeConfig":
        if isinstance(data, cls):
            return data
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'quantize'} must be a table/dict, got {data!r}")
        p = f"{path}." if path else ""
        by = check_choice(f"{p}by", data.get("by", "type"), ("type", "name", "regex_name"))
        default = None
        if data.get("default") is not None:
            default = QuantEntry.from_dict(data["default"], path=f"{p}default")
        resolved = None
        if data.get("resolved") is not None:
            resolved = _parse_resolved(data["resolved"], f"{p}resolved")
        entries: dict[str, QuantEntry] = {}
        for key, value in data.items():
            if key in ("by", "default", "resolved"):
                continue
            key = str(key)
            if by == "type" and key not in OP_TYPES and key not in TYPE_ALIASES:
                raise unknown_key_error(path, key, ["by", "default", "resolved", *OP_TYPES])
            if by == "regex_name":
                check_regex(f"{p}{key}", key)
            entries[key] = QuantEntry.from_dict(value, path=f"{p}{key}")
        if by == "type":
            canon = [TYPE_ALIASES.get(k, k) for k in entries]
            dup = {k for k in canon if canon.count(k) > 1}
            if dup:
                raise ConfigError(f"{p}{sorted(dup)[0]} is given twice (once under an alias)")
        obj = cls(by=by, default=default, entries=entries, resolved=resolved)
        obj.validate(path)
        return obj

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"by": self.by}
        if self.default is not None:
            out["default"] = self.default.to_dict()
        for k, v in self.entries.items():
            out[k] = v.to_dict()
        if self.resolved:
            out["resolved"] = {n: {r: c.to_dict() for r, c in roles.items()} for n, roles in self.resolved.items()}
        return out


def _parse_resolved(data: Any, path: str) -> dict[str, dict[str, FormatConfig]]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must be a table {{node = {{role = {{name = ..., ...}}}}}}, got {data!r}")
    out: dict[str, dict[str, FormatConfig]] = {}
    for node, roles in data.items():
        if not isinstance(roles, Mapping):
            raise ConfigError(f"{path}.{node} must be a table of roles, got {roles!r}")
        out[str(node)] = {}
        for role, fmt in roles.items():
            check_choice(f"{path}.{node}.{role}", role, ROLES) if role not in ROLES else None
            cfg = format_config_from_dict(fmt, f"{path}.{node}.{role}")
            if not cfg.is_concrete():
                raise ConfigError(f"{path}.{node}.{role} = {cfg.to_dict()} must be concrete (no 'auto', a scale)")
            out[str(node)][str(role)] = cfg
    return out


def _op_type(node: fx.Node) -> Optional[str]:
    if is_linear(node):
        return "linear"
    if is_embedding(node):
        return "embedding"
    if is_attention(node):
        return "attention"
    return None


def _assign(graph: MaseGraph, config: QuantizeConfig, nodes: list[fx.Node]) -> dict[fx.Node, IntegerQuantConfig]:
    """Which entry applies to each quantisable node (validated against the graph first)."""
    out: dict[fx.Node, IntegerQuantConfig] = {}
    if config.by == "type":
        by_type = {TYPE_ALIASES.get(k, k): e.config for k, e in config.entries.items()}
        for n in nodes:
            entry = by_type.get(_op_type(n))
            if entry is None and config.default is not None:
                entry = config.default.config
            if entry is not None:
                out[n] = entry
        return out
    entries = {key: entry.config for key, entry in config.entries.items()}
    out = assign_by_key(graph, nodes, entries, config.by == "regex_name", "quantize", "quantisable node")
    if config.default is not None:
        for n in nodes:
            out.setdefault(n, config.default.config)
    return out


def node_precision(node: fx.Node) -> dict[str, Any]:
    """``{data_in, weight, bias, data_out: format dict | None}`` of a node: integer formats as
    ``{"width", "frac_width", "floor"}`` (as always), every other format as ``{"name", <fields>}``."""
    from ..formats import format_from_spec

    kw = node.kwargs
    out: dict[str, Any] = {}
    for name, kwname in ROLE_KWARGS.items():
        fmt = format_from_spec(kw.get(kwname))
        if fmt is None:
            out[name] = None
        elif isinstance(fmt, IntegerFormat):
            w, f, floor = fmt.qspec
            out[name] = {"width": w, "frac_width": f, "floor": bool(floor)}
        else:
            out[name] = fmt.to_dict()
    return out


def _role_tensor(graph: MaseGraph, node: fx.Node, role: str):
    """The stored tensor of a weight/bias role (None for activations or a missing bias)."""
    if role not in WEIGHT_ROLES:
        return None
    if is_linear(node):
        idx = 1 if role == "weight" else 2
        arg = node.args[idx] if len(node.args) > idx else None
    elif is_embedding(node) and role == "weight":
        arg = node.args[0]
    else:
        return None
    return get_tensor(graph, arg) if isinstance(arg, fx.Node) else None


def calibrated_absmax(graph: MaseGraph, node: fx.Node, role: str) -> Optional[float]:
    """The ``absmax`` the ``calibrate`` pass recorded for ``role`` of ``node`` (None if none)."""
    rng = graph.meta(node).annotations.get("calibration", {}).get(role)
    return None if rng is None else float(rng["absmax"])


def _activation_shape(graph: MaseGraph, node: fx.Node, role: str) -> Optional[tuple[int, ...]]:
    """The last dimension of a linear's input/output or an embedding's output, as a shape (None if unknown)."""
    weight = _role_tensor(graph, node, "weight")
    if weight is None or weight.dim() != 2:
        return None
    if is_linear(node) and role in ("data_in", "data_out"):
        return (int(weight.shape[1] if role == "data_in" else weight.shape[0]),)
    if is_embedding(node) and role == "data_out":
        return (int(weight.shape[1]),)
    return None


def _resolve(graph: MaseGraph, node: fx.Node, role: str, cfg: FormatConfig, path: str) -> FormatConfig:
    from ..formats import get_format

    tensor = _role_tensor(graph, node, role)
    absmax = None if tensor is not None else calibrated_absmax(graph, node, role)
    try:
        roles = get_format(cfg.name).roles
        if role not in roles:
            raise ConfigError(f"{path}.{role}: the {cfg.name!r} format is not for the {role} role; it takes "
                              f"{', '.join(map(repr, roles))}")
        concrete = cfg.resolve(tensor=tensor, absmax=absmax, path=f"{path}.{role}")
        shape = _activation_shape(graph, node, role) if tensor is None else None
        if shape is not None and concrete.is_concrete():  # e.g. block_fp's block size must divide it
            get_format(concrete.name)(concrete).check_shape(shape, f"{path}.{role}")
        return concrete
    except ConfigError as exc:
        raise ConfigError(f"{_rename(exc, path, role)} (node {node.name!r}"
                          f"{', module ' + repr(module_path(graph, node)) if module_path(graph, node) else ''})") from None


def _requirements(config: QuantizeConfig) -> tuple[str, ...]:
    """``("calibration",)`` when an active entry has an activation format that needs a calibrated range
    (integer ``frac_width = "auto"``, scaled_integer without a ``scale``). Conservative: it reads the
    config, not the graph, so an entry a ``resolved`` override already fixes, or a role its op does not
    use, still counts (a calibration then runs needlessly; one that is needed is never left out)."""
    entries = [e.config for e in config.entries.values()] + ([config.default.config] if config.default else [])
    for entry in entries:
        for role, fmt in (entry.roles.items() if entry.active else ()):
            if role in WEIGHT_ROLES or not any(role in r for r in OP_ROLES.values()):
                continue
            try:
                fmt.resolve(tensor=None, absmax=None)
            except ConfigError:
                return ("calibration",)
    return ()


@register_pass("quantize", QuantizeConfig, kind="transform", version=2, requires=_requirements, example={
    "by": "type", "linear": {"config": {"name": "integer", "weight_width": 8, "weight_frac_width": "auto",
                                        "data_in_width": 8, "data_in_frac_width": 4}}})
def quantize(graph: MaseGraph, config: QuantizeConfig) -> PassResult:
    """Quantise linear/embedding/attention nodes to registered number formats (MASE's config format);
    trainable by STE. Data-dependent choices are resolved now and returned as the decision ``resolved``."""
    from ..formats import get_format

    nodes = [n for n in graph.nodes if _op_type(n) is not None]
    assignment = _assign(graph, config, nodes)
    fixed = config.resolved or {}
    names = {n.name for n in nodes}
    for name in fixed:
        if name not in names:
            raise ConfigError(f"quantize.resolved.{name}: no quantisable node of that name in this graph")
    resolved: dict[str, dict[str, FormatConfig]] = {}
    plan, skipped = [], []
    for node in nodes:  # resolve everything first: a missing calibration fails before any edit
        entry = assignment.get(node)
        op = _op_type(node)
        if entry is None or not entry.active:
            skipped.append(node.name)
            continue
        specs: dict[str, Any] = {}
        for role in OP_ROLES[op]:
            cfg = fixed.get(node.name, {}).get(role) or entry.roles.get(role)
            if cfg is None:
                specs[role] = None
                continue
            concrete = _resolve(graph, node, role, cfg, entry.path or "quantize")
            if concrete != cfg or role in fixed.get(node.name, {}):
                resolved.setdefault(node.name, {})[role] = concrete
            specs[role] = get_format(concrete.name)(concrete).spec()
        plan.append((node, op, entry, specs))
    changed = []
    for node, op, entry, specs in plan:
        if op == "linear":
            as_compressed_linear(node)
            update_kwargs(node, data_in=specs["data_in"], weight_q=specs["weight"],
                          bias_q=specs["bias"], data_out=specs["data_out"], ste=entry.ste)
        elif op == "embedding":
            as_compressed_embedding(node)
            update_kwargs(node, weight_q=specs["weight"], data_out=specs["data_out"], ste=entry.ste)
        else:
            as_compressed_sdpa(node)
            update_kwargs(node, data_in=specs["data_in"], data_out=specs["data_out"], ste=entry.ste)
        graph.set_annotation(node, "quant", node_precision(node))
        changed.append({"node": node.name, "op": op, "module": module_path(graph, node), **node_precision(node)})
    shared = refresh_shared_inputs(graph)
    log.info("quantize: %d nodes quantised (%d with data-dependent formats), %d shared input nodes",
             len(changed), len(resolved), shared)
    info = {"quantized": changed, "skipped": skipped, "shared_inputs": shared, "ops_covered": list(OP_TYPES),
            "resolved": {n: {r: c.to_dict() for r, c in roles.items()} for n, roles in resolved.items()}}
    return PassResult(graph, info, {"resolved": resolved or None})  # recorded: replay uses these formats
