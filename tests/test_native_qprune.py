"""The native quantise-then-prune operator gives the torch formulation's results bit for bit."""

import logging
import os
import shutil
import threading
import time
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from passes.transforms import native, ops
from passes.transforms.ops import quantize_prune_input, quantize_prune_input_reference

L1_TOKEN = (0.5, "l1-norm", "token")

#: Tests of the operator itself need a C++ compiler (the fallback tests below do not).
requires_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                       reason="no C++ compiler: the native operator cannot be built")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float32 or bfloat16 tensor (so -0.0 != 0.0 and NaNs compare)."""
    return t.contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16)


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal values, NaNs in the same places (the torch formulation may give 0.0 for -0.0)."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def both_paths(x, spec, prune, ste="plain"):
    """[(output, input gradient)] with the native operator, then with the torch formulation; checks
    that evaluation (no autograd) gives the same output and that the operator really ran."""
    results = []
    for ctx in (mock.patch.object(native, "quantize_prune_rows", wraps=native.quantize_prune_rows), native.disabled()):
        with ctx as spy:
            leaf = x.detach().clone().requires_grad_(True)
            out = quantize_prune_input(leaf, spec, prune, ste=ste)
            out.backward(torch.arange(out.numel(), dtype=out.dtype).view(out.shape) % 7 - 3)
            with torch.inference_mode():
                assert torch.equal(bits(quantize_prune_input(x, spec, prune, ste=ste)), bits(out.detach()))
            if spy is not None:
                assert spy.call_count == 2, "the native operator was not used"
            results.append((out.detach(), leaf.grad))
    return results


@requires_compiler
def test_operator_builds_and_covers_lab2_inputs():
    assert native.available(), "the native operator did not build (is a C++ compiler and ninja installed?)"
    x = torch.randn(4, 128)
    assert native.supports(x, 129, 64, 128)  # 8-bit grid, 50 % of 128
    assert native.supports(x, (1 << 15) + 1, 64, 128)  # 16-bit grid
    assert not native.supports(x, (1 << 16) + 1, 64, 128)  # wider: torch formulation
    assert not native.supports(x.double(), 129, 64, 128)
    assert not native.supports(x, 129, 0, 128) and not native.supports(x, 129, 128, 128)
    with native.disabled():
        assert not native.available()
    assert native.available()


grids = st.sampled_from([(2, 0), (3, 1), (4, 2), (8, 4), (8, 7), (9, 4), (11, 3), (16, 8)])


@requires_compiler
@settings(max_examples=80, deadline=None)
@given(st.integers(1, 40), st.integers(2, 150), st.floats(0.01, 0.99), grids, st.booleans(),
       st.sampled_from(["plain", "clipped"]), st.floats(0.01, 20), st.integers(0, 9), st.booleans())
def test_native_equals_torch_formulation_bit_for_bit(rows, d, s, grid, floor, ste, scale, seed, specials):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g) * scale
    x[0, : d // 2] = 0.0  # exact zeros and ties
    x[-1, ::3] = -0.01  # negative values rounding to -0.0
    if specials:
        x[-1, -1] = float("inf")
        x[0, -1] = -float("inf")
    spec, prune = (*grid, floor), (s, "l1-norm", "token")
    if not 0 < round(s * d) < d:
        return
    (out_n, grad_n), (out_t, grad_t) = both_paths(x, spec, prune, ste)
    same(out_n, out_t)
    same(grad_n, grad_t)
    # and the straightforward formulation's bits, signed zeros included, NaNs too (sorted last)
    assert torch.equal(bits(out_n), bits(quantize_prune_input_reference(x, spec, prune)))
    if specials:
        x[rows // 2, 0] = float("nan")
        out = quantize_prune_input(x, spec, prune)
        assert torch.equal(bits(out), bits(quantize_prune_input_reference(x, spec, prune)))


@requires_compiler
@pytest.mark.parametrize("w, f", [(4, 2), (8, 4), (8, 0), (16, 8)])
def test_float32_ties_round_half_to_even(w, f):
    # every entry an exact tie on the grid, x * 2^f = k + 0.5, for even and odd, negative and
    # positive k: the operator's rounding (nearbyint, half to even) decides every code
    ks = [k for k in range(-9, 9) if -(2 ** (w - 1)) <= k and k + 1 <= 2 ** (w - 1) - 1]
    d = len(ks)
    x = torch.tensor([[(k + 0.5) * 2.0 ** -f for k in ks], [(k + 0.5) * 2.0 ** -f for k in reversed(ks)]])
    assert x.dtype == torch.float32
    prune = (1.5 / d, "l1-norm", "token")  # round(1.5) = 2 entries pruned per row
    codes = [[round(k + 0.5) for k in row] for row in (ks, ks[::-1])]  # Python round: half to even
    want = []
    for row in codes:
        pruned = set(sorted(range(d), key=lambda i: (abs(row[i]), i))[:2])  # smallest |code|, lower index first
        want.append([0.0 if i in pruned else c * 2.0 ** -f for i, c in enumerate(row)])
    (out_n, _), (out_t, _) = both_paths(x, (w, f, False), prune)  # checks the operator ran
    assert out_n.tolist() == want
    assert out_t.tolist() == want
    assert torch.equal(out_n, quantize_prune_input_reference(x, (w, f, False), prune))


@requires_compiler
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(2, 100), st.floats(0.01, 0.99), st.sampled_from([(2, 0), (4, 2), (8, 4), (8, 7)]),
       st.booleans(), st.sampled_from(["plain", "clipped"]), st.floats(0.01, 20), st.integers(0, 9))
def test_bfloat16_inputs_as_autocast_gives_them(rows, d, s, grid, floor, ste, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, d, generator=g) * scale).to(torch.bfloat16)
    x[0, : d // 2] = 0.0
    spec, prune = (*grid, floor), (s, "l1-norm", "token")
    if not 0 < round(s * d) < d:
        return
    (out_n, grad_n), (out_t, grad_t) = both_paths(x, spec, prune, ste)
    assert out_n.dtype == torch.bfloat16 and grad_n.dtype == torch.bfloat16
    same(out_n, out_t)
    same(grad_n, grad_t)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the autocast path of a compressed linear
        w = torch.randn(8, d, generator=g)
        y = ops.compressed_linear(x, w, data_in=spec, weight_q=(8, 4, False), act_prune=prune)
        with native.disabled():
            same(y, ops.compressed_linear(x, w, data_in=spec, weight_q=(8, 4, False), act_prune=prune))


def test_bfloat16_wider_grids_use_the_torch_formulation():
    x = torch.randn(4, 64).to(torch.bfloat16)
    assert not native.supports(x, (1 << 8) + 1, 32, 64)  # 9 bits: qmax 255 still exact, but not covered
    assert not native.supports(x.half(), 129, 32, 64)


@requires_compiler
def test_nans_are_pruned_last_as_torch_sort_orders_them():
    # codes 1, NaN, NaN, 2 with k=3: both finite codes and the first NaN are pruned
    x = torch.tensor([[0.0625, float("nan"), float("nan"), 0.125]], requires_grad=True)
    prune = (0.75, "l1-norm", "token")
    out = quantize_prune_input(x, (8, 4, False), prune)
    out.sum().backward()
    assert x.grad.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    assert torch.equal(bits(out.detach()), bits(quantize_prune_input_reference(x.detach(), (8, 4, False), prune)))


@requires_compiler
def test_non_contiguous_batched_input_and_long_rows():
    x = torch.randn(6, 40, 96).transpose(0, 1)[:, ::2]
    (out_n, grad_n), (out_t, grad_t) = both_paths(x, (8, 4, False), L1_TOKEN)
    assert out_n.shape == x.shape
    same(out_n, out_t)
    same(grad_n, grad_t)
    x = torch.randn(3, 1000) * 0.1  # many ties at small levels, several 64-entry blocks
    (out_n, _), (out_t, _) = both_paths(x, (8, 4, False), (0.3, "l1-norm", "token"))
    same(out_n, out_t)


@requires_compiler
def test_result_does_not_depend_on_thread_count():
    x = torch.randn(300, 128, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(quantize_prune_input(x, (8, 4, False), L1_TOKEN))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(bits(outs[0]), bits(outs[1]))


@requires_compiler
def test_compressed_linear_uses_it_in_training_and_evaluation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 32, generator=g)
    w = torch.randn(16, 32, generator=g, requires_grad=True)
    kw = dict(data_in=(8, 4, False), weight_q=(8, 4, False), act_prune=L1_TOKEN)
    grads = []
    for ctx in (mock.patch.object(native, "quantize_prune_rows", wraps=native.quantize_prune_rows), native.disabled()):
        with ctx as spy:
            w.grad = None
            ops.compressed_linear(x, w, **kw).square().sum().backward()
            grads.append(w.grad.clone())
            with torch.no_grad():
                y = ops.compressed_linear(x, w, **kw)
            if spy is not None:
                assert spy.call_count == 2
    assert torch.equal(grads[0], grads[1])
    assert torch.equal(y, ops.compressed_linear_reference(x, w.detach(), **kw))


def test_turned_off_by_environment(monkeypatch):
    monkeypatch.setenv("MASE_LITE_NATIVE", "0")
    assert not native.available()
    with mock.patch.object(native, "quantize_prune_rows", side_effect=AssertionError("native operator used")):
        out = quantize_prune_input(torch.randn(5, 64), (8, 4, False), L1_TOKEN)
    assert bool(((out == 0).sum(-1) >= 32).all())


def test_a_failed_build_falls_back_to_torch_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(native, "_MODULE", None)
    monkeypatch.setattr(native, "_FAILED", False)
    x = torch.randn(5, 64)
    with native.disabled():
        expected = quantize_prune_input(x, (8, 4, False), L1_TOKEN)
    failing = mock.Mock(side_effect=RuntimeError("Ninja is required to load C++ extensions"))
    with mock.patch("torch.utils.cpp_extension.load_inline", failing), caplog.at_level(logging.WARNING):
        assert torch.equal(quantize_prune_input(x, (8, 4, False), L1_TOKEN), expected)
        assert torch.equal(quantize_prune_input(x, (8, 4, False), L1_TOKEN), expected)
    assert failing.call_count == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "passes.transforms.native"]
    assert len(warnings) == 1 and "RuntimeError: Ninja is required" in warnings[0] and "torch formulation" in warnings[0]
    assert not native.available()


@requires_compiler
def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_load(monkeypatch, caplog):
    assert native.available()  # built (or loaded) once into the session's extensions directory
    monkeypatch.setattr(native, "_MODULE", None)
    monkeypatch.setattr(native, "_FAILED", False)
    names = []
    real = native.build_directory
    monkeypatch.setattr(native, "build_directory", lambda name: names.append(name) or real(name))
    native._load()  # records the directory's name
    lock = real(names[0]) / "lock"
    lock.touch()
    monkeypatch.setattr(native, "_MODULE", None)
    monkeypatch.setattr(native, "STALE_LOCK_S", 60)
    os.utime(lock, (time.time() - 58, time.time() - 58))  # not stale yet: it turns stale while the load waits
    loader = threading.Thread(target=native._load, daemon=True)
    with caplog.at_level(logging.WARNING):
        loader.start()
        loader.join(timeout=300)
    assert not loader.is_alive(), "the load waited on the stale lock"
    assert native._MODULE is not None and not lock.exists()
    assert any("build lock" in r.getMessage() for r in caplog.records)
