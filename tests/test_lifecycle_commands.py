"""Commands around the lifecycle (issue 22, item 5): a :class:`Lifecycle` holds no data (``compress``
is given its splits), every command that builds, loads, trains, compresses or evaluates goes through
it, and ``--run`` / ``--storage`` are resolved by one helper."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from mase_lite.cli import main
from mase_lite.data import DataConfig, Splits
from mase_lite.errors import ConfigError
from mase_lite.models import ModelConfig
from mase_lite.training import TokenArrays
from search.config import SearchError
from search.lifecycle import Lifecycle, set_default_lifecycle

SMALL = ModelConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=16, intermediate_size=32, vocab_size=64,
                    max_position_embeddings=32)
SCALED = {"passes": {"quantize": {"by": "type", "linear": {"config": {
    "name": "scaled_integer", "data_in_width": 8, "weight_width": 8, "weight_granularity": "per_channel",
    "bias_width": 8}}}}}
MODEL_TOML = "[model]\nnum_hidden_layers = 1\nnum_attention_heads = 2\nhidden_size = 16\nintermediate_size = 32\n" \
             "vocab_size = 64\nmax_position_embeddings = 32\n"
QUANTIZE_TOML = '[passes.quantize]\nby = "type"\n[passes.quantize.linear.config]\nname = "integer"\n' \
                'data_in_width = 8\ndata_in_frac_width = 4\n'


def _toy_splits(n: int = 48) -> Splits:
    """Label 1 iff the row contains token 7; token ids below 64."""
    import datasets

    def make(seed):
        rng = np.random.default_rng(seed)
        rows, labels = [], []
        for _ in range(n):
            row = rng.integers(10, 64, int(rng.integers(4, 12)))
            y = int(rng.integers(0, 2))
            if y:
                row[0] = 7
            rows.append(row.tolist())
            labels.append(y)
        return datasets.Dataset.from_dict({"input_ids": rows, "labels": labels})

    return Splits(train=make(0), val=make(1), test=make(2))


def test_a_lifecycle_holds_no_data_and_compress_is_given_its_splits(monkeypatch):
    import mase_lite.data as data

    rng = np.random.default_rng(0)
    lens = rng.integers(4, 12, 64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    train = TokenArrays(rng.integers(5, 60, int(offsets[-1])).astype(np.int64), offsets,
                        rng.integers(0, 2, 64).astype(np.int64))
    splits = types.SimpleNamespace(train=train, pad_id=0)
    monkeypatch.setattr(data, "load_checked_splits", lambda cfg, model, names: splits)
    lc = Lifecycle()
    assert lc.load_data(DataConfig(), SMALL) is splits
    assert set(vars(lc)) == {"trainer", "attn_implementation", "_pretrained"}  # nothing kept from load_data
    with pytest.raises(ConfigError, match="calibrate needs data"):  # no hidden fallback to the loaded splits
        lc.compress(lc.build(SMALL), SCALED)
    built = lc.build(SMALL)
    graph = lc.compress(built, SCALED, splits, calibration_batches=2)
    assert [name for name, _ in graph.history] == ["calibrate", "quantize"]
    assert graph is built  # in place, as documented (pass a copy to keep the original)


def test_lifecycle_steps_build_what_they_are_asked():
    eager, own = Lifecycle(), Lifecycle(attn_implementation=None)
    assert eager.model(SMALL).config._attn_implementation == "eager"
    assert own.model(SMALL).config._attn_implementation == "sdpa"  # the config's own
    graph = own.trace(own.model(SMALL))
    assert graph.model_info.get("class") == eager.build(SMALL).model_info.get("class")
    info = own.cost_report(graph, {"batch_size": 1, "seq_len": 16})
    assert "table" in info and own.cost(graph)["params"] == info["params"]


class Recording(Lifecycle):
    """A real lifecycle that records its steps (class-wide: the commands copy the default lifecycle)."""

    calls: list[tuple[str, object]] = []

    def _record(self, name):
        Recording.calls.append((name, self.attn_implementation))

    def model(self, config):
        self._record("model")
        return super().model(config)

    def trace(self, model):
        self._record("trace")
        return super().trace(model)

    def load(self, path):
        self._record("load")
        return super().load(path)

    def load_data(self, data_cfg, model, splits=("train", "val", "test")):
        self._record("load_data")
        return _toy_splits()

    def train_and_eval(self, *args, **kw):
        self._record("train_and_eval")
        return super().train_and_eval(*args, **kw)

    def evaluate(self, *args, **kw):
        self._record("evaluate")
        return super().evaluate(*args, **kw)

    def compress_with_info(self, *args, **kw):
        self._record("compress_with_info")
        return super().compress_with_info(*args, **kw)

    def cost_report(self, *args, **kw):
        self._record("cost_report")
        return super().cost_report(*args, **kw)


@pytest.fixture
def recording():
    Recording.calls.clear()
    previous = set_default_lifecycle(Recording())
    try:
        yield Recording.calls
    finally:
        set_default_lifecycle(previous)


def _steps(calls) -> list[str]:
    out = [name for name, _ in calls]
    calls.clear()
    return out


def test_every_command_goes_through_the_lifecycle(recording, tmp_path):
    (tmp_path / "m.toml").write_text(MODEL_TOML + "[train]\nprogress = false\nbatch_size = 16\n")
    assert main(["report", "--model-config", str(tmp_path / "m.toml")]) == 0
    assert _steps(recording) == ["model", "trace"]
    assert main(["train", "--config", str(tmp_path / "m.toml"), "--n-val", "8", "--out", str(tmp_path / "g"),
                 "--json"]) == 0
    assert _steps(recording) == ["model", "load_data", "trace", "train_and_eval"]
    assert main(["eval", str(tmp_path / "g"), "--split", "val", "--json"]) == 0
    assert _steps(recording) == ["load", "load_data", "evaluate"]
    (tmp_path / "t.toml").write_text(MODEL_TOML + '[data]\nn_val = 8\n[eval]\nsplit = "val"\n' + QUANTIZE_TOML)
    assert main(["transform", "--config", str(tmp_path / "t.toml"), "--out", str(tmp_path / "t")]) == 0
    assert _steps(recording) == ["model", "load_data", "trace", "compress_with_info", "cost_report", "evaluate"]
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report["passes"] == ["quantize"] and report["evaluation"]["split"] == "val"
    assert main(["export", str(tmp_path / "t" / "graph"), "--out", str(tmp_path / "e"), "--check"]) == 0
    assert _steps(recording) == ["load", "load"]  # the graph, then the export it checks


def test_commands_build_with_the_configs_own_attention(recording, tmp_path):
    assert main(["report", "--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"]) == 0
    assert recording[0] == ("model", None)


def test_transform_takes_one_model_source(tmp_path, capsys):
    (tmp_path / "t.toml").write_text(MODEL_TOML + QUANTIZE_TOML)
    assert main(["transform", "--config", str(tmp_path / "t.toml"), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(tmp_path)]) == 2
    assert "give either --checkpoint or a [model] table, not both" in capsys.readouterr().err


def test_transform_refuses_a_file_out_before_any_work(recording, tmp_path, capsys):
    (tmp_path / "t.toml").write_text(MODEL_TOML + '[data]\nn_val = 8\n' + QUANTIZE_TOML)
    (tmp_path / "o").write_text("kept")
    assert main(["transform", "--config", str(tmp_path / "t.toml"), "--out", str(tmp_path / "o")]) == 2
    assert f"--out {tmp_path / 'o'} exists and is not a directory" in capsys.readouterr().err
    assert recording == [] and (tmp_path / "o").read_text() == "kept"  # nothing built, trained or written


def test_one_storage_helper(tmp_path):
    from mase_lite.commands.common import storage_url
    from search.storage import default_storage_url

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SearchError, match=r"run is not a search run folder \(no optuna.db\); give --storage for "
                                          r"other storage"):
        storage_url(run, None)
    (run / "optuna.db").write_bytes(b"")
    assert storage_url(run, None) == default_storage_url(run)
    assert storage_url(None, "journal:/x") == "journal:/x"
    assert storage_url(tmp_path / "new", None, new=True) is None  # search.storage, else DIR/optuna.db
    assert storage_url(tmp_path / "new", "sqlite:///x.db", new=True) == "sqlite:///x.db"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"--out .*file exists and is not a directory"):
        storage_url(tmp_path / "file", None, new=True)


@pytest.mark.parametrize("argv", [["plot", "--run"], ["dashboard", "--run"]])
def test_plot_and_dashboard_refuse_a_folder_without_a_study(argv, tmp_path, capsys):
    if argv[0] == "dashboard":
        pytest.importorskip("optuna_dashboard")
    assert main([*argv, str(tmp_path)]) == 2
    assert "is not a search run folder (no optuna.db); give --storage for other storage" in capsys.readouterr().err
