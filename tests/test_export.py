"""The compact export (passes.export): bit packing, per-tensor encodings, export -> MaseGraph.load
bit-identity, measured vs predicted bytes, bad input, the CLI."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _compression_helpers import LAB2_PRUNE, LINEAR_8_4, assert_export_bytes_match_cost, tiny_graph, tiny_inputs
from mase_lite import MaseError, MaseGraph
from passes import run_pass
from passes.export import ExportLoadError, export_graph, load_export
from passes.export import packing
from passes.export.compact import _decode_tensor, _encode_tensor
from passes.export.codecs import Codec
from passes.export.encoding import choose_masked_encoding, masked_sizes
from passes.formats.integer import IntegerFormat


# ------------------------------------------------------------------------------------------ packing

def test_int4_packs_two_per_byte_low_nibble_first():
    data = packing.pack_codes(torch.tensor([1, -2, 7, -8]), 4)
    assert data.tolist() == [0xE1, 0x87]  # 1 = 0001, -2 = 1110 -> 0xE1; 7 = 0111, -8 = 1000 -> 0x87


def test_3bit_codes_are_packed_densely():
    # bits, LSB first: 1 -> 100, 2 -> 010, 3 -> 110: stream 1,0,0,0,1,0,1,1 | 0
    data = packing.pack_codes(torch.tensor([1, 2, 3]), 3)
    assert data.tolist() == [1 + 16 + 64 + 128, 0]
    assert packing.unpack_codes(data, 3, 3).tolist() == [1, 2, 3]


def test_8_and_16_bit_codes_are_their_twos_complement_bytes():
    c = torch.tensor([-128, -1, 0, 5, 127])
    assert torch.equal(packing.pack_codes(c, 8), c.to(torch.int8).view(torch.uint8))
    c16 = torch.tensor([-32768, -2, 300, 32767])
    assert torch.equal(packing.pack_codes(c16, 16), c16.to(torch.int16).view(torch.uint8))


@settings(max_examples=60, deadline=None)
@given(width=st.integers(2, 32), data=st.data())
def test_pack_roundtrip_any_width(width, data):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    codes = data.draw(st.lists(st.integers(lo, hi), min_size=0, max_size=40))
    t = torch.tensor(codes, dtype=torch.int64)
    packed = packing.pack_codes(t, width)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(codes) * width / 8)
    assert packing.unpack_codes(packed, width, len(codes)).tolist() == codes


def test_pack_rejects_out_of_range_codes_and_wrong_sizes():
    with pytest.raises(ValueError, match="outside the 4-bit range"):
        packing.pack_codes(torch.tensor([8]), 4)
    with pytest.raises(ValueError, match="do not hold"):
        packing.unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, 3)


# ------------------------------------------------------------------------------------------ encodings

def test_masked_sizes_by_hand():
    # 1000 weights, 500 kept, 300 of them non-zero, 8 bits: mask 125 B
    s = masked_sizes(1000, 500, 300, 8)
    assert s == {"dense_mask": 1000 + 125, "mask_kept": 125 + 500, "mask_nonzero": 125 + 63 + 300}
    assert choose_masked_encoding(1000, 500, 300, 8) == ("mask_nonzero", 488)
    # no kept zeros: the mask is the non-zero pattern; light pruning -> dense codes are smaller
    assert choose_masked_encoding(1000, 950, 950, 8) == ("dense", 1000)
    assert choose_masked_encoding(1000, 500, 500, 8) == ("mask_kept", 625)
    # 4-bit codes, few rounding zeros: keeping all kept codes beats the extra bit per kept value
    assert choose_masked_encoding(1000, 500, 490, 4) == ("mask_kept", 125 + 250)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), width=st.sampled_from([2, 3, 4, 8, 12]), data=st.data())
def test_every_encoding_roundtrips_values_and_mask(n, width, data):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    codes = torch.tensor(data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), dtype=torch.float32)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    frac = data.draw(st.integers(0, width))
    t = codes / 2.0 ** frac * mask  # pruned values are zero, as the prune pass leaves them
    codec = Codec(IntegerFormat.from_qspec((width, frac, False)))
    arrays: dict = {}
    entry = _encode_tensor("w", t, codec, mask, arrays)
    kept, nonzero = int(mask.sum()), int(((t != 0) & mask).sum())
    assert (entry["encoding"], entry["bytes"]) == choose_masked_encoding(n, kept, nonzero, width)
    value, back_mask = _decode_tensor("w", entry, arrays)
    assert torch.equal(value, t) and torch.equal(back_mask, mask)


# ------------------------------------------------------------------------------------------ graphs

def _lab2_graph() -> MaseGraph:
    """The tiny test BERT with weights scaled up (encoder x2: some kept weights round to zero;
    pooler and classifier x12: codes spread over the 8-bit grid), then Lab 2's quantize + prune."""
    g = tiny_graph()
    with torch.no_grad():
        for name, p in g.gm.named_parameters():
            if "LayerNorm" not in name and ("encoder" in name or "classifier" in name or "pooler" in name):
                p.mul_(2.0 if "encoder" in name else 12.0)
    run_pass(g, "quantize", LINEAR_8_4)
    run_pass(g, "prune", LAB2_PRUNE)
    return g.eval()


@functools.lru_cache(maxsize=1)
def _exported(tmp: str):
    g = _lab2_graph()
    report = export_graph(g, tmp)
    return g, report


@pytest.fixture(scope="module")
def lab2_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "lab2"
    g, report = _exported(str(out))
    return g, report, out


def test_loaded_export_is_bit_identical_with_masks_kept(lab2_export):
    g, _, out = lab2_export
    back = MaseGraph.load(out)  # MaseGraph.load recognises an export directory
    x = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(back(**x).logits, g(**x).logits)
    sd, sd2 = g.gm.state_dict(), back.gm.state_dict()
    masks = [k for k in sd if k.endswith("weight_mask")]
    assert len(masks) == 8
    rounding_zero_kept = 0
    for k in masks:
        assert torch.equal(sd[k], sd2[k])
        w = sd2[k.removesuffix("_mask")]
        rounding_zero_kept += int(((w == 0) & sd2[k]).sum())
    assert rounding_zero_kept > 0  # zeros from rounding are kept weights, not pruned ones
    assert back.history == g.history


def test_export_is_byte_reproducible_and_refuses_a_file_target(lab2_export, tmp_path):
    import hashlib

    g, _, out = lab2_export
    export_graph(g, tmp_path / "again")
    for name in ("weights.safetensors", "export.json"):
        digests = {hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (out, tmp_path / "again")}
        assert len(digests) == 1, name
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(MaseError, match=r"export target .*file exists and is not a directory"):
        export_graph(g, target)
    assert target.read_text() == "x"


def test_quantised_tensors_are_stored_as_codes_not_fp32(lab2_export):
    g, _, out = lab2_export
    manifest = json.loads((out / "export.json").read_text())
    from safetensors import safe_open

    with safe_open(out / "weights.safetensors", "pt") as f:
        keys = set(f.keys())
        q = manifest["tensors"]["bert.encoder.layer.0.attention.self.query.weight"]
        assert q["format"]["name"] == "integer" and q["format"]["frac_width"] == 4
        assert q["encoding"] == "mask_nonzero"
        for part in q["arrays"].values():
            assert f.get_tensor(part["key"]).dtype == torch.uint8
    assert not any(k.startswith("bert.encoder") and k.endswith("/values") for k in keys if "LayerNorm" not in k)
    with safe_open(out / "weights.safetensors", "pt") as f:  # one key: safetensors orders a map at random
        assert f.metadata() == {"mase-lite-export": str(manifest["format_version"])}
    assert manifest["format_version"] == 1 and manifest["model"]["class"] == "BertForSequenceClassification"
    assert manifest["model"]["output_type"].endswith("SequenceClassifierOutput")
    assert [h["name"] for h in manifest["history"]] == ["quantize", "prune"]


def test_measured_bytes_match_the_cost_prediction(lab2_export):
    _, report, out = lab2_export
    assert_export_bytes_match_cost(report, out)  # the manifest is separate from the weights file
    total = sum(r["measured"] for r in report["tensors"])
    assert report["safetensors_header_bytes"] < 0.02 * total + 20000


def test_loaded_export_fine_tunes_with_masks_enforced(lab2_export):
    _, _, out = lab2_export
    g = load_export(out)
    g.train()
    opt = torch.optim.SGD(g.parameters(), lr=0.1)
    x = tiny_inputs()
    before = {k: v.clone() for k, v in g.gm.state_dict().items()}
    loss = g(**x, labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    opt.step()
    after = g.gm.state_dict()
    w = "bert.encoder.layer.0.intermediate.dense.weight"
    assert not torch.equal(before[w], after[w])
    assert torch.all(after[w][~after[w + "_mask"]] == 0)


def test_uncompressed_graph_exports_plain_fp32(tmp_path):
    g = tiny_graph()
    report = export_graph(g, tmp_path / "e")
    assert report["compressed"] is False
    assert {r["encoding"] for r in report["tensors"]} == {"raw"}
    back = MaseGraph.load(tmp_path / "e")
    x = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(back(**x).logits, g.eval()(**x).logits)


def test_plain_module_cannot_be_exported(tmp_path):
    from mase_lite import trace

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(x)

    g = trace(Net(), {"x": torch.randn(2, 4)})
    with pytest.raises(MaseError, match="rebuilds the program from a transformers"):
        export_graph(g, tmp_path / "e")
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------------------------------ bad input

def _copy_export(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupted_tensor_is_named(lab2_export, tmp_path):
    _, _, out = lab2_export
    bad = _copy_export(out, tmp_path / "bad")
    manifest = json.loads((bad / "export.json").read_text())
    name = "bert.encoder.layer.0.output.dense.weight"
    key = manifest["tensors"][name]["arrays"]["mask"]["key"]
    raw = bytearray((bad / "weights.safetensors").read_bytes())
    hlen = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + hlen])
    start = 8 + hlen + header[key]["data_offsets"][0]
    raw[start + 3] ^= 0x10
    (bad / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ExportLoadError, match=f"tensor '{name}' is corrupt.*SHA-256"):
        MaseGraph.load(bad)


def test_truncated_file_names_the_tensor(lab2_export, tmp_path):
    _, _, out = lab2_export
    bad = _copy_export(out, tmp_path / "trunc")
    raw = (bad / "weights.safetensors").read_bytes()
    (bad / "weights.safetensors").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ExportLoadError, match=r"tensor '.+' is truncated"):
        load_export(bad)
    (bad / "weights.safetensors").write_bytes(raw[:5])
    with pytest.raises(ExportLoadError, match="truncated"):
        load_export(bad)


def test_manifest_from_a_newer_version_is_refused(lab2_export, tmp_path):
    _, _, out = lab2_export
    bad = _copy_export(out, tmp_path / "newer")
    manifest = json.loads((bad / "export.json").read_text())
    manifest["format_version"] = 2
    manifest["mase_lite_version"] = "9.0.0"
    (bad / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportLoadError, match=r"format version 2 \(written by mase-lite 9.0.0\) is newer.*upgrade"):
        load_export(bad)
    (bad / "export.json").write_text("{not json")
    with pytest.raises(ExportLoadError, match="not valid JSON"):
        load_export(bad)


def test_unknown_encoding_is_an_error(lab2_export, tmp_path):
    _, _, out = lab2_export
    bad = _copy_export(out, tmp_path / "enc")
    manifest = json.loads((bad / "export.json").read_text())
    manifest["tensors"]["classifier.weight"]["encoding"] = "zstd"
    (bad / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportLoadError, match="classifier.weight.encoding = 'zstd' is unknown"):
        load_export(bad)


# ------------------------------------------------------------------------------------------ CLI

def test_cli_export_prints_measured_and_predicted(lab2_export, tmp_path, capsys):
    from mase_lite.cli import main

    g, report, _ = lab2_export
    saved = g.save(tmp_path / "graph")
    assert main(["export", str(saved), "--out", str(tmp_path / "exp"), "--check"]) == 0
    out = capsys.readouterr().out
    non = report["groups"]["non_embedding"]
    line = next(l for l in out.splitlines() if l.startswith("non_embedding"))
    assert line.split() == ["non_embedding", str(non["measured"]), str(non["predicted"]), "+0.00", "%"]
    assert "bit-identical" in out and "plain fp32" not in out
    plain = tiny_graph().save(tmp_path / "plain")
    assert main(["export", str(plain), "--out", str(tmp_path / "exp2")]) == 0
    assert "exported as plain fp32" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a saved MaseGraph" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ other formats

@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_scaled_integer_weights_export_as_codes_and_scales(tmp_path, granularity):
    g = tiny_graph()
    run_pass(g, "quantize", {"by": "type", "linear": {"config": {
        "name": "scaled_integer", "weight_width": 4, "weight_granularity": granularity, "bias_width": 8}}})
    run_pass(g, "prune", {"weight": {"sparsity": 0.3}})
    g.eval()
    report = export_graph(g, tmp_path / "e")
    manifest = json.loads((tmp_path / "e" / "export.json").read_text())
    w = manifest["tensors"]["bert.encoder.layer.0.intermediate.dense.weight"]
    assert w["format"]["name"] == "scaled_integer" and w["bits"] == 4
    assert w["arrays"]["amax"]["nbytes"] == 4 * (64 if granularity == "per_channel" else 1)  # one float32 each
    for row in report["tensors"]:
        if row["group"] != "uncounted":
            assert row["measured"] == row["predicted"], row
    back = MaseGraph.load(tmp_path / "e")
    x = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(back(**x).logits, g(**x).logits)
