"""benchmarks/replay_key_figures.py: the committed key-figure CSVs are what the script extracts from the
committed replays, and the pre-registered hypotheses are copied with their verdict inputs."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("replay_key_figures", ROOT / "benchmarks" / "replay_key_figures.py")
kf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kf)
RESULTS = ROOT / "docs" / "results" / "lab2_heldout_5k"


def test_the_committed_5k_key_figures_are_regenerated_exactly(tmp_path):
    out = tmp_path / "kf.csv"
    assert kf.main(["--out", str(out), f"0-199={RESULTS / 'seeds-0-199' / 'stats.json'}",
                    f"5000-5199={RESULTS / 'seeds-5000-5199' / 'stats.json'}"]) == 0
    assert out.read_text() == (RESULTS / "key_figures.csv").read_text()


def test_rows_follow_budgets_samplers_and_the_preregistration():
    stats = json.loads((RESULTS / "seeds-0-199" / "stats.json").read_text())
    stats["preregistered"] = {"alpha": 0.05, "primary": [
        {"hypothesis": "q3:compressed:random:5:greater", "alternative": "greater", "estimate": 0.01,
         "ci": [-0.002, 0.022], "p": 0.04, "p_holm": 0.04}],
        "secondary": [{"hypothesis": "q1:trained:tpe-random:50:two-sided", "alternative": "two-sided",
                       "missing": "not computed"}]}
    rows = kf.key_figures("s", stats, [10], [20], noise=True)
    q = [r[1] for r in rows]
    assert q[:2] == ["primary", "secondary"] and rows[0][4:9] == [0.01, -0.002, 0.022, 0.04, 0.04]
    assert "not computed" in rows[1][2]
    assert q.count("noise") == 3 and q.count("q1") == 9 and q.count("q2") == 2
    assert all(r[3] == 10 and "nsga2" not in r[2] for r in rows if r[1] == "q1")
    assert {r[3] for r in rows if r[1] == "q3"} == {20} and q.count("q3") == 4
    anova = {r[2].split(" on ")[0]: r[7] for r in rows if r[1] == "noise"}
    assert anova == {m: stats["noise"]["val"][m]["arch_p"] for m in ("trained", "compressed", "finetuned")}


def test_a_missing_stats_file_is_one_clear_error(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        kf.main(["--out", str(tmp_path / "x.csv"), f"a={tmp_path / 'nope.json'}"])
    assert e.value.code == 2 and "LABEL=STATS_JSON" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    with open(RESULTS / "key_figures.csv") as f:
        assert next(csv.reader(f)) == kf.COLUMNS


# ------------------------------------------------------------------ benchmarks/task2_figures.py

_spec2 = importlib.util.spec_from_file_location("task2_figures", ROOT / "benchmarks" / "task2_figures.py")
t2 = importlib.util.module_from_spec(_spec2)
_spec2.loader.exec_module(t2)


def test_the_committed_task2_figures_are_what_the_committed_trials_give(capsys):
    assert t2.main([str(ROOT / "docs" / "results" / "lab2_task2_trials.csv")]) == 0
    assert capsys.readouterr().out == (ROOT / "docs" / "results" / "lab2_task2_figures.txt").read_text()


def test_task2_figures_of_two_hand_made_trials():
    def row(i, tr, co, ft, nz, cb):
        return {"trial": str(i), "best": str(i == 1), "accuracy": str(ft), "test_accuracy": "0.8", "accuracy_trained": str(tr),
                "accuracy_compressed": str(co), "accuracy_finetuned": str(ft), "cost.nonzero_non_embedding": str(nz),
                "cost.params_non_embedding": "100", "cost.size_bytes_fp32_non_embedding": "400",
                "cost.size_bytes_compressed_non_embedding": str(cb)}

    lines = t2.variant_lines("s", [row(0, 0.75, 0.70, 0.75, 20, 40), row(1, 0.80, 0.81, 0.85, 10, 50)])
    assert lines[1] == "  best #1: validation 0.85 (selected on), test 0.8"
    assert lines[2] == "  compressed - trained: mean -0.020, range -0.050 to +0.010; 1 of 2 lost accuracy"
    assert lines[3] == "  fine-tuned - compressed: mean +0.045, range +0.040 to +0.050; 2 of 2 improved"
    assert lines[4].endswith("1 of 2 above, 1 equal")
    assert lines[5:] == ["  effective sparsity (non-embedding): 80.0% to 90.0%",
                         "  non-embedding weights 8.0x to 10.0x smaller than fp32"]
