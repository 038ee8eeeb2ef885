"""``cost`` figures checked for their exact values (not only ``<`` a dense figure): sparse MACs with
rounding zeros, bytes of values and side data rounded up separately, rounding zeros that exclude
float zeros, a per-channel format on a bias, weight sparsity against effective sparsity, and the
compression ratio. Every expected number is computed here from the weights and the documented
rules."""

from __future__ import annotations

import math

import torch

from _compression_helpers import Q, hand_q, linears, tiny_graph
from passes import run_pass

B, S = 2, 16


def _rows(info) -> dict:
    return {r["module"]: r for r in info["nodes"] if r["module"]}


def test_sparse_macs_count_the_nonzero_effective_weights_exactly():
    g = tiny_graph()
    g, _ = run_pass(g, "quantize", {"by": "type", "linear": {"config": Q(8, 4)}})
    g, _ = run_pass(g, "prune", {"weight": {"sparsity": 0.5}})
    _, info = run_pass(g, "cost", {"batch_size": B, "seq_len": S})
    rows = _rows(info)
    total_macs = total_sparse = 0
    with_rounding_zeros = 0
    for n in linears(g):
        path = g.meta(n).module_path
        mod = g.gm.get_submodule(path)
        w, m = mod.weight.detach(), mod.weight_mask
        out_f, in_f = w.shape
        tokens = B if path in ("bert.pooler.dense", "classifier") else B * S  # pooler/classifier: the [CLS] row
        nonzero = int(((hand_q(w, 8, 4) * m) != 0).sum())
        kept = int(m.sum())
        with_rounding_zeros += kept > nonzero
        row = rows[path]
        assert row["macs"] == tokens * in_f * out_f, path
        assert row["macs_sparse"] == tokens * nonzero, path
        # pruned weights only: rounding zeros are not pruned
        assert row["weight_sparsity"] == (w.numel() - kept) / w.numel() == round(0.5 * w.numel()) / w.numel()
        assert row["tensors"]["weight"]["effective_sparsity"] == 1 - nonzero / w.numel()
        total_macs += row["macs"]
        total_sparse += row["macs_sparse"]
    assert with_rounding_zeros >= 1  # the figures above tell kept from non-zero weights
    attention = sum(r["macs"] for r in info["nodes"] if r["op"] == "attention")
    assert info["macs"] == total_macs + attention
    assert info["macs_sparse"] == total_sparse + attention
    fp32 = 4 * sum(v.numel() for v in g.gm.state_dict().values() if v.is_floating_point())
    assert info["size_bytes_fp32"] == fp32
    assert info["size_bytes_compressed"] < info["size_bytes_quantized"]
    assert info["compression_ratio"] == fp32 / info["size_bytes_compressed"]


def test_values_and_side_data_are_rounded_up_to_bytes_separately():
    # the classifier's bias (2 values) in block_fp with 2 mantissa bits (3 bits a value) and one block
    # of 2 with a 2-bit exponent: ceil(2 * 3 / 8) + ceil(2 / 8) = 1 + 1 bytes (together they would fit in 1)
    cfg = {"by": "name", "classifier": {"config": {"name": "block_fp", "bias_mantissa_width": 2,
                                                   "bias_exponent_width": 2, "bias_block_size": 2}}}
    g, _ = run_pass(tiny_graph(), "quantize", cfg)
    _, info = run_pass(g, "cost", {})
    bias = _rows(info)["classifier"]["tensors"]["bias"]
    assert (bias["numel"], bias["bits"], bias["overhead_bits"]) == (2, 3, 2)
    assert bias["size_bytes_quantized"] == bias["size_bytes_compressed"] == math.ceil(6 / 8) + math.ceil(2 / 8) == 2
    weight = _rows(info)["classifier"]["tensors"]["weight"]
    assert weight["size_bytes_quantized"] == 2 * 32 * 4  # float32, not quantised


def test_rounding_zeros_exclude_values_that_are_zero_in_float():
    g = tiny_graph()
    with torch.no_grad():
        g.gm.get_submodule("classifier").bias.copy_(torch.tensor([0.0, 0.01]))  # 0.01 * 16 rounds to 0
    g, _ = run_pass(g, "quantize", {"by": "name", "classifier": {"config": Q(8, 4)}})
    _, info = run_pass(g, "cost", {})
    bias = _rows(info)["classifier"]["tensors"]["bias"]
    assert (bias["nonzero"], bias["rounding_zeros"], bias["pruned"]) == (0, 1, 0)
    assert bias["rounding_zero_fraction"] == 0.5 and bias["effective_sparsity"] == 1.0


def test_a_per_channel_format_on_a_bias_stores_one_scale():
    cfg = {"by": "name", "classifier": {"config": {"name": "scaled_integer", "weight_width": 8,
                                                   "weight_granularity": "per_channel", "bias_width": 8,
                                                   "bias_granularity": "per_channel"}}}
    g, _ = run_pass(tiny_graph(), "quantize", cfg)
    _, info = run_pass(g, "cost", {})
    t = _rows(info)["classifier"]["tensors"]
    assert t["weight"]["overhead_bits"] == 2 * 32  # one float32 scale per output channel (2)
    assert t["weight"]["size_bytes_quantized"] == 2 * 32 + 2 * 4
    assert t["bias"]["overhead_bits"] == 32  # a bias has no channel dimension: one scale
    assert t["bias"]["size_bytes_quantized"] == 2 + 4
