"""The ``dynamic_int8`` format: DynamicQuantizeLinear exactly as ONNX Runtime computes it (ties, zero
points, degenerate tensors), per-channel int8 weights, the integer-kernel linear bit for bit against
ONNX Runtime's DynamicQuantizeMatMul, the non-VNNI saturation and its two cures, the quantize pass
(roles, replay) and quantisation-aware training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _compression_helpers import tiny_graph, tiny_inputs
from mase_lite import MaseGraph
from mase_lite.errors import ConfigError
from passes import run_pass
from passes.export.onnx import onnx_available
from passes.formats import format_from_dict, get_format
from passes.formats.dynamic_int8 import (DynamicInt8Format, dynamic_quantize_linear,
                                         dynamic_quantize_linear_reference)

needs_ort = pytest.mark.skipif(not onnx_available(), reason="needs the deploy extra (onnx, onnxruntime)")

FMT = format_from_dict({"name": "dynamic_int8"})
FMT8 = format_from_dict({"name": "dynamic_int8", "reduce_range": False})
DEPLOY = {"by": "type", "linear": {"config": {"name": "dynamic_int8", "data_in": {}, "weight": {}}},
          "embedding": {"config": {"name": "dynamic_int8", "weight": {}}}}


def _ort(model_bytes: bytes, feeds: dict, config: dict | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _dql_model() -> bytes:
    from onnx import TensorProto as T
    from onnx import helper as h

    g = h.make_graph([h.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, None)],
                     [h.make_tensor_value_info("y", T.UINT8, None), h.make_tensor_value_info("s", T.FLOAT, []),
                      h.make_tensor_value_info("z", T.UINT8, [])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 21)]).SerializeToString()


def _numpy_dql(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    """The ONNX operator's definition, written out in numpy float32 (independent of the library)."""
    x = x.astype(np.float32)
    lo, hi = np.float32(min(x.min(), 0)), np.float32(max(x.max(), 0))
    s = np.float32((hi - lo) / np.float32(255)) if hi != lo else np.float32(1)
    zp = np.rint(np.clip(np.float32(0) - lo / s, 0, 255))  # np.rint: round half to even
    return np.clip(np.rint(x / s) + zp, 0, 255).astype(np.uint8), s, int(zp)


def _tie_tensor() -> torch.Tensor:
    """Scale exactly 2^-4 (range [-4, 11.9375] = 255 * 2^-4), zero point 64, and values at exact halves
    of the grid: x / s = k + 0.5, so every one of them is a half-way case."""
    k = torch.arange(-60, 120, 7, dtype=torch.float32)
    x = torch.cat([(k + 0.5) * 2.0 ** -4, torch.tensor([-4.0, 11.9375, 0.03125, -0.03125, 0.09375])])
    return x.reshape(1, -1)


def test_dynamic_quantize_linear_ties_round_half_to_even():
    x = _tie_tensor()
    centred, scale, zp = dynamic_quantize_linear(x)
    assert float(scale) == 2.0 ** -4 and float(zp) == 64
    # hand values: 0.5 -> 0, 1.5 -> 2, -0.5 -> -0 (codes relative to the zero point), k + 0.5 -> even
    expected = torch.tensor([float(round(v)) for v in (x[0] / scale).tolist()])  # Python round: half to even
    assert torch.equal(centred[0], expected)
    assert centred[0, -3:].tolist() == [0.0, 0.0, 2.0]  # 0.5, -0.5, 1.5 steps
    u, s, z = dynamic_quantize_linear_reference(x)
    assert torch.equal(u.float() - z, centred) and s == 2.0 ** -4 and z == 64


def test_zero_point_tie_and_degenerate_tensors():
    # min = -0.5 * s exactly: zp = round(0.5) = 0 (half to even); with min = -1.5 s: zp = 2
    s = 2.0 ** -3
    for lo, zp in ((-0.5, 0), (-1.5, 2), (-2.5, 2)):
        x = torch.tensor([lo * s, (255 + lo) * s])
        _, scale, z = dynamic_quantize_linear(x)
        assert float(scale) == s and float(z) == zp
    zeros = torch.zeros(3, 4)  # max == min == 0: scale 1, zero point 0, codes 0
    centred, scale, z = dynamic_quantize_linear(zeros)
    assert float(scale) == 1.0 and float(z) == 0 and not centred.any()
    pos = torch.tensor([0.5, 1.0, 2.0])  # all positive: the range starts at 0, zero point 0
    _, _, z = dynamic_quantize_linear(pos)
    assert float(z) == 0
    neg = -pos  # all negative: zero point 255
    centred, _, z = dynamic_quantize_linear(neg)
    assert float(z) == 255 and float(centred.min()) == -255.0


@needs_ort
def test_dynamic_quantize_linear_equals_onnx_runtime_and_numpy():
    model = _dql_model()
    g = torch.Generator().manual_seed(0)
    cases = [_tie_tensor(), torch.zeros(2, 3), torch.tensor([[0.5, 1.0, 3.0]]), -torch.tensor([[0.5, 1.0, 3.0]])]
    cases += [torch.randn(7, 33, generator=g) * 10.0 ** float(e) for e in range(-3, 3)]
    for x in cases:
        centred, scale, zp = dynamic_quantize_linear(x)
        y, s, z = _ort(model, {"x": x.numpy()})
        ny, ns, nz = _numpy_dql(x.numpy())
        assert np.array_equal(y, ny) and s == ns and z == nz  # ORT is the operator's definition
        assert float(scale) == float(s) and int(zp) == int(z)
        assert np.array_equal(centred.numpy() + float(zp), y.astype(np.float32))


def test_weights_per_channel_symmetric_with_ties_and_zero_channels():
    w = torch.tensor([[1.27, -0.635, 0.005, 0.015],  # scale 0.01: 0.5 and 1.5 steps round to 0 and 2
                      [0.0, 0.0, 0.0, 0.0],           # all zero: scale 1, codes 0
                      [-2.54, 1.0, 0.0, 0.5]])
    codes, scale = FMT8.weight_codes(w, 0)
    s0 = torch.tensor(1.27, dtype=torch.float32) / 127
    assert float(scale[0]) == float(s0) and float(scale[1]) == 1.0
    assert codes[0].tolist() == np.rint(w[0].numpy() / np.float32(s0)).tolist()  # float32 division, half to even
    assert codes[0, 0] == 127 and codes[0, 1] == -64
    assert codes[2, 0] == -127 and not codes[1].any()
    assert torch.equal(FMT8.quantize(w, channel_dim=0), FMT8.reference(w, channel_dim=0))
    c7, s7 = FMT.weight_codes(w, 0)  # reduce_range: [-64, 64]
    assert float(c7.abs().max()) == 64 and float(s7[0]) == float(torch.tensor(1.27) / 64)
    # exact half-way weights: scale 2^-6 (amax 1.0, qmax 64), w = 2.5 and 3.5 steps
    half = torch.tensor([[1.0, 2.5 * 2 ** -6, 3.5 * 2 ** -6, -2.5 * 2 ** -6]])
    assert FMT.weight_codes(half, 0)[0].tolist() == [[64.0, 2.0, 4.0, -2.0]]


def test_format_contract_and_storage():
    assert get_format("dynamic_int8") is DynamicInt8Format and FMT.deployable and FMT.roles == ("data_in", "weight")
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(FMT.quantize(x), FMT.reference(x))
    assert FMT.bits_per_value() == 8 and FMT.overhead_bits((10, 6), channel_dim=0) == 320
    assert FMT.overhead_bits((4, 6)) == 0  # an activation's scale is computed at run time
    codes, params = FMT.to_codes(x, 0), FMT.code_params(x, 0)
    assert torch.equal(FMT.from_codes(codes, params, torch.float32, tuple(x.shape), 0), FMT.quantize(x, channel_dim=0))
    with pytest.raises(ConfigError, match="reduce_range must be true or false"):
        format_from_dict({"name": "dynamic_int8", "reduce_range": "yes"})


def _dqmm_model(k: int, n: int, codes: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> bytes:
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    inits = [nh.from_array(codes, "B"), nh.from_array(scale, "s"), nh.from_array(np.zeros(n, np.int8), "z"),
             nh.from_array(bias, "bias")]
    node = h.make_node("DynamicQuantizeMatMul", ["x", "B", "s", "z", "bias"], ["y"], domain="com.microsoft")
    g = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, [None, k])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)]).SerializeToString()


@needs_ort
@pytest.mark.parametrize("fmt", [FMT, FMT8], ids=["reduce_range", "8bit"])
def test_exact_linear_equals_onnx_runtime_dynamic_quantize_matmul_bit_for_bit(fmt):
    from passes.export.deployable import PRECISE_U8S8

    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(6, 384, generator=g), torch.randn(40, 384, generator=g) * 0.05, torch.randn(40, generator=g)
    y = fmt.exact_linear(x, w, b, fmt)
    codes, scale = fmt.weight_codes(w, 0)
    model = _dqmm_model(384, 40, codes.t().numpy().astype(np.int8), scale.reshape(-1).numpy(), b.numpy())
    out = _ort(model, {"x": x.numpy()}, None if fmt is FMT else PRECISE_U8S8)[0]
    assert np.array_equal(out, y.numpy())
    # and the integers themselves, in int64 numpy: acc * (scale_x * scale_w) + b
    u, sx, zp = _numpy_dql(x.numpy())
    acc = (u.astype(np.int64) - zp) @ codes.t().numpy().astype(np.int64)
    ref = (acc.astype(np.float32) * (np.float32(sx) * scale.reshape(-1).numpy())) + b.numpy()
    assert np.array_equal(ref, y.numpy())
    # the generic float path (dequantised values) agrees to rounding, not bit for bit
    generic = torch.nn.functional.linear(fmt.quantize(x), fmt.quantize(w, channel_dim=0), b)
    assert torch.allclose(generic, y, atol=1e-4)


@needs_ort
def test_non_vnni_saturation_and_its_two_cures():
    from passes.export.deployable import PRECISE_U8S8, cpu_has_vnni

    k, n = 256, 16
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((4, k))).astype(np.float32) * 3  # codes near 255
    x[0, 0] = -0.01
    scale, bias = np.full(n, 0.01, np.float32), np.zeros(n, np.float32)
    for qmax, config, exact in ((127, None, cpu_has_vnni()), (127, PRECISE_U8S8, True), (64, None, True)):
        codes = np.full((k, n), qmax, np.int8)  # every pair of products at its largest
        out = _ort(_dqmm_model(k, n, codes, scale, bias), {"x": x}, config)[0]
        u, sx, zp = _numpy_dql(x)
        ref = ((u.astype(np.int64) - zp) @ codes.astype(np.int64)).astype(np.float32) * (np.float32(sx) * scale)
        assert np.array_equal(out, ref) == exact, (qmax, config)


def test_quantize_pass_roles_replay_and_batch_dependence(tmp_path):
    g = tiny_graph()
    run_pass(g, "quantize", DEPLOY)
    g.eval()
    x = tiny_inputs()
    with torch.no_grad():
        out = g(**x).logits
    back = MaseGraph.load(g.save(tmp_path / "g"))  # the history replays ("data_in = {}": every field default)
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(**x).logits, out)
        one = g(**{k: v[:1] for k, v in x.items()}).logits  # the scale spans the batch: row 0 alone differs
    assert not torch.equal(one[0], out[0])
    with pytest.raises(ConfigError, match=r"quantize\.linear\.config\.bias: the 'dynamic_int8' format is not for "
                                          r"the bias role; it takes 'data_in', 'weight'"):
        run_pass(tiny_graph(), "quantize", {"by": "type", "linear": {"config": {"name": "dynamic_int8", "bias": {}}}})


def test_quantisation_aware_training_steps_through_the_format():
    g = tiny_graph()
    run_pass(g, "quantize", DEPLOY)
    g.train()
    x = tiny_inputs()
    opt = torch.optim.SGD(g.parameters(), lr=0.5)
    w = next(p for n, p in g.named_parameters() if "intermediate" in n and n.endswith("weight"))
    before = w.detach().clone()
    loss = g(**x, labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # straight-through gradient
    opt.step()
    assert not torch.equal(w.detach(), before)


def test_compact_export_stores_codes_and_scales_and_loads_bit_identical(tmp_path):
    from passes.export import export_graph

    g = tiny_graph()
    run_pass(g, "quantize", DEPLOY)
    run_pass(g, "prune", {"weight": {"sparsity": 0.5}})
    g.eval()
    report = export_graph(g, tmp_path / "c")
    for group in ("embedding", "non_embedding"):  # the cost pass predicts the bytes: codes + one scale per channel
        assert report["groups"][group]["measured"] == report["groups"][group]["predicted"]
    import json

    manifest = json.loads((tmp_path / "c" / "export.json").read_text())
    formats = {t["format"]["name"] for t in manifest["tensors"].values() if t.get("format")}
    assert formats == {"dynamic_int8"}
    back = MaseGraph.load(tmp_path / "c")
    back.eval()
    x = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(back(**x).logits, g(**x).logits)


def test_search_space_maps_a_width_through_the_format():
    from search.space import format_entry
    from search.summary import choices_str

    assert format_entry("dynamic_int8", 8, None, ("data_in", "weight", "bias")) == {
        "name": "dynamic_int8", "data_in": {}, "weight": {}}  # biases stay float32
    with pytest.raises(ConfigError, match="the dynamic_int8 format takes width 8, not 4"):
        format_entry("dynamic_int8", 4, None)
    assert choices_str({"a": {"format": "dynamic_int8", "width": 8, "sparsity": 0.0},
                        "b": {"format": "scaled_integer", "width": 4, "sparsity": 0.0}}) == "dyn8:1 sint4:1"
