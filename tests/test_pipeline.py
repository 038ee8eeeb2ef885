"""Pass contract: registry, validation, no mutation of configs, rollback on failure, TOML pipelines, save/load."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from mase_lite import ConfigError, MaseError, MaseGraph, PassError, trace
from mase_lite.config import Config
from mase_lite.models import ModelConfig, build_model, example_inputs
from passes import available_passes, run_pass, run_pipeline
from passes.registry import register_pass

CFG = ModelConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                  vocab_size=500, max_position_embeddings=64, seed=0)


@dataclass
class ScaleConfig(Config):
    """Test transform: multiply the output of linear nodes whose module path contains ``match``."""

    match: str = "classifier"
    factor: float = 2.0
    fail_after_edit: bool = False


@register_pass("_test_scale", ScaleConfig, kind="transform", example={"factor": 3.0})
def _test_scale(graph: MaseGraph, config: ScaleConfig):
    changed = []
    for node in list(graph.nodes):
        meta = graph.meta(node)
        if meta.op == "linear" and config.match in (meta.module_path or ""):
            owner = graph.gm.get_submodule(meta.module_path)
            owner.register_buffer("test_scale", torch.tensor(config.factor))
            with graph.fx_graph.inserting_after(node):
                scale = graph.fx_graph.get_attr(f"{meta.module_path}.test_scale")
            with graph.fx_graph.inserting_after(scale):
                mul = graph.fx_graph.call_function(torch.ops.aten.mul.Tensor, (node, scale))
            node.replace_all_uses_with(mul, delete_user_cb=lambda u: u is not mul)
            changed.append(node.name)
    if config.fail_after_edit:  # no graph.recompile(): the runner recompiles after every transform
        raise RuntimeError("boom after editing")
    return graph, {"changed": changed}


@pytest.fixture()
def graph():
    model = build_model(CFG).eval()
    return trace(model, example_inputs(model))


def _x():
    return example_inputs(build_model(CFG), batch=3, seq=9, seed=5)


def test_registry_lists_builtin_passes():
    assert {"add_common_metadata", "report_graph"} <= set(available_passes())


def test_unknown_pass_names_valid_ones(graph):
    with pytest.raises(ConfigError, match=r"unknown pass 'report_grpah' \(did you mean 'report_graph'\?\); valid passes: .*add_common_metadata"):
        run_pass(graph, "report_grpah", {})


def test_bad_config_key_names_valid_keys(graph):
    with pytest.raises(ConfigError, match=r"unknown config key '_test_scale.factr' \(did you mean 'factor'\?\); valid keys: factor, fail_after_edit, match"):
        run_pass(graph, "_test_scale", {"factr": 3})
    with pytest.raises(ConfigError, match=r"_test_scale.factor must be a number, got 'x'"):
        run_pass(graph, "_test_scale", {"factor": "x"})
    assert graph.history == []


def test_transform_changes_output_and_is_recorded(graph):
    x = _x()
    ref = graph(**x).logits
    cfg = {"factor": 3.0}
    frozen = copy.deepcopy(cfg)
    _, info = run_pass(graph, "_test_scale", cfg)
    assert cfg == frozen, "the caller's config must not be mutated"
    assert len(info["changed"]) == 1
    assert torch.allclose(graph(**x).logits, 3 * ref, atol=1e-6)
    assert graph.history == [("_test_scale", {"match": "classifier", "factor": 3.0, "fail_after_edit": False})]
    run_pass(graph, "report_graph", {})
    assert len(graph.history) == 1, "analysis passes are not recorded"


def test_failing_pass_leaves_graph_unchanged(graph):
    x = _x()
    ref = graph(**x).logits
    code, nodes = graph.gm.code, [n.name for n in graph.nodes]
    state = {k: v.clone() for k, v in graph.gm.state_dict().items()}
    with pytest.raises(PassError, match="pass '_test_scale' failed: RuntimeError: boom after editing"):
        run_pass(graph, "_test_scale", {"fail_after_edit": True})
    assert graph.gm.code == code and [n.name for n in graph.nodes] == nodes
    assert graph.gm.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in graph.gm.state_dict().items())
    assert torch.equal(graph(**x).logits, ref) and graph.history == []


def test_toml_pipeline_tables_and_arrays(graph, tmp_path):
    x = _x()
    ref = graph(**x).logits
    (tmp_path / "p.toml").write_text(
        '[passes.add_common_metadata]\n\n[passes._test_scale]\nfactor = 2.0\n\n[passes.report_graph]\nby = "module"\n'
    )
    _, infos = run_pipeline(graph, tmp_path / "p.toml")
    assert list(infos) == ["add_common_metadata", "_test_scale", "report_graph"]
    assert torch.allclose(graph(**x).logits, 2 * ref, atol=1e-6)
    (tmp_path / "q.toml").write_text('[[passes]]\nname = "_test_scale"\nmatch = "classifier"\nfactor = 0.5\n'
                                     '[[passes]]\nname = "_test_scale"\nmatch = "classifier"\nfactor = 0.5\n')
    g2 = graph.copy()
    _, infos = run_pipeline(g2, tmp_path / "q.toml")
    assert list(infos) == ["_test_scale", "_test_scale#2"]
    assert [h[0] for h in g2.history] == ["_test_scale"] * 3
    # the three multiplies read one buffer, which the last pass set to 0.5
    assert torch.allclose(g2(**x).logits, 0.5**3 * ref, atol=1e-6)


def test_pipeline_validates_everything_before_running(graph):
    code = graph.gm.code
    with pytest.raises(ConfigError, match="unknown pass 'nope'"):
        run_pipeline(graph, {"passes": {"_test_scale": {}, "nope": {}}})
    with pytest.raises(ConfigError, match="_test_scale.factor must be a number"):
        run_pipeline(graph, {"passes": [("report_graph", {}), ("_test_scale", {"factor": [1]})]})
    with pytest.raises(ConfigError, match="no 'passes' section"):
        run_pipeline(graph, {"pass": {}})
    assert graph.gm.code == code and graph.history == []


def test_pipeline_failure_rolls_back_earlier_passes(graph):
    x = _x()
    ref = graph(**x).logits
    with pytest.raises(PassError):
        run_pipeline(graph, {"passes": [("_test_scale", {}), ("_test_scale", {"match": "query", "fail_after_edit": True})]})
    assert torch.equal(graph(**x).logits, ref) and graph.history == []


def test_missing_toml_file(graph, tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        run_pipeline(graph, tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[passes\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        run_pipeline(graph, tmp_path / "bad.toml")


def test_save_load_roundtrip_plain(graph, tmp_path):
    x = _x()
    graph.save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g")
    assert not loaded.training
    assert torch.equal(loaded(**x).logits, graph(**x).logits)
    assert [n.name for n in loaded.nodes] == [n.name for n in graph.nodes]
    for a, b in zip(loaded.nodes, graph.nodes):
        assert loaded.meta(a) == graph.meta(b)


def test_save_load_roundtrip_transformed_and_trained(graph, tmp_path):
    run_pass(graph, "_test_scale", {"factor": 5.0})
    graph.gm.get_submodule("classifier").test_scale.fill_(7.0)  # a buffer value changed after the pass
    opt = torch.optim.SGD(graph.parameters(), lr=0.1)
    graph.train()
    graph(**_x(), labels=torch.tensor([0, 1, 1])).loss.backward()
    opt.step()
    graph.eval()
    graph.save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g")
    x = _x()
    assert loaded.history == graph.history
    assert float(loaded.gm.get_submodule("classifier").test_scale) == 7.0
    assert torch.equal(loaded(**x).logits, graph(**x).logits)
    loaded.train()
    out = loaded(**x, labels=torch.tensor([1, 0, 1]))
    out.loss.backward()
    assert all(p.grad is not None for p in loaded.parameters())


def test_load_errors(tmp_path):
    with pytest.raises(MaseError, match="is not a saved MaseGraph"):
        MaseGraph.load(tmp_path)


def test_load_transformed_graph_in_a_fresh_process(tmp_path):
    """A fresh interpreter has neither transformers' output types nor the passes imported."""
    import subprocess
    import sys

    model = build_model(CFG).eval()
    graph = trace(model, example_inputs(model))
    run_pass(graph, "prune", {"weight": {"sparsity": 0.5}})
    graph.save(tmp_path / "g")
    x = _x()
    torch.save(x, tmp_path / "x.pt")
    torch.save(graph(**x).logits.detach(), tmp_path / "ref.pt")
    code = (
        "import sys, torch\n"
        "from mase_lite import MaseGraph\n"
        f"g = MaseGraph.load({str(tmp_path / 'g')!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"assert torch.equal(g(**x).logits, torch.load({str(tmp_path / 'ref.pt')!r}))\n"
        "assert g.history[0][0] == 'prune'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


@dataclass
class WriteConfig(Config):
    """Test transform: zero the classifier weight through ``graph.write_tensor`` (or in place)."""

    in_place: bool = False
    fail: bool = False


@register_pass("_test_write", WriteConfig, kind="transform", example={})
def _test_write(graph: MaseGraph, config: WriteConfig):
    w = graph.gm.get_parameter("classifier.weight")
    if config.in_place:
        with torch.no_grad():
            w.zero_()
    else:
        graph.write_tensor(w, torch.zeros_like(w))
    if config.fail:
        raise RuntimeError("boom after writing")
    return graph, {}


def _train_steps(graph, opt, n=2):
    x = _x()
    labels = torch.tensor([0, 1, 1])
    for _ in range(n):
        graph.train()
        graph(**x, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()


Q8 = {"by": "type", "linear": {"config": {"name": "integer", "weight_width": 8, "weight_frac_width": 4,
                                         "data_in_width": 8, "data_in_frac_width": 4}}}


@pytest.mark.parametrize("pipeline", [
    [("cost", {})],
    [("report_graph", {})],
    [("quantize", Q8)],
    [("prune", {"weight": {"sparsity": 0.5}})],
    [("quantize", Q8), ("prune", {"weight": {"sparsity": 0.5}})],
])
def test_optimizer_built_before_a_pass_still_trains_the_graph(graph, pipeline):
    params_before = dict(graph.gm.named_parameters())
    opt = torch.optim.AdamW(graph.parameters(), lr=1e-2, fused=True)
    run_pipeline(graph, pipeline)
    after = dict(graph.gm.named_parameters())
    assert after.keys() == params_before.keys()
    assert all(after[k] is params_before[k] for k in after), "a pass replaced a parameter object"
    snapshot = {k: v.detach().clone() for k, v in after.items()}
    _train_steps(graph, opt)
    moved = [k for k, v in graph.gm.named_parameters() if not torch.equal(v, snapshot[k])]
    assert "classifier.weight" in moved and len(moved) > len(after) // 2


def test_analysis_pass_does_not_copy(graph):
    gm, code = graph.gm, graph.gm.code
    tensors = {k: v for k, v in graph.gm.state_dict(keep_vars=True).items()}
    run_pass(graph, "cost", {})
    assert graph.gm is gm and graph.gm.code == code
    assert all(v is tensors[k] for k, v in graph.gm.state_dict(keep_vars=True).items())


def test_staged_write_applies_on_success_only(graph):
    w = graph.gm.get_parameter("classifier.weight")
    before = w.detach().clone()
    with pytest.raises(PassError, match="boom after writing"):
        run_pass(graph, "_test_write", {"fail": True})
    assert torch.equal(w, before) and graph.history == []
    run_pass(graph, "_test_write", {})
    assert graph.gm.get_parameter("classifier.weight") is w and not w.any()


def test_in_place_edit_by_a_pass_is_reported(graph):
    with pytest.raises(PassError, match=r"modified the tensor 'classifier.weight' in place; a pass must use graph.write_tensor"):
        run_pass(graph, "_test_write", {"in_place": True})
    assert graph.history == []


def test_pipeline_failure_restores_tensors_written_by_earlier_passes(graph):
    """A pass's staged writes land on the shared tensors when it succeeds; a later failure in the same
    pipeline puts them back, so the caller's weights are as before the pipeline (here: zeroed by the
    first pass, then a failing second pass)."""
    w = graph.gm.get_parameter("classifier.weight")
    before = w.detach().clone()
    x = _x()
    ref = graph(**x).logits
    with pytest.raises(PassError, match="boom after writing"):
        run_pipeline(graph, {"passes": [("_test_write", {}), ("_test_write", {"fail": True})]})
    assert graph.gm.get_parameter("classifier.weight") is w and torch.equal(w, before)
    assert torch.equal(graph(**x).logits, ref) and graph.history == []


def test_config_instances_are_validated_like_dicts(graph):
    """An invalid Config object is refused before it runs (it could not be replayed on load)."""
    from passes.analysis.cost import CostConfig

    bad = CostConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"cost\.batch_size = 0 is out of range"):
        run_pass(graph, "cost", bad)
    with pytest.raises(ConfigError, match=r"cost\.batch_size = 0 is out of range"):
        run_pipeline(graph, [("cost", bad)])
    assert graph.history == []


# --------------------------------------------------------------------------- what the runner does for every transform


@dataclass
class MisorderConfig(Config):
    """Test transform: with ``broken``, move the first linear node before its inputs (the graph no longer lints)."""

    broken: bool = False


@register_pass("_test_misorder", MisorderConfig, kind="transform", example={})
def _test_misorder(graph: MaseGraph, config: MisorderConfig):
    if config.broken:
        first = next(iter(graph.nodes))
        first.prepend(next(n for n in graph.nodes if graph.meta(n).op == "linear"))
    return graph, {}


def test_the_runner_recompiles_and_annotates_after_a_transform(graph):
    """``_test_scale`` edits ``graph.gm.graph`` and returns without recompiling: the code and the node
    metadata the runner hands back are the edited graph's."""
    x = _x()
    ref = graph(**x).logits
    run_pass(graph, "_test_scale", {"factor": 3.0})
    scaled = [n for n in graph.nodes if n.target is torch.ops.aten.mul.Tensor
              and any(a.op == "get_attr" and str(a.target).endswith("test_scale") for a in n.all_input_nodes)]
    assert len(scaled) == 1 and scaled[0].name in graph.gm.code
    assert graph.meta(scaled[0]).op == "elementwise"  # the new node was annotated by the runner
    torch.testing.assert_close(graph(**x).logits, 3.0 * ref)


def test_a_transform_that_leaves_a_graph_that_does_not_lint_is_refused(graph):
    x = _x()
    ref = graph(**x).logits
    code, nodes = graph.gm.code, [n.name for n in graph.nodes]
    with pytest.raises(PassError, match=r"pass '_test_misorder' left a graph that does not lint .*nothing was changed"):
        run_pass(graph, "_test_misorder", {"broken": True})
    assert graph.gm.code == code and [n.name for n in graph.nodes] == nodes and graph.history == []
    assert torch.equal(graph(**x).logits, ref)
    run_pass(graph, "_test_misorder", {})  # the same pass leaving a valid graph is committed
    assert [h[0] for h in graph.history] == ["_test_misorder"]


@dataclass
class FactConfig(Config):
    """Test passes declaring requirements: ``fact`` is what ``_test_needs`` requires."""

    fact: str = "calibration"


@register_pass("_test_gives_calibration", FactConfig, kind="analysis", provides=("calibration",), example={})
def _test_gives_calibration(graph: MaseGraph, config: FactConfig):
    return graph, {}


@register_pass("_test_needs", FactConfig, kind="analysis", requires=lambda cfg: [cfg.fact], example={})
def _test_needs(graph: MaseGraph, config: FactConfig):
    return graph, {}


def test_requirements_are_declared_by_passes_not_looked_up_by_name():
    from passes import get_pass
    from passes.analysis.calibrate import pipeline_needs_calibration
    from passes.pipeline import unmet_requirements

    auto = {"by": "type", "linear": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": "auto"}}}
    fixed = {"by": "type", "linear": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4}}}
    assert get_pass("quantize").requirements(auto) == {"calibration"} and get_pass("quantize").requirements(fixed) == set()
    assert get_pass("calibrate").provides == ("calibration",)
    assert unmet_requirements([("_test_needs", {"fact": "x"}), ("_test_needs", {}), ("_test_needs", {"fact": "x"})]) \
        == ["x", "calibration"]
    assert unmet_requirements([("_test_gives_calibration", {}), ("_test_needs", {}), ("quantize", auto)]) == []
    # calibration is decided by the declarations: any pass requiring it, any pass providing it
    assert pipeline_needs_calibration([("_test_needs", {})])
    assert not pipeline_needs_calibration([("_test_gives_calibration", {}), ("quantize", auto)])
    assert pipeline_needs_calibration([("quantize", auto), ("_test_gives_calibration", {})])
    assert not pipeline_needs_calibration([("quantize", fixed)])
