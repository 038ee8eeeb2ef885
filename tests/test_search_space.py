"""Search spaces and samplers: sampling, buildability, the grid, per-node choices, reading a graph back."""

from __future__ import annotations

import optuna
import pytest

from mase_lite.errors import ConfigError
from mase_lite.models import ModelConfig
from search.lifecycle import Lifecycle
from search.objectives import ArchitectureMismatch, check_architecture
from search.samplers import SamplerOptions, make_sampler, parse_sampler
from search.space import (
    NODE_PREFIX,
    InvalidArchitecture,
    ModelSpace,
    NodeSpace,
    SearchSpace,
    SpaceConfig,
    describe_graph,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)

TINY = dict(vocab_size=120, max_position_embeddings=32)


def space_cfg(**kw) -> SpaceConfig:
    base = dict(num_hidden_layers=[1, 2], num_attention_heads=[2, 3], hidden_size=[12, 16], intermediate_size=[24])
    base.update(kw)
    return SpaceConfig.from_dict(base)


@pytest.fixture(scope="module")
def graph_2l():
    """L2 A4 H16 I32: square linears are q/k/v/attention-out of each layer and the pooler."""
    return Lifecycle().build(ModelConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=16, intermediate_size=32,
                                   seed=0, **TINY))


# --------------------------------------------------------------------------- config


def test_space_defaults_are_lab2():
    cfg = SpaceConfig()
    assert cfg.num_hidden_layers == [2, 4, 8]
    assert cfg.num_attention_heads == [2, 4, 8, 16]
    assert cfg.hidden_size == [128, 192, 256, 384, 512]
    assert cfg.intermediate_size == [512, 768, 1024, 1536, 2048]
    assert ModelSpace(cfg).n_valid() == 3 * 4 * 5 * 5  # every Lab 2 hidden size divides by every head count


@pytest.mark.parametrize("data, match", [
    ({"hidden_size": []}, "hidden_size is an empty list"),
    ({"num_hidden_layers": [2, 2]}, "repeated"),
    ({"num_attention_heads": [0]}, r"num_attention_heads\[0\] = 0 is out of range"),
    ({"node_choices": []}, "node_choices is an empty list"),
    ({"node_choices": ["linear", "zero"]}, "node_choices\\[1\\] = 'zero' is not valid"),
    ({"num_layers": [2]}, "unknown config key 'space.num_layers'.*num_hidden_layers"),
    ({"hidden_size": [10], "num_attention_heads": [3, 4]}, "no combination of the space can be built"),
])
def test_space_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        SpaceConfig.from_dict(data, path="space")


# --------------------------------------------------------------------------- model-level space


def test_model_space_suggest_builds_config_on_base():
    space = ModelSpace(space_cfg(), ModelConfig(**TINY))
    trial = optuna.trial.FixedTrial({"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 16,
                                     "intermediate_size": 24})
    cfg = space.suggest(trial)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size) == (2, 2, 16, 24)
    assert cfg.vocab_size == 120  # the base's fixed fields are kept


def test_unbuildable_combination_is_pruned_with_reason():
    space = ModelSpace(space_cfg())
    trial = optuna.trial.FixedTrial({"num_hidden_layers": 1, "num_attention_heads": 3, "hidden_size": 16,
                                     "intermediate_size": 24})
    with pytest.raises(InvalidArchitecture, match="hidden_size 16 is not divisible by num_attention_heads 3") as exc:
        space.suggest(trial)
    assert isinstance(exc.value, optuna.TrialPruned)


def test_grid_enumerates_each_combination_once_and_prunes_unbuildable():
    space = SearchSpace.from_config(space_cfg(), ModelConfig(**TINY))
    grid = space.grid_search_space()
    assert grid == {"num_hidden_layers": [1, 2], "num_attention_heads": [2, 3], "hidden_size": [12, 16],
                    "intermediate_size": [24]}
    study = optuna.create_study(sampler=make_sampler("grid", space, seed=0))
    study.optimize(lambda t: space.model.suggest(t).hidden_size, n_trials=50)  # the grid stops the study itself
    assert len(study.trials) == 8
    combos = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(combos) == 8
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert {(t.params["num_attention_heads"], t.params["hidden_size"]) for t in pruned} == {(3, 16)}
    assert space.model.n_valid() == 6


def test_grid_with_per_node_choices_is_an_error():
    space = SearchSpace.from_config(space_cfg(), with_nodes=True)
    with pytest.raises(ConfigError, match="grid sampler samples model-level parameters only"):
        space.grid_search_space()
    with pytest.raises(ConfigError, match="'grid\\+nodes' is not possible"):
        parse_sampler("grid+nodes")


# --------------------------------------------------------------------------- samplers


def test_parse_sampler():
    assert parse_sampler("tpe") == ("tpe", False)
    assert parse_sampler("tpe+nodes") == ("tpe", True)
    assert parse_sampler("random+nodes") == ("random", True)
    with pytest.raises(ConfigError, match="'tpee' is not valid.*did you mean 'tpe'"):
        parse_sampler("tpee")
    with pytest.raises(ConfigError, match="is not valid"):
        make_sampler("cmaes", SearchSpace.from_config(space_cfg()), 0)


@pytest.mark.parametrize("name", ["random", "tpe", "nsga2"])
def test_samplers_are_seeded(name):
    space = SearchSpace.from_config(space_cfg(hidden_size=[12, 24, 36], intermediate_size=[8, 16, 24, 32]))
    opts = SamplerOptions(tpe_startup_trials=2, nsga2_population=4)

    def params(seed):
        study = optuna.create_study(sampler=make_sampler(name, space, seed, opts))
        study.optimize(lambda t: space.model.suggest(t).intermediate_size / 10, n_trials=12)
        return [t.params for t in study.trials]

    assert params(3) == params(3)
    assert params(3) != params(4)


# --------------------------------------------------------------------------- per-node choices


def test_node_candidates_are_the_square_linears(graph_2l):
    cands = NodeSpace.candidates(graph_2l)
    expected = [f"bert.encoder.layer.{i}.attention.{m}" for i in range(2)
                for m in ("self.query", "self.key", "self.value", "output.dense")] + ["bert.pooler.dense"]
    assert cands == expected  # not intermediate (16->32), output (32->16) nor the classifier (16->2)


def test_node_space_suggests_a_dynamic_parameter_per_candidate(graph_2l):
    cands = NodeSpace.candidates(graph_2l)
    choice = {NODE_PREFIX + p: ("identity" if i % 3 == 0 else "linear") for i, p in enumerate(cands)}
    chosen = NodeSpace().suggest(optuna.trial.FixedTrial(choice), graph_2l)
    assert chosen == [p for i, p in enumerate(cands) if i % 3 == 0]
    # in a real study the parameters are named after the modules and take both values
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: len(NodeSpace().suggest(t, graph_2l)), n_trials=6)
    assert set(study.trials[0].params) == {NODE_PREFIX + p for p in cands}
    assert {v for t in study.trials for v in t.params.values()} == {"linear", "identity"}


# --------------------------------------------------------------------------- reading the architecture back


@pytest.mark.parametrize("layers, heads, hidden, inter, attn", [
    (1, 2, 16, 48, "eager"),
    (3, 4, 16, 16, "eager"),  # intermediate == hidden: the feed-forward linears are square too
    (2, 8, 32, 24, "sdpa"),
])
def test_describe_graph_reads_the_built_architecture(layers, heads, hidden, inter, attn):
    cfg = ModelConfig(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=hidden,
                      intermediate_size=inter, seed=0, **TINY)
    seen = describe_graph(Lifecycle(attn_implementation=attn).build(cfg))
    assert (seen["num_hidden_layers"], seen["num_attention_heads"], seen["hidden_size"], seen["intermediate_size"]) \
        == (layers, heads, hidden, inter)


def test_check_architecture_catches_ignored_knobs(graph_2l):
    """MASE's tutorial sets config.num_layers/num_heads, which BertConfig ignores: the check must notice."""
    good = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 16, "intermediate_size": 32}
    check_architecture(graph_2l, good)
    with pytest.raises(ArchitectureMismatch, match="num_hidden_layers: sampled 4, graph has 2"):
        check_architecture(graph_2l, {**good, "num_hidden_layers": 4})
    with pytest.raises(ArchitectureMismatch, match="num_attention_heads: sampled 8, graph has 4"):
        check_architecture(graph_2l, {**good, "num_attention_heads": 8})
    with pytest.raises(ArchitectureMismatch, match="still present"):
        check_architecture(graph_2l, {**good, "identity": ["bert.pooler.dense"]})
