"""Search objectives measured on real artefacts: ``exported_bytes`` (compact export) and ``latency_ms``
(ONNX Runtime), in an nsga2 run with the fake trainer."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from mase_lite.errors import ConfigError
from passes.export.onnx import onnx_available
from search.config import RunConfig
from search.objectives import METRICS
from search.study import run_search

optuna.logging.set_verbosity(optuna.logging.ERROR)

TINY = {"num_hidden_layers": [1], "num_attention_heads": [2], "hidden_size": [8, 16], "intermediate_size": [16, 32]}


def _config(objectives, **search) -> RunConfig:
    return RunConfig.from_dict({
        "search": {"name": "exp", "samplers": ["nsga2"], "variants": ["compress"], "n_trials": 3, "seeds": [0],
                   "objectives": objectives, "gc_after_trial": False,
                   "sampler_options": {"nsga2_population": 2}, **search},
        "space": TINY,
        "model": {"vocab_size": 64, "max_position_embeddings": 32},
        "data": {"max_length": 16, "n_val": 8},
        "train": {"progress": False},
    })


def _trials(result):
    storage = optuna.storages.RDBStorage(result.storage_url)
    return optuna.load_study(study_name=result.studies[0].name, storage=storage).get_trials()


def test_metrics_are_registered_with_directions():
    assert METRICS["exported_bytes"][0] == METRICS["latency_ms"][0] == "minimize"


@pytest.mark.skipif(not onnx_available(), reason="latency_ms needs the deploy extra")
def test_nsga2_on_exported_bytes_and_latency(fake_training, tmp_path):
    result = run_search(_config(["accuracy", "exported_bytes", "latency_ms"]), tmp_path / "run")
    done = [t for t in _trials(result) if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        assert t.values[1] == t.user_attrs["exported_bytes"]
        assert t.values[2] == t.user_attrs["latency_ms"] > 0
        cost = t.user_attrs["cost"]
        # the measured file: the predicted compressed bytes plus the integer index buffers and the headers
        assert cost["size_bytes_compressed"] < t.user_attrs["exported_bytes"] < cost["size_bytes_compressed"] + 40000
        if "reused_from" not in t.user_attrs:  # a repeated configuration reuses the measured figures
            assert {"export", "latency"} <= set(t.user_attrs["timings"])
    sizes = {t.params["hidden_size"]: t.values[1] for t in done}
    if len(sizes) == 2:
        assert sizes[16] > sizes[8]  # the measured size follows the architecture


def test_latency_objective_without_onnxruntime_is_a_config_error(monkeypatch):
    import passes.export.onnx as onnx_mod

    monkeypatch.setattr(onnx_mod, "onnx_available", lambda: False)
    with pytest.raises(ConfigError, match="'latency_ms' is measured with ONNX Runtime.*deploy"):
        _config(["accuracy", "latency_ms"])
    cfg = _config(["accuracy", "exported_bytes"])  # the size needs no extra
    assert cfg.search.objectives == ["accuracy", "exported_bytes"]
