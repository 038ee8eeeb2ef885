"""The ``prune`` pass: exact sparsity, masks enforced through AdamW and persisted, activations, overrides, errors."""

from __future__ import annotations

import pytest
import torch

from _compression_helpers import (
    LAB2_PRUNE,
    LINEAR_8_4,
    assert_unchanged,
    linears,
    reference_graph,
    state,
    tiny_graph,
)
from mase_lite import ConfigError, MaseGraph
from passes import run_pass
from passes.transforms import ops
from passes.transforms.compressed_nodes import linear_mask_node
from passes.transforms.sparsity import num_to_prune


def weight_and_mask(g, node):
    owner = g.gm.get_submodule(g.meta(node).module_path)
    return owner.weight, getattr(owner, "weight_mask", None)


def test_local_weight_sparsity_is_exact(graph):
    before = {n.name: weight_and_mask(graph, n)[0].detach().clone() for n in linears(graph)}
    g, info = run_pass(graph, "prune", {"weight": {"sparsity": 0.3}})
    for node in linears(g):
        w, m = weight_and_mask(g, node)
        assert m.dtype == torch.bool and int((~m).sum()) == num_to_prune(0.3, w.numel())
        assert bool((w[~m] == 0).all())  # raw weights zeroed at prune time
        assert torch.equal(w[m], before[node.name][m])
        assert float(before[node.name][~m].abs().max()) <= float(before[node.name][m].abs().min())
    assert info["weights_pruned"] == sum(num_to_prune(0.3, weight_and_mask(g, n)[0].numel()) for n in linears(g))
    assert all(r["activation"] is None for r in info["pruned"])


def test_global_scope_prunes_exact_total(graph):
    before = {n.name: weight_and_mask(graph, n)[0].detach().clone() for n in linears(graph)}
    g, info = run_pass(graph, "prune", {"weight": {"sparsity": 0.6, "scope": "global"}})
    total = sum(w.numel() for w in before.values())
    assert info["weights_pruned"] == num_to_prune(0.6, total) and info["weights_targeted"] == total
    # one threshold: every pruned |w| <= every kept |w| across layers
    pruned = torch.cat([before[n.name][~weight_and_mask(g, n)[1]].abs() for n in linears(g)])
    kept = torch.cat([before[n.name][weight_and_mask(g, n)[1]].abs() for n in linears(g)])
    assert float(pruned.max()) <= float(kept.min())
    per_layer = {r["node"]: r["weight_sparsity"] for r in info["pruned"]}
    assert len(set(per_layer.values())) > 1


def test_masks_survive_adamw_and_save_load(graph, inputs, tmp_path):
    g, _ = run_pass(graph, "quantize", LINEAR_8_4)
    g, _ = run_pass(g, "prune", LAB2_PRUNE)
    masks = {n.name: weight_and_mask(g, n)[1].clone() for n in linears(g)}
    g.train()
    opt = torch.optim.AdamW(g.parameters(), lr=5e-2, weight_decay=0.1)
    labels = torch.tensor([0, 1, 1])
    for _ in range(4):
        g(**inputs, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    for n in linears(g):
        w, m = weight_and_mask(g, n)
        assert torch.equal(m, masks[n.name])
        assert bool((w[~m] == 0).all()), "raw pruned weights stay exactly zero under AdamW"
        eff = ops.quantize_weight(w.detach(), m, n.kwargs["weight_q"])
        assert bool((eff[~m] == 0).all())
    g.eval()
    with torch.no_grad():
        out = g(**inputs).logits
        assert torch.equal(out, reference_graph(g).eval()(**inputs).logits)
    g.save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g")
    assert [h[0] for h in loaded.history] == ["quantize", "prune"]
    for n in linears(loaded):
        assert torch.equal(weight_and_mask(loaded, n)[1], masks[n.name])
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, out)


def test_activation_pruning_in_graph(graph, inputs):
    g, info = run_pass(graph, "prune", {"activation": {"sparsity": 0.5}})
    assert all(linear_mask_node(n) is None for n in linears(g))  # no weight pruning asked
    assert all(n.kwargs["act_prune"] == (0.5, "l1-norm", "token") for n in linears(g))
    g.eval()
    with torch.no_grad():
        out = g(**inputs).logits
        assert torch.equal(out, reference_graph(g).eval()(**inputs).logits)
        # a sample's logits do not depend on its batch-mates (per-token masks)
        alone = g(**{k: v[1:2] for k, v in inputs.items()}).logits
        assert torch.allclose(alone, out[1:2], atol=1e-6)
    gt, _ = run_pass(graph.copy(), "prune", {"activation": {"sparsity": 0.5, "granularity": "tensor"}})
    gt.eval()
    with torch.no_grad():
        assert torch.equal(gt(**inputs).logits, reference_graph(gt).eval()(**inputs).logits)


def test_overrides_by_name_and_regex(graph):
    cfg = {**LAB2_PRUNE, "nodes": {"classifier": {"weight": {"sparsity": 0.0}, "activation": {"sparsity": 0.0}},
                                   "linear_5": {"weight": {"sparsity": 0.9}}}}
    g, info = run_pass(graph.copy(), "prune", cfg)
    rows = {r["module"]: r for r in info["pruned"]}
    assert "classifier" not in rows
    assert rows["bert.encoder.layer.0.output.dense"]["weight_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert rows["bert.encoder.layer.0.intermediate.dense"]["weight_sparsity"] == 0.5
    cfg = {**LAB2_PRUNE, "by": "regex_name", "nodes": {r".*attention\.self": {"activation": {"granularity": "tensor"}}}}
    g, info = run_pass(graph.copy(), "prune", cfg)
    gran = {r["module"]: r["activation"]["granularity"] for r in info["pruned"]}
    assert gran["bert.encoder.layer.0.attention.self.key"] == "tensor"
    assert gran["bert.encoder.layer.0.attention.output.dense"] == "token"


def test_random_method_and_pruning_twice(graph):
    g, _ = run_pass(graph, "prune", {"weight": {"sparsity": 0.25, "method": "random", "seed": 3}})
    first = {n.name: weight_and_mask(g, n)[1].clone() for n in linears(g)}
    for n in linears(g):
        assert int((~first[n.name]).sum()) == num_to_prune(0.25, first[n.name].numel())
    g, _ = run_pass(g, "prune", {"weight": {"sparsity": 0.5}})
    for n in linears(g):
        m = weight_and_mask(g, n)[1]
        assert bool((~m[~first[n.name]]).all()), "earlier pruned weights stay pruned"
        assert int((~m).sum()) == num_to_prune(0.5, m.numel())  # the zeros are the smallest |w|
    assert sum(1 for n in g.nodes if n.op == "get_attr" and n.target.endswith("weight_mask")) == len(linears(g))


def _random_act(seed, granularity="token", **extra):
    return {"activation": {"sparsity": 0.5, "method": "random", "granularity": granularity, "seed": seed}, **extra}


def _masks_and_logits(g, inputs, monkeypatch, calls=3):
    """The keep masks the graph's random activation pruning draws, and the logits, for ``calls`` forward passes."""
    masks = []
    real = ops.activation_keep_mask

    def spy(*args, **kwargs):
        masks.append(real(*args, **kwargs))
        return masks[-1]

    monkeypatch.setattr(ops, "activation_keep_mask", spy)
    g.eval()
    with torch.no_grad():
        logits = [g(**inputs).logits for _ in range(calls)]
    monkeypatch.setattr(ops, "activation_keep_mask", real)
    return masks, logits


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_random_activation_pruning_is_seeded(inputs, monkeypatch, granularity):
    def fresh(seed, quantize=False):
        g = tiny_graph()
        if quantize:
            g, _ = run_pass(g, "quantize", LINEAR_8_4)
        return run_pass(g, "prune", _random_act(seed, granularity))

    g, info = fresh(7)
    assert all(r["activation"] == {"sparsity": 0.5, "method": "random", "granularity": granularity, "seed": 7}
               for r in info["pruned"])
    assert [n.kwargs["act_seed"] for n in linears(g)] == [(7, i) for i in range(len(linears(g)))]  # per-node offsets
    ref = reference_graph(g)  # copied before any call: the same stream
    masks, logits = _masks_and_logits(g, inputs, monkeypatch)
    masks2, logits2 = _masks_and_logits(fresh(7)[0], inputs, monkeypatch)
    assert len(masks) == 3 * len(linears(g))
    assert all(torch.equal(a, b) for a, b in zip(masks, masks2))  # two fresh graphs: the same masks ...
    assert all(torch.equal(a, b) for a, b in zip(logits, logits2))  # ... and the same outputs, bit for bit
    assert not torch.equal(logits[0], logits[1])  # consecutive batches draw new masks
    per_call = len(linears(g))
    assert not any(torch.equal(masks[i], masks[i + per_call]) for i in range(per_call))
    other, _ = _masks_and_logits(fresh(8)[0], inputs, monkeypatch)
    assert not any(torch.equal(a, b) for a, b in zip(masks, other))  # another seed: other masks
    with torch.no_grad():  # the straightforward formulation consumes the same stream
        assert all(torch.equal(ref.eval()(**inputs).logits, out) for out in logits)
    for m in masks:  # achieved sparsity as configured
        if granularity == "token":
            assert bool(((~m).sum(-1) == num_to_prune(0.5, m.shape[-1])).all())
    if granularity == "tensor":
        assert abs(sum(int((~m).sum()) for m in masks) / sum(m.numel() for m in masks) - 0.5) < 0.02
    # on a quantised graph (masks on the quantised input), and while training (masked gradients)
    gq, _ = fresh(7, quantize=True)
    assert all(torch.equal(a, b) for a, b in zip(_masks_and_logits(gq, inputs, monkeypatch)[1],
                                                 _masks_and_logits(fresh(7, quantize=True)[0], inputs, monkeypatch)[1]))
    losses = []
    for _ in range(2):
        gt, _ = fresh(7)
        gt.train()
        torch.manual_seed(0)  # dropout
        loss = gt(**inputs, labels=torch.tensor([0, 1, 1])).loss
        loss.backward()
        losses.append((loss.detach(), gt.gm.get_submodule("classifier").weight.grad))
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])


def test_random_activation_stream_survives_save_load_and_overrides(inputs, tmp_path):
    cfg = _random_act(3, nodes={"classifier": {"activation": {"seed": 11}}})
    g, _ = run_pass(tiny_graph(), "prune", cfg)
    cls = next(n for n in linears(g) if g.meta(n).module_path == "classifier")
    assert cls.kwargs["act_seed"] == (11, len(linears(g)) - 1)
    g.eval()
    with torch.no_grad():
        g(**inputs)  # one call: the counts are at 1
        g.save(tmp_path / "g")
        loaded = MaseGraph.load(tmp_path / "g")
        assert int(loaded.gm.get_submodule("classifier").act_prune_calls) == 1  # saved with the graph
        # the loaded copy continues the saved graph's sequence
        for _ in range(2):
            assert torch.equal(loaded(**inputs).logits, g(**inputs).logits)
    # pruning again with l1-norm drops the stream; with random again it restarts at 0
    g2, _ = run_pass(g, "prune", {"activation": {"sparsity": 0.5}})
    assert all("act_seed" not in n.kwargs and "act_calls" not in n.kwargs for n in linears(g2))
    g3, _ = run_pass(tiny_graph(), "prune", _random_act(3))
    g3, _ = run_pass(g3, "prune", _random_act(3))
    assert int(g3.gm.get_submodule("classifier").act_prune_calls) == 0


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"weight": {"sparsity": 1.5}}, r"prune\.weight\.sparsity = 1\.5 is out of range; it must be in \[0\.0, 1\.0\]"),
        ({"activation": {"sparsity": -0.1}}, r"prune\.activation\.sparsity = -0\.1 is out of range"),
        ({"weight": {"sparsity": 0.5, "method": "l2-norm"}},
         r"prune\.weight\.method = 'l2-norm' is not valid.*choose one of: 'l1-norm', 'random'"),
        ({"weight": {"sparsity": 0.5, "scope": "layer"}}, r"prune\.weight\.scope = 'layer' is not valid.*choose one of: 'local', 'global'"),
        ({"weight": {"granularity": "channel"}}, r"prune\.weight\.granularity = 'channel' is not valid.*choose one of: 'elementwise'"),
        ({"activation": {"scope": "global"}}, r"prune\.activation\.scope = 'global' is not valid.*choose one of: 'local'"),
        ({"activation": {"granularity": "row"}}, r"prune\.activation\.granularity = 'row' is not valid.*choose one of: 'token', 'tensor'"),
        ({"weights": {"sparsity": 0.5}}, r"unknown config key 'prune\.weights' \(did you mean 'weight'\?\)"),
        ({**LAB2_PRUNE, "nodes": {"bert.decoder": {"weight": {"sparsity": 0.1}}}},
         r"prune\.nodes\.bert\.decoder = 'bert\.decoder' matches no linear node"),
        ({"by": "regex_name", "nodes": {"(": {}}}, r"prune\.nodes\.\( = '\(' is not a valid regular expression"),
        ({"nodes": {"classifier": {"weight": {"sparsity": 2}}}}, r"prune\.nodes\.classifier\.weight\.sparsity = 2\.0 is out of range"),
        ({"activation": {"sparsity": 0.5, "method": "random", "seed": "one"}},
         r"prune\.activation\.seed must be an integer, got 'one'"),
    ],
)
def test_bad_configs_leave_graph_unchanged(graph, cfg, match):
    code, st = graph.gm.code, state(graph)
    with pytest.raises(ConfigError, match=match):
        run_pass(graph, "prune", cfg)
    assert_unchanged(graph, code, st)
