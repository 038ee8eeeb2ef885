"""Helpers shared by the search tests: a fake trainer and a cached-tracing lifecycle (also used by subprocess workers)."""

from __future__ import annotations

import functools
import json
import zlib

from mase_lite.graph import MaseGraph
from mase_lite.models import ModelConfig
from mase_lite.training import TrainingDivergedError
from search.lifecycle import Lifecycle, Trainer
from search.space import describe_graph


class FakeTraining(Trainer):
    """A fake :class:`search.lifecycle.Trainer`: a deterministic accuracy per graph, no training.

    The accuracy depends on the architecture (layers, heads, sizes, remaining linear nodes);
    compression costs 0.1 and fine-tuning gives 0.05 back; on the test split it is 0.01 lower than on
    the validation split. ``fail_hidden``: training a model of that hidden size raises the NaN-loss error.
    ``calls`` records training and validation calls; evaluations on the test split go to ``test_calls``.
    """

    def __init__(self):
        self.calls: list[tuple] = []
        self.test_calls: list[tuple] = []
        self.fail_hidden: int | None = None

    def train_and_eval(self, graph, splits, cfg, train=True, *, split="val", callback=None):
        arch = describe_graph(graph)
        key = (arch["num_hidden_layers"], arch["num_attention_heads"], arch["hidden_size"],
               arch["intermediate_size"], len(arch["linear_paths"]))
        compressed = any(name == "quantize" for name, _ in graph.history)
        (self.test_calls if split == "test" else self.calls).append((key, compressed, train))
        if train and arch["hidden_size"] == self.fail_hidden:
            raise TrainingDivergedError("training loss became nan at step 3 of 8 (lr 0.001)")
        acc = 0.55 + (zlib.crc32(repr(key).encode()) % 300) / 1000
        if compressed:
            acc -= 0.05 if train else 0.1
        if split == "test":
            acc -= 0.01
        out = {"accuracy": acc, "loss": 1 - acc, "eval_s": 0.001, "n": 64}
        if train:
            out.update(train_s=0.002, train_loss=0.6)
        return out


class FakeLifecycle(Lifecycle):
    """A :class:`Lifecycle` that loads no data (its fake trainer needs none) and traces each model
    config once per process (a fresh copy per build)."""

    def load_data(self, data_cfg, model, splits=("train", "val", "test")):
        return None

    def build(self, config: ModelConfig) -> MaseGraph:
        return _traced(json.dumps(config.to_dict(), sort_keys=True), self.attn_implementation).copy()


@functools.lru_cache(maxsize=None)
def _traced(config_json: str, attn: str | None) -> MaseGraph:
    return Lifecycle(attn_implementation=attn).build(ModelConfig.from_dict(json.loads(config_json)))


def fake_lifecycle(fake: FakeTraining | None = None) -> FakeLifecycle:
    """A :class:`FakeLifecycle` whose trainer is ``fake`` (a new :class:`FakeTraining` by default)."""
    return FakeLifecycle(trainer=fake or FakeTraining())
