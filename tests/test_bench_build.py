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
    assert len(fake_training.calls) == 6 * 3


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
