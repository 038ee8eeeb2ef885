"""The deployment-front report's logic (benchmarks/deploy_front.py), nothing timed: the speed-up split
into quantisation and shrinking, and the goal at its exact boundaries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deploy_front", ROOT / "benchmarks" / "deploy_front.py")
df = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(df)


def _rows(ms: dict[str, float], test: dict[str, float]) -> list[dict]:
    rows = [{"model": m, "trial": int(m[6:]) if m.startswith("trial-") else None, "timing": {"t1_b1": {"median_ms": v}},
             "test_accuracy": test.get(m)} for m, v in ms.items()]
    df.speedups(rows, "t1_b1")
    return rows


def test_speedup_is_quantisation_times_shrinking():
    rows = _rows({"fp32": 24.0, "int8": 10.0, "trial-3": 4.0, "anchor": 9.0},
                 {"fp32": 0.86, "int8": 0.85, "trial-3": 0.80})
    by = {r["model"]: r for r in rows}
    assert by["fp32"]["speedup_t1_b1"] == 1.0 and by["int8"]["speedup_t1_b1"] == 2.4
    assert by["anchor"]["speedup_t1_b1"] == round(24 / 9, 3)
    for name in ("fp32", "int8", "anchor"):  # only a shrunk front member is split
        assert not {k for k in by[name] if k.startswith("from_")}, name
    t = by["trial-3"]
    assert (t["speedup_t1_b1"], t["from_quantisation_t1_b1"], t["from_shrinking_t1_b1"]) == (6.0, 2.4, 2.5)


@pytest.mark.parametrize("acc, met, pick", [(0.84, True, "trial-3"),    # exactly 0.02 below fp32: within
                                            (0.8399, False, "int8")])   # just below: the int8 checkpoint
def test_goal_takes_the_fastest_model_within_the_accuracy_drop(acc, met, pick):
    rows = _rows({"fp32": 20.0, "int8": 10.0, "trial-3": 5.0, "trial-7": 2.0},
                 {"fp32": 0.86, "int8": 0.855, "trial-3": acc, "trial-7": 0.70})
    g = df.goal(rows)
    assert g["fastest_within_drop"] == pick and g["met"] is met
    assert g["fastest"] == "trial-7" and g["fastest_speedup"] == 10.0


def test_render_recomputes_the_committed_speedups_and_goal_from_the_timings(tmp_path):
    import json
    import shutil

    committed = ROOT / "docs" / "results" / "deploy_front"
    shutil.copy(committed / "front.json", tmp_path / "front.json")
    assert df.main(["--render", "--out", str(tmp_path)]) == 0  # no study: the figure without the grey dots
    old, new = (json.loads((d / "front.json").read_text()) for d in (committed, tmp_path))
    assert new["goal"] == old["goal"] and new["command"] == old["command"]
    for a, b in zip(old["rows"], new["rows"]):
        derived = {k for k in a if k.startswith(("speedup_", "from_"))}
        assert derived and derived == {k for k in b if k.startswith(("speedup_", "from_"))}
        assert all(a[k] == b[k] for k in derived), a["model"]
    fp32 = next(r for r in new["rows"] if r["model"] == "fp32_ort")["timing"]["t1_b1"]["median_ms"]
    trial = next(r for r in new["rows"] if r["model"] == "trial-7")
    assert trial["speedup_t1_b1"] == round(fp32 / trial["timing"]["t1_b1"]["median_ms"], 3)
    assert (tmp_path / "front.csv").read_text().count("\n") == len(new["rows"]) + 1
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
