"""One experiment lifecycle: build or load a model, check it against the data, train, compress,
fine-tune, evaluate, measure.

Search trials (:mod:`search.objectives`), compress-after-NAS (:mod:`search.study`), benchmark
tables (:mod:`search.bench.build`) and the commands that build, load, train, compress or evaluate
a model (``train``, ``eval``, ``transform``, ``report``, ``export``) go through a :class:`Lifecycle`,
so every place builds, checks, trains and evaluates a model the same way. What trains and
evaluates is a :class:`Trainer` (default: :class:`RecipeTrainer`, mase-lite's recipe); tests pass a
fake one (``Lifecycle(trainer=...)``) instead of patching functions. A lifecycle holds no data:
every step that needs the splits is given them.

It runs passes, so it sits above ``passes`` (``mase_lite`` <- ``passes`` <- ``search``).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from torch import nn

from mase_lite.graph import MaseGraph, trace
from mase_lite.models import ModelConfig, build_model, example_inputs
from mase_lite.training import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["Lifecycle", "RecipeTrainer", "Trainer", "default_lifecycle", "set_default_lifecycle"]


class Trainer(abc.ABC):
    """How a graph is trained and scored.

    Contract of :meth:`train_and_eval`: train ``graph`` in place with the recipe ``cfg`` on
    ``splits.train`` unless ``train`` is False (``callback`` as for :func:`mase_lite.training.train`;
    a fake may ignore it), then evaluate it on the split named ``split`` (default ``val``; ``None``:
    no evaluation) with ``cfg``'s precision, batch size, threads and device (the graph is moved there). Return ``accuracy``, ``loss``,
    ``n`` and ``eval_s`` when it evaluated, plus ``train_s``, ``train_loss`` and ``training`` (the
    :class:`~mase_lite.training.TrainResult` as a dict) when it trained. Raise (e.g.
    :class:`mase_lite.training.TrainingDivergedError`) when training fails.
    """

    @abc.abstractmethod
    def train_and_eval(self, graph: MaseGraph, splits: Any, cfg: TrainConfig, train: bool = True, *,
                       split: str | None = "val", callback: Any = None) -> dict[str, Any]:
        """Train (optionally), then evaluate on ``split``; see the class docstring."""

    def evaluate(self, graph: MaseGraph, splits: Any, cfg: TrainConfig, split: str = "val", *,
                 progress: bool = False) -> dict[str, Any]:
        """Evaluate only: :meth:`train_and_eval` with ``train=False`` (``progress``: a bar, where drawn)."""
        return self.train_and_eval(graph, splits, cfg, train=False, split=split)


class RecipeTrainer(Trainer):
    """:func:`mase_lite.training.train` then :func:`mase_lite.training.evaluate`."""

    def train_and_eval(self, graph: MaseGraph, splits: Any, cfg: TrainConfig, train: bool = True, *,
                       split: str | None = "val", callback: Any = None) -> dict[str, Any]:
        from mase_lite.training import train as run_training

        out: dict[str, Any] = {}
        eval_ds = _split(splits, split) if split else None  # an empty split: an error before training
        if train:
            t0 = time.perf_counter()
            res = run_training(graph, splits.train, cfg, eval_ds=eval_ds, callback=callback,
                               pad_id=getattr(splits, "pad_id", 0))
            out["train_s"] = time.perf_counter() - t0
            out["train_loss"] = float(res.final_loss)
            out["training"] = dataclasses.asdict(res)
        if eval_ds is not None:
            out.update(self.evaluate(graph, splits, cfg, split))
        return out

    def evaluate(self, graph: MaseGraph, splits: Any, cfg: TrainConfig, split: str = "val", *,
                 progress: bool = False) -> dict[str, Any]:
        """:func:`mase_lite.training.evaluate` on ``splits.<split>`` (with its progress bar if ``progress``)."""
        from mase_lite.training import evaluate

        ds = _split(splits, split)
        t0 = time.perf_counter()
        ev = evaluate(graph, ds, batch_size=cfg.eval_batch_size, precision=cfg.precision, num_threads=cfg.num_threads,
                      pad_id=getattr(splits, "pad_id", 0), progress=progress, device=cfg.device)
        return {"eval_s": time.perf_counter() - t0, "accuracy": float(ev.accuracy), "loss": float(ev.loss), "n": ev.n}


def _split(splits: Any, split: str) -> Any:
    """``splits.<split>``; ConfigError when it has no rows."""
    from mase_lite.errors import ConfigError

    ds = getattr(splits, split)
    if ds is not None and len(ds) == 0:
        raise ConfigError(f"the {split} split is empty; give it rows (data.n_{split})")
    return ds


@dataclasses.dataclass
class Lifecycle:
    """The steps of an experiment, each a method; ``trainer`` trains and evaluates.

    ``attn_implementation``: how built models trace attention (``eager``: explicit matmuls and
    softmax; the training recipe runs bf16 where the CPU supports it, and HF's ``sdpa`` attention
    has a slow bf16 backward on CPU, about 3x slower trials on tiny BERTs); ``None``: the model's own
    (the commands build what the user's config says).
    """

    trainer: Trainer = dataclasses.field(default_factory=RecipeTrainer)
    attn_implementation: str | None = "eager"
    #: :meth:`load_pretrained`'s traced checkpoints (a cache: fresh copies are handed out).
    _pretrained: dict[tuple, MaseGraph] = dataclasses.field(default_factory=dict, init=False, repr=False,
                                                            compare=False)

    # -- model
    def model(self, config: ModelConfig) -> nn.Module:
        """A freshly initialised (``config.seed``) model with this lifecycle's attention, in eval mode."""
        if self.attn_implementation:
            config = config.replace(attn_implementation=self.attn_implementation)
        return build_model(config).eval()

    def checkpoint(self, checkpoint: str | Path, num_labels: int | None = None,
                   pooling: str | None = None) -> nn.Module:
        """Checkpoint ``checkpoint`` (a directory or ``package:NAME``, :func:`mase_lite.models.load_checkpoint`)
        with head ``pooling`` and this lifecycle's attention, in eval mode; a new head is initialised
        from torch's global random state."""
        from mase_lite.models import load_checkpoint

        model = load_checkpoint(checkpoint, num_labels, pooling)
        if self.attn_implementation:
            model.set_attn_implementation(self.attn_implementation)
        return model.eval()

    def trace(self, model: nn.Module) -> MaseGraph:
        """``model`` (in eval mode) traced into a MaseGraph."""
        return trace(model.eval(), example_inputs(model))

    def build(self, config: ModelConfig) -> MaseGraph:
        """A freshly initialised (``config.seed``) model traced into a MaseGraph."""
        return self.trace(self.model(config))

    def load(self, path: str | Path) -> MaseGraph:
        """A saved graph (:meth:`MaseGraph.load`)."""
        return MaseGraph.load(path)

    def load_pretrained(self, checkpoint: str | Path, num_labels: int | None = None, pooling: str | None = None,
                        seed: int = 0) -> MaseGraph:
        """Checkpoint ``checkpoint`` (a directory or ``package:NAME``, :func:`mase_lite.models.load_checkpoint`)
        with head ``pooling``, traced; its new classification head is initialised with ``seed``.

        Traced once per process and lifecycle for each (checkpoint, num_labels, pooling, seed,
        attention): later calls get a fresh copy of the traced graph."""
        from mase_lite.models import resolve_checkpoint

        path = resolve_checkpoint(checkpoint, "model.checkpoint")
        key = (str(path.resolve()), num_labels, pooling, seed, self.attn_implementation)
        if key not in self._pretrained:
            state = torch.random.get_rng_state()
            try:
                torch.manual_seed(seed)  # the classification head is not in the checkpoint
                model = self.checkpoint(path, num_labels, pooling)
            finally:
                torch.random.set_rng_state(state)
            self._pretrained[key] = self.trace(model)
            log.info("traced checkpoint %s (pooling %s)", path, pooling or "pooler")
        return self._pretrained[key].copy()

    def shrink(self, graph: MaseGraph, pass_name: str, config: dict[str, Any]) -> MaseGraph:
        """Run the structured-shrinking pass ``pass_name`` (``shrink_layers``, ``prune_heads``,
        ``prune_ffn``; :mod:`passes.transforms.shrink`) with ``config`` on ``graph``."""
        from passes import run_pass

        graph, _ = run_pass(graph, pass_name, config)
        return graph

    # -- data
    def load_data(self, data_cfg: Any, model: Any, splits: Sequence[str] = ("train", "val", "test")) -> Any:
        """The splits for ``model`` (a module, graph or config), checked against it first.

        The tokenizer is :meth:`tokenizer_config`'s choice; a decoder's pad token is settled against
        ``model`` (:func:`mase_lite.data.resolve_pad_token`). A run's ``[model]`` with a ``checkpoint``
        stands for that checkpoint (:meth:`load_pretrained`): its tokenizer files are the default."""
        from mase_lite.data import load_checked_splits

        if getattr(model, "checkpoint", None) and isinstance(model, ModelConfig):  # a run's pretrained base
            model = self.load_pretrained(model.checkpoint, model.num_labels, model.pooling)
        return load_checked_splits(self.tokenizer_config(data_cfg, model), model, splits)

    def tokenizer_config(self, data_cfg: Any, model: Any) -> Any:
        """``data_cfg`` with its tokenizer chosen: ``data.tokenizer`` if set, else ``model``'s checkpoint
        directory when it ships tokenizer files, else bert-base-uncased (:func:`mase_lite.data.resolve_tokenizer`)."""
        from mase_lite.data import resolve_tokenizer

        return resolve_tokenizer(data_cfg, model)

    # -- training
    def train_and_eval(self, graph: MaseGraph, splits: Any, cfg: TrainConfig, train: bool = True, *,
                       split: str | None = "val", callback: Any = None) -> dict[str, Any]:
        """The trainer's :meth:`Trainer.train_and_eval`."""
        return self.trainer.train_and_eval(graph, splits, cfg, train, split=split, callback=callback)

    def evaluate(self, graph: MaseGraph, splits: Any, cfg: TrainConfig, split: str = "val", *,
                 progress: bool = False) -> dict[str, Any]:
        """The trainer's :meth:`Trainer.evaluate`: ``accuracy``, ``loss``, ``n`` and ``eval_s`` of
        ``graph`` on ``splits.<split>`` with ``cfg``'s batch size, precision, threads and device."""
        return self.trainer.evaluate(graph, splits, cfg, split, progress=progress)

    # -- passes
    def identity(self, graph: MaseGraph, module_paths: Sequence[str]) -> MaseGraph:
        """Replace the linear nodes of ``module_paths`` with identities."""
        if not module_paths:
            return graph
        from passes import run_pass

        graph, _ = run_pass(graph, "replace_linear_with_identity", {"module_paths": list(module_paths)})
        return graph

    def compress(self, graph: MaseGraph, pipeline: dict[str, Any], splits: Any = None, *,
                 calibration_batches: int = 8, seed: int = 0) -> MaseGraph:
        """Run the compression pipeline (``{"passes": ...}``) on ``graph``, in place: the returned graph
        is ``graph``, changed (pass ``graph.copy()`` to keep the original). When it needs calibrated
        ranges (integer ``"auto"`` or scaled-integer activations), ``calibrate`` runs first on
        ``calibration_batches`` seeded batches of ``splits.train`` (without ``splits``: one
        ConfigError); see :func:`passes.analysis.calibrate.with_calibration`."""
        return self.compress_with_info(graph, pipeline, splits, calibration_batches=calibration_batches, seed=seed)[0]

    def compress_with_info(self, graph: MaseGraph, pipeline: dict[str, Any], splits: Any = None, *,
                           calibration_batches: int = 8, seed: int = 0) -> tuple[MaseGraph, dict[str, Any]]:
        """:meth:`compress`, also returning each pass's info (:func:`passes.run_pipeline`)."""
        from passes import run_pipeline
        from passes.analysis.calibrate import with_calibration

        pipeline, context = with_calibration(graph, pipeline, splits, num_batches=calibration_batches, seed=seed)
        return run_pipeline(graph, pipeline, context=context)

    def cost(self, graph: MaseGraph) -> dict[str, Any]:
        """The ``cost`` pass's scalar totals for ``graph``."""
        info = self.cost_report(graph)
        return {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def cost_report(self, graph: MaseGraph, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``cost`` pass's whole info for ``graph`` (totals, ``nodes``, ``table``) with ``config``."""
        from passes import run_pass

        _, info = run_pass(graph, "cost", dict(config or {}))
        return info


_DEFAULT: Lifecycle | None = None


def default_lifecycle() -> Lifecycle:
    """The lifecycle used when none is given: the one set by :func:`set_default_lifecycle`, else
    ``Lifecycle()`` (mase-lite's training recipe)."""
    return _DEFAULT if _DEFAULT is not None else Lifecycle()


def set_default_lifecycle(lifecycle: Lifecycle | None) -> Lifecycle | None:
    """Make ``lifecycle`` the default (``None``: back to ``Lifecycle()``) for code that is given none,
    such as the CLI commands; returns the previous one. Tests pass fakes in this way."""
    global _DEFAULT
    previous, _DEFAULT = _DEFAULT, lifecycle
    return previous
