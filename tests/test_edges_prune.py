"""The ``prune`` pass where its per-node resolution rules meet: global scope combined with per-node
overrides, overrides of 0 (which must not be read as "unset"), sparsity 0 under global scope, the
random activation streams' offsets, and the reported totals. Expected masks and counts are
computed here from the weights with a plain Python ranking."""

from __future__ import annotations

import torch

from _compression_helpers import linears, tiny_graph
from passes import run_pass


def _weight(g, node) -> torch.Tensor:
    return g.gm.get_submodule(g.meta(node).module_path).weight


def _mask(g, node):
    return getattr(g.gm.get_submodule(g.meta(node).module_path), "weight_mask", None)


def _l1_keep(flat: list[float], k: int) -> list[bool]:
    pruned = set(sorted(range(len(flat)), key=lambda i: (abs(flat[i]), i))[:k])
    return [i not in pruned for i in range(len(flat))]


def test_global_scope_with_a_per_node_override_prunes_that_node_on_its_own():
    g = tiny_graph()
    nodes = linears(g)
    mods = [g.meta(n).module_path for n in nodes]
    assert "classifier" in mods and len(nodes) >= 4
    before = {m: _weight(g, n).detach().clone() for m, n in zip(mods, nodes)}
    cfg = {"weight": {"sparsity": 0.5, "scope": "global"}, "nodes": {"classifier": {"weight": {"sparsity": 0.25}}}}
    g, info = run_pass(g, "prune", cfg)
    # the global group: every other linear, concatenated in graph order, round(0.5 * total) smallest |w|
    group = [m for m in mods if m != "classifier"]
    flat = [v for m in group for v in before[m].reshape(-1).tolist()]
    keep = _l1_keep(flat, round(0.5 * len(flat)))
    start = 0
    for m in group:
        n = before[m].numel()
        want = torch.tensor(keep[start:start + n]).view(before[m].shape)
        start += n
        got = getattr(g.gm.get_submodule(m), "weight_mask")
        assert torch.equal(got, want), m
    # the overridden node: its own 25 %, ranked within itself
    w = before["classifier"]
    want = torch.tensor(_l1_keep(w.reshape(-1).tolist(), round(0.25 * w.numel()))).view(w.shape)
    assert torch.equal(g.gm.get_submodule("classifier").weight_mask, want)
    rows = {r["module"]: r for r in info["pruned"]}
    assert rows["classifier"]["weight_pruned"] == round(0.25 * w.numel())
    assert info["weights_pruned"] == round(0.5 * len(flat)) + round(0.25 * w.numel())
    assert info["weights_targeted"] == len(flat) + w.numel()


def test_global_scope_override_of_zero_spares_the_node():
    g = tiny_graph()
    cfg = {"weight": {"sparsity": 0.5, "scope": "global"}, "nodes": {"classifier": {"weight": {"sparsity": 0.0}}}}
    g, info = run_pass(g, "prune", cfg)
    cls = next(n for n in linears(g) if g.meta(n).module_path == "classifier")
    assert _mask(g, cls) is None
    assert "classifier" not in {r["module"] for r in info["pruned"]}
    others = [n for n in linears(g) if n is not cls]
    total = sum(_weight(g, n).numel() for n in others)
    assert info["weights_targeted"] == total and info["weights_pruned"] == round(0.5 * total)


def test_local_override_of_zero_adds_no_mask_and_weights_targeted_counts_only_masked_nodes():
    g = tiny_graph()
    cfg = {"weight": {"sparsity": 0.5}, "activation": {"sparsity": 0.5},
           "nodes": {"classifier": {"weight": {"sparsity": 0.0}}}}
    g, info = run_pass(g, "prune", cfg)
    rows = {r["module"]: r for r in info["pruned"]}
    assert rows["classifier"]["weight_mask"] is False and rows["classifier"]["weight_pruned"] == 0
    assert rows["classifier"]["activation"] == {"sparsity": 0.5, "method": "l1-norm", "granularity": "token"}
    cls = next(n for n in linears(g) if g.meta(n).module_path == "classifier")
    assert _mask(g, cls) is None
    masked = [n for n in linears(g) if n is not cls]
    assert info["weights_targeted"] == sum(_weight(g, n).numel() for n in masked)
    assert info["weights_pruned"] == sum(round(0.5 * _weight(g, n).numel()) for n in masked)


def test_global_scope_at_sparsity_zero_adds_no_masks():
    g = tiny_graph()
    g, info = run_pass(g, "prune", {"weight": {"sparsity": 0.0, "scope": "global"}, "activation": {"sparsity": 0.25}})
    assert all(_mask(g, n) is None for n in linears(g))
    assert all(r["weight_mask"] is False for r in info["pruned"]) and len(info["pruned"]) == len(linears(g))
    assert info["weights_targeted"] == 0 and info["weights_pruned"] == 0 and info["weight_sparsity"] == 0.0


def test_a_seed_override_of_zero_is_used():
    g = tiny_graph()
    before = {g.meta(n).module_path: _weight(g, n).detach().clone() for n in linears(g)}
    cfg = {"weight": {"sparsity": 0.5, "method": "random", "seed": 3},
           "nodes": {"classifier": {"weight": {"seed": 0}}}}
    g, _ = run_pass(g, "prune", cfg)
    for m, seed in (("classifier", 0), ("bert.pooler.dense", 3)):
        n = before[m].numel()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # the documented draw
        want = torch.ones(n, dtype=torch.bool)
        want[order[:round(0.5 * n)]] = False
        assert torch.equal(g.gm.get_submodule(m).weight_mask.reshape(-1), want), m


def test_random_activation_streams_are_offset_by_the_node_position():
    g = tiny_graph()
    g, info = run_pass(g, "prune", {"activation": {"sparsity": 0.5, "method": "random", "seed": 7}})
    nodes = linears(g)
    assert [n.kwargs["act_seed"] for n in nodes] == [(7, i) for i in range(len(nodes))]
    assert all(r["activation"]["seed"] == 7 for r in info["pruned"])
