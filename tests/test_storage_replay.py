"""The benchmark replay follows the live search's duplicate rule: a repeated configuration reuses the
first evaluation's result, counts against ``n_trials`` and is marked ``reused_from``."""

from __future__ import annotations

from _bench_helpers import make_table
from search.bench.replay import replay, runs_rows


def test_replay_marks_repeats_as_reused(tmp_path):
    # 2 buildable architectures (hidden 48 with 2 heads, 1 or 2 layers), 8 trials: repeats are forced
    table = make_table(tmp_path, space={"num_hidden_layers": [1, 2], "num_attention_heads": [2],
                                        "hidden_size": [48], "intermediate_size": [128]})
    run = replay(table, "tpe", seed=3, n_trials=8)
    assert len(run.trials) == 8  # repeats count
    first: dict[str, object] = {}
    for t in run.trials:
        if t.arch not in first:
            first[t.arch] = t
            assert t.reused_from is None
        else:
            assert t.reused_from == first[t.arch].trial
            assert t.observed == first[t.arch].observed and t.table_seed == first[t.arch].table_seed
    assert len(first) == 2
    rows = list(runs_rows({"tpe": [run]}))
    assert [r["reused_from"] for r in rows] == [t.reused_from for t in run.trials]
    assert sum(r["reused_from"] is not None for r in rows) == 6
