"""Synthetic benchmark tables with a chosen accuracy landscape (tests, benchmarks, examples).

:func:`write_synthetic_table` writes a valid table directory (``table.csv`` + ``manifest.json``)
for a space, seeds and a function giving each (architecture, seed) its three accuracies; the other
columns are plausible figures derived from the architecture.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .table import ARCH_PARAMS, arch_id, buildable, space_combinations, write_manifest, write_table

#: A small space with unbuildable combinations (3 heads with hidden 128): 48 buildable of 54.
DEFAULT_SPACE = {"num_hidden_layers": [1, 2, 4], "num_attention_heads": [2, 3, 4],
                 "hidden_size": [96, 128, 192], "intermediate_size": [128, 256]}

Accuracy = Callable[[dict[str, int], int, np.random.Generator], tuple[float, float, float]]


def smooth_landscape(params: dict[str, int], seed: int, rng: np.random.Generator, noise: float = 0.006) -> tuple[float, float, float]:
    """A structured landscape: deeper and wider is better, compression hurts small models more."""
    L, H, I = params["num_hidden_layers"], params["hidden_size"], params["intermediate_size"]
    base = 0.70 + 0.03 * math.log2(L) + 0.04 * (H / 128) + 0.01 * (I / 256)
    trained = base + rng.normal(0, noise)
    compressed = trained - 0.08 * (64 / H) + rng.normal(0, noise)
    finetuned = (trained + compressed) / 2 + 0.01 + rng.normal(0, noise)
    return trained, compressed, finetuned


def n_params(params: Mapping[str, int], vocab: int = 30522, positions: int = 512) -> int:
    """Parameter count of a BERT classifier (embeddings, encoder, pooler, 2-way head)."""
    L, H, I = params["num_hidden_layers"], params["hidden_size"], params["intermediate_size"]
    emb = (vocab + positions + 2) * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    return emb + L * layer + (H * H + H) + (2 * H + 2)


def synthetic_rows(space: Mapping[str, Sequence[int]], seeds: Sequence[int], accuracy: Accuracy | None = None,
                   seed: int = 0) -> list[dict[str, Any]]:
    """One row per buildable architecture and seed; ``accuracy(params, seed, rng)`` -> (trained, compressed, finetuned)."""
    accuracy = accuracy or smooth_landscape
    rng = np.random.default_rng(seed)
    rows = []
    for combo in space_combinations(space):
        if not buildable(combo):
            continue
        p = n_params(combo)
        for s in seeds:
            t, c, f = (float(np.clip(v, 0.0, 1.0)) if not math.isnan(v) else v for v in accuracy(dict(combo), s, rng))
            rows.append({
                "arch": arch_id(combo), **{k: combo[k] for k in ARCH_PARAMS}, "seed": int(s),
                "accuracy_trained": t, "accuracy_compressed": c, "accuracy_finetuned": f,
                "loss_trained": 1 - t, "loss_compressed": 1 - c, "loss_finetuned": 1 - f,
                "params": p, "size_bytes_fp32": 4 * p, "size_bytes_compressed": p // 2 + p // 8,
                "time_build_s": 0.1, "time_train_s": p / 1e6, "time_eval_trained_s": 0.2, "time_compress_s": 0.1,
                "time_eval_compressed_s": 0.3, "time_finetune_s": p / 1e6, "time_eval_finetuned_s": 0.3,
                "time_total_s": 1.0 + 2 * p / 1e6, "precision": "fp32", "num_threads": 2,
            })
    return rows


def write_synthetic_table(directory: str | Path, space: Mapping[str, Sequence[int]] | None = None,
                          seeds: Sequence[int] = (0, 1, 2), accuracy: Accuracy | None = None, seed: int = 0,
                          data: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                          compression: Mapping[str, Any] | None = None,
                          rows: list[dict[str, Any]] | None = None) -> Path:
    """Write a synthetic table directory; ``data``/``train`` override fields of the default configs."""
    from mase_lite.data import DEFAULT_TOKENIZER, DataConfig
    from mase_lite.models import ModelConfig
    from mase_lite.training import TrainConfig
    from search.config import DEFAULT_COMPRESSION

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    space = {k: list(v) for k, v in (space or DEFAULT_SPACE).items()}
    if rows is None:
        rows = synthetic_rows(space, seeds, accuracy, seed)
    write_table(rows, directory)
    train_cfg = TrainConfig.from_dict(dict(train or {}))
    write_manifest(
        directory, space=space, model=ModelConfig().to_dict(),
        data=DataConfig.from_dict({"tokenizer": DEFAULT_TOKENIZER, **dict(data or {})}).to_dict(),  # as RunConfig fills it
        train=train_cfg.to_dict(), finetune=train_cfg.replace(epochs=1).to_dict(),
        compression=copy.deepcopy(dict(compression or DEFAULT_COMPRESSION)), seeds=list(seeds), total_seconds=0.0,
        command="synthetic", versions={}, machine={"cpu": "synthetic", "flags": [], "num_threads": 2, "precision": "fp32"},
    )
    return directory
