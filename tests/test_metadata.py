"""Node metadata, the graph report and the networkx view."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from mase_lite import NodeMeta, trace
from mase_lite.metadata import OP_KINDS, concrete
from mase_lite.models import ModelConfig, build_model, example_inputs
from passes import run_pass

CFG = ModelConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                  vocab_size=500, max_position_embeddings=64, seed=0)


@pytest.fixture(scope="module")
def model_and_graph():
    model = build_model(CFG).eval()
    return model, trace(model, example_inputs(model))


def test_every_node_has_typed_metadata(model_and_graph):
    _, graph = model_and_graph
    for node in graph.nodes:
        meta = node.meta["mase"]
        assert isinstance(meta, NodeMeta)
        assert meta.op in OP_KINDS


def test_linear_nodes_match_modules(model_and_graph):
    model, graph = model_and_graph
    modules = dict(model.named_modules())
    linears = [graph.meta(n) for n in graph.nodes if graph.meta(n).op == "linear"]
    expected = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
    assert sorted(m.module_path for m in linears) == sorted(expected)
    for meta in linears:
        mod = modules[meta.module_path]
        assert meta.module_class == "Linear"
        assert (meta.in_features, meta.out_features) == (mod.in_features, mod.out_features)
        assert [p.name for p in meta.params] == [f"{meta.module_path}.weight", f"{meta.module_path}.bias"]
        assert meta.params[0].shape == tuple(mod.weight.shape)


def test_shapes_are_symbolic_in_batch_and_seq(model_and_graph):
    _, graph = model_and_graph
    q = next(graph.meta(n) for n in graph.nodes if graph.meta(n).module_path == "bert.encoder.layer.0.attention.self.query")
    assert q.inputs[0].shape == ("batch", "seq", 32) and q.inputs[0].dtype == "float32"
    assert q.outputs[0].shape == ("batch", "seq", 32)
    assert concrete(q.outputs[0].shape, batch=3, seq=7) == (3, 7, 32)
    assert q.macs(batch=3, seq=7) == 3 * 7 * 32 * 32
    ids = next(graph.meta(n) for n in graph.nodes if n.name == "input_ids")
    assert ids.op == "placeholder" and ids.outputs[0].shape == ("batch", "seq") and ids.outputs[0].dtype == "int64"


def test_op_kinds_cover_bert(model_and_graph):
    _, graph = model_and_graph
    kinds = {graph.meta(n).op for n in graph.nodes}
    assert {"linear", "embedding", "layer_norm", "attention", "activation", "elementwise", "view",
            "dropout", "placeholder", "output"} <= kinds
    attn = [graph.meta(n) for n in graph.nodes if graph.meta(n).op == "attention"]
    assert len(attn) == CFG.num_hidden_layers
    assert attn[0].module_class == "BertSelfAttention"


def test_report_totals(model_and_graph):
    model, graph = model_and_graph
    _, info = run_pass(graph, "report_graph", {"batch_size": 2, "seq_len": 16})
    totals = info["totals"]
    assert totals["params"] == sum(p.numel() for p in model.parameters())
    # Every trainable parameter is attributed to exactly one row.
    assert sum(r["params"] for r in info["rows"]) == totals["params"]
    linear_macs = sum(m.in_features * m.out_features * (2 * 16 if m.module_path not in ("bert.pooler.dense", "classifier") else 2)
                      for m in (graph.meta(n) for n in graph.nodes) if m.op == "linear")
    attn_macs = CFG.num_hidden_layers * 2 * 2 * 16 * 16 * (16 + 16)  # batch*heads*seq*seq*(d_q + d_v)
    assert totals["macs"] == linear_macs + attn_macs
    assert "total:" in info["table"] and "bert.encoder.layer.0.attention.self.query" in info["table"]
    _, by_module = run_pass(graph, "report_graph", {"by": "module"})
    rows = {r["module"]: r for r in by_module["rows"]}
    assert rows["bert.embeddings.word_embeddings"]["params"] == 500 * 32
    assert rows["classifier"]["params"] == 32 * 2 + 2


def test_report_rejects_unknown_op_kind(model_and_graph):
    _, graph = model_and_graph
    from mase_lite import ConfigError

    with pytest.raises(ConfigError, match=r"report_graph.ops\[0\] = 'linaer' is not valid \(did you mean 'linear'\?\)"):
        run_pass(graph, "report_graph", {"ops": ["linaer"]})


def test_networkx_view(model_and_graph):
    _, graph = model_and_graph
    g = graph.to_networkx()
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    assert g.number_of_nodes() == len(list(graph.nodes))
    # every linear node is reachable from input_ids, and the output depends on all of them
    linear = [n for n, d in g.nodes(data=True) if d["mase"].op == "linear"]
    reach = nx.descendants(g, "input_ids")
    assert set(linear) <= reach
    assert set(linear) <= nx.ancestors(g, "output")


def test_add_common_metadata_keeps_pass_annotations(model_and_graph):
    _, graph = model_and_graph
    g = graph.copy()
    node = next(n for n in g.nodes if g.meta(n).op == "linear")
    g.set_annotation(node, "note", 1)
    _, info = run_pass(g, "add_common_metadata")
    assert g.meta(node.name).annotations["note"] == 1
    assert "note" not in graph.meta(node.name).annotations  # the copy's metadata is its own
    assert info["op_counts"]["linear"] == 14


class _Norm(torch.nn.Module):
    """A hand-written RMS norm (as HF writes Llama's): pow, mean, rsqrt, mul."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class TinyRMSNorm(_Norm):
    pass


class TinyScale(_Norm):  # the same ops under a class name that is not a norm's
    pass


class _TwoNorms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.norm = TinyRMSNorm(8)
        self.scale = TinyScale(8)

    def forward(self, input_ids):
        return self.scale(self.norm(self.emb(input_ids)))


def test_hand_written_rms_norm_is_a_norm_by_its_class():
    from mase_lite.metadata import is_rms_norm_class

    g = trace(_TwoNorms(), {"input_ids": torch.randint(0, 10, (2, 5))})
    ops = {}
    for n in g.nodes:
        m = g.meta(n)
        if m.module_path in ("norm", "scale") and n.op == "call_function":
            ops.setdefault(m.module_path, set()).add(m.op)
    assert ops["norm"] == {"layer_norm"}
    assert "layer_norm" not in ops["scale"] and "elementwise" in ops["scale"]
    norm_params = [p.name for n in g.nodes for p in g.meta(n).params if g.meta(n).op == "layer_norm"]
    assert norm_params == ["norm.weight"]
    assert is_rms_norm_class("LlamaRMSNorm") and is_rms_norm_class("T5LayerNorm")
    assert not is_rms_norm_class("LayerNorm") and not is_rms_norm_class(None)
