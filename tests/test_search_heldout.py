"""Live search reports a held-out figure: the best trials' accuracy on the test split (never selected on),
beside the validation accuracy, in the summary, summary.json and trials.csv (fake training: the test
split scores 0.01 below the validation split)."""

from __future__ import annotations

import csv
import json

import optuna
import pytest

from search.storage import best_trials
from search.study import run_search

from test_search_study import tiny_config, trials_of


def _csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_best_trial_has_a_test_accuracy_beside_its_validation_accuracy(fake_training, tmp_path):
    result = run_search(tiny_config(n_trials=4), tmp_path / "run")
    best = result.summary[0]["best"][0]
    assert best["test_accuracy"] == pytest.approx(best["accuracy"] - 0.01) and best["test_n"] == 64
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())[0]["best"][0]
    assert saved["test_accuracy"] == pytest.approx(best["test_accuracy"])
    text = (tmp_path / "run" / "summary.txt").read_text()
    head = text.splitlines()[0].split()
    assert head[head.index("acc") + 1] == "test" and f"{best['test_accuracy']:.4f}" in text
    assert "never used for selection" in text and "64 rows" in text
    rows = _csv(tmp_path / "run" / "trials.csv")
    filled = {int(r["trial"]) for r in rows if r["test_accuracy"]}
    study = optuna.load_study(study_name=result.studies[0].name, storage=result.storage_url)
    assert filled == {t.number for t in best_trials(study)}  # only the final best trials show it
    assert all(r["best"] == str(int(r["trial"]) in filled) for r in rows)
    assert len(fake_training.test_calls) <= 4  # only trials that were best (or tied) when they finished


def test_every_pareto_trial_has_a_test_accuracy(fake_training, tmp_path):
    result = run_search(tiny_config(samplers=["nsga2"], n_trials=4), tmp_path / "run")
    front = result.summary[0]["best"]
    assert front and all(b["test_accuracy"] == pytest.approx(b["accuracy"] - 0.01) for b in front)


def test_every_tied_trial_has_a_test_accuracy(fake_training, tmp_path, monkeypatch):
    real = fake_training.train_and_eval

    def same_accuracy(graph, splits, cfg, train=True, **kw):
        out = dict(real(graph, splits, cfg, train, **kw))
        out["accuracy"] = 0.7 - (0.01 if kw.get("split") == "test" else 0.0)
        return out

    monkeypatch.setattr(fake_training, "train_and_eval", same_accuracy)
    result = run_search(tiny_config(n_trials=3, reuse_duplicates=False), tmp_path / "run")
    done = [t for t in trials_of(result) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(t.user_attrs["test_accuracy"] == pytest.approx(0.69) for t in done)
    tied = result.summary[0]["tied"]
    assert [t["trial"] for t in tied] == [t.number for t in done]
    assert "3 trials tie for best" in (tmp_path / "run" / "summary.txt").read_text()


def test_compress_after_nas_is_scored_on_the_test_split_too(fake_training, tmp_path):
    result = run_search(tiny_config(n_trials=2, variants=["baseline", "compress"]), tmp_path / "run")
    after = next(s["compress_after_nas"] for s in result.summary if "compress_after_nas" in s)
    assert after["test_accuracy_compressed"] == pytest.approx(after["accuracy_compressed"] - 0.01)
    assert "(test " in (tmp_path / "run" / "summary.txt").read_text().split("compress-after-NAS")[1]
