"""``bench build``: one row per (buildable architecture, seed), resumable after a kill, bad input refused."""

from __future__ import annotations

import pytest

from mase_lite.cli import main
from search.bench.build import build_table
from search.bench.table import BenchTable, TABLE_COLUMNS
from search.config import RunConfig, SearchError

from test_search_study import tiny_config


def bench_config(**search) -> RunConfig:
    cfg = tiny_config(variants=["baseline", "compress", "compress_finetune"], **search)
    cfg.finetune = {"lr": 5e-4}
    return cfg


def test_build_writes_every_buildable_architecture_once_per_seed(fake_training, tmp_path, monkeypatch):
    seeds_built = []
    real = fake_training.lifecycle.build
    monkeypatch.setattr(fake_training.lifecycle, "build", lambda c: (seeds_built.append(c.seed), real(c))[1])
    result = build_table(bench_config(), tmp_path / "t", seeds=[0, 5])
    # space: hidden 8/12 x heads 2/3 -> (8, 3) cannot be built: 3 architectures x 2 seeds
    assert (result.rows_done, result.rows_total) == (6, 6) and result.table is not None
    table = BenchTable.load(tmp_path / "t")
    assert sorted(table.archs) == ["L1-A2-H12-I16", "L1-A2-H8-I16", "L1-A3-H12-I16"]
    assert list(table.seeds) == [0, 5] and table.manifest["n_rows"] == 6
    assert sorted(seeds_built) == [0, 0, 0, 5, 5, 5]
    header = (tmp_path / "t" / "table.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == TABLE_COLUMNS
    # the fake: compression costs 0.1, fine-tuning gives 0.05 back; all three stages in each row
    for arch in table.archs:
        for i in range(2):
            tr, co, ft = (table.value(arch, i, m) for m in ("trained", "compressed", "finetuned"))
            assert co == pytest.approx(tr - 0.1) and ft == pytest.approx(tr - 0.05)
            # the same models on the test split (the fake scores it 0.01 lower; it cannot tell a fine-tuned
            # graph evaluated without training from a compressed one)
            test = [table.array(m, "test")[table.arch_index[arch], i] for m in ("trained", "compressed", "finetuned")]
            assert test == pytest.approx([tr - 0.01, co - 0.01, co - 0.01])
    assert len(fake_training.calls) == 6 * 3 and len(fake_training.test_calls) == 6 * 3
    assert table.has_test and table.manifest["preregistration"] == {}


def test_killed_build_resumes_without_losing_a_row(fake_training, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = fake_training.train_and_eval

    def dies_on_the_fourth_row(graph, splits, cfg, train=True, **kw):
        if train and not graph.history:
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
        return real(graph, splits, cfg, train, **kw)

    monkeypatch.setattr(fake_training, "train_and_eval", dies_on_the_fourth_row)
    with pytest.raises(KeyboardInterrupt):
        build_table(bench_config(), tmp_path / "t", seeds=[0, 1])
    assert not (tmp_path / "t" / "table.csv").exists()
    result = build_table(bench_config(), tmp_path / "t", seeds=[0, 1])
    assert result.rows_done == result.rows_total == 6
    assert calls["n"] == 4 + 3  # three rows done before the kill are not trained again; the killed one is
    table = BenchTable.load(tmp_path / "t")
    assert len(table.archs) * len(table.seeds) == 6


def test_build_refuses_another_setup_in_the_same_storage(fake_training, tmp_path):
    build_table(bench_config(), tmp_path / "t", seeds=[0])
    other = bench_config()
    other.train.lr = 0.5
    with pytest.raises(SearchError, match=r"started with another setup \(train.lr: 0.001 in the stored study, 0.5"):
        build_table(other, tmp_path / "t", seeds=[0])


def test_cli_build_bad_seeds_is_one_line(tmp_path, capsys):
    code = main(["bench", "build", "--config", str(tmp_path / "x.toml"), "--out", str(tmp_path / "o"), "--seeds", "0,0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--seeds = '0,0'" in err


def test_preregistration_goes_into_the_manifest_and_is_locked(fake_training, tmp_path):
    from search.bench.plan import BenchPlan

    cfg = bench_config()
    cfg.bench = BenchPlan.from_dict({"seeds": [0], "primary": ["q3:compressed:random:5:greater"]}, "bench")
    build_table(cfg, tmp_path / "t", seeds=[0])
    manifest = BenchTable.load(tmp_path / "t").manifest
    assert manifest["preregistration"]["primary"] == ["q3:compressed:random:5:greater"]
    changed = bench_config()
    changed.bench = BenchPlan.from_dict({"seeds": [0], "primary": ["q3:compressed:random:10:greater"]}, "bench")
    with pytest.raises(SearchError, match="preregistration"):
        build_table(changed, tmp_path / "t", seeds=[0])


def test_cli_build_seeds_must_match_the_preregistered_ones(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[search]\nname = "b"\n\n[bench]\nseeds = [0, 1, 2, 3, 4, 5]\n')
    code = main(["bench", "build", "--config", str(cfg), "--out", str(tmp_path / "o"), "--seeds", "0,1,2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "differs from the pre-registered bench.seeds" in err


def test_the_heldout_config_preregisters_its_design():
    from pathlib import Path

    from search.config import load_run_config

    cfg = load_run_config(Path(__file__).resolve().parents[1] / "examples" / "bench_lab2_heldout.toml")
    assert cfg.bench.seeds == [0, 1, 2, 3, 4, 5] and cfg.data.n_test >= 5000 and cfg.train.precision == "fp32"
    assert cfg.bench.primary == ["q3:compressed:random:5:greater"] and cfg.bench.seed_mode == "run"
