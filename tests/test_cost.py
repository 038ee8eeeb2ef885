"""The ``cost`` analysis pass: parameters, MACs, bits, non-zeros and the three model sizes."""

from __future__ import annotations

import math

import pytest
import torch

from _compression_helpers import LAB2_PRUNE, LINEAR_8_4, hand_q, linears, tiny_graph
from mase_lite import ConfigError
from passes import run_pass


def test_fp32_graph():
    g = tiny_graph()
    _, info = run_pass(g, "cost", {"batch_size": 2, "seq_len": 16})
    n = sum(p.numel() for p in g.parameters())
    emb = sum(p.numel() for name, p in g.gm.named_parameters() if "embeddings." in name and "LayerNorm" not in name)
    assert info["params"] == n and info["params_embedding"] == emb and info["params_non_embedding"] == n - emb
    assert info["size_bytes_fp32"] == info["size_bytes_quantized"] == info["size_bytes_compressed"] == 4 * n
    assert info["size_bytes_fp32_embedding"] == 4 * emb
    # linear MACs: rows * in * out, rows = batch * seq for the encoder, batch for the pooler/classifier
    linear_macs = sum(r["macs"] for r in info["nodes"] if r["op"] == "linear")
    assert linear_macs == 2 * 16 * (3 * 32 * 32 + 32 * 32 + 32 * 64 + 64 * 32) + 2 * (32 * 32 + 32 * 2)
    attn = [r for r in info["nodes"] if r["op"] == "attention"]
    assert attn[0]["macs"] == 2 * 2 * 16 * 16 * (16 + 16)
    assert info["macs"] == linear_macs + attn[0]["macs"]
    assert {"size_bytes_compressed", "size_bytes_fp32", "params"} <= set(info)
    assert all(isinstance(info[k], (int, float)) for k in info if k.startswith(("size_", "params", "macs")))


def test_quantised_and_pruned_sizes_by_hand():
    g = tiny_graph()
    g, _ = run_pass(g, "quantize", LINEAR_8_4)
    g, _ = run_pass(g, "prune", LAB2_PRUNE)
    _, info = run_pass(g, "cost", {})
    quant = compressed = fp32 = nonzero = 0
    for n in linears(g):
        owner = g.gm.get_submodule(g.meta(n).module_path)
        w, b, m = owner.weight.detach(), owner.bias.detach(), owner.weight_mask
        nz = int(((hand_q(w, 8, 4) * m) != 0).sum())
        row = next(r for r in info["nodes"] if r["node"] == n.name)
        assert row["weight_bits"] == 8 and row["weight_sparsity"] == 0.5
        assert row["tensors"]["weight"]["nonzero"] == nz
        # 8-bit codes: the mask (1 bit each) + the non-zero codes, + 1 bit per kept weight telling which
        # kept codes are non-zero (rounding zeros are not pruned); or all kept codes, whichever is smaller
        kept, mask_bytes = int(m.sum()), math.ceil(w.numel() / 8)
        assert kept > nz  # rounding zeros among the kept weights (small init), so the extra bits are needed
        w_bytes = min(mask_bytes + math.ceil(kept / 8) + nz, mask_bytes + kept, w.numel() + mask_bytes)
        assert row["size_bytes_compressed"] == w_bytes + b.numel()
        quant += w.numel() + b.numel()
        compressed += w_bytes + b.numel()
        fp32 += 4 * (w.numel() + b.numel())
        nonzero += nz + int((hand_q(b, 8, 4) != 0).sum())
    ln = sum(p.numel() for name, p in g.gm.named_parameters() if "LayerNorm" in name)
    assert info["size_bytes_quantized_non_embedding"] == quant + 4 * ln
    assert info["size_bytes_compressed_non_embedding"] == compressed + 4 * ln
    assert info["size_bytes_fp32_non_embedding"] == fp32 + 4 * ln
    assert info["size_bytes_compressed_embedding"] == info["size_bytes_fp32_embedding"]  # fp32 tables
    assert info["pruned"] == sum(int((~g.gm.get_submodule(g.meta(n).module_path).weight_mask).sum()) for n in linears(g))
    assert info["macs_sparse"] < info["macs"]
    assert "table" in info and "embedding" in info["table"]


def _stored_by_hand(g):
    """The model's state as the test sees it: the floating-point state_dict entries (parameters and
    persistent buffers); bool pruning masks and integer index buffers are not weights."""
    sd = g.gm.state_dict()
    floats = {k: v for k, v in sd.items() if v.is_floating_point()}
    return floats, set(sd) - set(floats)


@pytest.mark.parametrize("compressed", [False, True])
def test_counts_every_stored_tensor_frozen_or_not(compressed):
    g = tiny_graph()
    if compressed:
        g, _ = run_pass(g, "quantize", LINEAR_8_4)
        g, _ = run_pass(g, "prune", LAB2_PRUNE)
    # a float buffer no node reads is model state too (saved with the graph)
    g.gm.get_submodule("classifier").register_buffer("calibration", torch.ones(7))
    _, before = run_pass(g, "cost", {})
    floats, others = _stored_by_hand(g)
    assert {"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"} <= others  # int64: not counted
    assert compressed == any(k.endswith("weight_mask") for k in others)  # bool masks: not counted
    assert before["params"] == sum(v.numel() for v in floats.values())
    assert before["size_bytes_fp32"] == sum(4 * v.numel() for v in floats.values())
    other = next(r for r in before["nodes"] if r["node"] == "(other)")
    assert "classifier.calibration" in other["tensors"]
    names = [t["name"] for r in before["nodes"] for t in r["tensors"].values()]
    assert sorted(names) == sorted(floats)  # each stored tensor in exactly one row
    # freezing parameters changes how the model trains, not what it stores
    for name, p in g.gm.named_parameters():
        if "embeddings" in name or "classifier" in name:
            p.requires_grad_(False)
    _, frozen = run_pass(g, "cost", {})
    for key in ("params", "size_bytes_fp32", "size_bytes_quantized", "size_bytes_compressed",
                "size_bytes_fp32_embedding", "nonzero"):
        assert frozen[key] == before[key], key


def test_quantised_embeddings_count_at_their_precision():
    g = tiny_graph()
    emb_cfg = {"by": "type", "embedding": {"config": {"name": "integer", "weight_width": 6, "weight_frac_width": 4}}}
    g, _ = run_pass(g, "quantize", emb_cfg)
    _, info = run_pass(g, "cost", {})
    tables = [p for name, p in g.gm.named_parameters() if "embeddings." in name and "LayerNorm" not in name]
    assert info["size_bytes_quantized_embedding"] == sum(math.ceil(t.numel() * 6 / 8) for t in tables)


def test_identity_shrinks_the_model():
    g = tiny_graph()
    _, before = run_pass(g, "cost", {})
    g, _ = run_pass(g, "replace_linear_with_identity", {"all_square": True})
    _, after = run_pass(g, "cost", {})
    assert before["params"] - after["params"] == 5 * (32 * 32 + 32)  # q, k, v, attention output, pooler
    assert before["macs"] - after["macs"] == 4 * 128 * 32 * 32 + 32 * 32  # 3 qkv + attn out; pooler at batch 1


@pytest.mark.parametrize("cfg, match", [({"batch_size": 0}, r"cost\.batch_size = 0 is out of range"),
                                        ({"seq": 5}, r"unknown config key 'cost\.seq'")])
def test_bad_config(cfg, match):
    with pytest.raises(ConfigError, match=match):
        run_pass(tiny_graph(), "cost", cfg)


def test_pruning_and_rounding_zeros_by_hand():
    """Lab 2's pipeline: the zeros from pruning and the kept weights that 4 fraction bits round to 0."""
    g = tiny_graph()
    g, _ = run_pass(g, "quantize", LINEAR_8_4)
    g, _ = run_pass(g, "prune", LAB2_PRUNE)
    _, info = run_pass(g, "cost", {})
    pruned = rounding = numel = nonzero = 0
    for n in linears(g):
        owner = g.gm.get_submodule(g.meta(n).module_path)
        w, b, m = owner.weight.detach(), owner.bias.detach(), owner.weight_mask.bool()
        r_w = int((m & (w != 0) & (hand_q(w, 8, 4) == 0)).sum())
        r_b = int(((b != 0) & (hand_q(b, 8, 4) == 0)).sum())
        row = next(r for r in info["nodes"] if r["node"] == n.name)
        t = row["tensors"]["weight"]
        assert t["rounding_zeros"] == r_w and t["pruned"] == int((~m).sum())
        assert t["rounding_zero_fraction"] == r_w / w.numel()
        assert t["rounding_zero_fraction_of_kept"] == r_w / int(m.sum())
        assert t["effective_sparsity"] == 1 - t["nonzero"] / w.numel()
        assert t["overhead_bits"] == 0  # integer: no scales
        assert row["rounding_zeros"] == r_w + r_b
        pruned += int((~m).sum())
        rounding += r_w + r_b
        numel += w.numel() + b.numel()
        nonzero += t["nonzero"] + row["tensors"]["bias"]["nonzero"]
    ln = sum(p.numel() for name, p in g.gm.named_parameters() if "LayerNorm" in name)
    nz_ln = sum(int((p != 0).sum()) for name, p in g.gm.named_parameters() if "LayerNorm" in name)
    assert info["pruned_non_embedding"] == pruned and info["rounding_zeros_non_embedding"] == rounding
    assert info["pruned_fraction_non_embedding"] == pruned / (numel + ln)
    assert info["rounding_zero_fraction_non_embedding"] == rounding / (numel + ln)
    assert info["effective_sparsity_non_embedding"] == 1 - (nonzero + nz_ln) / (numel + ln)
    # small random-init weights (std 0.02) mostly round to 0 at step 1/16: far more zeros than pruned
    assert info["effective_sparsity_non_embedding"] > info["pruned_fraction_non_embedding"] + 0.3
    assert info["rounding_zeros_embedding"] == 0 and info["pruned_embedding"] == 0  # float tables
    assert "round0" in info["table"] and "eff.sp" in info["table"]


def test_scaled_integer_bits_overhead_and_rounding_zeros():
    g = tiny_graph()
    g, _ = run_pass(g, "quantize", {"by": "type", "linear": {"config": {
        "name": "scaled_integer", "weight_width": 4, "weight_granularity": "per_channel", "bias_width": 8}}})
    _, info = run_pass(g, "cost", {})
    for n in linears(g):
        owner = g.gm.get_submodule(g.meta(n).module_path)
        w = owner.weight.detach()
        row = next(r for r in info["nodes"] if r["node"] == n.name)
        t = row["tensors"]["weight"]
        assert t["bits"] == 4 and t["overhead_bits"] == 32 * w.shape[0]  # one float32 scale per output row
        assert row["tensors"]["bias"]["overhead_bits"] == 32  # per tensor
        assert t["size_bytes_quantized"] == math.ceil((w.numel() * 4 + 32 * w.shape[0]) / 8)
        s = w.abs().amax(dim=1, keepdim=True) / 7
        zeros = int(((w / s).round() == 0).sum() - (w == 0).sum())
        assert t["rounding_zeros"] == zeros and t["pruned"] == 0
