"""Pruning masks: exact counts, tie-breaking, fast == reference, batch independence, gradients."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mase_lite.errors import ConfigError
from passes.transforms.ops import (
    compressed_linear,
    compressed_linear_reference,
    quantize_prune_input,
    quantize_prune_input_reference,
)
from passes.transforms.sparsity import (
    activation_generator,
    activation_keep_mask,
    activation_keep_mask_reference,
    activation_seed,
    check_sparsity,
    num_to_prune,
    quantile_linear,
    weight_masks,
    weight_masks_reference,
)

L1_TOKEN = (0.5, "l1-norm", "token")


def test_num_to_prune_rounds_half_to_even():
    assert [num_to_prune(0.5, n) for n in (1, 3, 5, 7, 128)] == [0, 2, 2, 4, 64]
    assert num_to_prune(0.0, 10) == 0 and num_to_prune(1.0, 10) == 10
    assert num_to_prune(0.3, 10) == 3  # 0.3 * 10 = 3.0000000000000004


def test_weight_mask_l1_local_ties_by_flat_index():
    w = torch.tensor([[0.5, -0.1, 0.1], [0.1, -0.3, 0.0]])
    keep = weight_masks([w], 0.5, "l1-norm", "local")[0]
    # |w| sorted: 0.0 (idx 5), 0.1 (idx 1, 2, 3: ties, lower index first), 0.3, 0.5; 3 pruned
    assert keep.tolist() == [[True, False, False], [True, True, False]]
    assert weight_masks([w], 0.0)[0].all() and not weight_masks([w], 1.0)[0].any()


def test_weight_mask_global_prunes_over_all_tensors():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([[0.5, 5.0], [0.25, 6.0]])
    ka, kb = weight_masks([a, b], 0.5, "l1-norm", "global")
    assert ka.tolist() == [False, False, True, True]  # pruned 0.25, 0.5, 1, 2
    assert kb.tolist() == [[False, True], [False, True]]
    la, lb = weight_masks([a, b], 0.5, "l1-norm", "local")
    assert int((~la).sum()) == 2 and int((~lb).sum()) == 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3),
       st.floats(0, 1), st.sampled_from(["local", "global"]), st.integers(0, 3))
def test_weight_masks_exact_count_and_reference(shapes, s, scope, seed):
    g = torch.Generator().manual_seed(seed)
    # few distinct values: many ties
    ws = [torch.randint(-3, 4, shape, generator=g).float() / 2 for shape in shapes]
    masks = weight_masks(ws, s, "l1-norm", scope)
    assert [m.tolist() for m in masks] == [m.tolist() for m in weight_masks_reference(ws, s, scope)]
    groups = [[m] for m in masks] if scope == "local" else [masks]
    for group in groups:
        n = sum(m.numel() for m in group)
        assert sum(int((~m).sum()) for m in group) == num_to_prune(s, n)


def test_random_weight_masks_exact_count_and_seeded():
    w = torch.randn(10, 10)
    a = weight_masks([w], 0.3, "random", "local", seed=1)[0]
    assert int((~a).sum()) == 30
    assert torch.equal(a, weight_masks([w], 0.3, "random", "local", seed=1)[0])
    assert not torch.equal(a, weight_masks([w], 0.3, "random", "local", seed=2)[0])


def test_activation_token_ties_by_index_on_a_grid():
    # quantised (8, 4) input: many ties; half of each vector pruned, lower index first among ties
    x = torch.tensor([[0.0625, -0.0625, 0.125, 0.0625, -0.5, 0.0625],
                      [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    out = quantize_prune_input(x, (8, 4, False), L1_TOKEN)
    assert out.tolist() == [[0.0, 0.0, 0.125, 0.0, -0.5, 0.0625],
                            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    assert torch.equal(out, quantize_prune_input_reference(x, (8, 4, False), L1_TOKEN))


grids = st.sampled_from([(2, 0), (3, 1), (4, 2), (8, 4), (8, 7), (11, 3), (15, 4), (16, 8)])


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5), st.integers(1, 70), st.floats(0, 1), grids, st.floats(0.01, 20), st.integers(0, 9))
def test_fast_activation_path_equals_reference(rows, d, s, grid, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, d, generator=g) * scale
    x[0, 0, : d // 2] = 0.0  # exact zeros and ties
    spec = (*grid, False)
    for gran in ("token", "tensor"):
        prune = (s, "l1-norm", gran)
        fast = quantize_prune_input(x, spec, prune)
        assert torch.equal(fast, quantize_prune_input_reference(x, spec, prune))
        assert torch.equal(quantize_prune_input(x, None, prune), quantize_prune_input_reference(x, None, prune))
    # exactly round(s*d) entries zeroed per vector (already-zero entries may be among them)
    pruned = (quantize_prune_input(x, spec, (s, "l1-norm", "token")) == 0).sum(-1)
    assert bool((pruned >= num_to_prune(s, d)).all())
    mask = activation_keep_mask(x, s, "l1-norm", "token")
    assert bool(((~mask).sum(-1) == num_to_prune(s, d)).all())


def test_activation_mask_does_not_depend_on_batch_mates():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 128, generator=g)
    batched = quantize_prune_input(x, (8, 4, False), L1_TOKEN)
    for i in (0, 5):
        alone = quantize_prune_input(x[i : i + 1], (8, 4, False), L1_TOKEN)
        assert torch.equal(alone, batched[i : i + 1])
    # MASE's per-tensor threshold does depend on them: next to a large sample, a small one is wiped out
    pair = torch.stack([x[0], 4 * x[1]])
    tensor_rule = (0.5, "l1-norm", "tensor")
    alone = quantize_prune_input(pair[:1], (8, 4, False), tensor_rule)
    together = quantize_prune_input(pair, (8, 4, False), tensor_rule)[:1]
    assert int((alone != 0).sum()) > 2 * int((together != 0).sum())


def test_tensor_granularity_is_mase_quantile_rule():
    x = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-4.0, 0.25, 1.0, 2.0]])
    keep = activation_keep_mask(x, 0.5, "l1-norm", "tensor")
    thr = torch.quantile(x.abs().flatten(), 0.5)  # 1.5
    assert torch.equal(keep, x.abs() > thr)
    assert keep.tolist() == [[True, False, True, False], [True, False, False, True]]
    assert torch.equal(activation_keep_mask_reference(x, 0.5, "tensor"), keep)


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_quantile_linear_equals_torch_quantile(q):
    flat = torch.randn(1001).abs()
    assert torch.equal(quantile_linear(flat, q), torch.quantile(flat, q))


def test_random_activation_pruning_counts():
    x = torch.randn(4, 10, 64)
    out = quantize_prune_input(x, None, (0.25, "random", "token"))
    assert bool(((out == 0).sum(-1) == 16).all())
    out = quantize_prune_input(x, (8, 4, False), (0.25, "random", "token"))
    assert bool(((out == 0).sum(-1) >= 16).all())


@pytest.mark.parametrize("spec", [None, (8, 4, False)])
@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_seeded_random_activation_masks(spec, granularity):
    x = torch.randn(4, 10, 64, generator=torch.Generator().manual_seed(0)) + 5.0  # no zeros: zeros = pruned
    prune = (0.25, "random", granularity)

    def sequence(seed, offset, n=3):
        calls = torch.zeros((), dtype=torch.int64)
        torch.manual_seed(123)  # the global RNG must not matter
        outs = [quantize_prune_input(x, spec, prune, act_seed=(seed, offset), act_calls=calls) for _ in range(n)]
        torch.manual_seed(456)
        refs = [quantize_prune_input_reference(x, spec, prune, act_seed=(seed, offset), act_calls=torch.tensor(i))
                for i in range(n)]
        assert int(calls) == n  # each call advanced the count
        for out, ref in zip(outs, refs):
            assert torch.equal(out, ref)  # the same draws, ranked by the straightforward rule
        return [out != 0 for out in outs]

    a = sequence(7, 0)
    assert all(torch.equal(m, n) for m, n in zip(a, sequence(7, 0)))  # reproducible for a seed
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])  # a new mask on every call
    assert not torch.equal(a[0], sequence(8, 0)[0])  # another seed
    assert not torch.equal(a[0], sequence(7, 1)[0])  # another node
    for m in a:
        if granularity == "token":  # exactly round(s * d) per vector
            assert bool(((~m).sum(-1) == num_to_prune(0.25, 64)).all())
        else:  # each entry with probability s
            assert abs(float((~m).float().mean()) - 0.25) < 0.03
    # without a counter, every call draws the stream's first mask
    first = quantize_prune_input(x, spec, prune, act_seed=(7, 0))
    assert torch.equal(first != 0, a[0]) and torch.equal(quantize_prune_input(x, spec, prune, act_seed=(7, 0)), first)
    # and with autograd: the same mask, the gradient masked with it
    leaf = x.clone().requires_grad_(True)
    out = quantize_prune_input(leaf, spec, prune, act_seed=(7, 0))
    out.sum().backward()
    assert torch.equal(out.detach() != 0, a[0]) and torch.equal(leaf.grad, a[0].float())


def test_activation_seed_is_documented_hash():
    import hashlib

    digest = hashlib.blake2b(b"7:3:2", digest_size=8).digest()
    assert activation_seed(7, 3, 2) == int.from_bytes(digest, "little") & ((1 << 63) - 1)
    assert len({activation_seed(s, o, c) for s in range(3) for o in range(3) for c in range(3)}) == 27
    g = activation_generator(7, 3, 2)
    same = torch.Generator().manual_seed(activation_seed(7, 3, 2))
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=same))


def test_gradient_is_masked_straight_through():
    x = torch.tensor([[0.3, -2.0, 0.01, 9.0]], requires_grad=True)
    out = quantize_prune_input(x, (8, 4, False), L1_TOKEN)
    out.backward(torch.ones_like(out))
    kept = (out != 0).float()
    assert torch.equal(x.grad, kept)  # plain STE: 9.0 saturates but keeps its gradient
    x.grad = None
    quantize_prune_input(x, (8, 4, False), L1_TOKEN, ste="clipped").sum().backward()
    # codes 5, -32, 0, 127 (saturated from 144): the two smallest magnitudes are pruned
    assert kept.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert x.grad.tolist() == [[0.0, 1.0, 0.0, 0.0]]  # clipped STE: saturated -> no gradient


def test_compressed_linear_matches_reference_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 32, generator=g, requires_grad=True)
    w = torch.randn(16, 32, generator=g, requires_grad=True)
    b = torch.randn(16, generator=g, requires_grad=True)
    mask = weight_masks([w], 0.5)[0]
    kw = dict(data_in=(8, 4, False), weight_q=(6, 3, False), bias_q=(8, 4, False), data_out=(10, 5, False),
              act_prune=L1_TOKEN)
    y = compressed_linear(x, w, b, mask, **kw)
    assert torch.equal(y, compressed_linear_reference(x, w, b, mask, **kw))
    with torch.no_grad():
        assert torch.equal(compressed_linear(x, w, b, mask, **kw), y)  # cached / scratch path
    y.sum().backward()
    # straightforward STE: d/dx = keep * (W_eff^T 1), d/dw = mask * (sum_rows x_eff), d/db = rows
    xq = quantize_prune_input_reference(x.detach(), (8, 4, False), L1_TOKEN)
    from passes.transforms.quantizers import integer_quantize_reference as qr
    w_eff = qr(w.detach(), 6, 3) * mask
    keep = (xq != 0).float()
    assert torch.allclose(x.grad, keep * (torch.ones(3, 5, 16) @ w_eff))
    assert torch.allclose(w.grad, mask * (torch.ones(16, 15) @ xq.reshape(15, 32)))
    assert torch.equal(b.grad, torch.full((16,), 15.0))
    assert torch.equal(compressed_linear(x, w, b), torch.nn.functional.linear(x, w, b))


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_bad_sparsity(bad):
    with pytest.raises(ConfigError, match="sparsity"):
        check_sparsity(bad)


def test_frozen_input_with_trainable_weight_gets_right_weight_gradient():
    # the quantised input is saved by the matmul for the weight gradient: it must not be a buffer
    # that later calls overwrite
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    w = torch.randn(8, 16, generator=g, requires_grad=True)
    kw = dict(data_in=(8, 4, False), act_prune=L1_TOKEN)
    y1 = compressed_linear(x1, w, **kw)
    compressed_linear(x2, w, **kw)  # a second call before the backward of the first
    y1.sum().backward()
    xq1 = quantize_prune_input_reference(x1, (8, 4, False), L1_TOKEN)
    assert torch.equal(w.grad, torch.ones(8, 4) @ xq1)
