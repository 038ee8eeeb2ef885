"""Search spaces: what a trial samples, as Optuna parameters.

Two spaces, one interface (:class:`BaseSearchSpace`):

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

:func:`describe_graph` reads the architecture back from a graph's structure (not its config), so
tests and trials can check that what was trained is what was sampled.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import re
from typing import Any, ClassVar, Literal, Optional, Union

import optuna

from mase_lite.config import Config, check_choice, check_range
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph
from mase_lite.models import ModelConfig

#: The model-level parameters, in sampling order. They are ``ModelConfig`` / ``BertConfig`` field names.
MODEL_PARAMS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
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
        if "minifloat" in self.formats and not set(self.widths) & set(MINIFLOAT_WIDTHS):
            raise ConfigError(f"{p}widths = {self.widths}: the minifloat format needs a width of "
                              f"{sorted(MINIFLOAT_WIDTHS)}")


#: Widths the ``minifloat`` choice takes, and the exponent/mantissa split each means.
MINIFLOAT_WIDTHS = {8: (4, 3), 16: (5, 10)}


def _valid_formats() -> list[str]:
    from passes.formats import format_names  # search sits above passes

    return list(format_names())


@dataclasses.dataclass
class SpaceConfig(Config):
    """The ``[space]`` table. Defaults are Lab 2's space; ``node_choices`` are the per-node options;
    ``compression`` (optional) the per-node compression choices."""

    num_hidden_layers: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8])
    num_attention_heads: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8, 16])
    hidden_size: list[int] = dataclasses.field(default_factory=lambda: [128, 192, 256, 384, 512])
    intermediate_size: list[int] = dataclasses.field(default_factory=lambda: [512, 768, 1024, 1536, 2048])
    node_choices: list[str] = dataclasses.field(default_factory=lambda: list(NODE_CHOICES))
    compression: Optional[CompressionSpaceConfig] = None

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


def invalid_reason(params: dict[str, int]) -> str | None:
    """Why the model-level ``params`` cannot be built, or None if they can."""
    hidden, heads = params["hidden_size"], params["num_attention_heads"]
    if hidden % heads:
        return (f"hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                f"(each head needs hidden_size / num_attention_heads dimensions)")
    return None


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

    def __init__(self, config: SpaceConfig, base: ModelConfig | None = None):
        self.config = config
        self.base = base or ModelConfig()
        self.choices = {name: list(getattr(config, name)) for name in MODEL_PARAMS}

    def suggest(self, trial: optuna.Trial, *context: Any) -> ModelConfig:
        params = {name: trial.suggest_categorical(name, values) for name, values in self.choices.items()}
        reason = invalid_reason(params)
        if reason is not None:
            raise InvalidArchitecture(reason)
        return self.base.replace(**params)

    def grid_search_space(self) -> dict[str, list[Any]]:
        return {name: list(values) for name, values in self.choices.items()}

    def combinations(self) -> list[dict[str, int]]:
        """Every combination of the grid, buildable or not."""
        return [dict(zip(self.choices, c)) for c in itertools.product(*self.choices.values())]

    def n_valid(self) -> int:
        """How many combinations can be built."""
        return sum(invalid_reason(c) is None for c in self.combinations())

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
            width = trial.suggest_categorical(name + "width", c.widths)
            frac = trial.suggest_categorical(name + "frac_width", c.frac_widths) if fmt == "integer" else None
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

    ``integer``: ``<role>_width`` and ``<role>_frac_width`` (``frac_width``, ``"auto"`` allowed);
    ``scaled_integer``: ``<role>_width``, weights with ``granularity`` scales; ``block_fp``:
    ``<role>_mantissa_width = width - 1``; ``minifloat``: the exponent/mantissa split of
    :data:`MINIFLOAT_WIDTHS` (8: e4m3, 16: e5m10) per role; other formats: ``<role>_width``.
    """
    cfg: dict[str, Any] = {"name": fmt}
    if fmt == "scaled_integer" and "weight" in roles:
        cfg["weight_granularity"] = granularity
    for role in roles:
        if fmt == "integer":
            cfg[f"{role}_width"] = int(width)
            cfg[f"{role}_frac_width"] = frac_width if frac_width is not None else "auto"
        elif fmt == "minifloat":
            if width not in MINIFLOAT_WIDTHS:
                raise ConfigError(f"space.compression.widths: the minifloat format takes widths "
                                  f"{sorted(MINIFLOAT_WIDTHS)}, not {width}")
            e, m = MINIFLOAT_WIDTHS[width]
            cfg[f"{role}_exponent_width"] = e
            cfg[f"{role}_mantissa_width"] = m
        elif fmt == "block_fp":
            cfg[f"{role}_mantissa_width"] = int(width) - 1
        else:
            cfg[f"{role}_width"] = int(width)
    return cfg


class SearchSpace:
    """The space of one study: a :class:`ModelSpace` and, optionally, a :class:`NodeSpace` and a
    :class:`CompressionSpace`."""

    def __init__(self, model: ModelSpace, nodes: NodeSpace | None = None, compression: CompressionSpace | None = None):
        self.model = model
        self.nodes = nodes
        self.compression = compression

    @classmethod
    def from_config(cls, config: SpaceConfig, base: ModelConfig | None = None, with_nodes: bool = False) -> "SearchSpace":
        compression = CompressionSpace(config.compression) if config.compression is not None else None
        return cls(ModelSpace(config, base), NodeSpace(config.node_choices) if with_nodes else None, compression)

    def grid_search_space(self) -> dict[str, list[Any]]:
        """The grid of the whole space; ConfigError if it has per-node choices."""
        if self.nodes is not None:
            self.nodes.grid_search_space()  # raises
        if self.compression is not None:
            self.compression.grid_search_space()  # raises
        return self.model.grid_search_space()

    def to_dict(self) -> dict[str, Any]:
        d = self.model.to_dict()
        d["nodes"] = self.nodes.to_dict() if self.nodes is not None else None
        if self.compression is not None:  # absent without one: studies made before it stay valid
            d["compression"] = self.compression.to_dict()
        return d


# --------------------------------------------------------------------------- reading a graph back

_LAYER_RE = re.compile(r"(?:^|\.)layers?\.(\d+)(?:\.|$)")
_FFN_IN = ("intermediate.dense", "ffn.lin1")
_FFN_OUT = ("output.dense", "ffn.lin2")


def _one(values: set[int]) -> int | list[int] | None:
    """The single value of a set, the sorted list if there are several, None if empty."""
    if not values:
        return None
    return next(iter(values)) if len(values) == 1 else sorted(values)


def describe_graph(graph: MaseGraph) -> dict[str, Any]:
    """The architecture a graph actually computes, read from its nodes.

    ``num_hidden_layers``: distinct ``layer.<i>`` indices in node module paths; ``num_attention_heads``:
    the head axis (dim 1) of the inputs of the attention nodes (fused SDPA, or the score matmuls of
    eager attention);
    ``hidden_size``: the last axis of the embedding output; ``intermediate_size``: the output width of
    the feed-forward block's first linear (``intermediate.dense`` in BERT/RoBERTa, ``ffn.lin1`` in
    DistilBERT), else the input width of its second (if the first became an identity), else None;
    ``linear_paths``: module paths of the remaining linear nodes.
    """
    layers: set[int] = set()
    heads: set[int] = set()
    hidden = None
    linear_paths: list[str] = []
    ffn_in: set[int] = set()
    ffn_out: set[int] = set()
    for node in graph.nodes:
        meta = graph.meta(node)
        path = meta.module_path or ""
        m = _LAYER_RE.search(path)
        if m:
            layers.add(int(m.group(1)))
        if (meta.op == "attention" or (meta.op == "matmul" and ".attention" in f".{path}")) and meta.inputs \
                and len(meta.inputs[0].shape) == 4:
            h = meta.inputs[0].shape[1]
            if isinstance(h, int):
                heads.add(h)
        if meta.op == "embedding" and hidden is None and meta.outputs:
            d = meta.outputs[0].shape[-1]
            hidden = d if isinstance(d, int) else None
        if meta.op == "linear":
            linear_paths.append(path)
            if path.endswith(_FFN_IN):
                ffn_in.add(meta.out_features)
            elif path.endswith(_FFN_OUT) and ".attention." not in path:
                ffn_out.add(meta.in_features)
    widths = ffn_in or ffn_out
    return {
        "num_hidden_layers": len(layers),
        "num_attention_heads": _one(heads),
        "hidden_size": hidden,
        "intermediate_size": _one(widths),
        "linear_paths": linear_paths,
    }
