"""``replace_linear_with_identity``: selection, errors, parameters removed, still runs/trains/saves."""

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
)
from mase_lite import ConfigError, MaseGraph
from passes import run_pass

Q_PATH = "bert.encoder.layer.0.attention.self.query"
O_PATH = "bert.encoder.layer.0.attention.output.dense"


def paths(g):
    return [g.meta(n).module_path for n in linears(g)]


def test_module_path_becomes_identity(graph, inputs):
    n_params = sum(p.numel() for p in graph.parameters())
    g, info = run_pass(graph, "replace_linear_with_identity", {"module_paths": [O_PATH]})
    assert info["replaced"] == [{"node": "linear_3", "module": O_PATH, "features": 32}]
    assert O_PATH not in paths(g) and len(paths(g)) == 7
    assert info["params_removed"] == 32 * 32 + 32
    assert sum(p.numel() for p in g.parameters()) == n_params - 32 * 32 - 32
    assert "weight" not in dict(g.gm.get_submodule(O_PATH).named_parameters())
    g.train()
    out = g(**inputs, labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    assert g.gm.get_submodule("bert.encoder.layer.0.intermediate.dense").weight.grad is not None


def test_identity_output_is_the_input():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    from mase_lite import trace

    x = torch.randn(3, 4)
    g = trace(model, {"input": x})
    g, info = run_pass(g, "replace_linear_with_identity", {"all_square": True})
    assert [r["module"] for r in info["replaced"]] == ["0", "2"]
    with torch.no_grad():
        assert torch.equal(g(input=x), model[3](torch.relu(x)))


def test_node_names_regex_and_all_square(graph):
    g, info = run_pass(graph.copy(), "replace_linear_with_identity", {"nodes": ["linear", "linear_2"]})
    assert [r["module"] for r in info["replaced"]] == [Q_PATH, "bert.encoder.layer.0.attention.self.value"]
    g, info = run_pass(graph.copy(), "replace_linear_with_identity", {"regex": r".*attention\.self\.(key|value)$"})
    assert len(info["replaced"]) == 2
    g, info = run_pass(graph.copy(), "replace_linear_with_identity", {"all_square": True})
    assert paths(g) == ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense", "classifier"]
    g, info = run_pass(graph.copy(), "replace_linear_with_identity", {"module_paths": []})
    assert info["replaced"] == [] and len(paths(g)) == 8


def test_on_a_compressed_graph_and_save_load(graph, inputs, tmp_path):
    g, _ = run_pass(graph, "quantize", LINEAR_8_4)
    g, _ = run_pass(g, "prune", LAB2_PRUNE)
    g, info = run_pass(g, "replace_linear_with_identity", {"module_paths": [Q_PATH]})
    # key and value still share one quantised+pruned input; the identity passes the raw input through
    assert sum(1 for n in g.nodes if n.kwargs.get("prepared_input")) == 2
    assert not any(n.target.endswith("query.weight_mask") for n in g.nodes if n.op == "get_attr")
    assert "weight_mask" not in dict(g.gm.get_submodule(Q_PATH).named_buffers())
    g.eval()
    with torch.no_grad():
        out = g(**inputs).logits
        assert torch.equal(out, reference_graph(g).eval()(**inputs).logits)
    g.save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, out)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"module_paths": ["bert.encoder.layer.0.intermediate.dense"]},
         r"module_paths\[0\] = 'bert\.encoder\.layer\.0\.intermediate\.dense': .* is not square "
         r"\(in_features 32 != out_features 64\).*square ones: bert\.encoder\.layer\.0\.attention\.self\.query"),
        ({"module_paths": [Q_PATH, "bert.encoder.layer.0.attention.self.qury"]},
         r"module_paths\[1\] = 'bert\.encoder\.layer\.0\.attention\.self\.qury' matches no linear node"),
        ({"nodes": ["linear_99"]}, r"nodes\[0\] = 'linear_99' matches no linear node"),
        ({"regex": "bert\\.decoder"}, r"regex = 'bert\\\\\.decoder' matches no linear node"),
        ({"regex": r"bert\.encoder"}, r"is not square"),
        ({"regex": "[unclosed"}, r"replace_linear_with_identity\.regex = '\[unclosed' is not a valid regular expression"),
        ({}, r"replace_linear_with_identity needs targets: set .*module_paths"),
        ({"module_path": [Q_PATH]}, r"unknown config key 'replace_linear_with_identity\.module_path' \(did you mean 'module_paths'\?\)"),
    ],
)
def test_bad_targets_leave_graph_unchanged(graph, cfg, match):
    code, st = graph.gm.code, state(graph)
    with pytest.raises(ConfigError, match=match):
        run_pass(graph, "replace_linear_with_identity", cfg)
    assert_unchanged(graph, code, st)
