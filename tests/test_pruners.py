"""Early-stopping pruners (``search.pruner``) with a fake trainer that reports chosen intermediate accuracies.

Bad trials are stopped, early-stopped trials count against ``n_trials`` and are kept apart from
unbuildable architectures in the summary, the trial table and the best-so-far figure's CSV; bad
pruner settings are one ConfigError.
"""

from __future__ import annotations

import csv
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from _search_helpers import FakeTraining, fake_lifecycle
from mase_lite.errors import ConfigError
from mase_lite.training import EvalResult, TrainState
from search.config import RunConfig
from search.lifecycle import set_default_lifecycle
from search.space import describe_graph
from search.study import make_pruner, run_search
from search.summary import format_summary

optuna.logging.set_verbosity(optuna.logging.ERROR)

GOOD, BAD = 0.8, 0.3
N_REPORTS = 4


class ReportingFake(FakeTraining):
    """Calls the training callback ``N_REPORTS`` times (every ``cfg.eval_every`` steps); the intermediate
    accuracy is ``BAD`` for intermediate size 32, else ``GOOD``. ``steps``: steps trained, per training call."""

    def __init__(self):
        super().__init__()
        self.steps: list[int] = []
        self.eval_sets: list[object] = []

    def train_and_eval(self, graph, splits, cfg, train=True, *, split="val", callback=None):
        if train and callback is not None:
            acc = BAD if describe_graph(graph)["intermediate_size"] == 32 else GOOD
            total = cfg.eval_every * N_REPORTS

            def evaluate(ds=None):
                self.eval_sets.append(ds)
                return EvalResult(accuracy=acc, loss=1 - acc, n=4)

            done = 0
            try:
                for i in range(1, N_REPORTS + 1):
                    done = i * cfg.eval_every
                    callback(TrainState(step=done, total_steps=total, epoch=done / total, loss=0.5, lr=1e-3,
                                        evaluate=evaluate))
            finally:
                self.steps.append(done)
        return super().train_and_eval(graph, splits, cfg, train, split=split, callback=callback)


@pytest.fixture
def fake():
    f = ReportingFake()
    previous = set_default_lifecycle(fake_lifecycle(f))
    try:
        yield f
    finally:
        set_default_lifecycle(previous)


def config(**search) -> RunConfig:
    """hidden 8/12 x heads 2/3 x intermediate 16/24/32 (hidden 8 with 3 heads cannot be built)."""
    return RunConfig.from_dict({
        "search": {"name": "p", "samplers": ["grid"], "gc_after_trial": False, "pruner": "median",
                   "eval_every": 3, "pruner_startup_trials": 1, **search},
        "space": {"num_hidden_layers": [1], "num_attention_heads": [2, 3], "hidden_size": [8, 12],
                  "intermediate_size": [16, 24, 32]},
        "model": {"vocab_size": 64, "max_position_embeddings": 32},
        "data": {"max_length": 16, "n_val": 8},
        "train": {"progress": False},
    })


def trials_of(result):
    storage = optuna.storages.RDBStorage(result.storage_url)
    return optuna.load_study(study_name=result.studies[0].name, storage=storage).get_trials()


def expected_median_pruning(order: list[float], startup: int) -> list[bool]:
    """Which trials the median pruner stops, computed by hand: a trial is stopped at its first report
    when at least ``startup`` trials completed and its (constant) value is below their median."""
    completed, out = [], []
    for v in order:
        stop = len(completed) >= startup and v < statistics.median(completed)
        out.append(stop)
        if not stop:
            completed.append(v)
    return out


def test_median_pruner_stops_bad_trials_at_their_first_report(fake, tmp_path):
    result = run_search(config(), tmp_path / "run")
    trials = trials_of(result)
    trained = [t for t in trials if t.user_attrs.get("arch", {}).get("hidden_size") in (8, 12)
               and not t.user_attrs.get("prune_reason")]
    values = [BAD if t.user_attrs["arch"]["intermediate_size"] == 32 else GOOD for t in trained]
    want = expected_median_pruning(values, startup=1)
    assert any(want) and not all(want)  # the check is not vacuous
    assert [t.state == TrialState.PRUNED for t in trained] == want
    for t, stopped in zip(trained, want):
        if stopped:
            assert t.user_attrs["early_stopped"] is True
            assert t.user_attrs["early_stop"]["step"] == 3 and t.user_attrs["early_stop"]["accuracy"] == BAD
            assert t.intermediate_values == {3: BAD}
            assert "accuracy" not in t.user_attrs  # no final accuracy: it never finished training
        else:
            assert t.state == TrialState.COMPLETE
            assert t.intermediate_values == {3 * i: values[trained.index(t)] for i in range(1, N_REPORTS + 1)}
    # stopped trials trained 3 steps, the others all 12
    assert fake.steps == [3 if s else 3 * N_REPORTS for s in want]
    # the unbuildable trials (hidden 8 with 3 heads) are pruned but not early-stopped
    unbuildable = [t for t in trials if t.user_attrs.get("prune_reason")]
    assert unbuildable and all(t.state == TrialState.PRUNED and not t.user_attrs.get("early_stopped")
                                         for t in unbuildable)
    counts = result.summary[0]["trials"]
    assert counts["early_stopped"] == sum(want)
    assert counts["pruned"] == len(unbuildable)
    assert counts["complete"] == len(want) - sum(want)


def test_early_stopped_trials_count_against_n_trials(fake, tmp_path):
    cfg = config(n_trials=5)  # fewer than the grid's 9 buildable points: the budget stops it
    result = run_search(cfg, tmp_path / "run")
    trials = trials_of(result)
    counts = result.summary[0]["trials"]
    early = [t for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get("early_stopped")]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert counts["early_stopped"] == len(early) and counts["complete"] == len(complete)
    assert early and complete  # not vacuous
    assert len(early) + len(complete) == 5  # exactly the budget: early-stopped trials are counted
    unbuildable = [t for t in trials if t.user_attrs.get("prune_reason")]
    finished = [t for t in trials if t.state.is_finished()]  # (the rest of the grid may wait in the queue)
    assert len(finished) == 5 + len(unbuildable)  # ... and unbuildable ones are not
    from search.storage import n_counted

    storage = optuna.storages.RDBStorage(result.storage_url)
    assert n_counted(optuna.load_study(study_name="p", storage=storage)) == 5


def test_summary_table_and_figure_csv_label_early_stopped(fake, tmp_path):
    result = run_search(config(), tmp_path / "run")
    trials = {t.number: t for t in trials_of(result)}
    text = format_summary(result.summary)
    c = result.summary[0]["trials"]
    assert "done/fail/pruned/early-stopped" in text
    assert f"{c['complete']}/{c['fail']}/{c['pruned']}/{c['early_stopped']}" in text
    assert "early-stopped: stopped by the pruner" in text
    with (tmp_path / "run" / "trials.csv").open() as fh:
        rows = {int(r["trial"]): r for r in csv.DictReader(fh)}
    for n, t in trials.items():
        want = ("early-stopped" if t.user_attrs.get("early_stopped") else "unbuildable"
                if t.state == TrialState.PRUNED else t.state.name.lower())
        assert rows[n]["status"] == want
        if want == "early-stopped":
            assert rows[n]["early_stop_step"] == "3" and rows[n]["reason"].startswith("early-stopped by the pruner")
    with (tmp_path / "run" / "best_so_far.csv").open() as fh:
        fig = list(csv.DictReader(fh))
    # the figure counts trained trials: complete and early-stopped, not unbuildable ones
    plotted = [n for n, t in sorted(trials.items()) if t.state.is_finished() and not t.user_attrs.get("prune_reason")]
    assert [int(r["trial_number"]) for r in fig] == plotted
    assert [r["status"] for r in fig] == [rows[n]["status"] for n in plotted]
    assert all(r["accuracy"] == "" for r in fig if r["status"] == "early-stopped")


def test_summary_without_pruner_keeps_its_old_header(fake_training, tmp_path):
    result = run_search(config(pruner="none"), tmp_path / "run")
    text = format_summary(result.summary)
    assert "done/fail/pruned " in text and "early-stopped" not in text
    assert result.summary[0]["trials"]["early_stopped"] == 0


def test_reports_use_one_fixed_seeded_validation_subset(tmp_path):
    import datasets

    from search.objectives import pruner_subset

    val = datasets.Dataset.from_dict({"input_ids": [[i] for i in range(50)], "labels": [i % 2 for i in range(50)]})

    class S:
        pass

    s = S()
    s.val = val
    a, b = pruner_subset(s, 10, 7), pruner_subset(s, 10, 7)
    assert len(a) == 10 and a["input_ids"] == b["input_ids"]  # same rows for every trial
    ids = [r[0] for r in a["input_ids"]]
    assert ids == sorted(set(ids)) and set(ids) <= set(range(50))
    assert pruner_subset(s, 10, 8)["input_ids"] != a["input_ids"]
    assert pruner_subset(s, 80, 7) is val  # asked for more rows than there are: all of them
    assert pruner_subset(None, 10, 7) is None


def test_the_study_reports_on_the_pruner_subset(fake, tmp_path, monkeypatch):
    import search.study as study_mod

    marker = object()
    monkeypatch.setattr(study_mod, "pruner_subset", lambda splits, rows, seed: (marker, rows))
    run_search(config(pruner_val_rows=37), tmp_path / "run")
    assert fake.eval_sets and all(ds == (marker, 37) for ds in fake.eval_sets)


@pytest.mark.parametrize("name, cls", [("none", optuna.pruners.NopPruner), ("median", optuna.pruners.MedianPruner),
                                       ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
                                       ("hyperband", optuna.pruners.HyperbandPruner)])
def test_make_pruner(name, cls):
    assert type(make_pruner(config(pruner=name))) is cls


def test_no_pruner_means_no_reports(fake, tmp_path):
    run_search(config(pruner="none"), tmp_path / "run")
    assert fake.eval_sets == [] and fake.steps == []


@pytest.mark.parametrize("search, match", [
    ({"pruner": "asha"}, r"search.pruner = 'asha' is not valid; choose one of: 'none', 'median', "
                         r"'successive_halving', 'hyperband'"),
    ({"eval_every": 0}, r"search.eval_every = 0 is out of range"),
    ({"pruner_val_rows": 0}, r"search.pruner_val_rows = 0 is out of range"),
    ({"samplers": ["nsga2"]}, r"search.pruner = 'median' needs single-objective studies, but sampler 'nsga2' "
                              r"optimises objectives = \['accuracy', 'compressed_size'\]"),
    ({"samplers": ["tpe"], "objectives": ["accuracy", "compressed_size"]}, r"search.pruner = 'median' needs single"),
])
def test_bad_pruner_settings_are_one_config_error(search, match):
    with pytest.raises(ConfigError, match=match):
        config(**search)


def test_multi_objective_without_pruner_is_fine():
    assert config(samplers=["nsga2"], pruner="none").search.pruner == "none"


def test_pruner_settings_are_in_the_fingerprint_only_when_used():
    from search.config import plan_studies, study_fingerprint

    on, off = config(), config(pruner="none")
    fp_on = study_fingerprint(on, plan_studies(on)[0])
    assert fp_on["pruner"] == {"pruner": "median", "eval_every": 3, "pruner_val_rows": 500, "pruner_startup_trials": 1}
    assert "pruner" not in study_fingerprint(off, plan_studies(off)[0])
