"""The measured latency objectives (``search.latency``): interleaved timing, the deployable file timed
against an fp32 reference exported once per process, and an NSGA-II search on ``latency_ratio``."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from _compression_helpers import tiny_graph
from passes import run_pass
from passes.export.onnx import onnx_available
from search import latency as lat

optuna.logging.set_verbosity(optuna.logging.ERROR)

DEPLOY = {"by": "type", "linear": {"config": {"name": "dynamic_int8", "data_in": {}, "weight": {}}},
          "embedding": {"config": {"name": "dynamic_int8", "weight": {}}}}
needs_onnx = pytest.mark.skipif(not onnx_available(), reason="needs the deploy extra")


class _Clock:
    """A clock that only the fake models move: each call of a model advances it by that model's cost."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def __call__(self) -> float:
        return self.now

    def model(self, name: str, seconds: float):
        def run():
            self.calls.append(name)
            self.now += seconds
        return run


def test_interleaved_times_rotate_the_order_every_round():
    clock = _Clock()
    a, b = lat.interleaved_times([clock.model("a", 0.002), clock.model("b", 0.0005)], rounds=3, runs=2, warmup=1,
                                 clock=clock)
    assert clock.calls == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert a == pytest.approx([2.0] * 6) and b == pytest.approx([0.5] * 6)
    clock = _Clock()
    times = lat.interleaved_times([clock.model(n, 0.001) for n in "xyz"], rounds=3, runs=1, warmup=0, clock=clock)
    assert "".join(clock.calls) == "xyz" "yzx" "zxy" and [len(t) for t in times] == [3, 3, 3]


def test_latency_ratio_and_recorded_attributes():
    m = lat.Latency(ms=3.0, reference_ms=12.0, kind="deployable", file_bytes=10, reference_bytes=40)
    assert m.ratio == 0.25
    attrs = m.attrs()
    assert attrs["latency_ms"] == 3.0 and attrs["latency_ratio"] == 0.25
    assert attrs["latency"]["kind"] == "deployable" and attrs["latency"]["reference_ms"] == 12.0
    assert attrs["latency"]["onnx_bytes"] == 10 and attrs["latency"]["reference_onnx_bytes"] == 40


@needs_onnx
def test_deployable_graph_is_timed_as_its_deployable_export_against_a_cached_reference(monkeypatch):
    base = tiny_graph()
    g = tiny_graph()
    run_pass(g, "quantize", DEPLOY)
    exports = []
    real = lat.export_model
    monkeypatch.setattr(lat, "export_model", lambda graph, out: exports.append(out.name) or real(graph, out))
    monkeypatch.setattr(lat, "_REFERENCES", {})
    first = lat.measure_latency(g, base, reference_key="tiny")
    second = lat.measure_latency(g, base, reference_key="tiny")
    assert exports == ["candidate", "reference", "candidate"]  # the reference once per key
    assert first.kind == second.kind == "deployable"
    assert first.reference_bytes == second.reference_bytes > first.file_bytes  # int8 tables and weights
    assert first.ms > 0 and first.reference_ms > 0 and first.ratio == first.ms / first.reference_ms
    plain = lat.measure_latency(base, base)  # no int8 node: the plain export, the reference exported again
    assert plain.kind == "simulation"  # the same fp32 model twice (names in the file differ by a few bytes)
    assert abs(plain.file_bytes - plain.reference_bytes) < 0.01 * plain.reference_bytes
    assert exports[3:] == ["candidate", "reference"]


@needs_onnx
def test_an_export_that_fails_fails_the_measurement_and_leaves_the_graph(monkeypatch):
    from mase_lite.errors import MaseError

    g = tiny_graph()
    run_pass(g, "quantize", DEPLOY)
    before = {k: v.clone() for k, v in g.state_dict().items()}

    def broken(*a, **k):
        raise MaseError("deployable export: ONNX Runtime disagrees with the simulation")

    monkeypatch.setattr("passes.export.onnx.export_onnx", broken)
    with pytest.raises(MaseError, match="disagrees"):
        lat.measure_latency(g, tiny_graph())
    assert all((before[k] == v).all() for k, v in g.state_dict().items())


@needs_onnx
def test_nsga2_on_accuracy_and_latency_ratio(fake_training, tmp_path):
    from search.config import RunConfig
    from search.study import run_search

    cfg = RunConfig.from_dict({
        "search": {"name": "lat", "samplers": ["nsga2"], "variants": ["compress"], "n_trials": 2, "seeds": [0],
                   "objectives": ["accuracy", "latency_ratio"], "gc_after_trial": False,
                   "sampler_options": {"nsga2_population": 2}},
        "space": {"num_hidden_layers": [1], "num_attention_heads": [2], "hidden_size": [16],
                  "intermediate_size": [32]},
        "model": {"vocab_size": 64, "max_position_embeddings": 32},
        "data": {"max_length": 16, "n_val": 8},
        "train": {"progress": False},
        "compression": {"passes": {"quantize": DEPLOY}},
    })
    result = run_search(cfg, tmp_path / "run")
    storage = optuna.storages.RDBStorage(result.storage_url)
    trials = optuna.load_study(study_name=result.studies[0].name, storage=storage).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        info = t.user_attrs["latency"]
        assert t.values[1] == t.user_attrs["latency_ratio"] == pytest.approx(t.user_attrs["latency_ms"] / info["reference_ms"])
        # the reference is the trial's graph before compression (fp32), not the compressed graph again
        assert info["kind"] == "deployable" and info["onnx_bytes"] != info["reference_onnx_bytes"]
