"""Model families: every encoder and decoder classifier ``ModelConfig`` builds traces, matches eager,
trains, and compresses with Lab 2's pipeline; GPT-2's ``Conv1D`` becomes ``nn.Linear``; fused QKV and
GQA metadata; the ``--model-type`` / ``--kv-heads`` flags; untraceable models name the failing module;
every family's adapter (``mase_lite.families``) finds its layers and projections and reads its
architecture back, and its one head-layout check serves the config, the search space and the tables.

Configs are tiny (1 layer, 32 wide, 500-token vocabulary) and each family is traced once per module.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from _compression_helpers import LAB2_PRUNE, LINEAR_8_4, reference_graph
from mase_lite import ConfigError, TraceError, trace
from mase_lite.families import family, head_layout_problem
from mase_lite.models import ARCH_FIELDS, MODEL_TYPES, ModelConfig, build_model, example_inputs, is_decoder_classifier
from mase_lite.tracing import linearise_conv1d
from mase_lite.training import TrainConfig, train
from passes import run_pass, run_pipeline

LAB2 = {"passes": {"quantize": LINEAR_8_4, "prune": LAB2_PRUNE}}


def family_config(model_type: str, **overrides) -> ModelConfig:
    kw = dict(model_type=model_type, num_hidden_layers=1, num_attention_heads=4, hidden_size=32, intermediate_size=64,
              vocab_size=500, max_position_embeddings=64, seed=0, attn_implementation="eager")
    if model_type == "llama":
        kw["num_key_value_heads"] = 2
    kw.update(overrides)
    return ModelConfig(**kw)


@functools.lru_cache(maxsize=None)
def _built(model_type: str):
    model = build_model(family_config(model_type)).eval()
    return model, trace(model, example_inputs(model))


def padded_inputs(model, batch=3, seq=9, seed=4):
    """Random ids with the first row right-padded (pad id and mask 0) after 6 tokens."""
    x = example_inputs(model, batch=batch, seq=seq, seed=seed)
    x["attention_mask"][0, 6:] = 0
    x["input_ids"][0, 6:] = model.config.pad_token_id or 0
    return x


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_traces_and_matches_eager(model_type):
    model, graph = _built(model_type)
    graph.eval()
    for shape in ((3, 9), (2, 20)):
        x = padded_inputs(model, *shape)
        with torch.no_grad():
            assert torch.equal(graph(**x).logits, model(**x).logits)
    # every Linear of the model (GPT-2's Conv1D included, as Linear) is one linear node with its features
    metas = {graph.meta(n).module_path: graph.meta(n) for n in graph.nodes if graph.meta(n).op == "linear"}
    mods = linear_modules(model)
    assert set(metas) == set(mods)
    for path, mod in mods.items():
        assert (metas[path].in_features, metas[path].out_features) == (mod.in_features, mod.out_features)
    assert is_decoder_classifier(model) == (model_type in ("gpt2", "llama"))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_training_steps_change_every_parameter(model_type):
    import datasets

    model, base = _built(model_type)
    graph = base.copy()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (16, 12), generator=g).tolist()
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": [i % 2 for i in range(16)], "length": [12] * 16})
    before = {k: v.detach().clone() for k, v in graph.named_parameters()}
    res = train(graph, ds, TrainConfig(epochs=1, batch_size=8, lr=1e-2, warmup_ratio=0.0, precision="fp32",
                                       num_threads=1, progress=False, device="cpu"),
                pad_id=model.config.pad_token_id or 0)
    assert res.steps == 2 and torch.isfinite(torch.tensor(res.final_loss))
    unchanged = [k for k, v in graph.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_lab2_compression(model_type):
    model, base = _built(model_type)
    compressed, infos = run_pipeline(base.copy(), LAB2)
    quantized = {r["module"] for r in infos["quantize"]["quantized"] if r["op"] == "linear"}
    assert quantized == set(linear_modules(model))  # GPT-2's projections too, not just its head
    assert infos["prune"]["weight_sparsity"] == 0.5
    x = padded_inputs(model)
    with torch.no_grad():
        got = compressed.eval()(**x).logits
        assert torch.equal(got, reference_graph(compressed).eval()(**x).logits)
        assert not torch.equal(got, base.eval()(**x).logits)
    _, cost = run_pass(compressed, "cost", {})
    _, dense = run_pass(base, "cost", {})
    assert cost["macs"] == dense["macs"] and cost["size_bytes_compressed"] < dense["size_bytes_fp32"]


def test_gpt2_conv1d_becomes_an_equal_linear():
    from transformers import GPT2Config, GPT2ForSequenceClassification
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_inner=24, n_positions=32,
                                                     vocab_size=100, pad_token_id=0)).eval()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, Conv1D)}
    assert len(convs) == 4
    ref = {n: (m.weight.detach().clone(), m.bias.detach().clone()) for n, m in convs.items()}
    ids = example_inputs(model, batch=2, seq=7)
    with torch.no_grad():
        logits = model(**ids).logits
    assert sorted(linearise_conv1d(model)) == sorted(convs)
    for name, (w, b) in ref.items():
        lin = model.get_submodule(name)
        assert type(lin) is nn.Linear
        assert torch.equal(lin.weight, w.t()) and torch.equal(lin.bias, b)
        xin = torch.randn(3, 5, lin.in_features, generator=torch.Generator().manual_seed(3))
        want = torch.addmm(b, xin.view(-1, lin.in_features), w).view(3, 5, -1)  # Conv1D's own formula
        torch.testing.assert_close(lin(xin), want, rtol=1e-6, atol=1e-6)
    assert (model.get_submodule("transformer.h.0.attn.c_attn").in_features,
            model.get_submodule("transformer.h.0.attn.c_attn").out_features) == (16, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, logits, rtol=1e-5, atol=1e-6)
    assert linearise_conv1d(model) == []  # idempotent


def test_hf_gpt2_with_cache_on_traces_and_keeps_its_config():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=100,
                                                     pad_token_id=0)).eval()
    assert model.config.use_cache
    graph = trace(model, example_inputs(model))  # Conv1D replaced in place, cache off while exporting
    assert model.config.use_cache
    x = padded_inputs(model, 2, 7)
    with torch.no_grad():
        assert torch.equal(graph.eval()(**x).logits, model(**x).logits)
    assert sum(graph.meta(n).op == "linear" for n in graph.nodes) == 5


def test_fused_qkv_and_gqa_metadata():
    fused = {}
    for t in MODEL_TYPES:
        _, graph = _built(t)
        for n in graph.nodes:
            meta = graph.meta(n)
            if meta.fused_qkv is not None:
                assert meta.op == "linear" and sum(meta.fused_qkv) == meta.out_features
                fused[meta.module_path] = meta.fused_qkv
    assert fused == {"transformer.h.0.attn.c_attn": (32, 32, 32), "model.layers.0.attn.Wqkv": (32, 32, 32)}
    # the mark survives a transform pass (re-annotation of the compressed linear)
    _, gpt2 = _built("gpt2")
    q, _ = run_pass(gpt2.copy(), "quantize", LINEAR_8_4)
    assert [q.meta(n).fused_qkv for n in q.nodes if q.meta(n).module_path == "transformer.h.0.attn.c_attn"
            and q.meta(n).op == "linear"] == [(32, 32, 32)]
    # Llama: 4 query heads of 8, 2 key/value heads -> k/v projections half as wide
    _, llama = _built("llama")
    feats = {llama.meta(n).module_path.rsplit(".", 1)[-1]: llama.meta(n).out_features
             for n in llama.nodes if llama.meta(n).op == "linear"}
    assert (feats["q_proj"], feats["k_proj"], feats["v_proj"], feats["o_proj"]) == (32, 16, 16, 32)


def test_llama_rmsnorm_counts_as_a_norm():
    model, graph = _built("llama")
    rms = {n for n, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"}
    assert len(rms) == 3
    norm_nodes = [graph.meta(n) for n in graph.nodes if graph.meta(n).op == "layer_norm"]
    assert {m.module_path for m in norm_nodes} == rms
    inside = [graph.meta(n).op for n in graph.nodes if graph.meta(n).module_path in rms]
    assert set(inside) == {"layer_norm"}
    weights = sorted(p.name for m in norm_nodes for p in m.params)
    assert weights == sorted(f"{r}.weight" for r in rms)


def test_model_config_maps_sizes_per_family():
    gpt2 = family_config("gpt2", num_hidden_layers=3).hf_config()
    assert (gpt2.n_layer, gpt2.n_head, gpt2.n_embd, gpt2.n_inner, gpt2.n_positions) == (3, 4, 32, 64, 64)
    assert gpt2.use_cache is False and gpt2.pad_token_id == 0
    llama = family_config("llama", num_key_value_heads=1).hf_config()
    assert (llama.num_attention_heads, llama.num_key_value_heads, llama.intermediate_size) == (4, 1, 64)
    assert family_config("llama", num_key_value_heads=None).hf_config().num_key_value_heads == 4
    assert family_config("albert", embedding_size=16).hf_config().embedding_size == 16
    assert family_config("electra").hf_config().embedding_size == 32
    assert family_config("deberta-v2").hf_config().relative_attention is True
    assert family_config("gpt2", pad_token_id=7).hf_config().pad_token_id == 7
    cfg = family_config("llama")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides, match", [
    (dict(model_type="llama", num_key_value_heads=3), r"num_key_value_heads = 3 does not divide model.num_attention_heads = 4"),
    (dict(model_type="llama", num_key_value_heads=0), r"model.num_key_value_heads"),
    (dict(model_type="bert", num_key_value_heads=2), r"num_key_value_heads is only for model_type llama"),
    (dict(model_type="gpt2", embedding_size=16), r"embedding_size is only for model_type albert / electra"),
    (dict(model_type="gpt2", pad_token_id=500), r"model.pad_token_id"),
    (dict(model_type="t5"), r"model.model_type.*gpt2.*llama"),
])
def test_bad_model_configs(overrides, match):
    d = family_config("bert").to_dict()
    d.update(overrides)
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict(d, path="model")


def test_cli_builds_the_new_families_from_sizes():
    import argparse

    from mase_lite.commands.common import add_model_args, model_config_from_args

    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args(["--model-type", "llama", "--layers", "1", "--heads", "4", "--kv-heads", "2", "--hidden", "32",
                         "--intermediate", "48"])
    cfg = model_config_from_args(args)
    assert (cfg.model_type, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == ("llama", 4, 2, 48)
    with pytest.raises(SystemExit):
        p.parse_args(["--model-type", "t5"])


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        return y if y.sum() > 0 else -y  # data-dependent control flow: not traceable


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 4), _Block())

    def forward(self, x):
        return self.enc(x)


def test_untraceable_model_names_the_module_and_what_failed():
    with pytest.raises(TraceError) as err:
        trace(_Untraceable(), {"x": torch.randn(2, 4)})
    msg = str(err.value).splitlines()[0]
    assert "could not trace _Untraceable" in msg
    assert "in module 'enc.1' (_Block)" in msg
    assert "data-dependent" in msg


# --------------------------------------------------------------------------- family adapters


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_family_has_an_adapter_that_reads_its_architecture(model_type):
    from search.space import describe_graph, layer_indices

    model, graph = _built(model_type)
    fam = family(model_type)
    assert model_type in fam.model_types
    roles: dict[str, set[str]] = {"attention": set(), "ffn": set()}
    for path in linear_modules(model):
        for kind, found in roles.items():
            role = fam.role(path, kind)
            if role is not None:
                assert role[0] == "0", path  # the one layer
                found.add(role[1])
    assert roles["attention"] in ({"q", "k", "v", "o"}, {"qkv", "o"})
    assert roles["ffn"] in ({"up", "down"}, {"glu", "down"}, {"gate", "up", "down"})
    seen = describe_graph(graph)
    assert {k: seen[k] for k in (*ARCH_FIELDS, "heads_per_layer")} == {
        "num_hidden_layers": 1, "num_attention_heads": 4, "hidden_size": 32, "intermediate_size": 64,
        "heads_per_layer": {0: 4}}
    assert layer_indices(graph) == [0]
    assert fam.head_dim(graph.model_info["hf_config"]) == 8


@pytest.mark.parametrize("kwargs, want", [
    (dict(hidden_size=30, num_attention_heads=4, path="model"),
     "model.hidden_size = 30 is not divisible by model.num_attention_heads = 4; each head needs hidden_size / "
     "num_attention_heads dimensions"),
    (dict(hidden_size=30, num_attention_heads=4),
     "hidden_size 30 is not divisible by num_attention_heads 4 (each head needs hidden_size / num_attention_heads "
     "dimensions)"),
    (dict(hidden_size=24, num_attention_heads=8, model_type="llama"),
     "hidden_size / num_attention_heads = 3 must be even for model_type 'llama' (rotary position embeddings)"),
    (dict(hidden_size=24, num_attention_heads=8, model_type="modernbert", path="model"),
     "model.hidden_size / model.num_attention_heads = 3 must be even for model_type 'modernbert' (rotary position "
     "embeddings)"),
    (dict(hidden_size=24, num_attention_heads=8, model_type="bert"), None),
    (dict(hidden_size=24, num_attention_heads=8, model_type="mistral"), None),  # no adapter: the generic check
    (dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=3, model_type="llama", path="model"),
     "model.num_key_value_heads = 3 does not divide model.num_attention_heads = 4; each key/value head serves a "
     "whole group of query heads"),
    (dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, model_type="roberta", path="model"),
     "model.num_key_value_heads is only for model_type llama (grouped-query attention), not 'roberta'; remove it"),
])
def test_head_layout_problem(kwargs, want):
    assert head_layout_problem(**kwargs) == want


def test_one_head_layout_check_serves_the_config_the_space_and_the_tables():
    import optuna

    from search.bench.table import ARCH_PARAMS, buildable
    from search.space import MODEL_PARAMS, InvalidArchitecture, ModelSpace, SpaceConfig, invalid_reason

    assert MODEL_PARAMS is ARCH_PARAMS is ARCH_FIELDS
    for hidden, heads in ((30, 4), (32, 4), (24, 8), (16, 3)):
        p = {"hidden_size": hidden, "num_attention_heads": heads}
        assert buildable(p) == (invalid_reason(p) is None) == (head_layout_problem(hidden, heads) is None) \
            == (hidden % heads == 0)
    with pytest.raises(ConfigError, match=r"model\.hidden_size / model\.num_attention_heads = 3 must be even"):
        ModelConfig.from_dict({**family_config("llama").to_dict(), "hidden_size": 24, "num_attention_heads": 8},
                              path="model")
    # the space asks its base's family: a Llama base prunes an odd head size instead of failing to build it
    space = ModelSpace(SpaceConfig(num_hidden_layers=[1], num_attention_heads=[8], hidden_size=[24, 32],
                                   intermediate_size=[16]), family_config("llama"))
    assert space.n_valid() == 1
    params = {"num_hidden_layers": 1, "num_attention_heads": 8, "hidden_size": 24, "intermediate_size": 16}
    with pytest.raises(InvalidArchitecture, match=r"= 3 must be even for model_type 'llama'"):
        space.suggest(optuna.trial.FixedTrial(params))
    assert space.suggest(optuna.trial.FixedTrial({**params, "hidden_size": 32})).hidden_size == 32
