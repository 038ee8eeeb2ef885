"""Lab 2's compression pipeline on a trained graph (Python and TOML), QAT fine-tuning, and ``mase-lite transform``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _compression_helpers import LAB2_PRUNE, LINEAR_8_4, linears
from mase_lite import MaseGraph, trace
from mase_lite.cli import main
from mase_lite.models import ModelConfig, build_model, example_inputs
from mase_lite.training import TrainConfig, evaluate, train
from passes import run_pipeline

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "lab2_compression.toml"
MODEL = dict(num_hidden_layers=1, num_attention_heads=2, hidden_size=32, intermediate_size=64,
             max_position_embeddings=64, seed=0)
LAB2 = {"passes": {"quantize": LINEAR_8_4, "prune": LAB2_PRUNE}}


@pytest.fixture(scope="module")
def small(tiny_splits):
    """64 training and 32 validation rows of the tiny IMDb splits."""
    return tiny_splits.train.select(range(64)), tiny_splits.val.select(range(32)), tiny_splits.pad_id


@pytest.fixture(scope="module")
def trained(small):
    model = build_model(ModelConfig(**MODEL)).eval()
    graph = trace(model, example_inputs(model))
    train(graph, small[0], TrainConfig(epochs=1, batch_size=32), pad_id=small[2])
    return graph


def test_lab2_pipeline_from_python_and_toml_then_qat(trained, small):
    train_ds, val_ds, pad_id = small
    before = evaluate(trained, val_ds, batch_size=32, pad_id=pad_id)
    from_py, infos = run_pipeline(trained.copy(), LAB2)
    from_toml, _ = run_pipeline(trained.copy(), EXAMPLE)
    assert [h[0] for h in from_py.history] == [h[0] for h in from_toml.history] == ["quantize", "prune"]
    assert from_py.gm.code == from_toml.gm.code
    assert infos["prune"]["weight_sparsity"] == 0.5
    batch = example_inputs(from_py, batch=4, seq=20, seed=3)
    with torch.no_grad():
        assert torch.equal(from_py.eval()(**batch).logits, from_toml.eval()(**batch).logits)
        assert not torch.equal(from_py(**batch).logits, trained.eval()(**batch).logits)

    compressed = evaluate(from_py, val_ds, batch_size=32, pad_id=pad_id)
    assert 0.0 <= compressed.accuracy <= 1.0 and compressed.n == before.n
    masks = {n.name: from_py.gm.get_submodule(from_py.meta(n).module_path).weight_mask.clone() for n in linears(from_py)}
    res = train(from_py, train_ds, TrainConfig(epochs=1, batch_size=32), pad_id=pad_id)
    assert res.steps == 2 and torch.isfinite(torch.tensor(res.final_loss))
    for n in linears(from_py):
        owner = from_py.gm.get_submodule(from_py.meta(n).module_path)
        assert torch.equal(owner.weight_mask, masks[n.name])
        assert bool((owner.weight[~owner.weight_mask] == 0).all())
    finetuned = evaluate(from_py, val_ds, batch_size=32, pad_id=pad_id)
    assert 0.0 <= finetuned.accuracy <= 1.0


def _write_config(path: Path, data_dir, cache_dir, extra: str = "") -> Path:
    text = EXAMPLE.read_text()
    start = text.index("[model]")
    passes_part = text[text.index("[passes.quantize]"):]
    model = "\n".join(f"{k} = {v}" for k, v in MODEL.items())
    path.write_text(
        text[:start] + f"[model]\n{model}\n\n[data]\ndata_dir = '{data_dir}'\ncache_dir = '{cache_dir}'\n"
        f"n_train = 1\nn_val = 0\nn_test = 24\nmax_length = 48\n\n[eval]\nsplit = 'test'\nprecision = 'fp32'\n\n"
        + extra + passes_part
    )
    return path


def test_transform_command(tmp_path, data_dir, capsys):
    cfg = _write_config(tmp_path / "cfg.toml", data_dir, tmp_path / "cache")
    out = tmp_path / "out"
    assert main(["transform", "--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy on test (24 rows)" in printed and "quantised+sparse" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["passes"] == ["quantize", "prune"]
    lin = [r for r in report["nodes"] if r["op"] == "linear"]
    assert len(lin) == 8 and all(r["weight_sparsity"] == 0.5 for r in lin)
    assert all(r["precision"]["weight"] == {"width": 8, "frac_width": 4, "floor": False} for r in lin)
    assert all(r["activation_pruning"]["granularity"] == "token" for r in lin)
    assert report["cost"]["size_bytes_compressed"] < report["cost"]["size_bytes_fp32"]
    assert report["evaluation"]["rows"] == 24 and 0.0 <= report["evaluation"]["accuracy"] <= 1.0
    loaded = MaseGraph.load(out / "graph")
    assert [h[0] for h in loaded.history] == ["quantize", "prune"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("[pases.prune]\nweight = { sparsity = 0.5 }\n", "unknown config key 'pases' (did you mean 'passes'?)"),
        ("[passes.quantise]\nby = 'type'\n", "unknown pass 'quantise' (did you mean 'quantize'?)"),
        ("[passes.prune]\nweight = { sparsity = 0.5, scope = 'globl' }\n",
         "prune.weight.scope = 'globl' is not valid (did you mean 'global'?); choose one of: 'local', 'global'"),
        ("[model]\nhidden_sise = 64\n[passes.prune]\nweight = { sparsity = 0.5 }\n",
         "unknown config key 'model.hidden_sise' (did you mean 'hidden_size'?)"),
        ("[eval]\nsplit = 'train'\n[passes.prune]\n", "eval.split = 'train' is not valid"),
        ("[model]\nnum_hidden_layers = 1\n", "the config has no [passes] section"),
    ],
)
def test_transform_config_errors(tmp_path, capsys, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["transform", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


SCALED_PASSES = """[passes.quantize]
by = "type"
[passes.quantize.default.config]
name = "NA"
[passes.quantize.linear.config]
name = "scaled_integer"
data_in_width = 8
weight_width = 8
bias_width = 8
"""


def test_transform_calibrates_when_the_passes_need_it(tmp_path, data_dir, capsys):
    """scaled_integer activations need calibrated ranges: `mase-lite transform` calibrates on the
    [data] table's training rows (a `calibrate` step first, recorded, so the saved graph loads with
    its ranges); without [data] it is one error naming [data], and nothing is written."""
    import torch

    cfg = _write_config(tmp_path / "cfg.toml", data_dir, tmp_path / "cache")
    text = cfg.read_text()
    cfg.write_text(text[:text.index("[passes.quantize]")] + SCALED_PASSES)
    out = tmp_path / "out"
    assert main(["transform", "--config", str(cfg), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passes"] == ["calibrate", "quantize"]
    loaded = MaseGraph.load(out / "graph")
    assert [h[0] for h in loaded.history] == ["calibrate", "quantize"]
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert torch.isfinite(loaded(**x).logits).all()

    bare = tmp_path / "bare.toml"
    bare.write_text("[model]\n" + "\n".join(f"{k} = {v}" for k, v in MODEL.items()) + "\n\n" + SCALED_PASSES)
    assert main(["transform", "--config", str(bare), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "need calibration data" in err and "add a [data] table" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists()
