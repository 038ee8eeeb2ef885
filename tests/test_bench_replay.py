"""Benchmark tables: format validation, config compatibility, sampler replay, statistics and the CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from _bench_helpers import SMALL_SPACE, FixedSampler, by_arch, make_table, rows_for, worst_params, write_config
from mase_lite.cli import main
from search.bench import stats
from search.bench.replay import ReplayRun, ReplayTrial, hypervolume_2d, replay, replay_many
from search.bench.synthetic import write_synthetic_table
from search.bench.table import (
    MANIFEST_KEYS, TABLE_COLUMNS, BenchTable, TableError, arch_id, check_compatible, file_hash, write_manifest,
    write_table,
)
from search.config import RunConfig
from search.samplers import SAMPLERS


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_table(tmp_path_factory.mktemp("bench"))


def _trials(run):
    return [(t.arch, t.table_seed, t.observed) for t in run.trials]


# --------------------------------------------------------------------------- table format


def test_table_roundtrip_and_lookups(table):
    assert table.n_archs == 18 and len(table.unbuildable) == 6
    assert all(c["hidden_size"] % c["num_attention_heads"] for c in table.unbuildable)
    assert set(json.loads((table.directory / "manifest.json").read_text())) == set(MANIFEST_KEYS)
    with (table.directory / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == TABLE_COLUMNS and len(rows) == 18 * 3
    assert [(r["arch"], int(r["seed"])) for r in rows] == sorted((r["arch"], int(r["seed"])) for r in rows)
    r = rows[4]
    assert table.value(r["arch"], table.seeds.index(int(r["seed"])), "compressed") == float(r["accuracy_compressed"])
    best, mean = table.best_arch("trained")
    assert mean == max(table.mean("trained").values()) == table.mean("trained")[best]
    assert arch_id({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 128, "intermediate_size": 512}) \
        == "L2-A4-H128-I512"


def _rewrite_csv(path, rows, columns):
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _manifest_again(d):
    m = json.loads((d / "manifest.json").read_text())
    write_manifest(d, **{k: m[k] for k in ("space", "model", "data", "train", "finetune", "compression", "seeds",
                                           "total_seconds", "command", "versions", "machine")})


def test_bad_table_missing_column(tmp_path):
    write_synthetic_table(tmp_path, SMALL_SPACE)
    with (tmp_path / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    _rewrite_csv(tmp_path / "table.csv", rows, [c for c in TABLE_COLUMNS if c != "accuracy_compressed"])
    _manifest_again(tmp_path)
    with pytest.raises(TableError, match=r"table\.csv: missing column\(s\) accuracy_compressed"):
        BenchTable.load(tmp_path)


def test_bad_table_edited(tmp_path):
    write_synthetic_table(tmp_path, SMALL_SPACE)
    text = (tmp_path / "table.csv").read_text().splitlines()
    (tmp_path / "table.csv").write_text("\n".join(text[:-1]) + "\n")  # truncated
    with pytest.raises(TableError, match="does not match manifest.json's content_hash: the table was edited or truncated"):
        BenchTable.load(tmp_path)


def test_bad_table_missing_arch_seed(tmp_path):
    rows = [r for r in rows_for() if not (r["arch"] == "L2-A3-H48-I256" and r["seed"] == 1)]
    write_synthetic_table(tmp_path, SMALL_SPACE, rows=rows)
    with pytest.raises(TableError, match=r"no row for \(arch, seed\) = \('L2-A3-H48-I256', 1\)"):
        BenchTable.load(tmp_path)


def test_bad_table_duplicate_row(tmp_path):
    rows = rows_for()
    write_synthetic_table(tmp_path, SMALL_SPACE, rows=rows + [dict(rows[5])])
    with pytest.raises(TableError, match=rf"duplicate \(arch, seed\) = \('{rows[5]['arch']}', {rows[5]['seed']}\)"):
        BenchTable.load(tmp_path)


def test_bad_table_values(tmp_path):
    rows = rows_for()
    rows[0]["accuracy_trained"] = 1.5
    write_synthetic_table(tmp_path / "a", SMALL_SPACE, rows=rows)
    with pytest.raises(TableError, match=r"accuracy_trained = 1.5 is out of range; accuracies are in \[0, 1\]"):
        BenchTable.load(tmp_path / "a")
    rows = rows_for()
    write_synthetic_table(tmp_path / "b", {**SMALL_SPACE, "hidden_size": [48]}, rows=rows)
    with pytest.raises(TableError, match=r"hidden_size = 64 is not in manifest.json's space.hidden_size = \[48\]"):
        BenchTable.load(tmp_path / "b")
    with pytest.raises(TableError, match="table directory .* not found"):
        BenchTable.load(tmp_path / "nothing")
    (tmp_path / "b" / "manifest.json").unlink()
    with pytest.raises(TableError, match=r"manifest.json: not found"):
        BenchTable.load(tmp_path / "b")


def test_write_table_rejects_wrong_columns(tmp_path):
    rows = rows_for()
    del rows[0]["params"]
    with pytest.raises(TableError, match=r"missing column\(s\) params"):
        write_table(rows, tmp_path)
    rows = rows_for()
    rows[0]["arch"] = "L9-A9-H9-I9"
    with pytest.raises(TableError, match="arch = 'L9-A9-H9-I9' but its parameters give"):
        write_table(rows, tmp_path)
    p = write_table(rows_for(), tmp_path)
    assert len(file_hash(p)) == 64


def test_nan_accuracy_is_valid_and_fails_the_trial(tmp_path):
    def acc(params, seed, rng):
        return (math.nan if params["num_hidden_layers"] == 4 else 0.7, 0.6, 0.65)

    t = make_table(tmp_path, accuracy=acc)
    assert math.isnan(t.mean("trained")["L4-A2-H64-I128"])
    run = replay(t, "grid", 0, 100, "trained")
    assert len(run) == t.n_archs  # failed trials count, as in a live search
    failed = [tr for tr in run.trials if math.isnan(tr.observed)]
    assert len(failed) == 6 and all(tr.arch.startswith("L4-") for tr in failed)
    assert not run.pick().arch.startswith("L4-")


# --------------------------------------------------------------------------- compatibility


def _cfg(**tables):
    base = {"space": SMALL_SPACE, "search": {"samplers": ["random", "tpe"]}}
    for k, v in tables.items():
        base[k] = {**base.get(k, {}), **v}
    return RunConfig.from_dict(base)


def test_compatible_config(table):
    check_compatible(table, _cfg(), metrics=("trained", "compressed", "finetuned"))
    shuffled = {k: list(reversed(v)) for k, v in SMALL_SPACE.items()}  # order does not matter
    check_compatible(table, _cfg(space=shuffled, data={"data_dir": "/elsewhere", "cache_dir": "/tmp/x"},
                                 train={"num_threads": 1, "progress": False, "eval_batch_size": 7}))


def test_incompatible_space(table):
    with pytest.raises(TableError, match=r"space.hidden_size = \[48, 64\] in the table \(manifest.json\), "
                                         r"\[48, 64, 96\] in the config"):
        check_compatible(table, _cfg(space={"hidden_size": [48, 64, 96]}))


def test_incompatible_data_train_compression(table):
    with pytest.raises(TableError, match="data.n_train = .*None.* in the table .*, 5000 in the config"):
        check_compatible(table, _cfg(data={"n_train": 5000}))
    with pytest.raises(TableError, match="train.lr = 0.001 in the table"):
        check_compatible(table, _cfg(train={"lr": 0.01}))
    cfg = _cfg(compression={"passes": {"quantize": {"by": "type", "linear": {"config": {"name": "integer"}}},
                                       "prune": {"weight": {"sparsity": 0.3}}}})
    check_compatible(table, cfg, metrics=("trained",))  # compression does not matter for trained accuracy
    with pytest.raises(TableError, match=r"compression.passes.quantize"):
        check_compatible(table, cfg, metrics=("compressed",))


def test_nodes_sampler_refused(table):
    with pytest.raises(TableError, match=r"search.samplers\[1\] = 'tpe\+nodes': a table has model-level architectures "
                                         r"only; per-node \(\+nodes\) choices cannot be replayed; use 'tpe'"):
        check_compatible(table, _cfg(search={"samplers": ["random", "tpe+nodes"]}))


# --------------------------------------------------------------------------- replay


def test_replay_deterministic_and_seed_dependent(table):
    a = replay(table, "tpe", 3, 15, "trained")
    b = replay(table, "tpe", 3, 15, "trained")
    c = replay(table, "tpe", 4, 15, "trained")
    assert _trials(a) == _trials(b)
    assert _trials(a) != _trials(c)
    many1 = replay_many(table, ["random", "tpe"], [0, 1, 2, 3], 10, workers=1)
    many2 = replay_many(table, ["random", "tpe"], [0, 1, 2, 3], 10, workers=2)  # the process pool
    assert [[_trials(r) for r in rs] for rs in many1.values()] == [[_trials(r) for r in rs] for rs in many2.values()]
    assert [r.seed for r in many1["tpe"]] == [0, 1, 2, 3]


def test_grid_visits_each_buildable_arch_once(table):
    run = replay(table, "grid", 0, 100, "trained")
    archs = [t.arch for t in run.trials]
    assert sorted(archs) == table.archs  # each buildable architecture exactly once
    assert len(run) == table.n_archs < run.n_trials and run.stopped_by_sampler
    assert run.n_pruned == len(table.unbuildable)
    assert [t.trial for t in run.trials] == list(range(1, table.n_archs + 1))


def test_repeated_pick_returns_same_value_and_seed_from_table(tmp_path):
    space = {"num_hidden_layers": [1, 2], "num_attention_heads": [2], "hidden_size": [64], "intermediate_size": [128, 256]}
    t = make_table(tmp_path, space, seeds=(10, 20, 30, 40, 50))
    seen: dict[str, set] = {}
    for seed in range(4):
        run = replay(t, "random", seed, 20, "compressed")
        values: dict[str, set] = {}
        for tr in run.trials:
            assert tr.table_seed in t.seeds
            assert tr.observed == t.value(tr.arch, t.seeds.index(tr.table_seed), "compressed")
            values.setdefault(tr.arch, set()).add(tr.observed)
            seen.setdefault(tr.arch, set()).add(tr.table_seed)
        assert all(len(v) == 1 for v in values.values())  # a repeated pick returns the same value
        assert len(run) == 20 and 2 <= len(values) <= 4  # so some architectures were picked repeatedly
    assert any(len(s) > 1 for s in seen.values())  # different replay seeds draw different training seeds
    # the draw depends on (seed, arch) only: another sampler of the same seed sees the same noise
    r1, r2 = replay(t, "random", 7, 10, "trained"), replay(t, "tpe", 7, 10, "finetuned")
    d1, d2 = {x.arch: x.table_seed for x in r1.trials}, {x.arch: x.table_seed for x in r2.trials}
    assert all(d1[a] == d2[a] for a in set(d1) & set(d2))


def test_unbuildable_never_counted(tmp_path):
    space = {"num_hidden_layers": [1], "num_attention_heads": [3, 5, 7], "hidden_size": [15, 21, 35],
             "intermediate_size": [64]}  # 15: 3, 5; 21: 3, 7; 35: 5, 7 -> 6 of 9 buildable
    t = make_table(tmp_path, space)
    assert t.n_archs == 6
    for sampler in ("random", "tpe"):
        run = replay(t, sampler, 1, 25, "trained")
        assert len(run) == 25 and run.n_pruned > 0
        assert all(tr.arch in t.arch_index for tr in run.trials)
        assert run.trials[-1].number == 25 + run.n_pruned - 1


def test_nsga2_replay_and_hypervolume(table):
    run = replay(table, "nsga2", 0, 12, "trained")
    assert run.multi_objective and len(run) == 12
    hv = run.hypervolume()
    assert all(b >= a - 1e-12 for a, b in zip(hv, hv[1:])) and 0 < hv[-1] <= 1.1
    assert run.measure() == hv
    # the sweep by hand: (0.8, 0.5), (0.6, 0.2) and a dominated (0.5, 0.6), reference size 1.1
    assert hypervolume_2d([(0.8, 0.5), (0.6, 0.2), (0.5, 0.6)]) == pytest.approx(0.3 * 0.6 + 0.6 * 0.8)


# --------------------------------------------------------------------------- statistics


def _run(values, sampler="random", seed=0, means=None):
    trials = [ReplayTrial(i + 1, i, f"a{i}", 0, v, (means or values)[i], math.nan, math.nan, 1.0)
              for i, v in enumerate(values)]
    return ReplayRun(sampler, seed, "trained", 5, ["accuracy"], trials)


def test_curve_counts_only_runs_that_reached_the_trial():
    runs = [_run([0.5, 0.7, 0.6], seed=0), _run([0.6], seed=1), _run([0.2, 0.3], seed=2)]
    pts = stats.curve(runs, "best", n_boot=200)
    assert [p["n"] for p in pts] == [3, 2, 1]
    assert pts[0]["mean"] == pytest.approx((0.5 + 0.6 + 0.2) / 3)
    assert pts[1]["mean"] == pytest.approx((0.7 + 0.3) / 2)  # the run of length 1 is not carried forward
    assert pts[2]["mean"] == pytest.approx(0.7) and pts[2]["lo"] == pts[2]["hi"] == pytest.approx(0.7)
    assert pts[0]["lo"] <= pts[0]["mean"] <= pts[0]["hi"]


def test_pick_uses_observed_value():
    run = _run([0.9, 0.7], means=[0.6, 0.8])  # a lucky draw of a worse architecture
    assert run.pick(2).arch == "a0" and run.pick(2).mean("trained") == 0.6


def test_stats_detect_a_clearly_worse_sampler(table, monkeypatch):
    worst = worst_params(table)
    monkeypatch.setitem(SAMPLERS, "worst", lambda space, seed, options: FixedSampler(worst))
    seeds = list(range(20))
    runs = replay_many(table, ["random", "worst"], seeds, 10, "trained", workers=1)
    assert {t.arch for r in runs["worst"] for t in r.trials} == {arch_id(worst)}
    res = stats.compare_samplers(runs, table, "trained", [5, 10])
    for p in res["pairs"]:
        assert (p["a"], p["b"]) == ("random", "worst")
        assert p["p_holm"] < 0.05 and p["p_a_better"] > 0.9 and p["mean_difference"] > 0 and p["ci"][0] > 0
    # held-out regret: the best mean over the seeds a run did not draw, minus the worst architecture's
    values, w = table.array("trained"), table.arch_index[arch_id(worst)]
    regrets = []
    for r in runs["worst"]:
        j = table.seeds.index(r.trials[0].table_seed)
        held = np.delete(values, j, axis=1).mean(axis=1)
        regrets.append(held.max() - held[w])
    assert res["samplers"]["worst"]["10"]["mean_regret"] == pytest.approx(np.mean(regrets))
    assert res["samplers"]["random"]["10"]["mean_regret"] < res["samplers"]["random"]["5"]["mean_regret"]


def test_stats_no_significance_when_all_archs_are_equal(tmp_path):
    perms = [(0.6875, 0.75, 0.8125), (0.75, 0.8125, 0.6875), (0.8125, 0.6875, 0.75)]

    def acc(params, seed, rng):  # every architecture has the same mean, but noisy seeds
        v = perms[(params["num_hidden_layers"] + params["intermediate_size"] // 128) % 3][seed]
        return v, v, v

    t = make_table(tmp_path, accuracy=acc)
    assert len(set(t.mean("trained").values())) == 1
    runs = replay_many(t, ["grid", "random", "tpe"], list(range(10)), 10, "trained", workers=1)
    res = stats.compare_samplers(runs, t, "trained", [5, 10])
    for p in res["pairs"]:
        assert not p["p_holm"] < 0.05  # a pick's held-out score regresses to the common mean: no sampler wins
    for by_budget in res["samplers"].values():
        for v in by_budget.values():  # the pick was the luckiest draw: selected above the held-out score
            assert v["selected_mean"] > v["heldout_mean"] + 0.05 and v["optimism"] > 0.05


def test_holm_and_wilcoxon_helpers():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.wilcoxon_p([0, 0, 0]) == 1.0
    d = [0.1, 0.2, -0.05, 0.3, 0.15, 0.12, 0.08]
    assert stats.wilcoxon_p(d) == pytest.approx(sps.wilcoxon(d).pvalue)
    ranks = sps.rankdata(np.abs(d))
    assert stats.rank_biserial(d) == pytest.approx((ranks[np.array(d) > 0].sum() - ranks[np.array(d) < 0].sum()) / ranks.sum())
    assert stats.prob_greater([1, 2, 3], [1, 1, 4]) == pytest.approx((0.5 + 1 + 0) / 3)


def _csv_rows(table):
    with (table.directory / "table.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_noise_floor_matches_independent_std(table):
    per: dict[str, list[float]] = {}
    for r in _csv_rows(table):
        per.setdefault(r["arch"], []).append(float(r["accuracy_finetuned"]))
    nf = stats.noise_floor(table)
    for arch, values in per.items():
        assert nf["per_arch"][arch]["finetuned"]["std"] == pytest.approx(np.std(values, ddof=1))
        assert nf["per_arch"][arch]["finetuned"]["max"] == max(values)
    assert nf["median_std"]["finetuned"] == pytest.approx(np.median([np.std(v, ddof=1) for v in per.values()]))


def test_kendall_tau_matches_scipy(table):
    sums: dict[str, list[float]] = {}
    for r in _csv_rows(table):
        sums.setdefault(r["arch"], []).append((float(r["accuracy_trained"]), float(r["accuracy_compressed"])))
    archs = sorted(sums)
    t = [np.mean([a for a, _ in sums[x]]) for x in archs]
    c = [np.mean([b for _, b in sums[x]]) for x in archs]
    q2 = stats.question2(table)
    assert q2["trained_vs_compressed"]["kendall_tau"] == pytest.approx(sps.kendalltau(t, c).statistic)
    assert q2["trained_vs_compressed"]["spearman_rho"] == pytest.approx(sps.spearmanr(t, c).statistic)
    drops = sorted(((a - b, x) for a, b, x in zip(t, c, archs)), reverse=True)
    assert [h["arch"] for h in q2["most_hurt"]] == [x for _, x in drops[:5]]


def test_top_k_overlap_on_a_hand_made_table(tmp_path):
    space = {"num_hidden_layers": [1, 2, 3], "num_attention_heads": [2], "hidden_size": [64], "intermediate_size": [128, 256]}
    ids = [f"L{L}-A2-H64-I{i}" for L in (1, 2, 3) for i in (128, 256)]  # A..F
    trained = dict(zip(ids, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]))  # A > B > C > D > E > F
    compressed = dict(zip(ids, [0.8, 0.9, 0.6, 0.7, 0.4, 0.5]))  # B > A > D > C > F > E
    t = make_table(tmp_path, space, accuracy=by_arch({a: (trained[a], compressed[a], trained[a]) for a in ids}))
    assert stats.top_k_overlap(t, "trained", "compressed") == {1: 0.0, 3: pytest.approx(2 / 3), 5: 0.8}
    assert stats.top_k_overlap(t, "trained", "finetuned") == {1: 1.0, 3: 1.0, 5: 1.0}


def test_q3_compression_aware_wins_when_compression_reverses_the_ranking(tmp_path):
    def acc(params, seed, rng):  # bigger trains better but compresses much worse
        size = params["num_hidden_layers"] * params["hidden_size"] * params["intermediate_size"] / (4 * 64 * 256)
        trained = 0.70 + 0.15 * size + rng.normal(0, 0.003)
        compressed = 0.85 - 0.25 * size + rng.normal(0, 0.003)
        return trained, compressed, compressed + 0.02

    t = make_table(tmp_path, accuracy=acc)
    assert stats.question2(t)["trained_vs_compressed"]["kendall_tau"] < -0.5
    seeds = list(range(12))
    runs = {(s, m): rs for m in ("trained", "compressed", "finetuned")
            for s, rs in replay_many(t, ["tpe", "random"], seeds, 8, m, workers=1).items()}
    q3 = stats.question3(runs, t, [5, 8])
    assert len(q3["comparisons"]) == 2 * 2 * 2
    for c in q3["comparisons"]:
        assert c["mean_difference"] > 0.05 and c["aware_mean"] > c["after_mean"]
        assert c["p_holm"] < 0.05 and c["p_aware_better"] > 0.9


def test_analyse_is_jsonable_without_nan(table):
    runs = {"trained": replay_many(table, ["grid", "tpe", "nsga2"], [0, 1, 2], 6, "trained", workers=1)}
    out = stats.to_jsonable(stats.analyse(table, runs, [5, 10, 50]))
    text = json.dumps(out, allow_nan=False)
    assert out["replay"]["budgets"] == [5]  # 10 and 50 exceed the 6-trial runs, 50 the 18 architectures
    assert json.loads(text)["hypervolume"]["trained"]["budgets"]["nsga2"]["5"]["mean"] > 0
    assert out["curves"]["trained"]["nsga2"]["measure"] == "heldout"
    summary = stats.format_summary(out)
    assert "Noise of one training run" in summary and "Question 2" in summary


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_table(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-table")
    write_synthetic_table(d, SMALL_SPACE)
    return d


def test_cli_replay_writes_outputs(cli_table, tmp_path, capsys):
    cfg = write_config(tmp_path / "search.toml", samplers=["grid", "random", "tpe", "nsga2"],
                       variants=["baseline", "compress"])
    out = tmp_path / "out"
    rc = main(["bench", "replay", "--table", str(cli_table), "--config", str(cfg), "--out", str(out),
               "--seeds", "4", "--budgets", "5,10", "--workers", "1"])
    assert rc == 0
    for name in ("stats.json", "summary.txt", "best_so_far.png", "q2_scatter.png", "q3_compress_after_vs_aware.png",
                 "best_so_far.csv", "replay_runs.csv"):
        assert (out / name).is_file(), name
    s = json.loads((out / "stats.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in stats.json"))
    assert s["replay"]["metrics"] == ["trained", "compressed"] and s["replay"]["budgets"] == [5, 10]
    assert s["q3"]["comparisons"] and s["noise_floor"]["median_std"]["trained"] > 0
    assert s["noise"]["test"]["trained"]["pooled_sd"] > 0 and s["scoring"]["split"] == "test"
    with (out / "replay_runs.csv").open() as fh:
        runs = list(csv.DictReader(fh))
    assert {r["sampler"] for r in runs} == {"grid", "random", "tpe", "nsga2"}
    assert {r["metric"] for r in runs} == {"trained", "compressed", "finetuned"}  # finetuned: question 3
    printed = capsys.readouterr().out
    assert "Question 3" in printed and str(out / "summary.txt") in printed


@pytest.mark.parametrize("change, match", [
    ({"space": {**SMALL_SPACE, "hidden_size": [48, 64, 96]}}, "space.hidden_size"),
    ({"samplers": ["tpe+nodes"]}, r"search.samplers\[0\] = 'tpe\+nodes'"),
    ({"args": ["--metric", "quantised"]}, "--metric = 'quantised' is not valid.*'trained', 'compressed', 'finetuned'"),
    ({"args": ["--budgets", "5,x"]}, "--budgets = '5,x': give positive integers"),
    ({"args": ["--budgets", "40,50"]}, "every budget exceeds the 18 buildable architectures"),
    ({"args": ["--seeds", "0"]}, r"--seeds = '0': give N \(seeds 0..N-1"),
    ({"table": "missing"}, "table directory .*missing not found"),
])
def test_cli_bad_input_exits_2_with_one_line(cli_table, tmp_path, capsys, change, match):
    import re

    cfg = write_config(tmp_path / "c.toml", space=change.get("space", SMALL_SPACE),
                       samplers=change.get("samplers", ["random"]))
    table_dir = tmp_path / change["table"] if "table" in change else cli_table
    rc = main(["bench", "replay", "--table", str(table_dir), "--config", str(cfg), "--out", str(tmp_path / "o"),
               "--seeds", "2", "--budgets", "5", *change.get("args", [])])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("mase-lite bench: error: ")
    assert re.search(match, err), err
