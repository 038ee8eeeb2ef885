"""Building transformers classifiers from small typed configs or checkpoints, and example inputs to trace them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .config import Config, check_range
from .errors import ConfigError, MaseError

log = logging.getLogger(__name__)

MODEL_TYPES = ("bert", "distilbert", "roberta")


@dataclass
class ModelConfig(Config):
    """A BERT-like sequence classifier. Field names follow ``BertConfig``; they are mapped per model type.

    ``attn_implementation = "eager"`` traces attention as matmul/softmax nodes instead of one
    ``scaled_dot_product_attention`` node; its bf16 backward is faster on CPUs.
    ``bert-tiny`` (Lab 2's smallest point) is ``num_hidden_layers=2, hidden_size=128,
    num_attention_heads=2, intermediate_size=512``.
    """

    model_type: Literal["bert", "distilbert", "roberta"] = "bert"
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

    def hf_config(self) -> Any:
        """The transformers config object for this model."""
        from transformers import BertConfig, DistilBertConfig, RobertaConfig

        common = dict(vocab_size=self.vocab_size, max_position_embeddings=self.max_position_embeddings,
                      num_labels=self.num_labels)
        if self.model_type == "distilbert":
            return DistilBertConfig(
                n_layers=self.num_hidden_layers, n_heads=self.num_attention_heads, dim=self.hidden_size,
                hidden_dim=self.intermediate_size, dropout=self.hidden_dropout_prob,
                attention_dropout=self.attention_probs_dropout_prob,
                seq_classif_dropout=self.hidden_dropout_prob, **common,
            )
        cls = RobertaConfig if self.model_type == "roberta" else BertConfig
        if self.model_type == "roberta":
            # RoBERTa offsets positions by padding_idx + 1.
            common["max_position_embeddings"] = self.max_position_embeddings + 2
        return cls(
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob, **common,
        )


def build_model(config: ModelConfig | dict[str, Any]) -> nn.Module:
    """A freshly initialised ``*ForSequenceClassification`` model (seeded when ``config.seed`` is set)."""
    from transformers import (BertForSequenceClassification, DistilBertForSequenceClassification,
                              RobertaForSequenceClassification)

    cfg = ModelConfig.from_dict(config) if isinstance(config, dict) else config
    cls = {"bert": BertForSequenceClassification, "distilbert": DistilBertForSequenceClassification,
           "roberta": RobertaForSequenceClassification}[cfg.model_type]
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    model = cls(cfg.hf_config())
    model.set_attn_implementation(cfg.attn_implementation)
    return model


def load_checkpoint(path: str | Path, num_labels: int | None = None) -> nn.Module:
    """A sequence classifier from a local HF checkpoint directory (``from_pretrained``)."""
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
    """Random ``input_ids`` / ``attention_mask`` suitable for tracing a transformers classifier."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", 1000)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
