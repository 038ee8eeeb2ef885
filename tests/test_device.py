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


if __name__ == "__main__":  # a GPU machine without pytest: python tests/test_device.py
    import tempfile
    from pathlib import Path

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for test in (test_graph_runs_and_trains_on_device, test_compressed_graph_on_device):
        with tempfile.TemporaryDirectory() as tmp:
            test("cuda", Path(tmp))
        print(f"{test.__name__}[cuda] passed")
