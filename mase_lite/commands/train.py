"""``mase-lite train`` (train a model on a text-classification dataset, save the trained graph) and
``mase-lite eval`` (evaluate a saved graph on a split).

Data and recipe come from a TOML file's ``[data]`` and ``[train]`` tables (``--config``; its
``[model]`` table describes the model) overridden by flags. The logic lives in functions that take
already-built objects (:func:`train_model`, :func:`evaluate_model`); the few lines that build and
save models are at the end of the module. Every step (build, load, trace, data, train, evaluate) goes
through the command lifecycle (:func:`mase_lite.commands.common.lifecycle`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..config import load_toml
from ..data import DataConfig, Splits
from ..errors import ConfigError
from ..training import EvalResult, TrainConfig
from .common import add_model_args, lifecycle

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# flag dest -> config field, for the flags that do not share the field's name
_DATA_FLAGS = {
    "dataset": "dataset", "data_dir": "data_dir", "text_column": "text_column", "label_column": "label_column",
    "tokenizer": "tokenizer", "n_train": "n_train", "n_val": "n_val", "n_test": "n_test",
    "max_length": "max_length", "truncation": "truncation", "data_seed": "seed", "cache_dir": "cache_dir",
}
_TRAIN_FLAGS = {
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "train_seed": "seed",
    "precision": "precision", "dropout": "dropout", "group_by_length": "group_by_length",
    "eval_every": "eval_every", "threads": "num_threads", "progress": "progress",
    "eval_batch_size": "eval_batch_size", "device": "device",
}


# --------------------------------------------------------------------------- arguments


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Data options (a ``[data]`` table of ``--config`` gives the same fields)."""
    g = parser.add_argument_group("data (default: IMDb from $MASE_LITE_DATA, else the hub)")
    g.add_argument("--data-dir", help="data mirror with <dataset>/{train,test}.parquet (default: $MASE_LITE_DATA)")
    g.add_argument("--dataset", help="dataset name (default imdb)")
    g.add_argument("--text-column", help="text column (default text)")
    g.add_argument("--label-column", help="label column (default label)")
    g.add_argument("--tokenizer", help="tokenizer name under the mirror / on the hub, or a directory (default: the "
                                       "--checkpoint's own tokenizer files, else bert-base-uncased)")
    g.add_argument("--n-train", type=int, help="training rows (default: all not in validation)")
    g.add_argument("--n-val", type=int, help="validation rows carved from the training split (default 2000)")
    g.add_argument("--n-test", type=int, help="test rows (default: all)")
    g.add_argument("--max-length", type=int, help="tokens per row after truncation (default 128)")
    g.add_argument("--truncation", choices=["head", "head_tail"], help="which tokens long rows keep (default head_tail)")
    g.add_argument("--data-seed", type=int, help="seed of the row selection (default 0)")
    g.add_argument("--cache-dir", help="tokenised-split cache (default $MASE_LITE_CACHE or ~/.cache/mase-lite)")


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """Training-recipe options (a ``[train]`` table of ``--config`` gives the same fields)."""
    g = parser.add_argument_group("recipe (defaults: mase_lite.training.TrainConfig)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--warmup-ratio", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--max-grad-norm", type=float, help="gradient clipping (0: off)")
    g.add_argument("--train-seed", type=int, help="seed of batch order and dropout")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    g.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the model's dropout while training (default: off)")
    g.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--eval-every", type=int, help="evaluate on the validation split every N steps (0: each epoch)")
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--threads", type=int, help="torch threads (default: the available CPUs)")
    g.add_argument("--device", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default auto)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")


def _section(args: argparse.Namespace, name: str) -> dict[str, Any]:
    cfg_file = getattr(args, "config", None)
    if not cfg_file:
        return {}
    table = load_toml(cfg_file).get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{cfg_file}: [{name}] must be a table")
    return dict(table)


def _overlay(base: dict[str, Any], args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    out = dict(base)
    for dest, field in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[field] = value
    return out


def data_config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> DataConfig:
    """``base``, then ``[data]`` of ``--config``, then data flags; validated."""
    data = {**(base or {}), **_section(args, "data")}
    return DataConfig.from_dict(_overlay(data, args, _DATA_FLAGS), path="data")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """``[train]`` of ``--config`` overridden by recipe flags, validated."""
    return TrainConfig.from_dict(_overlay(_section(args, "train"), args, _TRAIN_FLAGS), path="train")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on a text-classification dataset and save the trained graph",
        description="Build a model (config or checkpoint), trace it, train it with mase-lite's CPU recipe, "
                    "evaluate it and save the trained graph.",
    )
    add_model_args(p)
    p.add_argument("--config", type=Path, help="TOML file with [model], [data] and [train] tables")
    add_data_args(p)
    add_recipe_args(p)
    p.add_argument("--eval-split", choices=["val", "test", "none"], default="val",
                   help="split to evaluate on after training (default val; test is for final reports)")
    p.add_argument("--out", type=Path, help="directory to save the trained graph in")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=run)

    e = sub.add_parser("eval", help="evaluate a saved graph on a split",
                       description="Load a graph saved by 'mase-lite train' and report accuracy and loss on a split. "
                                   "Data settings default to those the graph was trained with (its training.json).")
    e.add_argument("graph", type=Path, help="directory of a saved graph")
    e.add_argument("--config", type=Path, help="TOML file with a [data] table")
    add_data_args(e)
    e.add_argument("--split", choices=list(SPLITS), default="test", help="split to evaluate on (default test)")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    e.add_argument("--threads", type=int)
    e.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(run=run_eval)


# --------------------------------------------------------------------------- logic on built objects


def tokenizer_config(data_cfg: DataConfig, model, lc=None) -> DataConfig:
    """``data_cfg`` with the tokenizer chosen for ``model`` (``--tokenizer``, else the checkpoint's own
    tokenizer files, else bert-base-uncased; the lifecycle's step)."""
    return (lc or lifecycle()).tokenizer_config(data_cfg, model)


def prepare_data(model, data_cfg: DataConfig, splits: tuple[str, ...] = SPLITS, lc=None) -> Splits:
    """Splits for ``model``, after checking max_length and vocabulary against it (the lifecycle's step)."""
    return (lc or lifecycle()).load_data(data_cfg, model, splits)


def train_model(model, splits: Splits, train_cfg: TrainConfig, eval_split: str = "val", lc=None) -> dict[str, Any]:
    """Train ``model`` in place on ``splits.train``; evaluate on ``eval_split`` (or ``"none"``)."""
    split = None if eval_split == "none" else eval_split

    def report(state):
        if split is not None and train_cfg.eval_every:
            r = state.evaluate()
            log.info("step %d (epoch %.2f): %s accuracy %.4f loss %.4f", state.step, state.epoch, eval_split,
                     r.accuracy, r.loss)

    try:
        res = (lc or lifecycle()).train_and_eval(model, splits, train_cfg, split=split, callback=report)
    except ConfigError as exc:
        raise ConfigError(f"--eval-split {eval_split}: {exc}") from None
    out: dict[str, Any] = {"training": res["training"]}
    if split is not None:
        out[eval_split] = {k: res[k] for k in ("accuracy", "loss", "n")}
    return out


def evaluate_model(model, splits: Splits, split: str, *, batch_size: int = 128, precision: str = "auto",
                   num_threads: int | None = None, progress: bool = False, device: str | None = None,
                   lc=None) -> EvalResult:
    """Accuracy and loss of ``model`` on one split (on ``device``; ``None``: where the model is)."""
    if len(getattr(splits, split)) == 0:
        raise ConfigError(f"split {split!r} is empty")
    recipe = TrainConfig(eval_batch_size=batch_size, precision=precision, num_threads=num_threads,
                         device=device)  # type: ignore[arg-type]  (None: where the model is)
    r = (lc or lifecycle()).evaluate(model, splits, recipe, split, progress=progress)
    return EvalResult(accuracy=r["accuracy"], loss=r["loss"], n=r["n"])


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    t = summary.get("training")
    if t:
        print(f"trained {t['steps']} steps in {t['seconds']:.1f} s ({t['tokens_per_s']:.0f} tokens/s, "
              f"{t['precision']}, {t['num_threads']} threads), final loss {t['final_loss']:.4f}")
    for split in SPLITS:
        r = summary.get(split)
        if r:
            print(f"{split}: accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  (n={r['n']})")
    if summary.get("saved"):
        print(f"saved graph to {summary['saved']}")


# --------------------------------------------------------------------------- commands


def run(args: argparse.Namespace) -> int:
    from ..training import resolve_device

    data_cfg = data_config_from_args(args)
    train_cfg = train_config_from_args(args)
    resolve_device(train_cfg.device)  # cuda without CUDA: an error before any work
    if not getattr(args, "checkpoint", None):
        # a model built from sizes does not choose the tokenizer: check it first, so that a missing
        # mirror offline is reported before the model classes are imported (seconds)
        from ..data import check_tokenizer, resolve_tokenizer

        check_tokenizer(resolve_tokenizer(data_cfg))
    lc = lifecycle()
    model = _build_model(args, lc)
    data_cfg = tokenizer_config(data_cfg, model, lc)  # the checkpoint's own tokenizer by default; recorded below
    needed = ("train",) if args.eval_split == "none" else ("train", args.eval_split)
    splits = prepare_data(model, data_cfg, needed, lc)  # also sets a decoder's pad_token_id before tracing
    graph = lc.trace(model)
    summary = train_model(graph, splits, train_cfg, args.eval_split, lc)
    if args.out:
        summary["saved"] = str(_save_graph(graph, args.out, {"data": data_cfg.to_dict(), "train": train_cfg.to_dict(),
                                                                  "results": summary}))
    _print(summary, args.json)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..training import resolve_device

    resolve_device(args.device, "--device")  # a bad or unavailable device: an error before any work
    # default data settings: those the graph was trained with (same seed -> same validation rows)
    record = Path(args.graph) / "training.json"
    base = json.loads(record.read_text()).get("data", {}) if record.is_file() else {}
    data_cfg = data_config_from_args(args, base)
    lc = lifecycle()
    graph = lc.load(args.graph)
    splits = prepare_data(graph, data_cfg, (args.split,), lc)
    result = evaluate_model(graph, splits, args.split, batch_size=args.batch_size, precision=args.precision,
                            num_threads=args.threads, progress=args.progress,
                            device=resolve_device(args.device, "--device"), lc=lc)
    _print({args.split: result.__dict__}, args.json)
    return 0


# --------------------------------------------------------------------------- model building and the IR


def _build_model(args: argparse.Namespace, lc):
    """the model to train, from ``--checkpoint`` or a model config (``[model]`` of ``--config``)."""
    from .common import model_from_args

    return model_from_args(args, _section(args, "model") or None, lc=lc)


def _save_graph(graph, out: Path, record: dict[str, Any]) -> Path:
    """save the trained graph to ``out``, with the data/recipe/results in ``training.json``."""
    path = graph.save(out)
    (Path(path) / "training.json").write_text(json.dumps(record, indent=2, default=str))
    return Path(path)
