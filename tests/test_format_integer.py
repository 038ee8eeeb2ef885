"""The ``integer`` format: the same fixed point as before (bit for bit), its interface, and
``frac_width = "auto"``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _compression_helpers import hand_q
from mase_lite import ConfigError
from passes.formats import format_from_dict
from passes.formats.integer import IntegerConfig, IntegerFormat, auto_frac_width
from passes.transforms.quantizers import integer_quantize, integer_quantize_reference

floats = st.floats(-300, 300, allow_nan=False, width=32)


def fmt(w=8, f=4, floor=False) -> IntegerFormat:
    return format_from_dict({"name": "integer", "width": w, "frac_width": f, "floor": floor})


def test_hand_computed_values():
    x = torch.tensor([0.03, 0.09375, -0.03125, 1.0, 100.0, -100.0])
    # step 1/16: 0.03 -> 0.48 -> 0; 0.09375 = 1.5/16 -> 2/16 (ties to even); -0.5/16 -> -0;
    # saturation at 127/16 and -128/16
    assert fmt().quantize(x).tolist() == [0.0, 0.125, -0.0, 1.0, 127 / 16, -8.0]
    assert fmt(floor=True).quantize(x).tolist() == [0.0, 0.0625, -0.0625, 1.0, 127 / 16, -8.0]
    assert fmt().bits_per_value() == 8 and fmt().overhead_bits((3, 4), channel_dim=0) == 0
    assert fmt().to_dict() == {"name": "integer", "width": 8, "frac_width": 4, "floor": False}


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=1, max_size=40), st.integers(2, 16), st.data(), st.booleans())
def test_bit_identical_to_the_old_functions_on_grid_and_idempotent(values, w, data, floor):
    f = data.draw(st.integers(0, w))
    x = torch.tensor(values, dtype=torch.float32)
    q = fmt(w, f, floor)
    out = q.quantize(x)
    assert torch.equal(out, integer_quantize(x, w, f, floor=floor))
    assert torch.equal(out, integer_quantize_reference(x, w, f, floor))
    assert torch.equal(q.reference(x), out)
    assert torch.equal(q.quantize(out), out)
    codes = out * 2.0**f
    assert torch.equal(codes, codes.round()) and codes.min() >= -(2 ** (w - 1)) and codes.max() <= 2 ** (w - 1) - 1
    inside = (x * 2.0**f >= -(2 ** (w - 1))) & (x * 2.0**f <= 2 ** (w - 1) - 1)
    if not floor:  # error bound inside the range: half a step
        assert ((out - x).abs()[inside] <= 2.0 ** -f / 2).all()


def test_ste_through_the_interface():
    x = torch.tensor([0.1, 0.3, 5.0, -5.0, -1.9], requires_grad=True)
    q = fmt(4, 2)
    q.quantize_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0] * 5
    x.grad = None
    q.quantize_ste(x, "clipped").sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert q.saturated(x.detach()).tolist() == [False, False, True, True, False]
    with pytest.raises(ConfigError, match="ste = 'clip' is not valid"):
        q.quantize_ste(x, "clip")


@pytest.mark.parametrize("absmax, width, want", [
    (1.0, 8, 6),          # 127 / 1 -> 2^6 = 64 <= 127 < 128
    (127 / 64, 8, 6),     # exactly qmax at f = 6: fits
    (127 / 64 + 1e-6, 8, 5),
    (0.5, 8, 7),
    (0.03, 8, 8),         # would be 12; at most width
    (0.03, 16, 16),
    (0.03, 32, 32),       # (2^31 - 1) / 0.03 ~ 7.2e10 ~ 2^36.06: 36, at most width
    (3.0, 32, 29),        # (2^31 - 1) / 3 ~ 2^29.4
    (200.0, 8, 0),        # saturates even at f = 0
    (0.0, 8, 8),
    (float("nan"), 8, 8),
])
def test_auto_frac_width_hand_cases(absmax, width, want):
    assert auto_frac_width(absmax, width) == want


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-6, 1e4), st.integers(2, 24))
def test_auto_is_the_most_fraction_bits_without_saturation(absmax, width):
    f = auto_frac_width(absmax, width)
    qmax = 2 ** (width - 1) - 1
    assert 0 <= f <= width
    if f > 0:
        assert absmax * 2.0**f <= qmax
    if f < width:
        assert absmax * 2.0 ** (f + 1) > qmax


def test_auto_resolves_from_a_weight_or_a_calibrated_range():
    cfg = IntegerConfig.from_dict({"width": 8, "frac_width": "auto"})
    assert not cfg.is_concrete()
    w = torch.tensor([[0.02, -0.7], [0.3, float("inf")]])  # non-finite values are ignored
    assert cfg.resolve(tensor=w).frac_width == 7  # 0.7 * 2^7 = 89.6 <= 127 < 179.2
    assert cfg.resolve(absmax=3.0).frac_width == 5  # 96 <= 127 < 192
    assert cfg.resolve(tensor=w).to_dict() == {"name": "integer", "width": 8, "frac_width": 7, "floor": False}
    with pytest.raises(ConfigError, match=r"q\.data_in\.frac_width = 'auto' needs calibration data.*calibrate"):
        cfg.resolve(path="q.data_in")
    # a fixed width is returned as it is
    fixed = IntegerConfig.from_dict({"width": 8, "frac_width": 4})
    assert fixed.resolve() is fixed


@pytest.mark.parametrize("d, match", [
    ({"width": 8, "frac_width": 9}, r"frac_width = 9 is out of range; it must be in \[0, width = 8\]"),
    ({"width": 1, "frac_width": 0}, r"width = 1 is out of range; it must be in \[2, 32\]"),
    ({"width": 8, "frac_width": "max"}, r"frac_width"),
    ({"width": 8}, r"missing required config key frac_width"),
])
def test_bad_configs(d, match):
    with pytest.raises(ConfigError, match=match):
        IntegerConfig.from_dict(d)


def test_matches_the_hand_formula_of_the_pass_tests():
    x = torch.randn(50) * 3
    assert torch.equal(fmt(6, 3).quantize(x), hand_q(x, 6, 3))
