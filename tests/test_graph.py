"""MaseGraph: tracing transformers models and plain modules, equivalence, training, mode switching."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from mase_lite import MaseGraph, TraceError, trace
from mase_lite.models import ModelConfig, build_model, example_inputs, load_checkpoint

SMALL = dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
             vocab_size=500, max_position_embeddings=64)
SHAPES = [(1, 5), (3, 17), (2, 64), (5, 1)]


def _inputs(batch: int, seq: int, vocab: int = 500, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 31 * batch + seq)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    if batch > 1 and seq > 2:  # right padding on one row, as dynamic padding produces
        mask[0, seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module", params=["bert", "distilbert", "roberta"])
def traced(request):
    model = build_model(ModelConfig(model_type=request.param, seed=0, **SMALL)).eval()
    return model, trace(model, example_inputs(model, batch=2, seq=8))


def test_eval_outputs_match_eager_for_many_shapes(traced):
    model, graph = traced
    graph.eval()
    for batch, seq in SHAPES:
        x = _inputs(batch, seq)
        with torch.no_grad():
            ref = model(**x).logits
            out = graph(**x).logits
        assert out.shape == ref.shape == (batch, 2)
        assert (out - ref).abs().max().item() <= 1e-5, (batch, seq)


def test_output_type_and_loss_match_eager(traced):
    model, graph = traced
    graph.eval()
    x = _inputs(3, 9)
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        ref = model(**x, labels=labels)
        out = graph(**x, labels=labels)
        plain = graph(**x)
    assert type(out) is type(ref) is SequenceClassifierOutput
    assert torch.allclose(out.loss, ref.loss, atol=1e-6)
    assert plain.loss is None and torch.equal(plain.logits, out.logits)


def test_train_eval_switch_dropout(traced):
    model, graph = traced
    x = _inputs(4, 12)
    graph.train()
    torch.manual_seed(0)
    a = graph(**x).logits
    b = graph(**x).logits
    assert not torch.allclose(a, b), "dropout must be active in train mode"
    graph.eval()
    c, d = graph(**x).logits, graph(**x).logits
    assert torch.equal(c, d)
    with torch.no_grad():
        assert (c - model(**x).logits).abs().max() <= 1e-5
    assert graph.training is False and graph.gm._training_flag.training is False


def test_backward_reaches_every_trainable_parameter(traced):
    _, graph = traced
    graph.train()
    out = graph(**_inputs(3, 10), labels=torch.tensor([0, 1, 0]))
    out.loss.backward()
    missing = [n for n, p in graph.named_parameters() if p.requires_grad and p.grad is None]
    # token_type/position rows not indexed still get a (zero) dense gradient; nothing may be missing.
    assert not missing
    graph.zero_grad(set_to_none=True)


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_optimizer_steps_match_eager(model_type):
    cfg = ModelConfig(model_type=model_type, seed=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **SMALL)
    eager = build_model(cfg).train()
    graph = trace(build_model(cfg).train(), example_inputs(eager))
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-3)
    opt_g = torch.optim.AdamW(graph.parameters(), lr=1e-3)
    before = graph(**_inputs(2, 7)).logits.detach()
    for step in range(3):
        x, y = _inputs(4, 11, seed=step), torch.tensor([0, 1, 1, 0])
        for model, opt in ((eager, opt_e), (graph, opt_g)):
            opt.zero_grad()
            model(**x, labels=y).loss.backward()
            opt.step()
    x = _inputs(2, 7)
    after_g, after_e = graph(**x).logits.detach(), eager(**x).logits.detach()
    assert not torch.allclose(before, after_g)
    assert (after_g - after_e).abs().max() <= 1e-5


def test_parameters_keep_original_names(traced):
    model, graph = traced
    assert {n for n, _ in model.named_parameters()} <= {n for n, _ in graph.gm.named_parameters()}


def test_from_pretrained_checkpoint(tmp_path):
    model = build_model(ModelConfig(seed=3, **SMALL))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt").eval()
    graph = trace(loaded, example_inputs(loaded)).eval()
    x = _inputs(3, 20)
    with torch.no_grad():
        assert (graph(**x).logits - model.eval()(**x).logits).abs().max() <= 1e-5


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def test_plain_module_tuple_inputs_and_modes():
    torch.manual_seed(0)
    mlp = MLP().eval()
    graph = trace(mlp, (torch.randn(4, 8),))
    assert graph.input_names == ["x"] and not graph.training
    for batch in (1, 2, 7):
        x = torch.randn(batch, 8)
        assert (graph(x) - mlp(x)).abs().max() <= 1e-6
    graph.train()
    x = torch.randn(16, 8)
    assert not torch.equal(graph(x), graph(x))
    ops = {graph.meta(n).op for n in graph.nodes}
    assert {"linear", "activation", "dropout", "placeholder", "output"} <= ops


def test_graph_has_no_hard_coded_devices(traced):
    _, graph = traced
    for node in graph.nodes:
        values = list(node.args) + list(node.kwargs.values())
        assert not any(isinstance(v, torch.device) for v in values), node.format_node()


def test_copy_is_independent(traced):
    _, graph = traced
    other = graph.copy()
    p = next(other.parameters())
    with torch.no_grad():
        p.add_(1.0)
    assert not torch.equal(p, next(graph.parameters()))
    assert other.training == graph.training


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow cannot be exported
            return x * 2
        return x


def test_untraceable_model_is_a_trace_error():
    with pytest.raises(TraceError, match="could not trace DataDependent"):
        trace(DataDependent(), {"x": torch.randn(3, 4)})


def test_wrong_example_inputs():
    model = build_model(ModelConfig(seed=0, **SMALL))
    with pytest.raises(TraceError, match="do not match BertForSequenceClassification.forward"):
        trace(model, {"input_idz": torch.ones(2, 4, dtype=torch.long)})
    with pytest.raises(TraceError, match="non-empty dict"):
        trace(model, {})
    with pytest.raises(TraceError, match="must be a tensor"):
        trace(model, {"input_ids": [[1, 2]]})
    with pytest.raises(TraceError, match="labels"):
        trace(model, {**example_inputs(model), "labels": torch.tensor([0, 1])})


def test_call_with_wrong_inputs_names_expected(traced):
    _, graph = traced
    with pytest.raises(TypeError, match=r"traced with inputs \['input_ids', 'attention_mask'\]; missing \['attention_mask'\]"):
        graph(input_ids=torch.ones(2, 3, dtype=torch.long))


def test_not_a_module():
    with pytest.raises(TraceError, match="torch.nn.Module"):
        trace(lambda x: x, {"x": torch.ones(2)})


def test_is_module_subclass():
    assert issubclass(MaseGraph, nn.Module)


def test_random_inputs_avoid_the_pad_id_and_respect_the_positions():
    """The one builder of example inputs for saved graphs (export, ONNX, latency): seeded ids in
    [5, vocab) that avoid the pad id (decoders classify from the last non-pad token), masks of ones,
    other inputs zeros, at most max_position_embeddings tokens."""
    import torch

    from mase_lite.models import random_inputs

    hf = {"vocab_size": 8, "pad_token_id": 6, "max_position_embeddings": 12}
    x = random_inputs(["input_ids", "attention_mask", "token_type_ids"], hf, batch=64, seq=32, seed=3)
    ids = x["input_ids"]
    assert ids.shape == (64, 12) and int(ids.min()) >= 5 and int(ids.max()) <= 7 and not (ids == 6).any()
    assert torch.equal(x["attention_mask"], torch.ones_like(ids)) and not x["token_type_ids"].any()
    assert torch.equal(random_inputs(["input_ids"], hf, 64, 32, seed=3)["input_ids"], ids)  # seeded
