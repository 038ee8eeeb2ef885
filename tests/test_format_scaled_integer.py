"""The ``scaled_integer`` format: symmetric int with per-tensor / per-channel scales ``amax / qmax``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mase_lite import ConfigError
from passes.formats import format_from_dict
from passes.formats.scaled_integer import ScaledIntegerConfig


def fmt(w=8, granularity="per_tensor", scale=None):
    d = {"name": "scaled_integer", "width": w, "granularity": granularity}
    if scale is not None:
        d["scale"] = scale
    return format_from_dict(d)


def test_hand_computed_per_tensor_with_ties():
    # width 3: qmax = 3; amax 0.75 -> s = 0.25 (exact), codes round half to even
    x = torch.tensor([0.75, 0.125, 0.375, -0.625, 0.1, -0.75])
    assert fmt(3).quantize(x).tolist() == [0.75, 0.0, 0.5, -0.5, 0.0, -0.75]
    assert fmt(3).reference(x).tolist() == [0.75, 0.0, 0.5, -0.5, 0.0, -0.75]


def test_hand_computed_per_channel_and_zero_channel():
    w = torch.tensor([[0.75, 0.3, -0.2], [0.0, 0.0, 0.0], [-0.03, 0.01, 0.02]])
    q = fmt(3, "per_channel").quantize(w, channel_dim=0)
    # row 0: s = 0.25 -> [3, 1.2->1, -0.8->-1] * 0.25; row 1: zeros; row 2: s = 0.01 -> [-3, 1, 2] * 0.01
    want = torch.tensor([[0.75, 0.25, -0.25], [0.0, 0.0, 0.0], [-0.03, 0.01, 0.02]])
    assert torch.allclose(q, want, rtol=0, atol=1e-9)
    assert q[2, 0] == w[2, 0]  # the largest magnitude maps exactly to itself
    # per tensor: one scale 0.25 -> row 2 rounds to zero
    assert fmt(3).quantize(w)[2].tolist() == [0.0, 0.0, 0.0]
    # channel_dim chooses the axis
    qt = fmt(3, "per_channel").quantize(w.t().contiguous(), channel_dim=1)
    assert torch.equal(qt, q.t())
    assert torch.equal(fmt(3).quantize(torch.zeros(4)), torch.zeros(4))


matrices = st.integers(1, 6).flatmap(lambda r: st.lists(
    st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=4, max_size=4), min_size=r, max_size=r))


@settings(max_examples=80, deadline=None)
@given(matrices, st.integers(2, 16), st.sampled_from(["per_tensor", "per_channel"]))
def test_properties_on_grid_idempotent_error_bound_reference(rows, w, gran):
    x = torch.tensor(rows, dtype=torch.float32)
    q = fmt(w, gran)
    out = q.quantize(x, channel_dim=0)
    qmax = 2 ** (w - 1) - 1
    amax = x.abs().amax(dim=1, keepdim=True).double() if gran == "per_channel" else x.abs().max().double()
    s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    codes = out.double() / s
    assert (codes - codes.round()).abs().max() <= 1e-5 * qmax  # on the grid (up to the float32 rounding)
    assert codes.round().abs().max() <= qmax
    assert ((out.double() - x.double()).abs() <= s / 2 * (1 + 1e-6) + 1e-12).all()  # nothing saturates
    assert torch.equal(q.quantize(out, channel_dim=0), out)  # idempotent, exactly
    assert torch.equal(q.reference(x, channel_dim=0), out)
    assert out.dtype == x.dtype and out.shape == x.shape


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=30), st.integers(2, 16),
       st.floats(1e-3, 1.0))
def test_fixed_scale_saturates_and_is_idempotent(values, w, scale):
    cfg = ScaledIntegerConfig(width=w).resolve(absmax=scale * (2 ** (w - 1) - 1))
    q = format_from_dict(cfg.to_dict())
    x = torch.tensor(values)
    out = q.quantize(x)
    s = torch.tensor(cfg.scale, dtype=torch.float32)
    qmax = 2 ** (w - 1) - 1
    assert torch.equal(out, q.reference(x)) and torch.equal(q.quantize(out), out)
    inside = (x / s).abs() <= qmax
    assert ((out - x).abs()[inside] <= s / 2 * (1 + 1e-5)).all()
    assert torch.equal(out[~inside].abs(), (qmax * s).expand_as(out[~inside]).float() if (~inside).any() else out[~inside])
    assert torch.equal(q.saturated(x), ~inside)


def test_calibrated_scale_and_zero_range():
    cfg = ScaledIntegerConfig(width=8)
    r = cfg.resolve(absmax=2.54)
    assert r.scale == float(torch.tensor(2.54 / 127, dtype=torch.float32))
    assert cfg.resolve(absmax=0.0).scale == torch.finfo(torch.float32).tiny
    w = torch.randn(3, 3)
    assert cfg.resolve(tensor=w) is cfg  # weights: the tensor's own scale at run time
    with pytest.raises(ConfigError, match=r"lin\.data_in\.scale is not given and this activation is not calibrated"):
        cfg.resolve(path="lin.data_in")
    with pytest.raises(ConfigError, match=r"granularity = 'per_channel' is not valid for an activation"):
        ScaledIntegerConfig(width=8, granularity="per_channel").resolve(absmax=1.0, path="x")


def test_ste_plain_and_clipped():
    q = fmt(4, scale=0.5)  # range [-3.5, 3.5]
    x = torch.tensor([0.2, -1.3, 9.0, -4.0], requires_grad=True)
    y = q.quantize_ste(x)
    assert y.detach().tolist() == [0.0, -1.5, 3.5, -3.5]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]
    x.grad = None
    q.quantize_ste(x, "clipped").sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
    # dynamic (weight) scale: nothing saturates, the clipped STE passes everything
    w = torch.tensor([0.2, -1.3, 9.0], requires_grad=True)
    fmt(4).quantize_ste(w, "clipped").sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0]


def test_bits_and_overhead():
    assert fmt(6).bits_per_value() == 6
    assert fmt(8).overhead_bits((10, 4), channel_dim=0) == 32
    assert fmt(8, "per_channel").overhead_bits((10, 4), channel_dim=0) == 320
    assert fmt(8, "per_channel").overhead_bits((10,), channel_dim=None) == 32


@pytest.mark.parametrize("d, match", [
    ({"width": 1}, r"w\.width = 1 is out of range; it must be in \[2, 16\]"),
    ({"width": 17}, r"w\.width = 17 is out of range; it must be in \[2, 16\]"),
    ({"width": 8, "granularity": "per_row"}, r"w\.granularity = 'per_row' is not valid.*'per_tensor', 'per_channel'"),
    ({"width": 8, "scale": -1.0}, r"w\.scale = -1\.0 is out of range; it must be a positive finite number"),
    ({"width": 8, "scale": 0.1, "granularity": "per_channel"}, r"w\.granularity must be 'per_tensor'"),
    ({}, r"missing required config key w\.width"),
])
def test_bad_configs(d, match):
    with pytest.raises(ConfigError, match=match):
        ScaledIntegerConfig.from_dict(d, path="w")


def test_fixed_scale_rounds_low_precision_inputs_like_float32():
    """bf16 / fp16 inputs: ``x / scale`` is formed in float32 (in bf16 it would already be rounded to
    half-steps at |code| >= 64, sending ties the wrong way), so the codes equal those of the same
    values in float32, and quantize equals reference."""
    f = fmt(8, scale=0.0123)
    x32 = (torch.rand(4000, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 127 * 0.0123
    for dtype in (torch.bfloat16, torch.float16):
        x = x32.to(dtype)
        want = f.quantize(x.float()).to(dtype)  # same values, rounded in float32, then stored
        assert torch.equal(f.quantize(x), want)
        assert torch.equal(f.reference(x), want)
        codes = torch.round(x.float() / 0.0123)
        assert torch.equal(f.quantize(x).float(), (codes * 0.0123).to(dtype).float())


def test_fixed_scale_stores_no_scale():
    """A recorded (calibrated) scale is part of the config, not stored data: no overhead bits."""
    assert fmt(8, scale=0.01).overhead_bits((10, 4), channel_dim=0) == 0
