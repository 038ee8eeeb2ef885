"""The pass registry: every pass is a function ``(graph, config) -> (graph, info)`` registered by name.

Writing a pass::

    @dataclass
    class MyConfig(Config):
        threshold: float = 0.5

    @register_pass("my_pass", MyConfig, kind="transform")
    def my_pass(graph: MaseGraph, config: MyConfig) -> tuple[MaseGraph, dict]:
        ...  # edit graph.gm.graph, then graph.recompile()
        return graph, {"changed": [...]}

The runner (:func:`passes.pipeline.run_pass`) validates the config before anything changes, never
mutates the caller's config, runs the pass on a copy and commits it only on success, and records
transform passes in ``graph.history`` so ``MaseGraph.load`` can replay them.

Versions: ``register_pass(..., version=N)`` (default 1). Every history entry carries the version of
the pass that made it (``graph.history[i].version``, saved with the graph); bump it when the meaning
of a recorded config changes. Replaying an entry made by a newer version than the installed pass is
an error; entries saved before versions existed count as version 1.

Data-dependent choices: a pass that chooses something from data (a calibrated range, a fraction
width from ``max |w|``) writes the concrete choice into its ``config`` object -- the runner's private
copy, which is what gets recorded -- so that a replay makes the same graph without the data.

Giving a pass data (ONE way, for calibration now and e.g. gradient-based importance scores later):
``run_pass(graph, name, config, context=PassContext(batches=...))``. A pass registered with
``takes_context=True`` is called as ``fn(graph, config, context)``; ``context.batches`` is an
iterable of keyword-input dicts, as the graph is called (``graph(**batch)``; a ``labels`` entry is
passed on, for losses), or ``None``. Passes that need data say so with one ConfigError when it is
missing. Replays (``MaseGraph.load``) give no data, so such a pass records in its config whatever it
derived from the data (see above) and uses the recorded values when it finds them.

Recorded analysis passes: ``register_pass(..., kind="analysis", recorded=True)`` -- an analysis pass
whose results are node metadata worth keeping (``calibrate``'s ranges) is recorded in the history
too, so the metadata comes back on ``load``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Optional

from mase_lite.config import Config
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph

PassFn = Callable[..., "tuple[MaseGraph, dict[str, Any]]"]


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
class PassSpec:
    """A registered pass: its name, function, config class and kind.

    ``analysis`` passes only annotate or measure; ``transform`` passes change the graph and are
    recorded in its history.
    """

    name: str
    fn: PassFn
    config_cls: type[Config]
    kind: Literal["analysis", "transform"]
    version: int = 1
    takes_context: bool = False
    recorded: bool = False

    @property
    def in_history(self) -> bool:
        """Whether running this pass adds a history entry (transforms, and recorded analyses)."""
        return self.kind == "transform" or self.recorded

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


PASSES: dict[str, PassSpec] = {}


def register_pass(name: str, config_cls: type[Config], kind: Literal["analysis", "transform"], *,
                  version: int = 1, takes_context: bool = False, recorded: bool = False) -> Callable[[PassFn], PassFn]:
    """Decorator registering a pass under ``name`` (``version``, ``takes_context``, ``recorded``: see
    the module docstring)."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"pass {name!r}: version must be an integer >= 1, got {version!r}")

    def deco(fn: PassFn) -> PassFn:
        if name in PASSES and PASSES[name].fn is not fn:
            raise ValueError(f"pass {name!r} is already registered")
        PASSES[name] = PassSpec(name, fn, config_cls, kind, version, takes_context, recorded)
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
