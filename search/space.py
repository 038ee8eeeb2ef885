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

:func:`describe_graph` reads the architecture back from a graph's structure (not its config), so
tests and trials can check that what was trained is what was sampled.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import re
from typing import Any, ClassVar

import optuna

from mase_lite.config import Config, check_choice, check_range
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph
from mase_lite.models import ModelConfig

#: The model-level parameters, in sampling order. They are ``ModelConfig`` / ``BertConfig`` field names.
MODEL_PARAMS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
NODE_CHOICES = ("linear", "identity")
NODE_PREFIX = "node:"


class InvalidArchitecture(optuna.TrialPruned):
    """The sampled combination cannot be built; the trial is pruned with this reason."""


@dataclasses.dataclass
class SpaceConfig(Config):
    """The ``[space]`` table. Defaults are Lab 2's space; ``node_choices`` are the per-node options."""

    num_hidden_layers: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8])
    num_attention_heads: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8, 16])
    hidden_size: list[int] = dataclasses.field(default_factory=lambda: [128, 192, 256, 384, 512])
    intermediate_size: list[int] = dataclasses.field(default_factory=lambda: [512, 768, 1024, 1536, 2048])
    node_choices: list[str] = dataclasses.field(default_factory=lambda: list(NODE_CHOICES))

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


class SearchSpace:
    """The space of one study: a :class:`ModelSpace` and, optionally, a :class:`NodeSpace`."""

    def __init__(self, model: ModelSpace, nodes: NodeSpace | None = None):
        self.model = model
        self.nodes = nodes

    @classmethod
    def from_config(cls, config: SpaceConfig, base: ModelConfig | None = None, with_nodes: bool = False) -> "SearchSpace":
        return cls(ModelSpace(config, base), NodeSpace(config.node_choices) if with_nodes else None)

    def grid_search_space(self) -> dict[str, list[Any]]:
        """The grid of the whole space; ConfigError if it has per-node choices."""
        if self.nodes is not None:
            self.nodes.grid_search_space()  # raises
        return self.model.grid_search_space()

    def to_dict(self) -> dict[str, Any]:
        d = self.model.to_dict()
        d["nodes"] = self.nodes.to_dict() if self.nodes is not None else None
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
