"""The tokenizer choice: a checkpoint's own tokenizer files by default (``--tokenizer`` overrides), the
pad token of decoders (pad = eos), the vocabulary check, and the fast error offline.

The checkpoints are tiny HF GPT-2 classifiers saved with a small word-level tokenizer that has an
eos token and no pad token, as GPT-2's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mase_lite import ConfigError, trace
from mase_lite.data import (DEFAULT_TOKENIZER, DataConfig, check_vocab, load_checked_splits, load_splits,
                            load_tokenizer, resolve_pad_token, resolve_tokenizer, tokenizer_fingerprint)
from mase_lite.errors import DataError
from mase_lite.models import ModelConfig, build_model, example_inputs, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
WORDS = ["the", "a", "movie", "film", "good", "bad", "great", "and", "is", "it", "this", "was", "i", "not", "of"]


def word_tokenizer(eos: bool = True, pad: bool = False, words=WORDS):
    """A word-level fast tokenizer: ``<unk>`` (0), ``<eos>`` (1) if ``eos``, ``<pad>`` if ``pad``, then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>"] + (["<eos>"] if eos else []) + (["<pad>"] if pad else [])
    vocab = {w: i for i, w in enumerate(specials + list(words))}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"eos_token": "<eos>"} if eos else {}
    if pad:
        kw["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", **kw)


def gpt2_checkpoint(path: Path, vocab_size: int, tokenizer=None, pad_token_id=None) -> Path:
    """Save a 1-layer HF GPT-2 classifier (Conv1D projections, no pad id) and optionally a tokenizer."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_inner=32, n_positions=64,
                                                     vocab_size=vocab_size, pad_token_id=pad_token_id,
                                                     bos_token_id=None, eos_token_id=None))
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def data_cfg(data_dir, tmp_path):
    return DataConfig(data_dir=str(data_dir), n_train=16, n_val=8, n_test=8, max_length=32,
                      cache_dir=str(tmp_path / "cache"))


def test_checkpoint_tokenizer_is_the_default_and_pads_with_eos(tmp_path, data_cfg):
    tok = word_tokenizer()
    ckpt = gpt2_checkpoint(tmp_path / "ckpt", len(tok), tok)
    model = load_checkpoint(ckpt).eval()
    assert model.config.pad_token_id is None
    assert resolve_tokenizer(data_cfg, model).tokenizer == str(ckpt.resolve())
    splits = load_checked_splits(data_cfg, model, ("train", "val"))
    # pad = eos, on the splits and on the decoder's config (it finds each row's last token by it)
    assert splits.pad_id == 1 and model.config.pad_token_id == 1
    ids = [i for row in splits.train["input_ids"] for i in row]
    assert max(ids) < len(tok) and set(ids) & set(range(2, len(tok)))  # word ids, not only <unk>
    # the same ids as tokenising afresh with the in-memory tokenizer the checkpoint was saved from
    direct = load_splits(data_cfg.replace(tokenizer="unused", cache_dir=str(tmp_path / "fresh")), tok, ("train",))
    assert splits.train["input_ids"] == direct.train["input_ids"]
    # and the padded model traces and matches eager on right-padded rows
    graph = trace(model, example_inputs(model))
    x = example_inputs(model, batch=3, seq=9, seed=2)
    x["input_ids"][0, 5:] = 1
    x["attention_mask"][0, 5:] = 0
    with torch.no_grad():
        assert torch.equal(graph.eval()(**x).logits, model(**x).logits)


def test_tokenizer_flag_overrides_and_a_too_large_vocabulary_is_an_error(tmp_path, data_cfg):
    tok = word_tokenizer()
    model = load_checkpoint(gpt2_checkpoint(tmp_path / "ckpt", len(tok), tok)).eval()
    over = resolve_tokenizer(data_cfg.replace(tokenizer=DEFAULT_TOKENIZER), model)
    assert over.tokenizer == DEFAULT_TOKENIZER
    before = model.config.to_dict()
    with pytest.raises(DataError, match=r"has 30522 tokens but the model's embedding has only 17 rows; "
                                        r"use a model with vocab_size >= 30522 or the matching tokenizer"):
        load_checked_splits(over, model)
    assert model.config.to_dict() == before  # nothing changed


def test_checkpoint_without_tokenizer_files_and_built_models_use_the_default(tmp_path, data_cfg):
    ckpt = gpt2_checkpoint(tmp_path / "bare", 30522, pad_token_id=0)
    assert resolve_tokenizer(data_cfg, load_checkpoint(ckpt)).tokenizer == DEFAULT_TOKENIZER
    assert resolve_tokenizer(data_cfg, build_model(ModelConfig())).tokenizer == DEFAULT_TOKENIZER
    assert resolve_tokenizer(data_cfg, ModelConfig()).tokenizer == DEFAULT_TOKENIZER
    assert resolve_tokenizer(data_cfg).tokenizer == DEFAULT_TOKENIZER


def test_split_caches_are_keyed_by_the_tokenizer(tmp_path, data_cfg):
    a, b = word_tokenizer(), word_tokenizer(words=WORDS[:-1] + ["film!"])
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    ma = load_checkpoint(gpt2_checkpoint(tmp_path / "a", len(a), a))
    mb = load_checkpoint(gpt2_checkpoint(tmp_path / "b", len(b), b))
    load_checked_splits(data_cfg, ma, ("train",))
    load_checked_splits(data_cfg, mb, ("train",))
    entries = sorted(p.name for p in (Path(data_cfg.cache_dir) / "tokenized").iterdir() if not p.name.startswith("."))
    assert len(entries) == 2
    load_checked_splits(data_cfg, ma, ("train",))  # a hit: no third entry
    assert sorted(p.name for p in (Path(data_cfg.cache_dir) / "tokenized").iterdir()
                  if not p.name.startswith(".")) == entries


def test_decoder_with_no_pad_no_eos_and_none_configured_is_an_error(tmp_path, data_cfg):
    tok = word_tokenizer(eos=False)
    model = load_checkpoint(gpt2_checkpoint(tmp_path / "ckpt", len(tok), tok)).eval()
    with pytest.raises(DataError, match=r"has no pad token and no eos token, and the model configures no "
                                        r"pad_token_id; set one: model.pad_token_id"):
        load_checked_splits(data_cfg, model)
    assert model.config.pad_token_id is None
    # configured on the model: used
    tok = word_tokenizer(eos=False)
    assert resolve_pad_token(tok, ModelConfig(model_type="gpt2", vocab_size=len(tok), pad_token_id=3)) == 3
    assert tok.pad_token_id == 3


def test_pad_rules_for_configs_modules_and_graphs():
    tok = word_tokenizer(pad=True)  # <pad> = 2
    assert resolve_pad_token(tok, ModelConfig(model_type="gpt2", pad_token_id=2)) == 2
    with pytest.raises(ConfigError, match=r"model.pad_token_id = 0 but tokenizer .* pads with id 2; a llama classifier "
                                          r"reads each row's last non-pad token, so set model.pad_token_id = 2"):
        resolve_pad_token(tok, ModelConfig(model_type="llama", num_attention_heads=2))
    assert resolve_pad_token(tok, ModelConfig(model_type="bert")) == 2  # encoders: the mask, not the id, matters
    small = dict(num_hidden_layers=1, num_attention_heads=2, hidden_size=16, intermediate_size=32, vocab_size=40,
                 max_position_embeddings=32, seed=0)
    module = build_model(ModelConfig(model_type="gpt2", **small)).eval()
    assert module.config.pad_token_id == 0
    assert resolve_pad_token(tok, module) == 2 and module.config.pad_token_id == 2
    graph = trace(build_model(ModelConfig(model_type="gpt2", **small)).eval(),
                  example_inputs(build_model(ModelConfig(model_type="gpt2", **small))))
    with pytest.raises(DataError, match=r"this decoder graph was traced with pad_token_id = 0 but tokenizer .* pads "
                                        r"with id 2"):
        resolve_pad_token(tok, graph)
    tok_eos = word_tokenizer()
    assert resolve_pad_token(tok_eos, None) == 1 and tok_eos.pad_token == "<eos>"


def test_check_vocab_counts_added_tokens():
    tok = word_tokenizer()
    model = build_model(ModelConfig(model_type="llama", num_hidden_layers=1, num_attention_heads=2, hidden_size=16,
                                    intermediate_size=32, vocab_size=len(tok), max_position_embeddings=32))
    check_vocab(tok, model)
    tok.add_tokens(["<new>"])
    with pytest.raises(DataError, match=rf"has {len(WORDS) + 3} tokens but the model's embedding has only "
                                        rf"{len(WORDS) + 2} rows"):
        check_vocab(tok, model)


def test_hub_offline_flag_is_respected_without_probing(monkeypatch):
    import socket

    import mase_lite.data as data

    def no_socket(*a, **k):
        raise AssertionError("the hub must not be probed when HF_HUB_OFFLINE is set")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert data.hub_unavailable() == "hub access is disabled (HF_HUB_OFFLINE)"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(data, "_PROBES", {})
    def refused(*a, **k):
        raise OSError("refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    assert data.hub_unavailable().startswith("not tried: the hub at 127.0.0.1:9 is unreachable (OSError: refused)")
    monkeypatch.delenv("MASE_LITE_DATA")
    with pytest.raises(DataError, match=r"tokenizer 'bert-base-uncased' not found: neither data.data_dir nor "
                                        r"\$MASE_LITE_DATA is set, .*not tried: the hub at 127.0.0.1:9 is unreachable"):
        load_tokenizer(DataConfig())


def test_no_mirror_and_no_network_fails_at_once(tmp_path):
    """``mase-lite train`` with no mirror, HF_HUB_OFFLINE unset and the hub unreachable: one clear error,
    from the offline path (the hub clients and their retries are never called)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "MASE_LITE_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    # the child times the command itself, after its imports (which a busy machine makes slow)
    child = ("import sys, time\nimport datasets, transformers\nfrom mase_lite.cli import main\nt0 = time.perf_counter()\n"
             "rc = main(sys.argv[1:])\nprint(f'ELAPSED {time.perf_counter() - t0:.3f}')\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", child, "train", "--layers", "1", "--hidden", "32", "--intermediate", "64",
                           "--n-train", "4", "--n-val", "0", "--eval-split", "none"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mase-lite train: error: tokenizer 'bert-base-uncased' not found: neither data.data_dir nor "
                           "$MASE_LITE_DATA is set")
    assert "not tried: the hub at 127.0.0.1:9 is unreachable" in last
    elapsed = float(proc.stdout.split("ELAPSED")[1])
    assert elapsed < 30  # generous: the bound that matters (no hub retries) is asserted by the message


def test_cli_train_from_a_checkpoint_records_its_tokenizer(tmp_path, data_dir):
    from mase_lite.cli import main

    tok = word_tokenizer()
    ckpt = gpt2_checkpoint(tmp_path / "ckpt", len(tok), tok)
    out = tmp_path / "out"
    rc = main(["train", "--checkpoint", str(ckpt), "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "c"),
               "--n-train", "8", "--n-val", "8", "--max-length", "16", "--batch-size", "8", "--precision", "fp32",
               "--no-progress", "--threads", "1", "--out", str(out)])
    assert rc == 0
    record = json.loads((out / "training.json").read_text())
    assert record["data"]["tokenizer"] == str(ckpt.resolve())
    graph_info = json.loads((out / "graph.json").read_text())["model_info"]["hf_config"]
    assert graph_info["pad_token_id"] == 1  # pad = eos, set before tracing


def test_missing_mirror_is_reported_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    """A model built from sizes does not choose the tokenizer, so ``mase-lite train`` checks the
    tokenizer first: offline with no mirror, the error comes before any model class is imported."""
    import search.lifecycle as lifecycle  # the commands build models through the lifecycle
    from mase_lite.cli import main

    monkeypatch.delenv("MASE_LITE_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(lifecycle, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model built")))
    assert main(["train", "--layers", "1", "--hidden", "32", "--intermediate", "64", "--n-train", "4",
                 "--n-val", "0", "--eval-split", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer 'bert-base-uncased' not found" in err[0] and "HF_HUB_OFFLINE" in err[0]
