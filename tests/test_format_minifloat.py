"""The ``minifloat`` number format: hand-computed cases, torch's float8/float16 casts as an
independent check, hypothesis properties against the enumerating reference, STE, dtypes, config."""

from __future__ import annotations

import math
import tomllib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mase_lite.errors import ConfigError
from passes.formats import format_from_dict, format_from_spec, format_names, get_format
from passes.formats.minifloat import MinifloatConfig, MinifloatFormat

INF, NAN = math.inf, math.nan


def fmt(**kw) -> MinifloatFormat:
    return format_from_dict({"name": "minifloat", **kw})


E4M3 = fmt(preset="fp8_e4m3")
E5M2 = fmt(preset="fp8_e5m2")
E5M2_INF = fmt(preset="fp8_e5m2", saturate=False)


def q(f: MinifloatFormat, values, dtype=torch.float32) -> list[float]:
    return f.quantize(torch.tensor(values, dtype=dtype)).tolist()


def same(a, b) -> bool:
    """Bitwise-style equality of tensors: equal values, NaN where NaN, and the same sign of zero."""
    a, b = a.double(), b.double()
    return bool(torch.equal(torch.isnan(a), torch.isnan(b))
                and torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))
                and torch.equal(torch.signbit(a) | torch.isnan(a), torch.signbit(b) | torch.isnan(b)))


# ------------------------------------------------------------------------------ hand-computed cases

def test_registered():
    assert "minifloat" in format_names() and get_format("minifloat") is MinifloatFormat


def test_e4m3_hand_cases():
    f = E4M3
    assert (f.max_value, f.min_subnormal, f.bits_per_value(), f.overhead_bits((4, 8))) == (448.0, 2**-9, 8, 0)
    cases = {
        0.3: 0.3125,                   # 0.3 = 1.2 * 2^-2, step 2^-5: 9.6 steps -> 10 -> 0.3125
        448.0: 448.0, 449.0: 448.0,    # max finite; above it saturates
        464.0: 448.0,                  # tie between 448 (mantissa 110) and the NaN code 111: even -> 448
        465.0: 448.0, 1e6: 448.0, INF: 448.0, -INF: -448.0,
        240.0: 240.0, 241.0: 240.0,    # step 16 in [128, 256): 241 -> 240
        248.0: 256.0,                  # tie between 240 (111) and 256 (1.000): even -> 256
        2**-9: 2**-9,                  # smallest subnormal
        2**-10: 0.0,                   # half of it: tie between 0 (even) and 2^-9 -> 0
        3 * 2**-11: 2**-9,             # 0.75 steps -> 1 step
        3 * 2**-10: 2**-8,             # 1.5 steps: tie -> 2 steps (even)
        7 * 2**-9: 7 * 2**-9,          # largest subnormal
        2**-6: 2**-6,                  # smallest normal
        15 * 2**-10: 2**-6,            # 7.5 subnormal steps: tie -> 8 steps = the smallest normal
        -0.3: -0.3125, 1.0: 1.0, 1.0625: 1.0, 1.1875: 1.25,
    }
    got = q(f, list(cases))
    assert got == list(cases.values())


def test_e4m3_signed_zero_and_nan():
    out = E4M3.quantize(torch.tensor([-0.0, 0.0, -2**-11, 2**-11, NAN]))
    assert out[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert torch.signbit(out[:4]).tolist() == [True, False, True, False]
    assert math.isnan(out[4].item())


def test_e4m3_without_saturation_overflows_to_nan():
    f = fmt(preset="fp8_e4m3", saturate=False)
    got = q(f, [448.0, 463.9, 464.0, 464.1, 465.0, -500.0, INF])
    assert got[:3] == [448.0, 448.0, 448.0]   # 464 is the tie: even code (448) wins
    assert all(math.isnan(v) for v in got[3:])


def test_e5m2_hand_cases():
    assert (E5M2.max_value, E5M2.min_subnormal) == (57344.0, 2**-16)
    assert q(E5M2, [57344.0, 61439.0, 61440.0, 1e6, INF, -INF, 0.3, 2**-16, 2**-17, 3 * 2**-17]) == [
        57344.0, 57344.0, 57344.0, 57344.0, 57344.0, -57344.0, 0.3125, 2**-16, 0.0, 2**-15]
    # IEEE overflow: |x| >= max + half a step (61440, a tie: the infinity code is even) -> inf
    assert q(E5M2_INF, [57344.0, 61439.0, 61440.0, 61441.0, -1e6, INF, -INF]) == [
        57344.0, 57344.0, INF, INF, -INF, INF, -INF]
    assert math.isnan(q(E5M2_INF, [NAN])[0])


def test_general_widths_hand_cases():
    e3m2 = fmt(exponent_width=3, mantissa_width=2)          # bias 3, IEEE: max 1.75 * 2^3 = 14
    assert (e3m2.config.bias, e3m2.max_value, e3m2.min_subnormal, e3m2.bits_per_value()) == (3, 14.0, 2**-4, 6)
    assert q(e3m2, [0.1, 0.09375, 0.03125, 0.03126, 13.0, 15.0, 3.3]) == [0.125, 0.125, 0.0, 0.0625, 12.0, 14.0, 3.5]
    none = fmt(exponent_width=3, mantissa_width=2, special="none")   # all exponents normal: 1.75 * 2^4
    assert none.max_value == 28.0 and q(none, [27.0, 100.0]) == [28.0, 28.0]
    e2m0 = fmt(exponent_width=2, mantissa_width=0, special="none", bias=1)   # values 0, 1, 2, 4
    assert [v for _, v in e2m0.values()] == [0.0, 1.0, 2.0, 4.0]
    # ties go to the even code: 0.5 -> 0 (code 0), 1.5 -> 2 (code 2), 3 -> 2 (code 2, not 4 = code 3)
    assert q(e2m0, [0.5, 0.51, 1.5, 3.0, 3.1, 9.0]) == [0.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    biased = fmt(exponent_width=4, mantissa_width=3, bias=10, special="fn")  # E4M3FN shifted by 2^-3
    assert biased.max_value == 56.0 and biased.min_subnormal == 2**-12


def test_decoded_table_matches_torch_float8():
    """Every finite float8 code, as torch decodes it, is one of the format's values and vice versa."""
    for f, dt in ((E4M3, torch.float8_e4m3fn), (E5M2, torch.float8_e5m2)):
        codes = torch.arange(128, dtype=torch.uint8).view(dt).float()
        finite = codes[torch.isfinite(codes)].tolist()
        assert finite == [v for _, v in f.values()]


# ------------------------------------------------------------------------------ independent casts

def _probe_values(n: int = 20000, seed: int = 0) -> torch.Tensor:
    """Random float32 magnitudes log-uniform over 2^-30 .. 2^20, both signs, plus ties and edges."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.empty(n).uniform_(-30, 20, generator=g))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    # exact midpoints of the fp8 grids (ties) and grid points themselves
    k = torch.arange(0, 64, dtype=torch.float32)
    ties = torch.cat([(k + 0.5) * 2.0**e for e in range(-19, 17)])
    edges = torch.tensor([0.0, -0.0, INF, -INF, NAN, 448, 464, 480, 57344, 61440, 65504, 65520, 2**-24, 2**-25])
    return torch.cat([mag * sign, ties, -ties, edges])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_e4m3_matches_torch_e4m3fn_cast(dtype):
    # torch 2.13's float8_e4m3fn cast rounds to nearest even and saturates (inf too) -- our saturate=True
    x = _probe_values().to(dtype)
    assert same(E4M3.quantize(x), x.to(torch.float8_e4m3fn).to(dtype))
    assert E4M3.quantize(x).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_e5m2_matches_torch_e5m2_cast(dtype):
    # torch's float8_e5m2 cast is IEEE: overflow -> inf -- our saturate=False; saturating agrees in range
    x = _probe_values(seed=1).to(dtype)
    assert same(E5M2_INF.quantize(x), x.to(torch.float8_e5m2).to(dtype))
    inside = x.abs() <= 57344
    assert same(E5M2.quantize(x)[inside], x[inside].to(torch.float8_e5m2).to(dtype))


def test_e5m10_is_float16():
    x = _probe_values(seed=2)
    f = fmt(exponent_width=5, mantissa_width=10, saturate=False)
    assert f.max_value == 65504.0 and f.min_subnormal == 2**-24
    assert same(f.quantize(x), x.half().float())
    sat = fmt(exponent_width=5, mantissa_width=10)
    assert same(sat.quantize(x), x.half().float().clamp(-65504, 65504))


def test_float64_path_and_inputs_agree_with_float32():
    x = _probe_values(2000, seed=3)
    for f in (E4M3, E5M2_INF, fmt(exponent_width=3, mantissa_width=4, special="none")):
        assert f._f32_exact
        assert same(f.quantize(x.double()), f.quantize(x).double())
    wide = fmt(exponent_width=8, mantissa_width=7, saturate=False)   # bfloat16's layout: scales beyond normal float32
    assert not wide._f32_exact
    assert same(wide.quantize(x), x.bfloat16().float())
    assert same(wide.quantize(x), wide.reference(x))


# ------------------------------------------------------------------------------ hypothesis properties

@st.composite
def formats(draw):
    e = draw(st.integers(2, 8))
    m = draw(st.integers(0, 15 - e))
    special = draw(st.sampled_from(["ieee", "fn", "none"] if m >= 1 else ["ieee", "none"]))
    saturate = True if special == "none" else draw(st.booleans())
    top = 2**e - 2 if special == "ieee" else 2**e - 1
    lo, hi = top - 127, 150 - m
    default = 2 ** (e - 1) - 1
    bias = draw(st.one_of(st.just(default), st.integers(lo, hi))) if lo <= default <= hi else draw(st.integers(lo, hi))
    return fmt(exponent_width=e, mantissa_width=m, bias=bias, special=special, saturate=saturate)


def _values_near(f: MinifloatFormat):
    """float32 values around the format's range: log-uniform magnitudes, ties, edges."""
    lo, hi = math.log2(f.min_subnormal) - 3, math.log2(f.max_value) + 2
    mag = st.floats(lo, hi).map(lambda t: float(torch.tensor(2.0**t, dtype=torch.float32)))
    grid = [v for _, v in f.values()]
    ties = st.integers(0, len(grid) - 2).map(lambda i: (grid[i] + grid[i + 1]) / 2)   # exact in float32
    return st.lists(st.one_of(mag, mag.map(lambda v: -v), ties, st.sampled_from([0.0, -0.0, INF, -INF, NAN]),
                              st.floats(width=32, allow_nan=True)), min_size=1, max_size=24)


def test_reference_equals_quantize_on_fp8_ties_and_edges():
    x = _probe_values(4000, seed=4)
    for f in (E4M3, E5M2, E5M2_INF, fmt(preset="fp8_e4m3", saturate=False)):
        assert same(f.quantize(x), f.reference(x))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_quantize_equals_reference(data):
    f = data.draw(formats())
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    x = torch.tensor(data.draw(_values_near(f)), dtype=torch.float32).to(dtype)
    out = f.quantize(x)
    assert out.dtype == dtype and same(out, f.reference(x))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_on_grid_idempotent_monotone_and_error_bound(data):
    f = data.draw(formats())
    x = torch.tensor(data.draw(_values_near(f)), dtype=torch.float32)
    out = f.quantize(x)
    grid = {v for _, v in f.values()}
    specials = {INF} if f.special == "ieee" and not f.saturate else set()
    finite_in = ~torch.isnan(out)
    assert all(abs(v) in grid | specials for v in out[finite_in].tolist())          # on the grid
    assert same(f.quantize(out), out)                                                  # idempotent
    xs = x[~torch.isnan(x)].sort().values                                              # monotone
    qs = f.quantize(xs)
    if not (f.special == "fn" and not f.saturate):  # there overflow is NaN, which is unordered
        assert bool((qs[1:] >= qs[:-1]).all())
    normal = (x.abs() >= 2.0**f.emin) & (x.abs() <= f.max_value)                       # error bound
    err = (out[normal].double() - x[normal].double()).abs()
    assert bool((err <= 2.0 ** -(f.m + 1) * x[normal].double().abs()).all())
    sub = x.abs() < 2.0**f.emin                                                        # subnormals
    assert bool(((out[sub].double() - x[sub].double()).abs() <= f.min_subnormal / 2).all())


# ------------------------------------------------------------------------------ STE and dtypes

def test_ste_gradients():
    x = torch.tensor([0.3, -1.0, 448.0, 500.0, -1e4, 2**-12], requires_grad=True)
    E4M3.quantize_ste(x, "plain").sum().backward()
    assert x.grad.tolist() == [1.0] * 6
    x.grad = None
    y = E4M3.quantize_ste(x, "clipped")
    assert y.tolist() == E4M3.quantize(x.detach()).tolist()
    (y * torch.arange(1.0, 7.0)).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 6.0]   # zero where |x| > 448
    assert E4M3.saturated(torch.tensor([448.0, 448.5, -INF, NAN, -448.0])).tolist() == [False, True, True, True, False]


def test_bfloat16_and_float16_inputs():
    x = torch.tensor([0.3, -7.7, 300.0, 2**-8, 1e5], dtype=torch.bfloat16)
    out = E4M3.quantize(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert same(out, E4M3.reference(x))
    assert same(out.float(), E4M3.quantize(x.float()))
    h = torch.tensor([[0.3, -7.7], [300.0, 1e4]], dtype=torch.float16)
    assert E5M2.quantize(h).dtype == torch.float16 and same(E5M2.quantize(h).float(), E5M2.quantize(h.float()))
    with pytest.raises(TypeError, match="floating-point"):
        E4M3.quantize(torch.tensor([1, 2]))


def test_any_shape():
    x = torch.randn(2, 3, 4, 5) * 10
    assert same(E4M3.quantize(x), E4M3.reference(x)) and E4M3.quantize(x).shape == x.shape
    assert same(E4M3.quantize(torch.tensor(0.3)), torch.tensor(0.3125))


# ------------------------------------------------------------------------------ config

def _toml(d: dict) -> str:
    def val(v):
        return ("true" if v else "false") if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else str(v))

    return "\n".join(f"{k} = {val(v)}" for k, v in d.items())


@pytest.mark.parametrize("cfg", [{"preset": "fp8_e4m3"}, {"preset": "fp8_e5m2", "saturate": False},
                                 {"exponent_width": 3, "mantissa_width": 2},
                                 {"exponent_width": 4, "mantissa_width": 3, "bias": 10, "special": "fn"}])
def test_config_round_trip(cfg):
    f = fmt(**cfg)
    d = f.to_dict()
    assert d["name"] == "minifloat" and {k: d[k] for k in cfg} == cfg
    assert format_from_dict(d) == f
    assert format_from_dict(tomllib.loads(_toml(d))) == f
    assert format_from_spec(f.spec()) == f and format_from_spec(f.spec()).max_value == f.max_value


def test_presets_fill_fields():
    assert E4M3.to_dict() == {"name": "minifloat", "preset": "fp8_e4m3", "exponent_width": 4, "mantissa_width": 3,
                              "bias": 7, "special": "fn", "saturate": True}
    assert E5M2.config == MinifloatConfig(exponent_width=5, mantissa_width=2, bias=15, special="ieee",
                                          preset="fp8_e5m2")
    assert fmt(preset="fp8_e4m3", exponent_width=4).config.mantissa_width == 3  # agreeing field is fine


@pytest.mark.parametrize("cfg, match", [
    ({"preset": "fp8_e4m2"}, r"quantize\.weight\.preset = 'fp8_e4m2' is not valid.*'fp8_e4m3', 'fp8_e5m2'"),
    ({"preset": "fp8_e4m3", "bias": 8}, r"quantize\.weight\.bias = 8 contradicts quantize\.weight\.preset"),
    ({"exponent_width": 4}, r"missing config key quantize\.weight\.mantissa_width.*preset"),
    ({"mantissa_width": 3}, r"missing config key quantize\.weight\.exponent_width"),
    ({"exponent_width": 1, "mantissa_width": 3}, r"quantize\.weight\.exponent_width = 1 is out of range.*\[2, 8\]"),
    ({"exponent_width": 9, "mantissa_width": 3}, r"quantize\.weight\.exponent_width = 9 is out of range"),
    ({"exponent_width": 0, "mantissa_width": 3}, r"quantize\.weight\.exponent_width = 0 is out of range"),
    ({"exponent_width": 4, "mantissa_width": -1}, r"quantize\.weight\.mantissa_width = -1 is out of range.*\[0, 13\]"),
    ({"exponent_width": 5, "mantissa_width": 11}, r"exponent_width \+ quantize\.weight\.mantissa_width = 5 \+ 11 "
                                                  r"does not fit.*at most 16 bits.*<= 15"),
    ({"exponent_width": 4, "mantissa_width": 0, "special": "fn"}, r"special = 'fn' needs.*mantissa_width >= 1"),
    ({"exponent_width": 4, "mantissa_width": 3, "special": "none", "saturate": False}, r"saturate = false needs"),
    ({"exponent_width": 4, "mantissa_width": 3, "special": "ieee2"}, r"special = 'ieee2' is not valid.*'ieee'"),
    ({"exponent_width": 8, "mantissa_width": 7, "special": "fn"}, r"bias = 127 is out of range.*\[128, 143\]"),
    ({"exponent_width": 4, "mantissa_width": 3, "bias": 200}, r"bias = 200 is out of range.*\[-113, 147\]"),
    ({"exponent_width": 4, "mantissa_width": 3, "bits": 8}, r"unknown config key 'quantize\.weight\.bits'"),
    ({"exponent_width": "4", "mantissa_width": 3}, r"quantize\.weight\.exponent_width must be an integer"),
])
def test_bad_config(cfg, match):
    with pytest.raises(ConfigError, match=match):
        format_from_dict({"name": "minifloat", **cfg}, path="quantize.weight")


def test_unknown_format_name_lists_minifloat():
    with pytest.raises(ConfigError, match=r"'minifloatt' is not a known number format.*'minifloat'"):
        format_from_dict({"name": "minifloatt", "preset": "fp8_e4m3"})


# ------------------------------------------------------------------------------ through the quantize pass

def test_quantize_pass_with_minifloat_equals_reference_and_cost_counts_8_bits(tmp_path):
    from _compression_helpers import linears, reference_graph, tiny_graph, tiny_inputs

    from mase_lite import MaseGraph
    from passes import run_pass
    from passes.transforms.compressed_nodes import get_tensor
    from passes.transforms.quantizers import quantize_weight

    cfg = {"by": "type", "default": {"config": {"name": "NA"}},
           "linear": {"config": {"name": "minifloat", "preset": "fp8_e4m3", "data_in_preset": "fp8_e4m3",
                                 "weight_preset": "fp8_e4m3", "bias_preset": "fp8_e4m3"}}}
    g, info = run_pass(tiny_graph(), "quantize", cfg)
    assert len(info["quantized"]) == len(linears(g)) == 8
    assert all(r["weight"] == E4M3.to_dict() and r["data_in"] == E4M3.to_dict() for r in info["quantized"])
    for node in linears(g):
        w = get_tensor(g, node.args[1]).detach()
        assert format_from_spec(node.kwargs["weight_q"]) == E4M3
        got = quantize_weight(w, None, node.kwargs["weight_q"])
        assert torch.equal(got, E4M3.reference(w)) and torch.equal(got, w.to(torch.float8_e4m3fn).float())
    inputs = tiny_inputs()
    g.eval()
    with torch.no_grad():
        out = g(**inputs).logits
        assert torch.equal(out, reference_graph(g).eval()(**inputs).logits)
    _, cost = run_pass(g, "cost", {})
    rows = {r["node"]: r for r in cost["nodes"]}
    for node in linears(g):
        t = rows[node.name]["tensors"]
        assert (t["weight"]["bits"], t["weight"]["overhead_bits"], t["bias"]["bits"]) == (8, 0, 8)
        assert t["weight"]["size_bytes_quantized"] == t["weight"]["numel"]
    g.save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g").eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, out)
