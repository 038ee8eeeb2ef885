"""Held-out scoring and inference at the level of training runs (search.bench.heldout), the noise report,
question 2 across independent runs, table schemas 1 and 2, and ``bench replay --seeds / --seed-mode``.

The statistical tests simulate 200 tables of 24 architectures x 6 seeds from a noise model
(architecture means + a seed effect shared by every architecture, twice the run noise + run noise +
measurement noise of the test rows) and replay the random sampler on them, vectorised
(search.bench.synthetic), comparing compress-after-NAS (select on trained) with compression-aware
search (select on compressed), both scored on the compressed accuracy.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from _bench_helpers import SMALL_SPACE, make_table, write_config
from mase_lite.cli import main
from mase_lite.errors import ConfigError
from search.bench import heldout as ho
from search.bench import stats
from search.bench.replay import replay, replay_many
from search.bench.synthetic import draw_seeds, noisy_runs, random_search_picks, write_synthetic_table
from search.bench.table import (
    MANIFEST_KEYS, SCHEMA_COLUMNS, TABLE_COLUMNS, BenchTable, TableError, check_compatible,
)
from search.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
N_ARCHS, N_SEEDS, N_TABLES, BUDGET = 24, 6, 200, 10
SD_RUN, SD_SEED, SD_TEST = 0.02, 0.04, 0.006  # strong shared seed noise: twice the run noise
NOISE_SD = math.sqrt(SD_RUN ** 2 + SD_SEED ** 2 + SD_TEST ** 2)  # sd of one run about its architecture's mean
Z = np.random.default_rng(123).standard_normal(N_ARCHS)
Z = (Z - Z.mean()) / Z.std()


def _simulate(means, n_runs, budget, seed, seed_mode="run"):
    """Per simulated table: (validation, test) arrays and the picks of both arms (after: selected on
    trained, aware: selected on compressed), sharing proposals and seeds (paired replays)."""
    rng = np.random.default_rng(seed)
    val = noisy_runs(rng, means, N_SEEDS, SD_RUN, SD_SEED, shared=0.0, n_tables=N_TABLES)
    out = []
    for v in val:
        test = v + SD_TEST * rng.standard_normal(v.shape)  # the same models on other rows
        props = rng.integers(0, N_ARCHS, size=(n_runs, budget))
        seeds = draw_seeds(rng, n_runs, N_ARCHS, N_SEEDS, seed_mode)
        out.append((v, test, random_search_picks(v[0], props, seeds), random_search_picks(v[1], props, seeds)))
    return out


@pytest.fixture(scope="module")
def null_tables():
    """Architectures all alike and trained/compressed exchangeable: aware and after are equally good."""
    return _simulate(np.full((2, N_ARCHS), 0.78), 1000, BUDGET, seed=1)


# --------------------------------------------------------------------------- statistical properties


def test_null_rejection_rate_is_controlled_where_todays_method_is_not(null_tables):
    new = [ho.mean_difference(test[1], aware, after).p for _, test, after, aware in null_tables]
    assert np.mean(np.array(new) < 0.05) <= 0.10
    # today's method: one seed per architecture, picks scored by their architecture's mean over every seed
    # (the value selected on included), Wilcoxon over the 1,000 replays
    rng, old = np.random.default_rng(5), []
    for val, _, _, _ in null_tables:
        props = rng.integers(0, N_ARCHS, size=(1000, BUDGET))
        seeds = draw_seeds(rng, 1000, N_ARCHS, N_SEEDS, "arch")
        after, aware = random_search_picks(val[0], props, seeds), random_search_picks(val[1], props, seeds)
        d = val[1].mean(axis=1)[aware.arch] - val[1].mean(axis=1)[after.arch]
        old.append(sps.wilcoxon(d, zero_method="zsplit").pvalue if np.any(d) else 1.0)
    assert np.mean(np.array(old) < 0.05) >= 0.9


def test_power_for_a_true_effect_of_half_the_noise_sd():
    # trained accuracy does not tell architectures apart; compressed does: the aware search is truly better
    means = np.stack([np.full(N_ARCHS, 0.78), 0.78 + 0.026 * Z])
    sims = _simulate(means, 200, 5, seed=2)
    true_effect = np.mean([(means[1][aware.arch] - means[1][after.arch]).mean() for _, _, after, aware in sims])
    assert 0.45 <= true_effect / NOISE_SD <= 0.60  # the effect tested is about half the noise sd
    p = np.array([ho.mean_difference(test[1], aware, after).p for _, test, after, aware in sims])
    assert np.mean(p < 0.05) >= 0.8


def test_heldout_score_is_unbiased_where_the_selected_value_is_not(null_tables):
    mu = 0.78  # every architecture's true mean
    heldout = [np.nanmean(ho.scores(test[1], aware)) - mu for _, test, _, aware in null_tables]
    selected = [np.nanmean(aware.selected) - mu for _, _, _, aware in null_tables]
    for bias, must_be_zero in ((heldout, True), (selected, False)):
        mean, se = np.mean(bias), np.std(bias, ddof=1) / math.sqrt(len(bias))
        assert bool(abs(mean) <= 3 * se) is must_be_zero, (mean, se)


def test_ci_from_1000_replays_is_as_wide_as_from_200(null_tables):
    ratios = []
    for _, test, after, aware in null_tables:
        wide = ho.mean_difference(test[1], aware, after)
        few = ho.mean_difference(test[1], aware.subset(np.arange(200)), after.subset(np.arange(200)))
        ratios.append((wide.ci[1] - wide.ci[0]) / (few.ci[1] - few.ci[0]))
    assert np.mean(ratios) >= 0.9


# --------------------------------------------------------------------------- the computations


def _heldout_loop(values, arch, seed, drop=None):
    keep = [values[arch, s] for s in range(values.shape[1]) if s not in (seed, drop) and not math.isnan(values[arch, s])]
    return float(np.mean(keep)) if keep else math.nan


def test_heldout_scores_and_jackknife_match_independent_computations():
    rng = np.random.default_rng(0)
    values = rng.normal(0.8, 0.03, size=(7, 4))
    values[2, 1] = np.nan  # a failed run
    picks = ho.Picks.make(range(30), rng.integers(0, 7, 30), rng.integers(0, 4, 30), rng.random(30))
    for drop in (None, 0, 3):
        got = ho.scores(values, picks, drop)
        want = [math.nan if s == drop else _heldout_loop(values, a, s, drop) for a, s in zip(picks.arch, picks.seed)]
        np.testing.assert_allclose(got, want, equal_nan=True)
        best = [math.nan if s == drop else max(_heldout_loop(values, a, s, drop) for a in range(7)) for s in picks.seed]
        np.testing.assert_allclose(ho.oracle(values, picks, drop), best, equal_nan=True)
    est = ho.mean_score(values, picks)
    folds = [np.nanmean(ho.scores(values, picks, c)) for c in range(4)]
    se = math.sqrt(3 / 4 * sum((f - np.mean(folds)) ** 2 for f in folds))
    assert est.estimate == pytest.approx(np.nanmean(ho.scores(values, picks))) and est.se == pytest.approx(se)
    assert est.df == 3 and est.p == pytest.approx(2 * sps.t.sf(abs(est.estimate) / se, 3))
    assert est.ci[1] - est.estimate == pytest.approx(sps.t.ppf(0.975, 3) * se)


def test_random_search_picks_take_the_best_observed_value_earliest_on_ties():
    select = np.array([[0.5, 0.9], [0.7, 0.1], [0.7, 0.2]])
    props = np.array([[0, 1, 2], [1, 2, 0]])
    picks = random_search_picks(select, props, np.zeros((2, 3), dtype=int))
    assert picks.arch.tolist() == [1, 1] and picks.selected.tolist() == [0.7, 0.7]
    picks = random_search_picks(select, props, np.ones((2, 3), dtype=int), budget=2)
    assert picks.arch.tolist() == [0, 2] and picks.seed.tolist() == [1, 1]


def test_noise_report_matches_independent_computations(tmp_path):
    rng = np.random.default_rng(3)
    vals = {(a, s): 0.78 + 0.01 * (a % 4) + rng.normal(0, 0.02) for a in range(18) for s in range(4)}
    vals[(5, 2)], vals[(9, 0)] = 0.503, 0.60  # a run at chance, a collapsed one

    def acc(params, seed, _rng):
        from _bench_helpers import SMALL_SPACE as sp
        i = [c for c in itertools.product(*sp.values()) if c[2] % c[1] == 0].index(tuple(params.values()))
        v = vals[(i, seed)]
        return v, v, v

    t = make_table(tmp_path, seeds=(0, 1, 2, 3), accuracy=acc, data={"n_val": 1000})
    arr = t.array("trained")
    n = stats.noise_report(t)["val"]["trained"]
    var = arr.var(axis=1, ddof=1)
    assert n["pooled_sd"] == pytest.approx(math.sqrt(var.mean())) and n["median_sd"] == pytest.approx(np.median(np.sqrt(var)))
    assert n["n_at_chance"] == 1 and {(c["accuracy"]) for c in n["collapsed"]} == {0.503, 0.60}
    msb, msw = 4 * arr.mean(axis=1).var(ddof=1), var.mean()
    assert n["icc"] == pytest.approx((msb - msw) / (msb + 3 * msw))
    taus = [sps.kendalltau(arr[:, i], arr[:, j]).statistic for i, j in itertools.combinations(range(4), 2)]
    assert n["retest_tau"] == pytest.approx(np.mean(taus))
    assert n["seed_friedman_p"] == pytest.approx(sps.friedmanchisquare(*arr.T).pvalue)


def test_q2_compares_independent_runs_with_the_retest_baseline(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.normal(0, 0.03, 18)

    def acc(params, seed, _rng):  # compressed ranks like trained, from the same (noisy) model
        i = params["num_hidden_layers"] * 7 + params["hidden_size"] + params["intermediate_size"] // 64
        noise = _rng.normal(0, 0.02)
        v = 0.8 + base[i % 18] + noise
        return v, v - 0.01 + _rng.normal(0, 0.002), v

    t = make_table(tmp_path, seeds=(0, 1, 2, 3), accuracy=acc)
    ind = stats.question2(t)["independent_runs"]["compressed"]
    tr, co = t.array("trained"), t.array("compressed")
    cross = np.mean([sps.kendalltau(tr[:, i], co[:, j]).statistic for i, j in itertools.permutations(range(4), 2)])
    assert ind["cross_runs"] == pytest.approx(cross)
    assert ind["same_runs"]["kendall_tau"] > ind["cross_runs"]  # same-model agreement is inflated
    assert ind["difference"]["ci"][0] < 0 < ind["difference"]["ci"][1]  # no reordering beyond training noise


# --------------------------------------------------------------------------- replay: seeds and seed modes


def test_seed_modes(tmp_path):
    t = make_table(tmp_path)
    run = replay(t, "random", 3, 12)
    assert run.seed_mode == "run" and len({x.table_seed for x in run.trials}) == 1
    per_arch = [replay(t, "random", s, 12, seed_mode="arch") for s in range(5)]
    assert any(len({x.table_seed for x in r.trials}) > 1 for r in per_arch)
    with pytest.raises(ConfigError, match="seed_mode = 'study'"):
        replay(t, "random", 0, 5, seed_mode="study")


@pytest.mark.parametrize("raw, want", [("3", [0, 1, 2]), ("5000-5003", [5000, 5001, 5002, 5003]), ("9,2,4", [9, 2, 4]),
                                       (" 7 - 7 ", [7])])
def test_parse_seeds_forms(raw, want):
    from mase_lite.commands.bench import parse_seeds

    assert parse_seeds(raw) == want


@pytest.mark.parametrize("raw", ["0", "5-2", "1,1", "a-b", "-3", "2,x", "", "1.5"])
def test_parse_seeds_errors_name_the_option_and_the_forms(raw):
    from mase_lite.commands.bench import parse_seeds

    with pytest.raises(ConfigError, match=r"--seeds = .*: give N \(seeds 0..N-1.*A-B.*a,b,c"):
        parse_seeds(raw)


def test_cli_replay_any_seeds_and_seed_mode(tmp_path, capsys):
    d = tmp_path / "t"
    write_synthetic_table(d, SMALL_SPACE, seeds=(0, 1, 2, 3))
    cfg = write_config(tmp_path / "c.toml", samplers=["random", "tpe"], variants=["baseline", "compress"])
    rc = main(["bench", "replay", "--table", str(d), "--config", str(cfg), "--out", str(tmp_path / "o"),
               "--seeds", "100-103", "--budgets", "5", "--workers", "1", "--seed-mode", "arch"])
    assert rc == 0
    s = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert s["replay"]["seeds"] == "100-103" and s["replay"]["seed_mode"] == "arch"
    assert s["scoring"]["split"] == "test" and s["q3"]["comparisons"]
    with (tmp_path / "o" / "replay_runs.csv").open() as fh:
        assert {(r["seed"], r["seed_mode"]) for r in csv.DictReader(fh)} == {(str(x), "arch") for x in range(100, 104)}
    assert "one training seed per architecture" in capsys.readouterr().out
    rc = main(["bench", "replay", "--table", str(d), "--config", str(cfg), "--out", str(tmp_path / "o2"),
               "--seeds", "5-2", "--budgets", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--seeds = '5-2': give N" in err


# --------------------------------------------------------------------------- table schemas


@pytest.mark.parametrize("name", ["lab2-cpu", "lab2-cpu-5k"])
def test_schema1_tables_still_load_and_replay_on_held_out_seeds(name):
    t = BenchTable.load(REPO / "benchmarks" / "tables" / name)
    assert t.schema_version == 1 and not t.has_test and np.all(np.isnan(t.array("trained", "test")))
    assert ho.scoring_split(t) == "val" and "held out by seed, not by rows" in ho.scoring_note(t)
    runs = {"trained": replay_many(t, ["random", "tpe"], [0, 1, 2], 6, "trained", workers=1)}
    out = stats.to_jsonable(stats.analyse(t, runs, [5]))
    assert out["scoring"]["split"] == "val" and out["table"]["schema_version"] == 1
    assert "no test columns" in stats.format_summary(out)
    cfg = RunConfig.from_dict({"space": t.space, "data": {**t.manifest["data"], "n_test": 5000},
                               "train": {k: v for k, v in t.manifest["train"].items() if k != "seed"}})
    check_compatible(t, cfg)  # n_test does not matter for a table without test columns


def test_the_committed_held_out_table_is_the_pre_registered_one():
    """benchmarks/tables/lab2-heldout: every row of the plan, schema 2 with real test columns, and the
    manifest's pre-registration is the config's [bench] table (the config cannot drift from the table)."""
    from search.bench.build import preregistration
    from search.config import load_run_config

    t = BenchTable.load(REPO / "benchmarks" / "tables" / "lab2-heldout")
    cfg = load_run_config(REPO / "examples" / "bench_lab2_heldout.toml")
    assert t.schema_version == 2 and t.has_test and t.seeds == [0, 1, 2, 3, 4, 5] and t.n_archs == 24
    assert json.loads(json.dumps(preregistration(cfg))) == t.manifest["preregistration"]
    check_compatible(t, cfg, cfg.search.samplers, ["trained", "compressed", "finetuned"])
    for metric in ("trained", "compressed", "finetuned"):
        val, test = t.array(metric), t.array(metric, "test")
        assert not np.isnan(val).any() and not np.isnan(test).any()
        assert not np.array_equal(val, test)  # two evaluations, not one copied
        # 5,000 test rows: every accuracy is a multiple of 1/5000, as 1,000 validation rows give 1/1000
        assert np.allclose(np.round(test * 5000), test * 5000, atol=1e-6)
    runs = {m: replay_many(t, ["random"], [0, 1, 2, 3], 5, m, workers=1) for m in ("trained", "compressed")}
    q3_runs = {("random", m): r["random"] for m, r in runs.items()}
    out = stats.to_jsonable(stats.analyse(t, runs, [5], q3_runs=q3_runs))
    (primary,) = stats.preregistered(out, t.manifest["preregistration"])["primary"]
    (q3,) = [c for c in out["q3"]["comparisons"] if (c["sampler"], c["target"], c["budget"]) == ("random", "compressed", 5)]
    assert primary["hypothesis"] == "q3:compressed:random:5:greater" and primary["estimate"] == q3["mean_difference"]
    one_sided = q3["p"] / 2 if q3["mean_difference"] > 0 else 1 - q3["p"] / 2
    assert primary["p"] == pytest.approx(one_sided) and primary["p_holm"] == pytest.approx(one_sided)  # a family of one


def test_schema2_has_test_columns_and_n_test_matters(tmp_path):
    def acc(params, seed, rng):  # test accuracies differ from validation ones
        return 0.8, 0.7, 0.75, 0.79, 0.69, 0.74

    write_synthetic_table(tmp_path, SMALL_SPACE, accuracy=acc, data={"n_test": 5000}, preregistration={"alpha": 0.05})
    t = BenchTable.load(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert tuple(manifest) == MANIFEST_KEYS and manifest["schema_version"] == 2
    assert manifest["preregistration"] == {"alpha": 0.05} and TABLE_COLUMNS == SCHEMA_COLUMNS[2]
    assert t.has_test and np.all(t.array("compressed", "test") == 0.69) and np.all(t.array("compressed") == 0.7)
    base = {"space": t.space, "data": {"n_test": 5000}}
    check_compatible(t, RunConfig.from_dict(base))
    with pytest.raises(TableError, match="data.n_test = 5000 in the table .* 2000 in the config"):
        check_compatible(t, RunConfig.from_dict({**base, "data": {"n_test": 2000}}))


def test_unknown_schema_version_is_refused(tmp_path):
    write_synthetic_table(tmp_path, SMALL_SPACE)
    m = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**m, "schema_version": 3}))
    with pytest.raises(TableError, match="schema_version = 3; this mase-lite reads schema versions 1, 2"):
        BenchTable.load(tmp_path)


def test_replay_of_a_preregistered_table_uses_its_plan_and_reports_its_hypotheses(tmp_path, capsys):
    plan = {"seeds": [0, 1, 2, 3], "replay_seeds": "0-3", "seed_mode": "run", "budgets": [5], "alpha": 0.05,
            "primary": ["q3:compressed:random:5:greater"],
            "secondary": ["q1:trained:tpe-random:5:two-sided", "q1:trained:random-grid:5:two-sided", "q2:compressed"]}
    d = tmp_path / "t"
    write_synthetic_table(d, SMALL_SPACE, seeds=(0, 1, 2, 3), preregistration=plan)
    cfg = write_config(tmp_path / "c.toml", samplers=["random", "tpe"], variants=["baseline"])
    assert main(["bench", "replay", "--table", str(d), "--config", str(cfg), "--out", str(tmp_path / "o"),
                 "--workers", "1"]) == 0
    s = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert s["replay"]["seeds"] == "0-3" and s["replay"]["budgets"] == [5]
    q3 = next(c for c in s["q3"]["comparisons"] if (c["sampler"], c["target"], c["budget"]) == ("random", "compressed", 5))
    primary = s["preregistered"]["primary"][0]
    one_sided = q3["p"] / 2 if q3["mean_difference"] > 0 else 1 - q3["p"] / 2
    assert primary["estimate"] == q3["mean_difference"] and primary["p"] == pytest.approx(one_sided, rel=1e-5)
    pair = next(p for p in s["searches"]["trained"]["pairs"] if p["budget"] == 5)
    tpe_random, missing, q2 = s["preregistered"]["secondary"]
    sign = 1 if (pair["a"], pair["b"]) == ("tpe", "random") else -1
    assert tpe_random["estimate"] == pytest.approx(sign * pair["mean_difference"])
    assert "not computed" in missing["missing"] and q2["p"] is None and q2["ci"][0] is not None
    assert "Pre-registered hypotheses" in capsys.readouterr().out


# --------------------------------------------------------------------------- the power calculation


def test_variance_components_match_a_two_way_anova_by_hand(tmp_path):
    from search.bench.power import simulate_power, variance_components

    rng = np.random.default_rng(6)
    seed_fx = rng.normal(0, 0.02, 4)

    def acc(params, seed, _rng):
        base = 0.75 + 0.02 * (params["hidden_size"] == 64)
        v = base + seed_fx[seed] + _rng.normal(0, 0.01)
        return v, v - 0.02 + _rng.normal(0, 0.01), v + 0.03

    t = make_table(tmp_path, seeds=(0, 1, 2, 3), accuracy=acc)
    c = variance_components(t)
    y = t.array("trained")
    a, s = y.shape
    resid = [[y[i, j] - y[i].mean() - y[:, j].mean() + y.mean() for j in range(s)] for i in range(a)]
    ms_res = sum(r ** 2 for row in resid for r in row) / ((a - 1) * (s - 1))
    ms_seed = a * sum((y[:, j].mean() - y.mean()) ** 2 for j in range(s)) / (s - 1)
    ms_arch = s * sum((y[i].mean() - y.mean()) ** 2 for i in range(a)) / (a - 1)
    assert c.sd_run[0] == pytest.approx(math.sqrt(ms_res)) and c.sd_seed[0] == pytest.approx(math.sqrt((ms_seed - ms_res) / a))
    assert c.icc[0] == pytest.approx((ms_arch - ms_res) / (ms_arch + 3 * ms_res))
    shrunk = y.mean() + (1 - ms_res / ms_arch) * (y.mean(axis=1) - y.mean())
    np.testing.assert_allclose(c.means[0], shrunk)
    out = simulate_power(c, [("q3", "compressed", "random", "random", 5), ("q1", "trained", "grid", "random", 5)],
                         n_seeds=4, n_test=5000, n_tables=10, n_runs=50)
    assert [r["test"] for r in out] == ["q3:compressed:random-random:5", "q1:trained:grid-random:5"]
    assert all(0 <= r["power"] <= 1 and r["mde80"] > 0 for r in out)
