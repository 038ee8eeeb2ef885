"""How the ``quantize`` pass resolves the format of each node and role where rules compete: a
recorded (``resolved``) format against the entry's data-dependent one, a role's own key against the
shared one, a role table without a name, the default entry against named ones, and the activation
widths that block_fp's block size must divide (a non-square linear)."""

from __future__ import annotations

import pytest

from _compression_helpers import Q, tiny_graph
from mase_lite import ConfigError
from passes import run_pass

INTERMEDIATE = "bert.encoder.layer.0.intermediate.dense"  # a linear of 32 inputs and 64 outputs


def _rows(info) -> dict:
    return {r["module"]: r for r in info["quantized"]}


def test_a_resolved_format_wins_over_the_entrys_auto_choice_and_is_recorded_again():
    g = tiny_graph()
    node = next(n.name for n in g.nodes if g.meta(n).module_path == "classifier")
    auto = {"by": "type", "linear": {"config": {"name": "integer", "weight_width": 8, "weight_frac_width": "auto"}}}
    _, plain = run_pass(tiny_graph(), "quantize", auto)
    # small initial weights: "auto" takes every fraction bit, so a recorded 2 is distinguishable
    assert _rows(plain)["classifier"]["weight"]["frac_width"] == 8
    recorded = {"name": "integer", "width": 8, "frac_width": 2, "floor": False}
    g, info = run_pass(g, "quantize", {**auto, "resolved": {node: {"weight": recorded}}})
    rows = _rows(info)
    assert rows["classifier"]["weight"] == {"width": 8, "frac_width": 2, "floor": False}
    assert rows["bert.pooler.dense"]["weight"]["frac_width"] == 8  # the other nodes still choose
    assert info["resolved"][node]["weight"] == recorded  # replayed choices are recorded again
    assert g.history[-1][1]["resolved"][node]["weight"] == recorded


def test_a_roles_own_key_wins_over_the_shared_one():
    g = tiny_graph()
    entry = {"name": "integer", "floor": True, "weight_floor": False, "weight_width": 8, "weight_frac_width": 4,
             "data_in_width": 8, "data_in_frac_width": 4}
    g, info = run_pass(g, "quantize", {"by": "type", "linear": {"config": entry}})
    row = _rows(info)["classifier"]
    assert row["weight"] == {"width": 8, "frac_width": 4, "floor": False}
    assert row["data_in"] == {"width": 8, "frac_width": 4, "floor": True}
    assert row["bias"] is None and row["data_out"] is None


def test_a_role_table_without_a_name_takes_the_entrys_format():
    g = tiny_graph()
    entry = {"name": "minifloat", "weight_preset": "fp8_e4m3", "data_in": {"preset": "fp8_e5m2"}}
    g, info = run_pass(g, "quantize", {"by": "type", "linear": {"config": entry}})
    row = _rows(info)["classifier"]
    assert row["weight"]["name"] == "minifloat" and row["weight"]["preset"] == "fp8_e4m3"
    assert row["data_in"]["name"] == "minifloat" and row["data_in"]["preset"] == "fp8_e5m2"
    assert (row["data_in"]["exponent_width"], row["data_in"]["mantissa_width"]) == (5, 2)


def test_by_name_the_default_entry_only_fills_the_nodes_no_entry_names():
    g = tiny_graph()
    cfg = {"by": "name", "default": {"config": Q(4, 2)}, "classifier": {"config": Q(8, 4)}}
    g, info = run_pass(g, "quantize", cfg)
    rows = _rows(info)
    assert rows["classifier"]["weight"] == {"width": 8, "frac_width": 4, "floor": False}
    assert rows["bert.pooler.dense"]["weight"] == {"width": 4, "frac_width": 2, "floor": False}
    assert rows[INTERMEDIATE]["data_in"] == {"width": 4, "frac_width": 2, "floor": False}


def test_block_fp_activation_block_sizes_are_checked_against_in_and_out_features():
    # intermediate.dense: 32 inputs, 64 outputs. 64 divides the output width only.
    ok = {"by": "name", INTERMEDIATE: {"config": {"name": "block_fp", "data_out_block_size": 64,
                                                  "data_in_block_size": 32}}}
    g, info = run_pass(tiny_graph(), "quantize", ok)
    row = _rows(info)[INTERMEDIATE]
    assert row["data_out"]["block_size"] == 64 and row["data_in"]["block_size"] == 32
    bad = {"by": "name", INTERMEDIATE: {"config": {"name": "block_fp", "data_in_block_size": 64}}}
    with pytest.raises(ConfigError, match="data_in_block_size = 64 does not divide"):
        run_pass(tiny_graph(), "quantize", bad)
