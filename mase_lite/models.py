"""Building transformers classifiers from small typed configs or checkpoints, and example inputs to trace them.

Families (``ModelConfig.model_type``): the encoders ``bert``, ``distilbert``, ``roberta``, ``albert``,
``electra``, ``deberta-v2`` (disentangled relative attention, as DeBERTa-v3 checkpoints) and
``modernbert`` (RoPE, GLU feed-forward, fused ``Wqkv``), and the decoders ``gpt2`` (fused ``c_attn``;
its ``Conv1D`` projections become ``nn.Linear`` at build/trace time, see
:func:`mase_lite.tracing.linearise_conv1d`) and ``llama`` (RoPE, RMSNorm, grouped-query attention with
``num_key_value_heads``). Decoder classifiers read the logits at each row's last non-pad token, so
their ``pad_token_id`` must be the tokenizer's pad id (see :func:`mase_lite.data.resolve_pad_token`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn

from .config import Config, check_range
from .errors import ConfigError, MaseError

log = logging.getLogger(__name__)

ENCODER_TYPES = ("bert", "distilbert", "roberta", "albert", "electra", "deberta-v2", "modernbert")
DECODER_TYPES = ("gpt2", "llama")
MODEL_TYPES = ENCODER_TYPES + DECODER_TYPES
#: Families with separate key/value head counts (grouped-query attention).
GQA_TYPES = ("llama",)
#: Families whose token embeddings may be narrower than the hidden size (projected up).
EMBEDDING_SIZE_TYPES = ("albert", "electra")
#: HF ``model_type`` values of decoder-only classifiers: they classify from each row's last non-pad token,
#: found with ``config.pad_token_id`` (beyond the families built here, for checkpoints).
DECODER_MODEL_TYPES = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe",
    "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "opt", "bloom", "falcon", "olmo",
    "olmo2", "stablelm", "starcoder2", "smollm3", "granite", "cohere", "mpt", "ctrl", "openai-gpt", "biogpt",
})
#: The pad id decoders built from a config use unless ``pad_token_id`` is set: bert-base-uncased's [PAD].
DEFAULT_DECODER_PAD_ID = 0


def is_decoder_classifier(model_or_config: Any) -> bool:
    """Whether ``model_or_config`` (a module, HF config, ModelConfig or MaseGraph) is a decoder-only
    classifier, i.e. one that needs ``pad_token_id`` to find each row's last token."""
    mt = getattr(model_or_config, "model_type", None)
    if mt is None:
        mt = getattr(getattr(model_or_config, "config", None), "model_type", None)
    if mt is None:
        info = getattr(model_or_config, "model_info", None) or {}
        mt = (info.get("hf_config") or {}).get("model_type")
    return mt in DECODER_MODEL_TYPES


@dataclass
class ModelConfig(Config):
    """A small sequence classifier of one family. Field names follow ``BertConfig``; they are mapped per
    model type (e.g. GPT-2's ``n_layer``/``n_head``/``n_embd``/``n_inner``).

    ``attn_implementation = "eager"`` traces attention as matmul/softmax nodes instead of one
    ``scaled_dot_product_attention`` node; its bf16 backward is faster on CPUs.
    ``bert-tiny`` (Lab 2's smallest point) is ``num_hidden_layers=2, hidden_size=128,
    num_attention_heads=2, intermediate_size=512``.
    ``num_key_value_heads`` (``llama`` only; default: ``num_attention_heads``) must divide
    ``num_attention_heads``. ``embedding_size`` (``albert``/``electra`` only; default: ``hidden_size``).
    ``pad_token_id``: default the family's own for encoders, :data:`DEFAULT_DECODER_PAD_ID` for decoders;
    a decoder's must equal the tokenizer's pad id. Llama has no hidden dropout (only attention dropout).
    """

    model_type: Literal["bert", "distilbert", "roberta", "albert", "electra", "deberta-v2", "modernbert",
                        "gpt2", "llama"] = "bert"
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    hidden_size: int = 128
    intermediate_size: int = 512
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    num_labels: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    num_key_value_heads: Optional[int] = None
    embedding_size: Optional[int] = None
    pad_token_id: Optional[int] = None
    seed: int | None = None

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        for name in ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
                     "vocab_size", "max_position_embeddings", "num_labels"):
            check_range(p + name, getattr(self, name), 1, None)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            check_range(p + name, getattr(self, name), 0.0, 1.0)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{p}hidden_size = {self.hidden_size} is not divisible by {p}num_attention_heads = "
                f"{self.num_attention_heads}; each head needs hidden_size / num_attention_heads dimensions"
            )
        if self.num_key_value_heads is not None:
            if self.model_type not in GQA_TYPES:
                raise ConfigError(f"{p}num_key_value_heads is only for model_type {' / '.join(GQA_TYPES)} "
                                  f"(grouped-query attention), not {self.model_type!r}; remove it")
            check_range(p + "num_key_value_heads", self.num_key_value_heads, 1, self.num_attention_heads)
            if self.num_attention_heads % self.num_key_value_heads:
                raise ConfigError(
                    f"{p}num_key_value_heads = {self.num_key_value_heads} does not divide {p}num_attention_heads = "
                    f"{self.num_attention_heads}; each key/value head serves a whole group of query heads"
                )
        if self.embedding_size is not None:
            if self.model_type not in EMBEDDING_SIZE_TYPES:
                raise ConfigError(f"{p}embedding_size is only for model_type {' / '.join(EMBEDDING_SIZE_TYPES)}, "
                                  f"not {self.model_type!r}; remove it")
            check_range(p + "embedding_size", self.embedding_size, 1, None)
        if self.pad_token_id is not None:
            check_range(p + "pad_token_id", self.pad_token_id, 0, self.vocab_size - 1)
        if self.model_type == "modernbert" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ConfigError(f"{p}hidden_size / {p}num_attention_heads = {self.hidden_size // self.num_attention_heads} "
                              "must be even for model_type 'modernbert' (rotary position embeddings)")
        if self.model_type == "llama" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ConfigError(f"{p}hidden_size / {p}num_attention_heads = {self.hidden_size // self.num_attention_heads} "
                              "must be even for model_type 'llama' (rotary position embeddings)")

    @property
    def is_decoder(self) -> bool:
        return self.model_type in DECODER_TYPES

    def effective_pad_token_id(self) -> int | None:
        """The pad id the built model uses (``None``: the encoder family's own default)."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return DEFAULT_DECODER_PAD_ID if self.is_decoder or self.model_type == "modernbert" else None

    def hf_config(self) -> Any:
        """The transformers config object for this model."""
        import transformers as T

        common: dict[str, Any] = dict(vocab_size=self.vocab_size, num_labels=self.num_labels)
        pad = self.effective_pad_token_id()
        if pad is not None:
            common["pad_token_id"] = pad
        hd, ad = self.hidden_dropout_prob, self.attention_probs_dropout_prob
        L, H, D, F = self.num_hidden_layers, self.num_attention_heads, self.hidden_size, self.intermediate_size
        P = self.max_position_embeddings
        bert_like = dict(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=F,
                         hidden_dropout_prob=hd, attention_probs_dropout_prob=ad, max_position_embeddings=P)
        t = self.model_type
        if t == "distilbert":
            return T.DistilBertConfig(n_layers=L, n_heads=H, dim=D, hidden_dim=F, dropout=hd, attention_dropout=ad,
                                      seq_classif_dropout=hd, max_position_embeddings=P, **common)
        if t in ("bert", "roberta"):
            if t == "roberta":  # RoBERTa offsets positions by padding_idx + 1.
                bert_like["max_position_embeddings"] = P + 2
            return (T.RobertaConfig if t == "roberta" else T.BertConfig)(**bert_like, **common)
        if t in ("albert", "electra"):
            cls = T.AlbertConfig if t == "albert" else T.ElectraConfig
            extra = {"classifier_dropout_prob": hd} if t == "albert" else {}
            return cls(embedding_size=self.embedding_size or D, **bert_like, **extra, **common)
        if t == "deberta-v2":
            return T.DebertaV2Config(**bert_like, pooler_hidden_size=D, pooler_dropout=hd, relative_attention=True,
                                     pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                     position_buckets=min(256, P), share_att_key=True, norm_rel_ebd="layer_norm",
                                     **common)
        specials = {k: None for k in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")}
        if t == "modernbert":
            return T.ModernBertConfig(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=F,
                                      max_position_embeddings=P, attention_dropout=ad, mlp_dropout=hd,
                                      embedding_dropout=hd, classifier_dropout=hd, **specials, **common)
        if t == "gpt2":
            return T.GPT2Config(n_layer=L, n_head=H, n_embd=D, n_inner=F, n_positions=P, resid_pdrop=hd, embd_pdrop=hd,
                                attn_pdrop=ad, summary_first_dropout=hd, use_cache=False,
                                bos_token_id=None, eos_token_id=None, **common)
        if t == "llama":
            return T.LlamaConfig(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=F,
                                 num_key_value_heads=self.num_key_value_heads or H, max_position_embeddings=P,
                                 attention_dropout=ad, use_cache=False, bos_token_id=None, eos_token_id=None,
                                 tie_word_embeddings=False, **common)
        raise ConfigError(f"model_type = {t!r} is not one of {', '.join(MODEL_TYPES)}")  # pragma: no cover


def _classifier_class(model_type: str):
    import transformers as T

    return {"bert": T.BertForSequenceClassification, "distilbert": T.DistilBertForSequenceClassification,
            "roberta": T.RobertaForSequenceClassification, "albert": T.AlbertForSequenceClassification,
            "electra": T.ElectraForSequenceClassification, "deberta-v2": T.DebertaV2ForSequenceClassification,
            "modernbert": T.ModernBertForSequenceClassification, "gpt2": T.GPT2ForSequenceClassification,
            "llama": T.LlamaForSequenceClassification}[model_type]


def build_model(config: ModelConfig | dict[str, Any]) -> nn.Module:
    """A freshly initialised ``*ForSequenceClassification`` model (seeded when ``config.seed`` is set).

    GPT-2's ``Conv1D`` projections are replaced by equivalent ``nn.Linear`` modules
    (:func:`mase_lite.tracing.linearise_conv1d`), so every pass sees them as linear layers.
    """
    from .tracing import linearise_conv1d

    cfg = ModelConfig.from_dict(config) if isinstance(config, dict) else config
    cls = _classifier_class(cfg.model_type)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    model = cls(cfg.hf_config())
    model.set_attn_implementation(cfg.attn_implementation)
    linearise_conv1d(model)
    return model


def load_checkpoint(path: str | Path, num_labels: int | None = None) -> nn.Module:
    """A sequence classifier from a local HF checkpoint directory (``from_pretrained``).

    Its tokenizer files, if any, are the default tokenizer for it (:func:`mase_lite.data.resolve_tokenizer`
    finds the directory from ``model.name_or_path``).
    """
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not path.is_dir():
        raise MaseError(f"checkpoint directory not found: {path}")
    if not (path / "config.json").is_file():
        raise MaseError(f"{path} is not a transformers checkpoint (no config.json)")
    kwargs = {"num_labels": num_labels} if num_labels else {}
    try:
        return AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise MaseError(f"could not load checkpoint {path}: {str(exc).splitlines()[0]}") from exc


def example_inputs(model: nn.Module, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``input_ids`` / ``attention_mask`` suitable for tracing a transformers classifier.

    Ids avoid the model's pad id (decoders find each row's last token by it) and the first 5 ids.
    """
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", 1000)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    pad = getattr(config, "pad_token_id", None)
    if isinstance(pad, int) and pad >= 5:
        ids = torch.where(ids == pad, torch.full_like(ids, 5 if pad != 5 else 6), ids)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
