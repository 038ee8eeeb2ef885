"""The pass registry: every pass is a function ``(graph, config) -> (graph, info)`` registered by name.

Writing a pass::

    @dataclass
    class MyConfig(Config):
        threshold: float = 0.5

    @register_pass("my_pass", MyConfig, kind="transform", example={"threshold": 0.1})
    def my_pass(graph: MaseGraph, config: MyConfig) -> tuple[MaseGraph, dict]:
        ...  # edit graph.gm.graph (the runner recompiles it, once, after the pass)
        return graph, {"changed": [...]}

The contract: a pass reads its ``config`` and never writes to it; it edits the graph it is given
(the runner hands it a copy), writes node annotations with ``graph.set_annotation`` and tensor
values with ``graph.write_tensor``, and returns ``(graph, info)`` -- or ``PassResult(graph, info,
decisions)`` when it chose something the history must record (below). The runner
(:func:`passes.pipeline.run_pass`) does what every pass needs: it validates the config before
anything changes, never mutates the caller's config, runs the pass on a copy and commits it only on
success (so a failing pass leaves code, tensors, metadata and annotations as they were), and records
transform passes in ``graph.history`` so ``MaseGraph.load`` can replay them.

Examples: ``register_pass(..., example=...)`` gives a config (a dict, or a :class:`PassExample` with
a context factory for passes that need data) that runs the pass on a tiny traced BERT classifier
(2 layers, 2 heads). ``tests/test_pass_contract.py`` runs every registered pass with its example
and checks the contract above; a pass registered without one fails that test.

Versions: ``register_pass(..., version=N)`` (default 1). Every history entry carries the version of
the pass that made it (``graph.history[i].version``, saved with the graph); bump it when the meaning
of a recorded config changes. Replaying an entry made by a newer version than the installed pass is
an error; entries saved before versions existed count as version 1.

Data-dependent choices (*decisions*): a pass that chooses something from data (a calibrated range,
a fraction width from ``max |w|``, the layers ``num_layers`` keeps) returns the concrete choice as
``PassResult(graph, info, {field: value})``, values of its config's own fields (e.g. quantize's
``resolved``, shrink_layers' ``keep``). The runner records the config with those fields replaced,
so that a replay makes the same graph without the data. A pass that writes into its config instead
is a PassError.

Giving a pass data (ONE way, for calibration now and e.g. gradient-based importance scores later):
``run_pass(graph, name, config, context=PassContext(batches=...))``. A pass registered with
``takes_context=True`` is called as ``fn(graph, config, context)``; ``context.batches`` is an
iterable of keyword-input dicts, as the graph is called (``graph(**batch)``; a ``labels`` entry is
passed on, for losses), or ``None``. Passes that need data say so with one ConfigError when it is
missing. Replays (``MaseGraph.load``) give no data, so such a pass returns as decisions whatever it
derived from the data (see above) and uses the recorded values when it finds them.

After a transform the runner does what every transform needs, once (as torch.fx's ``PassManager``):
it drops dead code, lints the graph (a graph that does not lint is a PassError naming the pass, and
nothing is committed), regenerates the code and re-annotates the node metadata. A transform does not
call ``graph.recompile()`` itself.

Requirements: a pass declares what it establishes on the graph with ``provides=("name", ...)`` and
what it needs before it runs with ``requires=`` (names, or a function ``config -> names`` when it
depends on the config); :func:`passes.pipeline.unmet_requirements` lists what a pipeline needs that
no earlier step provides. ``"calibration"``: per-node value ranges (``calibrate`` provides it;
``quantize`` requires it when an activation format derives its scale from a range). Code that
prepares a pipeline asks these declarations, never pass names (see ``passes.analysis.calibrate``).

Recorded analysis passes: ``register_pass(..., kind="analysis", recorded=True)`` -- an analysis pass
whose results are node metadata worth keeping (``calibrate``'s ranges) is recorded in the history
too, so the metadata comes back on ``load``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, NamedTuple, Optional

import torch

from mase_lite.config import Config
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph
from mase_lite.registry import Registry

PassFn = Callable[..., "tuple[MaseGraph, dict[str, Any]] | PassResult"]


class PassResult(NamedTuple):
    """What a pass returns: the graph, ``info`` for the caller, and ``decisions`` -- the config
    fields it chose from data or weights (``{field: value}``; ``None``: nothing), which the runner
    records in the history in place of the given values (see the module docstring)."""

    graph: MaseGraph
    info: dict[str, Any]
    decisions: Optional[dict[str, Any]] = None


@dataclass
class PassContext:
    """What a pass registered with ``takes_context=True`` receives besides its config.

    ``batches``: an iterable of input dicts (``graph(**batch)``; may hold ``labels``), or ``None``
    (e.g. when ``MaseGraph.load`` replays a history). Passes read only the batches they need.
    ``extras``: further named inputs for passes that need them (documented by each such pass).
    """

    batches: Optional[Iterable[Mapping[str, Any]]] = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassExample:
    """A config that runs a pass on a tiny traced BERT classifier, and for a pass that needs data a
    ``context`` factory ``(graph) -> PassContext`` (e.g. :func:`example_context`)."""

    config: Mapping[str, Any] = field(default_factory=dict)
    context: Optional[Callable[[MaseGraph], PassContext]] = None

    def make_context(self, graph: MaseGraph) -> Optional[PassContext]:
        """The context to run the example on ``graph`` with (None without a factory)."""
        return None if self.context is None else self.context(graph)


def example_context(graph: MaseGraph, num_batches: int = 2, batch: int = 2, seq: int = 8) -> PassContext:
    """``num_batches`` seeded random batches of ``graph``'s inputs, with ``labels``: data for examples."""
    from mase_lite.models import random_inputs

    hf = graph.model_info.get("hf_config") or {}
    num_labels = int(graph.model_info.get("num_labels") or 2)
    batches = []
    for i in range(num_batches):
        inputs = random_inputs(graph.input_names, hf, batch, seq, seed=i)
        inputs["labels"] = torch.randint(0, num_labels, (batch,), generator=torch.Generator().manual_seed(i))
        batches.append(inputs)
    return PassContext(batches=batches)


@dataclass(frozen=True)
class PassSpec:
    """A registered pass: its name, function, config class and kind.

    ``analysis`` passes only annotate or measure; ``transform`` passes change the graph and are
    recorded in its history. ``example``: see :class:`PassExample` (None: not given). ``provides`` /
    ``requires``: see "Requirements" in the module docstring.
    """

    name: str
    fn: PassFn
    config_cls: type[Config]
    kind: Literal["analysis", "transform"]
    version: int = 1
    takes_context: bool = False
    recorded: bool = False
    example: Optional[PassExample] = None
    provides: tuple[str, ...] = ()
    requires: tuple[str, ...] | Callable[[Any], Iterable[str]] = ()

    def requirements(self, config: Config | Mapping[str, Any] | None) -> frozenset[str]:
        """What this pass needs before it runs with ``config`` (a config or its dict)."""
        if not callable(self.requires):
            return frozenset(self.requires)
        if not isinstance(config, self.config_cls):
            config = self.config_cls.from_dict(dict(config or {}), path=self.name)
        return frozenset(self.requires(config))

    @property
    def in_history(self) -> bool:
        """Whether running this pass adds a history entry (transforms, and recorded analyses)."""
        return self.kind == "transform" or self.recorded

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


#: name -> spec. A :class:`mase_lite.registry.Registry`: a name taken by another function is a
#: DuplicateRegistration (registering the same function again is a no-op).
PASSES: Registry[PassSpec] = Registry("pass", identity=lambda spec: spec.fn)


def register_pass(name: str, config_cls: type[Config], kind: Literal["analysis", "transform"], *,
                  version: int = 1, takes_context: bool = False, recorded: bool = False,
                  example: PassExample | Mapping[str, Any] | None = None, provides: Iterable[str] = (),
                  requires: Iterable[str] | Callable[[Any], Iterable[str]] = ()) -> Callable[[PassFn], PassFn]:
    """Decorator registering a pass under ``name`` (``version``, ``takes_context``, ``recorded``,
    ``example`` -- a config dict or a :class:`PassExample` --, ``provides`` and ``requires``: see the
    module docstring). A name already registered to another function is a DuplicateRegistration."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"pass {name!r}: version must be an integer >= 1, got {version!r}")
    if isinstance(example, Mapping):
        example = PassExample(dict(example))
    elif example is not None and not isinstance(example, PassExample):
        raise ValueError(f"pass {name!r}: example must be a config dict or a PassExample, got {example!r}")

    def deco(fn: PassFn) -> PassFn:
        PASSES.register(name, PassSpec(name, fn, config_cls, kind, version, takes_context, recorded, example,
                                       tuple(provides), requires if callable(requires) else tuple(requires)))
        return fn

    return deco


def get_pass(name: str) -> PassSpec:
    """The registered pass ``name``; ConfigError listing the valid names otherwise."""
    _load_builtin()
    if name not in PASSES:
        from mase_lite.config import _suggest

        raise ConfigError(f"unknown pass {name!r}{_suggest(name, list(PASSES))}; valid passes: {', '.join(sorted(PASSES))}")
    return PASSES[name]


def available_passes() -> list[str]:
    _load_builtin()
    return sorted(PASSES)


def _load_builtin() -> None:
    # Importing the subpackages registers the built-in passes.
    import passes.analysis  # noqa: F401
    import passes.transforms  # noqa: F401
