"""Structured shrinking passes (``shrink_layers``, ``prune_heads``, ``prune_ffn``): smaller parameter
shapes, exact parameter/MAC accounting, equivalence (nothing removed: bit for bit; something removed:
against zeroed heads / neurons or a rebuilt layer stack in the eager HF model), hand-computed
rankings, the gradient score through the pass context, save/load, fine-tuning, compression after
shrinking, and every bad input.

Models are tiny (3 layers, 32 wide, 4 heads of 8, FFN 48) and each family is traced once per module.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from _compression_helpers import LAB2_PRUNE, LINEAR_8_4, reference_graph
from test_families import family_config, padded_inputs
from mase_lite import ConfigError, MaseGraph, trace
from mase_lite.models import MODEL_TYPES, build_model, example_inputs
from passes import PassContext, run_pass, run_pipeline
from passes.transforms.shrink import spread_indices
from search.space import describe_graph, layer_indices

D, H, HIDDEN, FFN, LAYERS = 8, 4, 32, 48, 3
#: the families parametrised over (RoBERTa and ELECTRA have BERT's layer code, module paths aside)
FAMILIES = [t for t in MODEL_TYPES if t not in ("roberta", "electra")]

#: module path templates per family: attention output projection, FFN down projection
O_PROJ = {
    "bert": "bert.encoder.layer.{i}.attention.output.dense",
    "roberta": "roberta.encoder.layer.{i}.attention.output.dense",
    "electra": "electra.encoder.layer.{i}.attention.output.dense",
    "distilbert": "distilbert.transformer.layer.{i}.attention.out_lin",
    "albert": "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.dense",
    "deberta-v2": "deberta.encoder.layer.{i}.attention.output.dense",
    "modernbert": "model.layers.{i}.attn.Wo",
    "gpt2": "transformer.h.{i}.attn.c_proj",
    "llama": "model.layers.{i}.self_attn.o_proj",
}
DOWN_PROJ = {
    "bert": "bert.encoder.layer.{i}.output.dense",
    "roberta": "roberta.encoder.layer.{i}.output.dense",
    "electra": "electra.encoder.layer.{i}.output.dense",
    "distilbert": "distilbert.transformer.layer.{i}.ffn.lin2",
    "albert": "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn_output",
    "deberta-v2": "deberta.encoder.layer.{i}.output.dense",
    "modernbert": "model.layers.{i}.mlp.Wo",
    "gpt2": "transformer.h.{i}.mlp.c_proj",
    "llama": "model.layers.{i}.mlp.down_proj",
}


def make_model(model_type: str, impl: str = "eager") -> nn.Module:
    return build_model(family_config(model_type, num_hidden_layers=LAYERS, intermediate_size=FFN,
                                     attn_implementation=impl)).eval()


@functools.lru_cache(maxsize=None)
def _built(model_type: str, impl: str = "eager"):
    model = make_model(model_type, impl)
    return model, trace(model, example_inputs(model))


def built(model_type: str, impl: str = "eager"):
    """(a fresh copy of the eager model, a fresh copy of its traced graph)."""
    model, graph = _built(model_type, impl)
    return copy.deepcopy(model), graph.copy()


def logits(graph_or_model, x):
    with torch.no_grad():
        return graph_or_model.eval()(**x).logits


def shapes(graph: MaseGraph) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in graph.gm.named_parameters()}


# ------------------------------------------------------------------------------------------ shapes and cost


def test_prune_heads_shapes_and_cost():
    model, g = built("bert")
    before_shapes, before = shapes(g), run_pass(g, "cost", {})[1]
    g, info = run_pass(g, "prune_heads", {"keep": {"0": 2, "2": 3}})
    after_shapes, after = shapes(g), run_pass(g, "cost", {})[1]
    p = "bert.encoder.layer.{}.attention."
    for i, heads in ((0, 2), (1, 4), (2, 3)):
        for proj in ("self.query", "self.key", "self.value"):
            assert after_shapes[p.format(i) + proj + ".weight"] == (heads * D, HIDDEN)
            assert after_shapes[p.format(i) + proj + ".bias"] == (heads * D,)
        assert after_shapes[p.format(i) + "output.dense.weight"] == (HIDDEN, heads * D)
        assert after_shapes[p.format(i) + "output.dense.bias"] == (HIDDEN,)
    changed = {k for k in before_shapes if before_shapes[k] != after_shapes[k]}
    assert len(changed) == 2 * 7  # 2 layers x (q, k, v weights and biases, o weight)
    # removed per head: q/k/v rows (D x HIDDEN + D bias each) + o columns (HIDDEN x D); 3 heads removed
    per_head = 3 * (D * HIDDEN + D) + HIDDEN * D
    assert before["params"] - after["params"] == 3 * per_head == info["params_removed"]
    # MACs: every q/k/v/o linear of a layer shrinks by (removed heads / heads), attention likewise
    seq = 128
    lin = seq * HIDDEN * D * 4  # q, k, v, o per head
    attn = seq * seq * (D + D)  # QK^T and PV per head
    assert before["macs"] - after["macs"] == 3 * (lin + attn)
    assert [r["heads_after"] for r in info["layers"]] == [2, 3]
    assert describe_graph(g)["heads_per_layer"] == {0: 2, 1: 4, 2: 3}
    assert describe_graph(g)["num_attention_heads"] == [2, 3, 4]


def test_prune_ffn_shapes_and_cost():
    _, g = built("bert")
    before = run_pass(g, "cost", {})[1]
    g, info = run_pass(g, "prune_ffn", {"keep": 20})
    s = shapes(g)
    for i in range(LAYERS):
        assert s[f"bert.encoder.layer.{i}.intermediate.dense.weight"] == (20, HIDDEN)
        assert s[f"bert.encoder.layer.{i}.intermediate.dense.bias"] == (20,)
        assert s[f"bert.encoder.layer.{i}.output.dense.weight"] == (HIDDEN, 20)
    after = run_pass(g, "cost", {})[1]
    removed = LAYERS * (FFN - 20) * (HIDDEN + 1 + HIDDEN)
    assert before["params"] - after["params"] == removed == info["params_removed"]
    assert before["macs"] - after["macs"] == LAYERS * 128 * (FFN - 20) * 2 * HIDDEN
    assert describe_graph(g)["intermediate_size"] == 20
    # a fraction: floor(0.25 * 48 + 0.5) = 12 per layer
    _, g2 = built("bert")
    g2, _ = run_pass(g2, "prune_ffn", {"keep": 0.25})
    assert shapes(g2)["bert.encoder.layer.1.output.dense.weight"] == (HIDDEN, 12)
    assert all(len(r) == FFN - 12 for r in g2.history[-1][1]["remove"].values())


def test_shrink_layers_shapes_and_cost():
    model, g = built("bert")
    before = run_pass(g, "cost", {})[1]
    layer1 = sum(p.numel() for p in model.bert.encoder.layer[1].parameters())
    layer1_macs = sum(r["macs"] for r in before["nodes"] if ".layer.1." in r["module"] + ".")
    g, info = run_pass(g, "shrink_layers", {"keep": [0, 2]})
    after = run_pass(g, "cost", {})[1]
    assert before["params"] - after["params"] == layer1 == info["params_removed"]
    assert not any(".layer.1." in k for k in shapes(g))
    assert before["macs"] - after["macs"] == layer1_macs > 0
    assert info["kept"] == [0, 2] and info["removed"] == [1]
    assert describe_graph(g)["num_hidden_layers"] == 2


def test_num_layers_strategies_are_resolved_and_recorded():
    assert spread_indices(6, list(range(12))) == [0, 2, 4, 7, 9, 11]
    assert spread_indices(2, [0, 1, 2, 3]) == [0, 3]
    assert spread_indices(1, [0, 1, 2]) == [2]
    for cfg, keep in (({"num_layers": 2}, [0, 2]), ({"num_layers": 2, "strategy": "first"}, [0, 1]),
                      ({"num_layers": 1}, [2])):
        _, g = built("bert")
        g, info = run_pass(g, "shrink_layers", cfg)
        assert info["kept"] == keep
        assert g.history[-1][1] == {"keep": keep, "strategy": cfg.get("strategy", "spread")}  # num_layers cleared
    # shrinking again uses the original indices
    g, info = run_pass(built("bert")[1], "shrink_layers", {"keep": [0, 2]})
    g, info = run_pass(g, "shrink_layers", {"keep": [2]})
    assert info["removed"] == [0] and describe_graph(g)["num_hidden_layers"] == 1


# ------------------------------------------------------------------------------------------ equivalence


KEEP_ALL = [("shrink_layers", {"keep": [0, 1, 2]}), ("prune_heads", {"keep": H}), ("prune_ffn", {"keep": FFN})]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_nothing_removed_is_bit_identical(model_type):
    model, g = built(model_type)
    x = padded_inputs(model)
    ref = logits(g, x)
    for name, cfg in KEEP_ALL:
        h, info = run_pass(g.copy(), name, cfg)
        assert torch.equal(logits(h, x), ref), name
        assert info["params_removed"] == 0 and shapes(h) == shapes(g)


def _zero_columns(model: nn.Module, path: str, cols: list[int]) -> None:
    w = model.get_submodule(path).weight
    with torch.no_grad():
        w[:, cols] = 0


HEADS_REMOVED = {"0": [1], "2": [0, 3]}
LLAMA_HEADS_REMOVED = {"0": [1, 2], "2": [0, 3]}  # one query head from each of the 2 KV groups


@pytest.mark.parametrize("model_type, impl", [(t, "eager") for t in FAMILIES] + [("bert", "sdpa"), ("llama", "sdpa"),
                                                                                   ("gpt2", "sdpa")])
def test_removing_heads_equals_zeroing_their_output_columns(model_type, impl):
    model, g = built(model_type, impl)
    remove = {"albert": {"0": [1, 2]}, "llama": LLAMA_HEADS_REMOVED}.get(model_type, HEADS_REMOVED)
    g, _ = run_pass(g, "prune_heads", {"remove": remove})
    for key, heads in remove.items():
        _zero_columns(model, O_PROJ[model_type].format(i=key), [h * D + j for h in heads for j in range(D)])
    x = padded_inputs(model)
    torch.testing.assert_close(logits(g, x), logits(model, x), atol=1e-5, rtol=1e-5)
    got = describe_graph(g)["heads_per_layer"]
    if model_type == "albert":  # one shared layer: every layer (call) lost the same heads
        assert got == {i: H - 2 for i in range(LAYERS)}
    else:
        assert got == {i: H - len(remove.get(str(i), [])) for i in range(LAYERS)}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_removing_ffn_neurons_equals_zeroing_their_down_columns(model_type):
    model, g = built(model_type)
    remove = {"0": [0, 5, 47]} if model_type == "albert" else {"0": [0, 5, 47], "1": list(range(10, 40))}
    g, info = run_pass(g, "prune_ffn", {"remove": remove})
    for key, cols in remove.items():
        _zero_columns(model, DOWN_PROJ[model_type].format(i=key), cols)
    x = padded_inputs(model)
    torch.testing.assert_close(logits(g, x), logits(model, x), atol=1e-5, rtol=1e-5)
    assert [r["width_after"] for r in info["layers"]] == [FFN - len(v) for v in remove.values()]


@pytest.mark.parametrize("model_type, stack", [("bert", "bert.encoder.layer"), ("gpt2", "transformer.h"),
                                               ("llama", "model.layers"), ("distilbert", "distilbert.transformer.layer")])
def test_shrink_layers_equals_the_model_with_those_layers(model_type, stack):
    model, g = built(model_type)
    g, _ = run_pass(g, "shrink_layers", {"keep": [0, 2]})
    owner, _, attr = stack.rpartition(".")
    layers = getattr(model.get_submodule(owner), attr)
    setattr(model.get_submodule(owner), attr, nn.ModuleList([layers[0], layers[2]]))
    x = padded_inputs(model)
    torch.testing.assert_close(logits(g, x), logits(model, x), atol=1e-5, rtol=1e-5)


def test_albert_shrink_layers_saves_macs_but_no_parameters():
    model, g = built("albert")
    before = run_pass(g, "cost", {})[1]
    g, info = run_pass(g, "shrink_layers", {"keep": [0, 2]})
    after = run_pass(g, "cost", {})[1]
    assert info["params_removed"] == 0 and after["params"] == before["params"]
    assert after["size_bytes_fp32"] == before["size_bytes_fp32"]
    layer_macs = [sum(r["macs"] for r in before["nodes"] if "albert_layers" in r["module"])]
    assert before["macs"] - after["macs"] == layer_macs[0] // 3 > 0  # one of three calls gone
    model.config.num_hidden_layers = 2  # the shared layer applied twice
    x = padded_inputs(model)
    torch.testing.assert_close(logits(g, x), logits(model, x), atol=1e-5, rtol=1e-5)


def test_albert_heads_per_layer_follow_its_shared_layer():
    """ALBERT's layers are calls of one shared layer (key "0"): one cut, every layer has the heads left."""
    _, g = built("albert")
    g, info = run_pass(g, "prune_heads", {"keep": 1})
    p = "albert.encoder.albert_layer_groups.0.albert_layers.0.attention."
    s = shapes(g)
    assert [s[p + q + ".weight"] for q in ("query", "key", "value")] == [(D, HIDDEN)] * 3
    assert [s[p + q + ".bias"] for q in ("query", "key", "value")] == [(D,)] * 3
    assert s[p + "dense.weight"] == (HIDDEN, D)
    assert info["params_removed"] == (H - 1) * (3 * (D * HIDDEN + D) + HIDDEN * D)  # once: the weights are shared
    seen = describe_graph(g)
    assert (seen["heads_per_layer"], seen["num_attention_heads"], seen["num_hidden_layers"]) == ({0: 1, 1: 1, 2: 1}, 1, 3)
    g, _ = run_pass(g, "shrink_layers", {"keep": [0, 2]})
    assert describe_graph(g)["heads_per_layer"] == {0: 1, 2: 1} and layer_indices(g) == [0, 2]


def test_deberta_heads_per_layer_are_read_from_its_folded_attention():
    """DeBERTa attends on [batch * heads, seq, head_dim]: the heads per layer still come back exactly."""
    _, g = built("deberta-v2")
    g, info = run_pass(g, "prune_heads", {"keep": {"0": 1, "2": 3}})
    s = shapes(g)
    for i, heads in ((0, 1), (1, 4), (2, 3)):
        p = f"deberta.encoder.layer.{i}.attention."
        for q in ("query_proj", "key_proj", "value_proj"):
            assert (s[p + "self." + q + ".weight"], s[p + "self." + q + ".bias"]) == ((heads * D, HIDDEN), (heads * D,))
        assert s[p + "output.dense.weight"] == (HIDDEN, heads * D)
    assert info["params_removed"] == 4 * (3 * (D * HIDDEN + D) + HIDDEN * D)
    seen = describe_graph(g)
    assert seen["heads_per_layer"] == {0: 1, 1: 4, 2: 3} and seen["num_attention_heads"] == [1, 3, 4]


# ------------------------------------------------------------------------------------------ rankings


def test_l1_ranking_picks_the_lowest_norm_heads():
    model, _ = built("bert")
    o = model.bert.encoder.layer[0].attention.output.dense.weight
    with torch.no_grad():
        for h, c in enumerate([0.3, -0.1, 0.4, 0.2]):  # |.| per head: 0.3, 0.1, 0.4, 0.2
            o[:, h * D:(h + 1) * D] = c
    g = trace(model, example_inputs(model))
    g, info = run_pass(g, "prune_heads", {"keep": {"0": 2}})
    assert g.history[-1][1]["remove"] == {"0": [1, 3]}
    torch.testing.assert_close(torch.tensor(info["layers"][0]["scores"]),
                               torch.tensor([0.3, 0.1, 0.4, 0.2]) * HIDDEN * D)
    assert shapes(g)["bert.encoder.layer.1.attention.self.query.weight"] == (H * D, HIDDEN)


def test_gqa_removes_the_same_number_of_heads_from_each_group():
    model, _ = built("llama")
    o = model.model.layers[1].self_attn.o_proj.weight
    with torch.no_grad():
        for h, c in enumerate([1.0, 0.5, 3.0, 4.0]):  # globally lowest: 1 and 0 (both group 0)
            o[:, h * D:(h + 1) * D] = c
    g = trace(model, example_inputs(model))
    g, _ = run_pass(g, "prune_heads", {"keep": {"1": 2}})
    assert g.history[-1][1]["remove"] == {"1": [1, 2]}  # the lowest of group 0 (heads 0-1) and of group 1 (2-3)
    s = shapes(g)
    assert s["model.layers.1.self_attn.q_proj.weight"] == (2 * D, HIDDEN)
    assert s["model.layers.1.self_attn.k_proj.weight"] == (2 * D, HIDDEN)  # the 2 KV heads stay
    assert s["model.layers.1.self_attn.o_proj.weight"] == (HIDDEN, 2 * D)


def test_l1_ranking_picks_the_lowest_norm_neurons_gated():
    model, _ = built("llama")
    mlp = model.model.layers[0].mlp
    score = torch.arange(1, FFN + 1, dtype=torch.float32)
    score[[5, 17, 30]] = 0.01
    with torch.no_grad():
        mlp.up_proj.weight[:] = 1.0 / HIDDEN  # each row: L1 = 1
        mlp.down_proj.weight[:] = 1.0 / HIDDEN  # each column: L1 = 1
        mlp.gate_proj.weight[:] = (score / HIDDEN)[:, None]  # row j: L1 = score[j]
    g = trace(model, example_inputs(model))
    g, info = run_pass(g, "prune_ffn", {"keep": {"0": FFN - 3}})
    assert g.history[-1][1]["remove"] == {"0": [5, 17, 30]}
    torch.testing.assert_close(torch.tensor(info["layers"][0]["scores"]), score + 2)
    s = shapes(g)
    assert (s["model.layers.0.mlp.gate_proj.weight"], s["model.layers.0.mlp.up_proj.weight"],
            s["model.layers.0.mlp.down_proj.weight"]) == ((45, HIDDEN), (45, HIDDEN), (HIDDEN, 45))


def _batches(model, n=2):
    out = []
    for i in range(n):
        x = padded_inputs(model, batch=4, seq=9, seed=10 + i)
        x["labels"] = torch.tensor([0, 1, 1, 0])
        out.append(x)
    return out


def test_gradient_score_needs_data_records_remove_and_replays(tmp_path):
    model, g = built("bert")
    code, state = g.gm.code, {k: v.clone() for k, v in g.gm.state_dict().items()}
    with pytest.raises(ConfigError, match=r"prune_heads.score = 'gradient' needs data"):
        run_pass(g, "prune_heads", {"keep": 2, "score": "gradient"})
    assert g.gm.code == code and all(torch.equal(v, state[k]) for k, v in g.gm.state_dict().items())
    batches = _batches(model)
    g, info = run_pass(g, "prune_heads", {"keep": 2, "score": "gradient"}, context=PassContext(batches=batches))
    remove = g.history[-1][1]["remove"]
    assert sorted(remove) == ["0", "1", "2"] and all(len(v) == 2 for v in remove.values())
    # the score, computed independently on the eager model: sum over batches of |sum(w * dL/dw)| per head
    params = dict(model.named_parameters())
    want = torch.zeros(LAYERS, H)
    for b in batches:
        loss = model.eval()(**b).loss
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
        for i in range(LAYERS):
            p = f"bert.encoder.layer.{i}.attention."
            per = torch.zeros(H)
            for proj in ("self.query", "self.key", "self.value"):
                for t in ("weight", "bias"):
                    wg = (params[p + proj + "." + t] * grads[p + proj + "." + t]).detach()
                    per += wg.reshape(H, D, -1).sum(dim=(1, 2))
            wg = (params[p + "output.dense.weight"] * grads[p + "output.dense.weight"]).detach()
            per += wg.reshape(HIDDEN, H, D).sum(dim=(0, 2))
            want[i] += per.abs()
    got = torch.tensor([r["scores"] for r in info["layers"]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for i in range(LAYERS):
        assert remove[str(i)] == sorted(torch.argsort(want[i])[:2].tolist())
    # a replay without data makes the same cut
    x = padded_inputs(model)
    replay, _ = run_pass(built("bert")[1], "prune_heads", g.history[-1][1])
    assert torch.equal(logits(replay, x), logits(g, x))
    loaded = MaseGraph.load(g.save(tmp_path / "g"))
    assert torch.equal(logits(loaded, x), logits(g, x))


# ------------------------------------------------------------------------------------------ persistence, training, compression


def _shrink_all(model_type: str, impl: str = "eager"):
    model, g = built(model_type, impl)
    g, _ = run_pass(g, "shrink_layers", {"num_layers": 2})
    g, _ = run_pass(g, "prune_heads", {"keep": 2})
    g, _ = run_pass(g, "prune_ffn", {"keep": 0.5})
    return model, g


@pytest.mark.parametrize("model_type", ["bert", "llama", "gpt2"])
def test_save_load_round_trip(model_type, tmp_path):
    model, g = _shrink_all(model_type)
    loaded = MaseGraph.load(g.save(tmp_path / "g"))
    x = padded_inputs(model)
    assert torch.equal(logits(loaded, x), logits(g, x))
    assert shapes(loaded) == shapes(g)
    assert [h[0] for h in loaded.history] == ["shrink_layers", "prune_heads", "prune_ffn"]


def test_shrunk_graph_fine_tunes():
    model, g = _shrink_all("bert")
    b = _batches(model, 1)[0]
    inputs = {k: v for k, v in b.items() if k != "labels"}
    opt = torch.optim.SGD(g.parameters(), lr=0.5)
    g.eval()  # no dropout: the loss change is the step's
    loss0 = g(**inputs, labels=b["labels"]).loss
    loss0.backward()
    assert [k for k, p in g.named_parameters() if p.grad is None] == []  # every (smaller) parameter is trained
    assert all(p.grad.shape == p.shape for p in g.parameters())
    opt.step()
    with torch.no_grad():
        loss1 = g(**inputs, labels=b["labels"]).loss
    assert float(loss1) != float(loss0.detach())


def test_compression_runs_after_shrinking():
    model, g = _shrink_all("bert")
    dense = run_pass(g, "cost", {})[1]
    compressed, infos = run_pipeline(g.copy(), {"passes": {"quantize": LINEAR_8_4, "prune": LAB2_PRUNE}})
    x = padded_inputs(model)
    assert torch.equal(logits(compressed, x), logits(reference_graph(compressed), x))
    assert infos["prune"]["weight_sparsity"] == 0.5
    cost = run_pass(compressed, "cost", {})[1]
    assert cost["macs"] == dense["macs"] and cost["size_bytes_compressed"] < dense["size_bytes_fp32"]
    # and shrinking a compressed graph slices its pruning masks along with the weights
    shrunk, _ = run_pass(compressed.copy(), "prune_ffn", {"keep": 10})
    masks = {k: tuple(v.shape) for k, v in shrunk.gm.named_buffers() if "output_dense" in k or "output.dense" in k}
    assert masks and all(10 in s for k, s in masks.items() if "attention" not in k)
    assert torch.isfinite(logits(shrunk, x)).all()


def test_report_shows_the_smaller_shapes():
    _, g = built("bert")
    _, before = run_pass(g, "report_graph", {})
    g, _ = run_pass(g, "prune_heads", {"keep": {"1": 1}})
    metas = {g.meta(n).module_path: g.meta(n) for n in g.nodes if g.meta(n).op == "linear"}
    assert metas["bert.encoder.layer.1.attention.self.query"].out_features == D
    assert metas["bert.encoder.layer.1.attention.output.dense"].in_features == D
    _, info = run_pass(g, "report_graph", {})
    rows = {r["node"]: r for r in info["rows"]}
    q = next(n.name for n in g.nodes if g.meta(n).module_path == "bert.encoder.layer.1.attention.self.query")
    assert rows[q]["params"] == D * HIDDEN + D and rows[q]["macs"] == 128 * HIDDEN * D
    sdpa_or_matmul = [r for r in info["rows"] if r["module"] == "bert.encoder.layer.1.attention.self"
                      and r["op"] == "matmul"]
    assert sdpa_or_matmul and all(r["macs"] == 128 * 128 * D for r in sdpa_or_matmul)  # one head left
    assert before["totals"]["params"] - info["totals"]["params"] == 3 * (3 * (D * HIDDEN + D) + HIDDEN * D)


# ------------------------------------------------------------------------------------------ bad input


BAD = [
    ("bert", "shrink_layers", {"keep": []}, r"shrink_layers.keep = \[\]: keeping 0 layers"),
    ("bert", "shrink_layers", {"num_layers": 0}, r"shrink_layers.num_layers = 0: keeping 0 layers"),
    ("bert", "shrink_layers", {"keep": [0, 5]}, r"shrink_layers.keep = \[0, 5\]: layer 5 does not exist; the layers are: \[0, 1, 2\]"),
    ("bert", "shrink_layers", {}, r"give exactly one of them"),
    ("bert", "shrink_layers", {"keep": [0], "num_layers": 1}, r"give exactly one of them"),
    ("bert", "shrink_layers", {"num_layers": 4}, r"shrink_layers.num_layers = 4: the graph has only 3 layers"),
    ("bert", "shrink_layers", {"num_layers": 1, "strategy": "middle"}, r"shrink_layers.strategy.*'first', 'spread'"),
    ("bert", "prune_heads", {"keep": 0}, r"prune_heads.keep = 0: keeping 0 heads"),
    ("bert", "prune_heads", {"keep": 5}, r"prune_heads.keep = 5: layer 0 has only 4 heads"),
    ("bert", "prune_heads", {"keep": {"7": 2}}, r"prune_heads.keep.7 = '7': no such layer; the attention layers are: 0, 1, 2"),
    ("bert", "prune_heads", {"keep": {"0": 0}}, r"prune_heads.keep.0 = 0: keeping 0 heads"),
    ("bert", "prune_heads", {"remove": {"0": [4]}}, r"prune_heads.remove.0 = \[4\]: head 4 is out of range; layer 0 has heads 0 .. 3"),
    ("bert", "prune_heads", {"remove": {"1": [0, 1, 2, 3]}}, r"keeping 0 heads in layer 1"),
    ("bert", "prune_heads", {"keep": 2, "score": "taylor"}, r"prune_heads.score.*'l1', 'gradient'"),
    ("bert", "prune_heads", {}, r"prune_heads.keep: give the heads kept"),
    ("llama", "prune_heads", {"keep": 3}, r"prune_heads.keep = 3: .*GQA.*multiple of 2.*\[2, 4\]"),
    ("llama", "prune_heads", {"remove": {"0": [0, 1]}}, r"remove the same number from each group"),
    ("bert", "prune_ffn", {"keep": 0}, r"prune_ffn.keep = 0: keeping 0 neurons"),
    ("bert", "prune_ffn", {"keep": 49}, r"prune_ffn.keep = 49: layer 0 has only 48 neurons"),
    ("bert", "prune_ffn", {"keep": 1.5}, r"prune_ffn.keep = 1.5: a fraction must be in \(0, 1\)"),
    ("bert", "prune_ffn", {"keep": {"x": 3}}, r"prune_ffn.keep.x: layer keys are layer indices"),
    ("bert", "prune_ffn", {"remove": {"1": [48]}}, r"prune_ffn.remove.1 = \[48\]: neuron 48 is out of range"),
    ("bert", "prune_ffn", {"remove": {"3": [1]}}, r"prune_ffn.remove.3 = '3': no such layer; the feed-forward layers are: 0, 1, 2"),
]


@pytest.mark.parametrize("model_type, name, cfg, match", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_one_config_error_and_changes_nothing(model_type, name, cfg, match):
    _, g = built(model_type)
    code, history = g.gm.code, list(g.history)
    state = {k: v.clone() for k, v in g.gm.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        run_pass(g, name, cfg)
    assert g.gm.code == code and g.history == history
    assert {k: tuple(v.shape) for k, v in g.gm.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert all(torch.equal(v, state[k]) for k, v in g.gm.state_dict().items())
