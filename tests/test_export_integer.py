"""Integer inference on the reference path (passes.export.integer): quantised linears from integer
codes with exact accumulation, bit-identical to the fake-quant simulation under the stated condition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _compression_helpers import LAB2_PRUNE, LINEAR_8_4, tiny_graph, tiny_inputs
from passes import run_pass
from passes.export.integer import exact_condition, fp32_error_bound, integer_graph, integer_linear
from passes.transforms.ops import compressed_linear

LAB2 = dict(data_in=(8, 4, False), weight_q=(8, 4, False), bias_q=(8, 4, False))


def test_exact_condition_by_hand():
    # Lab 2: M = K * 2^7 * 2^7 + 2^7 * 2^4 (bias aligned to 8 fraction bits)
    assert exact_condition(1023, **LAB2) == {"M": 1023 * 16384 + 2048, "exact": True}
    assert exact_condition(1024, **LAB2) == {"M": 1024 * 16384 + 2048, "exact": False}
    # 4-bit inputs and weights, no bias: K * 2^3 * 2^3 <= 2^24 for K <= 2^18
    assert exact_condition(1 << 18, (4, 2, False), (4, 2, False))["exact"]
    # a bias with more fraction bits than the product moves the common scale: F = 10
    c = exact_condition(10, (8, 4, False), (8, 1, False), (12, 10, False))
    assert c["M"] == 10 * 128 * 128 * 2 ** 5 + 2048


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 96), n=st.integers(1, 8), rows=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
       prune=st.sampled_from([None, 0.25, 0.5]), f=st.integers(0, 6))
def test_integer_linear_is_bit_identical_to_the_simulation(k, n, rows, seed, prune, f):
    g = torch.Generator().manual_seed(seed)
    # values spread over (and beyond: saturation) the 8-bit grid, many ties after rounding
    x = torch.randn(rows, k, generator=g) * 2.0 ** (7 - f)
    w = torch.randn(n, k, generator=g) * 2.0 ** (6 - f)
    b = torch.randn(n, generator=g) * 2.0 ** (6 - f)
    mask = torch.rand(n, k, generator=g) > 0.5
    spec = (8, f, False)
    kw = dict(data_in=spec, weight_q=spec, bias_q=spec, act_prune=None if prune is None else (prune, "l1-norm", "token"))
    assert exact_condition(k, spec, spec, spec)["exact"]
    sim = compressed_linear(x, w, b, mask, **kw)
    out = integer_linear(x, w, b, mask, **kw)
    assert out.dtype == sim.dtype and torch.equal(out, sim)
    # and both equal the exact value computed in float64 from the codes
    xq = torch.clamp(torch.round(x * 2.0 ** f), -128, 127)
    if prune is not None:  # keep the largest |code|s, ties: higher index kept
        from passes.transforms.sparsity import activation_keep_mask_reference

        xq = xq * activation_keep_mask_reference(xq, prune, "token")
    wq = torch.clamp(torch.round(w * 2.0 ** f), -128, 127) * mask
    bq = torch.clamp(torch.round(b * 2.0 ** f), -128, 127)
    exact = (xq.double() @ wq.double().t() * 2.0 ** -(2 * f) + bq.double() * 2.0 ** -f).float()
    assert torch.equal(out, exact)


def test_large_k_breaks_fp32_exactness_and_the_bound_holds():
    g = torch.Generator().manual_seed(0)
    k = 8192
    spec = (8, 0, False)
    x = torch.randint(100, 128, (64, k), generator=g).float()  # same signs: partial sums pass 2^24
    w = torch.randint(100, 128, (16, k), generator=g).float()
    kw = dict(data_in=spec, weight_q=spec)
    assert not exact_condition(k, spec, spec)["exact"]
    sim = compressed_linear(x, w, None, None, **kw)
    out = integer_linear(x, w, None, None, **kw)
    exact = (x.double() @ w.double().t())
    # the integer path is exact up to its one final rounding to float32
    assert torch.equal(out, exact.float())
    diff = (sim.double() - out.double()).abs()
    assert diff.max() > 0  # float32 accumulation really rounds here
    bound = fp32_error_bound(x, w, None, None, **kw)
    assert torch.all(diff <= bound)


def test_integer_graph_of_lab2_is_bit_identical():
    g = tiny_graph()
    with torch.no_grad():
        for name, p in g.gm.named_parameters():
            if "LayerNorm" not in name and ("encoder" in name or "classifier" in name or "pooler" in name):
                p.mul_(12.0)
    run_pass(g, "quantize", LINEAR_8_4)
    run_pass(g, "prune", LAB2_PRUNE)
    g.eval()
    gi, rows = integer_graph(g)
    assert len(rows) == 8 and all(r["exact"] for r in rows)
    assert {r["K_eff"] for r in rows} == {16, 32}  # 32 / 64 inputs, half pruned per token
    x = tiny_inputs()
    with torch.no_grad():
        ref, out = g(**x).logits, gi(**x).logits
    assert torch.equal(out, ref) and ref.abs().max() > 0


def test_integer_linear_needs_integer_formats():
    from mase_lite import MaseError

    with pytest.raises(MaseError, match="needs both data_in and weight_q"):
        integer_linear(torch.ones(1, 2), torch.ones(1, 2), weight_q=(8, 4, False))
