"""Pruning masks at their ties: half-way pruned counts, equal magnitudes (lower index pruned first),
the tensor rule's threshold itself, and sparsity 0 in every mode. Expected masks come from a
straightforward Python ranking written here."""

from __future__ import annotations

import pytest
import torch

from passes.transforms.sparsity import activation_keep_mask, num_to_prune, weight_masks


def _oracle_keep(rows: list[list[float]], k: int) -> list[list[bool]]:
    """Per row: prune the k entries of smallest |x|, ties by lower index (sorted by (|x|, index))."""
    out = []
    for row in rows:
        pruned = set(sorted(range(len(row)), key=lambda i: (abs(row[i]), i))[:k])
        out.append([i not in pruned for i in range(len(row))])
    return out


def test_pruned_counts_at_half_way_points_round_to_even():
    # (sparsity, n): s * n is exactly x.5; Python's round goes to the even neighbour
    cases = {(0.5, 1): 0, (0.5, 3): 2, (0.5, 5): 2, (0.5, 7): 4, (0.25, 2): 0, (0.25, 6): 2, (0.25, 10): 2,
             (0.125, 12): 2, (0.125, 20): 2, (0.75, 2): 2, (0.375, 4): 2}
    for (s, n), k in cases.items():
        assert s * n == int(s * n) + 0.5  # really half-way
        assert num_to_prune(s, n) == k == round(s * n), (s, n)
    # the weight masks prune exactly that many
    for (s, n), k in cases.items():
        (m,) = weight_masks([torch.arange(1.0, n + 1)], s)
        assert int((~m).sum()) == k


def test_token_masks_break_ties_by_lower_index_on_arbitrary_floats():
    # values off any fixed-point grid, drawn from three magnitudes: ties everywhere
    g = torch.Generator().manual_seed(0)
    levels = torch.tensor([0.3, -0.7, 1.1])
    x = levels[torch.randint(0, 3, (6, 10), generator=g)]
    for s in (0.1, 0.25, 0.5, 0.6, 0.9):
        k = num_to_prune(s, 10)
        got = activation_keep_mask(x, s)
        assert got.tolist() == _oracle_keep(x.tolist(), k), s
        assert int((~got).sum()) == 6 * k
    row = torch.tensor([[0.3, 0.1, 0.3, 0.1, 0.3]])
    assert activation_keep_mask(row, 0.6).tolist() == [[False, False, True, False, True]]  # k = 3


def test_tensor_granularity_prunes_entries_equal_to_the_threshold():
    # 5 entries, s = 0.5: torch.quantile's linear rank 0.5 * 4 = 2 -> the threshold is exactly 2, whose
    # three copies are all pruned ("keeps |x| > t")
    x = torch.tensor([[1.0, -2.0, 2.0, 3.0, 2.0]])
    assert activation_keep_mask(x, 0.5, granularity="tensor").tolist() == [[False, False, False, True, False]]
    # 8 entries, s = 0.5: rank 3.5 between 1 and 2 -> t = 1.5
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]])
    assert activation_keep_mask(x, 0.5, granularity="tensor").tolist() == [[False] * 4 + [True] * 4]


@pytest.mark.parametrize("granularity", ["token", "tensor"])
@pytest.mark.parametrize("method", ["l1-norm", "random"])
def test_zero_sparsity_keeps_everything_in_every_mode(method, granularity):
    x = torch.tensor([[0.5, -1.0, 0.0, 2.0], [3.0, 0.25, -0.25, 1.0]])
    keep = activation_keep_mask(x, 0.0, method=method, granularity=granularity,
                                generator=torch.Generator().manual_seed(1))
    assert keep.tolist() == [[True] * 4, [True] * 4]
