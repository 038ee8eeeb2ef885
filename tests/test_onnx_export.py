"""ONNX export (passes.export.onnx): QDQ model in ONNX Runtime equal to the simulation on IMDb rows,
mase-lite's activation-pruning tie rule, refusals. Skips where onnxruntime is not installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _compression_helpers import LAB2_PRUNE, LINEAR_8_4, Q, tiny_graph
from mase_lite import MaseError
from passes import run_pass
from passes.export.onnx import check_exportable, onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(), reason="needs the deploy extra (onnx, onnxruntime, onnxscript)")

#: Logit tolerance ORT vs simulation: ORT's LayerNorm/GELU/softmax/matmul kernels differ from torch's
#: in the last float32 bits, and a quantiser can turn such a difference into one 2^-4 grid step of one
#: activation; the classifier then moves a logit by at most a few hundredths.
LOGIT_TOL = 0.05


def _padded(ds, rows, pad_id):
    seqs = [list(ds[i]["input_ids"]) for i in rows]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), n), dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_lab2_model_in_onnx_runtime_agrees_with_the_simulation_on_imdb(tiny_splits, tmp_path):
    from mase_lite import trace
    from mase_lite.models import ModelConfig, build_model, example_inputs
    from mase_lite.training import TrainConfig, train
    from passes.export import export_graph
    from passes.export.onnx import ort_session

    cfg = ModelConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                      max_position_embeddings=64, seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build_model(cfg)
    graph = trace(model, example_inputs(model))
    train(graph, tiny_splits.train, TrainConfig(epochs=1, batch_size=32, lr=3e-3, progress=False, precision="fp32"))
    run_pass(graph, "quantize", LINEAR_8_4)
    run_pass(graph, "prune", LAB2_PRUNE)
    graph.eval()
    report = export_graph(graph, tmp_path / "onnx", format="onnx")
    assert report["compressed"] and report["ops"]["QuantizeLinear"] >= 6 and report["ops"]["TopK"] >= 6
    import onnx

    m = onnx.load(report["path"])
    int8_inits = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8_inits) == 8  # every linear weight stored as int8 codes
    sess = ort_session(report["path"], num_threads=1)
    ds = tiny_splits.test
    worst, labels_sim, labels_ort = 0.0, [], []
    for start in range(0, len(ds), 16):
        batch = _padded(ds, range(start, min(start + 16, len(ds))), tiny_splits.pad_id)
        with torch.no_grad():
            sim = graph(**batch).logits.numpy()
        ort = sess.run(None, {k: v.numpy() for k, v in batch.items()})[0]
        worst = max(worst, float(np.abs(sim - ort).max()))
        labels_sim += sim.argmax(-1).tolist()
        labels_ort += ort.argmax(-1).tolist()
    assert len(labels_sim) == len(ds) == 64
    assert labels_ort == labels_sim  # every predicted label agrees
    assert worst <= LOGIT_TOL
    print(f"ORT vs simulation on {len(ds)} IMDb rows: max |logit diff| {worst:.3g}")


def _tie_module(pruned: int, width: int, frac: int):
    from passes.export.onnx import _qparams, onnx_input_path
    from passes.formats.integer import QSpec

    q = QSpec(width, frac, False)
    scale, zdt, clip = _qparams(q)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("s", torch.tensor(scale))
            self.register_buffer("z", torch.zeros((), dtype=zdt))
            self.register_buffer("lo", torch.tensor(q.qmin * scale))
            self.register_buffer("hi", torch.tensor(q.qmax * scale))

        def forward(self, x):
            return onnx_input_path(x, self.s, self.z, self.lo if clip else None, self.hi if clip else None,
                                   pruned=pruned, frac_width=frac)

    return M().eval()


@pytest.mark.parametrize("width,frac", [(8, 4), (4, 1)])
def test_activation_pruning_ties_follow_mase_lite_in_onnx_runtime(tmp_path, width, frac):
    from passes.export.onnx import _translations, ort_session
    from passes.transforms.ops import quantize_prune_input

    d, pruned = 16, 8
    mod = _tie_module(pruned, width, frac)
    path = tmp_path / "tie.onnx"
    example = torch.randn(2, 3, d)
    prog = torch.onnx.export(mod, (example,), dynamo=True, opset_version=21,
                             dynamic_shapes=({0: torch.export.Dim("b"), 1: torch.export.Dim("s")},),
                             custom_translation_table=_translations(), verbose=False)
    prog.save(str(path))
    g = torch.Generator().manual_seed(0)
    # few distinct magnitudes on the grid -> many ties at the pruning threshold; also saturating values
    x = torch.randint(-3, 4, (5, 7, d), generator=g).float() * 2.0 ** -frac
    x[0, 0] = 1.0 * 2.0 ** -frac  # all equal: exactly the first 8 features are pruned
    x[1, 0, :4] = 100.0
    ref = quantize_prune_input(x, (width, frac, False), (0.5, "l1-norm", "token"))
    out = ort_session(path).run(None, {"x": x.numpy()})[0]
    assert np.array_equal(out, ref.numpy())
    assert (out[0, 0, :8] == 0).all() and (out[0, 0, 8:] != 0).all()  # lower index pruned first
    # a plain TopK on |x| would keep the lower indices instead: the test can tell them apart
    assert not np.array_equal(out[0, 0] != 0, np.arange(d) < 8)


def _compressed(**entry):
    g = tiny_graph()
    run_pass(g, "quantize", {"by": "type", "default": {"config": {"name": "NA"}}, "linear": {"config": Q(**entry)}})
    return g


def test_floor_is_refused():
    with pytest.raises(MaseError, match=r"node \w+ .*floor = true is not exportable to ONNX.*half to even"):
        check_exportable(_compressed(floor=True))


def test_non_integer_format_is_refused():
    g = tiny_graph()
    run_pass(g, "quantize", {"by": "type", "linear": {"config": {"name": "minifloat", "weight_exponent_width": 4,
                                                                   "weight_mantissa_width": 3}}})
    with pytest.raises(MaseError, match=r"format .*minifloat.* is not exportable to ONNX; exportable formats: 'integer'"):
        check_exportable(g)


def test_random_or_unquantised_activation_pruning_is_refused():
    g = _compressed()
    run_pass(g, "prune", {"activation": {"sparsity": 0.5, "method": "random"}})
    with pytest.raises(MaseError, match="method = 'random'.*not exportable to ONNX; exportable: method = 'l1-norm'"):
        check_exportable(g)
    g = tiny_graph()
    run_pass(g, "prune", {"activation": {"sparsity": 0.5}})
    with pytest.raises(MaseError, match="activation pruning of an unquantised input is not exportable"):
        check_exportable(g)


def test_wide_and_odd_widths():
    assert check_exportable(_compressed(w=5, f=2))  # 5 bits: int8 QDQ plus a clip
    with pytest.raises(MaseError, match=r"width 20 is not exportable to ONNX; widths 2..16"):
        check_exportable(_compressed(w=20, f=4))


def test_cli_onnx_export_with_embedding_and_attention_quantised(tmp_path, capsys):
    import re

    from mase_lite.cli import main

    g = tiny_graph()
    run_pass(g, "quantize", {"by": "type", "linear": {"config": Q()},
                             "embedding": {"config": {"name": "integer", "weight_width": 8, "weight_frac_width": 6,
                                                      "data_out_width": 8, "data_out_frac_width": 5}},
                             "attention": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 5,
                                                      "data_out_width": 6, "data_out_frac_width": 4}}})
    run_pass(g, "prune", LAB2_PRUNE)
    saved = g.save(tmp_path / "graph")
    assert main(["export", str(saved), "--out", str(tmp_path / "onnx"), "--format", "onnx", "--check"]) == 0
    out = capsys.readouterr().out
    assert "plain fp32" not in out and "QuantizeLinear" in out
    diff = float(re.search(r"max \|logit difference\| (\S+)", out).group(1))
    assert diff <= LOGIT_TOL
    import onnx

    m = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert "Clip" in ops  # the 6-bit attention output: QuantizeLinear saturates only at int8
    assert any(i.data_type == onnx.TensorProto.INT8 and list(i.dims) == [500, 32] for i in m.graph.initializer)
