"""The ``quantize`` pass: exact agreement with hand-written references, selection, QAT, persistence, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _compression_helpers import (
    LINEAR_8_4,
    Q,
    assert_unchanged,
    hand_q,
    reference_graph,
    state,
    tiny_graph,
)
from mase_lite import ConfigError, MaseGraph, trace
from passes import run_pass
from passes.transforms import ops
from passes.transforms.quantize import QuantizeConfig
from passes.transforms.quantizers import integer_quantize_reference



class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(20, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, input_ids):
        return self.fc2(torch.relu(self.fc1(self.emb(input_ids)))).mean(1)


def test_small_model_equals_hand_written_reference():
    model = Tiny().eval()
    ids = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(0))
    g = trace(model, {"input_ids": ids})
    cfg = {"by": "type", "linear": {"config": Q(8, 4)},
           "embedding": {"config": {"name": "integer", "weight_width": 6, "weight_frac_width": 3}}}
    g, info = run_pass(g, "quantize", cfg)
    assert sorted(r["op"] for r in info["quantized"]) == ["embedding", "linear", "linear"]
    p = {k: v.detach() for k, v in model.named_parameters()}
    h = hand_q(p["emb.weight"], 6, 3)[ids]
    h = torch.relu(F.linear(hand_q(h, 8, 4), hand_q(p["fc1.weight"], 8, 4), hand_q(p["fc1.bias"], 8, 4)))
    want = F.linear(hand_q(h, 8, 4), hand_q(p["fc2.weight"], 8, 4), hand_q(p["fc2.bias"], 8, 4)).mean(1)
    with torch.no_grad():
        got = g(input_ids=ids)
    assert torch.equal(got, want)
    # and with Lab 2's pruning on top: per-token activation masks and l1 weight masks, by hand
    g, _ = run_pass(g, "prune", {"weight": {"sparsity": 0.5}, "activation": {"sparsity": 0.5}})

    def prune_rows(x):
        k = round(0.5 * x.shape[-1])
        idx = torch.sort(x.abs(), dim=-1, stable=True).indices[..., :k]
        return x.scatter(-1, idx, 0.0)

    def wmask(w):
        idx = torch.sort(w.abs().flatten(), stable=True).indices[: round(0.5 * w.numel())]
        return torch.ones(w.numel()).scatter(0, idx, 0.0).view_as(w)

    h = hand_q(p["emb.weight"], 6, 3)[ids]
    h = torch.relu(F.linear(prune_rows(hand_q(h, 8, 4)), hand_q(p["fc1.weight"], 8, 4) * wmask(p["fc1.weight"]),
                            hand_q(p["fc1.bias"], 8, 4)))
    want = F.linear(prune_rows(hand_q(h, 8, 4)), hand_q(p["fc2.weight"], 8, 4) * wmask(p["fc2.weight"]),
                    hand_q(p["fc2.bias"], 8, 4)).mean(1)
    with torch.no_grad():
        assert torch.equal(g(input_ids=ids), want)


def test_by_type_quantises_linears_only_and_matches_reference(graph, inputs):
    cfg = copy.deepcopy(LINEAR_8_4)
    g, info = run_pass(graph, "quantize", cfg)
    assert cfg == LINEAR_8_4  # caller's config untouched
    linears = [n for n in g.nodes if g.meta(n).op == "linear"]
    assert len(info["quantized"]) == len(linears) == 8
    assert all(n.target is ops.compressed_linear and n.kwargs["weight_q"] == (8, 4, False) for n in linears)
    assert not any(n.target in (ops.compressed_embedding, ops.compressed_sdpa) for n in g.nodes)
    assert info["shared_inputs"] == 1  # query/key/value read one quantised input
    assert g.history == [("quantize", QuantizeConfig.from_dict(cfg).to_dict())]
    g.eval()
    with torch.no_grad():
        out = g(**inputs).logits
        assert torch.equal(out, reference_graph(g).eval()(**inputs).logits)
        assert not torch.equal(out, tiny_graph().eval()(**inputs).logits)  # quantisation changed something


def test_by_name_regex_default_and_other_ops(graph, inputs):
    g = graph.copy()
    cfg = {"by": "name", "bert.encoder.layer.0.attention.self.query": {"config": Q(4, 2)},
           "linear_3": {"config": Q(6, 3)}, "default": {"config": {"name": "none"}}}
    g, info = run_pass(g, "quantize", cfg)
    got = {r["module"]: r["weight"]["width"] for r in info["quantized"]}
    assert got == {"bert.encoder.layer.0.attention.self.query": 4, "bert.encoder.layer.0.attention.output.dense": 6}

    g = graph.copy()
    cfg = {"by": "regex_name", r"bert\.encoder\.layer\.0\.attention\.self\.(query|key)": {"config": Q(4, 2)},
           r"bert\.encoder": {"config": Q(6, 3)}, "default": {"config": Q(8, 4)}}
    g, info = run_pass(g, "quantize", cfg)
    widths = {r["module"]: r["weight"]["width"] for r in info["quantized"] if r["op"] == "linear"}
    assert widths["bert.encoder.layer.0.attention.self.key"] == 4  # first matching entry wins
    assert widths["bert.encoder.layer.0.attention.self.value"] == 6
    assert widths["classifier"] == 8  # default
    ops_done = sorted({r["op"] for r in info["quantized"]})
    assert ops_done == ["attention", "embedding", "linear"]  # default covers every supported op
    g.eval()
    with torch.no_grad():
        g(**inputs)

    g = graph.copy()
    attn = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "data_out_width": 8,
            "data_out_frac_width": 5}
    g, info = run_pass(g, "quantize", {"by": "type", "scaled_dot_product_attention": {"config": attn},
                                       "embedding": {"config": {"name": "integer", "weight_width": 8,
                                                                "weight_frac_width": 6}}})
    sdpa = [n for n in g.nodes if n.target is ops.compressed_sdpa]
    assert len(sdpa) == 1 and sdpa[0].kwargs["data_out"] == (8, 5, False)
    g.eval()
    with torch.no_grad():
        out = g(**inputs).logits
        assert torch.equal(out, reference_graph(g).eval()(**inputs).logits)


def sdpa_by_hand(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False,
                 data_in=None, data_out=None, ste="plain"):
    """Quantised attention written out independently of ``ops.compressed_sdpa``: quantise query, key
    and value, then ``softmax(q k^T * scale + mask) v`` (in float64), then quantise the output."""
    assert dropout_p == 0.0 and not is_causal and not enable_gqa  # evaluation of a BERT encoder
    q, k, v = (t if data_in is None else integer_quantize_reference(t, *data_in) for t in (query, key, value))
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    out = (torch.softmax(scores, dim=-1) @ v).to(query.dtype)
    return out if data_out is None else integer_quantize_reference(out, *data_out)


SDPA_CALLS: list = []


def recording_sdpa(*args, **kwargs):
    """``ops.compressed_sdpa``, recording its arguments and output."""
    out = ops.compressed_sdpa(*args, **kwargs)
    SDPA_CALLS.append((args, kwargs, out))
    return out


def with_sdpa(graph, fn):
    g = graph.copy()
    for node in g.fx_graph.nodes:
        if node.target is ops.compressed_sdpa:
            node.target = fn
    g.gm.recompile()
    return g.eval()


def test_quantised_attention_equals_an_independent_reference(graph, inputs):
    def attention_call(cfg):
        """(args, kwargs, output) of the graph's one attention call, in a forward pass of the quantised graph."""
        g, _ = run_pass(graph.copy(), "quantize", {"by": "type", "attention": {"config": cfg}})
        SDPA_CALLS.clear()
        with torch.no_grad():
            with_sdpa(g, recording_sdpa)(**inputs)
        assert len(SDPA_CALLS) == 1
        return SDPA_CALLS[0]

    # query/key/value quantised: the fused kernel vs float64 by hand differ at rounding level only,
    # far below what quantising query/key/value changes
    attn = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4}
    args, kwargs, got = attention_call(attn)
    assert kwargs["data_in"] == (8, 4, False) and kwargs["data_out"] is None
    assert float((got - sdpa_by_hand(*args, **kwargs)).abs().max()) < 1e-5
    assert float((got - sdpa_by_hand(*args, **{**kwargs, "data_in": None})).abs().max()) > 1e-3

    # the output quantised too
    attn.update(data_out_width=8, data_out_frac_width=5)
    args, kwargs, got = attention_call(attn)
    assert kwargs["data_in"] == (8, 4, False) and kwargs["data_out"] == (8, 5, False)
    hand = sdpa_by_hand(*args, **kwargs)
    codes = got.double() * 2 ** 5
    assert torch.equal(codes, codes.round()) and bool((codes.abs() <= 128).all())  # on the output grid
    assert float((got - hand).abs().max()) <= 2.0 ** -5  # at most one grid step (a rounding flip) ...
    assert float((got == hand).double().mean()) > 0.99  # ... and almost everywhere identical
    assert float((got != sdpa_by_hand(*args, **{**kwargs, "data_in": None})).double().mean()) > 0.05

    # and the whole graph: the same logits with attention computed by hand
    g, _ = run_pass(graph.copy(), "quantize", {"by": "type", "attention": {"config": attn}})
    with torch.no_grad():
        out = g.eval()(**inputs).logits
        assert torch.allclose(out, with_sdpa(g, sdpa_by_hand)(**inputs).logits, rtol=0, atol=1e-6)


def test_quantisation_aware_training_and_save_load(graph, inputs, tmp_path):
    g, _ = run_pass(graph, "quantize", LINEAR_8_4)
    g.train()
    labels = torch.tensor([0, 1, 1])
    opt = torch.optim.AdamW(g.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = g(**inputs, labels=labels).loss
        loss.backward()
        w = g.gm.get_submodule("bert.encoder.layer.0.intermediate.dense").weight
        assert w.grad is not None and bool(w.grad.abs().sum() > 0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    g.eval()
    with torch.no_grad():
        out = g(**inputs).logits
    g.save(tmp_path / "g")
    loaded = MaseGraph.load(tmp_path / "g")
    assert [h[0] for h in loaded.history] == ["quantize"]
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, out)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"by": "type", "conv2d": {"config": Q()}}, r"unknown config key 'quantize\.conv2d'.*valid keys: .*linear"),
        ({"by": "type", "linear": {"config": Q(weight_frac_width=9)}},
         r"quantize\.linear\.config\.weight_frac_width = 9 is out of range; it must be in \[0, "
         r"quantize\.linear\.config\.weight_width = 8\]"),
        ({"by": "type", "linear": {"config": Q(data_in_width=1)}},
         r"quantize\.linear\.config\.data_in_width = 1 is out of range; it must be in \[2, 32\]"),
        ({"by": "type", "linear": {"config": Q(bias_width=40)}}, r"bias_width = 40 is out of range"),
        # (issue 11: more formats are registered now, so an unknown name lists all of them)
        ({"by": "type", "linear": {"config": {**Q(), "name": "posit"}}},
         r"quantize\.linear\.config\.name = 'posit' is not valid; choose one of: .*'integer', .*'scaled_integer'.*"
         r"'NA', 'none'"),
        ({"by": "type", "linear": {"config": {"name": "integer", "weight_width": 8}}},
         r"missing config key quantize\.linear\.config\.weight_frac_width"),
        ({"by": "type", "linear": {"config": {"name": "integer"}}}, r"no format is given"),
        ({"by": "type", "linear": {"config": {**Q(), "wieght_width": 8}}},
         r"unknown config key 'quantize\.linear\.config\.wieght_width' \(did you mean 'weight_width'\?\)"),
        ({"by": "module"}, r"quantize\.by = 'module' is not valid; choose one of: 'type', 'name', 'regex_name'"),
        ({"by": "name", "bert.encoder.layer.7.output": {"config": Q()}},
         r"quantize\.bert\.encoder\.layer\.7\.output = 'bert\.encoder\.layer\.7\.output' matches no quantisable node"),
        ({"by": "regex_name", "bert[": {"config": Q()}}, r"quantize\.bert\[ = 'bert\[' is not a valid regular"),
        ({"by": "regex_name", "^decoder": {"config": Q()}}, r"matches no quantisable node"),
        ({"by": "type", "linear": {"config": {**Q(), "ste": "straight"}}}, r"ste = 'straight' is not valid"),
    ],
)
def test_bad_configs_leave_graph_unchanged(graph, cfg, match):
    code, st = graph.gm.code, state(graph)
    with pytest.raises(ConfigError, match=match):
        run_pass(graph, "quantize", cfg)
    assert_unchanged(graph, code, st)


def test_requantising_changes_formats_only(graph, inputs):
    g, _ = run_pass(graph, "quantize", LINEAR_8_4)
    g, _ = run_pass(g, "quantize", {"by": "name", "classifier": {"config": Q(4, 2)}})
    cls = [n for n in g.nodes if g.meta(n).module_path == "classifier" and g.meta(n).op == "linear"][0]
    assert cls.kwargs["weight_q"] == (4, 2, False)
    assert sum(n.target is ops.compressed_linear for n in g.nodes) == 8


# ----------------------------------------------------------------------------- other number formats

SCALED_LINEAR = {"by": "type", "linear": {"config": {
    "name": "scaled_integer", "weight_width": 6, "weight_granularity": "per_channel", "bias_width": 8,
    "data_in_width": 8, "data_in_scale": 0.05, "data_out_width": 8, "data_out_scale": 0.02}}}


def test_scaled_integer_linears_equal_their_reference(graph, inputs):
    from passes.formats import format_from_spec

    g, info = run_pass(graph, "quantize", SCALED_LINEAR)
    lin = [n for n in g.nodes if g.meta(n).op == "linear"]
    assert all(n.kwargs["weight_q"] == ("scaled_integer", (("width", 6), ("granularity", "per_channel")))
               for n in lin)
    assert format_from_spec(lin[0].kwargs["data_in"]).config.scale == 0.05
    assert info["quantized"][0]["weight"] == {"name": "scaled_integer", "width": 6, "granularity": "per_channel"}
    assert info["resolved"] == {}  # nothing data-dependent: scales given, weights from the tensors
    g.eval()
    with torch.no_grad():
        out = g(**inputs).logits
        assert torch.equal(out, reference_graph(g).eval()(**inputs).logits)
    # by hand for one linear: per-row scales max|w| / 31, input on the 0.05 grid (saturating at 127 * 0.05)
    owner = g.gm.get_submodule(g.meta(lin[-1]).module_path)
    w = owner.weight.detach()
    s = (w.abs().amax(dim=1, keepdim=True).double() / 31)
    wq = ((w.double() / s).round().clamp(-31, 31) * s).float()
    assert torch.equal(ops.quantize_weight(owner.weight.detach(), None, lin[-1].kwargs["weight_q"]), wq)
    # then quantisation-aware training: gradients flow through the STE and the scales follow the weights
    g.train()
    loss = g(**inputs, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    grads = [p.grad for name, p in g.gm.named_parameters() if name.endswith("dense.weight")]
    assert grads and all(gr is not None and torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)


def test_role_tables_mix_formats_and_round_trip(graph, inputs):
    import tomllib

    cfg = {"by": "type", "linear": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 5,
                                               "weight": {"name": "scaled_integer", "width": 8},
                                               "ste": "clipped"}},
           "embedding": {"config": {"name": "scaled_integer", "weight_width": 8, "granularity": "per_channel"}}}
    qc = QuantizeConfig.from_dict(cfg)
    d = qc.to_dict()
    assert d["linear"]["config"]["weight"] == {"name": "scaled_integer", "width": 8, "granularity": "per_tensor"}
    assert QuantizeConfig.from_dict(d).to_dict() == d
    toml = ('[linear.config]\nname = "integer"\ndata_in_width = 8\ndata_in_frac_width = 5\nste = "clipped"\n'
            '[linear.config.weight]\nname = "scaled_integer"\nwidth = 8\n'
            '[embedding.config]\nname = "scaled_integer"\nweight_width = 8\ngranularity = "per_channel"\n')
    assert QuantizeConfig.from_dict(tomllib.loads(toml)).to_dict() == d
    g, info = run_pass(graph, "quantize", cfg)
    lin = next(n for n in g.nodes if g.meta(n).op == "linear")
    assert lin.kwargs["data_in"] == (8, 5, False) and lin.kwargs["weight_q"][0] == "scaled_integer"
    emb = next(n for n in g.nodes if g.meta(n).op == "embedding")
    assert emb.kwargs["weight_q"] == ("scaled_integer", (("width", 8), ("granularity", "per_channel")))
    g.eval()
    with torch.no_grad():  # the embedding quantises its whole table (per-row scales), as the reference does
        assert torch.equal(g(**inputs).logits, reference_graph(g).eval()(**inputs).logits)


@pytest.mark.parametrize("entry, match", [
    ({"name": "scaled_integer", "weight_width": 17}, r"quantize\.linear\.config\.weight_width = 17 is out of range; "
                                                     r"it must be in \[2, 16\]"),
    ({"name": "scaled_integer", "weight_granularity": "per_channel"},
     r"missing config key quantize\.linear\.config\.weight_width"),
    ({"name": "scaled_integer", "weight_width": 8, "weight_frac_width": 4},
     r"unknown config key 'quantize\.linear\.config\.weight_frac_width'"),
    ({"name": "integer", "weight": {"name": "posit"}}, r"weight\.name = 'posit' is not a known number format"),
    ({"name": "integer", "weight": 3}, r"quantize\.linear\.config\.weight must be a table"),
    ({"name": "scaled_integer", "data_in_width": 8, "data_in_granularity": "per_channel", "data_in_scale": 0.1},
     r"data_in_granularity must be 'per_tensor'"),
])
def test_bad_format_configs_leave_graph_unchanged(graph, entry, match):
    code, st = graph.gm.code, state(graph)
    with pytest.raises(ConfigError, match=match):
        run_pass(graph, "quantize", {"by": "type", "linear": {"config": entry}})
    assert_unchanged(graph, code, st)
