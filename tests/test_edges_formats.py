"""Number formats at their edges: exact values at rounding ties, at the ends of the code range, at
the exact-fit points of data-dependent parameters, and where the clipped STE starts to clip.

Every expected value is derived here by hand (or by a brute-force search over the definition in the
format's docstring), not read back from the library.
"""

from __future__ import annotations

import math

import pytest
import torch

from passes.formats import format_from_dict
from passes.formats.block_fp import BlockFPConfig, BlockFPFormat
from passes.formats.integer import IntegerConfig, QSpec, auto_frac_width, integer_quantize
from passes.formats.minifloat import MinifloatConfig, MinifloatFormat
from passes.formats.scaled_integer import ScaledIntegerConfig, ScaledIntegerFormat
from passes.transforms.quantizers import quantize_weight


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values and equal signs of zeros (NaN equal to NaN)."""
    return bool(((a == b) & (torch.signbit(a) == torch.signbit(b)) | (a.isnan() & b.isnan())).all())


# ------------------------------------------------------------------------------------ integer


def test_integer_ties_round_half_to_even():
    # width 8, frac 0: the grid is the integers; x.5 goes to the even neighbour (Python's round)
    x = _t([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 126.5])
    want = _t([round(v) for v in x.tolist()])
    assert want.tolist() == [0, 2, 2, 4, 0, -2, -2, 126]
    assert torch.equal(integer_quantize(x, 8, 0), want)
    fmt = format_from_dict({"name": "integer", "width": 8, "frac_width": 0})
    assert torch.equal(fmt.quantize(x), want)
    # with 2 fraction bits the ties are at odd multiples of 1/8
    x = _t([0.125, 0.375, -0.625, 1.875])
    assert integer_quantize(x, 8, 2).tolist() == [0.0, 0.5, -0.5, 2.0]
    # floor = true: towards -inf, ties included
    assert integer_quantize(_t([0.5, -0.5, 1.99, -1.01]), 8, 0, floor=True).tolist() == [0.0, -1.0, 1.0, -2.0]


def test_integer_code_range_ends_are_exact():
    # width 4: codes -8 .. 7 (two's complement), both ends representable
    spec = QSpec(4, 0)
    assert (spec.qmin, spec.qmax) == (-8, 7)
    x = _t([-9.0, -8.0, -7.5, 7.0, 7.4, 7.5, 100.0])
    assert integer_quantize(x, 4, 0).tolist() == [-8.0, -8.0, -8.0, 7.0, 7.0, 7.0, 7.0]
    # width 8, frac 4: [-128/16, 127/16] = [-8, 7.9375]; qmax itself is a float32 number and stays exact
    x = _t([-8.0, 127 / 16, 200.0, -200.0])
    assert integer_quantize(x, 8, 4).tolist() == [-8.0, 127 / 16, 127 / 16, -8.0]
    w = torch.full((3,), 127.0)
    assert quantize_weight(w, None, (8, 0), cache=False).tolist() == [127.0, 127.0, 127.0]


def _brute_auto(absmax: float, width: int) -> int:
    """The docstring's rule by search: the most f in [0, width] with absmax * 2**f <= qmax."""
    qmax = 2 ** (width - 1) - 1
    fits = [f for f in range(width + 1) if absmax * 2.0**f <= qmax]
    return max(fits) if fits else 0


@pytest.mark.parametrize("width", [2, 4, 8, 16])
def test_auto_frac_width_at_exact_fits(width):
    qmax = 2 ** (width - 1) - 1
    cases = []
    for k in range(-3, width + 4):
        exact = qmax / 2.0**k  # absmax * 2**k == qmax exactly: f = k fits
        cases += [exact, math.nextafter(exact, math.inf), math.nextafter(exact, 0.0)]
    cases += [1e-9, 2.0**-40, float(qmax), qmax + 1.0, 1e9]
    for a in cases:
        assert auto_frac_width(a, width) == _brute_auto(a, width), (a, width)
    assert auto_frac_width(qmax / 16.0, width) == (4 if width >= 4 else width)
    assert auto_frac_width(1e-9, width) == width  # a tiny range: every fraction bit
    assert auto_frac_width(0.0, width) == width


def test_auto_frac_width_resolves_from_the_tensor_at_an_exact_fit():
    w = _t([[127 / 16, -1.0], [0.5, 0.0]])  # max |w| * 2**4 == 127 exactly
    cfg = IntegerConfig(width=8, frac_width="auto").resolve(tensor=w)
    assert cfg.frac_width == 4
    assert format_from_dict(cfg.to_dict()).quantize(w).tolist() == w.tolist()  # nothing saturates
    assert IntegerConfig(width=8, frac_width="auto").resolve(absmax=1e-6).frac_width == 8


def test_integer_clipped_ste_passes_the_gradient_at_both_ends_of_the_range():
    # width 4, frac 1: codes -8..7 -> values -4 .. 3.5; the ends themselves are inside
    x = _t([-4.0, -4.25, 3.5, 3.75, 0.0], dtype=torch.float32).requires_grad_(True)
    integer_quantize(x, 4, 1, ste="clipped").sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    fmt = format_from_dict({"name": "integer", "width": 4, "frac_width": 1})
    assert fmt.saturated(x.detach()).tolist() == [False, True, False, True, False]


def test_clipped_ste_of_a_masked_weight_passes_no_gradient_to_pruned_weights():
    w = _t([[0.5, 100.0], [0.25, -0.25]]).requires_grad_(True)  # 100 saturates (8 bits, 4 fraction bits)
    mask = torch.tensor([[True, True], [False, True]])
    quantize_weight(w, mask, (8, 4), ste="clipped").sum().backward()
    # in range and kept: 1; saturated: 0; pruned (in range): 0
    assert w.grad.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    w.grad = None
    quantize_weight(w, mask, (8, 4), ste="plain").sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0], [0.0, 1.0]]


# ------------------------------------------------------------------------------------ scaled_integer


def test_scaled_integer_activation_scale_is_absmax_over_qmax():
    # 31.75 / 127 = 0.25 and 254 / 127 = 2: exact, so the expected scales need no float32 rounding
    assert ScaledIntegerConfig(width=8).resolve(absmax=31.75).scale == 0.25
    assert ScaledIntegerConfig(width=4).resolve(absmax=14.0).scale == 2.0  # qmax 7
    # a calibrated range of 0: the smallest normal float32
    assert ScaledIntegerConfig(width=8).resolve(absmax=0.0).scale == 2.0**-126


def test_scaled_integer_fixed_scale_ties_to_even_and_saturates_beyond_qmax():
    fmt = ScaledIntegerFormat(ScaledIntegerConfig(width=8, scale=0.25))
    # x / s = 0.5, 1.5, 2.5, -0.5, -2.5, 127, 127.5, -128
    x = _t([0.125, 0.375, 0.625, -0.125, -0.625, 31.75, 31.875, -32.0])
    want = [round(v / 0.25) for v in x.tolist()]
    want = [max(-127, min(127, k)) * 0.25 for k in want]
    assert want == [0.0, 0.5, 0.5, -0.0, -0.5, 31.75, 31.75, -31.75]
    assert fmt.quantize(x).tolist() == want
    # 127 * s exactly is representable (not saturated); beyond it saturates
    assert fmt.saturated(x).tolist() == [False] * 6 + [True, True]
    assert fmt.overhead_bits((3, 5)) == 0  # a recorded scale is part of the config, not stored data


def test_scaled_integer_per_channel_overhead_is_one_scale_per_output_channel():
    fmt = ScaledIntegerFormat(ScaledIntegerConfig(width=8, granularity="per_channel"))
    assert fmt.overhead_bits((3, 5), channel_dim=0) == 3 * 32
    assert fmt.overhead_bits((64, 32), channel_dim=0) == 64 * 32
    assert fmt.overhead_bits((5,), channel_dim=None) == 32  # a bias: one scale
    w = _t([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]])
    # channel 0: s = 1/127: -0.5 / s = -63.5 ties to -64 (even), 0.25 / s = 31.75 -> 32; channel 1: zeros
    q = fmt.quantize(w, channel_dim=0)
    assert q[0].tolist() == pytest.approx([1.0, -64 / 127, 32 / 127], rel=1e-6) and q[1].tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------ minifloat


def test_minifloat_without_saturation_overflows_exactly_like_the_float8_cast():
    fmt = MinifloatFormat(MinifloatConfig(preset="fp8_e5m2", saturate=False))
    # max 57344; half a step above it (61440) ties between the odd max code and the even inf code
    x = _t([57344.0, -57344.0, 61439.0, 61440.0, -61440.0, 1e6, 49152.0, 53248.0])
    want = x.to(torch.float8_e5m2).float()
    assert want.tolist()[:2] == [57344.0, -57344.0] and math.isinf(want[3])
    assert _same(fmt.quantize(x), want)
    # E4M3FN: max 448 (code 0x7E, even), the next code 0x7F is NaN: the tie 464 stays at 448, beyond is NaN
    fn = MinifloatFormat(MinifloatConfig(preset="fp8_e4m3", saturate=False))
    q = fn.quantize(_t([448.0, 463.0, 464.0, 465.0, -465.0]))
    assert q[:3].tolist() == [448.0, 448.0, 448.0] and math.isnan(q[3]) and math.isnan(q[4])


def test_minifloat_saturated_mask_excludes_the_largest_value_itself():
    fmt = MinifloatFormat(MinifloatConfig(preset="fp8_e4m3"))
    x = _t([448.0, -448.0, 448.5, -449.0, math.inf, math.nan, 0.0])
    assert fmt.saturated(x).tolist() == [False, False, True, True, True, True, False]
    x = x.clone().requires_grad_(True)
    fmt.quantize_ste(x, "clipped").sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_minifloat_without_mantissa_ties_to_the_even_exponent_field():
    # e3 m0, bias 3, ieee: values 2^(E-3) for fields E = 1..6 (0.25 .. 8), and 0; a tie goes to the even field
    fmt = MinifloatFormat(MinifloatConfig(exponent_width=3, mantissa_width=0))
    pairs = {  # tie point: (lower value, field) vs (upper value, field) -> the even field wins
        0.125: 0.0,    # 0 (code 0) vs 0.25 (E=1)
        0.375: 0.5,    # 0.25 (E=1) vs 0.5 (E=2)
        0.75: 0.5,     # 0.5 (E=2) vs 1 (E=3)
        1.5: 2.0,      # 1 (E=3) vs 2 (E=4)
        3.0: 2.0,      # 2 (E=4) vs 4 (E=5)
        6.0: 8.0,      # 4 (E=5) vs 8 (E=6)
    }
    x = _t(list(pairs))
    assert fmt.quantize(x).tolist() == list(pairs.values())
    assert fmt.quantize(-x).tolist() == [-v for v in pairs.values()]
    assert fmt.quantize(_t([1.49, 1.51, 100.0])).tolist() == [1.0, 2.0, 8.0]


# ------------------------------------------------------------------------------------ block_fp


def test_block_fp_keeps_a_power_of_two_block_maximum_exactly():
    # m = 3: the shared exponent is floor(log2 amax) + 1, so amax = 1 has s = 1 and step 2^-2
    fmt = BlockFPFormat(BlockFPConfig(mantissa_width=3, exponent_width=4, block_size=4))
    x = _t([[1.0, 0.5, 0.25, -0.75], [2.0, -2.0, 0.125, 0.0]])
    q = fmt.quantize(x)
    assert q[0].tolist() == [1.0, 0.5, 0.25, -0.75]
    assert q[1].tolist() == [2.0, -2.0, 0.0, 0.0]  # step 0.5 in the second block: 0.125 -> 0
    assert torch.equal(fmt.quantize(q), q)  # idempotent


def test_block_fp_saturation_starts_above_the_largest_code():
    # block size 1: each value its own block; m = 3 so codes 0..7 and the largest is 7 * 2^(s-3)
    fmt = BlockFPFormat(BlockFPConfig(mantissa_width=3, exponent_width=4, block_size=1))
    # 1.75 = 7 * 0.25 (the largest code, exact); 1.875 = 7.5 steps (rounds to 8: saturates); 1.9 too
    x = _t([1.75, 1.875, 1.9, 1.0, -1.75])
    assert fmt.saturated(x).tolist() == [False, True, True, False, False]
    assert fmt.quantize(x).tolist() == [1.75, 1.75, 1.75, 1.0, -1.75]
