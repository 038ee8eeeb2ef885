"""Data checks at their boundaries (the largest valid value passes, one more fails) and the head+tail
cut where the quarter is not a whole number of tokens. The cut is pinned exactly: the tokenised-data
cache key does not encode the cut rule, so a drifting rule would silently mix old and new ids."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch import nn

from mase_lite.data import DataConfig, check_max_length, check_vocab, load_splits, split_indices
from mase_lite.errors import ConfigError, DataError


def test_max_length_may_equal_the_position_limit():
    check_max_length(512, 512)
    check_max_length(512, 8)  # the lower bound itself
    with pytest.raises(ConfigError, match="data.max_length = 513"):
        check_max_length(512, 513)
    with pytest.raises(ConfigError, match="data.max_length = 7"):
        check_max_length(512, 7)


def test_the_validation_split_must_leave_at_least_one_training_row():
    idx = split_indices(5, 3, DataConfig(n_val=4))
    assert (len(idx["val"]), len(idx["train"]), len(idx["test"])) == (4, 1, 3)
    assert sorted([*idx["val"], *idx["train"]]) == list(range(5))
    with pytest.raises(DataError, match="leaves no training rows"):
        split_indices(5, 3, DataConfig(n_val=5))
    assert len(split_indices(5, 3, DataConfig(n_val=2, n_train=3))["train"]) == 3  # exactly what is left
    with pytest.raises(DataError, match="n_train = 4"):
        split_indices(5, 3, DataConfig(n_val=2, n_train=4))


class _Tok:
    name_or_path = "stub"

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class _Model:
    def __init__(self, rows):
        self.emb = nn.Embedding(rows, 2)

    def get_input_embeddings(self):
        return self.emb


def test_a_tokenizer_as_large_as_the_embedding_fits():
    check_vocab(_Tok(100), _Model(100))
    with pytest.raises(DataError, match="101 tokens but the model's embedding has only 100 rows"):
        check_vocab(_Tok(101), _Model(100))


WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


def _mirror(tmp_path, labels):
    root = tmp_path / "mirror"
    (root / "toy").mkdir(parents=True)
    for split, n in (("train", len(labels)), ("test", 2)):
        table = pa.table({"text": [WORDS] * n, "label": (labels if split == "train" else [0, 1])})
        pq.write_table(table, root / "toy" / f"{split}.parquet")
    return root


def _cfg(root, data_dir, tmp_path, **kw):
    return DataConfig(dataset="toy", data_dir=str(root), tokenizer=str(data_dir / "bert-base-uncased"),
                      cache_dir=str(tmp_path / "cache"), n_val=1, **kw)


@pytest.mark.parametrize("max_length, head", [(12, 2), (13, 2), (14, 3), (10, 2)])
def test_head_tail_keeps_the_floor_of_a_quarter_at_the_head(data_dir, tokenizer, tmp_path, max_length, head):
    root = _mirror(tmp_path, [0, 1, 0, 1])
    ids = tokenizer(WORDS, add_special_tokens=False)["input_ids"]
    assert len(ids) == 14
    room = max_length - 2  # [CLS] ... [SEP]
    assert head == room // 4
    want = [tokenizer.cls_token_id, *ids[:head], *ids[len(ids) - (room - head):], tokenizer.sep_token_id]
    splits = load_splits(_cfg(root, data_dir, tmp_path, max_length=max_length), tokenizer, ("train",))
    assert [list(r) for r in splits.train["input_ids"]] == [want] * 3


def test_labels_must_be_below_num_labels(data_dir, tokenizer, tmp_path):
    ok = load_splits(_cfg(_mirror(tmp_path / "a", [0, 1, 1, 0]), data_dir, tmp_path), tokenizer, ("train",))
    assert len(ok.train) == 3 and set(ok.train["labels"]) <= {0, 1}
    with pytest.raises(DataError, match=r"labels in \[0, 2\], outside \[0, 1\]"):
        load_splits(_cfg(_mirror(tmp_path / "b", [0, 2, 2, 2]), data_dir, tmp_path), tokenizer, ("train",))
