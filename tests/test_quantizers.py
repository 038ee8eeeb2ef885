"""The integer quantiser: exact values, properties, STE gradients, weight cache, bad formats."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mase_lite.errors import ConfigError
from mase_lite.weight_scope import frozen_weights, scope_cache
from passes.transforms.quantizers import (
    check_qspec,
    clear_weight_cache,
    integer_quantize,
    integer_quantize_reference,
    quantize_weight,
)


def q(values, w, f, floor=False):
    return integer_quantize(torch.tensor(values, dtype=torch.float32), w, f, floor=floor).tolist()


def test_hand_computed_values_ties_and_saturation():
    # w=4, f=2: grid step 0.25, codes in [-8, 7] -> values in [-2.0, 1.75]
    assert q([0.0, 0.1, 0.125, 0.375, 0.625, -0.375, -0.625], 4, 2) == [0.0, 0.0, 0.0, 0.5, 0.5, -0.5, -0.5]
    # ties round half to even: 0.5->0, 1.5->2, 2.5->2, -1.5->-2 (codes)
    assert q([0.125 * 1, 0.125 * 3, 0.125 * 5, -0.125 * 3], 4, 2) == [0.0, 0.5, 0.5, -0.5]
    # saturation is asymmetric: -2^(w-1) .. 2^(w-1)-1
    assert q([1.8, 5.0, 1e30, -2.1, -5.0, -1e30, float("inf"), float("-inf")], 4, 2) == [
        1.75, 1.75, 1.75, -2.0, -2.0, -2.0, 1.75, -2.0]
    # floor
    assert q([0.375, -0.375, 0.99, -0.01, 1.9, -2.3], 4, 2, floor=True) == [0.25, -0.5, 0.75, -0.25, 1.75, -2.0]
    # Lab 2's format: 8 bits, 4 fraction bits -> step 1/16, range [-8, 127/16]
    assert q([0.03125, 0.09375, 0.1, 7.97, -8.5, 3.3], 8, 4) == [0.0, 0.125, 0.125, 7.9375, -8.0, 3.3125]
    # frac_width == width and frac_width == 0
    assert q([0.3, 0.6, -0.6], 2, 2) == [0.25, 0.25, -0.5]
    assert q([2.5, 3.5, 200.0, -200.0], 8, 0) == [2.0, 4.0, 127.0, -128.0]


def test_nan_stays_nan():
    out = integer_quantize(torch.tensor([float("nan"), 1.0]), 8, 4)
    assert math.isnan(out[0]) and out[1] == 1.0


def test_wide_grids_stay_on_grid_and_in_range():
    # 2^31 - 1 is not a float32: the top code becomes the largest float32 below it
    out = integer_quantize(torch.tensor([1e12, -1e12, 12345.5]), 32, 0)
    assert out.tolist() == [2147483520.0, -2147483648.0, 12346.0]
    assert integer_quantize(torch.tensor([0.9]), 32, 32).item() == pytest.approx(0.5, abs=1e-7)
    assert integer_quantize(torch.tensor([0.9]), 32, 32).item() < 0.5


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
formats = st.integers(2, 24).flatmap(lambda w: st.tuples(st.just(w), st.integers(0, w)))


@settings(max_examples=150, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40), formats, st.booleans())
def test_properties(values, fmt, floor):
    w, f = fmt
    x = torch.tensor(values, dtype=torch.float32)
    out = integer_quantize(x, w, f, floor=floor)
    codes = out.double() * 2.0 ** f
    lo, hi = -(2 ** (w - 1)), 2 ** (w - 1) - 1
    assert torch.equal(codes, codes.round()), "on the 2^-f grid"
    assert bool(((codes >= lo) & (codes <= hi)).all()), "inside the range"
    assert torch.equal(integer_quantize(out, w, f, floor=floor), out), "idempotent"
    assert torch.equal(out, integer_quantize_reference(x, w, f, floor)), "fast == formula"
    inside = (x.double() * 2.0 ** f >= lo) & (x.double() * 2.0 ** f <= hi)
    err = (out.double() - x.double())[inside]
    if floor:
        assert bool(((err <= 0) & (err >= -(2.0 ** -f))).all()), "floor: error in (-2^-f, 0] (up to float64 rounding)"
    else:
        assert bool((err.abs() <= 2.0 ** -(f + 1)).all()), "round: |error| <= 2^-(f+1) inside the range"


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=1, max_size=20), formats, st.lists(st.integers(-600, 600), min_size=1, max_size=20))
def test_round_half_to_even_matches_python(values, fmt, ties):
    w, f = fmt
    # exact ties on the grid: x * 2^f = k + 0.5 (exact in float32 for these k and f <= 24)
    tie_values = [(k + 0.5) / 2 ** f for k in ties]
    x = torch.tensor(values + tie_values, dtype=torch.float32)
    assert [v * 2 ** f for v in x.tolist()[len(values):]] == [k + 0.5 for k in ties]
    out = integer_quantize(x, w, f)
    assert torch.equal(out, integer_quantize_reference(x, w, f))
    for v, o in zip(x.tolist(), out.tolist()):
        code = min(max(round(v * 2 ** f), -(2 ** (w - 1))), 2 ** (w - 1) - 1)  # Python round: half to even
        assert o == code / 2 ** f


@pytest.mark.parametrize("w, f", [(4, 2), (8, 4), (8, 0), (16, 8), (24, 24)])
def test_exact_ties_round_half_to_even(w, f):
    ks = [k for k in range(-9, 9) if -(2 ** (w - 1)) <= k and k + 1 <= 2 ** (w - 1) - 1]  # ties inside the range
    x = torch.tensor([(k + 0.5) * 2.0 ** -f for k in ks], dtype=torch.float32)
    want = [(k if k % 2 == 0 else k + 1) * 2.0 ** -f for k in ks]  # to the even neighbour of k, k + 1
    assert want == [round((k + 0.5)) * 2.0 ** -f for k in ks]  # = Python's round
    assert integer_quantize(x, w, f).tolist() == want
    assert integer_quantize_reference(x, w, f).tolist() == want
    assert want[ks.index(0)] == 0.0 and want[ks.index(1)] == 2 * 2.0 ** -f and want[ks.index(-1)] == 0.0
    assert want[ks.index(-2)] == -2 * 2.0 ** -f  # -1.5 -> -2


def test_ste_gradients_plain_and_clipped():
    x = torch.tensor([0.1, 0.3, 5.0, -5.0, -1.9], requires_grad=True)
    integer_quantize(x, 4, 2).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]  # plain STE: also where saturated
    x.grad = None
    integer_quantize(x, 4, 2, ste="clipped").sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]  # clipped: zero outside [-2, 1.75]
    with pytest.raises(ConfigError, match="ste"):
        integer_quantize(x, 4, 2, ste="clip")


@pytest.mark.parametrize(
    "w, f, match",
    [(8, 9, r"frac_width = 9 is out of range; it must be in \[0, width = 8\]"),
     (1, 0, r"width = 1 is out of range; it must be in \[2, 32\]"),
     (33, 4, r"width = 33 is out of range"),
     (8, -1, r"frac_width = -1 is out of range"),
     (8.5, 4, "width must be an integer"),
     (True, 4, "width must be an integer")],
)
def test_bad_formats(w, f, match):
    with pytest.raises(ConfigError, match=match):
        check_qspec(w, f)


def test_weight_cache_lives_in_a_frozen_weights_block_only():
    w = torch.nn.Parameter(torch.tensor([[0.1, 0.3], [0.7, -0.2]]))
    mask = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        a = quantize_weight(w, mask, (4, 2, False))
        assert quantize_weight(w, mask, (4, 2, False)) is not a  # no block: never cached
        assert a.tolist() == [[0.0, 0.0], [0.75, -0.25]]
        with frozen_weights() as store:
            a = quantize_weight(w, mask, (4, 2, False))
            assert quantize_weight(w, mask, (4, 2, False)) is a  # cached within the block
            assert len(store) == 1
            clear_weight_cache()
            assert not store and quantize_weight(w, mask, (4, 2, False)) is not a
            assert quantize_weight(w, mask, (8, 4, False)).tolist() == [[0.125, 0.0], [0.6875, -0.1875]]
        # an update the cache cannot see (no version bump, same storage), as fused optimizers make
        w.data.add_(0.5)
        with frozen_weights():
            b = quantize_weight(w, mask, (4, 2, False))
            assert b.tolist() == [[0.5, 0.0], [1.25, 0.25]]
            mask[0, 1] = True
            assert quantize_weight(w, mask, (4, 2, False)).tolist() == [[0.5, 0.75], [1.25, 0.25]]
            assert quantize_weight(w, mask, (8, 4, False)).tolist() == [[0.625, 0.8125], [1.1875, 0.3125]]
        assert scope_cache() is None
    # with autograd: not cached, gradient masked
    out = quantize_weight(w, mask.logical_not(), (4, 2, False))
    out.sum().backward()
    assert w.grad.tolist() == [[0.0, 0.0], [0.0, 0.0]]
