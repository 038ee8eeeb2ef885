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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from mase_lite.config import Config
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph

PassFn = Callable[[MaseGraph, Any], "tuple[MaseGraph, dict[str, Any]]"]


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

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


PASSES: dict[str, PassSpec] = {}


def register_pass(name: str, config_cls: type[Config], kind: Literal["analysis", "transform"]) -> Callable[[PassFn], PassFn]:
    """Decorator registering a pass under ``name``."""

    def deco(fn: PassFn) -> PassFn:
        if name in PASSES and PASSES[name].fn is not fn:
            raise ValueError(f"pass {name!r} is already registered")
        PASSES[name] = PassSpec(name, fn, config_cls, kind)
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
