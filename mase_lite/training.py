"""Fast CPU training and evaluation of sequence classifiers (HF call convention).

A model is anything called as ``model(input_ids=..., attention_mask=..., labels=...)`` that returns an
object with ``.loss`` (mean cross-entropy) and ``.logits`` — Hugging Face classifiers and mase-lite's
``MaseGraph``. Datasets are ``datasets.Dataset`` objects with ``input_ids`` and ``labels`` columns (as
:func:`mase_lite.data.load_splits` makes them).

The default recipe (:class:`TrainConfig` defaults) and why
    MASE's tutorial trains with the HF ``Trainer`` defaults: batch 8, lr 5e-5, dropout on, fp32,
    random batches padded to the longest row. For a small model trained from scratch for one epoch
    that spends most of its time on work that does not help; this recipe differs in:

    * **batch 32, AdamW at lr 1e-3 with beta2 0.98, 10 % linear warmup then linear decay to 0,
      weight decay 0.01 (none on biases/LayerNorm), gradient clipping at 1.0.** A model trained from
      scratch for one epoch needs a large learning rate; beta2 = 0.98 (as in RoBERTa) keeps Adam
      stable there (at 2e-3 with beta2 0.999 bert-tiny collapses to chance). 1e-3 is robust to the
      initialisation: on IMDb bert-tiny reached 0.838-0.855 over 13 model seeds (eager and traced),
      where 1.5e-3 left 3 of 7 seeds stuck at 0.73-0.78. 32 rows per step give
      matmuls big enough to run near the machine's peak while keeping ~780 updates per IMDb epoch.
    * **length-grouped batches with dynamic padding.** Rows are shuffled, cut into buckets of
      ``bucket_batches`` batches, sorted by length inside a bucket, batched, and the batches shuffled;
      each batch is padded only to its longest row, so little compute goes to padding while the
      order stays random.
    * **bf16 autocast where the CPU has native bf16 dot products** (``precision="auto"``: AVX512-BF16
      or AMX; fp32 elsewhere). Matmuls then run at 2-3x the fp32 rate; weights, optimizer state,
      LayerNorm, softmax and the loss stay fp32. HF BERT's default ``sdpa`` attention has a slow bf16
      backward on CPU; build models with ``attn_implementation="eager"`` for this recipe.
    * **dropout off while training** (``dropout=False``: every ``nn.Dropout``'s ``p`` is set to 0 for
      the duration, and a MaseGraph's dropout sites are switched off through its training flag). One
      epoch from scratch underfits (on IMDb the final training loss is about the held-out loss), so
      dropout has little to regularise, and drawing its random masks on CPU costs about as much as
      the forward matmuls of a model this small.
    * **fused AdamW** (one kernel over all parameters instead of a Python loop of small ops).
    * **torch threads = the CPUs this process may use** (``os.sched_getaffinity``), set for the
      duration of the call and restored after: intra-op parallelism on the matmuls pays off, more
      threads than cores only adds contention, and the caller's setting is not changed behind its back.
      ``torch.compile`` is not used: on small CPUs its compile time costs as much as a short trial,
      and dynamic padding makes shapes change every batch.

    With the data defaults (:class:`mase_lite.data.DataConfig`: head+tail truncation to 128 tokens),
    bert-tiny (2 layers, hidden 128, 2 heads, intermediate 512) trained on the 25,000 IMDb training
    rows for one epoch (traced graph, model seed 0) took 53 s and reached 0.846 accuracy on 2,000
    seeded test rows (2-core AMD EPYC Zen 4 with AVX512-BF16, idle, bf16 autocast; 159 GFLOP/s of
    useful matmul work, 0.81x that machine's fp32 1024x1024 matmul rate -- a yardstick, not the
    peak of bf16, which is higher); the ``Trainer`` defaults took 135 s for 0.821.
    ``benchmarks/trial_throughput.py`` measures both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import time
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import torch

from .config import Config, check_range
from .errors import ConfigError, DataError, MaseError
from .machine import cpu_flags, default_num_threads
from .weight_scope import frozen_weights

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]


class TrainingDivergedError(MaseError):
    """The training loss became NaN or infinite; search records the trial as failed."""


@dataclasses.dataclass
class TrainConfig(Config):
    """Training recipe; the defaults are the fast CPU recipe described in the module docstring.

    ``eval_every``: call the callback every that many optimizer steps (0: once at the end of each
    epoch). ``max_grad_norm = 0`` disables clipping. ``num_threads = None``: the CPUs available.
    ``device``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``
    (:func:`resolve_device`); on CUDA ``precision = "auto"`` means bf16 autocast.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    adam_beta2: float = 0.98
    max_grad_norm: float = 1.0
    seed: int = 0
    group_by_length: bool = True
    bucket_batches: int = 50
    precision: Precision = "auto"
    dropout: bool = False
    eval_every: int = 0
    log_every: int = 50
    eval_batch_size: int = 128
    num_threads: Optional[int] = None
    progress: bool = True
    device: str = "auto"

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        check_range(f"{p}epochs", self.epochs, 1)
        check_range(f"{p}batch_size", self.batch_size, 1)
        check_range(f"{p}eval_batch_size", self.eval_batch_size, 1)
        check_range(f"{p}lr", self.lr, 0.0)
        check_range(f"{p}warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_range(f"{p}weight_decay", self.weight_decay, 0.0)
        check_range(f"{p}adam_beta2", self.adam_beta2, 0.0, 0.9999)
        check_range(f"{p}max_grad_norm", self.max_grad_norm, 0.0)
        check_range(f"{p}bucket_batches", self.bucket_batches, 1)
        check_range(f"{p}eval_every", self.eval_every, 0)
        check_range(f"{p}log_every", self.log_every, 1)
        if self.num_threads is not None:
            check_range(f"{p}num_threads", self.num_threads, 1)
        check_device(f"{p}device", self.device)


@dataclasses.dataclass
class EvalResult:
    accuracy: float
    loss: float
    n: int


@dataclasses.dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int  # real (non-padding) tokens seen
    padded_tokens: int  # tokens computed on, padding included
    tokens_per_s: float  # real tokens per second
    final_loss: float  # mean training loss of the last ``log_every`` steps
    precision: str
    num_threads: int
    device: str = "cpu"  # the resolved device, e.g. "cpu", "cuda:0"


@dataclasses.dataclass
class TrainState:
    """What the callback sees after an optimizer step. ``evaluate(ds=None)`` evaluates the model being
    trained on ``ds`` (default: the ``eval_ds`` given to :func:`train`) and returns to training mode."""

    step: int
    total_steps: int
    epoch: float  # epochs completed, fractional
    loss: float  # mean training loss since the previous callback
    lr: float
    evaluate: Callable[..., EvalResult]


Callback = Callable[[TrainState], Any]


# --------------------------------------------------------------------------- environment


#: What ``TrainConfig.device`` takes.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(path: str, device: Any) -> str:
    """Return ``device`` if it is one of :data:`DEVICE_CHOICES` (syntax only), else raise a ConfigError."""
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ConfigError(f"{path} = {device!r} is not valid; choose one of: {', '.join(map(repr, DEVICE_CHOICES))} "
                          f"(N: a CUDA device index)")
    return device


def resolve_device(device: str | torch.device = "auto", path: str = "train.device") -> torch.device:
    """The :class:`torch.device` that ``device`` names: ``auto`` -> ``cuda`` when CUDA is available, else
    ``cpu``. ``cuda``/``cuda:N`` without CUDA (or N out of range) is a ConfigError naming ``path``."""
    if isinstance(device, torch.device):
        device = str(device)
    check_device(path, device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"{path} = {device!r} but CUDA is not available ({why}; torch {torch.__version__}); "
                          f"use 'auto' or 'cpu'")
    dev = torch.device(device)
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"{path} = {device!r} but only {count} CUDA device(s) are visible "
                          f"(cuda:0..cuda:{count - 1})")
    return dev


def device_name(device: torch.device) -> str:
    """``"cpu"`` or ``"cuda:N"`` (the index filled in)."""
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return str(device)


def _cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """``"auto"`` -> ``"bf16"`` on CPUs with native bf16 dot products (AVX512-BF16/AMX), else ``"fp32"``;
    on a CUDA ``device``, ``"bf16"`` where the GPU supports it, else ``"fp32"``."""
    if precision == "auto":
        if device is not None and torch.device(device).type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if _cpu_has_native_bf16() else "fp32"
    return precision


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without tensors)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for the block (default: the available CPUs), then restore it."""
    n = n or default_num_threads()
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(prev)


def _autocast(precision: str, device_type: str = "cpu"):
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


@contextlib.contextmanager
def _train_mode(model: torch.nn.Module, dropout: bool) -> Iterator[Callable[[], None]]:
    """Yields ``to_train()``, which puts ``model`` in training mode, with dropout off unless ``dropout``.

    Dropout is switched off by setting every ``nn.Dropout``'s ``p`` to 0 (HF attention reads its rate
    from there too) and, in a MaseGraph, by turning its ``TrainingFlag`` (which every dropout site of
    the graph reads) to eval mode. Everything is restored on exit except the train/eval mode, which the
    caller restores.
    """
    from .tracing import TrainingFlag

    saved: list[tuple[torch.nn.Module, float]] = []
    flags: list[torch.nn.Module] = []
    if not dropout:
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.dropout._DropoutNd) and mod.p != 0.0:
                saved.append((mod, mod.p))
                mod.p = 0.0
            elif isinstance(mod, TrainingFlag):
                flags.append(mod)

    def to_train() -> None:
        model.train()
        for flag in flags:
            flag.training = False

    try:
        yield to_train
    finally:
        for mod, p in saved:
            mod.p = p


# --------------------------------------------------------------------------- batching


class TokenArrays:
    """A tokenised dataset as flat numpy arrays, for fast batch assembly."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray):
        self.ids = ids
        self.offsets = offsets
        self.labels = labels
        self.lengths = np.diff(offsets)

    @classmethod
    def from_dataset(cls, ds) -> "TokenArrays":
        """From a ``datasets.Dataset`` (or anything indexable by column) with ``input_ids`` and ``labels``."""
        if isinstance(ds, TokenArrays):
            return ds
        names = list(getattr(ds, "column_names", None) or [])
        label_col = "labels" if "labels" in names else "label" if "label" in names else None
        if "input_ids" not in names or label_col is None:
            raise DataError(
                f"a training/evaluation dataset needs columns 'input_ids' and 'labels'; it has: {', '.join(names) or '(none)'}"
            )
        table = ds.with_format("arrow")[:]
        col = table.column("input_ids").combine_chunks()
        offsets = col.offsets.to_numpy().astype(np.int64)
        ids = col.flatten().to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        labels = table.column(label_col).to_numpy().astype(np.int64)
        return cls(ids, offsets, labels)

    def __len__(self) -> int:
        return len(self.labels)

    def collate(self, rows: np.ndarray, pad_id: int = 0) -> dict[str, torch.Tensor]:
        """A batch of ``rows`` padded to its longest row: ``input_ids``, ``attention_mask``, ``labels``."""
        rows = np.asarray(rows)
        lens = self.lengths[rows]
        width = int(lens.max())
        pos = np.arange(width)
        mask = pos[None, :] < lens[:, None]
        gather = np.minimum(self.offsets[rows][:, None] + pos[None, :], len(self.ids) - 1)
        ids = np.where(mask, self.ids[gather], pad_id)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "labels": torch.from_numpy(self.labels[rows]),
        }


def make_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int | np.random.Generator = 0,
    group_by_length: bool = True,
    bucket_batches: int = 50,
) -> list[np.ndarray]:
    """Row indices of each batch; every row appears exactly once.

    ``shuffle and group_by_length``: shuffle rows, cut into buckets of ``batch_size * bucket_batches``,
    sort each bucket by length (longest first), batch, and shuffle the order of the batches.
    ``shuffle`` alone: random batches. No shuffle: sorted by length if grouping (fastest for
    evaluation), else in order.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable") if group_by_length else np.arange(n)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    bucket = batch_size * bucket_batches
    batches = []
    for start in range(0, n, bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


# --------------------------------------------------------------------------- optimisation


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup from 0, then linear decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    rest = max(1, total_steps - warmup_steps)
    return base_lr * max(0.0, (total_steps - step) / rest)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (weights, embeddings) and none on biases/LayerNorm."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    betas = (0.9, cfg.adam_beta2)
    if not groups:
        raise MaseError("the model has no trainable parameters")
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):  # fused kernel not available for these tensors
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, foreach=True)


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model: torch.nn.Module,
    ds,
    *,
    batch_size: int = 128,
    precision: Precision = "auto",
    num_threads: int | None = None,
    pad_id: int = 0,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Accuracy and mean cross-entropy of ``model`` on ``ds``; the model's train/eval mode is restored.

    ``device``: move the model there first (``auto``/``cpu``/``cuda``/``cuda:N``, see
    :func:`resolve_device`); ``None``: evaluate where the model is. ``precision`` resolves for that device.
    """
    from .progress import nested_progress as tqdm  # bars on a terminal only (see mase_lite.progress)

    data = TokenArrays.from_dataset(ds)
    if len(data) == 0:
        raise DataError("cannot evaluate on an empty dataset")
    if device is not None:
        model.to(resolve_device(device))
    dev = _model_device(model)
    prec = resolve_precision(precision, dev)
    was_training = model.training
    correct = 0
    loss_sum = 0.0
    batches = make_batches(data.lengths, batch_size, shuffle=False)
    try:
        model.eval()
        # weights cannot change during an evaluation, so derived weights may be cached for its length
        with torch_threads(num_threads), torch.inference_mode(), frozen_weights():
            for rows in tqdm(batches, desc="eval", leave=False, disable=not progress):
                batch = _to_device(data.collate(rows, pad_id), dev)
                with _autocast(prec, dev.type):
                    out = model(**batch)
                logits = out.logits.float()
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
                loss_sum += float(out.loss) * len(rows)
    finally:
        model.train(was_training)
    n = len(data)
    return EvalResult(accuracy=correct / n, loss=loss_sum / n, n=n)


# --------------------------------------------------------------------------- training


@dataclasses.dataclass
class _Tally:
    """Running counts of one :func:`train` call: steps, tokens, and the losses for the log and callback."""

    log_every: int
    step: int = 0
    tokens: int = 0
    padded: int = 0
    recent: list[float] = dataclasses.field(default_factory=list)  # the last ``log_every`` losses
    since_cb: list[float] = dataclasses.field(default_factory=list)  # losses since the previous callback

    def add(self, value: float, tokens: int, padded: int) -> None:
        self.step += 1
        self.tokens += tokens
        self.padded += padded
        self.recent.append(value)
        self.since_cb.append(value)
        if len(self.recent) > self.log_every:
            self.recent.pop(0)

    def recent_loss(self) -> float:
        return sum(self.recent) / len(self.recent)

    def report(self, bar, total: int, steps_per_epoch: int, lr: float) -> None:
        """Show the mean of the recent losses on the progress bar and in the log."""
        mean = self.recent_loss()
        bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
        log.info("step %d/%d epoch %.2f loss %.4f lr %.3g", self.step, total, self.step / steps_per_epoch, mean, lr)

    def take_callback_loss(self) -> float:
        """Mean loss since the previous callback; starts the next window."""
        loss = sum(self.since_cb) / len(self.since_cb)
        self.since_cb = []
        return loss


def _train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    batch: dict[str, torch.Tensor],
    cfg: TrainConfig,
    prec: str,
    device_type: str,
    *,
    lr: float,
    step: int,
    total: int,
) -> float:
    """One optimizer step on ``batch`` at learning rate ``lr``; returns the batch's loss.

    Raises :class:`TrainingDivergedError` (before the backward pass) when the loss is NaN/inf.
    """
    for g in optimizer.param_groups:
        g["lr"] = lr
    with _autocast(prec, device_type):
        out = model(**batch)
    loss = out.loss
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"training loss became {value} at step {step + 1} of {total} (lr {lr:.3g}); "
            f"lower the learning rate (train.lr = {cfg.lr}) or clip gradients (train.max_grad_norm)"
        )
    loss.backward()
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value


def _evaluator(model: torch.nn.Module, eval_ds, cfg: TrainConfig, prec: str, nthreads: int, pad_id: int,
               to_train: Callable[[], None]) -> Callable[..., EvalResult]:
    """``TrainState.evaluate``: evaluates ``model`` on ``ds`` (default ``eval_ds``), then back to training."""

    def evaluate_now(ds=None) -> EvalResult:
        target = eval_ds if ds is None else ds
        if target is None:
            raise MaseError("state.evaluate() needs a dataset: pass eval_ds to train() or a dataset to evaluate()")
        try:
            return evaluate(model, target, batch_size=cfg.eval_batch_size, precision=prec, num_threads=nthreads,
                            pad_id=pad_id)
        finally:
            to_train()

    return evaluate_now


def _callback_due(cfg: TrainConfig, step: int, epoch_end: bool) -> bool:
    """Whether the callback runs after ``step``: every ``cfg.eval_every`` steps, else at each epoch end."""
    return bool(cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and epoch_end)


def _train_result(tally: _Tally, seconds: float, prec: str, nthreads: int, device: torch.device) -> TrainResult:
    """The :class:`TrainResult` of a finished run, logged."""
    result = TrainResult(
        steps=tally.step,
        seconds=seconds,
        tokens=tally.tokens,
        padded_tokens=tally.padded,
        tokens_per_s=tally.tokens / seconds if seconds > 0 else float("nan"),
        final_loss=tally.recent_loss(),
        precision=prec,
        num_threads=nthreads,
        device=device_name(device),
    )
    log.info(
        "trained %d steps in %.1f s (%.0f tokens/s, %s, %s, %d threads), final loss %.4f",
        tally.step, seconds, result.tokens_per_s, prec, result.device, nthreads, result.final_loss,
    )
    return result


def train(
    model: torch.nn.Module,
    train_ds,
    cfg: TrainConfig | None = None,
    *,
    eval_ds=None,
    callback: Callback | None = None,
    pad_id: int = 0,
) -> TrainResult:
    """Train ``model`` in place on ``train_ds`` with the recipe ``cfg`` (default: :class:`TrainConfig`()).

    ``callback(state)`` runs every ``cfg.eval_every`` steps (or at each epoch end when that is 0); it
    may call ``state.evaluate()`` and may raise to stop training (e.g. ``optuna.TrialPruned``), which
    propagates. Raises :class:`TrainingDivergedError` when the loss is NaN/inf. Seeded: the same
    ``cfg.seed``, model and data give the same result on the same machine and thread count.
    The model is moved to ``cfg.device`` (:func:`resolve_device`) and stays there.
    """
    from .progress import nested_progress as tqdm  # bars on a terminal only (see mase_lite.progress)

    cfg = cfg or TrainConfig()
    data = TokenArrays.from_dataset(train_ds)
    if len(data) == 0:
        raise DataError("cannot train on an empty dataset")
    device = resolve_device(cfg.device)
    model.to(device)
    prec = resolve_precision(cfg.precision, device)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_ratio * total))
    rng = np.random.default_rng(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    was_training = model.training
    tally = _Tally(cfg.log_every)
    t0 = time.perf_counter()
    with torch_threads(cfg.num_threads) as nthreads, _train_mode(model, cfg.dropout) as to_train:
        evaluate_now = _evaluator(model, eval_ds, cfg, prec, nthreads, pad_id, to_train)
        torch.manual_seed(cfg.seed)
        bar = tqdm(total=total, desc="train", leave=False, disable=not cfg.progress, unit="step")
        try:
            to_train()
            for _ in range(cfg.epochs):
                batches = make_batches(data.lengths, cfg.batch_size, shuffle=True, seed=rng,
                                       group_by_length=cfg.group_by_length, bucket_batches=cfg.bucket_batches)
                for i, rows in enumerate(batches):
                    lr = lr_at(tally.step, total, warmup, cfg.lr)
                    batch = _to_device(data.collate(rows, pad_id), device)
                    value = _train_step(model, optimizer, params, batch, cfg, prec, device.type,
                                        lr=lr, step=tally.step, total=total)
                    tally.add(value, int(data.lengths[rows].sum()), batch["input_ids"].numel())
                    bar.update(1)
                    if tally.step % cfg.log_every == 0:
                        tally.report(bar, total, steps_per_epoch, lr)
                    if callback is not None and _callback_due(cfg, tally.step, i == len(batches) - 1):
                        callback(TrainState(step=tally.step, total_steps=total, epoch=tally.step / steps_per_epoch,
                                            loss=tally.take_callback_loss(), lr=lr, evaluate=evaluate_now))
        finally:
            bar.close()
            model.train(was_training)
    return _train_result(tally, time.perf_counter() - t0, prec, nthreads, device)
