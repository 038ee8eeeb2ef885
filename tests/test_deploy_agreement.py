"""The agreement benchmark's logic (benchmarks/deploy_agreement.py), nothing run: its two feeds and the
row-by-row comparison of the runtime's logits against the simulation's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deploy_agreement", ROOT / "benchmarks" / "deploy_agreement.py")
da = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(da)


def test_feeds_batch_one_unpadded_and_32_padded():
    mask = np.zeros((40, 8), dtype=np.int64)
    for i in range(40):
        mask[i, :1 + i % 8] = 1
    ids = np.arange(40 * 8).reshape(40, 8)
    f = da.feeds(ids, mask)
    assert len(f["b1"]) == 40 and [b[0].shape for b in f["b1"][:3]] == [(1, 1), (1, 2), (1, 3)]
    assert (f["b1"][2][0] == ids[2, :3]).all()
    assert [b[0].shape for b in f["b32"]] == [(32, 8), (8, 8)]


def test_compare_counts_label_flips_and_relative_logit_differences():
    sim = np.array([[0.0, 2.0], [1.0, 0.9], [-1.0, 1.0], [3.0, -3.0]])
    ort = np.array([[0.0, 2.1], [0.9, 1.0], [-1.0, 1.0], [3.0, -3.0]])  # row 1: a near tie flips
    r = da.compare(sim, ort)
    assert (r["rows"], r["labels_agree"], r["share"]) == (4, 3, 0.75) and not r["meets_goal"]
    assert r["disagreeing_rows"] == [1] and r["disagreeing_margins"] == [0.1]
    assert r["max_rel_logit_diff"] == 0.1 and r["max_abs_logit_diff"] == 0.1
    same = da.compare(sim, sim.copy())
    assert same["share"] == 1.0 and same["meets_goal"] and same["disagreeing_rows"] == []
