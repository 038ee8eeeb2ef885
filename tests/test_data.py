"""IMDb pipeline: seeded subsets, tokenised-split cache, model/data checks and bad-input errors."""

from __future__ import annotations

import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mase_lite.data import (
    DataConfig,
    check_max_length,
    check_vocab,
    load_splits,
    load_tokenizer,
    split_indices,
)
from mase_lite.errors import ConfigError, DataError

from conftest import make_tiny_bert


class CountingTokenizer:
    """Wraps a tokenizer and counts the calls that tokenise a batch of texts."""

    def __init__(self, tok):
        self.tok = tok
        self.calls = 0

    def __call__(self, text, *args, **kwargs):
        if isinstance(text, list):
            self.calls += 1
        return self.tok(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _rows(ds):
    return [tuple(x) for x in ds["input_ids"]]


def _snapshot(path):
    return sorted((p, os.stat(os.path.join(d, p)).st_mtime_ns) for d, _, files in os.walk(path) for p in files)


# --------------------------------------------------------------------------- subsets


def test_split_indices_seeded_disjoint_and_stable_val():
    cfg = DataConfig(n_train=100, n_val=50, n_test=30, seed=3)
    a = split_indices(1000, 500, cfg)
    b = split_indices(1000, 500, cfg)
    for k in ("train", "val", "test"):
        assert np.array_equal(a[k], b[k])
    assert len(a["train"]) == 100 and len(a["val"]) == 50 and len(a["test"]) == 30
    assert not set(a["train"]) & set(a["val"])
    # the validation rows do not depend on n_train, so search selects on the same rows
    bigger = split_indices(1000, 500, cfg.replace(n_train=400))
    assert np.array_equal(bigger["val"], a["val"])
    assert np.array_equal(bigger["train"][:100], a["train"])
    other = split_indices(1000, 500, cfg.replace(seed=4))
    assert not np.array_equal(other["train"], a["train"])
    # n_train=None: every training row not in validation
    everything = split_indices(1000, 500, cfg.replace(n_train=None, n_test=None))
    assert len(everything["train"]) == 950 and len(everything["test"]) == 500
    assert sorted(set(everything["train"]) | set(everything["val"])) == list(range(1000))


def test_tiny_splits_shape_shuffled_and_truncated(tiny_splits, tiny_data_config):
    s = tiny_splits
    assert (len(s.train), len(s.val), len(s.test)) == (256, 64, 64)
    assert set(s.train.column_names) == {"input_ids", "labels", "length"}
    assert s.pad_id == 0 and s.num_labels == 2
    labels = np.asarray(s.train["labels"])
    # the files are sorted by label: an unshuffled subset would hold a single class
    assert 0.3 < labels.mean() < 0.7
    ids = s.train["input_ids"]
    lengths = np.asarray(s.train["length"])
    assert all(len(x) == n for x, n in zip(ids, lengths))
    assert lengths.max() == tiny_data_config.max_length  # IMDb reviews are long: truncation happens
    assert all(x[0] == 101 and x[-1] == 102 for x in ids)  # [CLS] ... [SEP]
    assert not set(_rows(s.train)) & set(_rows(s.val))


def test_same_seed_same_rows_other_seed_other_rows(tiny_data_config, tokenizer, tmp_path, tiny_splits):
    again = load_splits(tiny_data_config.replace(cache_dir=str(tmp_path / "fresh")), tokenizer)
    assert _rows(again.train) == _rows(tiny_splits.train)
    assert _rows(again.test) == _rows(tiny_splits.test)
    other = load_splits(tiny_data_config.replace(seed=1, cache_dir=str(tmp_path / "fresh")), tokenizer)
    assert _rows(other.train) != _rows(tiny_splits.train)


# --------------------------------------------------------------------------- cache


def test_second_load_hits_the_cache_without_tokenising(data_dir, tokenizer, tmp_path):
    cfg = DataConfig(data_dir=str(data_dir), n_train=40, n_val=8, n_test=8, max_length=32, cache_dir=str(tmp_path))
    before = _snapshot(data_dir)
    first_tok = CountingTokenizer(tokenizer)
    first = load_splits(cfg, first_tok)
    assert first_tok.calls == 3  # train, val, test
    entries = sorted((tmp_path / "tokenized").iterdir())
    assert len(entries) == 3
    mtimes = _snapshot(tmp_path)

    second_tok = CountingTokenizer(tokenizer)
    second = load_splits(cfg, second_tok)
    assert second_tok.calls == 0
    assert _snapshot(tmp_path) == mtimes  # reused, not rewritten
    assert _rows(second.train) == _rows(first.train)
    assert second.train["labels"] == first.train["labels"]

    # a different max_length is a different key: tokenised again, in new entries
    third_tok = CountingTokenizer(tokenizer)
    load_splits(cfg.replace(max_length=24), third_tok)
    assert third_tok.calls == 3
    assert len(list((tmp_path / "tokenized").iterdir())) == 6
    assert _snapshot(data_dir) == before  # nothing written under the data dir


def test_cache_dir_from_env(data_dir, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("MASE_LITE_CACHE", str(tmp_path / "envcache"))
    load_splits(DataConfig(data_dir=str(data_dir), n_train=8, n_val=4, n_test=4, max_length=16), tokenizer)
    assert len(list((tmp_path / "envcache" / "tokenized").iterdir())) == 3


def test_head_tail_truncation(data_dir, tokenizer, tmp_path):
    cfg = DataConfig(data_dir=str(data_dir), n_train=16, n_val=0, n_test=4, max_length=34, cache_dir=str(tmp_path),
                     truncation="head")
    head = load_splits(cfg, tokenizer, ("train",)).train
    counting = CountingTokenizer(tokenizer)
    both = load_splits(cfg.replace(truncation="head_tail"), counting, ("train",)).train
    assert counting.calls > 0  # a different cache entry, not the head-truncated one
    assert head["labels"] == both["labels"]
    raw = load_splits(cfg.replace(max_length=512), tokenizer, ("train",)).train["input_ids"]  # (nearly) untruncated
    for h, b, full in zip(head["input_ids"], both["input_ids"], raw):
        assert len(b) == len(h) <= 34 and b[0] == 101 and b[-1] == 102
        if len(full) <= 34:
            assert b == h == full
        elif len(full) < 512:  # 8 tokens from the start, 24 from the end
            assert b[1:9] == h[1:9] == full[1:9]
            assert b[9:-1] == full[-25:-1]
    assert len(list((tmp_path / "tokenized").iterdir())) == 3


def test_truncation_side_is_part_of_the_cache_key(data_dir, tokenizer, tmp_path):
    # truncation = "head" cuts where the tokenizer says: a left-truncating tokenizer keeps the ends
    # of the reviews, so it must not be served the right-truncated ids of the same rows
    cfg = DataConfig(data_dir=str(data_dir), n_train=16, n_val=0, n_test=4, max_length=20, cache_dir=str(tmp_path),
                     truncation="head")
    left = load_tokenizer(cfg)
    left.truncation_side = "left"
    # (both wrapped alike: the fingerprint includes the tokenizer's class)
    right = load_splits(cfg, CountingTokenizer(tokenizer), ("train",)).train["input_ids"]
    assert len(list((tmp_path / "tokenized").iterdir())) == 1
    counting = CountingTokenizer(left)
    got = load_splits(cfg, counting, ("train",)).train["input_ids"]
    assert counting.calls == 1  # tokenised: not the right-truncated cache entry
    assert len(list((tmp_path / "tokenized").iterdir())) == 2  # a different key
    full = load_splits(cfg.replace(max_length=512), tokenizer, ("train",)).train["input_ids"]
    cut = [i for i, ids in enumerate(full) if 20 < len(ids) < 512]
    assert cut  # IMDb reviews are longer than 20 tokens
    for i in cut:
        assert right[i] == full[i][:19] + [102] and got[i] == [101] + full[i][-19:]
        assert got[i] != right[i]
    # and the same left-truncating tokenizer hits its own entry
    again = CountingTokenizer(left)
    assert load_splits(cfg, again, ("train",)).train["input_ids"] == got and again.calls == 0


def test_zero_validation_rows(data_dir, tokenizer):
    s = load_splits(DataConfig(data_dir=str(data_dir), n_train=8, n_val=0, n_test=4, max_length=16), tokenizer)
    assert len(s.val) == 0 and len(s.train) == 8


# --------------------------------------------------------------------------- configurable dataset


def _write_split_files(root, name, columns, n=20):
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    text_col, label_col = columns
    for split in ("train", "test"):
        labels = rng.integers(0, 3, n)
        table = pa.table({text_col: [f"review number {i} is {'good' if y else 'bad'}" for i, y in enumerate(labels)],
                          label_col: labels})
        pq.write_table(table, d / f"{split}.parquet")


def test_custom_dataset_columns_and_labels(tmp_path, data_dir, tokenizer):
    _write_split_files(tmp_path, "reviews", ("review", "stars"))
    cfg = DataConfig(dataset="reviews", data_dir=str(tmp_path), text_column="review", label_column="stars",
                     num_labels=3, n_train=10, n_val=5, n_test=5, max_length=16, cache_dir=str(tmp_path / "c"))
    s = load_splits(cfg, tokenizer)
    assert len(s.train) == 10 and s.num_labels == 3
    assert set(s.train["labels"]) <= {0, 1, 2}

    with pytest.raises(DataError, match=r"labels in \[0, 2\].*num_labels = 2"):
        load_splits(cfg.replace(num_labels=2), tokenizer)


def test_missing_columns_named(tmp_path, tokenizer):
    _write_split_files(tmp_path, "imdb", ("review", "sentiment"))
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(data_dir=str(tmp_path), n_train=4, n_val=2), tokenizer)
    msg = str(err.value)
    assert "'text'" in msg and "text_column" in msg and "review, sentiment" in msg and "train.parquet" in msg


def test_not_a_parquet_file(tmp_path, tokenizer):
    (tmp_path / "imdb").mkdir()
    for split in ("train", "test"):
        (tmp_path / "imdb" / f"{split}.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_splits(DataConfig(data_dir=str(tmp_path)), tokenizer)


# --------------------------------------------------------------------------- missing data


def test_data_tests_skip_without_the_mirror_but_fail_in_ci(tmp_path, monkeypatch):
    from conftest import require_data_dir

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"data mirror not found at .*MASE_LITE_DATA"):
        require_data_dir(tmp_path)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_data_dir(tmp_path)
    for value in ("true", "1"):
        monkeypatch.setenv("CI", value)
        match = rf"not found at {re.escape(str(tmp_path))} .*MASE_LITE_DATA.*must run, not skip"
        with pytest.raises(pytest.fail.Exception, match=match):
            require_data_dir(tmp_path)
    (tmp_path / "imdb").mkdir()
    (tmp_path / "imdb" / "train.parquet").touch()
    assert require_data_dir(tmp_path) == tmp_path


def test_empty_mirror_and_no_hub_is_one_clear_error(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("MASE_LITE_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(), tokenizer)
    msg = str(err.value)
    assert str(tmp_path / "imdb" / "train.parquet") in msg
    assert "stanfordnlp/imdb" in msg and "MASE_LITE_DATA" in msg and "HF_HUB_OFFLINE" in msg


def test_no_mirror_set_and_no_hub(monkeypatch, tokenizer):
    monkeypatch.delenv("MASE_LITE_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"neither data.data_dir nor \$MASE_LITE_DATA is set.*stanfordnlp/imdb"):
        load_splits(DataConfig(), tokenizer)


def test_tokenizer_missing_from_mirror_and_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_tokenizer(DataConfig(data_dir=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "bert-base-uncased") in msg and "hub" in msg and "MASE_LITE_DATA" in msg


def test_tokenizer_loads_offline_from_mirror(tokenizer):
    assert tokenizer("Bromwell High is a cartoon comedy.")["input_ids"] == [
        101, 22953, 2213, 4381, 2152, 2003, 1037, 9476, 4038, 1012, 102,
    ]


# --------------------------------------------------------------------------- sizes and limits


def test_n_train_larger_than_split(data_dir, tokenizer):
    with pytest.raises(DataError, match=r"data.n_train = 30000 is larger.*25000 rows.*n_train <= 23000"):
        load_splits(DataConfig(data_dir=str(data_dir), n_train=30000, n_val=2000), tokenizer)
    with pytest.raises(DataError, match="data.n_test = 26000"):
        load_splits(DataConfig(data_dir=str(data_dir), n_train=10, n_test=26000), tokenizer)


def test_max_length_limits():
    with pytest.raises(ConfigError, match=r"max_length = 4 is out of range"):
        DataConfig.from_dict({"max_length": 4})
    model = make_tiny_bert()  # max_position_embeddings = 128
    check_max_length(model, 128)
    check_max_length(model.config, 64)
    check_max_length(512, 512)
    with pytest.raises(ConfigError, match=r"max_length = 256.*max_position_embeddings \(128\)"):
        check_max_length(model, 256)
    with pytest.raises(ConfigError, match="at least 8"):
        check_max_length(128, 7)


def test_vocab_check(tokenizer):
    check_vocab(tokenizer, make_tiny_bert())
    with pytest.raises(DataError, match=r"30522 tokens but the model's embedding has only 1000 rows"):
        check_vocab(tokenizer, make_tiny_bert(vocab_size=1000))


def test_data_config_rejects_bad_keys_and_values():
    with pytest.raises(ConfigError, match="unknown config key 'data.n_trian'.*did you mean 'n_train'"):
        DataConfig.from_dict({"n_trian": 5}, path="data")
    with pytest.raises(ConfigError, match="n_val"):
        DataConfig.from_dict({"n_val": -1})
    with pytest.raises(ConfigError, match="num_labels"):
        DataConfig.from_dict({"num_labels": 1})
