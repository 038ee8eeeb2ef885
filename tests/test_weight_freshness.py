"""Evaluation after training sees the trained weights: no derived-weight cache outlives an evaluation.

The reference is always independent of the graph under test: a fresh ``MaseGraph.load`` of what was
saved, evaluated on the same rows. Everything runs in fp32, where evaluation is bit-reproducible.
"""

from __future__ import annotations

import pytest
import torch

from mase_lite import MaseGraph
from mase_lite.models import ModelConfig, build_model, example_inputs
from mase_lite.graph import trace
from mase_lite.training import TrainConfig, evaluate, train
from passes import run_pipeline

from _compression_helpers import LAB2_PRUNE, LINEAR_8_4

RECIPE = TrainConfig(batch_size=16, lr=3e-3, precision="fp32", progress=False, num_threads=1, seed=3)


def _compressed_graph() -> MaseGraph:
    cfg = ModelConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                      max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, seed=0)
    model = build_model(cfg).eval()
    graph = trace(model, example_inputs(model))
    run_pipeline(graph, {"passes": {"quantize": LINEAR_8_4, "prune": LAB2_PRUNE}})
    return graph


def _eval(graph, ds):
    return evaluate(graph, ds, batch_size=32, precision="fp32", num_threads=1)


def _logits(graph, ds):
    from mase_lite.training import TokenArrays

    data = TokenArrays.from_dataset(ds)
    batch = data.collate(list(range(len(data))))
    batch.pop("labels")
    graph.eval()
    with torch.inference_mode():
        return graph(**batch).logits


@pytest.mark.parametrize("mid_training_eval", [False, True])
def test_evaluate_train_evaluate_matches_a_fresh_load(tiny_splits, tmp_path, mid_training_eval):
    graph = _compressed_graph()
    before = _eval(graph, tiny_splits.val)
    seen = []
    cfg = RECIPE.replace(eval_every=4) if mid_training_eval else RECIPE
    callback = (lambda state: seen.append(state.evaluate())) if mid_training_eval else None
    train(graph, tiny_splits.train.select(range(128)), cfg, eval_ds=tiny_splits.val, callback=callback)
    assert not mid_training_eval or len(seen) == 2
    after = _eval(graph, tiny_splits.val)
    graph.save(tmp_path / "g")
    fresh = MaseGraph.load(tmp_path / "g")
    ref = _eval(fresh, tiny_splits.val)
    assert (after.accuracy, after.loss) == (ref.accuracy, ref.loss)
    assert torch.equal(_logits(graph, tiny_splits.val), _logits(fresh, tiny_splits.val))
    assert after.loss != before.loss, "training must have changed the model"


def test_fused_optimizer_updates_are_seen_by_the_next_evaluation(tiny_splits):
    """The exact sequence of the old bug: fused AdamW does not bump ``_version``."""
    graph = _compressed_graph()
    w = graph.gm.get_parameter("bert.encoder.layer.0.attention.self.query.weight")
    _eval(graph, tiny_splits.val)
    v0 = w._version
    train(graph, tiny_splits.train.select(range(64)), RECIPE)
    fresh = graph.copy()  # a deep copy computes everything anew
    assert torch.equal(_logits(graph, tiny_splits.val), _logits(fresh, tiny_splits.val))
    assert (_eval(graph, tiny_splits.val).loss == _eval(fresh, tiny_splits.val).loss)
    assert w._version >= v0  # whatever the optimizer did to the counter, the result is fresh


def test_load_state_dict_and_data_edits_are_seen(tiny_splits):
    graph = _compressed_graph()
    other = _compressed_graph()
    with torch.no_grad():
        for p in other.parameters():
            p.data.mul_(0.5)  # a .data edit bumps nothing
    _eval(graph, tiny_splits.val)
    graph.gm.load_state_dict(other.gm.state_dict())
    assert torch.equal(_logits(graph, tiny_splits.val), _logits(other, tiny_splits.val))
    _eval(other, tiny_splits.val)
    with torch.no_grad():
        for p in other.parameters():
            p.data.mul_(2.0)
    assert not torch.equal(_logits(graph, tiny_splits.val), _logits(other, tiny_splits.val))
