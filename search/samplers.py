"""Samplers by name: ``grid``, ``random``, ``tpe``, ``nsga2`` — each built seeded from a factory.

A study's sampler is written ``<name>`` (model-level choices only) or ``<name>+nodes`` (plus a
``linear``/``identity`` choice per square Linear). ``grid`` enumerates the Cartesian product of the
model-level lists, so ``grid+nodes`` is refused by :func:`parse_sampler`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import optuna

from mase_lite.config import Config, check_choice, check_range
from mase_lite.errors import ConfigError
from mase_lite.registry import Registry

from .space import SearchSpace

NODES_SUFFIX = "+nodes"


@dataclasses.dataclass
class SamplerOptions(Config):
    """Sampler settings in ``[search]`` that are not the sampler's name or seed."""

    tpe_startup_trials: int = 10
    nsga2_population: int = 16

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        check_range(f"{p}tpe_startup_trials", self.tpe_startup_trials, 0)
        check_range(f"{p}nsga2_population", self.nsga2_population, 2)


Factory = Callable[[SearchSpace, int, SamplerOptions], optuna.samplers.BaseSampler]
#: name -> factory; a name taken by another factory is a DuplicateRegistration (mase_lite.registry).
SAMPLERS: Registry[Factory] = Registry("sampler")


def register_sampler(name: str) -> Callable[[Factory], Factory]:
    """Decorator adding a sampler factory ``(space, seed, options) -> sampler`` under ``name`` (a name
    already taken by another factory is an error)."""

    def deco(fn: Factory) -> Factory:
        return SAMPLERS.register(name, fn)

    return deco


@register_sampler("grid")
def _grid(space: SearchSpace, seed: int, options: SamplerOptions) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GridSampler(space.grid_search_space(), seed=seed)


@register_sampler("random")
def _random(space: SearchSpace, seed: int, options: SamplerOptions) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


@register_sampler("tpe")
def _tpe(space: SearchSpace, seed: int, options: SamplerOptions) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=options.tpe_startup_trials)


@register_sampler("nsga2")
def _nsga2(space: SearchSpace, seed: int, options: SamplerOptions) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=options.nsga2_population)


def parse_sampler(spec: str, path: str = "search.samplers") -> tuple[str, bool]:
    """``"tpe+nodes"`` -> ``("tpe", True)``; ConfigError for unknown names and for ``grid+nodes``."""
    name, nodes = (spec[: -len(NODES_SUFFIX)], True) if spec.endswith(NODES_SUFFIX) else (spec, False)
    valid = [*SAMPLERS, *(f"{n}{NODES_SUFFIX}" for n in SAMPLERS if n != "grid")]
    if name not in SAMPLERS:
        check_choice(path, spec, valid)
    if nodes and name == "grid":
        raise ConfigError(
            f"{path}: 'grid+nodes' is not possible: the grid sampler enumerates model-level parameters only, "
            f"and per-node choices (linear/identity per square Linear) depend on the sampled architecture; "
            f"use 'grid' for the model-level grid, or 'random+nodes' / 'tpe+nodes' for per-node choices"
        )
    return name, nodes


def make_sampler(name: str, space: SearchSpace, seed: int, options: SamplerOptions | None = None) -> optuna.samplers.BaseSampler:
    """The seeded sampler ``name`` for ``space``."""
    if name not in SAMPLERS:
        check_choice("sampler", name, list(SAMPLERS))
    return SAMPLERS[name](space, seed, options or SamplerOptions())
