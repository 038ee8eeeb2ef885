"""The pass contract, checked for every registered pass with the example it is registered with.

* A pass run on a copy leaves the original as it was: code, node metadata, annotations, tensors,
  history (``MaseGraph.copy`` gives every node its own metadata).
* A pass that annotates and then fails leaves its input graph unchanged, annotations included.
* A pass never writes into its config: it returns what it decided (``PassResult.decisions``), the
  runner records the config with those decisions, and a saved graph replays bit for bit from them.

A pass registered without an example (``register_pass(..., example=...)``) fails these tests.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass

import pytest
import torch

from mase_lite import MaseGraph, PassError, trace
from mase_lite.config import Config
from mase_lite.models import ModelConfig, build_model, example_inputs, random_inputs
from passes import PASSES, PassSpec, available_passes, get_pass, run_pass, run_pipeline
from passes.registry import PassExample, PassResult, example_context

#: A 2-layer, 2-head, 32-wide BERT classifier: every pass's example runs on it.
CFG = ModelConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                  vocab_size=500, max_position_embeddings=64, seed=0)

#: Every registered pass (listed when this module is collected, built-in passes included).
PASS_NAMES = available_passes()


@functools.lru_cache(maxsize=1)
def _traced() -> MaseGraph:
    model = build_model(CFG).eval()
    return trace(model, example_inputs(model))


@pytest.fixture(scope="module")
def base() -> MaseGraph:
    """The traced model as a search from a checkpoint holds it: calibrated (annotations and a history
    entry) and with a note on every node, so a change to any node's annotations shows."""
    g = _traced().copy()
    run_pass(g, "calibrate", {"num_batches": 1}, context=example_context(g, num_batches=1))
    for i, n in enumerate(g.nodes):
        g.set_annotation(n, "note", {"index": i})
    assert g.history and all(g.meta(n).annotations for n in g.nodes)
    return g


def _example(name: str) -> PassExample:
    example = get_pass(name).example
    if example is None:
        pytest.fail(f"pass {name!r} is registered without an example: give register_pass(..., example=...) a config "
                    f"that runs it on a tiny BERT (a passes.registry.PassExample with a context factory if it "
                    f"needs data)", pytrace=False)
    return example


def _snapshot(g: MaseGraph) -> dict:
    return {
        "code": g.gm.code,
        "nodes": [(n.name, sorted(n.meta), copy.deepcopy(g.meta(n))) for n in g.nodes],
        "tensors": {k: (t, t.detach().clone()) for k, t in g.gm.state_dict(keep_vars=True).items()},
        "history": [(h[0], copy.deepcopy(h[1]), h.version) for h in g.history],
    }


def _assert_unchanged(g: MaseGraph, before: dict) -> None:
    now = _snapshot(g)
    assert now["code"] == before["code"], "the graph's code changed"
    assert [n[:2] for n in now["nodes"]] == [n[:2] for n in before["nodes"]], "the nodes changed"
    changed = [(name, m.annotations) for (name, _, m), (_, _, m0) in zip(now["nodes"], before["nodes"]) if m != m0]
    assert not changed, f"{len(changed)} nodes' metadata changed, e.g. {changed[0]}"
    assert now["tensors"].keys() == before["tensors"].keys(), "tensors were added or removed"
    for k, (t, _) in now["tensors"].items():
        t0, value = before["tensors"][k]
        assert t is t0 and torch.equal(t.detach(), value), f"tensor {k} changed"
    assert now["history"] == before["history"], "the history changed"


def _inputs(g: MaseGraph) -> dict:
    return random_inputs(g.input_names, g.model_info["hf_config"], batch=3, seq=9, seed=5)


def test_a_copy_gives_every_node_its_own_metadata(base):
    trial = base.copy()
    pairs = list(zip(base.nodes, trial.nodes))
    assert all(base.meta(a) == trial.meta(b) for a, b in pairs)
    assert all(base.meta(a) is not trial.meta(b) for a, b in pairs)
    assert all(base.meta(a).annotations["note"] is not trial.meta(b).annotations["note"] for a, b in pairs)
    node = next(iter(trial.nodes))
    trial.set_annotation(node, "note", "trial's own")
    assert base.meta(node.name).annotations["note"] == {"index": 0}


@pytest.mark.parametrize("name", PASS_NAMES)
def test_a_pass_run_on_a_copy_leaves_the_original_unchanged(base, name):
    example = _example(name)
    before = _snapshot(base)
    trial = base.copy()
    run_pass(trial, name, copy.deepcopy(dict(example.config)), context=example.make_context(trial))
    _assert_unchanged(base, before)
    added = len(trial.history) - len(base.history)
    assert added == (1 if get_pass(name).in_history else 0)


@dataclass
class _NoConfig(Config):
    """No options."""


def _annotate_then_fail(graph: MaseGraph, config: _NoConfig):
    for n in graph.nodes:
        if "note" in graph.meta(n).annotations:  # (nodes a pass added have none)
            graph.meta(n).annotations["note"]["index"] = -1  # even an in-place edit of a value is rolled back
        graph.set_annotation(n, "failing", True)
    raise RuntimeError("boom after annotating")


@pytest.mark.parametrize("kind", ["transform", "analysis"])
def test_a_pass_that_annotates_and_then_raises_leaves_its_input_unchanged(base, kind, monkeypatch):
    monkeypatch.setitem(PASSES, "_annotate_then_fail", PassSpec("_annotate_then_fail", _annotate_then_fail,
                                                                _NoConfig, kind))
    g = base.copy()
    before = _snapshot(g)
    with pytest.raises(PassError, match="boom after annotating"):
        run_pass(g, "_annotate_then_fail", {})
    _assert_unchanged(g, before)
    with pytest.raises(PassError, match="boom after annotating"):  # after a pass that annotated and succeeded
        run_pipeline(g, [("prune", _example("prune").config), ("_annotate_then_fail", {})])
    _assert_unchanged(g, before)


# ------------------------------------------------------------------------------------------
# Configs are read-only to passes: a frozen config refuses every write.


def _refuse(self, *args, **kwargs):
    raise TypeError(f"a pass wrote into its config (a {type(self).__name__.removeprefix('_Frozen')} in it)")


class _FrozenDict(dict):
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __deepcopy__(self, memo):
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}


class _FrozenList(list):
    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __iadd__ = __imul__ = _refuse

    def __deepcopy__(self, memo):
        return [copy.deepcopy(v, memo) for v in self]


@functools.cache
def _frozen_class(cls: type) -> type:
    """A subclass of the config class ``cls`` whose frozen instances refuse attribute writes (copies,
    and new instances ``dataclasses.replace`` makes, are ordinary)."""

    def setattr_(self, key, value):
        if self.__dict__.get("_frozen"):
            raise TypeError(f"a pass wrote {cls.__name__}.{key} of its config")
        object.__setattr__(self, key, value)

    def eq(self, other):  # compares with the unfrozen class as the dataclass would
        if not isinstance(other, cls):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(cls) if f.compare)

    def deepcopy_(self, memo):
        return cls(**{f.name: copy.deepcopy(getattr(self, f.name), memo) for f in dataclasses.fields(cls) if f.init})

    return type(f"_Frozen{cls.__name__}", (cls,), {"__setattr__": setattr_, "__delattr__": _refuse, "__eq__": eq,
                                                   "__hash__": None, "__deepcopy__": deepcopy_})


def freeze(value):
    """``value`` with every config, dict and list in it read-only (configs in place, containers copied)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            object.__setattr__(value, f.name, freeze(getattr(value, f.name)))
        object.__setattr__(value, "__class__", _frozen_class(type(value)))
        object.__setattr__(value, "_frozen", True)
        return value
    if isinstance(value, dict):
        return _FrozenDict((k, freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return _FrozenList(freeze(v) for v in value)
    return value


def test_a_frozen_config_refuses_writes():
    from passes.transforms.prune import PruneConfig

    cfg = freeze(PruneConfig.from_dict({"weight": {"sparsity": 0.5}, "nodes": {"classifier": {}}}))
    for write in (lambda: setattr(cfg, "by", "regex_name"), lambda: setattr(cfg.weight, "sparsity", 0.1),
                  lambda: cfg.nodes.update(x=None), lambda: cfg.nodes.pop("classifier")):
        with pytest.raises(TypeError, match="a pass wrote"):
            write()
    assert cfg == PruneConfig.from_dict({"weight": {"sparsity": 0.5}, "nodes": {"classifier": {}}})
    assert dataclasses.replace(cfg.weight, sparsity=0.25).sparsity == 0.25  # a new config is the pass's own


@pytest.mark.parametrize("name", PASS_NAMES)
def test_a_pass_returns_its_decisions_and_the_runner_records_them(base, name, tmp_path):
    spec, example = get_pass(name), _example(name)
    config = spec.config_cls.from_dict(copy.deepcopy(dict(example.config)), path=name)
    given = config.to_dict()
    direct = base.copy()
    context = [example.make_context(direct)] if spec.takes_context else []
    frozen = freeze(copy.deepcopy(config))
    result = PassResult(*spec.fn(direct, frozen, *context))  # any write into the config raises
    assert frozen.to_dict() == given
    decisions = result.decisions or {}
    assert set(decisions) <= {f.name for f in dataclasses.fields(config)}

    trial = base.copy()
    run_pass(trial, name, copy.deepcopy(dict(example.config)), context=example.make_context(trial))
    if not spec.in_history:
        assert not decisions and trial.history == base.history
        return
    want = dataclasses.replace(copy.deepcopy(config), **decisions).to_dict()
    assert trial.history[-1] == (name, want) and trial.history[-1].version == spec.version
    # the recorded decisions replay the same graph without data, bit for bit
    trial.eval().save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g")
    x = _inputs(trial)
    assert loaded.gm.code == trial.gm.code and loaded.history == trial.history
    for a, b in zip(loaded.nodes, trial.nodes, strict=True):  # the base's notes are not in its history
        assert loaded.meta(a).annotations == {k: v for k, v in trial.meta(b).annotations.items() if k != "note"}
    assert torch.equal(loaded(**x).logits, trial(**x).logits)


# ------------------------------------------------------------------------------------------
# The runner refuses passes that break the contract


def _writes_config(graph: MaseGraph, config: _ShrinkLike):
    config.keep = [0]
    return graph, {}


def _unknown_decision(graph: MaseGraph, config: _ShrinkLike):
    return PassResult(graph, {}, {"kept": [0]})


@dataclass
class _ShrinkLike(Config):
    keep: list[int] | None = None


@pytest.mark.parametrize("fn, match", [
    (_writes_config, r"pass '_bad' wrote into its config; a pass returns what it chose as PassResult"),
    (_unknown_decision, r"pass '_bad' returned the decision 'kept', which is not a field of _ShrinkLike; "
                        r"decisions are config fields: keep"),
])
def test_the_runner_refuses_a_pass_that_writes_its_config_or_returns_unknown_decisions(base, fn, match,
                                                                                      monkeypatch):
    monkeypatch.setitem(PASSES, "_bad", PassSpec("_bad", fn, _ShrinkLike, "transform"))
    g = base.copy()
    before = _snapshot(g)
    cfg = {"keep": [1]}
    with pytest.raises(PassError, match=match):
        run_pass(g, "_bad", cfg)
    assert cfg == {"keep": [1]}
    _assert_unchanged(g, before)
