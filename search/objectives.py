"""Objectives: what one trial does, in three variants (one study each).

Every variant (:class:`BaseObjective`) builds the sampled ``ModelConfig`` (seeded), traces it,
replaces the chosen square Linears with identities (``replace_linear_with_identity``), checks the
graph against the sample (:func:`search.space.describe_graph`), trains it for one epoch and evaluates
it on the validation split. Then:

* ``baseline`` — nothing more;
* ``compress`` — runs the compression pipeline (``passes.run_pipeline``) and evaluates again;
* ``compress_finetune`` — compresses, fine-tunes one more epoch, evaluates; the accuracy before
  fine-tuning is kept too.

Held-out figures (``ObjectiveContext.test_eval``; the test split is never an objective): ``best``
(live search) evaluates the final graph of a feasible trial that is best, tied for best or on the
Pareto front among the trials complete so far -- so every trial of the final best set has one --
into ``test_accuracy``, ``test_loss``, ``test_n``; ``all`` (benchmark tables) evaluates after every
stage (``test_accuracy_trained`` ...). A trial that reuses an earlier result copies these too.

Finally the ``cost`` pass measures the final graph. Everything goes into Optuna user attributes:
``arch``, ``accuracy`` (final) and ``accuracy_trained`` / ``accuracy_compressed`` /
``accuracy_finetuned``, ``cost``, ``timings`` (seconds per phase), ``graph_dir`` when the graph was
saved; ``sparsity`` (the cost pass's pruned fraction, rounding zeros and effective sparsity, see
:func:`sparsity_attrs`); with ``[space.compression]``, ``compression_choices`` (the per-node format,
width, fraction width and sparsity the trial compressed with, instead of ``[compression]``); with
``search.size_budget_bytes``, the Optuna constraint ``size_budget_bytes`` (compressed size minus the
budget; ``trial.set_constraint``, Optuna 5's replacement of the samplers' ``constraints_func``),
``size_excess_bytes`` and ``feasible``. A trial whose model cannot be built is pruned (``prune_reason``); one that the study's pruner
stops early (``search.pruner``: intermediate accuracies on a fixed validation subset, reported during
the first training phase by :class:`PrunerReporter`) is pruned too, but marked ``early_stopped`` with
``early_stop`` (step, accuracy) and counts against the budget; one that raises (e.g. NaN
loss) records ``fail_reason`` and re-raises, so Optuna marks it FAIL and the study goes on (the
runner passes ``catch=(Exception,)``); Ctrl-C marks it ``interrupted``.

With a pretrained base (``[model] checkpoint``), the build step copies the checkpoint's traced graph
(traced once per process, :meth:`search.lifecycle.Lifecycle.load_pretrained`) and shrinks it with the
sampled ``[space.shrink]`` choices (user attribute ``shrink``: ``num_layers``, ``layers_kept``,
``heads`` per kept layer, ``ffn``; ``arch`` gets ``layers_kept`` and ``heads_per_layer``, and the
architecture check compares the per-layer head counts with the graph's).

Each step (build, shrink, identity, train and evaluate, compress, cost) is a method of the context's
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
from typing import Any, ClassVar, Iterator, Optional

import optuna

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph
from mase_lite.machine import machine_info
from mase_lite.training import TrainConfig, TrainState, resolve_device, resolve_precision

from .lifecycle import Lifecycle, default_lifecycle
from .space import InvalidArchitecture, SearchSpace, describe_graph, layer_indices
from .storage_retry import StorageUnavailable

log = logging.getLogger(__name__)

#: Objective names -> (direction, what they measure).
METRICS = {
    "accuracy": ("maximize", "final validation accuracy"),
    "compressed_size": ("minimize", "bytes of the final graph, quantised and sparse (cost pass)"),
    "compressed_size_non_embedding": ("minimize", "bytes of the final graph's non-embedding parameters, "
                                                  "quantised and sparse (cost pass): the layers compression acts on"),
    "exported_bytes": ("minimize", "bytes of the final graph's compact export on disk (measured)"),
    "latency_ms": ("minimize", "median ONNX Runtime batch-1 latency (ms) of the graph's deployable export (or its "
                               "simulation export when it has none), 1 thread (measured, search.latency; needs the "
                               "deploy extra)"),
    "latency_ratio": ("minimize", "latency_ms over the fp32 reference's (the unshrunk checkpoint, or the trial's "
                                  "graph before compression), timed interleaved in the same process (search.latency)"),
}

#: Measured objectives (:func:`measure_objectives`): the graph is exported for each trial.
MEASURED = ("exported_bytes", "latency_ms", "latency_ratio")
#: Measured by timing the ONNX export (:mod:`search.latency`).
LATENCY = ("latency_ms", "latency_ratio")


def exported_bytes(graph: MaseGraph) -> float:
    """Bytes on disk of ``graph``'s compact export (``passes.export``: safetensors + manifest)."""
    import tempfile

    from passes.export import export_graph

    with tempfile.TemporaryDirectory(prefix="mase-export-") as tmp:
        report = export_graph(graph, tmp)
        return float(sum(report["file_bytes"].values()))


def has_test_rows(splits: Any) -> bool:
    """Whether ``splits`` can be evaluated on a test split: False only for loaded splits whose ``test``
    is missing or empty (a lifecycle that loads no data, e.g. a fake one in tests, passes ``None``)."""
    if splits is None:
        return True
    test = getattr(splits, "test", None)
    return test is not None and len(test) > 0


def measure_objectives(graph: MaseGraph, objectives: list[str], rec: "TrialRecord",
                       reference: Optional[MaseGraph] = None, reference_key: Any = None) -> None:
    """Measure the :data:`MEASURED` objectives among ``objectives`` and record them as user attributes
    (on a CPU copy: the export and ONNX Runtime run on the CPU, whatever device trained the graph).
    ``exported_bytes`` counts the compact export (safetensors + manifest); the latency objectives time
    the ONNX file :func:`search.latency.measure_latency` exports against the fp32 ``reference``
    (exported once per process under ``reference_key``; None: each time), and record that file's
    size and kind under ``latency``."""
    if not any(o in objectives for o in MEASURED):
        return
    if any(p.device.type != "cpu" for p in graph.parameters()):
        graph = graph.copy().to("cpu")
    if "exported_bytes" in objectives:
        with rec.phase("export"):
            rec.set("exported_bytes", exported_bytes(graph))
    if any(o in objectives for o in LATENCY):
        from .latency import measure_latency

        if reference is None:
            raise MaseError("the latency objectives need an fp32 reference graph")
        with rec.phase("latency"):
            for key, value in measure_latency(graph, reference, reference_key).attrs().items():
                rec.set(key, value)


class ArchitectureMismatch(MaseError):
    """The traced graph does not have the architecture the trial sampled."""


class EarlyStopped(optuna.TrialPruned):
    """The study's pruner stopped the trial at ``step`` (intermediate accuracy ``accuracy``)."""

    def __init__(self, step: int, total_steps: int, accuracy: float):
        super().__init__(f"early-stopped by the pruner at step {step}/{total_steps} "
                         f"(intermediate accuracy {accuracy:.4f})")
        self.step, self.total_steps, self.accuracy = step, total_steps, accuracy


class OverBudget(optuna.TrialPruned):
    """The trial started or finished when the study's budget was already used (see :func:`search.storage.admitted`)."""


class PrunerReporter:
    """The training callback of a pruned study: evaluates on ``val_ds`` (a fixed validation subset),
    reports the accuracy to ``trial`` at the optimizer step, and raises :class:`EarlyStopped` when the
    pruner says so. ``reports``: ``(step, accuracy)`` so far."""

    def __init__(self, trial: optuna.Trial, val_ds: Any):
        self.trial = trial
        self.val_ds = val_ds
        self.reports: list[tuple[int, float]] = []

    def __call__(self, state: TrainState) -> None:
        acc = float(state.evaluate(self.val_ds).accuracy)
        self.reports.append((state.step, acc))
        self.trial.report(acc, state.step)
        if self.trial.should_prune():
            raise EarlyStopped(state.step, state.total_steps, acc)


def pruner_subset(splits: Any, rows: int, seed: int) -> Any:
    """A fixed, seeded subset of ``rows`` rows of ``splits.val`` (all of it when smaller; ``None``
    when there is no validation split), in row order."""
    import numpy as np

    val = getattr(splits, "val", None)
    if val is None:
        return None
    n = len(val)
    if rows >= n:
        return val
    idx = np.sort(np.random.default_rng(seed).choice(n, size=rows, replace=False))
    return val.select(idx.tolist())


# --------------------------------------------------------------------------- cost


def compressed_size(cost: dict[str, Any], part: str | None = None) -> float:
    """Bytes of the graph with its quantisation and sparsity applied (the cost pass's
    ``size_bytes_compressed``; ``part = "non_embedding"``: ``size_bytes_compressed_non_embedding``)."""
    key = "size_bytes_compressed" + (f"_{part}" if part else "")
    if key not in cost:
        raise MaseError(f"the cost figures have no {key} (keys: {sorted(cost)})")
    return float(cost[key])


#: The cost pass's sparsity figures recorded per trial (``sparsity`` user attribute), of the
#: non-embedding parameters (the linear layers the compression acts on): the fraction pruned, the
#: fraction the mask keeps but the format rounds to zero (of all, and of the kept ones), and the
#: effective sparsity (every zero).
SPARSITY_KEYS = ("pruned_fraction", "rounding_zero_fraction", "rounding_zero_fraction_of_kept", "effective_sparsity")


def sparsity_attrs(cost: dict[str, Any]) -> dict[str, float]:
    """:data:`SPARSITY_KEYS` of the cost figures: their ``_non_embedding`` values where the cost pass
    splits them, else the totals (only those present)."""
    out = {}
    for k in SPARSITY_KEYS:
        v = cost.get(f"{k}_non_embedding", cost.get(k))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


# --------------------------------------------------------------------------- recording


class TrialRecord:
    """Collects the user attributes of one trial and times its phases; :meth:`flush` writes them
    (each attribute is a storage transaction, so they are written at a few points, not one by one)."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.attrs: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.accuracy = float("nan")
        #: The objective values once computed (a result to keep if the storage fails before it is stored).
        self.values: list[float] | None = None
        self._written: dict[str, Any] = {}
        #: The trial's own compression pipeline (sampled per-node choices), else None: the study's.
        self.pipeline: dict[str, Any] | None = None
        #: A pruned study's reporter and when its training started (an early stop records both).
        self.reporter: Optional[PrunerReporter] = None
        self.t_train: Optional[float] = None

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
    #: ``search.size_budget_bytes``: trials whose compressed size exceeds it are infeasible.
    size_budget_bytes: float | None = None
    #: ``search.reuse_trained``: train each (architecture, seed, recipe) once per process.
    reuse_trained: bool = False
    #: Pruning: report every ``eval_every`` steps (0: no reports) on ``pruner_val``.
    eval_every: int = 0
    pruner_val: Any = None
    #: The study's budget: a trial goes on only while :func:`search.storage.admitted` (None: no check).
    n_trials: int | None = None
    #: Reuse the result of an earlier complete trial with the same parameters instead of training.
    reuse_duplicates: bool = False
    #: Where the best graphs are uploaded (an Optuna artifact store; None: only the local ``graph_dir``).
    artifacts: Any = None
    #: Held-out evaluation on ``splits.test`` (:data:`TEST_EVAL`): ``none``, ``best`` or ``all``.
    test_eval: str = "none"


#: ``ObjectiveContext.test_eval`` choices: no test evaluation; the final graph of trials that are best
#: (or tied, or on the Pareto front) so far (live search); every stage of every trial (tables).
TEST_EVAL = ("none", "best", "all")


class BaseObjective(abc.ABC):
    """One trial: sample, build, train, then :meth:`run_variant`; returns the study's objective values."""

    variant: ClassVar[str]
    #: Whether the variant trains a second time with ``ctx.finetune`` (its dropout setting then counts).
    finetunes: ClassVar[bool] = False

    def __init__(self, ctx: ObjectiveContext):
        self.ctx = ctx
        #: ``reuse_trained``: trained graphs by what determines them -> (trial number, graph, metrics).
        self._trained: dict[str, tuple[int, MaseGraph, dict[str, Any]]] = {}

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        rec = TrialRecord(trial)
        rec.set("worker", worker_id())
        train = self.ctx.train
        device = resolve_device(train.device)
        rec.set("machine", machine_info(resolve_precision(train.precision, device), train.num_threads, device))
        rec.flush()  # first: it tells a later run whether this trial's process is gone
        t_start = time.perf_counter()
        self._check_budget(trial, rec)
        try:
            return self._run(trial, rec, t_start)
        except OverBudget:
            raise
        except StorageUnavailable as exc:  # the runner keeps a finished result (search.pending)
            exc.record = rec
            raise
        except InvalidArchitecture as exc:
            rec.set("prune_reason", str(exc))
            rec.flush()
            log.info("trial %d pruned: %s", trial.number, exc)
            raise
        except EarlyStopped as exc:
            self._early_stopped(trial, rec, exc, t_start)
            raise
        except KeyboardInterrupt:
            rec.set("interrupted", True)
            rec.set("fail_reason", "interrupted (KeyboardInterrupt)")
            rec.flush()
            raise
        except Exception as exc:
            self._failed(trial, rec, exc, t_start)
            raise

    def _run(self, trial: optuna.Trial, rec: TrialRecord, t_start: float) -> float | list[float]:
        """The trial's steps: build, train, the variant, cost and measured objectives, save."""
        graph = self.build(trial, rec)
        rec.flush()
        if self.ctx.reuse_duplicates:
            reused = self._reuse(trial, rec, t_start)
            if reused is not None:
                return reused
        graph, metrics = self._train_phase(graph, trial, rec)
        self._record_eval(rec, "trained", metrics)
        self._record_test(graph, rec, "trained")
        reference = self._latency_reference(graph)  # before the variant compresses graph (in place)
        graph = self.run_variant(graph, rec)
        with rec.phase("cost"):
            cost = self.ctx.lifecycle.cost(graph)
        rec.set("cost", cost)
        measure_objectives(graph, self.ctx.objectives, rec, *reference)
        sparsity = sparsity_attrs(cost)
        if sparsity:
            rec.set("sparsity", sparsity)
        values = rec.values = self._values(rec, cost)
        feasible = self._constrain(trial, rec, cost)
        if self.ctx.test_eval == "best" and feasible and _improves(trial, values, ties=True):
            self._record_test(graph, rec, None)
        self._check_budget(trial, rec)  # the final guard: see search.budget
        if self.ctx.graph_dir is not None and feasible and _improves(trial, values):
            self._save(trial, rec, graph)
        rec.add_timing("total", time.perf_counter() - t_start)
        rec.flush()
        log.info("trial %d: accuracy %.4f, %s", trial.number, rec.accuracy, rec.attrs.get("arch"))
        return values[0] if len(values) == 1 else values

    def _train_phase(self, graph: MaseGraph, trial: optuna.Trial, rec: TrialRecord) -> tuple[MaseGraph, dict[str, Any]]:
        """Train and evaluate; in a pruned study with a :class:`PrunerReporter` (kept on ``rec``)."""
        if not self.ctx.eval_every:
            return self._train(graph, self.ctx.train, rec)
        rec.reporter = PrunerReporter(trial, self.ctx.pruner_val)
        cfg = self.ctx.train.replace(eval_every=self.ctx.eval_every)
        rec.t_train = time.perf_counter()
        return graph, self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, cfg, callback=rec.reporter)

    def _save(self, trial: optuna.Trial, rec: TrialRecord, graph: MaseGraph) -> None:
        with rec.phase("save"):
            path = self.ctx.graph_dir / f"trial-{trial.number:05d}"
            graph.save(path)
            if self.ctx.artifacts is not None:
                from .artifacts import upload_graph

                rec.set("graph_artifact", upload_graph(self.ctx.artifacts, path, trial))
        rec.set("graph_dir", str(path))

    def _early_stopped(self, trial: optuna.Trial, rec: TrialRecord, exc: EarlyStopped, t_start: float) -> None:
        self._check_budget(trial, rec)
        reporter = rec.reporter
        rec.set("early_stopped", True)
        rec.set("early_stop", {"step": exc.step, "total_steps": exc.total_steps, "accuracy": exc.accuracy,
                               "reports": [list(r) for r in (reporter.reports if reporter else [])]})
        rec.set("early_stop_reason", str(exc))
        rec.add_timing("train", time.perf_counter() - (rec.t_train or t_start))
        rec.add_timing("total", time.perf_counter() - t_start)
        rec.flush()
        log.info("trial %d %s", trial.number, exc)

    def _failed(self, trial: optuna.Trial, rec: TrialRecord, exc: Exception, t_start: float) -> None:
        self._check_budget(trial, rec)  # a failure counts only within the budget
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        rec.set("fail_reason", reason[:1000])
        rec.add_timing("total", time.perf_counter() - t_start)
        rec.flush()
        log.warning("trial %d failed: %s", trial.number, reason)
        log.debug("trial %d traceback", trial.number, exc_info=True)

    # -- budget and duplicates
    def _check_budget(self, trial: optuna.Trial, rec: TrialRecord) -> None:
        """Raise :class:`OverBudget` (pruned, not counted) unless :func:`search.storage.admitted`;
        a queued configuration (grid point, retry) is queued again."""
        from . import optuna_compat as compat
        from .budget import admitted
        from .queue import requeue_over_budget

        if self.ctx.n_trials is None or admitted(trial.study, trial.number, self.ctx.n_trials):
            return
        reason = f"over budget: n_trials = {self.ctx.n_trials} trials were already counted or running"
        rec.set("over_budget", True)
        rec.set("prune_reason", reason)
        rec.flush()
        requeue_over_budget(trial.study, compat.storage_of(trial.study).get_trial(compat.trial_id_of(trial)))
        log.info("trial %d dropped: %s", trial.number, reason)
        raise OverBudget(reason)

    def _reuse(self, trial: optuna.Trial, rec: TrialRecord, t_start: float) -> float | list[float] | None:
        """The values of the earliest complete trial with the same parameters (the study's other
        settings are fixed, and trials train with the study's seeds, so training again would give
        the same result), its results copied and marked ``reused_from``; None when there is none."""
        same = [t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.params == trial.params and t.number != trial.number and t.values]
        if not same:
            return None
        first = min(same, key=lambda t: t.number)  # never itself reused: that one's original is earlier
        self._check_budget(trial, rec)
        for key, value in first.user_attrs.items():
            if key.startswith(("accuracy", "loss", "train_loss", "test_")) or key in ("cost", "early_stop", "latency", *MEASURED):
                rec.set(key, value)
            elif key in ("sparsity", "compression_choices"):
                rec.set(key, value)
        if "cost" in rec.attrs:  # the size budget applies to a reused result too
            self._constrain(trial, rec, rec.attrs["cost"])
        rec.set("reused_from", first.number)
        rec.add_timing("total", time.perf_counter() - t_start)
        rec.flush()
        log.info("trial %d: same configuration as trial %d, its result reused", trial.number, first.number)
        values = list(first.values)
        return values[0] if len(values) == 1 else values

    def _train(self, graph: MaseGraph, train: TrainConfig, rec: TrialRecord) -> tuple[MaseGraph, dict[str, Any]]:
        """Train and evaluate ``graph``; with ``reuse_trained``, a graph whose architecture, identity
        choices, seed and recipe were already trained in this process is not trained again: a copy of
        the trained graph and its metrics are used (``trained_reused_from``). Training is seeded, so
        this only saves time -- e.g. when a study varies per-node compression choices only."""
        if not self.ctx.reuse_trained:
            return graph, self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, train)
        import json

        key = json.dumps([rec.attrs.get("arch"), self.ctx.seed, train.to_dict()], sort_keys=True, default=str)
        hit = self._trained.get(key)
        if hit is not None:
            number, trained, metrics = hit
            rec.set("trained_reused_from", number)
            return trained.copy(), {k: v for k, v in metrics.items() if k not in ("train_s", "training")}
        metrics = self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, train)
        self._trained[key] = (rec.trial.number, graph.copy(), dict(metrics))
        while len(self._trained) > 2:  # a few small models at most
            self._trained.pop(next(iter(self._trained)))
        return graph, metrics

    # -- shared phases
    def build(self, trial: optuna.Trial, rec: TrialRecord) -> MaseGraph:
        """Sample the architecture, build and trace it (or copy the traced pretrained base and shrink
        it), apply identity choices, check the result."""
        space = self.ctx.space
        if space.pretrained is not None:
            graph, arch = self._build_pretrained(trial, rec)
        else:
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
        if space.compression is not None:  # per-node formats, widths and sparsities (mixed precision)
            choices = space.compression.suggest(trial, graph)
            rec.set("compression_choices", choices)
            rec.pipeline = space.compression.pipeline(choices)
        arch = {**arch, "identity": identity, "n_identity": len(identity)}
        rec.set("arch", arch)
        check_architecture(graph, arch)
        return graph

    def _build_pretrained(self, trial: optuna.Trial, rec: TrialRecord) -> tuple[MaseGraph, dict[str, Any]]:
        """A copy of the traced pretrained base (traced once per process), shrunk by the sampled
        ``[space.shrink]`` choices (recorded as ``shrink`` and in ``arch``: layers kept, per-layer
        heads, FFN width)."""
        space = self.ctx.space
        base = space.pretrained
        arch = base.arch()
        with rec.phase("build"):
            graph = self.ctx.lifecycle.load_pretrained(base.checkpoint, base.num_labels, base.pooling, self.ctx.seed)
        rec.set("arch", arch)
        if space.shrink is not None:
            with rec.phase("shrink"):
                graph, choices = space.shrink.suggest(trial, graph, self.ctx.lifecycle)
            rec.set("shrink", choices)
            heads = set(choices["heads"].values())
            arch = {**arch, "num_hidden_layers": choices["num_layers"], "layers_kept": choices["layers_kept"],
                    "num_attention_heads": next(iter(heads)) if len(heads) == 1 else sorted(heads),
                    "heads_per_layer": dict(choices["heads"]), "intermediate_size": choices["ffn"]}
            rec.set("arch", arch)
        return graph, arch

    def _latency_reference(self, trained: MaseGraph) -> tuple[Optional[MaseGraph], Any]:
        """The fp32 graph the latency objectives are a ratio to, and the key it is exported once under:
        the pretrained base, unshrunk (once per process), else a copy of ``trained`` (the trial's graph
        before compression; each trial). ``(None, None)`` when no latency objective is measured."""
        if not any(o in self.ctx.objectives for o in LATENCY):
            return None, None
        base = self.ctx.space.pretrained
        if base is None:
            return trained.copy(), None
        key = ("pretrained", str(base.checkpoint), base.num_labels, base.pooling, self.ctx.seed)
        return self.ctx.lifecycle.load_pretrained(base.checkpoint, base.num_labels, base.pooling, self.ctx.seed), key

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

    def _record_test(self, graph: MaseGraph, rec: TrialRecord, stage: str | None) -> None:
        """Evaluate ``graph`` on the test split (never an objective): after ``stage`` when ``test_eval`` is
        ``all``; the final graph (``stage`` None) as ``test_accuracy``, ``test_loss``, ``test_n``."""
        if self.ctx.test_eval == "none" or (stage is not None and self.ctx.test_eval != "all"):
            return
        if not has_test_rows(self.ctx.splits):  # data loaded without a test split: nothing held out to score
            return
        with rec.phase("eval_test"):
            m = self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, self.ctx.train, train=False, split="test")
        suffix = f"_{stage}" if stage else ""
        rec.set(f"test_accuracy{suffix}", m["accuracy"])
        rec.set(f"test_loss{suffix}", m["loss"])
        if m.get("n") is not None:
            rec.set("test_n", int(m["n"]))

    def _values(self, rec: TrialRecord, cost: dict[str, Any]) -> list[float]:
        out = []
        for name in self.ctx.objectives:
            if name == "accuracy":
                out.append(float(rec.accuracy))
            elif name == "compressed_size":
                out.append(compressed_size(cost))
            elif name == "compressed_size_non_embedding":
                out.append(compressed_size(cost, "non_embedding"))
            elif name in MEASURED and name in rec.attrs:
                out.append(float(rec.attrs[name]))
            else:  # validated by the run config
                raise MaseError(f"unknown objective {name!r}")
        for name, v in zip(self.ctx.objectives, out):
            if not math.isfinite(v):
                raise MaseError(f"objective {name} is {v}")
        return out

    def _constrain(self, trial: optuna.Trial, rec: TrialRecord, cost: dict[str, Any]) -> bool:
        """Under ``size_budget_bytes``: set the trial's Optuna constraint ``size_budget_bytes`` to
        ``compressed size - budget`` (feasible when <= 0; TPE and NSGA-II sample with it, and Optuna's
        best trials are the feasible ones) and record ``feasible``. Returns whether it is feasible."""
        budget = self.ctx.size_budget_bytes
        if budget is None:
            return True
        excess = compressed_size(cost) - float(budget)
        rec.set("size_excess_bytes", excess)  # first: a result kept through a storage outage has it
        rec.set("feasible", excess <= 0)
        trial.set_constraint("size_budget_bytes", excess)
        return excess <= 0

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
            graph = self.ctx.lifecycle.compress(graph, rec.pipeline or self.ctx.compression, self.ctx.splits)
        metrics = self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, self.ctx.train, train=False)
        self._record_eval(rec, "compressed", metrics)
        self._record_test(graph, rec, "compressed")
        return graph


class CompressFinetuneObjective(CompressObjective):
    """Train, compress, fine-tune one more epoch, evaluate (the accuracy before fine-tuning is kept)."""

    variant = "compress_finetune"
    finetunes = True

    def run_variant(self, graph: MaseGraph, rec: TrialRecord) -> MaseGraph:
        graph = super().run_variant(graph, rec)
        metrics = self.ctx.lifecycle.train_and_eval(graph, self.ctx.splits, self.ctx.finetune)
        self._record_eval(rec, "finetuned", metrics)
        self._record_test(graph, rec, "finetuned")
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
    if arch.get("heads_per_layer") is not None:  # per-layer head counts (a shrunk pretrained base)
        per_layer = {str(k): v for k, v in (seen.get("heads_per_layer") or {}).items()}
        want = {str(k): int(v) for k, v in arch["heads_per_layer"].items()}
        if per_layer != want:
            diff = sorted(set(want) | set(per_layer), key=int)
            wrong.append("heads per layer: " + ", ".join(
                f"layer {k} sampled {want.get(k, '-')}, graph has {per_layer.get(k, '-')}"
                for k in diff if want.get(k) != per_layer.get(k)))
    if arch.get("layers_kept") is not None:
        kept = layer_indices(graph)
        if kept != list(arch["layers_kept"]):
            wrong.append(f"layers kept: sampled {list(arch['layers_kept'])}, graph has {kept}")
    left = [p for p in arch.get("identity", []) if p in seen["linear_paths"]]
    if left:
        wrong.append(f"linear nodes still present after identity replacement: {left}")
    if wrong:
        raise ArchitectureMismatch("the graph does not have the sampled architecture: " + "; ".join(wrong))
    return seen


def _improves(trial: optuna.Trial, values: list[float], ties: bool = False) -> bool:
    """Whether ``values`` would be the study's best (single objective; with ``ties``, best or tied for
    best) or on its Pareto front (several)."""
    study = trial.study
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    directions = study.directions
    sign = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in directions]
    mine = [s * v for s, v in zip(sign, values)]
    for t in done:
        if t.values is None or any(c > 0 for c in t.constraints.values()):  # infeasible trials never win
            continue
        other = [s * v for s, v in zip(sign, t.values)]
        if len(values) == 1:
            if other[0] < mine[0] or (other[0] == mine[0] and not ties):
                return False
        elif all(o <= m for o, m in zip(other, mine)) and any(o < m for o, m in zip(other, mine)):
            return False
    return True
