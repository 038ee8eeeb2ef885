"""The compact export of ``minifloat`` and ``block_fp`` tensors: bit-pattern codes (and bit-packed shared
exponents), export -> MaseGraph.load bit-identity with and without pruning, measured bytes = cost's
prediction, and codes -> values round trips including special values."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _compression_helpers import LAB2_PRUNE, assert_export_bytes_match_cost, tiny_graph, tiny_inputs
from mase_lite import MaseGraph
from passes import run_pass
from passes.export import export_graph
from passes.export.codecs import Codec, codec_from_dict
from passes.export.compact import _decode_tensor, _encode_tensor
from passes.formats.block_fp import BlockFPConfig, BlockFPFormat
from passes.formats.minifloat import MinifloatConfig, MinifloatFormat

MINIFLOAT_Q = {"by": "type", "default": {"config": {"name": "NA"}},
               "linear": {"config": {"name": "minifloat", "preset": "fp8_e4m3", "data_in_preset": "fp8_e4m3",
                                     "weight_preset": "fp8_e4m3", "bias_preset": "fp8_e4m3"}}}
BLOCK_FP_Q = {"by": "type", "default": {"config": {"name": "NA"}},
              "linear": {"config": {"name": "block_fp", "mantissa_width": 3, "exponent_width": 5,
                                    "data_in_block_size": 16, "weight_block_size": 16, "bias_block_size": 2}}}
CONFIGS = {"minifloat": MINIFLOAT_Q, "block_fp": BLOCK_FP_Q}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_bit_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same bits everywhere, except that a NaN only has to be a NaN of the same sign."""
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(torch.signbit(got), torch.signbit(want))
    assert torch.equal(_bits(got[~nan]), _bits(want[~nan]))


# ------------------------------------------------------------------------------------------ graphs

@pytest.fixture(scope="module", params=[(f, p) for f in CONFIGS for p in (False, True)],
                ids=lambda fp: f"{fp[0]}-{'pruned' if fp[1] else 'dense'}")
def exported(request, tmp_path_factory):
    fmt, pruned = request.param
    g = tiny_graph()
    run_pass(g, "quantize", CONFIGS[fmt])
    if pruned:
        run_pass(g, "prune", LAB2_PRUNE)
    g.eval()
    out = tmp_path_factory.mktemp("export") / f"{fmt}-{pruned}"
    report = export_graph(g, out)
    return fmt, pruned, g, report, out


def test_loaded_export_is_bit_identical(exported):
    fmt, pruned, g, _, out = exported
    back = MaseGraph.load(out)
    x = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(_bits(back(**x).logits), _bits(g(**x).logits))
    sd, sd2 = g.gm.state_dict(), back.gm.state_dict()
    masks = [k for k in sd if k.endswith("weight_mask")]
    assert len(masks) == (8 if pruned else 0)
    for k in masks:
        assert torch.equal(sd[k], sd2[k])
    w = "bert.encoder.layer.0.intermediate.dense.weight"  # stored as exactly its quantised values q(w)
    f = (E4M3 if fmt == "minifloat" else BlockFPFormat(BlockFPConfig(mantissa_width=3, exponent_width=5,
                                                                      block_size=16)))
    if not pruned:
        assert_bit_identical(sd2[w], f.quantize(sd[w]))
    else:  # pruned positions (and, in mask_nonzero, kept zeros) are stored as code 0: +0.0 for a -0.0
        want = f.quantize(sd[w])
        assert torch.equal(sd2[w], want)
        assert torch.equal(_bits(sd2[w])[want != 0], _bits(want)[want != 0])
    assert back.history == g.history


def test_tensors_are_stored_as_packed_codes(exported):
    fmt, pruned, g, _, out = exported
    manifest = json.loads((out / "export.json").read_text())
    q = [e for n, e in manifest["tensors"].items() if e["format"] is not None]
    assert len(q) == 16  # 8 linear weights + 8 biases
    assert not any("unpacked_format" in e for e in manifest["tensors"].values())
    w = manifest["tensors"]["bert.encoder.layer.0.intermediate.dense.weight"]
    assert w["format"]["name"] == fmt and w["bits"] == (8 if fmt == "minifloat" else 4)
    if pruned:
        assert w["encoding"] in ("mask_kept", "mask_nonzero")
    else:
        assert w["encoding"] == "codes"
    if fmt == "block_fp":
        n = w["numel"]
        assert w["arrays"]["exponents"]["nbytes"] == math.ceil(5 * (n // 16) / 8)
    else:
        assert set(w["arrays"]) <= {"codes", "mask", "kept", "nonzero_bits", "nonzero", "values"}


def test_measured_bytes_match_the_cost_prediction(exported):
    _, _, _, report, out = exported
    assert_export_bytes_match_cost(report, out)


def test_block_fp_values_and_exponents_not_filling_whole_bytes_match_the_prediction(tmp_path):
    """Codes and shared exponents are two byte-aligned arrays, and cost counts them so: with 5-bit codes
    and 5-bit exponents per value (blocks of 1) the 2-element classifier bias takes 2 + 2 bytes, not
    ceil(20 / 8) = 3."""
    g = tiny_graph()
    run_pass(g, "quantize", {"by": "type", "default": {"config": {"name": "NA"}},
                             "linear": {"config": {"name": "block_fp", "mantissa_width": 4, "exponent_width": 5,
                                                   "data_in_block_size": 16, "weight_block_size": 16,
                                                   "bias_block_size": 1}}})
    report = export_graph(g, tmp_path / "odd")
    rows = [r for r in report["tensors"] if r["group"] != "uncounted"]
    assert any(r["measured"] == 4 for r in rows)  # the classifier bias
    for row in rows:
        assert row["measured"] == row["predicted"], row


# ------------------------------------------------------------------------------------------ codes

E4M3 = MinifloatFormat(MinifloatConfig(preset="fp8_e4m3"))
E5M2 = MinifloatFormat(MinifloatConfig(preset="fp8_e5m2", saturate=False))
MINIFLOATS = [E4M3, E5M2, MinifloatFormat(MinifloatConfig(preset="fp8_e4m3", saturate=False)),
              MinifloatFormat(MinifloatConfig(exponent_width=3, mantissa_width=2, special="none")),
              MinifloatFormat(MinifloatConfig(exponent_width=5, mantissa_width=10)),  # float16
              MinifloatFormat(MinifloatConfig(exponent_width=4, mantissa_width=0, saturate=False))]
SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, 2.0**-9, -2.0**-9, 2.0**-16, 3 * 2.0**-9, 448.0, 464.0,
            57344.0, 61440.0, -1e9, 2.0**-11, -2.0**-11]


def _has_nan_code(f: MinifloatFormat) -> bool:
    return f.special == "fn" or (f.special == "ieee" and f.m >= 1)


@settings(max_examples=60, deadline=None)
@given(fi=st.integers(0, len(MINIFLOATS) - 1),
       xs=st.lists(st.one_of(st.floats(width=32), st.sampled_from(SPECIALS)), min_size=1, max_size=40))
def test_minifloat_codes_roundtrip_to_the_quantised_values(fi, xs):
    f = MINIFLOATS[fi]
    codec = Codec(f)
    x = torch.tensor(xs, dtype=torch.float32)
    if not _has_nan_code(f):
        x = x.nan_to_num(nan=0.0) if f.special == "none" else x[~torch.isnan(x)]
    codes = codec.codes(x)
    lo, hi = -(1 << (codec.bits - 1)), (1 << (codec.bits - 1)) - 1
    if codes.numel():
        assert lo <= int(codes.min()) and int(codes.max()) <= hi
    assert_bit_identical(codec.from_codes(codes, {}, torch.float32, tuple(x.shape)), f.quantize(x))
    # every code: decode -> quantise is the identity, and the code comes back
    allc = torch.arange(lo, hi + 1)
    v = codec.from_codes(allc, {}, torch.float32, (allc.numel(),))
    keep = torch.ones_like(v, dtype=torch.bool) if not f.saturate else ~torch.isinf(v)  # saturating: inf -> max
    assert_bit_identical(f.quantize(v[keep]), v[keep])
    back = codec.codes(v)
    ok = keep & ~torch.isnan(v)  # NaN codes come back as the one canonical NaN code
    assert torch.equal(back[ok], allc[ok])
    assert torch.equal(codec.is_zero(allc), v == 0)


def test_minifloat_codes_are_the_float8_bit_patterns():
    x = torch.tensor([0.0, -0.0, 2.0**-9, -2.0**-9, 448.0, -448.0, 1.0, -3.5, 2.0**-11, -2.0**-11, 0.1, math.nan])
    x = torch.cat([x, torch.randn(500) * 30])
    for f, dt, nan_code in ((E4M3, torch.float8_e4m3fn, 0x7F), (E5M2, torch.float8_e5m2, 0x7E)):
        codes = Codec(f).codes(x) & 0xFF
        ref = f.quantize(x).to(dt).view(torch.uint8).to(torch.int64)
        nan = torch.isnan(x)
        assert torch.equal(codes[~nan], ref[~nan])
        assert int(codes[nan][0]) == nan_code  # the canonical quiet NaN
    e5 = Codec(E5M2)
    assert (e5.codes(torch.tensor([math.inf, -math.inf, 1e9])) & 0xFF).tolist() == [0x7C, 0xFC, 0x7C]
    assert Codec(E4M3).codes(torch.tensor([0.0, -0.0])).tolist() == [0, -128]


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 8), ew=st.sampled_from([1, 2, 3, 5, 8]), bs=st.sampled_from([1, 2, 4, 16]),
       rows=st.integers(1, 3), data=st.data())
def test_block_fp_codes_and_exponents_roundtrip(m, ew, bs, rows, data):
    f = BlockFPFormat(BlockFPConfig(mantissa_width=m, exponent_width=ew, block_size=bs))
    codec = Codec(f)
    n = bs * data.draw(st.integers(1, 3))
    vals = data.draw(st.lists(st.one_of(st.floats(width=32, allow_nan=False), st.sampled_from(
        [0.0, -0.0, math.inf, -math.inf, 2.0**-20, -2.0**-20])), min_size=rows * n, max_size=rows * n))
    x = torch.tensor(vals, dtype=torch.float32).reshape(rows, n)
    codes, params = codec.codes(x), codec.params(x)
    assert params["exponents"].dtype == torch.uint8
    assert params["exponents"].numel() == math.ceil(f.overhead_bits(tuple(x.shape)) / 8)
    lo, hi = -(1 << m), (1 << m) - 1
    assert lo <= int(codes.min()) and int(codes.max()) <= hi
    q = f.quantize(x)
    assert_bit_identical(codec.from_codes(codes, params, torch.float32, tuple(x.shape)), q)
    assert torch.equal(codec.is_zero(codes), q == 0)
    d = codec.to_dict()
    assert codec_from_dict(d) == codec


@pytest.mark.parametrize("fmt", ["minifloat", "block_fp"])
def test_zero_codes_fit_the_masked_encodings(fmt):
    """Pruned positions and rounding zeros (+-0.0) are zeros for the encodings, as cost counts them."""
    f = E4M3 if fmt == "minifloat" else BlockFPFormat(BlockFPConfig(mantissa_width=3, exponent_width=5,
                                                                    block_size=4))
    codec = Codec(f)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 16, generator=g)
    t[t.abs() < 0.4] *= 1e-4  # rounding zeros of both signs
    mask = torch.rand(8, 16, generator=g) > 0.5
    t = t * mask
    arrays: dict = {}
    entry = _encode_tensor("w", t, codec, mask, arrays)
    q = f.quantize(t)
    assert entry["nonzero"] == int(((q != 0) & mask).sum()) < entry["kept"] == int(mask.sum())
    value, back = _decode_tensor("w", entry, arrays)
    assert torch.equal(value, q) and torch.equal(back, mask)


def test_nan_weights_export_where_the_format_has_a_nan_code():
    """A NaN is stored as the format's NaN code (fp8_e5m2 has one); the encoder's check that the codes
    reproduce the quantised values treats NaN as NaN, and decoding gives the NaN back."""
    from passes.export.codecs import codec_for
    from passes.formats import format_from_dict

    f = format_from_dict({"name": "minifloat", "preset": "fp8_e5m2"})
    codec = codec_for(f.spec(), 0)
    w = torch.tensor([[1.0, float("nan")], [-2.5, 0.0]])
    arrays: dict = {}
    entry = _encode_tensor("w", w, codec, None, arrays)
    back, mask = _decode_tensor("w", entry, arrays)
    assert mask is None and torch.isnan(back[0, 1])
    assert torch.equal(back[~torch.isnan(w)], f.quantize(w)[~torch.isnan(w)])


def test_fixed_scale_weight_costs_what_the_export_stores():
    from passes.analysis.cost import _tensor_cost
    from passes.export.codecs import codec_for
    from passes.formats import format_from_dict

    f = format_from_dict({"name": "scaled_integer", "width": 8, "scale": 0.01})
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * 0.3
    predicted = _tensor_cost("w", w, f.spec(), None, 0)["size_bytes_quantized"]
    assert predicted == _encode_tensor("w", w, codec_for(f.spec(), 0), None, {})["bytes"] == 16 * 32
