"""The number-format registry, format specs in graph nodes, pass versions in the history and loading a
graph saved before formats and versions existed."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from _compression_helpers import LINEAR_8_4, assert_unchanged, state, tiny_graph
from mase_lite import ConfigError, MaseError, MaseGraph
from mase_lite.graph import HistoryEntry
from passes import get_pass, run_pass
from passes.formats import (
    FormatConfig,
    NumberFormat,
    format_config_from_dict,
    format_from_dict,
    format_from_spec,
    format_names,
    get_config_cls,
    get_format,
)
from passes.formats.integer import IntegerFormat
from passes.formats.scaled_integer import ScaledIntegerFormat

LEGACY = Path(__file__).parent / "data" / "legacy_graph_v1"


def _toml(d: dict) -> str:
    def val(v):
        return json.dumps(v) if isinstance(v, str) else ("true" if v is True else "false" if v is False else repr(v))
    return "\n".join(f"{k} = {val(v)}" for k, v in d.items())


def test_builtin_formats_are_registered_and_discoverable():
    names = format_names()
    assert {"integer", "scaled_integer"} <= set(names) and list(names) == sorted(names)
    assert get_format("integer") is IntegerFormat and get_format("scaled_integer") is ScaledIntegerFormat
    for name in names:  # every format: a config class (its fields are the parameters) and a name
        cls = get_config_cls(name)
        assert issubclass(cls, FormatConfig) and cls.name == name
        assert issubclass(get_format(name), NumberFormat) and get_format(name).config_cls is cls


def test_unknown_format_lists_the_valid_names():
    with pytest.raises(ConfigError) as exc:
        format_from_dict({"name": "posit", "width": 8}, path="q.weight")
    msg = str(exc.value)
    assert "q.weight.name = 'posit' is not a known number format" in msg
    assert all(repr(n) in msg for n in format_names())
    with pytest.raises(ConfigError, match=r"did you mean 'integer'"):
        get_format("integr")
    with pytest.raises(ConfigError, match=r"missing config key w\.name; choose one of: .*'integer'"):
        format_from_dict({"width": 8}, path="w")


@pytest.mark.parametrize("d", [
    {"name": "integer", "width": 8, "frac_width": 4, "floor": True},
    {"name": "integer", "width": 6, "frac_width": "auto", "floor": False},
    {"name": "scaled_integer", "width": 4, "granularity": "per_channel"},
    {"name": "scaled_integer", "width": 8, "granularity": "per_tensor", "scale": 0.0078125},
])
def test_configs_round_trip_dict_and_toml(d):
    cfg = format_config_from_dict(d)
    assert cfg.to_dict() == d
    assert format_config_from_dict(tomllib.loads(_toml(d))).to_dict() == d


def test_specs_round_trip_and_integer_keeps_its_tuple():
    i = format_from_dict({"name": "integer", "width": 8, "frac_width": 4})
    assert i.spec() == (8, 4, False)  # what graph nodes have always stored
    assert format_from_spec((8, 4, False)) == i and format_from_spec((8, 4)) == i
    s = format_from_dict({"name": "scaled_integer", "width": 6, "granularity": "per_channel"})
    assert s.spec() == ("scaled_integer", (("width", 6), ("granularity", "per_channel")))
    assert format_from_spec(s.spec()) == s and format_from_spec(s.spec()) is format_from_spec(s.spec())
    assert format_from_spec(None) is None and format_from_spec(s) is s
    assert hash(s) == hash(format_from_spec(s.spec())) and s != i
    assert s.to_dict() == {"name": "scaled_integer", "width": 6, "granularity": "per_channel"}


def test_data_dependent_config_cannot_build_a_format():
    with pytest.raises(ConfigError, match="data-dependent"):
        format_from_dict({"name": "integer", "width": 8, "frac_width": "auto"})


def test_bad_name_in_a_role_table_leaves_the_graph_unchanged():
    g = tiny_graph()
    code, st = g.gm.code, state(g)
    with pytest.raises(ConfigError, match=r"quantize\.linear\.config\.weight\.name = 'posit' is not a known"):
        run_pass(g, "quantize", {"by": "type", "linear": {"config": {"name": "integer",
                                                                     "weight": {"name": "posit"}}}})
    assert_unchanged(g, code, st)


# ----------------------------------------------------------------------------- pass versions


def test_history_entries_carry_pass_versions_and_save_them(tmp_path):
    g = tiny_graph()
    run_pass(g, "quantize", LINEAR_8_4)
    run_pass(g, "prune", {"weight": {"sparsity": 0.5}})
    assert [h.version for h in g.history] == [get_pass("quantize").version, get_pass("prune").version] == [2, 1]
    assert g.history[0] == ("quantize", g.history[0][1])  # still compares and unpacks as a pair
    name, cfg = g.history[0]
    assert name == "quantize" and cfg["linear"]["config"]["weight_frac_width"] == 4
    g.save(tmp_path / "g")
    saved = json.loads((tmp_path / "g" / "graph.json").read_text())["history"]
    assert [(h["name"], h["version"]) for h in saved] == [("quantize", 2), ("prune", 1)]
    loaded = MaseGraph.load(tmp_path / "g")
    assert [(h[0], h.version) for h in loaded.history] == [("quantize", 2), ("prune", 1)]
    assert loaded.history == g.history
    assert g.copy().history[1].version == 1  # copies keep versions


def test_history_from_a_newer_pass_version_is_refused(tmp_path):
    g = tiny_graph()
    run_pass(g, "quantize", LINEAR_8_4)
    g.save(tmp_path / "g")
    record = json.loads((tmp_path / "g" / "graph.json").read_text())
    record["history"][0]["version"] = 99
    (tmp_path / "g" / "graph.json").write_text(json.dumps(record))
    with pytest.raises(MaseError, match=r"version 99 of the pass; this mase-lite has version 2"):
        MaseGraph.load(tmp_path / "g")


def test_history_entry_pickles_and_repr():
    import copy
    import pickle

    e = HistoryEntry("prune", {"a": 1}, 3)
    for other in (copy.deepcopy(e), pickle.loads(pickle.dumps(e))):
        assert other == ("prune", {"a": 1}) and other.version == 3 and type(other) is HistoryEntry
    assert "version=3" in repr(e)


# ----------------------------------------------------------------------------- legacy graph


def _legacy_graph(out: Path) -> dict[str, torch.Tensor]:
    """A graph folder whose ``graph.json`` is the one the code before this change wrote
    (``tests/data/legacy_graph_v1/graph.json``: integer 12.9 linears, 8.5 embeddings, 8.3 attention
    inputs, then Lab 2's 50 % weight + activation pruning; no versions in its history), with the
    program and weights that record describes made now by the same steps
    (``tests/data/legacy_graph_v1/make_legacy_graph.py``). Returns the inputs and the logits of the
    graph before saving."""
    from _compression_helpers import CFG, LAB2_PRUNE, Q, tiny_graph

    from mase_lite.models import build_model, example_inputs

    g = tiny_graph()
    run_pass(g, "quantize", {"by": "type", "default": {"config": {"name": "NA"}}, "linear": {"config": Q(12, 9)},
                             "embedding": {"config": {"name": "integer", "weight_width": 8, "weight_frac_width": 5}},
                             "attention": {"config": {"name": "integer", "data_in_width": 8,
                                                      "data_in_frac_width": 3}}})
    run_pass(g, "prune", LAB2_PRUNE)
    g.eval()
    x = example_inputs(build_model(CFG), batch=3, seq=9, seed=5)
    with torch.no_grad():
        logits = g(**x).logits
    g.save(out)
    legacy = json.loads((LEGACY / "graph.json").read_text())
    current = json.loads((out / "graph.json").read_text())
    assert _behaviour(current) == _behaviour(legacy)
    shutil.copy(LEGACY / "graph.json", out / "graph.json")
    return {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"], "logits": logits}


def _behaviour(record: dict) -> dict:
    """What in a graph record determines behaviour: everything but the history and the library version
    strings (``hf_config.transformers_version``, which changes with every transformers release)."""
    out = {k: v for k, v in record.items() if k != "history"}
    info = dict(out["model_info"])
    info["hf_config"] = {k: v for k, v in info["hf_config"].items() if k != "transformers_version"}
    out["model_info"] = info
    return out


def test_record_comparison_ignores_version_strings_only():
    legacy = json.loads((LEGACY / "graph.json").read_text())
    bumped = json.loads(json.dumps(legacy))
    bumped["model_info"]["hf_config"]["transformers_version"] = "99.0.0"
    assert _behaviour(bumped) == _behaviour(legacy)
    changed = json.loads(json.dumps(legacy))
    changed["model_info"]["hf_config"]["hidden_size"] += 1
    assert _behaviour(changed) != _behaviour(legacy)


def test_graph_saved_before_formats_and_versions_loads_identically(tmp_path):
    """A graph record written before this change (no pass versions, the old quantize config) loads with
    today's code and gives the logits of the graph it was saved from, bit for bit."""
    record = json.loads((LEGACY / "graph.json").read_text())
    assert all("version" not in h for h in record["history"])
    want = _legacy_graph(tmp_path / "g")
    g = MaseGraph.load(tmp_path / "g")
    with torch.no_grad():
        out = g(input_ids=want["input_ids"], attention_mask=want["attention_mask"]).logits
    assert torch.equal(out, want["logits"])
    assert [h[0] for h in g.history] == ["quantize", "prune"]
    lin = next(n for n in g.nodes if n.kwargs.get("weight_q") is not None and g.meta(n).op == "linear")
    assert lin.kwargs["weight_q"] == (12, 9, False) and lin.kwargs["data_in"] == (12, 9, False)
    # re-saved, the entries now carry the installed versions and load identically again
    g.save(tmp_path / "again")
    again = MaseGraph.load(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again(input_ids=want["input_ids"], attention_mask=want["attention_mask"]).logits,
                           want["logits"])
    assert [h.version for h in again.history] == [2, 1]


def test_legacy_graph_fixture_is_small():
    assert sum(p.stat().st_size for p in LEGACY.iterdir()) < 500_000


def test_graph_report_and_transform_rows_show_formats():
    from mase_lite.commands.transform import node_rows

    g = tiny_graph()
    run_pass(g, "quantize", {"by": "type", "linear": {"config": {
        "name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
        "weight": {"name": "scaled_integer", "width": 6, "granularity": "per_channel"}}}})
    _, info = run_pass(g, "report_graph", {})
    row = next(r for r in info["rows"] if r["node"] == "linear")
    assert row["formats"] == "in=integer(8.4) w=scaled_integer(6,per_channel)"
    assert "formats" in info["table"].splitlines()[0]
    rows = {r["node"]: r for r in node_rows(g)}
    assert rows["linear"]["precision"]["data_in"] == {"width": 8, "frac_width": 4, "floor": False}
    assert rows["linear"]["precision"]["weight"] == {"name": "scaled_integer", "width": 6, "granularity": "per_channel"}
    _, plain = run_pass(tiny_graph(), "report_graph", {})
    assert "formats" not in plain["table"].splitlines()[0]
