"""Structured shrinking at its ties and half-way points: equal head / neuron scores (the lower index
goes first), fractional keeps exactly half-way between two counts (rounded half up), tiny fractions
(at least one unit stays), and the spread layer positions at x.5. Scores are set by writing weights
whose L1 norms are exact, so every expected index follows from the documented rule by hand."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from _compression_helpers import tiny_graph
from mase_lite import ConfigError
from passes import run_pass
from passes.transforms.shrink import spread_indices

O_PROJ = "bert.encoder.layer.0.attention.output.dense"  # 32 x 32: 2 heads of 16 columns
UP = "bert.encoder.layer.0.intermediate.dense"          # 64 x 32: neuron j is row j
DOWN = "bert.encoder.layer.0.output.dense"              # 32 x 64: neuron j is column j


def _set_head_scores(g, scores: list[float]) -> None:
    w = g.gm.get_submodule(O_PROJ).weight
    with torch.no_grad():
        for h, s in enumerate(scores):  # head h's 16 columns, each of 32 rows: L1 = 512 * value
            w[:, 16 * h:16 * (h + 1)] = s / 512
    assert w.shape == (32, 32)


def _set_neuron_scores(g, up: list[float], down: list[float]) -> None:
    with torch.no_grad():
        g.gm.get_submodule(UP).weight.copy_(torch.tensor(up).unsqueeze(1).expand(64, 32) / 32)
        g.gm.get_submodule(DOWN).weight.copy_(torch.tensor(down).unsqueeze(0).expand(32, 64) / 32)


def test_equal_head_scores_remove_the_lower_index():
    g = tiny_graph()
    _set_head_scores(g, [1.0, 1.0])
    g, info = run_pass(g, "prune_heads", {"keep": 1})
    assert info["layers"][0]["removed"] == [0] and info["layers"][0]["heads_after"] == 1
    assert info["layers"][0]["scores"] == [1.0, 1.0]


def test_head_scores_are_the_l1_norms_of_their_own_column_blocks():
    g = tiny_graph()
    _set_head_scores(g, [2.0, 1.0])
    g, info = run_pass(g, "prune_heads", {"keep": 1})
    assert info["layers"][0]["scores"] == [2.0, 1.0] and info["layers"][0]["removed"] == [1]


def test_equal_neuron_scores_remove_the_lowest_indices():
    g = tiny_graph()
    _set_neuron_scores(g, [1.0] * 64, [1.0] * 64)
    cfg = {"keep": 61}
    g, info = run_pass(g, "prune_ffn", cfg)
    assert info["layers"][0]["removed"] == [0, 1, 2]
    # the tie-broken choice is the decision the history records (a replay removes the same neurons)
    assert g.history[-1][0] == "prune_ffn" and g.history[-1][1]["remove"]["0"] == [0, 1, 2]
    assert cfg == {"keep": 61}  # the caller's config is not written
    assert g.gm.get_submodule(UP).weight.shape == (61, 32)


def test_neuron_score_is_up_row_plus_down_column():
    up, down = [1.0] * 64, [1.0] * 64
    up[3] = up[7] = 0.5
    down[7], down[10] = 2.0, 0.25
    scores = [u + d for u, d in zip(up, down)]  # 3: 1.5, 7: 2.5, 10: 1.25, others 2
    want = sorted(sorted(range(64), key=lambda j: (scores[j], j))[:2])
    assert want == [3, 10]
    g = tiny_graph()
    _set_neuron_scores(g, up, down)
    g, info = run_pass(g, "prune_ffn", {"keep": 62})
    assert info["layers"][0]["removed"] == want
    assert info["layers"][0]["scores"] == pytest.approx(scores)


def _half_up(f: Fraction) -> int:
    return math.floor(f + Fraction(1, 2))


@pytest.mark.parametrize("keep", [0.0703125, 0.0390625, 0.5390625])  # 4.5, 2.5 and 34.5 of 64 neurons
def test_a_fractional_keep_half_way_between_counts_rounds_up(keep):
    exact = Fraction(keep) * 64
    assert exact.denominator == 2  # really half-way
    want = max(1, _half_up(exact))
    g, info = run_pass(tiny_graph(), "prune_ffn", {"keep": keep})
    assert info["layers"][0]["width_after"] == want == int(exact) + 1
    assert len(info["layers"][0]["removed"]) == 64 - want


def test_a_tiny_fraction_keeps_one_neuron():
    g, info = run_pass(tiny_graph(), "prune_ffn", {"keep": 0.001})  # 0.064 neurons -> at least 1
    assert info["layers"][0]["width_after"] == 1
    assert g.gm.get_submodule(DOWN).weight.shape == (32, 1)


def test_spread_positions_round_half_up():
    for n, L in ((3, 6), (3, 4), (4, 6), (5, 9), (3, 8), (2, 5), (6, 12), (4, 8)):
        want = [_half_up(Fraction(i * (L - 1), n - 1)) for i in range(n)]
        assert spread_indices(n, list(range(L))) == want, (n, L)
    assert spread_indices(3, list(range(6))) == [0, 3, 5]  # 2.5 -> 3
    assert spread_indices(3, [10, 11, 12, 13]) == [10, 12, 13]  # 1.5 -> 2, positions map to the layer ids
    assert spread_indices(4, list(range(8))) == [0, 2, 5, 7]  # 7/3, 14/3: no tie


def test_keeping_every_head_or_neuron_is_valid_and_more_is_not():
    g, info = run_pass(tiny_graph(), "prune_ffn", {"keep": 64})
    assert info["layers"][0]["removed"] == [] and info["params_removed"] == 0
    with pytest.raises(ConfigError, match="keep = 65"):
        run_pass(tiny_graph(), "prune_ffn", {"keep": 65})


def test_a_modernbert_neuron_score_counts_both_halves_of_wi():
    # Wi holds [input | gate] rows j and 64 + j of neuron j; its score adds both rows and Wo's column j
    from mase_lite import trace
    from mase_lite.models import ModelConfig, build_model, example_inputs

    model = build_model(ModelConfig(model_type="modernbert", num_hidden_layers=1, num_attention_heads=4,
                                    hidden_size=32, intermediate_size=64, vocab_size=500,
                                    max_position_embeddings=64, seed=0, attn_implementation="eager")).eval()
    g = trace(model, example_inputs(model))
    gate = torch.ones(64)
    gate[[5, 9]] = 0.25
    with torch.no_grad():
        wi = g.gm.get_submodule("model.layers.0.mlp.Wi").weight
        assert wi.shape == (128, 32)
        wi[:64] = 1 / 32                       # input rows: L1 = 1
        wi[64:] = (gate / 32).unsqueeze(1)     # gate rows: L1 = gate[j]
        g.gm.get_submodule("model.layers.0.mlp.Wo").weight[:] = 1 / 32  # columns: L1 = 1
    g, info = run_pass(g, "prune_ffn", {"keep": 62})
    assert info["layers"][0]["removed"] == [5, 9]
    assert info["layers"][0]["scores"] == pytest.approx((1 + gate + 1).tolist())
    assert g.gm.get_submodule("model.layers.0.mlp.Wi").weight.shape == (124, 32)
