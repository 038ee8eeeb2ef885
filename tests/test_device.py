"""The graph follows ``.to(device)``: each test runs on the CPU and, where CUDA is available, on the GPU.

On a GPU machine: ``python -m pytest tests/test_device.py``.
"""

from __future__ import annotations

import pytest
import torch

from mase_lite import MaseGraph, trace
from mase_lite.models import ModelConfig, build_model, example_inputs

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]

CFG = ModelConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128,
                  vocab_size=1000, max_position_embeddings=128, seed=0)
LAB2 = {"passes": {
    "quantize": {"by": "type", "default": {"config": {"name": None}}, "linear": {"config": {
        "name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8,
        "weight_frac_width": 4, "bias_width": 8, "bias_frac_width": 4}}},
    "prune": {"weight": {"sparsity": 0.5, "method": "l1-norm", "scope": "local"},
              "activation": {"sparsity": 0.5, "method": "l1-norm", "scope": "local"}},
}}


@pytest.fixture(autouse=True)
def _exact_matmuls():  # TF32 would make GPU results differ from the fp32 reference
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _batch(device, b=4, s=37):
    g = torch.Generator().manual_seed(b * s)
    ids = torch.randint(5, 1000, (b, s), generator=g)
    mask = torch.ones_like(ids)
    mask[0, s // 2:] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@pytest.mark.parametrize("device", DEVICES)
def test_graph_runs_and_trains_on_device(device, tmp_path):
    model = build_model(CFG).eval()
    graph = trace(model, example_inputs(model)).to(device).eval()
    model = model.to(device)
    for b, s in [(1, 5), (4, 37), (8, 128)]:
        x = _batch(device, b, s)
        with torch.no_grad():
            out, ref = graph(**x).logits, model(**x).logits
        assert out.device.type == device
        assert (out - ref).abs().max().item() <= 1e-5
    graph.train()
    x = _batch(device)
    loss = graph(**x, labels=torch.tensor([0, 1, 1, 0], device=device)).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.device.type == device for p in graph.parameters())
    assert not torch.equal(graph(**x).logits, graph(**x).logits)  # dropout active on the GPU too
    graph.eval()
    graph.save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g").to(device)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, graph(**x).logits)


@pytest.mark.parametrize("device", DEVICES)
def test_compressed_graph_on_device(device, tmp_path):
    from passes import run_pipeline

    model = build_model(CFG).eval()
    cpu_graph = trace(model, example_inputs(model))
    run_pipeline(cpu_graph, LAB2)
    graph = cpu_graph.copy().to(device).eval()
    x = _batch(device)
    with torch.no_grad():
        out = graph(**x).logits
        ref = cpu_graph.eval()(**{k: v.cpu() for k, v in x.items()}).logits
    assert out.device.type == device
    assert (out.cpu() - ref).abs().max().item() <= 1e-4
    graph.train()
    opt = torch.optim.AdamW(graph.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        opt.zero_grad()
        graph(**x, labels=torch.tensor([0, 1, 1, 0], device=device)).loss.backward()
        opt.step()
    for name, buf in graph.gm.named_buffers():
        if name.endswith("weight_mask"):
            weight = graph.gm.get_parameter(name[: -len("_mask")])
            assert buf.device.type == device
            assert torch.all(weight[~buf.bool()] == 0)
    graph.eval().save(tmp_path / "c")
    loaded = MaseGraph.load(tmp_path / "c").to(device)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, graph(**x).logits)


# --------------------------------------------------------------------------- the device option


def _toy_splits(n_train=96, n_val=32):
    """Label 1 iff the row contains token 7 (learnable in one epoch by a tiny BERT)."""
    import datasets
    import numpy as np

    from mase_lite.data import Splits

    def make(n, seed):
        rng = np.random.default_rng(seed)
        rows, labels = [], []
        for _ in range(n):
            length = int(rng.integers(4, 16))
            row = rng.integers(10, 64, length)
            y = int(rng.integers(0, 2))
            if y:
                row[rng.integers(0, length)] = 7
            rows.append(row.tolist())
            labels.append(y)
        return datasets.Dataset.from_dict({"input_ids": rows, "labels": labels})

    return Splits(train=make(n_train, 0), val=make(n_val, 1), test=None)


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "cpu:0", "", "mps", 0])
def test_bad_device_is_one_config_error_naming_the_field_and_options(value):
    from mase_lite.errors import ConfigError
    from mase_lite.training import TrainConfig

    with pytest.raises(ConfigError, match=r"train\.device = .* is not valid; choose one of: 'auto', 'cpu', 'cuda', "
                                          r"'cuda:N'|train\.device must be a string"):
        TrainConfig.from_dict({"device": value}, path="train")


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_good_device_values_round_trip(value):
    from mase_lite.training import TrainConfig

    cfg = TrainConfig.from_dict({"device": value})
    assert cfg.device == value and TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().device == "auto"


def test_resolve_device(monkeypatch):
    from mase_lite.errors import ConfigError
    from mase_lite.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for value in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"train.device = '{value}' but CUDA is not available .*use 'auto' or 'cpu'"):
            resolve_device(value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"train.device = 'cuda:2' but only 2 CUDA device\(s\) are visible"):
        resolve_device("cuda:2")


def test_precision_auto_resolves_per_device(monkeypatch):
    from mase_lite import training

    monkeypatch.setattr(training, "_cpu_has_native_bf16", lambda: False)
    assert training.resolve_precision("auto") == "fp32" == training.resolve_precision("auto", "cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training.resolve_precision("auto", "cuda") == "bf16"
    assert training.resolve_precision("fp32", "cuda") == "fp32"  # an explicit choice stays


def test_machine_info_records_the_device():
    from mase_lite.machine import machine_info

    assert "device" not in machine_info("fp32", 2)  # unchanged for callers that give none
    info = machine_info("fp32", 2, torch.device("cpu"))
    assert info["device"] == "cpu" and "gpu" not in info


def test_train_and_evaluate_on_the_cpu_device():
    from mase_lite.training import TrainConfig, evaluate, train

    splits = _toy_splits()
    model = build_model(CFG.replace(vocab_size=64, attn_implementation="eager"))
    graph = trace(model.eval(), example_inputs(model))
    res = train(graph, splits.train, TrainConfig(device="cpu", progress=False, batch_size=16, precision="fp32"))
    assert res.device == "cpu" and res.steps == 6
    ev = evaluate(graph, splits.val, device="cpu", precision="fp32")
    assert ev.n == 32 and 0.0 <= ev.accuracy <= 1.0


def test_train_refuses_cuda_without_it_before_touching_the_model(monkeypatch):
    from mase_lite.errors import ConfigError
    from mase_lite.training import TrainConfig, train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = build_model(CFG.replace(vocab_size=64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(model, _toy_splits().train, TrainConfig(device="cuda", progress=False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _ToyLifecycle:
    """A real lifecycle (real training) whose data are the toy splits."""

    def __new__(cls):
        from search.lifecycle import Lifecycle

        class L(Lifecycle):
            def load_data(self, data_cfg, model, splits=("train", "val", "test")):
                return _toy_splits()

        return L()


def _search_config(device, **search):
    from search.config import RunConfig

    return RunConfig.from_dict({
        "search": {"name": "dev", "samplers": ["random"], "n_trials": 2, "gc_after_trial": False, **search},
        "space": {"num_hidden_layers": [1], "num_attention_heads": [2], "hidden_size": [16, 32],
                  "intermediate_size": [32]},
        "model": {"vocab_size": 64, "max_position_embeddings": 32},
        "data": {"max_length": 16, "n_val": 8},
        "train": {"progress": False, "device": device, "batch_size": 16},
    })


@pytest.mark.parametrize("device", DEVICES)
def test_full_search_trial_on_device(device, tmp_path):
    """A whole search study with real training (train, evaluate, compress, cost, save) on ``device``."""
    import optuna

    from search.study import run_search

    cfg = _search_config(device, variants=["compress"], pruner="median", eval_every=2, pruner_val_rows=8)
    result = run_search(cfg, tmp_path / "run", lifecycle=_ToyLifecycle())
    study = optuna.load_study(study_name="dev", storage=optuna.storages.RDBStorage(result.storage_url))
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 1
    for t in done:
        machine = t.user_attrs["machine"]
        assert machine["device"].split(":")[0] == device
        if device == "cuda":
            assert machine["gpu"] and machine["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
        assert 0.0 <= t.user_attrs["accuracy_compressed"] <= 1.0
        assert t.intermediate_values  # the pruner's reports ran on the device too
    best = result.summary[0]["best"][0]
    loaded = MaseGraph.load(best["graph_dir"])
    assert all(p.device.type == "cpu" for p in loaded.parameters())  # saved graphs load anywhere


def test_search_fingerprint_records_the_device_only_off_the_cpu(monkeypatch):
    from search.config import plan_studies, study_fingerprint

    cfg = _search_config("cpu")
    fp = study_fingerprint(cfg, plan_studies(cfg)[0])
    assert "device" not in fp["train"]  # CPU studies made before the device option stay valid
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = _search_config("auto")
    fp = study_fingerprint(cfg, plan_studies(cfg)[0])
    assert fp["train"]["device"] == "cuda" and fp["train"]["precision"] == "bf16"


def test_search_with_cuda_but_none_is_an_error_before_any_work(monkeypatch, tmp_path):
    from mase_lite.errors import ConfigError
    from search.study import run_search

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device = 'cuda' but CUDA is not available"):
        run_search(_search_config("cuda"), tmp_path / "run", lifecycle=_ToyLifecycle())
    assert not (tmp_path / "run" / "optuna.db").exists()


def test_cli_device_flags(monkeypatch, tmp_path, capsys):
    from mase_lite.cli import main
    from mase_lite.commands.train import train_config_from_args
    from mase_lite.errors import ConfigError

    import argparse

    args = argparse.Namespace(device="cpu", config=None)
    assert train_config_from_args(args).device == "cpu"
    with pytest.raises(ConfigError, match="train.device = 'gpu' is not valid"):
        train_config_from_args(argparse.Namespace(device="gpu", config=None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tmp_path / "s.toml"
    cfg.write_text('[search]\nname = "x"\n[space]\nhidden_size = [16]\n')
    for argv in (["search", "--config", str(cfg), "--out", str(tmp_path / "r"), "--device", "cuda"],
                 ["train", "--device", "cuda", "--layers", "1", "--hidden", "16", "--heads", "2",
                  "--intermediate", "32"]):
        assert main(argv) != 0
        assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "r" / "optuna.db").exists()


if __name__ == "__main__":  # a GPU machine without pytest: python tests/test_device.py
    import tempfile
    from pathlib import Path

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for test in (test_graph_runs_and_trains_on_device, test_compressed_graph_on_device):
        with tempfile.TemporaryDirectory() as tmp:
            test("cuda", Path(tmp))
        print(f"{test.__name__}[cuda] passed")
