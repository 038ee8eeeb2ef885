"""Non-finite numbers (``nan``, ``inf``, ``-inf``) are refused at the edge: one ConfigError naming the
field's full dotted path, before anything is built (issue #19, item 4)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from _compression_helpers import CFG, tiny_graph
from mase_lite import ConfigError, MaseGraph, trace
from mase_lite.cli import main
from mase_lite.config import Config, check_range
from mase_lite.models import build_model, example_inputs
from passes import PassContext, run_pass
from passes.formats.scaled_integer import ScaledIntegerConfig
from passes.transforms.prune import PruneConfig, WeightPruneConfig
from passes.transforms.shrink import PruneFFNConfig, PruneHeadsConfig
from search.config import load_run_config

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.toml"
NAN, INF = math.nan, math.inf


def refused(path: str, value: str = "nan") -> str:
    """The regex of the one error for a non-finite ``value`` at ``path``."""
    return "^" + re.escape(f"{path} = {value} is not a finite number") + ".*give a finite number$"


def write_run(tmp_path, extra: str):
    cfg = tmp_path / "run.toml"
    cfg.write_text(QUICKSTART.read_text() + "\n" + extra)
    return cfg


# --------------------------------------------------------------------------- TOML and --set


@pytest.mark.parametrize("literal, shown", [("nan", "nan"), ("+nan", "nan"), ("inf", "inf"), ("+inf", "inf"),
                                            ("-inf", "-inf"), ("1e999", "inf")])
def test_toml_non_finite_literal_for_train_lr_is_refused(tmp_path, literal, shown):
    cfg = tmp_path / "run.toml"
    cfg.write_text(QUICKSTART.read_text().replace("epochs = 1", f"epochs = 1\nlr = {literal}"))
    with pytest.raises(ConfigError, match=refused("train.lr", shown)):
        load_run_config(cfg)


def test_finite_values_still_load(tmp_path):
    cfg = load_run_config(QUICKSTART, {"train": {"lr": 1e-308, "weight_decay": 1e300}})
    assert cfg.train.lr == 1e-308 and cfg.train.weight_decay == 1e300


def test_set_train_lr_nan_exits_at_once_through_the_real_cli(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mase_lite.cli", "search", "--config", str(QUICKSTART),
                           "--set", "train.lr=nan", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert re.match(r"mase-lite search: error: train\.lr = nan is not a finite number", lines[0])
    assert not (out / "optuna.db").exists() and not out.exists()  # no study, no trial, no run folder


@pytest.mark.parametrize("override, path, shown", [
    ("train.lr=inf", "train.lr", "inf"),
    ("train.warmup_ratio=-inf", "train.warmup_ratio", "-inf"),
    ("search.size_budget_bytes=inf", "search.size_budget_bytes", "inf"),
    ("finetune.lr=nan", "finetune.lr", "nan"),  # [finetune] is an Any-typed table
    ("space.hidden_size=[64, inf]", "space.hidden_size[1]", "inf"),
    ("compression.passes.prune.weight.sparsity=nan", "compression.passes.prune.weight.sparsity", "nan"),
])
def test_set_overrides_name_the_full_path(tmp_path, capsys, monkeypatch, override, path, shown):
    def no_search(*args, **kwargs):
        raise AssertionError(f"--set {override} was accepted: the search started")

    monkeypatch.setattr("search.study.run_search", no_search)
    out = tmp_path / "run"
    code = main(["search", "--config", str(QUICKSTART), "--set", override, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"mase-lite search: error: {path} = {shown} is not a finite number"), err[0]
    assert not out.exists()


# --------------------------------------------------------------------------- search-space lists


@pytest.mark.parametrize("table, path", [
    ("[space.compression]\nsparsities = [0.0, nan]", "space.compression.sparsities[1]"),
    ("[space.compression]\nfrac_widths = [\"auto\", nan]", "space.compression.frac_widths[1]"),  # list of a union
    ("[space.compression]\nwidths = [8, inf]", "space.compression.widths[1]"),
    ("[space.shrink]\nffn = [nan]", "space.shrink.ffn[0]"),
])
def test_search_space_list_values_are_refused(tmp_path, table, path):
    shown = "inf" if "inf" in table else "nan"
    with pytest.raises(ConfigError, match=refused(path, shown)):
        load_run_config(write_run(tmp_path, table))


# --------------------------------------------------------------------------- [compression] and pass configs


def test_compression_table_scale_is_refused_with_its_full_path(tmp_path):
    table = """[compression.passes.quantize]
by = "type"
linear = { config = { name = "scaled_integer", data_in_width = 8, data_in_scale = inf } }
"""
    path = write_run(tmp_path, table)
    path.write_text(path.read_text().replace('samplers = ["grid", "random", "tpe"]',
                                             'samplers = ["random"]\nvariants = ["compress"]'))
    with pytest.raises(ConfigError, match=refused("compression.passes.quantize.linear.config.data_in_scale", "inf")):
        load_run_config(path)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_quantiser_scale_is_refused_before_the_graph_changes(value):
    g = tiny_graph()
    code = g.gm.code
    entry = {"name": "scaled_integer", "data_in_width": 8, "data_in_scale": value, "weight_width": 8}
    with pytest.raises(ConfigError, match=refused("quantize.linear.config.data_in_scale", repr(value))):
        run_pass(g, "quantize", {"by": "type", "linear": {"config": entry}})
    assert g.gm.code == code and g.history == []
    with pytest.raises(ConfigError, match=refused("w.scale", repr(value))):
        ScaledIntegerConfig.from_dict({"width": 8, "scale": value}, path="w")


@pytest.mark.parametrize("config, path", [
    ({"weight": {"sparsity": NAN}}, "prune.weight.sparsity"),
    ({"activation": {"sparsity": NAN}}, "prune.activation.sparsity"),
    ({"nodes": {"linear": {"weight": {"sparsity": NAN}}}}, "prune.nodes.linear.weight.sparsity"),
])
def test_sparsity_is_refused_before_the_graph_changes(config, path):
    g = tiny_graph()
    code = g.gm.code
    with pytest.raises(ConfigError, match=refused(path)):
        run_pass(g, "prune", config)
    assert g.gm.code == code and g.history == []


def test_a_config_instance_with_a_non_finite_value_is_refused_too():
    """An instance skips ``from_dict``; ``check_range`` refuses nan itself (here when the pass reads the
    sparsity; ``PruneConfig.validate`` does not validate its nested tables), and the graph is unchanged."""
    g = tiny_graph()
    code = g.gm.code
    with pytest.raises(ConfigError, match=r"sparsity = nan is not a finite number"):
        run_pass(g, "prune", PruneConfig(weight=WeightPruneConfig(sparsity=NAN)))
    assert g.gm.code == code and g.history == []
    with pytest.raises(ConfigError, match=refused("x", "inf")):
        check_range("x", INF, 0.0)


@pytest.mark.parametrize("cls, data, path, shown", [
    (PruneFFNConfig, {"keep": NAN}, "prune_ffn.keep", "nan"),
    (PruneFFNConfig, {"keep": INF}, "prune_ffn.keep", "inf"),
    (PruneFFNConfig, {"keep": {"0": INF}}, "prune_ffn.keep.0", "inf"),  # not "must be int or float or dict"
    (PruneHeadsConfig, {"keep": -INF}, "prune_heads.keep", "-inf"),
    (PruneHeadsConfig, {"keep": {"1": NAN}}, "prune_heads.keep.1", "nan"),
])
def test_shrink_keep_is_refused(cls, data, path, shown):
    with pytest.raises(ConfigError, match=refused(path, shown)):
        cls.from_dict(data, path=path.split(".")[0])


# --------------------------------------------------------------------------- Any-typed values


@dataclasses.dataclass
class _Loose(Config):
    extra: Any = None
    table: dict[str, Any] = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize("data, path, shown", [
    ({"extra": NAN}, "x.extra", "nan"),
    ({"extra": {"a": [1.0, {"b": INF}]}}, "x.extra.a[1].b", "inf"),
    ({"table": {"t": (0, -INF)}}, "x.table.t[1]", "-inf"),
])
def test_any_typed_values_are_walked(data, path, shown):
    with pytest.raises(ConfigError, match=refused(path, shown)):
        _Loose.from_dict(data, path="x")


# --------------------------------------------------------------------------- the legitimate use


def test_measured_infinite_calibration_ranges_still_replay(tmp_path):
    """A calibrated range is measured, not chosen: an infinite one (a weight holding inf) is recorded
    and replayed by ``MaseGraph.load`` (``CalibrateConfig.ranges`` opts out of the finite check)."""
    model = build_model(CFG).eval()
    lin = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        lin.weight[0, 0] = INF
    g = trace(model, example_inputs(model))
    run_pass(g, "calibrate", {"num_batches": 1}, context=PassContext(batches=[example_inputs(model, seed=3)]))
    ranges = g.history[0][1]["ranges"]
    assert any(r["absmax"] == INF for roles in ranges.values() for r in roles.values())
    g.save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g")
    assert json.dumps(loaded.history[0][1]["ranges"], sort_keys=True) == json.dumps(ranges, sort_keys=True)
    with pytest.raises(ConfigError, match=refused("calibrate.num_batches", "nan")):
        run_pass(g, "calibrate", {"num_batches": NAN, "ranges": ranges})  # the opt-out is that field's only
