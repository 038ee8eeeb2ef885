"""Helpers shared by the compression pass tests (quantize, prune, identity, cost, pipeline)."""

from __future__ import annotations

import functools

import torch

from mase_lite import MaseGraph, trace
from mase_lite.models import ModelConfig, build_model, example_inputs
from passes.transforms import ops
from passes.transforms.compressed_nodes import SHARED_INPUT_MARK

#: A 1-layer, 32-wide BERT classifier with a 500-token vocabulary: quick to trace and run.
CFG = ModelConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                  vocab_size=500, max_position_embeddings=64, seed=0)


def Q(w: int = 8, f: int = 4, **extra) -> dict:
    """An integer quantize entry config with the same format for inputs, weight and bias."""
    return {"name": "integer", "data_in_width": w, "data_in_frac_width": f, "weight_width": w,
            "weight_frac_width": f, "bias_width": w, "bias_frac_width": f, **extra}


LINEAR_8_4 = {"by": "type", "default": {"config": {"name": "NA"}}, "linear": {"config": Q()}}
LAB2_PRUNE = {"weight": {"sparsity": 0.5, "method": "l1-norm", "scope": "local"},
              "activation": {"sparsity": 0.5, "method": "l1-norm", "scope": "local"}}


@functools.lru_cache(maxsize=1)
def _base_graph() -> MaseGraph:
    model = build_model(CFG).eval()
    return trace(model, example_inputs(model))


def tiny_graph() -> MaseGraph:
    """A fresh copy of the traced :data:`CFG` model (traced once per process)."""
    return _base_graph().copy()


def tiny_inputs() -> dict:
    return example_inputs(build_model(CFG), batch=3, seq=9, seed=5)


def hand_q(x: torch.Tensor, w: int, f: int) -> torch.Tensor:
    """The quantiser formula, written out independently of the library."""
    return torch.clamp(torch.round(x * 2.0 ** f), -(2 ** (w - 1)), 2 ** (w - 1) - 1) / 2.0 ** f


def reference_graph(graph: MaseGraph) -> MaseGraph:
    """``graph`` with shared input nodes removed and every compressed op in its straightforward form."""
    ref = graph.copy()
    g = ref.fx_graph
    for node in list(g.nodes):
        if node.target is ops.quantize_prune_input and node.meta.get(SHARED_INPUT_MARK):
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
    for node in g.nodes:
        if node.target is ops.compressed_linear:
            node.target = ops.compressed_linear_reference
        elif node.target is ops.compressed_embedding:
            node.target = ops.compressed_embedding_reference
    ref.gm.recompile()
    return ref


def state(graph: MaseGraph) -> dict:
    return {k: v.clone() for k, v in graph.gm.state_dict().items()}


def assert_unchanged(graph: MaseGraph, code: str, st: dict, history=()) -> None:
    """The graph still has this code, these tensors and this history."""
    assert graph.gm.code == code
    now = graph.gm.state_dict()
    assert now.keys() == st.keys() and all(torch.equal(now[k], v) for k, v in st.items())
    assert graph.history == list(history)


def linears(graph: MaseGraph) -> list:
    return [n for n in graph.nodes if graph.meta(n).op == "linear"]


def assert_export_bytes_match_cost(report, out) -> None:
    """An export report's measured bytes equal the cost pass's prediction, tensor by tensor and for the
    non-embedding group, and the weights file is those arrays plus the safetensors header."""
    for row in report["tensors"]:
        if row["group"] != "uncounted":
            assert row["measured"] == row["predicted"], row
    non = report["groups"]["non_embedding"]
    assert non["measured"] == non["predicted"] == report["cost"]["size_bytes_compressed_non_embedding"]
    total = sum(r["measured"] for r in report["tensors"])
    assert (out / "weights.safetensors").stat().st_size == total + report["safetensors_header_bytes"]
