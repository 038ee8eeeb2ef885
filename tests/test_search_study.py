"""Study mechanics with a fake trainer (real models, graphs and passes; no training).

Grid exhaustion, failures, budgets, resume rules, fingerprints, storage errors, user attributes,
multi-objective studies, reproducibility and saved graphs.
"""

from __future__ import annotations

import csv
import json

import optuna
import pytest
from optuna.trial import TrialState

import search.study as study_mod
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph
from search.space import describe_graph
from search.config import RunConfig, SearchError, plan_studies
from search.study import run_search

optuna.logging.set_verbosity(optuna.logging.ERROR)


def tiny_config(**search) -> RunConfig:
    """A tiny space (hidden 8/12 x heads 2/3; hidden 8 with 3 heads cannot be built), no real data."""
    return RunConfig.from_dict({
        "search": {"name": "t", "samplers": ["random"], "n_trials": 3, "gc_after_trial": False, **search},
        "space": {"num_hidden_layers": [1], "num_attention_heads": [2, 3], "hidden_size": [8, 12],
                  "intermediate_size": [16]},
        "model": {"vocab_size": 64, "max_position_embeddings": 32},
        "data": {"max_length": 16, "n_val": 8},
        "train": {"progress": False},
    })


def trials_of(result, name=None):
    storage = optuna.storages.RDBStorage(result.storage_url)
    name = name or result.studies[0].name
    return optuna.load_study(study_name=name, storage=storage).get_trials()


# --------------------------------------------------------------------------- planning


def test_plan_names_studies_by_what_varies():
    cfg = tiny_config(samplers=["grid", "tpe+nodes"], seeds=[0, 1])
    assert [s.name for s in plan_studies(cfg)] == ["t-grid-s0", "t-grid-s1", "t-tpe+nodes-s0", "t-tpe+nodes-s1"]
    assert {s.curve for s in plan_studies(cfg)} == {"grid", "tpe+nodes"}
    cfg = tiny_config(samplers=["tpe"], variants=["baseline", "compress", "compress_finetune"])
    assert [s.name for s in plan_studies(cfg)] == ["t-baseline", "t-compress", "t-compress_finetune"]
    nsga = plan_studies(tiny_config(samplers=["nsga2"]))[0]
    assert nsga.objectives == ["accuracy", "compressed_size"] and nsga.directions == ["maximize", "minimize"]
    grid = plan_studies(RunConfig.from_dict({**tiny_config().to_dict(), "search": {"samplers": ["grid"]}}))[0]
    assert grid.n_trials == 3  # default budget of grid: its buildable combinations (not hidden 8 with 3 heads)


@pytest.mark.parametrize("search, match", [
    ({"samplers": ["annealing"]}, "search.samplers\\[0\\] = 'annealing' is not valid"),
    ({"samplers": ["grid+nodes"]}, "'grid\\+nodes' is not possible"),
    ({"variants": ["compress_finetuned"]}, "variants\\[0\\] = 'compress_finetuned' is not valid.*did you mean"),
    ({"samplers": []}, "search.samplers is an empty list"),
    ({"objectives": ["latency"]}, "objectives\\[0\\] = 'latency' is not valid"),
    ({"n_trials": 0}, "n_trials = 0 is out of range"),
])
def test_bad_search_section(search, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**search)


def test_searched_fields_cannot_be_fixed_in_model():
    with pytest.raises(ConfigError, match="model.hidden_size is searched"):
        RunConfig.from_dict({"model": {"hidden_size": 64}})


# --------------------------------------------------------------------------- running


def test_grid_runs_every_buildable_combination_once(fake_training, tmp_path):
    cfg = RunConfig.from_dict({**tiny_config().to_dict(), "search": {"name": "g", "samplers": ["grid"], "gc_after_trial": False}})
    result = run_search(cfg, tmp_path / "run")
    trials = trials_of(result)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 4 and len(done) == 3 and len(pruned) == 1
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert "hidden_size 8 is not divisible by num_attention_heads 3" in pruned[0].user_attrs["prune_reason"]
    assert len(fake_training.calls) == 3  # the unbuildable combination was never trained


def test_trial_records_architecture_accuracies_cost_and_timings(fake_training, tmp_path):
    cfg = tiny_config(samplers=["tpe+nodes"], variants=["compress_finetune"], n_trials=2, seeds=[5])
    result = run_search(cfg, tmp_path / "run")
    t = [t for t in trials_of(result) if t.state == TrialState.COMPLETE][0]
    ua = t.user_attrs
    assert ua["arch"]["hidden_size"] == t.params["hidden_size"]
    assert ua["arch"]["identity"] == [k[len("node:"):] for k, v in t.params.items()
                                      if k.startswith("node:") and v == "identity"]
    assert ua["accuracy_compressed"] == pytest.approx(ua["accuracy_trained"] - 0.1)
    assert ua["accuracy_finetuned"] == pytest.approx(ua["accuracy_trained"] - 0.05)
    assert ua["accuracy"] == ua["accuracy_finetuned"] == t.value
    assert ua["cost"]["size_bytes_compressed"] < ua["cost"]["size_bytes_fp32"]
    assert {"build", "train", "eval_trained", "compress", "eval_compressed", "finetune", "eval_finetuned",
            "cost", "total"} <= set(ua["timings"])
    # compress_finetune calls: train, evaluate compressed, fine-tune compressed
    assert [c[1:] for c in fake_training.calls[:3]] == [(False, True), (True, False), (True, True)]


def test_failed_trial_is_recorded_and_the_study_goes_on(fake_training, tmp_path):
    fake_training.fail_hidden = 8
    cfg = RunConfig.from_dict({**tiny_config().to_dict(), "search": {"name": "f", "samplers": ["grid"], "gc_after_trial": False}})
    result = run_search(cfg, tmp_path / "run")
    trials = trials_of(result)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params["hidden_size"] == 8
    assert "TrainingDivergedError: training loss became nan" in failed[0].user_attrs["fail_reason"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # the grid still finished
    assert result.summary[0]["trials"]["fail"] == 1


def test_too_many_failures_in_a_row_stop_the_study(fake_training, tmp_path):
    fake_training.fail_hidden = 12
    cfg = tiny_config(n_trials=20, max_failures_in_a_row=2)
    cfg.space.hidden_size = [12]
    cfg.space.num_attention_heads = [2]
    result = run_search(cfg, tmp_path / "run")
    assert sum(t.state == TrialState.FAIL for t in trials_of(result)) == 2
    assert "2 trials in a row failed" in result.aborted["t"]


def test_budget_counts_trained_trials_and_resume_adds_only_what_is_missing(fake_training, tmp_path):
    cfg = tiny_config(n_trials=3)
    first = run_search(cfg, tmp_path / "run")
    before = {t.number: (t.params, t.value) for t in trials_of(first) if t.state == TrialState.COMPLETE}
    assert len(before) == 3
    n_calls = len(fake_training.calls)
    again = run_search(cfg, tmp_path / "run", resume=True)  # nothing left to do
    assert len(fake_training.calls) == n_calls
    more = run_search(cfg, tmp_path / "run", resume=True, n_trials=5)
    after = {t.number: (t.params, t.value) for t in trials_of(more) if t.state == TrialState.COMPLETE}
    assert len(after) == 5 and all(after[n] == before[n] for n in before)
    assert again.summary[0]["trials"]["complete"] == 3


def test_resume_and_existing_study_rules(fake_training, tmp_path):
    cfg = tiny_config(n_trials=1)
    with pytest.raises(SearchError, match="--resume: no run to resume in .*run \\(no optuna.db\\)"):
        run_search(cfg, tmp_path / "run", resume=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SearchError, match="--resume: no study of run 't' \\(t\\) exists in sqlite:///"):
        run_search(cfg, tmp_path / "x", resume=True, storage_url=f"sqlite:///{tmp_path / 'other.db'}")
    run_search(cfg, tmp_path / "run")
    with pytest.raises(SearchError, match="study 't' already exists.*pass --resume"):
        run_search(cfg, tmp_path / "run")
    changed = tiny_config(n_trials=1)
    changed.space.hidden_size = [8, 16]
    with pytest.raises(SearchError, match="different search space.*space.model.hidden_size: \\[8, 12\\] in the stored"):
        run_search(changed, tmp_path / "run", resume=True)
    other_variant = tiny_config(n_trials=1, variants=["compress"])
    with pytest.raises(SearchError, match="variant: 'baseline' in the stored study, 'compress' in this config"):
        run_search(other_variant, tmp_path / "run", resume=True)


def test_unreachable_storage_fails_before_any_data_or_training(fake_training, tmp_path, monkeypatch):
    def no_data(cfg):
        raise AssertionError("data loaded although the storage cannot be opened")

    monkeypatch.setattr(study_mod, "load_data", no_data)
    with pytest.raises(SearchError, match="cannot open the study storage sqlite:///.*/missing/dir/x.db"):
        run_search(tiny_config(), tmp_path / "run", storage_url=f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(SearchError, match="cannot open the study storage postgresql://u:\\*\\*\\*@127.0.0.1:9/db"):
        run_search(tiny_config(), tmp_path / "run", storage_url="postgresql://u:secret@127.0.0.1:9/db")
    assert not fake_training.calls


def test_same_seed_same_trials(fake_training, tmp_path):
    cfg = tiny_config(samplers=["tpe+nodes"], n_trials=4)
    cfg.search.sampler_options.tpe_startup_trials = 2
    a = run_search(cfg, tmp_path / "a")
    b = run_search(cfg, tmp_path / "b")
    assert [(t.params, t.value) for t in trials_of(a)] == [(t.params, t.value) for t in trials_of(b)]


def test_best_graph_is_saved_and_has_the_sampled_architecture(fake_training, tmp_path):
    cfg = tiny_config(samplers=["random+nodes"], n_trials=4, seeds=[1])
    result = run_search(cfg, tmp_path / "run")
    trials = trials_of(result)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    saved = [t for t in trials if t.user_attrs.get("graph_dir")]
    kept = [t for t in saved if (tmp_path / "run" / "t" / "graphs" / f"trial-{t.number:05d}").is_dir()]
    assert [t.number for t in kept] == [best.number]  # earlier bests were removed at the end
    graph = MaseGraph.load(kept[0].user_attrs["graph_dir"])
    seen = describe_graph(graph)
    arch = best.user_attrs["arch"]
    assert (seen["num_hidden_layers"], seen["num_attention_heads"], seen["hidden_size"]) == \
        (arch["num_hidden_layers"], arch["num_attention_heads"], arch["hidden_size"])
    assert not set(arch["identity"]) & set(seen["linear_paths"])
    assert result.summary[0]["best"][0]["trial"] == best.number


def test_nsga2_reports_the_pareto_front(fake_training, tmp_path):
    cfg = tiny_config(samplers=["nsga2"], variants=["compress"], n_trials=4)
    cfg.search.sampler_options.nsga2_population = 2
    cfg.space.hidden_size = [8, 12, 16]
    cfg.space.num_attention_heads = [2]
    result = run_search(cfg, tmp_path / "run")
    trials = [t for t in trials_of(result) if t.state == TrialState.COMPLETE]
    assert all(len(t.values) == 2 and t.values[1] == t.user_attrs["cost"]["size_bytes_compressed"] for t in trials)
    front = {r["trial"] for r in result.summary[0]["best"]}
    dominated = {t.number for t in trials for u in trials
                 if u.values[0] >= t.values[0] and u.values[1] <= t.values[1] and u.values != t.values}
    assert front == {t.number for t in trials} - dominated
    assert (tmp_path / "run" / "pareto.png").stat().st_size > 0
    assert "pareto #" in (tmp_path / "run" / "summary.txt").read_text()


def test_run_folder_contents(fake_training, tmp_path):
    cfg = tiny_config(samplers=["random", "tpe"], seeds=[0, 1], n_trials=2)
    result = run_search(cfg, tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"optuna.db", "run_config.json", "summary.txt", "summary.json", "trials.csv", "best_so_far.png",
            "best_so_far.csv", "best_so_far_mean.csv"} <= names
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["study"] for s in summary] == ["t-random-s0", "t-random-s1", "t-tpe-s0", "t-tpe-s1"]
    with (tmp_path / "run" / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["study", "trial", "state", "num_hidden_layers"]
    assert sum(r["state"] == "COMPLETE" for r in rows) == 8
    assert all(float(r["accuracy"]) > 0.5 for r in rows if r["state"] == "COMPLETE")
    assert result.files["best_so_far_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_marks_the_trial_interrupted_and_resume_reruns_it(fake_training, tmp_path, monkeypatch):
    cfg = tiny_config(n_trials=3, samplers=["tpe"])
    real = fake_training.train_and_eval

    def interrupt_second(graph, splits, c, train=True, **kw):
        if train and sum(call[2] for call in fake_training.calls) == 1:
            raise KeyboardInterrupt
        return real(graph, splits, c, train, **kw)

    monkeypatch.setattr(fake_training, "train_and_eval", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, tmp_path / "run")
    monkeypatch.setattr(fake_training, "train_and_eval", real)
    result = run_search(cfg, tmp_path / "run", resume=True)
    trials = trials_of(result)
    (stopped,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped.user_attrs["interrupted"] and "KeyboardInterrupt" in stopped.user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == stopped.number]
    assert len(retry) == 1 and retry[0].params == stopped.params and retry[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert result.summary[0]["trials"]["interrupted"] == 1


# --------------------------------------------------------------------------- fine-tune seed, precision, ties


def test_finetune_seed_is_its_own_and_recorded(fake_training, tmp_path):
    from search.config import derived_seed, study_fingerprint

    cfg = tiny_config(variants=["compress_finetune"], seeds=[4], n_trials=1)
    spec = plan_studies(cfg)[0]
    ft = cfg.finetune_config(spec.seed)
    assert ft.seed == derived_seed(4, "finetune") != 4
    assert study_fingerprint(cfg, spec)["finetune"]["seed"] == ft.seed
    cfg.finetune = {"seed": 7}
    assert cfg.finetune_config(spec.seed).seed == 7 == study_fingerprint(cfg, spec)["finetune"]["seed"]
    seen = []
    real = fake_training.train_and_eval

    def spy(graph, splits, c, train=True, **kw):
        if train:
            seen.append(c.seed)
        return real(graph, splits, c, train, **kw)

    fake_training.train_and_eval = spy
    run_search(cfg, tmp_path / "run")
    assert seen == [4, 7]  # training epoch, then the fine-tune epoch with its own seed


def test_finetune_table_without_a_finetuning_variant_is_refused():
    with pytest.raises(ConfigError, match=r"finetune.lr cannot apply: no variant fine-tunes .*add 'compress_finetune'"):
        RunConfig.from_dict({"search": {"variants": ["compress"]}, "finetune": {"lr": 1e-4}})


def test_finetune_dropout_is_built_into_the_model(fake_training, tmp_path, monkeypatch):
    built = []
    real = fake_training.lifecycle.build

    def spy(config):
        built.append(config.hidden_dropout_prob)
        return real(config)

    monkeypatch.setattr(fake_training.lifecycle, "build", spy)
    cfg = tiny_config(variants=["compress_finetune"], n_trials=1)
    cfg.finetune = {"dropout": True}
    run_search(cfg, tmp_path / "a")
    cfg = tiny_config(variants=["compress_finetune"], n_trials=1, name="b")
    run_search(cfg, tmp_path / "b")
    assert built[0] > 0 and built[1] == 0.0


def test_fingerprint_and_trials_record_the_resolved_precision(fake_training, tmp_path, monkeypatch):
    import search.config as config_mod

    cfg = tiny_config(n_trials=1)
    assert cfg.train.precision == "auto"
    result = run_search(cfg, tmp_path / "run")
    storage = optuna.storages.RDBStorage(result.storage_url)
    study = optuna.load_study(study_name="t", storage=storage)
    from mase_lite.training import resolve_precision

    here = resolve_precision("auto")
    assert study.user_attrs["fingerprint"]["config"]["train"]["precision"] == here
    assert all(t.user_attrs["machine"]["precision"] == here for t in study.get_trials())
    with (tmp_path / "run" / "trials.csv").open() as fh:
        assert {r["precision"] for r in csv.DictReader(fh)} == {here}
    # a host that resolves "auto" differently cannot add trials to this study
    other = "fp32" if here == "bf16" else "bf16"
    monkeypatch.setattr(config_mod, "resolve_precision", lambda p: other if p == "auto" else p)
    with pytest.raises(SearchError, match=rf"train.precision: '{here}' in the stored study, '{other}' in this config"):
        run_search(cfg, tmp_path / "run", resume=True)


def test_a_trial_tying_the_best_never_loses_the_saved_graph(fake_training, tmp_path, monkeypatch):
    from search.storage import best_trials

    monkeypatch.setattr(fake_training, "train_and_eval",
                        lambda graph, splits, cfg, train=True, **kw: {"accuracy": 0.75, "loss": 0.5, "eval_s": 0.0})
    cfg = tiny_config(samplers=["random"], n_trials=4)
    result = run_search(cfg, tmp_path / "run")
    trials = [t for t in trials_of(result) if t.state == TrialState.COMPLETE]
    assert len(trials) == 4 and {t.value for t in trials} == {0.75}
    study = optuna.load_study(study_name="t", storage=optuna.storages.RDBStorage(result.storage_url))
    assert [t.number for t in best_trials(study)] == [t.number for t in trials]
    first = trials[0]
    assert (tmp_path / "run" / "t" / "graphs" / f"trial-{first.number:05d}").is_dir()
    best = result.summary[0]["best"][0]
    assert best["trial"] == first.number and MaseGraph.load(best["graph_dir"]) is not None
    # whichever tied trial a storage reports as best_trial, cleanup keeps the saved graph
    monkeypatch.setattr(optuna.Study, "best_trial", property(lambda self: trials[-1]))
    study_mod.keep_best_graphs(study)
    assert (tmp_path / "run" / "t" / "graphs" / f"trial-{first.number:05d}").is_dir()


def test_compress_after_nas_sits_beside_the_compression_aware_best(fake_training, tmp_path):
    cfg = tiny_config(variants=["baseline", "compress_finetune"], n_trials=3)
    result = run_search(cfg, tmp_path / "run")
    base = next(s for s in result.summary if s["variant"] == "baseline")
    r = base["compress_after_nas"]
    best = base["best"][0]
    assert r["trial"] == best["trial"] and r["accuracy_trained"] == best["accuracy_trained"]
    # the fake: compression costs 0.1, fine-tuning a compressed graph gives 0.05 back (of the trained accuracy)
    assert r["accuracy_compressed"] == pytest.approx(best["accuracy_trained"] - 0.1)
    assert r["accuracy_finetuned"] == pytest.approx(best["accuracy_trained"] - 0.05)
    assert r["compared_with"] == {"compress_finetune": "t-compress_finetune"}
    text = (tmp_path / "run" / "summary.txt").read_text()
    assert "compress-after-NAS" in text and "t-compress_finetune best" in text
    # a resumed run reuses the stored result instead of compressing again
    n_calls = len(fake_training.calls)
    run_search(cfg, tmp_path / "run", resume=True)
    assert len(fake_training.calls) == n_calls


def test_resume_ignores_a_config_field_added_with_its_default(fake_training, tmp_path):
    cfg = tiny_config(n_trials=1)
    result = run_search(cfg, tmp_path / "run")
    study = optuna.load_study(study_name="t", storage=optuna.storages.RDBStorage(result.storage_url))
    fp = study.user_attrs["fingerprint"]
    del fp["config"]["train"]["bucket_batches"]  # as if the study predates that field
    fp["config"]["version"] = 1
    study.set_user_attr("fingerprint", fp)
    run_search(cfg, tmp_path / "run", resume=True, n_trials=2)  # accepted: the field has its default
    cfg.train.bucket_batches = 7
    with pytest.raises(SearchError, match=r"train.bucket_batches: \(absent\) in the stored study, 7 in this config"):
        run_search(cfg, tmp_path / "run", resume=True, n_trials=3)
