"""One config comparison (issue 22, item 3): a study's fingerprint (``--resume``) and a benchmark
table's manifest (``check_compatible``) agree on every field, through :mod:`search.config_diff`."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from mase_lite.data import DataConfig
from mase_lite.training import TrainConfig
from search.bench.synthetic import synthetic_rows
from search.bench.table import BenchTable, TableError, check_compatible, write_manifest, write_table
from search.config import RunConfig, RunModelConfig, fingerprint_difference, plan_studies, study_fingerprint
from search.config_diff import NEUTRAL_FIELDS, config_difference

BASE = {
    "search": {"name": "agree", "samplers": ["random"], "variants": ["compress_finetune"]},
    "space": {"num_hidden_layers": [1, 2], "num_attention_heads": [2], "hidden_size": [32], "intermediate_size": [64]},
    "train": {"precision": "fp32"},  # explicit: a study compares the precision as this host resolves it
}
ARCH = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")

#: Fields that change results: (path, new value); the first difference of both comparisons names the path.
CHANGING: list[tuple[str, Any]] = [
    ("model.model_type", "roberta"), ("model.vocab_size", 30000), ("model.max_position_embeddings", 256),
    ("model.num_labels", 3), ("model.hidden_dropout_prob", 0.2), ("model.attention_probs_dropout_prob", 0.2),
    ("model.attn_implementation", "eager"), ("model.num_key_value_heads", 1), ("model.embedding_size", 16),
    ("model.pad_token_id", 3), ("model.pooling", "mean"),
    ("data.dataset", "sst2"), ("data.text_column", "sentence"), ("data.label_column", "y"), ("data.num_labels", 3),
    ("data.tokenizer", "roberta-base"), ("data.n_train", 500), ("data.n_val", 100), ("data.n_test", 1000),
    ("data.max_length", 64), ("data.truncation", "head"), ("data.seed", 1),
    ("train.epochs", 2), ("train.batch_size", 16), ("train.lr", 5e-4), ("train.warmup_ratio", 0.2),
    ("train.weight_decay", 0.0), ("train.adam_beta2", 0.999), ("train.max_grad_norm", 0.5),
    ("train.group_by_length", False), ("train.bucket_batches", 7), ("train.precision", "bf16"),
    ("train.dropout", True),
    ("finetune.epochs", 2), ("finetune.batch_size", 8), ("finetune.lr", 1e-4), ("finetune.warmup_ratio", 0.0),
    ("finetune.weight_decay", 0.1), ("finetune.adam_beta2", 0.9), ("finetune.max_grad_norm", 2.0),
    ("finetune.group_by_length", False), ("finetune.bucket_batches", 9), ("finetune.precision", "bf16"),
    ("finetune.dropout", True), ("finetune.seed", 7),
    ("compression.passes.quantize.linear.config.weight_width", 4),
    ("compression.passes.prune.weight.sparsity", 0.3),
]

#: Fields that do not change results: ignored by both (:data:`search.config_diff.NEUTRAL_FIELDS`).
NEUTRAL: list[tuple[str, Any]] = [
    ("data.data_dir", "/elsewhere"), ("data.cache_dir", "/tmp/cache"),
    ("train.seed", 5), ("train.eval_every", 10), ("train.eval_batch_size", 7), ("train.log_every", 3),
    ("train.num_threads", 1), ("train.progress", False),
    ("finetune.eval_every", 4), ("finetune.eval_batch_size", 9), ("finetune.log_every", 2),
    ("finetune.num_threads", 1), ("finetune.progress", False),
    ("model.seed", 3), *((f"model.{p}", 3) for p in ARCH),
]

#: Compared, but tested elsewhere: the device as this host resolves it in a study (tests/test_device.py);
#: a pretrained base, whose study space is read from the checkpoint (tests/test_pretrained_search.py).
ELSEWHERE = {"train.device", "finetune.device", "model.checkpoint"}


def _config() -> RunConfig:
    return RunConfig.from_dict(copy.deepcopy(BASE))


def _changed(path: str, value: Any) -> RunConfig:
    """The base config with one field changed (set directly: the comparison is under test, not validation)."""
    cfg = _config()
    section, *keys = path.split(".")
    if section in ("finetune", "compression"):
        node = getattr(cfg, section)
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    else:
        setattr(getattr(cfg, section), keys[0], value)
    return cfg


def _table(tmp_path, cfg: RunConfig) -> BenchTable:
    """The table ``bench build`` writes for ``cfg`` (its manifest as build_table records it)."""
    space = {p: list(getattr(cfg.space, p)) for p in ARCH}
    write_table(synthetic_rows(space, [0]), tmp_path)
    write_manifest(tmp_path, space=space, model=cfg.to_dict()["model"],
                   data={k: v for k, v in cfg.data.to_dict().items() if k not in ("data_dir", "cache_dir")},
                   train=cfg.train.to_dict(), finetune=cfg.finetune_config().to_dict(), compression=cfg.compression,
                   seeds=[0], total_seconds=1.0, command="test", versions={}, machine={})
    return BenchTable.load(tmp_path)


def _study_difference(base: RunConfig, cfg: RunConfig) -> str | None:
    spec = plan_studies(base)[0]
    stored = json.loads(json.dumps(study_fingerprint(base, spec), default=str))  # as a study's user attribute
    return fingerprint_difference(stored, study_fingerprint(cfg, spec))


def _table_difference(table: BenchTable, cfg: RunConfig) -> str | None:
    try:
        check_compatible(table, cfg, metrics=("trained", "compressed", "finetuned"))
    except TableError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return _table(tmp_path_factory.mktemp("table"), _config())


@pytest.mark.parametrize("path, value", CHANGING, ids=[p for p, _ in CHANGING])
def test_a_field_that_changes_results_is_a_difference_for_both(table, path, value):
    cfg = _changed(path, value)
    study, tab = _study_difference(_config(), cfg), _table_difference(table, cfg)
    where = path.replace("model.", "space.base.", 1)  # where a study's fingerprint keeps [model]
    assert study is not None and study.startswith(f"{where}: "), study
    assert tab is not None and tab.startswith(f"the config does not match the table: {path} = "), tab


@pytest.mark.parametrize("path, value", NEUTRAL, ids=[p for p, _ in NEUTRAL])
def test_a_field_that_does_not_change_results_is_ignored_by_both(table, path, value):
    section, field = path.split(".")
    assert field in NEUTRAL_FIELDS[section]  # one list, with a reason for each
    cfg = _changed(path, value)
    assert _study_difference(_config(), cfg) is None
    assert _table_difference(table, cfg) is None


def test_every_config_field_is_classified():
    """A new config field must be added to CHANGING or NEUTRAL (or ELSEWHERE) here."""
    fields = {f"model.{f.name}" for f in dataclasses.fields(RunModelConfig)}
    fields |= {f"data.{f.name}" for f in dataclasses.fields(DataConfig)}
    fields |= {f"{s}.{f.name}" for s in ("train", "finetune") for f in dataclasses.fields(TrainConfig)}
    covered = {p for p, _ in CHANGING + NEUTRAL if not p.startswith("compression.")} | ELSEWHERE
    assert fields - covered == set() and covered - fields == set()
    listed = {f"{s}.{f}" for s, fs in NEUTRAL_FIELDS.items() for f in fs}
    assert listed == {p for p, _ in NEUTRAL}


def test_a_study_made_before_the_one_list_still_resumes():
    """Old fingerprints recorded eval_every / eval_batch_size and a raw pipeline: still no difference."""
    cfg = _config()
    spec = plan_studies(cfg)[0]
    old = json.loads(json.dumps(study_fingerprint(cfg, spec)))
    for section in ("train", "finetune"):
        old[section].update(eval_every=0, eval_batch_size=128)
    del old["train"]["bucket_batches"]  # a field added since: its default
    old["version"] = 1
    assert fingerprint_difference(old, study_fingerprint(cfg, spec)) is None
    left_out = _config()
    del left_out.compression["passes"]["prune"]["weight"]["scope"]  # "local": its default
    assert fingerprint_difference(old, study_fingerprint(left_out, spec)) is None


def test_a_missing_field_shows_as_absent_unless_its_default_is_none(table):
    cfg = _config()
    spec = plan_studies(cfg)[0]
    stored = json.loads(json.dumps(study_fingerprint(cfg, spec)))
    del stored["train"]["bucket_batches"]
    assert fingerprint_difference(stored, study_fingerprint(_changed("train.bucket_batches", 7), spec)) == (
        "train.bucket_batches: (absent) in the stored study, 7 in this config")
    assert "data.n_train = None in the table" in _table_difference(table, _changed("data.n_train", 5))


def test_config_difference_rules():
    sections = {"train": "train"}
    assert config_difference({"train": {"lr": 1}}, {"train": {"lr": 1.0}}, sections) is None  # numbers by value
    diff = config_difference({"train": {"dropout": 1}}, {"train": {"dropout": True}}, sections)
    assert diff.path == "train.dropout"  # booleans only equal booleans
    assert config_difference({"train": {"gone": 1}}, {"train": {}}, sections) is None  # unknown, one side only
    assert config_difference({"x": [1, 2]}, {"x": [2, 1]}, sections).path == "x"  # lists in order
    assert config_difference({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, {}).current == 2
    assert config_difference({"data": {"n_test": 5}}, {"data": {"n_test": 6}}, {"data": "data"},
                             ignore={"data.n_test"}) is None
