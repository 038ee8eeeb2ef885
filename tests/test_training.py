"""Training/evaluation: batching, LR schedule, clipping, callbacks, determinism, divergence, dropout."""

from __future__ import annotations

import math
from types import SimpleNamespace

import datasets
import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mase_lite.errors import ConfigError, DataError
from mase_lite.training import (
    EvalResult,
    TokenArrays,
    TrainConfig,
    TrainingDivergedError,
    evaluate,
    lr_at,
    make_batches,
    train,
)

from conftest import make_tiny_bert

FAST = dict(progress=False, num_threads=1)


@pytest.fixture
def two_threads():
    """torch at 2 intra-op threads during the test (the suite's workers run at 1: tests/conftest.py), so
    that training at num_threads = 1 must change the count and put it back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class ToyClassifier(nn.Module):
    """Summed embeddings -> dropout -> linear, with the HF call convention."""

    def __init__(self, vocab=64, dim=16, num_labels=2, dropout=0.0, nan_after=None):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_labels)
        self.nan_after = nan_after
        self.calls = 0
        self.seen_p: list[float] = []

    def forward(self, input_ids, attention_mask, labels=None):
        self.calls += 1
        if self.training:
            self.seen_p.append(self.drop.p)
        m = attention_mask.unsqueeze(-1).float()
        h = (self.emb(input_ids) * m).sum(1)
        logits = self.head(self.drop(h))
        loss = F.cross_entropy(logits.float(), labels)
        if self.nan_after is not None and self.calls > self.nan_after:
            loss = loss * float("nan")
        return SimpleNamespace(loss=loss, logits=logits)


def toy_dataset(n=512, seed=0, marker=7):
    """Label 1 iff the row contains token ``marker``; lengths 4..24."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for _ in range(n):
        length = int(rng.integers(4, 25))
        row = rng.integers(10, 64, length)
        y = int(rng.integers(0, 2))
        if y:
            row[rng.integers(0, length)] = marker
        rows.append(row.tolist())
        labels.append(y)
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": labels})


# --------------------------------------------------------------------------- batching


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=400),
    batch_size=st.integers(1, 17),
    bucket_batches=st.integers(1, 6),
    seed=st.integers(0, 3),
)
def test_length_grouped_batches_cover_every_row_once_sorted_in_buckets(lengths, batch_size, bucket_batches, seed):
    lengths = np.array(lengths)
    batches = make_batches(lengths, batch_size, seed=seed, bucket_batches=bucket_batches)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    for b in batches:  # longest first inside a batch (rows come from one sorted bucket)
        assert np.all(np.diff(lengths[b]) <= 0)
    again = make_batches(lengths, batch_size, seed=seed, bucket_batches=bucket_batches)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_grouping_cuts_padding_and_batches_are_shuffled():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, 3200)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    grouped = make_batches(lengths, 32, seed=0)
    plain = make_batches(lengths, 32, seed=0, group_by_length=False)
    assert padded(grouped) < 1.1 * lengths.sum() < padded(plain) / 1.5 * 1.1
    # batch order is random, not sorted by length: maxima are not monotone
    maxima = [lengths[b].max() for b in grouped]
    assert not (np.all(np.diff(maxima) <= 0) or np.all(np.diff(maxima) >= 0))
    assert [b.tolist() for b in make_batches(lengths, 32, seed=1)] != [b.tolist() for b in grouped]
    # evaluation order: sorted by length, no shuffle
    ev = make_batches(lengths, 32, shuffle=False)
    assert np.all(np.diff(lengths[np.concatenate(ev)]) <= 0)


def test_collate_pads_dynamically_with_mask():
    ds = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8], [9, 10]], "labels": [1, 0, 1]})
    arrays = TokenArrays.from_dataset(ds.select([2, 0, 1]))  # an indices mapping must be honoured
    batch = arrays.collate(np.array([1, 2]), pad_id=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["input_ids"].dtype == torch.long


def test_dataset_without_required_columns():
    with pytest.raises(DataError, match="'input_ids' and 'labels'.*text"):
        train(ToyClassifier(), datasets.Dataset.from_dict({"text": ["a"], "labels": [0]}), TrainConfig(**FAST))


# --------------------------------------------------------------------------- schedule and clipping


def test_lr_schedule_values():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(4, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(99, 100, 10, 1.0) == pytest.approx(1 / 90)
    assert lr_at(0, 100, 0, 2.0) == pytest.approx(2.0)
    assert lr_at(100, 100, 10, 1.0) == 0.0


def test_training_follows_the_schedule():
    ds = toy_dataset(96)
    cfg = TrainConfig(batch_size=8, lr=0.01, warmup_ratio=0.25, epochs=2, eval_every=1, **FAST)
    seen = []
    train(ToyClassifier(), ds, cfg, callback=lambda s: seen.append((s.step, s.lr)))
    total = 24
    assert [s for s, _ in seen] == list(range(1, total + 1))
    assert [lr for _, lr in seen] == pytest.approx([lr_at(s - 1, total, 6, 0.01) for s, _ in seen])


@pytest.mark.parametrize("max_norm", [0.01, 0.0])
def test_gradients_are_clipped(max_norm):
    norms = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        train(ToyClassifier(), toy_dataset(64), TrainConfig(batch_size=8, max_grad_norm=max_norm, **FAST))
    finally:
        handle.remove()
    assert len(norms) == 8
    if max_norm:
        assert max(norms) <= max_norm * (1 + 1e-4)
    else:
        assert max(norms) > 0.01  # unclipped gradients are larger, so the check above can fail


# --------------------------------------------------------------------------- callbacks


def test_callback_every_k_steps_with_evaluate(tiny_splits, two_threads):
    model = make_tiny_bert()
    calls = []

    def callback(state):
        assert torch.get_num_threads() == 1
        result = state.evaluate()
        assert model.training  # back in training mode after evaluating
        calls.append((state.step, state.epoch, state.total_steps, result))

    before = torch.get_num_threads()
    cfg = TrainConfig(batch_size=32, epochs=2, eval_every=3, **FAST)
    train(model, tiny_splits.train, cfg, eval_ds=tiny_splits.val, callback=callback)
    assert torch.get_num_threads() == before
    assert [c[0] for c in calls] == [3, 6, 9, 12, 15]
    assert [c[1] for c in calls] == pytest.approx([3 / 8, 6 / 8, 9 / 8, 12 / 8, 15 / 8])
    assert all(c[2] == 16 for c in calls)
    assert all(isinstance(c[3], EvalResult) and c[3].n == 64 and 0 <= c[3].accuracy <= 1 for c in calls)


def test_callback_at_epoch_ends_by_default():
    steps = []
    train(ToyClassifier(), toy_dataset(40), TrainConfig(batch_size=16, epochs=3, **FAST),
          callback=lambda s: steps.append((s.step, s.epoch)))
    assert steps == [(3, 1.0), (6, 2.0), (9, 3.0)]


def test_callback_exception_propagates_and_state_is_restored(two_threads):
    model = ToyClassifier(dropout=0.5)
    model.eval()
    before = torch.get_num_threads()

    def prune(state):
        if state.step == 2:
            raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        train(model, toy_dataset(64), TrainConfig(batch_size=8, eval_every=1, **FAST), callback=prune)
    assert model.calls == 2  # stopped right there
    assert model.drop.p == 0.5 and not model.training and torch.get_num_threads() == before


# --------------------------------------------------------------------------- results


def test_same_seed_same_result_on_tiny_imdb(tiny_splits):
    cfg = TrainConfig(batch_size=16, lr=2e-3, **FAST)
    results = []
    for seed in (0, 0, 1):
        model = make_tiny_bert()
        r = train(model, tiny_splits.train, cfg.replace(seed=seed))
        e = evaluate(model, tiny_splits.test, num_threads=1)
        results.append((r, e, [p.detach().clone() for p in model.parameters()]))
    (r0, e0, p0), (r1, e1, p1), (r2, e2, _) = results
    assert e0.accuracy == e1.accuracy and e0.loss == e1.loss and r0.final_loss == r1.final_loss
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    assert r2.final_loss != r0.final_loss  # the seed decides the batch order
    assert r0.steps == 16 and r0.tokens == sum(tiny_splits.train["length"])
    assert r0.padded_tokens >= r0.tokens and r0.tokens_per_s > 0


def test_learns_a_separable_task():
    ds = toy_dataset(512)
    model = ToyClassifier()
    before = evaluate(model, ds, num_threads=1)
    train(model, ds, TrainConfig(batch_size=16, lr=0.02, epochs=5, **FAST))
    after = evaluate(model, ds, num_threads=1)
    assert after.accuracy >= 0.95 > before.accuracy
    assert after.loss < before.loss


def test_evaluate_accuracy_and_loss_exact():
    class Oracle(nn.Module):
        def forward(self, input_ids, attention_mask, labels=None):
            first_even = (input_ids[:, 0] % 2 == 0).float()
            logits = torch.stack([torch.zeros_like(first_even), 2 * first_even - 1], dim=1)
            return SimpleNamespace(loss=F.cross_entropy(logits, labels), logits=logits)

    ids = [[2, 1], [4], [3, 3, 3], [5], [6, 1, 1]]
    labels = [1, 0, 0, 0, 1]
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})
    model = Oracle().train()
    res = evaluate(model, ds, batch_size=2, precision="fp32")
    logits = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [0.0, -1.0], [0.0, 1.0]])
    assert res.n == 5 and res.accuracy == pytest.approx(4 / 5)
    assert res.loss == pytest.approx(float(F.cross_entropy(logits, torch.tensor(labels))), rel=1e-6)
    assert model.training


def test_nan_loss_raises_clear_error():
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 3 of 8.*train.lr"):
        train(ToyClassifier(nan_after=2), toy_dataset(64), TrainConfig(batch_size=8, **FAST))


@pytest.mark.parametrize("dropout", [False, True])
def test_dropout_switch(dropout):
    model = ToyClassifier(dropout=0.3)
    train(model, toy_dataset(32), TrainConfig(batch_size=8, dropout=dropout, **FAST))
    assert set(model.seen_p) == ({0.3} if dropout else {0.0})
    assert model.drop.p == 0.3


def test_trains_a_mase_graph_with_dropout_off(tiny_splits):
    from mase_lite import trace
    from mase_lite.models import example_inputs

    model = make_tiny_bert()
    graph = trace(model, example_inputs(model))
    params_before = [p.detach().clone() for p in graph.parameters()]
    flags = []
    cfg = TrainConfig(batch_size=64, eval_every=2, **FAST)

    def callback(state):
        flags.append((graph.training, graph.gm._training_flag.training))

    result = train(graph, tiny_splits.train, cfg, callback=callback)
    assert flags == [(True, False), (True, False)]  # trains with every dropout site off
    assert math.isfinite(result.final_loss)
    assert any(not torch.equal(a, b) for a, b in zip(params_before, graph.parameters()))
    res = evaluate(graph, tiny_splits.val, num_threads=1)
    assert res.n == 64


def test_train_config_errors():
    with pytest.raises(ConfigError, match="batch_size = 0 is out of range"):
        TrainConfig.from_dict({"batch_size": 0})
    with pytest.raises(ConfigError, match="precision = 'fp16' is not valid.*'bf16'"):
        TrainConfig.from_dict({"precision": "fp16"})
    with pytest.raises(ConfigError, match="warmup_ratio"):
        TrainConfig.from_dict({"warmup_ratio": 1.5})


def test_cli_train_then_eval(tmp_path, data_dir, capsys):
    import json

    from mase_lite.cli import main

    out = tmp_path / "graph"
    common = ["--n-train", "32", "--n-val", "16", "--n-test", "16", "--max-length", "24"]
    assert main(["train", "--hidden", "32", "--intermediate", "64", *common, "--threads", "1", "--no-progress",
                 "--out", str(out), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["training"]["steps"] == 1 and trained["val"]["n"] == 16
    record = json.loads((out / "training.json").read_text())
    assert record["data"]["n_train"] == 32 and record["train"]["lr"] == TrainConfig().lr
    # eval defaults to the data settings the graph was trained with: same validation rows, same result
    assert main(["eval", str(out), "--split", "val", "--threads", "1", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["val"]
    assert again["n"] == 16 and again["accuracy"] == trained["val"]["accuracy"]
    assert again["loss"] == pytest.approx(trained["val"]["loss"], abs=1e-4)
    # bad input: one line on stderr, status 2
    assert main(["eval", str(out), "--max-length", "4"]) == 2
    assert "max_length = 4 is out of range" in capsys.readouterr().err
