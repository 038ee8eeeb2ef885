"""Helpers of the benchmark-table tests: small synthetic tables, matching search configs, a bad sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna

from search.bench.synthetic import synthetic_rows, write_synthetic_table
from search.bench.table import BenchTable

#: 3 x 2 x 2 x 2 = 24 combinations; 3 heads with hidden 64 cannot be built: 18 buildable.
SMALL_SPACE = {"num_hidden_layers": [1, 2, 4], "num_attention_heads": [2, 3],
               "hidden_size": [48, 64], "intermediate_size": [128, 256]}


def make_table(directory: Path, space: Mapping[str, Sequence[int]] = SMALL_SPACE, seeds: Sequence[int] = (0, 1, 2),
               accuracy: Callable | None = None, **kw: Any) -> BenchTable:
    """Write a synthetic table into ``directory`` and load it."""
    write_synthetic_table(directory, space, seeds, accuracy, **kw)
    return BenchTable.load(directory)


def by_arch(values: Mapping[str, Any], default: Any = None) -> Callable:
    """An accuracy function from ``{arch id: (trained, compressed, finetuned) or per-seed list of those}``."""
    from search.bench.table import arch_id

    def acc(params, seed, rng):
        v = values.get(arch_id(params), default)
        return v[seed] if isinstance(v, list) else v

    return acc


def rows_for(space=SMALL_SPACE, seeds=(0, 1, 2), accuracy=None) -> list[dict[str, Any]]:
    return synthetic_rows(space, seeds, accuracy)


def write_config(path: Path, space: Mapping[str, Sequence[int]] = SMALL_SPACE, samplers: Sequence[str] = ("random", "tpe"),
                 variants: Sequence[str] = ("baseline",), extra: str = "") -> Path:
    """A search config TOML whose space is ``space`` (other tables default, as the synthetic manifests)."""
    def toml_list(v):
        return "[" + ", ".join(repr(x) if not isinstance(x, str) else f'"{x}"' for x in v) + "]"

    lines = ["[search]", 'name = "bench-test"', f"samplers = {toml_list(samplers)}", f"variants = {toml_list(variants)}",
             "sampler_options = { tpe_startup_trials = 3, nsga2_population = 4 }", "", "[space]"]
    lines += [f"{k} = {toml_list(v)}" for k, v in space.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


class FixedSampler(optuna.samplers.BaseSampler):
    """Always proposes the same parameters (a deliberately bad sampler when they are the worst architecture)."""

    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.params[param_name]


def worst_params(table: BenchTable, metric: str = "trained") -> dict[str, int]:
    m = table.means(metric)
    return dict(table.params[table.archs[int(np.nanargmin(m))]])
