"""Training recipe details that whole-number cases never exercise: a warmup ratio that lands half-way
between two step counts (rounded half to even), a last partial batch in the step count, the
optimizer's parameter groups (weight decay on matrices only, frozen parameters left out, the
configured betas), and the window of the final loss. Expected schedules are written out by hand from
the documented rule: ``warmup = round(ratio * total)``, then ``lr (step + 1) / warmup`` during warmup
and ``lr (total - step) / (total - warmup)`` after it."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mase_lite.training import TrainConfig, make_optimizer, train

FAST = dict(progress=False, num_threads=1, precision="fp32", device="cpu")


class Tiny(nn.Module):
    """Embedding -> LayerNorm -> linear head, with the HF call convention."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(16, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask, labels=None):
        h = (self.emb(input_ids) * attention_mask.unsqueeze(-1).float()).sum(1)
        logits = self.head(self.norm(h))
        return SimpleNamespace(loss=F.cross_entropy(logits, labels), logits=logits)


def _data(n: int) -> datasets.Dataset:
    rows = [[1 + i % 7, 2 + i % 5, 3] for i in range(n)]
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": [i % 2 for i in range(n)]})


def _lrs(n: int, batch: int, ratio: float, lr: float = 0.1):
    seen = []
    cfg = TrainConfig(batch_size=batch, lr=lr, warmup_ratio=ratio, eval_every=1, **FAST)
    train(Tiny(), _data(n), cfg, callback=lambda s: seen.append(s))
    return seen


@pytest.mark.parametrize("n, ratio, want", [
    # 3 steps, 0.5 * 3 = 1.5 -> 2 warmup steps: 1/2, 2/2, then (3 - 2) / (3 - 2)
    (3, 0.5, [0.5, 1.0, 1.0]),
    # 5 steps, 0.5 * 5 = 2.5 -> 2 (even): 1/2, 2/2, then 3/3, 2/3, 1/3
    (5, 0.5, [0.5, 1.0, 1.0, 2 / 3, 1 / 3]),
    # 4 steps, 0.375 * 4 = 1.5 -> 2: 1/2, 2/2, 2/2, 1/2
    (4, 0.375, [0.5, 1.0, 1.0, 0.5]),
])
def test_a_half_way_warmup_ratio_rounds_half_to_even(n, ratio, want):
    seen = _lrs(n, 1, ratio)
    assert [s.step for s in seen] == list(range(1, n + 1))
    assert [s.lr for s in seen] == pytest.approx([0.1 * w for w in want])


def test_a_last_partial_batch_counts_as_a_step():
    seen = _lrs(10, 4, 0.0)  # 10 rows in batches of 4: ceil(10 / 4) = 3 steps
    assert [(s.step, s.total_steps) for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [s.lr for s in seen] == pytest.approx([0.1, 0.1 * 2 / 3, 0.1 / 3])


def test_final_loss_is_the_mean_of_the_last_log_every_steps():
    seen = []
    cfg = TrainConfig(batch_size=1, lr=0.1, warmup_ratio=0.0, eval_every=1, log_every=2, **FAST)
    res = train(Tiny(), _data(3), cfg, callback=lambda s: seen.append(s.loss))
    assert len(seen) == 3 and seen[1] != seen[2]
    assert res.final_loss == pytest.approx((seen[1] + seen[2]) / 2)


def test_optimizer_groups_decay_matrices_only_and_skip_frozen_parameters():
    model = Tiny()
    model.head.bias.requires_grad_(False)
    cfg = TrainConfig(lr=0.02, weight_decay=0.05, adam_beta2=0.95)
    opt = make_optimizer(model, cfg)
    assert len(opt.param_groups) == 2
    decay, no_decay = opt.param_groups
    assert {id(p) for p in decay["params"]} == {id(model.emb.weight), id(model.head.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model.norm.weight), id(model.norm.bias)}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.95) and g["lr"] == 0.02
