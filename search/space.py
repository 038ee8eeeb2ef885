"""Search spaces: what a trial samples, as Optuna parameters.

The spaces share one interface (:class:`BaseSearchSpace`):

* :class:`ModelSpace` — model-level choices (``num_hidden_layers``, ``num_attention_heads``,
  ``hidden_size``, ``intermediate_size``), each a list of values. They are the fields ``BertConfig``
  really reads (MASE's tutorial sets ``num_layers``/``num_heads``, which BERT ignores). A sampled
  combination the model cannot build (``hidden_size`` not divisible by ``num_attention_heads``)
  raises :class:`InvalidArchitecture`, an ``optuna.TrialPruned`` carrying the reason. It is the
  only space the grid sampler can enumerate (:meth:`ModelSpace.grid_search_space`).
* :class:`NodeSpace` — one dynamic categorical parameter per square ``Linear`` of the *built*
  graph (``linear`` or ``identity``), named ``node:<module path>``; which parameters exist depends on
  the sampled architecture, so grid cannot enumerate it.
* :class:`CompressionSpace` — per-node compression choices (mixed precision and sparsity, as MASE's
  Tutorial 6): for every linear node of the built graph a number format, a width, an integer
  fraction width (``auto`` or a value) and a weight sparsity, from the lists of ``[space.compression]``
  (:class:`CompressionSpaceConfig`); :meth:`CompressionSpace.pipeline` turns a trial's choices into
  the ``quantize`` (``by = "name"``) and ``prune`` (per-node ``nodes`` overrides) passes it compresses
  with. Dynamic too; combinable with both spaces above.
* :class:`ShrinkSpace` — with a pretrained base (``[model] checkpoint``, :class:`PretrainedBase`;
  the model space is then empty): structured shrinking of the checkpoint from the lists of
  ``[space.shrink]`` (:class:`ShrinkSpaceConfig`): ``shrink:num_layers`` (layers kept),
  ``shrink:heads:<i>`` (heads kept in kept layer ``i``, the checkpoint's numbering; ALBERT, whose
  layers share weights: one ``shrink:heads``) and ``shrink:ffn`` (FFN width kept, one value for
  every kept layer), applied with the
  ``shrink_layers`` / ``prune_heads`` / ``prune_ffn`` passes; dynamic, combinable with the node
  and compression spaces (which then see the shrunk graph).

:func:`describe_graph` reads the architecture back from a graph's structure (not its config), so
tests and trials can check that what was trained is what was sampled. Where a family keeps its
layers, projections and heads is its adapter's (:mod:`mase_lite.families`), shared with shrinking.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import itertools
from typing import Any, ClassVar, Literal, Optional, Union

import optuna

from mase_lite.config import Config, check_choice, check_range
from mase_lite.errors import ConfigError
from mase_lite.families import family, family_of, head_layout_problem, layer_calls
from mase_lite.graph import MaseGraph
from mase_lite.models import ARCH_FIELDS, ModelConfig

#: The model-level parameters, in sampling order. They are ``ModelConfig`` / ``BertConfig`` field names
#: (:data:`mase_lite.models.ARCH_FIELDS`, the same tuple).
MODEL_PARAMS = ARCH_FIELDS
NODE_CHOICES = ("linear", "identity")
NODE_PREFIX = "node:"
#: Optuna parameter names of the per-node compression choices: ``compress:<module path>:<what>``.
COMPRESS_PREFIX = "compress:"
#: Tensor roles a sampled width applies to (``data_out`` is not searched).
COMPRESS_ROLES = ("data_in", "weight", "bias")


class InvalidArchitecture(optuna.TrialPruned):
    """The sampled combination cannot be built; the trial is pruned with this reason."""


@dataclasses.dataclass
class CompressionSpaceConfig(Config):
    """The ``[space.compression]`` table: per-node compression choices, each a list to sample from.

    For every linear node: ``formats`` (registered number formats, :func:`passes.formats.format_names`),
    ``widths`` (bits per value of the sampled format, for each of ``roles``), ``frac_widths``
    (``integer`` only: ``"auto"``, chosen per tensor from its range, and/or fraction bits
    ``0 <= f <= min(widths)``), ``sparsities`` (fraction of the node's weights pruned, by
    ``prune_method``, per tensor). ``roles``: the tensors the format applies to (of ``data_in``,
    ``weight``, ``bias``). How a width maps to each format's fields (:func:`format_entry`):
    ``integer`` and ``scaled_integer`` take it as ``<role>_width`` (scaled_integer weights with
    ``scaled_granularity`` scales, activations with calibrated per-tensor scales); ``block_fp`` as a
    sign plus ``width - 1`` mantissa bits (8-bit shared exponent per block of 16, MASE's defaults);
    ``minifloat`` takes widths 8 (e4m3, as fp8_e4m3's layout) or 16 (e5m10, IEEE half's layout).
    """

    formats: list[str] = dataclasses.field(default_factory=lambda: ["integer"])
    widths: list[int] = dataclasses.field(default_factory=lambda: [8])
    frac_widths: list[Union[int, str]] = dataclasses.field(default_factory=lambda: ["auto"])
    sparsities: list[float] = dataclasses.field(default_factory=lambda: [0.0])
    roles: list[str] = dataclasses.field(default_factory=lambda: list(COMPRESS_ROLES))
    prune_method: Literal["l1-norm", "random"] = "l1-norm"
    scaled_granularity: Literal["per_tensor", "per_channel"] = "per_channel"

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else "space.compression."
        for key in ("formats", "widths", "frac_widths", "sparsities", "roles"):
            values = getattr(self, key)
            if not values:
                raise ConfigError(f"{p}{key} is an empty list; give at least one value"
                                  + (f" (valid: {_valid_formats()})" if key == "formats" else "")
                                  + (f" (valid: {list(COMPRESS_ROLES)})" if key == "roles" else ""))
            if len(set(map(repr, values))) != len(values):
                raise ConfigError(f"{p}{key} = {values} has repeated values")
        for i, f in enumerate(self.formats):
            check_choice(f"{p}formats[{i}]", f, _valid_formats())
        for i, r in enumerate(self.roles):
            check_choice(f"{p}roles[{i}]", r, COMPRESS_ROLES)
        for i, w in enumerate(self.widths):
            check_range(f"{p}widths[{i}]", w, 2, 32)
        for i, f in enumerate(self.frac_widths):
            if isinstance(f, str):
                check_choice(f"{p}frac_widths[{i}]", f, ["auto"])
            else:
                check_range(f"{p}frac_widths[{i}]", f, 0, min(self.widths))
        for i, sp in enumerate(self.sparsities):
            check_range(f"{p}sparsities[{i}]", sp, 0.0, 1.0)
        for fmt in self.formats:
            if not valid_widths(fmt, self.widths, self.roles, self.scaled_granularity):
                try:  # the format's own words on a width it cannot take, if it has some
                    format_entry(fmt, self.widths[0], None, self.roles, self.scaled_granularity)
                    extra = ""
                except ConfigError as exc:
                    extra = f" ({str(exc).split(': ', 1)[-1]})"
                raise ConfigError(f"{p}widths = {self.widths}: none suits the {fmt} format{extra}; it needs a width "
                                  f"that its config accepts (e.g. scaled_integer 2-16)")


def __getattr__(name: str):  # MINIFLOAT_WIDTHS: the minifloat format's own table (search sits above passes)
    if name == "MINIFLOAT_WIDTHS":
        from passes.formats.minifloat import SEARCH_WIDTHS

        return SEARCH_WIDTHS
    raise AttributeError(name)


def valid_widths(fmt: str, widths: list[int], roles: Any = None, granularity: str = "per_channel") -> list[int]:
    """The ``widths`` that format ``fmt`` takes (its ``quantize`` entry validates), in order."""
    from passes.transforms.quantize import QuantEntryConfig

    out = []
    for w in widths:
        try:
            QuantEntryConfig.from_dict(format_entry(fmt, w, "auto" if _takes_frac_width(fmt) else None,
                                                    roles or COMPRESS_ROLES, granularity), path="w")
        except ConfigError:
            continue
        out.append(w)
    return out


def _takes_frac_width(fmt: str) -> bool:
    from passes.formats import get_config_cls

    return bool(get_config_cls(fmt).takes_frac_width)


def _valid_formats() -> list[str]:
    from passes.formats import format_names  # search sits above passes

    return list(format_names())


#: Optuna parameter names of the shrinking choices: ``shrink:num_layers``, ``shrink:heads:<layer>``
#: (the layer's index in the checkpoint) and ``shrink:ffn``.
SHRINK_PREFIX = "shrink:"
#: The ``[space.shrink]`` lists and the checkpoint dimension each is bounded by.
SHRINK_FIELDS = {"num_layers": "num_hidden_layers", "heads": "num_attention_heads", "ffn": "intermediate_size"}


@dataclasses.dataclass
class ShrinkSpaceConfig(Config):
    """The ``[space.shrink]`` table: structured shrinking of a pretrained base (``model.checkpoint``),
    each a list to sample from; a list left out is not searched (that dimension is kept whole).

    ``num_layers``: layers kept (``shrink_layers`` with ``num_layers``: evenly spread over the
    checkpoint's layers); ``heads``: attention heads kept, sampled **per kept layer**
    (``shrink:heads:<i>``, ``i`` the layer's index in the checkpoint; ``prune_heads`` ranks heads by
    the L1 norm of their output-projection slice); ``ffn``: FFN (intermediate) neurons kept, **one
    value for all kept layers** (``prune_ffn``, L1 ranking). Values must be in ``[1, the checkpoint's
    count]``; for grouped-query attention (``num_key_value_heads``) heads kept must be a multiple of
    the key/value head count (the same number of query heads is kept in each group). A family whose
    layers share one set of weights (ALBERT, :attr:`mase_lite.families.FamilyAdapter.shared_layers`)
    samples one head count for every layer, ``shrink:heads``.
    Checked against the checkpoint by :meth:`check_against`.
    """

    num_layers: Optional[list[int]] = None
    heads: Optional[list[int]] = None
    ffn: Optional[list[int]] = None

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else "space.shrink."
        given = [k for k in SHRINK_FIELDS if getattr(self, k) is not None]
        if not given:
            raise ConfigError(f"{p.rstrip('.')} has no choices; give at least one of "
                              f"{', '.join(SHRINK_FIELDS)} (lists of values kept)")
        what = {"num_layers": "layers", "heads": "heads", "ffn": "FFN neurons"}
        for key in given:
            values = getattr(self, key)
            if not values:
                raise ConfigError(f"{p}{key} is an empty list; give at least one value (or leave {key} out "
                                  f"to keep every one of the checkpoint's {what[key]})")
            for i, v in enumerate(values):
                if v < 1:
                    raise ConfigError(f"{p}{key}[{i}] = {v}: keeping {v} {what[key]} is not possible; "
                                      f"values must be at least 1")
            if len(set(values)) != len(values):
                raise ConfigError(f"{p}{key} = {values} has repeated values")

    def check_against(self, dims: dict[str, Any], path: str = "space.shrink", checkpoint: str = "") -> None:
        """Raise ConfigError unless every value fits the checkpoint's ``dims`` (``num_hidden_layers``,
        ``num_attention_heads``, ``intermediate_size``, optionally ``num_key_value_heads``)."""
        src = f"model.checkpoint {checkpoint!r}" if checkpoint else "the checkpoint"
        for key, dim in SHRINK_FIELDS.items():
            values = getattr(self, key)
            hi = dims.get(dim)
            if values is None or hi is None:
                continue
            for i, v in enumerate(values):
                if v > hi:
                    raise ConfigError(f"{path}.{key}[{i}] = {v} exceeds the {hi} {dim} of {src}; "
                                      f"values must be in [1, {hi}]")
        kv = dims.get("num_key_value_heads")
        heads = dims.get("num_attention_heads")
        if self.heads is not None and kv and heads and kv != heads:
            for i, v in enumerate(self.heads):
                if v % kv:
                    valid = list(range(kv, heads + 1, kv))
                    raise ConfigError(
                        f"{path}.heads[{i}] = {v} does not divide evenly into the {kv} key/value head groups "
                        f"of {src} (grouped-query attention keeps the same number of query heads per "
                        f"group); valid: {valid}")


@dataclasses.dataclass
class SpaceConfig(Config):
    """The ``[space]`` table. Defaults are Lab 2's space; ``node_choices`` are the per-node options;
    ``compression`` (optional) the per-node compression choices; ``shrink`` (optional, with a
    pretrained base ``model.checkpoint`` only) the structured-shrinking choices."""

    num_hidden_layers: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8])
    num_attention_heads: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8, 16])
    hidden_size: list[int] = dataclasses.field(default_factory=lambda: [128, 192, 256, 384, 512])
    intermediate_size: list[int] = dataclasses.field(default_factory=lambda: [512, 768, 1024, 1536, 2048])
    node_choices: list[str] = dataclasses.field(default_factory=lambda: list(NODE_CHOICES))
    compression: Optional[CompressionSpaceConfig] = None
    shrink: Optional[ShrinkSpaceConfig] = None

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        for name in MODEL_PARAMS:
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{p}{name} is an empty list; give at least one value")
            for i, v in enumerate(values):
                check_range(f"{p}{name}[{i}]", v, 1, None)
            if len(set(values)) != len(values):
                raise ConfigError(f"{p}{name} = {values} has repeated values")
        if not self.node_choices:
            raise ConfigError(f"{p}node_choices is an empty list; use some of {list(NODE_CHOICES)}")
        for i, c in enumerate(self.node_choices):
            check_choice(f"{p}node_choices[{i}]", c, NODE_CHOICES)
        if len(set(self.node_choices)) != len(self.node_choices):
            raise ConfigError(f"{p}node_choices = {self.node_choices} has repeated values")
        if not any(invalid_reason(dict(zip(MODEL_PARAMS, combo))) is None
                   for combo in itertools.product(*(getattr(self, n) for n in MODEL_PARAMS))):
            raise ConfigError(
                f"{p}no combination of the space can be built: every hidden_size must be divisible by "
                f"a num_attention_heads value (hidden_size {self.hidden_size}, num_attention_heads "
                f"{self.num_attention_heads})"
            )


def invalid_reason(params: dict[str, int], model_type: str | None = None,
                   num_key_value_heads: int | None = None) -> str | None:
    """Why the model-level ``params`` cannot be built in family ``model_type`` (None: any family), or
    None if they can (the family adapter's check, :func:`mase_lite.families.head_layout_problem`)."""
    return head_layout_problem(params["hidden_size"], params["num_attention_heads"], num_key_value_heads, model_type)


class BaseSearchSpace(abc.ABC):
    """A set of Optuna parameters a trial samples."""

    #: Whether :meth:`grid_search_space` can enumerate this space (static parameters only).
    griddable: ClassVar[bool] = False

    @abc.abstractmethod
    def suggest(self, trial: optuna.Trial, *context: Any) -> Any:
        """Sample this space's parameters in ``trial`` and return what they describe."""

    def grid_search_space(self) -> dict[str, list[Any]]:
        """``{param: [values]}`` for ``optuna.samplers.GridSampler``."""
        raise ConfigError(f"{type(self).__name__} has dynamic parameters; the grid sampler cannot enumerate it")

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (part of a study's fingerprint)."""


class ModelSpace(BaseSearchSpace):
    """Model-level choices; :meth:`suggest` returns a ``ModelConfig`` built on ``base``."""

    griddable = True

    def __init__(self, config: SpaceConfig, base: ModelConfig | None = None, pretrained: bool = False):
        self.config = config
        self.base = base or ModelConfig()
        #: No model-level choices on a pretrained base (its sizes are the checkpoint's).
        self.choices = {} if pretrained else {name: list(getattr(config, name)) for name in MODEL_PARAMS}

    def suggest(self, trial: optuna.Trial, *context: Any) -> ModelConfig:
        params = {name: trial.suggest_categorical(name, values) for name, values in self.choices.items()}
        reason = invalid_reason(params, self.base.model_type, self.base.num_key_value_heads)
        if reason is not None:
            raise InvalidArchitecture(reason)
        return self.base.replace(**params)

    def grid_search_space(self) -> dict[str, list[Any]]:
        return {name: list(values) for name, values in self.choices.items()}

    def combinations(self) -> list[dict[str, int]]:
        """Every combination of the grid, buildable or not."""
        return [dict(zip(self.choices, c)) for c in itertools.product(*self.choices.values())]

    def n_valid(self) -> int:
        """How many combinations can be built (0 without model-level choices: a pretrained base)."""
        if not self.choices:
            return 0
        return sum(invalid_reason(c, self.base.model_type, self.base.num_key_value_heads) is None
                   for c in self.combinations())

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.choices, "base": self.base.to_dict()}


class NodeSpace(BaseSearchSpace):
    """Per-node choice for every square ``Linear`` of a built graph; :meth:`suggest` returns the module
    paths to replace with identity."""

    def __init__(self, choices: list[str] | tuple[str, ...] = NODE_CHOICES):
        self.choices = list(choices)

    @staticmethod
    def candidates(graph: MaseGraph) -> list[str]:
        """Module paths of the graph's square linear nodes (``in_features == out_features``), in graph order."""
        out: list[str] = []
        for node in graph.nodes:
            meta = graph.meta(node)
            if (meta.op == "linear" and meta.module_path and meta.in_features is not None
                    and meta.in_features == meta.out_features and meta.module_path not in out):
                out.append(meta.module_path)
        return out

    def suggest(self, trial: optuna.Trial, *context: Any) -> list[str]:
        (graph,) = context
        return [path for path in self.candidates(graph)
                if trial.suggest_categorical(NODE_PREFIX + path, self.choices) == "identity"]

    def grid_search_space(self) -> dict[str, list[Any]]:
        raise ConfigError(
            "the grid sampler samples model-level parameters only: per-node choices (linear/identity for "
            "each square Linear) depend on the sampled architecture, so there is no fixed grid; use "
            "'random' or 'tpe' with per-node choices, or 'grid' without '+nodes'"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"node_choices": self.choices}


class CompressionSpace(BaseSearchSpace):
    """Per-node compression choices for every linear node of a built graph (see
    :class:`CompressionSpaceConfig`). :meth:`suggest` returns ``{module path: {"format", "width",
    "frac_width", "sparsity"}}`` (``frac_width`` None for formats other than ``integer``), sampled as
    ``compress:<path>:format`` / ``:width`` / ``:frac_width`` (integer only) / ``:sparsity``."""

    def __init__(self, config: CompressionSpaceConfig):
        self.config = config
        self._valid: dict[str, list[int]] = {}

    def _widths(self, fmt: str) -> list[int]:
        if fmt not in self._valid:
            c = self.config
            self._valid[fmt] = valid_widths(fmt, list(c.widths), c.roles, c.scaled_granularity)
        return self._valid[fmt]

    @staticmethod
    def candidates(graph: MaseGraph) -> list[str]:
        """Module paths of the graph's linear nodes, in graph order."""
        out: list[str] = []
        for node in graph.nodes:
            meta = graph.meta(node)
            if meta.op == "linear" and meta.module_path and meta.module_path not in out:
                out.append(meta.module_path)
        return out

    def suggest(self, trial: optuna.Trial, *context: Any) -> dict[str, dict[str, Any]]:
        (graph,) = context
        c = self.config
        choices: dict[str, dict[str, Any]] = {}
        for path in self.candidates(graph):
            name = f"{COMPRESS_PREFIX}{path}:"
            fmt = trial.suggest_categorical(name + "format", c.formats)
            widths = self._widths(fmt)  # a format that takes only some widths samples from those
            width = trial.suggest_categorical(name + ("width" if widths == list(c.widths) else f"width:{fmt}"), widths)
            frac = trial.suggest_categorical(name + "frac_width", c.frac_widths) if _takes_frac_width(fmt) else None
            sparsity = trial.suggest_categorical(name + "sparsity", c.sparsities)
            choices[path] = {"format": fmt, "width": width, "frac_width": frac, "sparsity": sparsity}
        return choices

    def format_config(self, choice: dict[str, Any]) -> dict[str, Any]:
        """The ``quantize`` entry ``config`` table for one node's choice."""
        return format_entry(choice["format"], choice["width"], choice.get("frac_width"), self.config.roles,
                            self.config.scaled_granularity)

    def pipeline(self, choices: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The compression pipeline of a trial's ``choices``: ``quantize`` with ``by = "name"`` (one
        entry per node), then ``prune`` (weights, local scope, a per-node ``nodes`` override each) when
        some sparsity is positive."""
        quantize: dict[str, Any] = {"by": "name"}
        for path, choice in choices.items():
            quantize[path] = {"config": self.format_config(choice)}
        passes: dict[str, Any] = {"quantize": quantize}
        nodes = {path: {"weight": {"sparsity": float(ch["sparsity"])}} for path, ch in choices.items()
                 if ch["sparsity"] > 0}
        if nodes:
            passes["prune"] = {"weight": {"sparsity": 0.0, "method": self.config.prune_method, "scope": "local",
                                          "granularity": "elementwise"},
                               "by": "name", "nodes": nodes}
        return {"passes": passes}

    def grid_search_space(self) -> dict[str, list[Any]]:
        raise ConfigError(
            "the grid sampler samples model-level parameters only: per-node compression choices "
            "([space.compression]) depend on the sampled architecture, so there is no fixed grid; use "
            "'random', 'tpe' or 'nsga2' with [space.compression]"
        )

    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()


def format_entry(fmt: str, width: int, frac_width: int | str | None, roles: Any = COMPRESS_ROLES,
                 granularity: str = "per_channel") -> dict[str, Any]:
    """The ``quantize`` pass entry ``config`` for format ``fmt`` at ``width`` bits on ``roles``
    (``<role>_<field>`` keys, see :mod:`passes.transforms.quantize`).

    Each format says how a width maps to its fields (``FormatConfig.search_fields``): ``integer``:
    ``<role>_width`` and ``<role>_frac_width`` (``frac_width``, ``"auto"`` allowed);
    ``scaled_integer``: ``<role>_width``, weights with ``granularity`` scales; ``block_fp``:
    ``<role>_mantissa_width = width - 1``; ``minifloat``: the exponent/mantissa split of its
    ``SEARCH_WIDTHS`` (8: e4m3, 16: e5m10); ``dynamic_int8``: width 8 only, inputs and weights (its
    biases stay float32); other formats: ``<role>_width``. A role with no field to set is given as an
    empty table (``data_in = {}``).
    """
    from passes.formats import get_config_cls  # search sits above passes

    ccls = get_config_cls(fmt, "space.compression.formats")
    cfg: dict[str, Any] = {"name": fmt}
    for role in roles:
        fields = ccls.search_fields(role, int(width), frac_width=frac_width, granularity=granularity)
        if fields is None:
            continue  # the format does not take this role
        if not fields:
            cfg[role] = {}
        for key, value in fields.items():
            cfg[f"{role}_{key}"] = value
    return cfg


@dataclasses.dataclass(frozen=True)
class PretrainedBase:
    """A study's pretrained base: ``model.checkpoint`` (a directory or ``package:NAME``) with its
    head ``pooling`` and ``num_labels``; ``dims``: the checkpoint's sizes (:func:`checkpoint_dims`)."""

    checkpoint: str
    pooling: str | None
    num_labels: int
    dims: dict[str, Any]

    @classmethod
    def from_model_config(cls, model: Any) -> "PretrainedBase":
        return cls(str(model.checkpoint), model.pooling, model.num_labels, checkpoint_dims(str(model.checkpoint)))

    def arch(self) -> dict[str, Any]:
        """The unshrunk architecture (as a trial's ``arch``)."""
        d = self.dims
        return {"checkpoint": self.checkpoint, "pooling": self.pooling or "pooler",
                "num_hidden_layers": d["num_hidden_layers"], "num_attention_heads": d["num_attention_heads"],
                "hidden_size": d["hidden_size"], "intermediate_size": d["intermediate_size"]}


_DIMS = ("model_type", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
         "intermediate_size", "max_position_embeddings")


def checkpoint_dims(checkpoint: str) -> dict[str, Any]:
    """The sizes of checkpoint ``checkpoint`` (read from its config once per process): model_type,
    num_hidden_layers, num_attention_heads, num_key_value_heads (None without GQA), hidden_size,
    intermediate_size, max_position_embeddings. ConfigError (naming ``model.checkpoint``) if it
    cannot be found or read."""
    return dict(_checkpoint_dims(str(checkpoint)))


@functools.lru_cache(maxsize=16)
def _checkpoint_dims(checkpoint: str) -> tuple[tuple[str, Any], ...]:
    from mase_lite.models import checkpoint_config

    cfg = checkpoint_config(checkpoint, "model.checkpoint")
    out = {}
    for name in _DIMS:
        v = getattr(cfg, name, None)
        out[name] = v if v is None or isinstance(v, (int, str)) else None
    if out.get("intermediate_size") is None:  # GPT-2: n_inner, default 4 x hidden
        out["intermediate_size"] = getattr(cfg, "n_inner", None) or (4 * out["hidden_size"] if out["hidden_size"] else None)
    if out.get("num_key_value_heads") == out.get("num_attention_heads"):
        out["num_key_value_heads"] = None
    return tuple(out.items())


def layer_indices(graph: MaseGraph) -> list[int]:
    """The layer indices (as in ``...layer.<i>.`` module paths, i.e. the checkpoint's numbering; ALBERT:
    the calls of its shared layer) that the graph's nodes still compute, sorted (the family adapter's
    :func:`mase_lite.families.layer_calls`)."""
    return list(layer_calls(graph))


class ShrinkSpace(BaseSearchSpace):
    """The structured-shrinking choices of :class:`ShrinkSpaceConfig` on a pretrained base.

    :meth:`suggest` samples ``shrink:num_layers``, runs ``shrink_layers``, then samples
    ``shrink:heads:<i>`` for each kept layer ``i`` and runs ``prune_heads``, then samples
    ``shrink:ffn`` and runs ``prune_ffn`` (each through the lifecycle; a value equal to the
    checkpoint's skips its pass). It returns the shrunk graph and the choices: ``num_layers``,
    ``layers_kept``, ``heads`` (``{layer: kept}``, every kept layer) and ``ffn``.
    """

    def __init__(self, config: ShrinkSpaceConfig, dims: dict[str, Any]):
        self.config = config
        self.dims = dict(dims)

    def suggest(self, trial: optuna.Trial, *context: Any) -> tuple[MaseGraph, dict[str, Any]]:
        graph, lifecycle = context
        c, d = self.config, self.dims
        choices: dict[str, Any] = {}
        n_layers = d["num_hidden_layers"]
        if c.num_layers is not None:
            n_layers = trial.suggest_categorical(SHRINK_PREFIX + "num_layers", c.num_layers)
            if n_layers != d["num_hidden_layers"]:
                graph = lifecycle.shrink(graph, "shrink_layers", {"num_layers": int(n_layers)})
        layers = layer_indices(graph)  # the trial's architecture check compares their number with n_layers
        choices["num_layers"] = n_layers
        choices["layers_kept"] = layers
        full = d["num_attention_heads"]
        heads = {str(i): full for i in layers}
        if c.heads is not None and family(d.get("model_type")).shared_layers:
            kept = trial.suggest_categorical(SHRINK_PREFIX + "heads", c.heads)  # one set of weights: one count
            heads = {str(i): kept for i in layers}
            if kept != full:
                graph = lifecycle.shrink(graph, "prune_heads", {"keep": int(kept)})
        elif c.heads is not None:
            heads = {str(i): trial.suggest_categorical(f"{SHRINK_PREFIX}heads:{i}", c.heads) for i in layers}
            cut = {k: int(v) for k, v in heads.items() if v != full}
            if cut:
                graph = lifecycle.shrink(graph, "prune_heads", {"keep": cut})
        choices["heads"] = heads
        ffn = d["intermediate_size"]
        if c.ffn is not None:
            ffn = trial.suggest_categorical(SHRINK_PREFIX + "ffn", c.ffn)
            if ffn != d["intermediate_size"]:
                graph = lifecycle.shrink(graph, "prune_ffn", {"keep": int(ffn)})
        choices["ffn"] = ffn
        return graph, choices

    def grid_search_space(self) -> dict[str, list[Any]]:
        raise ConfigError(
            "the grid sampler cannot enumerate space.shrink: the heads kept are sampled per kept layer, "
            "so the parameters depend on space.shrink.num_layers; use 'random', 'tpe' or 'nsga2'"
        )

    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()


class SearchSpace:
    """The space of one study: a :class:`ModelSpace` and, optionally, a :class:`NodeSpace` and a
    :class:`CompressionSpace`; with a pretrained base (``model.checkpoint``, :class:`PretrainedBase`)
    the model space is empty and :class:`ShrinkSpace` (``[space.shrink]``) shrinks the checkpoint."""

    def __init__(self, model: ModelSpace, nodes: NodeSpace | None = None, compression: CompressionSpace | None = None,
                 pretrained: PretrainedBase | None = None, shrink: ShrinkSpace | None = None):
        self.model = model
        self.nodes = nodes
        self.compression = compression
        self.pretrained = pretrained
        self.shrink = shrink

    @classmethod
    def from_config(cls, config: SpaceConfig, base: ModelConfig | None = None, with_nodes: bool = False) -> "SearchSpace":
        compression = CompressionSpace(config.compression) if config.compression is not None else None
        nodes = NodeSpace(config.node_choices) if with_nodes else None
        if base is not None and getattr(base, "checkpoint", None):
            pretrained = PretrainedBase.from_model_config(base)
            shrink = ShrinkSpace(config.shrink, pretrained.dims) if config.shrink is not None else None
            return cls(ModelSpace(config, base, pretrained=True), nodes, compression, pretrained, shrink)
        if config.shrink is not None:
            raise ConfigError("space.shrink shrinks a pretrained model: set model.checkpoint (a checkpoint "
                              "directory or package:NAME) or remove the [space.shrink] table")
        return cls(ModelSpace(config, base), nodes, compression)

    def grid_search_space(self) -> dict[str, list[Any]]:
        """The grid of the whole space; ConfigError if it has per-node or shrinking choices."""
        if self.nodes is not None:
            self.nodes.grid_search_space()  # raises
        if self.compression is not None:
            self.compression.grid_search_space()  # raises
        if self.shrink is not None:
            self.shrink.grid_search_space()  # raises
        if self.pretrained is not None:
            raise ConfigError("the grid sampler enumerates model-level parameters, and a pretrained base "
                              "(model.checkpoint) has none; use 'random', 'tpe' or 'nsga2' with [space.shrink]")
        return self.model.grid_search_space()

    def to_dict(self) -> dict[str, Any]:
        d = self.model.to_dict()
        d["nodes"] = self.nodes.to_dict() if self.nodes is not None else None
        if self.compression is not None:  # absent without one: studies made before it stay valid
            d["compression"] = self.compression.to_dict()
        if self.shrink is not None:
            d["shrink"] = self.shrink.to_dict()
        return d


# --------------------------------------------------------------------------- reading a graph back

def _one(values: set[int]) -> int | list[int] | None:
    """The single value of a set, the sorted list if there are several, None if empty."""
    if not values:
        return None
    return next(iter(values)) if len(values) == 1 else sorted(values)


def _batch_size(graph: MaseGraph) -> Any:
    """The inputs' batch size in metadata terms: an int, or the symbol ``"batch"``."""
    for node in graph.nodes:
        meta = graph.meta(node)
        if node.op == "placeholder" and meta.outputs and meta.outputs[0].shape:
            return meta.outputs[0].shape[0]
    return "batch"


def describe_graph(graph: MaseGraph) -> dict[str, Any]:
    """The architecture a graph actually computes, read from its nodes with its family adapter
    (:func:`mase_lite.families.family_of`).

    ``num_hidden_layers``: the layers its nodes compute (:func:`layer_indices`; ALBERT: the calls of
    its shared layer); ``num_attention_heads``: the heads of the inputs of the attention nodes (fused
    SDPA, or the matmuls of eager attention inside the family's attention module): their axis 1, or
    for a family with heads folded into the batch (DeBERTa) axis 0 over the batch size;
    ``hidden_size``: the last axis of the embedding output; ``intermediate_size``: the output width of
    the feed-forward block's up projection (half of a fused GLU's), else the input width of its down
    projection (if the up projection became an identity), else None;
    ``linear_paths``: module paths of the remaining linear nodes; ``heads_per_layer``: ``{layer index:
    heads}`` read the same way per layer (after ``prune_heads`` layers may differ; then
    ``num_attention_heads`` is the sorted list of the distinct counts).
    """
    fam, batch = family_of(graph), _batch_size(graph)
    calls = layer_calls(graph)
    layer_of = {n: i for i, nodes in calls.items() for n in nodes}
    heads: set[int] = set()
    heads_per_layer: dict[int, int] = {}
    hidden = None
    linear_paths: list[str] = []
    ffn: dict[str, set[int]] = {"up": set(), "down": set()}
    for node in graph.nodes:
        meta = graph.meta(node)
        path = meta.module_path or ""
        if meta.inputs and (meta.op == "attention" or (meta.op == "matmul" and fam.in_attention(path))):
            h = fam.heads_in(meta.inputs[0].shape, batch)
            if h is not None:
                heads.add(h)
                if node in layer_of:
                    heads_per_layer[layer_of[node]] = h
        if meta.op == "embedding" and hidden is None and meta.outputs:
            d = meta.outputs[0].shape[-1]
            hidden = d if isinstance(d, int) else None
        if meta.op == "linear":
            linear_paths.append(path)
            role = (fam.role(path, "ffn") or (None, None))[1]
            if role in ("up", "glu"):
                ffn["up"].add(meta.out_features // (2 if role == "glu" else 1))
            elif role == "down":
                ffn["down"].add(meta.in_features)
    return {
        "num_hidden_layers": len(calls),
        "num_attention_heads": _one(heads),
        "hidden_size": hidden,
        "intermediate_size": _one(ffn["up"] or ffn["down"]),
        "linear_paths": linear_paths,
        "heads_per_layer": dict(sorted(heads_per_layer.items())),
    }
