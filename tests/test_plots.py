"""Best-so-far curves (mean and band over seeds), Pareto fronts, their CSVs and ``mase-lite plot``."""

from __future__ import annotations

import csv
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from mase_lite.cli import main
from search.plots import Curve, aggregate, best_so_far, plot_best_so_far, study_curve, write_figures

optuna.logging.set_verbosity(optuna.logging.ERROR)
PNG = b"\x89PNG\r\n\x1a\n"
DIST = {"hidden_size": CategoricalDistribution([8, 16])}


def add(study, state, acc=None, size=None, **attrs):
    """Add a finished trial as ``mase-lite search`` records them."""
    ua = dict(attrs)
    values = None
    if state == TrialState.COMPLETE:
        ua["accuracy"] = acc
        ua["cost"] = {"size_bytes_compressed": size or 1000}
        values = [acc] if len(study.directions) == 1 else [acc, size]
    study.add_trial(create_trial(state=state, values=values, params={"hidden_size": 8}, distributions=DIST,
                                 user_attrs=ua))


def make_study(storage, name, curve, seed, accs, run="r", directions=("maximize",), sampler="tpe", variant="baseline"):
    study = optuna.create_study(study_name=name, storage=storage, directions=list(directions))
    for k, v in dict(run=run, curve=curve, seed=seed, sampler=sampler, variant=variant).items():
        study.set_user_attr(k, v)
    for a in accs:
        if a is None:
            add(study, TrialState.FAIL, fail_reason="TrainingDivergedError: nan")
        elif a == "pruned":
            add(study, TrialState.PRUNED, prune_reason="hidden_size 8 is not divisible by num_attention_heads 3")
        elif a == "interrupted":
            add(study, TrialState.FAIL, interrupted=True)
        else:
            add(study, TrialState.COMPLETE, a)
    return study


def test_best_so_far_carries_over_failures():
    out = best_so_far([None, 0.6, None, 0.55, 0.7])
    assert math.isnan(out[0]) and out[1:] == [0.6, 0.6, 0.6, 0.7]


def test_aggregate_mean_and_band_over_seeds():
    curves = [Curve("a-s0", "a", 0, [0, 1, 2], [0.6, 0.7, 0.65]),
              Curve("a-s1", "a", 1, [0, 1], [0.5, 0.8]),
              Curve("b", "b", 0, [0], [0.9])]
    agg = aggregate(curves)
    assert agg["a"][0] == {"trial": 1, "mean": pytest.approx(0.55), "min": 0.5, "max": 0.6, "n_seeds": 2}
    assert agg["a"][1] == {"trial": 2, "mean": pytest.approx(0.75), "min": 0.7, "max": 0.8, "n_seeds": 2}
    assert agg["a"][2]["n_seeds"] == 1 and agg["a"][2]["mean"] == pytest.approx(0.7)  # only seed 0 got that far
    assert agg["b"] == [{"trial": 1, "mean": 0.9, "min": 0.9, "max": 0.9, "n_seeds": 1}]


def test_study_curve_skips_pruned_and_interrupted_trials():
    study = make_study(None, "s", "tpe", 0, [0.6, "pruned", None, "interrupted", 0.7])
    c = study_curve(study)
    assert c.trials == [0, 2, 4] and c.accuracies == [0.6, None, 0.7] and c.label == "tpe"


def test_plot_best_so_far_files(tmp_path):
    curves = [Curve("g-s0", "grid", 0, [0, 1], [0.6, 0.7]), Curve("g-s1", "grid", 1, [0, 1], [0.65, None])]
    files = plot_best_so_far(curves, tmp_path / "b.png", tmp_path / "b.csv", "t")
    assert files["best_so_far_png"].read_bytes()[:8] == PNG
    rows = list(csv.DictReader(files["best_so_far_csv"].open()))
    assert [(r["study"], r["trial"], r["best_so_far"]) for r in rows] == [
        ("g-s0", "1", "0.6"), ("g-s0", "2", "0.7"), ("g-s1", "1", "0.65"), ("g-s1", "2", "0.65")]
    mean = list(csv.DictReader(files["best_so_far_mean_csv"].open()))
    assert [(r["trial"], float(r["mean"]), float(r["min"]), float(r["max"])) for r in mean] == [
        ("1", pytest.approx(0.625), 0.6, 0.65), ("2", pytest.approx(0.675), 0.65, 0.7)]


def test_write_figures_from_storage_with_pareto(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_study(url, "r-grid-s0", "grid", 0, [0.6, 0.62])
    make_study(url, "r-grid-s1", "grid", 1, [0.5, 0.7])
    make_study(url, "r-tpe-s0", "tpe", 0, [0.55, 0.8])
    mo = optuna.create_study(study_name="r-nsga2", storage=url, directions=["maximize", "minimize"])
    mo.set_user_attr("curve", "nsga2")
    for acc, size in [(0.6, 100), (0.7, 300), (0.65, 400), (0.5, 50)]:  # (0.65, 400) is dominated by (0.7, 300)
        add(mo, TrialState.COMPLETE, acc, size)
    files = write_figures(url, ["r-grid-s0", "r-grid-s1", "r-tpe-s0", "r-nsga2"], tmp_path / "out")
    assert files["best_so_far_png"].read_bytes()[:8] == PNG and files["pareto_png"].read_bytes()[:8] == PNG
    mean = {(r["curve"], r["trial"]): r for r in csv.DictReader(files["best_so_far_mean_csv"].open())}
    assert float(mean[("grid", "2")]["mean"]) == pytest.approx(0.66) and mean[("grid", "2")]["n_seeds"] == "2"
    assert float(mean[("tpe", "2")]["max"]) == 0.8
    pareto = list(csv.DictReader(files["pareto_csv"].open()))
    assert {(float(r["accuracy"]), r["on_front"]) for r in pareto} == {
        (0.6, "True"), (0.7, "True"), (0.65, "False"), (0.5, "True")}


def test_plot_command(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    url = f"sqlite:///{run / 'optuna.db'}"
    make_study(url, "t2-baseline", "baseline", 0, [0.7, 0.75], run="t2", variant="baseline")
    make_study(url, "t2-compress", "compress", 0, [0.6, 0.65], run="t2", variant="compress")
    make_study(url, "other", "x", 0, [0.5], run="other")
    assert main(["plot", "--run", str(run), "--name", "t2"]) == 0
    assert (run / "best_so_far.png").read_bytes()[:8] == PNG
    curves = {r["curve"] for r in csv.DictReader((run / "best_so_far.csv").open())}
    assert curves == {"baseline", "compress"}
    # several runs in one storage: one figure per run
    out = tmp_path / "all"
    assert main(["plot", "--storage", url, "--out", str(out)]) == 0
    assert (out / "t2_best_so_far.png").is_file() and (out / "other_best_so_far.png").is_file()
    capsys.readouterr()
    assert main(["plot", "--run", str(tmp_path / "nothing")]) == 2
    assert "is not a search run folder" in capsys.readouterr().err
    assert main(["plot", "--run", str(run), "--studies", "t2-baseline", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_front_is_on_the_plotted_axes_and_infeasible_trials_never_count():
    """A study whose second objective is not the size (here latency) is drawn as accuracy vs size:
    its plotted front is the non-dominated set on those axes. A trial over the size budget (a positive
    constraint) is neither on the front nor the best so far."""
    from search.plots import pareto_points
    from search.storage import _best_accuracy

    st = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size, latency in [(0.80, 5_000_000, 1.0), (0.85, 1_000_000, 9.0)]:  # trial 1 dominates on the axes
        st.add_trial(create_trial(state=TrialState.COMPLETE, values=[acc, latency], params={"hidden_size": 8},
                                  distributions=DIST, user_attrs={"accuracy": acc,
                                                                  "cost": {"size_bytes_compressed": size}}))
    assert {p["trial"]: p["on_front"] for p in pareto_points(st)} == {0: False, 1: True}

    single = optuna.create_study(direction="maximize")
    for acc, excess in [(0.8, -1.0), (0.9, 5.0)]:  # trial 1 is over the budget
        single.add_trial(create_trial(state=TrialState.COMPLETE, values=[acc], params={"hidden_size": 8},
                                      distributions=DIST, user_attrs={"accuracy": acc},
                                      system_attrs={"constraints:size_budget_bytes": excess}))
    curve = study_curve(single)
    assert curve.statuses() == ["complete", "infeasible"] and curve.best_so_far == [0.8, 0.8]
    assert _best_accuracy(single) == 0.8
