"""Objectives: what one trial does, in three variants (one study each).

Every variant (:class:`BaseObjective`) builds the sampled ``ModelConfig`` (seeded), traces it,
replaces the chosen square Linears with identities (``replace_linear_with_identity``), checks the
graph against the sample (:func:`search.space.describe_graph`), trains it for one epoch and evaluates
it on the validation split. Then:

* ``baseline`` — nothing more;
* ``compress`` — runs the compression pipeline (``passes.run_pipeline``) and evaluates again;
* ``compress_finetune`` — compresses, fine-tunes one more epoch, evaluates; the accuracy before
  fine-tuning is kept too.

Finally the ``cost`` pass measures the final graph. Everything goes into Optuna user attributes:
``arch``, ``accuracy`` (final) and ``accuracy_trained`` / ``accuracy_compressed`` /
``accuracy_finetuned``, ``cost``, ``timings`` (seconds per phase), ``graph_dir`` when the graph was
saved. A trial whose model cannot be built is pruned (``prune_reason``); one that raises (e.g. NaN
loss) records ``fail_reason`` and re-raises, so Optuna marks it FAIL and the study goes on (the
runner passes ``catch=(Exception,)``); Ctrl-C marks it ``interrupted``.

Each step (build, identity, train and evaluate, compress, cost) is a method of the context's
:class:`search.lifecycle.Lifecycle`; tests pass one with a fake trainer.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, ClassVar, Iterator

import optuna

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph
from mase_lite.machine import machine_info
from mase_lite.training import TrainConfig, resolve_precision

from .lifecycle import Lifecycle, default_lifecycle
from .space import InvalidArchitecture, SearchSpace, describe_graph

log = logging.getLogger(__name__)

#: Objective names -> (direction, what they measure).
METRICS = {
    "accuracy": ("maximize", "final validation accuracy"),
    "compressed_size": ("minimize", "bytes of the final graph, quantised and sparse (cost pass)"),
}


class ArchitectureMismatch(MaseError):
    """The traced graph does not have the architecture the trial sampled."""


# --------------------------------------------------------------------------- cost


def compressed_size(cost: dict[str, Any]) -> float:
    """Bytes of the graph with its quantisation and sparsity applied (the cost pass's ``size_bytes_compressed``)."""
    if "size_bytes_compressed" not in cost:
        raise MaseError(f"the cost figures have no size_bytes_compressed (keys: {sorted(cost)})")
    return float(cost["size_bytes_compressed"])


# --------------------------------------------------------------------------- recording


class TrialRecord:
    """Collects the user attributes of one trial and times its phases; :meth:`flush` writes them
    (each attribute is a storage transaction, so they are written at a few points, not one by one)."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.attrs: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.accuracy = float("nan")
        self._written: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add_timing(name, self.timings.get(name, 0.0) + time.perf_counter() - t0)

    def add_timing(self, name: str, seconds: float) -> None:
        self.timings[name] = round(seconds, 4)
        self.attrs["timings"] = dict(self.timings)

    def flush(self) -> None:
        """Write the attributes that changed since the last flush."""
        for key, value in self.attrs.items():
            if key not in self._written or self._written[key] != value:
                self.trial.set_user_attr(key, value)
                self._written[key] = value


def worker_id() -> str:
    """``host:pid`` of this process (stored on each trial so an interrupted one can be recognised)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- objectives


@dataclasses.dataclass
class ObjectiveContext:
    """What every trial of one study shares."""

    space: SearchSpace
    splits: Any
    train: TrainConfig
    finetune: TrainConfig
    compression: dict[str, Any]
    objectives: list[str]
    seed: int
    graph_dir: Path | None = None
    lifecycle: Lifecycle = dataclasses.field(default_factory=default_lifecycle)


class BaseObjective(abc.ABC):
    """One trial: sample, build, train, then :meth:`run_variant`; returns the study's objective values."""

    variant: ClassVar[str]
    #: Whether the variant trains a second time with ``ctx.finetune`` (its dropout setting then counts).
    finetunes: ClassVar[bool] = False

    def __init__(self, ctx: ObjectiveContext):
        self.ctx = ctx

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        rec = TrialRecord(trial)
        rec.set("worker", worker_id())
        train = self.ctx.train
        rec.set("machine", machine_info(resolve_precision(train.precision), train.num_threads))
        rec.flush()  # first: it tells a later run whether this trial's process is gone
        t_start = time.perf_counter()
        try:
            graph = self.build(trial, rec)
            rec.flush()
            metrics = self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, self.ctx.train)
            self._record_eval(rec, "trained", metrics)
            graph = self.run_variant(graph, rec)
            with rec.phase("cost"):
                cost = self.ctx.lifecycle.cost(graph)
            rec.set("cost", cost)
            values = self._values(rec, cost)
            if self.ctx.graph_dir is not None and _improves(trial, values):
                with rec.phase("save"):
                    path = self.ctx.graph_dir / f"trial-{trial.number:05d}"
                    graph.save(path)
                rec.set("graph_dir", str(path))
            rec.add_timing("total", time.perf_counter() - t_start)
            rec.flush()
            log.info("trial %d: accuracy %.4f, %s", trial.number, rec.accuracy, rec.attrs.get("arch"))
            return values[0] if len(values) == 1 else values
        except InvalidArchitecture as exc:
            rec.set("prune_reason", str(exc))
            rec.flush()
            log.info("trial %d pruned: %s", trial.number, exc)
            raise
        except KeyboardInterrupt:
            rec.set("interrupted", True)
            rec.set("fail_reason", "interrupted (KeyboardInterrupt)")
            rec.flush()
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            rec.set("fail_reason", reason[:1000])
            rec.add_timing("total", time.perf_counter() - t_start)
            rec.flush()
            log.warning("trial %d failed: %s", trial.number, reason)
            log.debug("trial %d traceback", trial.number, exc_info=True)
            raise

    # -- shared phases
    def build(self, trial: optuna.Trial, rec: TrialRecord) -> MaseGraph:
        """Sample the architecture, build and trace it, apply identity choices, check the result."""
        space = self.ctx.space
        with rec.phase("build"):
            config = space.model.suggest(trial)
            config = config.replace(seed=self.ctx.seed, **_dropout_fields(self.ctx.train, self.finetunes and self.ctx.finetune))
            arch = {name: getattr(config, name) for name in space.model.choices}
            rec.set("arch", arch)
            graph = self.ctx.lifecycle.build(config)
        identity: list[str] = []
        if space.nodes is not None:
            with rec.phase("identity"):
                identity = space.nodes.suggest(trial, graph)
                graph = self.ctx.lifecycle.identity(graph, identity)
        arch = {**arch, "identity": identity, "n_identity": len(identity)}
        rec.set("arch", arch)
        check_architecture(graph, arch)
        return graph

    def _record_eval(self, rec: TrialRecord, stage: str, metrics: dict[str, float]) -> None:
        rec.set(f"accuracy_{stage}", metrics["accuracy"])
        rec.set(f"loss_{stage}", metrics["loss"])
        if "train_loss" in metrics:
            rec.set(f"train_loss_{stage}", metrics["train_loss"])
        if "train_s" in metrics:
            rec.add_timing("train" if stage == "trained" else "finetune", metrics["train_s"])
        rec.add_timing(f"eval_{stage}", metrics.get("eval_s", 0.0))
        rec.accuracy = metrics["accuracy"]
        rec.set("accuracy", metrics["accuracy"])

    def _values(self, rec: TrialRecord, cost: dict[str, Any]) -> list[float]:
        out = []
        for name in self.ctx.objectives:
            if name == "accuracy":
                out.append(float(rec.accuracy))
            elif name == "compressed_size":
                out.append(compressed_size(cost))
            else:  # validated by the run config
                raise MaseError(f"unknown objective {name!r}")
        for name, v in zip(self.ctx.objectives, out):
            if not math.isfinite(v):
                raise MaseError(f"objective {name} is {v}")
        return out

    @abc.abstractmethod
    def run_variant(self, graph: MaseGraph, rec: TrialRecord) -> MaseGraph:
        """The variant's steps after training; records its accuracies and returns the final graph."""


class BaselineObjective(BaseObjective):
    """Train, evaluate."""

    variant = "baseline"

    def run_variant(self, graph: MaseGraph, rec: TrialRecord) -> MaseGraph:
        return graph


class CompressObjective(BaseObjective):
    """Train, compress, evaluate."""

    variant = "compress"

    def run_variant(self, graph: MaseGraph, rec: TrialRecord) -> MaseGraph:
        with rec.phase("compress"):
            graph = self.ctx.lifecycle.compress(graph, self.ctx.compression)
        metrics = self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, self.ctx.train, train=False)
        self._record_eval(rec, "compressed", metrics)
        return graph


class CompressFinetuneObjective(CompressObjective):
    """Train, compress, fine-tune one more epoch, evaluate (the accuracy before fine-tuning is kept)."""

    variant = "compress_finetune"
    finetunes = True

    def run_variant(self, graph: MaseGraph, rec: TrialRecord) -> MaseGraph:
        graph = super().run_variant(graph, rec)
        metrics = self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, self.ctx.finetune)
        self._record_eval(rec, "finetuned", metrics)
        return graph


OBJECTIVES: dict[str, type[BaseObjective]] = {
    cls.variant: cls for cls in (BaselineObjective, CompressObjective, CompressFinetuneObjective)
}


# --------------------------------------------------------------------------- helpers


def _dropout_fields(train: TrainConfig, finetune: TrainConfig | None | bool = None) -> dict[str, float]:
    """Zero dropout in the model when no training phase uses it (the graph bakes dropout rates in).

    When one phase uses dropout the model keeps its rates; a phase without dropout switches the
    graph's dropout sites off (:func:`mase_lite.training.train`), so it computes as with rate 0.
    """
    if train.dropout or (isinstance(finetune, TrainConfig) and finetune.dropout):
        return {}
    return {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def check_architecture(graph: MaseGraph, arch: dict[str, Any]) -> dict[str, Any]:
    """Raise :class:`ArchitectureMismatch` unless ``graph``'s structure has the sampled ``arch``."""
    seen = describe_graph(graph)
    wrong = []
    for name in ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"):
        if name in arch and seen.get(name) is not None and seen[name] != arch[name]:
            wrong.append(f"{name}: sampled {arch[name]}, graph has {seen[name]}")
    left = [p for p in arch.get("identity", []) if p in seen["linear_paths"]]
    if left:
        wrong.append(f"linear nodes still present after identity replacement: {left}")
    if wrong:
        raise ArchitectureMismatch("the graph does not have the sampled architecture: " + "; ".join(wrong))
    return seen


def _improves(trial: optuna.Trial, values: list[float]) -> bool:
    """Whether ``values`` would be the study's best (single objective) or on its Pareto front (several)."""
    study = trial.study
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    directions = study.directions
    sign = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in directions]
    mine = [s * v for s, v in zip(sign, values)]
    for t in done:
        if t.values is None:
            continue
        other = [s * v for s, v in zip(sign, t.values)]
        if len(values) == 1:
            if other[0] <= mine[0]:
                return False
        elif all(o <= m for o, m in zip(other, mine)) and any(o < m for o, m in zip(other, mine)):
            return False
    return True
