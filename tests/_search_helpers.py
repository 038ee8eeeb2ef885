"""Helpers shared by the search tests: fake training, cached tracing (also used by subprocess workers)."""

from __future__ import annotations

import functools
import json
import zlib

import search.objectives as objectives
from mase_lite.graph import MaseGraph
from mase_lite.models import ModelConfig
from mase_lite.training import TrainingDivergedError
from search.space import describe_graph


class FakeTraining:
    """Stands in for :func:`search.objectives.train_and_eval`: a deterministic accuracy per graph.

    The accuracy depends on the architecture (layers, heads, sizes, remaining linear nodes);
    compression costs 0.1 and fine-tuning gives 0.05 back. ``fail_hidden``: training
    a model of that hidden size raises the NaN-loss error.
    """

    def __init__(self):
        self.calls: list[tuple] = []
        self.fail_hidden: int | None = None

    def __call__(self, graph, splits, cfg, train=True):
        arch = describe_graph(graph)
        key = (arch["num_hidden_layers"], arch["num_attention_heads"], arch["hidden_size"],
               arch["intermediate_size"], len(arch["linear_paths"]))
        compressed = any(name == "quantize" for name, _ in graph.history)
        self.calls.append((key, compressed, train))
        if train and arch["hidden_size"] == self.fail_hidden:
            raise TrainingDivergedError("training loss became nan at step 3 of 8 (lr 0.001)")
        acc = 0.55 + (zlib.crc32(repr(key).encode()) % 300) / 1000
        if compressed:
            acc -= 0.05 if train else 0.1
        out = {"accuracy": acc, "loss": 1 - acc, "eval_s": 0.001}
        if train:
            out.update(train_s=0.002, train_loss=0.6)
        return out


_REAL_BUILD = objectives.build_graph


@functools.lru_cache(maxsize=None)
def _traced(config_json: str) -> MaseGraph:
    return _REAL_BUILD(ModelConfig.from_dict(json.loads(config_json)))


def cached_build_graph(config: ModelConfig) -> MaseGraph:
    """:func:`search.objectives.build_graph`, traced once per config in this process (a fresh copy each call)."""
    return _traced(json.dumps(config.to_dict(), sort_keys=True)).copy()
