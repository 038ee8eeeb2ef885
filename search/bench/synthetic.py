"""Synthetic benchmark tables with a chosen accuracy landscape (tests, benchmarks, examples).

:func:`write_synthetic_table` writes a valid table directory (``table.csv`` + ``manifest.json``)
for a space, seeds and a function giving each (architecture, seed) its three accuracies (and
optionally their three test-split accuracies; by default the test columns repeat the validation
ones); the other columns are plausible figures derived from the architecture.

For statistical tests and power calculations, which need thousands of tables, :func:`noisy_runs`
draws the accuracy arrays of one table from a noise model (architecture means + a seed effect shared
by every architecture + run noise + measurement noise of the evaluated rows), and
:func:`random_search_picks` replays the ``random`` sampler on arrays, vectorised over runs (the
distribution of Optuna's ``RandomSampler`` on a space whose combinations are all buildable:
uniform proposals, with replacement, the best observed value picked, earliest on ties).
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

#: ``accuracy(params, seed, rng)`` -> (trained, compressed, finetuned) on validation rows, optionally
#: followed by the three test-split accuracies (else the test columns repeat the validation ones).
Accuracy = Callable[[dict[str, int], int, np.random.Generator], tuple[float, ...]]


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
            acc = [float(np.clip(v, 0.0, 1.0)) if not math.isnan(v) else v for v in accuracy(dict(combo), s, rng)]
            t, c, f = acc[:3]
            tt, tc, tf = acc[3:6] if len(acc) >= 6 else acc[:3]
            rows.append({
                "arch": arch_id(combo), **{k: combo[k] for k in ARCH_PARAMS}, "seed": int(s),
                "accuracy_trained": t, "accuracy_compressed": c, "accuracy_finetuned": f,
                "loss_trained": 1 - t, "loss_compressed": 1 - c, "loss_finetuned": 1 - f,
                "test_accuracy_trained": tt, "test_accuracy_compressed": tc, "test_accuracy_finetuned": tf,
                "test_loss_trained": 1 - tt, "test_loss_compressed": 1 - tc, "test_loss_finetuned": 1 - tf,
                "params": p, "size_bytes_fp32": 4 * p, "size_bytes_compressed": p // 2 + p // 8,
                "time_build_s": 0.1, "time_train_s": p / 1e6, "time_eval_trained_s": 0.2, "time_compress_s": 0.1,
                "time_eval_compressed_s": 0.3, "time_finetune_s": p / 1e6, "time_eval_finetuned_s": 0.3,
                "time_total_s": 1.0 + 2 * p / 1e6, "time_eval_test_s": 0.9, "precision": "fp32", "num_threads": 2,
            })
    return rows


def write_synthetic_table(directory: str | Path, space: Mapping[str, Sequence[int]] | None = None,
                          seeds: Sequence[int] = (0, 1, 2), accuracy: Accuracy | None = None, seed: int = 0,
                          data: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                          compression: Mapping[str, Any] | None = None,
                          rows: list[dict[str, Any]] | None = None,
                          preregistration: Mapping[str, Any] | None = None) -> Path:
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
        preregistration=preregistration,
    )
    return directory


# --------------------------------------------------------------------------- simulation on arrays


def noisy_runs(rng: np.random.Generator, means: np.ndarray, n_seeds: int, sd_run: float, sd_seed: float = 0.0,
               shared: float = 0.5, sd_measure: float = 0.0, n_tables: int = 1) -> np.ndarray:
    """Accuracies of ``n_tables`` simulated tables: ``(n_tables, n_metrics, n_archs, n_seeds)``.

    ``means[m, a]``: the true mean of metric ``m`` of architecture ``a``. Each value is the mean
    plus a seed effect shared by every architecture and metric of that seed (sd ``sd_seed``), plus run
    noise of sd ``sd_run`` of which the fraction ``shared`` of its variance is common to the metrics of
    one run (one trained model is compressed and fine-tuned), plus independent measurement noise
    (``sd_measure``: the finite rows evaluated).
    """
    means = np.asarray(means, dtype=float)
    n_metrics, n_archs = means.shape
    seed = sd_seed * rng.standard_normal((n_tables, 1, 1, n_seeds))
    common = math.sqrt(shared) * sd_run * rng.standard_normal((n_tables, 1, n_archs, n_seeds))
    own = math.sqrt(1.0 - shared) * sd_run * rng.standard_normal((n_tables, n_metrics, n_archs, n_seeds))
    measure = sd_measure * rng.standard_normal((n_tables, n_metrics, n_archs, n_seeds)) if sd_measure else 0.0
    return means[None, :, :, None] + seed + common + own + measure


def draw_seeds(rng: np.random.Generator, n_runs: int, n_archs: int, n_seeds: int, seed_mode: str = "run") -> np.ndarray:
    """``(n_runs, n_archs)`` training-seed index of each architecture in each run (constant rows for ``run``)."""
    if seed_mode == "run":
        return np.repeat(rng.integers(0, n_seeds, size=(n_runs, 1)), n_archs, axis=1)
    return rng.integers(0, n_seeds, size=(n_runs, n_archs))


def random_search_picks(select: np.ndarray, proposals: np.ndarray, seeds: np.ndarray, budget: int | None = None) -> Any:
    """The picks (:class:`search.bench.heldout.Picks`) of random-search runs on the ``(n_archs, n_seeds)``
    array ``select``: run ``r`` evaluates ``proposals[r, :budget]`` (architecture indices) with the seeds
    ``seeds[r]`` and picks the best observed value (earliest on ties). Runs are numbered 0..n-1, so two
    arms given the same proposals and seeds are paired, as replays of one seed are."""
    from .heldout import Picks

    props = proposals[:, :budget] if budget is not None else proposals
    rows = np.arange(props.shape[0])[:, None]
    chosen_seeds = seeds[rows, props]
    observed = select[props, chosen_seeds]
    best = np.argmax(np.where(np.isnan(observed), -np.inf, observed), axis=1)
    arch = props[rows[:, 0], best]
    return Picks.make(np.arange(props.shape[0]), arch, chosen_seeds[rows[:, 0], best], observed[rows[:, 0], best])
