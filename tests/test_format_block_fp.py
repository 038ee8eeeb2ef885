"""The ``block_fp`` number format: hand-computed blocks, agreement with MASE's formula where the two
definitions agree (and the documented difference where they do not), hypothesis properties against
the block-by-block reference, STE, dtypes, shapes, config."""

from __future__ import annotations

import math
import tomllib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mase_lite.errors import ConfigError
from passes.formats import format_from_dict, format_from_spec, format_names, get_format
from passes.formats.block_fp import BlockFPFormat

INF, NAN = math.inf, math.nan


def fmt(**kw) -> BlockFPFormat:
    return format_from_dict({"name": "block_fp", **kw})


SMALL = fmt(mantissa_width=3, exponent_width=4, block_size=4)   # bias 7: s in [-7, 8], k in [0, 7]


def same(a, b) -> bool:
    """Equal values, NaN where NaN, and the same sign of zero."""
    a, b = a.double(), b.double()
    return bool(torch.equal(torch.isnan(a), torch.isnan(b))
                and torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))
                and torch.equal(torch.signbit(a) | torch.isnan(a), torch.signbit(b) | torch.isnan(b)))


# ------------------------------------------------------------------------------ hand-computed cases

def test_registered_and_bits():
    assert "block_fp" in format_names() and get_format("block_fp") is BlockFPFormat
    assert (SMALL.bits_per_value(), SMALL.overhead_bits((5, 8)), SMALL.max_value) == (4, 4 * 10, 7 * 2.0**5)
    default = fmt()
    assert default.to_dict() == {"name": "block_fp", "mantissa_width": 7, "exponent_width": 8, "bias": 127,
                                 "block_size": 16}
    assert (default.bits_per_value(), default.overhead_bits((64, 128))) == (8, 8 * 64 * 8)


def test_hand_blocks():
    x = torch.tensor([
        [1.0, 0.3, -0.26, 0.0],       # amax 1 -> s = 1 (1 < 2^1), step 2^-2: 0.3 -> 0.25, -0.26 -> -0.25
        [0.9, 0.95, 0.0625, -0.0],    # amax .95 -> s = 0, step 1/8: .9 -> 7.2 -> 7; .95 -> 7.6 -> 8 > 7: saturates;
                                      # 0.0625 = half a step: tie -> 0 (even)
        [3.0, NAN, 0.1, -0.2],        # NaN ignored for the exponent: s = 2, step 1/2; NaN stays; -0.2 -> -0.0
        [INF, 1.0, 2.0, 3.0],         # inf: largest exponent s = 8, step 32; inf saturates to 7 * 32
        [0.1875, 0.125, 0.0625, 0.03125],  # amax 3/16 -> s = -2, step 1/32: k = 6, 4, 2, 1
        [5e-4, 1e-4, 0.0, -3e-4],     # amax < 2^-7: s clamps to -7, step 2^-10: 0.512 -> 1, .1024 -> 0, -.307 -> -0
    ])
    want = torch.tensor([
        [1.0, 0.25, -0.25, 0.0],
        [0.875, 0.875, 0.0, -0.0],
        [3.0, NAN, 0.0, -0.0],
        [224.0, 0.0, 0.0, 0.0],
        [0.1875, 0.125, 0.0625, 0.03125],
        [2**-10, 0.0, 0.0, -0.0],
    ])
    assert same(SMALL.quantize(x), want)
    assert SMALL.shared_exponents(x).flatten().tolist() == [1, 0, 2, 8, -2, -7]
    assert SMALL.saturated(x).tolist() == [[False] * 4, [False, True, False, False], [False, True, False, False],
                                           [True, False, False, False], [False] * 4, [False] * 4]


def test_blocks_run_along_the_last_dimension():
    # two blocks of 2 per row: each has its own exponent
    f = fmt(mantissa_width=2, exponent_width=4, block_size=2)
    x = torch.tensor([[3.0, 1.1, 0.3, 0.2], [0.3, 0.2, 3.0, 1.1]])
    # [3, 1.1]: s = 2, step 1: 3, 1;  [0.3, 0.2]: s = -1, step 1/8: 0.3 -> 2.4 -> 2 -> .25, 0.2 -> 1.6 -> 2 -> .25
    assert f.quantize(x).tolist() == [[3.0, 1.0, 0.25, 0.25], [0.25, 0.25, 3.0, 1.0]]
    assert f.shared_exponents(x).squeeze(-1).tolist() == [[2, -1], [-1, 2]]


def _mase_formula(x: torch.Tensor, width: int, exponent_width: int, block_size: int) -> torch.Tensor:
    """MASE's ``_block_fp_quantize`` for last-dimension blocks, restated: s = ceil(log2 amax) clamped to
    [-bias, 2^e - 1 - bias], k = clamp(round((|x| + 1e-9) 2^(m - s)), 0, 2^m - 1), values with
    |x| <= 1e-8 passed through."""
    m, bias = width - 1, 2 ** (exponent_width - 1) - 1
    xb = x.reshape(*x.shape[:-1], -1, block_size)
    amax = xb.abs().amax(-1, keepdim=True)
    s = torch.ceil(torch.log2(amax)).clamp(-bias, 2**exponent_width - 1 - bias)
    k = torch.round((xb.abs() + 1e-9) / 2**s * 2**m).clamp(0, 2**m - 1)
    out = (torch.sign(xb + 1e-9) * 2**s * k / 2**m).reshape(x.shape)
    return torch.where(x.abs() <= 1e-8, x, out)


def test_agrees_with_mase_where_the_definitions_agree():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g) * torch.exp2(torch.randint(-6, 6, (64, 1), generator=g).float())
    for width, ew, bs in ((8, 8, 16), (4, 4, 8), (6, 5, 32)):
        f = fmt(mantissa_width=width - 1, exponent_width=ew, block_size=bs)
        amax = x.reshape(64, -1, bs).abs().amax(-1)
        assert not bool((torch.frexp(amax).mantissa == 0.5).any())   # no block max is a power of two
        assert same(f.quantize(x), _mase_formula(x, width, ew, bs))


def test_documented_difference_from_mase_at_a_power_of_two_max():
    x = torch.tensor([[1.0, 0.5, 0.3, 0.1]])
    f = fmt(mantissa_width=3, exponent_width=4, block_size=4)
    # here: s = 1, step 1/4, the max is exact; MASE: s = 0, step 1/8, the max saturates to 7/8
    assert f.quantize(x).tolist() == [[1.0, 0.5, 0.25, 0.0]]
    mase = _mase_formula(x, 4, 4, 4)
    assert mase.tolist() == [[0.875, 0.5, 0.25, 0.125]]
    # a block whose max rounds to a power of two: MASE's second pass moves it again (not idempotent)
    y = torch.tensor([[0.55, 0.3, 0.1, 0.05]])
    once = _mase_formula(y, 4, 4, 4)
    assert once.tolist() == f.quantize(y).tolist() == [[0.5, 0.25, 0.125, 0.0]]
    assert _mase_formula(once, 4, 4, 4).tolist() == [[0.4375, 0.25, 0.125, 0.0]]
    assert torch.equal(f.quantize(f.quantize(y)), f.quantize(y))


# ------------------------------------------------------------------------------ hypothesis properties

@st.composite
def formats(draw):
    m = draw(st.integers(1, 15))
    e = draw(st.integers(1, 8))
    lo, hi = 2**e - 1 - 128, -m + 149
    default = 2 ** (e - 1) - 1
    bias = draw(st.just(default) | st.integers(lo, hi)) if lo <= default <= hi else draw(st.integers(lo, hi))
    return fmt(mantissa_width=m, exponent_width=e, bias=bias, block_size=draw(st.sampled_from([1, 2, 3, 4, 8])))


@st.composite
def inputs(draw, f: BlockFPFormat):
    """A [rows, 2 blocks] float32 tensor: each row's values around one random scale, with exact ties."""
    rows = draw(st.integers(1, 3))
    n = 2 * f.block_size
    out = []
    for _ in range(rows):
        t = draw(st.integers(f.emin - 4, f.emax + 2))
        mag = st.floats(-f.m - 3, 0.0).map(lambda u, t=t: 2.0 ** (t + u))
        tie = st.integers(0, 2**f.m).map(lambda k, t=t: (k + 0.5) * 2.0 ** (t - f.m))
        v = st.one_of(mag, tie, st.sampled_from([0.0, -0.0, NAN, INF]))
        row = draw(st.lists(v, min_size=n, max_size=n))
        signs = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        out.append([-a if s else a for a, s in zip(row, signs)])
    x = torch.tensor(out, dtype=torch.float64).to(torch.float32)
    return x


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_quantize_equals_reference(data):
    f = data.draw(formats())
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    x = data.draw(inputs(f)).to(dtype)
    out = f.quantize(x)
    assert out.dtype == dtype and same(out, f.reference(x))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_on_grid_idempotent_monotone_and_error_bound(data):
    f = data.draw(formats())
    x = data.draw(inputs(f))
    out = f.quantize(x)
    s = f.shared_exponents(x).double()                        # [rows, blocks, 1]
    step = torch.exp2(s - f.m)
    xb, qb = x.double().reshape(s.shape[0], -1, f.block_size), out.double().reshape(s.shape[0], -1, f.block_size)
    assert bool(((s >= f.emin) & (s <= f.emax)).all())
    k = qb / step                                             # on the grid: integer codes in [-kmax, kmax]
    ok = torch.isnan(qb) | ((k == k.round()) & (k.abs() <= f.kmax))
    assert bool(ok.all())
    assert same(f.quantize(out), out)                         # idempotent
    finite = torch.isfinite(xb)
    err = (qb - xb).abs()
    inside = finite & (xb.abs() <= (f.kmax + 0.5) * step)     # not clipped: within half a step
    assert bool((err[inside] <= (step / 2).expand_as(err)[inside]).all())
    amax = torch.where(torch.isnan(xb), 0.0, xb.abs()).amax(-1, keepdim=True)
    in_range = finite & (amax < 2.0**f.emax) & (amax >= 2.0 ** (f.emin - 1))  # exponent not clamped
    bound = (2.0**-f.m * amax).expand_as(err)                # relative to the block max: below one step
    assert bool((err[in_range] <= bound[in_range]).all())
    for row_x, row_q in zip(xb.reshape(-1, f.block_size), qb.reshape(-1, f.block_size)):   # monotone per block
        keep = ~torch.isnan(row_x)
        order = row_x[keep].argsort()
        qs = row_q[keep][order]
        assert bool((qs[1:] >= qs[:-1]).all())


# ------------------------------------------------------------------------------ STE, dtypes, shapes

def test_ste_gradients():
    x = torch.tensor([[0.9, 0.95, 0.3, -0.5]], requires_grad=True)
    SMALL.quantize_ste(x, "plain").sum().backward()
    assert x.grad.tolist() == [[1.0] * 4]
    x.grad = None
    y = SMALL.quantize_ste(x, "clipped")
    assert y.tolist() == SMALL.quantize(x.detach()).tolist() == [[0.875, 0.875, 0.25, -0.5]]
    (y * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 3.0, 4.0]]   # 0.95 needed k = 8 > 7: clipped


def test_bfloat16_float64_and_shapes():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, generator=g) * 5
    f = fmt(mantissa_width=8, exponent_width=6, block_size=8)
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        out = f.quantize(x.to(dt))
        assert out.dtype == dt and out.shape == x.shape
        assert same(out, f.reference(x.to(dt)))
    assert same(f.quantize(x.double()), f.quantize(x).double())
    wide = fmt(mantissa_width=15, exponent_width=8, bias=130, block_size=4)   # float64 arithmetic
    assert not wide._f32_exact and same(wide.quantize(x), wide.reference(x))
    one = fmt(mantissa_width=3, exponent_width=4, block_size=1)
    assert one.quantize(torch.tensor(0.3)).item() == 0.3125 and one.quantize(torch.tensor(0.3)).shape == ()
    with pytest.raises(TypeError, match="floating-point"):
        one.quantize(torch.tensor([1, 2]))


def test_block_size_must_divide_the_last_dimension():
    f = fmt(block_size=16)
    f.check_shape((4, 32))
    with pytest.raises(ConfigError, match=r"^quantize\.linear\.config\.weight\.block_size = 16 does not divide the "
                                          r"last \(input\) dimension 24 of a tensor of shape \(3, 24\); valid block "
                                          r"sizes: 1, 2, 3, 4, 6, 8, 12, 24$"):
        f.check_shape((3, 24), "quantize.linear.config.weight")
    x = torch.randn(3, 24)
    before = x.clone()
    with pytest.raises(ConfigError, match="block_size = 16 does not divide"):
        f.quantize(x)
    assert torch.equal(x, before)


# ------------------------------------------------------------------------------ config

def _toml(d: dict) -> str:
    return "\n".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in d.items())


@pytest.mark.parametrize("cfg", [{}, {"mantissa_width": 3, "exponent_width": 4, "block_size": 4},
                                 {"mantissa_width": 5, "exponent_width": 6, "bias": 20, "block_size": 32}])
def test_config_round_trip(cfg):
    f = fmt(**cfg)
    d = f.to_dict()
    assert d["name"] == "block_fp" and {k: d[k] for k in cfg} == cfg
    assert format_from_dict(d) == f and format_from_dict(tomllib.loads(_toml(d))) == f
    assert format_from_spec(f.spec()) == f


@pytest.mark.parametrize("cfg, match", [
    ({"mantissa_width": 0}, r"q\.w\.mantissa_width = 0 is out of range; it must be in \[1, 15\]"),
    ({"mantissa_width": 16}, r"q\.w\.mantissa_width = 16 is out of range"),
    ({"exponent_width": 0}, r"q\.w\.exponent_width = 0 is out of range; it must be in \[1, 8\]"),
    ({"exponent_width": 9}, r"q\.w\.exponent_width = 9 is out of range"),
    ({"block_size": 0}, r"q\.w\.block_size = 0 is out of range; it must be in \[1, inf\]"),
    ({"bias": 143}, r"q\.w\.bias = 143 is out of range.*\[127, 142\]"),
    ({"bias": 1.5}, r"q\.w\.bias must be an integer"),
    ({"exponent_width": 8, "bias": 100}, r"q\.w\.bias = 100 is out of range"),
    ({"block_size": 2.5}, r"q\.w\.block_size must be an integer"),
    ({"width": 8}, r"unknown config key 'q\.w\.width'"),
])
def test_bad_config(cfg, match):
    with pytest.raises(ConfigError, match=match):
        format_from_dict({"name": "block_fp", **cfg}, path="q.w")


# ------------------------------------------------------------------------------ through the quantize pass

BFP_ENTRY = {"name": "block_fp", "mantissa_width": 3, "exponent_width": 5,
             "data_in_block_size": 16, "weight_block_size": 16, "bias_block_size": 2}


def test_quantize_pass_with_block_fp_equals_reference_and_cost_counts_exponents():
    from _compression_helpers import linears, reference_graph, tiny_graph, tiny_inputs

    from passes import run_pass
    from passes.transforms.compressed_nodes import get_tensor
    from passes.transforms.quantizers import quantize_weight

    cfg = {"by": "type", "default": {"config": {"name": "NA"}}, "linear": {"config": BFP_ENTRY}}
    g, info = run_pass(tiny_graph(), "quantize", cfg)
    want = fmt(mantissa_width=3, exponent_width=5, block_size=16)
    assert len(info["quantized"]) == len(linears(g)) == 8
    assert all(r["weight"] == want.to_dict() for r in info["quantized"])
    for node in linears(g):
        w = get_tensor(g, node.args[1]).detach()
        assert format_from_spec(node.kwargs["weight_q"]) == want
        assert torch.equal(quantize_weight(w, None, node.kwargs["weight_q"]), want.reference(w))
    inputs = tiny_inputs()
    g.eval()
    with torch.no_grad():
        assert torch.equal(g(**inputs).logits, reference_graph(g).eval()(**inputs).logits)
    _, cost = run_pass(g, "cost", {})
    rows = {r["node"]: r for r in cost["nodes"]}
    for node in linears(g):
        t = rows[node.name]["tensors"]
        n_w, n_b = t["weight"]["numel"], t["bias"]["numel"]
        assert (t["weight"]["bits"], t["weight"]["overhead_bits"]) == (4, 5 * n_w // 16)
        assert (t["bias"]["bits"], t["bias"]["overhead_bits"]) == (4, 5 * n_b // 2)
        assert t["weight"]["size_bytes_quantized"] == math.ceil((4 * n_w + 5 * n_w // 16) / 8)


def test_quantize_pass_rejects_a_block_size_that_does_not_divide_and_changes_nothing():
    from _compression_helpers import assert_unchanged, state, tiny_graph

    from passes import run_pass

    g = tiny_graph()
    code, st = g.gm.code, state(g)
    cfg = {"by": "type", "linear": {"config": {**BFP_ENTRY, "bias_block_size": 16}}}
    with pytest.raises(ConfigError, match=r"quantize\.linear\.config\.bias_block_size = 16 does not divide the last "
                                          r"\(input\) dimension 2 of a tensor of shape \(2,\); valid block sizes: 1, 2"
                                          r" \(node 'linear_7', module 'classifier'\)"):
        run_pass(g, "quantize", cfg)
    assert_unchanged(g, code, st)


def test_quantize_pass_rejects_an_activation_block_size_before_any_edit():
    """data_in's block size is checked against the linear's input width when the pass runs, not at the
    first forward pass: the error names the role's field and the graph is left unchanged."""
    from _compression_helpers import assert_unchanged, state, tiny_graph

    from passes import run_pass

    g = tiny_graph()
    code, st = g.gm.code, state(g)
    cfg = {"by": "type", "linear": {"config": {"name": "block_fp", "data_in_mantissa_width": 3,
                                               "data_in_exponent_width": 5, "data_in_block_size": 48}}}
    with pytest.raises(ConfigError, match=r"quantize\.linear\.config\.data_in_block_size = 48 does not divide the "
                                          r"last \(input\) dimension"):
        run_pass(g, "quantize", cfg)
    assert_unchanged(g, code, st)
