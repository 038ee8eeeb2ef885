"""Per-node mixed precision and sparsity in search (``[space.compression]``), size objectives and the
size budget, with a fake trainer (real tiny models, graphs and passes; no training)."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph
from mase_lite.models import ModelConfig
from search.config import RunConfig
from search.lifecycle import Lifecycle
from search.space import (COMPRESS_PREFIX, CompressionSpace, CompressionSpaceConfig, SearchSpace, SpaceConfig,
                          format_entry)
from search.study import run_search
from search.summary import choices_str, format_summary

optuna.logging.set_verbosity(optuna.logging.ERROR)

TINY = {"num_hidden_layers": [1], "num_attention_heads": [2], "hidden_size": [8, 12], "intermediate_size": [16]}
#: The linear nodes of a one-layer BERT classifier, in graph order.
LINEARS = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key",
           "bert.encoder.layer.0.attention.self.value", "bert.encoder.layer.0.attention.output.dense",
           "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense", "bert.pooler.dense",
           "classifier"]


def mp_config(compression=None, **search) -> RunConfig:
    return RunConfig.from_dict({
        "search": {"name": "mp", "samplers": ["random"], "variants": ["compress"], "n_trials": 3,
                   "gc_after_trial": False, **search},
        "space": {**TINY, "compression": compression if compression is not None else
                  {"formats": ["integer"], "widths": [4, 8], "frac_widths": [2, 3], "sparsities": [0.0, 0.5]}},
        "model": {"vocab_size": 64, "max_position_embeddings": 32},
        "data": {"max_length": 16, "n_val": 8},
        "train": {"progress": False},
    })


def tiny_graph(hidden: int = 8) -> MaseGraph:
    return Lifecycle().build(ModelConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=hidden,
                                         intermediate_size=16, vocab_size=64, max_position_embeddings=32))


def trials_of(result, name=None):
    storage = optuna.storages.RDBStorage(result.storage_url)
    return optuna.load_study(study_name=name or result.studies[0].name, storage=storage).get_trials()


def node_meta(graph: MaseGraph) -> dict[str, dict]:
    """module path -> the annotations the quantize and prune passes left on its linear node."""
    return {graph.meta(n).module_path: graph.meta(n).annotations for n in graph.nodes
            if graph.meta(n).op == "linear"}


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("field", ["formats", "widths", "frac_widths", "sparsities", "roles"])
def test_an_empty_list_names_the_field(field):
    comp = {"formats": ["integer"], "widths": [8], "frac_widths": [4], "sparsities": [0.0], field: []}
    with pytest.raises(ConfigError, match=f"space.compression.{field} is an empty list"):
        mp_config(comp)


@pytest.mark.parametrize("comp, match", [
    ({"formats": ["integr"]}, r"space.compression.formats\[0\] = 'integr' is not valid \(did you mean 'integer'\?\); "
                              r"choose one of: .*'integer'"),
    ({"widths": [1]}, r"space.compression.widths\[0\] = 1 is out of range; it must be in \[2, 32\]"),
    ({"widths": [4, 8], "frac_widths": [2, 6]}, r"space.compression.frac_widths\[1\] = 6 is out of range; "
                                                r"it must be in \[0, 4\]"),
    ({"frac_widths": ["automatic"]}, r"frac_widths\[0\] = 'automatic' is not valid.*'auto'"),
    ({"sparsities": [0.5, 1.5]}, r"space.compression.sparsities\[1\] = 1.5 is out of range"),
    ({"roles": ["data_out"]}, r"space.compression.roles\[0\] = 'data_out' is not valid.*; choose one of: 'data_in', "
                              r"'weight', 'bias'"),
    ({"widths": [8, 8]}, r"space.compression.widths = \[8, 8\] has repeated values"),
    ({"formats": ["integer"], "frac_width": [2]}, r"unknown config key 'space.compression.frac_width'"),
])
def test_bad_compression_space(comp, match):
    with pytest.raises(ConfigError, match=match):
        mp_config({"formats": ["integer"], "widths": [8], "frac_widths": [4], **comp})


def test_compression_space_needs_a_compressing_variant_and_no_grid(tmp_path):
    with pytest.raises(ConfigError, match="space.compression .* needs a compressing variant.*'baseline'"):
        mp_config(variants=["baseline"])
    with pytest.raises(ConfigError, match="per-node compression choices .* no fixed grid"):
        run_search(mp_config(samplers=["grid"]), tmp_path / "run")
    assert not (tmp_path / "run" / "optuna.db").exists()


def test_space_config_round_trips_and_the_fingerprint_only_gains_a_key_when_set():
    cfg = mp_config()
    again = RunConfig.from_dict(cfg.to_dict())
    assert again.space.compression == cfg.space.compression
    plain = SpaceConfig.from_dict(TINY)
    assert "compression" not in SearchSpace.from_config(plain).to_dict()  # studies made before it stay valid
    d = SearchSpace.from_config(cfg.space).to_dict()
    assert d["compression"]["widths"] == [4, 8] and d["compression"]["frac_widths"] == [2, 3]


# --------------------------------------------------------------------------- sampling and the pipeline


def test_suggest_samples_every_linear_node_and_the_pipeline_sets_them(tmp_path):
    graph = tiny_graph()
    space = CompressionSpace(CompressionSpaceConfig(formats=["integer"], widths=[4, 6, 8], frac_widths=[1, 2, 3],
                                                    sparsities=[0.0, 0.25, 0.5]))
    assert space.candidates(graph) == LINEARS
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    choices = space.suggest(trial, graph)
    assert list(choices) == LINEARS
    for path, c in choices.items():
        assert c == {"format": "integer", "width": trial.params[f"{COMPRESS_PREFIX}{path}:width"],
                     "frac_width": trial.params[f"{COMPRESS_PREFIX}{path}:frac_width"],
                     "sparsity": trial.params[f"{COMPRESS_PREFIX}{path}:sparsity"]}
    assert len({c["width"] for c in choices.values()}) > 1  # really per node (seed 3 mixes them)
    pipeline = space.pipeline(choices)
    compressed = Lifecycle().compress(graph, pipeline)
    meta = node_meta(compressed)
    for path, c in choices.items():
        quant = meta[path]["quant"]
        for role in ("data_in", "weight", "bias"):
            assert (quant[role]["width"], quant[role]["frac_width"]) == (c["width"], c["frac_width"]), (path, role)
        assert quant["data_out"] is None
        prune = meta[path].get("prune")
        if c["sparsity"] == 0:
            assert prune is None or not prune["weight_mask"]
        else:  # exactly round(s * n) weights pruned in this node's tensor
            assert prune["weight_pruned"] == round(c["sparsity"] * prune["weight_numel"])
            w = compressed.gm.get_parameter(f"{path}.weight").detach()
            assert int((w == 0).sum()) >= prune["weight_pruned"]


def test_sampled_integer_weights_are_on_the_sampled_grid():
    """Independent check of the graph's arithmetic: each node's quantised weight, recomputed from
    the raw weight with the sampled (width, frac) by the fixed-point formula, is what the node uses."""
    graph = tiny_graph()
    space = CompressionSpace(CompressionSpaceConfig(widths=[4, 8], frac_widths=[2, 4]))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    choices = space.suggest(trial, graph)
    raw = {p: graph.gm.get_parameter(f"{p}.weight").detach().clone() for p in choices}
    out = Lifecycle().compress(graph, space.pipeline(choices))
    from passes.formats import format_from_spec

    for node in out.gm.graph.nodes:
        path = out.meta(node).module_path if node.op == "call_function" else None
        if path in choices and node.kwargs.get("weight_q") is not None:
            c = choices[path]
            w, f = c["width"], c["frac_width"]
            expect = torch.clamp(torch.round(raw[path] * 2 ** f), -2 ** (w - 1), 2 ** (w - 1) - 1) / 2 ** f
            got = format_from_spec(node.kwargs["weight_q"]).quantize(raw[path], channel_dim=0)
            assert torch.equal(got, expect), path


def test_other_formats_map_to_the_node_formats():
    """scaled_integer (per-channel weight scales) and minifloat (width 8 = e4m3) per node."""
    graph = tiny_graph()
    space = CompressionSpace(CompressionSpaceConfig(formats=["integer", "scaled_integer", "minifloat"],
                                                    widths=[8], frac_widths=[4], roles=["weight"]))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    choices = space.suggest(trial, graph)
    assert {c["format"] for c in choices.values()} == {"integer", "scaled_integer", "minifloat"}
    assert all((c["frac_width"] is None) == (c["format"] != "integer") for c in choices.values())
    raw = {p: graph.gm.get_parameter(f"{p}.weight").detach().clone() for p in choices}
    out = Lifecycle().compress(graph, space.pipeline(choices))
    meta = node_meta(out)
    for path, c in choices.items():
        w = meta[path]["quant"]["weight"]
        assert meta[path]["quant"]["data_in"] is None  # roles = ["weight"]
        if c["format"] == "scaled_integer":
            assert (w["name"], w["width"], w["granularity"]) == ("scaled_integer", 8, "per_channel")
            # independent check: symmetric int8 with scale max|w_row| / 127 per output channel
            scale = raw[path].abs().amax(dim=1, keepdim=True) / 127
            expect = torch.clamp(torch.round(raw[path] / scale), -127, 127) * scale
            got = out.gm.get_parameter(f"{path}.weight").detach()
            from passes.formats import format_from_dict
            q = format_from_dict(w).quantize(got, channel_dim=0)
            torch.testing.assert_close(q, expect, rtol=1e-6, atol=1e-7)
        elif c["format"] == "minifloat":
            assert (w["name"], w["exponent_width"], w["mantissa_width"]) == ("minifloat", 4, 3)
        else:
            assert (w["width"], w["frac_width"]) == (8, 4)


def test_pipeline_without_sparsity_has_no_prune_pass_and_formats_map_per_role():
    space = CompressionSpace(CompressionSpaceConfig(roles=["weight"]))
    choices = {"a": {"format": "integer", "width": 8, "frac_width": "auto", "sparsity": 0.0}}
    assert space.pipeline(choices) == {"passes": {"quantize": {
        "by": "name", "a": {"config": {"name": "integer", "weight_width": 8, "weight_frac_width": "auto"}}}}}
    choices["b"] = {"format": "integer", "width": 4, "frac_width": 2, "sparsity": 0.75}
    prune = space.pipeline(choices)["passes"]["prune"]
    assert prune["nodes"] == {"b": {"weight": {"sparsity": 0.75}}} and prune["weight"]["sparsity"] == 0.0
    assert format_entry("integer", 6, 3, ["data_in", "bias"]) == {
        "name": "integer", "data_in_width": 6, "data_in_frac_width": 3, "bias_width": 6, "bias_frac_width": 3}


def test_choices_str_counts_formats_and_sparsities():
    choices = {"a": {"format": "integer", "width": 8, "frac_width": "auto", "sparsity": 0.0},
               "b": {"format": "integer", "width": 4, "frac_width": 2, "sparsity": 0.5},
               "c": {"format": "integer", "width": 8, "frac_width": "auto", "sparsity": 0.5}}
    assert choices_str(choices) == "int4/f2:1 int8:2 | s0.5:2"
    assert choices_str(None) == "-"


# --------------------------------------------------------------------------- trials


def test_trial_compresses_with_its_sampled_choices(fake_training, tmp_path):
    cfg = mp_config(n_trials=3, seeds=[2])
    result = run_search(cfg, tmp_path / "run")
    done = [t for t in trials_of(result) if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        choices = t.user_attrs["compression_choices"]
        assert list(choices) == LINEARS
        for path, c in choices.items():
            assert c["width"] == t.params[f"{COMPRESS_PREFIX}{path}:width"]
            assert c["sparsity"] == t.params[f"{COMPRESS_PREFIX}{path}:sparsity"]
    # the saved best graph carries the sampled formats in its node metadata (after save and load)
    best = result.summary[0]["best"][0]
    trial = next(t for t in done if t.number == best["trial"])
    graph = MaseGraph.load(trial.user_attrs["graph_dir"])
    meta = node_meta(graph)
    for path, c in trial.user_attrs["compression_choices"].items():
        assert meta[path]["quant"]["weight"]["width"] == c["width"]
        assert meta[path]["quant"]["weight"]["frac_width"] == c["frac_width"]
        pruned = (meta[path].get("prune") or {}).get("weight_pruned", 0)
        assert pruned == round(c["sparsity"] * graph.gm.get_parameter(f"{path}.weight").numel())
    # the trial records the zeros from pruning and from rounding (cost pass, non-embedding parameters)
    for t in done:
        cost, sp = t.user_attrs["cost"], t.user_attrs["sparsity"]
        n_pruned = sum(round(c["sparsity"] * graph.gm.get_parameter(f"{p}.weight").numel())
                       for p, c in t.user_attrs["compression_choices"].items())
        assert cost["pruned_non_embedding"] == n_pruned
        assert sp["pruned_fraction"] == pytest.approx(n_pruned / cost["params_non_embedding"])
        assert sp["rounding_zero_fraction_of_kept"] == pytest.approx(
            cost["rounding_zeros_non_embedding"] / (cost["params_non_embedding"] - n_pruned))
        assert sp["effective_sparsity"] >= sp["pruned_fraction"] + sp["rounding_zero_fraction"] - 1e-9
    assert "round0" in format_summary(result.summary)
    # a lower-bit trial is smaller: size is the cost pass's compressed bytes
    sizes = {t.number: t.user_attrs["cost"]["size_bytes_compressed"] for t in done}
    assert len(set(sizes.values())) == 3


def test_same_seed_same_choices_other_seed_other_choices(fake_training, tmp_path):
    a = run_search(mp_config(samplers=["tpe"], n_trials=3, seeds=[4]), tmp_path / "a")
    b = run_search(mp_config(samplers=["tpe"], n_trials=3, seeds=[4]), tmp_path / "b")
    c = run_search(mp_config(samplers=["tpe"], n_trials=3, seeds=[5]), tmp_path / "c")
    pa = [(t.params, t.user_attrs["compression_choices"]) for t in trials_of(a)]
    assert pa == [(t.params, t.user_attrs["compression_choices"]) for t in trials_of(b)]
    assert pa != [(t.params, t.user_attrs["compression_choices"]) for t in trials_of(c)]


def test_combines_with_identity_choices(fake_training, tmp_path):
    result = run_search(mp_config(samplers=["random+nodes"], n_trials=4, seeds=[1]), tmp_path / "run")
    done = [t for t in trials_of(result) if t.state == TrialState.COMPLETE]
    with_identity = [t for t in done if t.user_attrs["arch"]["identity"]]
    assert with_identity, "seed 1 replaces some square linear by an identity"
    for t in done:
        identity = set(t.user_attrs["arch"]["identity"])
        assert set(t.user_attrs["compression_choices"]) == set(LINEARS) - identity


# --------------------------------------------------------------------------- objectives


def _size_aware(fake):
    """Make the fake's compressed accuracy grow with the graph's compressed size (bigger = better),
    so the size budget really trades accuracy."""
    lc = Lifecycle()
    base = fake.train_and_eval

    def train_and_eval(graph, splits, cfg, train=True, **kw):
        out = base(graph, splits, cfg, train, **kw)
        if any(name == "quantize" for name, _ in graph.history):
            out["accuracy"] = 0.5 + lc.cost(graph)["size_bytes_compressed"] / 1e6
        return out

    fake.train_and_eval = train_and_eval


def test_nsga2_pareto_front_of_accuracy_and_compressed_size(fake_training, tmp_path):
    _size_aware(fake_training)
    cfg = mp_config(samplers=["nsga2"], n_trials=6, seeds=[0])
    cfg.search.sampler_options.nsga2_population = 4
    result = run_search(cfg, tmp_path / "run")
    done = [t for t in trials_of(result) if t.state == TrialState.COMPLETE]
    for t in done:
        assert t.values[0] == t.user_attrs["accuracy"]
        assert t.values[1] == t.user_attrs["cost"]["size_bytes_compressed"]
    front = {b["trial"] for b in result.summary[0]["best"]}

    def dominated(t):
        return any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done)

    assert front == {t.number for t in done if not dominated(t)}
    assert len(front) >= 2  # accuracy grows with size here: a real trade-off


def test_size_budget_makes_big_trials_infeasible_and_best_is_feasible(fake_training, tmp_path):
    _size_aware(fake_training)
    probe = run_search(mp_config(n_trials=6, seeds=[3]), tmp_path / "probe")
    sizes = sorted(t.user_attrs["cost"]["size_bytes_compressed"] for t in trials_of(probe)
                   if t.state == TrialState.COMPLETE)
    budget = (sizes[2] + sizes[3]) / 2  # half the probe's trials fit
    result = run_search(mp_config(n_trials=6, seeds=[3], size_budget_bytes=budget), tmp_path / "run")
    done = [t for t in trials_of(result) if t.state == TrialState.COMPLETE]
    for t in done:
        size = t.user_attrs["cost"]["size_bytes_compressed"]
        assert t.user_attrs["feasible"] == (size <= budget)
        assert t.constraints == {"size_budget_bytes": pytest.approx(size - budget)}
    feasible = [t for t in done if t.user_attrs["feasible"]]
    infeasible = [t for t in done if not t.user_attrs["feasible"]]
    assert feasible and infeasible
    best = result.summary[0]["best"][0]
    assert best["trial"] == max(feasible, key=lambda t: t.value).number
    assert max(t.value for t in infeasible) > best["accuracy"]  # the budget, not accuracy, ruled them out
    saved = [t.number for t in done if t.user_attrs.get("graph_dir")]
    assert all(t.user_attrs["feasible"] for t in done if t.number in saved)  # no graph saved for infeasible
    with pytest.raises(ConfigError, match="search.size_budget_bytes = 0.0 is out of range"):
        mp_config(size_budget_bytes=0)


# --------------------------------------------------------------------------- summary


def test_summary_shows_pruning_and_rounding_zeros():
    summary = [{"study": "s", "trials": {"complete": 1, "fail": 0, "pruned": 0}, "directions": ["maximize"],
                "best": [{"trial": 0, "accuracy": 0.8, "accuracy_trained": 0.85, "accuracy_compressed": 0.8,
                          "accuracy_finetuned": None, "arch": None, "seconds": 1.0,
                          "cost": {"params": 10, "size_bytes_fp32": 4e6, "size_bytes_compressed": 1e6},
                          "sparsity": {"pruned_fraction": 0.5, "rounding_zero_fraction": 0.35,
                                       "rounding_zero_fraction_of_kept": 0.7, "effective_sparsity": 0.85},
                          "compression_choices": {"a": {"format": "integer", "width": 8, "frac_width": 4,
                                                        "sparsity": 0.5}}}]}]
    text = format_summary(summary)
    head, _, row = text.splitlines()[:3]
    assert head.split()[-4:] == ["pruned", "round0", "zeros", "formats"]
    assert row.split()[-6:] == ["50.0%", "70.0%", "85.0%", "int8/f4:1", "|", "s0.5:1"]
    assert "rounds to zero" in text
    summary[0]["best"][0]["compression_choices"] = None
    summary[0]["best"][0]["sparsity"] = {k: 0.0 for k in summary[0]["best"][0]["sparsity"]}
    assert "round0" not in format_summary(summary)  # an uncompressed model (all zeros 0.0): the old table
    summary[0]["best"][0]["sparsity"] = {}
    assert "round0" not in format_summary(summary)  # uncompressed studies keep the old table


def test_a_reused_duplicate_keeps_its_choices_and_the_budget(fake_training, tmp_path):
    """One point in the space: the second trial reuses the first's result (no training), and is
    just as infeasible under a budget below its size."""
    comp = {"formats": ["integer"], "widths": [8], "frac_widths": [4], "sparsities": [0.5]}
    cfg = mp_config(comp, n_trials=2, size_budget_bytes=100)
    cfg.space.hidden_size = [8]
    result = run_search(cfg, tmp_path / "run")
    first, second = trials_of(result)
    assert second.user_attrs.get("reused_from") == first.number
    assert len([c for c in fake_training.calls if c[2]]) == 1  # trained once
    for t in (first, second):
        assert t.user_attrs["feasible"] is False and t.constraints["size_budget_bytes"] > 0
        assert t.user_attrs["compression_choices"] == first.user_attrs["compression_choices"]
        assert t.user_attrs["sparsity"]["pruned_fraction"] > 0
    assert result.summary[0]["best"] == []  # nothing feasible: no best


@pytest.mark.parametrize("reuse", [False, True])
def test_reuse_trained_trains_each_architecture_once(fake_training, tmp_path, reuse):
    cfg = mp_config(n_trials=3, seeds=[2], reuse_trained=reuse)
    cfg.space.hidden_size = [8]  # one architecture: trials differ in their compression choices only
    result = run_search(cfg, tmp_path / "run")
    done = [t for t in trials_of(result) if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and len({repr(t.params) for t in done}) == 3
    trained = [c for c in fake_training.calls if c[2]]
    assert len(trained) == (1 if reuse else 3)
    assert len({t.user_attrs["accuracy_trained"] for t in done}) == 1
    assert [t.user_attrs.get("trained_reused_from") for t in done] == ([None, 0, 0] if reuse else [None] * 3)
    # each trial still compresses its own copy with its own choices
    assert len({t.user_attrs["cost"]["size_bytes_compressed"] for t in done}) == 3


def test_a_format_that_takes_some_widths_samples_only_those():
    """widths = [4, 8] with minifloat (8 or 16 bits only): a node that samples minifloat draws its width
    from [8] (parameter ``...:width:minifloat``), so no sampled combination is unbuildable; integer
    keeps the shared ``...:width`` over [4, 8]. A width no format takes is a config error."""
    graph = tiny_graph()
    space = CompressionSpace(CompressionSpaceConfig(formats=["integer", "minifloat"], widths=[4, 8], roles=["weight"]))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(6):
        trial = study.ask()
        choices = space.suggest(trial, graph)
        for path, c in choices.items():
            seen.add((c["format"], c["width"]))
            key = f"compress:{path}:width" + (":minifloat" if c["format"] == "minifloat" else "")
            assert trial.params[key] == c["width"]
        space.pipeline(choices)  # every sampled choice builds
        study.tell(trial, 0.5)
    assert ("minifloat", 4) not in seen and {("minifloat", 8), ("integer", 4), ("integer", 8)} <= seen
    with pytest.raises(ConfigError, match=r"widths = \[4\]: none suits the minifloat format"):
        CompressionSpaceConfig(formats=["integer", "minifloat"], widths=[4]).validate("space.compression")
