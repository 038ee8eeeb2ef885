"""``mase-lite search``: one clear error per bad input, and a real end-to-end search on IMDb rows."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
from optuna.trial import TrialState

from mase_lite.cli import main
from mase_lite.graph import MaseGraph
from search.space import describe_graph

optuna.logging.set_verbosity(optuna.logging.ERROR)

BASE = """
[search]
name = "{name}"
samplers = {samplers}
variants = {variants}
n_trials = 1
gc_after_trial = false

[space]
num_hidden_layers = [1]
num_attention_heads = [2]
hidden_size = {hidden}
intermediate_size = [16]

[model]
vocab_size = 64
max_position_embeddings = 32

[data]
max_length = 16

[train]
progress = false
"""


def write(tmp_path, name="c", samplers='["random"]', variants='["baseline"]', hidden="[8, 12]", extra="", file="c"):
    path = tmp_path / f"{file}.toml"
    path.write_text(BASE.format(name=name, samplers=samplers, variants=variants, hidden=hidden) + extra)
    return path


def run_cli(capsys, *argv):
    code = main(["search", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kwargs, message", [
    ({"samplers": '["simulated-annealing"]'}, "search.samplers[0] = 'simulated-annealing' is not valid; choose one of"),
    ({"variants": '["quantize"]'}, "search.variants[0] = 'quantize' is not valid; choose one of: 'baseline'"),
    ({"extra": "\n[space.extra]\n"}, "unknown config key 'space.extra'"),
    ({"hidden": "[]"}, "space.hidden_size is an empty list"),
    ({"samplers": '["grid+nodes"]'}, "search.samplers[0]: 'grid+nodes' is not possible"),
])
def test_bad_config_is_one_clear_error(tmp_path, capsys, kwargs, message):
    code, out, err = run_cli(capsys, "--config", write(tmp_path, **kwargs), "--out", tmp_path / "run")
    assert code == 2
    assert err.startswith("mase-lite search: error: ") and message in err
    assert err.count("\n") == 1  # one line
    assert not (tmp_path / "run").exists()


def test_unknown_space_parameter(tmp_path, capsys):
    cfg = write(tmp_path).read_text().replace("num_hidden_layers = [1]", "num_layers = [1]")
    (tmp_path / "x.toml").write_text(cfg)
    code, _, err = run_cli(capsys, "--config", tmp_path / "x.toml")
    assert code == 2 and "unknown config key 'space.num_layers' (did you mean 'num_hidden_layers'?)" in err


def test_no_validation_rows_is_refused_before_training(tmp_path, capsys, fake_training):  # noqa: F811
    cfg = write(tmp_path).read_text().replace("max_length = 16", "max_length = 16\nn_val = 0")
    (tmp_path / "x.toml").write_text(cfg)
    code, out, err = run_cli(capsys, "--config", tmp_path / "x.toml", "--out", tmp_path / "run")
    assert code == 2
    assert err == "mase-lite search: error: data.n_val = 0: search selects on the validation split; set data.n_val >= 1\n"
    assert not fake_training.calls and not (tmp_path / "run").exists()  # nothing trained, no run folder or db
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "x.toml"]


def test_unreachable_storage_is_an_error_before_training(tmp_path, capsys, fake_training):  # noqa: F811
    code, _, err = run_cli(capsys, "--config", write(tmp_path), "--out", tmp_path / "run",
                           "--storage", "mysql+pymysql://root:pw@127.0.0.1:9/nas")
    assert code == 2 and "cannot open the study storage mysql+pymysql://root:***@127.0.0.1:9/nas" in err
    assert "pw" not in err and not fake_training.calls


def test_existing_study_rules(tmp_path, capsys, fake_training):  # noqa: F811
    cfg = write(tmp_path)
    code, _, err = run_cli(capsys, "--config", cfg, "--out", tmp_path / "run", "--resume")
    assert code == 2 and "--resume: no run to resume in" in err
    code, out, _ = run_cli(capsys, "--config", cfg, "--out", tmp_path / "run")
    assert code == 0 and "run folder:" in out
    code, _, err = run_cli(capsys, "--config", cfg, "--out", tmp_path / "run")
    assert code == 2 and "already exists" in err and "--resume" in err
    other = write(tmp_path, name="c", hidden="[8, 16]", file="other")
    code, _, err = run_cli(capsys, "--config", other, "--out", tmp_path / "run", "--resume")
    assert code == 2 and "created with a different search space" in err and "hidden_size" in err
    code, _, _ = run_cli(capsys, "--config", cfg, "--out", tmp_path / "run", "--resume", "--n-trials", 2)
    assert code == 0


def test_real_search_end_to_end(tmp_path, capsys, data_dir):
    """Real training on a few hundred IMDb rows: TPE with per-node choices, compress + fine-tune."""
    cfg = tmp_path / "e2e.toml"
    cfg.write_text(f"""
[search]
name = "e2e"
samplers = ["tpe+nodes"]
variants = ["compress_finetune"]
n_trials = 2
gc_after_trial = false

[space]
num_hidden_layers = [1, 2]
num_attention_heads = [2, 4]
hidden_size = [16]
intermediate_size = [32]

[model]
max_position_embeddings = 64

[data]
data_dir = "{data_dir}"
cache_dir = "{tmp_path / 'cache'}"
n_train = 192
n_val = 64
n_test = 8
max_length = 32

[train]
batch_size = 32
progress = false
num_threads = 2
precision = "fp32"

[finetune]
lr = 0.02    # large enough that fine-tuning moves quantised weights across grid points
""")
    code, out, err = run_cli(capsys, "--config", cfg, "--out", tmp_path / "run")
    assert code == 0, err
    assert "e2e" in out and "run folder:" in out and "best_so_far_png" in out
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'run' / 'optuna.db'}")
    trials = optuna.load_study(study_name="e2e", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        ua = t.user_attrs
        for key in ("accuracy_trained", "accuracy_compressed", "accuracy_finetuned"):
            assert 0.0 <= ua[key] <= 1.0
        assert ua["accuracy"] == ua["accuracy_finetuned"] == t.value
        assert ua["cost"]["size_bytes_compressed"] < ua["cost"]["size_bytes_quantized"] < ua["cost"]["size_bytes_fp32"]
        assert ua["timings"]["train"] > 0 and ua["timings"]["finetune"] > 0
        assert ua["arch"]["num_hidden_layers"] == t.params["num_hidden_layers"]
    # the saved best graph is the trained, compressed model with the sampled architecture
    best = max(trials, key=lambda t: t.value)
    graph = MaseGraph.load(best.user_attrs["graph_dir"])
    seen = describe_graph(graph)
    arch = best.user_attrs["arch"]
    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"):
        assert seen[key] == arch[key] == best.params[key]
    identity = [k[len("node:"):] for k, v in best.params.items() if k.startswith("node:") and v == "identity"]
    assert arch["identity"] == identity and not set(identity) & set(seen["linear_paths"])
    assert [name for name, _ in graph.history][-2:] == ["quantize", "prune"]
    # ... and it reproduces its recorded accuracy and loss, evaluated independently of the search
    from mase_lite.data import DataConfig, load_splits, load_tokenizer
    from mase_lite.training import evaluate

    dcfg = DataConfig(data_dir=str(data_dir), cache_dir=str(tmp_path / "cache2"), n_train=192, n_val=64, n_test=8,
                      max_length=32)
    val = load_splits(dcfg, load_tokenizer(dcfg), splits=("val",)).val
    ev = evaluate(graph, val, precision="fp32", num_threads=2)
    assert (ev.accuracy, ev.loss) == (best.user_attrs["accuracy_finetuned"], best.user_attrs["loss_finetuned"])
    assert best.user_attrs["machine"]["precision"] == "fp32" and best.user_attrs["machine"]["num_threads"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary[0]["best"][0]["trial"] == best.number
    rows = list(csv.DictReader((tmp_path / "run" / "best_so_far.csv").open()))
    assert float(rows[-1]["best_so_far"]) == pytest.approx(best.value)


@pytest.mark.parametrize("name, studies", [
    ("quickstart", ["quickstart-grid", "quickstart-random", "quickstart-tpe"]),
    ("lab2_task1_samplers", [f"lab2-task1-{s}-s{i}" for s in ("grid", "random", "tpe", "tpe+nodes") for i in range(3)]),
    ("lab2_task2_compression_aware", ["lab2-task2-baseline", "lab2-task2-compress", "lab2-task2-compress_finetune"]),
    ("nas_pareto_nsga2", ["nas-pareto"]),
    ("deploy_shrink_minilm", ["deploy-shrink"]),
])
def test_example_configs_plan_their_studies(name, studies):
    from pathlib import Path

    from search.config import load_run_config, plan_studies

    cfg = load_run_config(Path(__file__).resolve().parents[1] / "examples" / f"{name}.toml")
    assert [s.name for s in plan_studies(cfg)] == studies


def test_set_overrides():
    from mase_lite.commands.search import parse_overrides
    from mase_lite.errors import ConfigError

    assert parse_overrides(["data.n_train=500", "search.samplers=['tpe']", "search.sampler_options.nsga2_population=4",
                            "search.name=quick"]) == {
        "data": {"n_train": 500},
        "search": {"samplers": ["tpe"], "sampler_options": {"nsga2_population": 4}, "name": "quick"}}
    with pytest.raises(ConfigError, match="expected TABLE.KEY=VALUE"):
        parse_overrides(["n_train=5"])

