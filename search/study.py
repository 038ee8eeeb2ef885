"""Running a search: the run config (TOML), its studies in Optuna RDB storage, resume, summary.

A run config has the tables ``[search]``, ``[space]``, ``[model]`` (fixed model fields), ``[data]``,
``[train]``, ``[finetune]`` (overrides of ``[train]`` for the fine-tuning epoch) and
``[compression]`` (a pass pipeline, ``[compression.passes.<name>]``; default: Lab 2's).

One run is several studies, one per sampler x variant x seed, all in one storage (default: the
SQLite file ``<run dir>/optuna.db``; ``--storage`` takes any Optuna RDB URL so several processes
can share the work). A study is named ``<name>[-<sampler>][-<variant>][-s<seed>]``, each part
present when its list has more than one entry; its user attributes record the run, the curve
label (the name without the seed), the sampler, variant, seed, objectives and a fingerprint of
everything that gives its trials their meaning (space, data, training, compression...). Opening an
existing study with a different fingerprint is an error naming the first difference.

Budget: ``n_trials`` counts the trials that trained (complete or failed), not pruned ones (an
unbuildable architecture costs nothing) nor interrupted ones. An interrupted trial -- its worker
process on this host is gone (checked when a run starts or resumes), its heartbeat went stale (a
worker on another host; Optuna's heartbeat, checked before each trial), or Ctrl-C -- is failed
and marked ``interrupted``, and its configuration is queued again once (a trial with user
attribute ``retry_of``, on the same grid point for grid), so ``--resume`` repeats only that trial
and loses no completed one.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from mase_lite.config import Config, check_choice, check_range, load_toml
from mase_lite.data import DataConfig
from mase_lite.errors import ConfigError, MaseError
from mase_lite.models import ModelConfig
from mase_lite.training import TrainConfig

from .objectives import METRICS, OBJECTIVES, ObjectiveContext
from .samplers import SamplerOptions, make_sampler, parse_sampler
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

#: Training fields that do not change results (left out of the fingerprint).
_NEUTRAL_TRAIN_FIELDS = ("progress", "num_threads", "log_every")
FINGERPRINT_VERSION = 1


class SearchError(MaseError):
    """A search cannot start or continue (storage, existing studies, resume)."""


# --------------------------------------------------------------------------- config


@dataclasses.dataclass
class SearchSection(Config):
    """The ``[search]`` table.

    ``samplers``: ``grid``, ``random``, ``tpe``, ``nsga2``, optionally with ``+nodes`` (per-node
    identity choices; not for grid). ``variants``: ``baseline``, ``compress``, ``compress_finetune``.
    ``objectives``: default ``["accuracy"]``, and ``["accuracy", "compressed_size"]`` for nsga2.
    ``n_trials``: trials that train per study (default: the grid's size for grid, else 20).
    ``storage``: an Optuna RDB URL (default: ``sqlite:///<run dir>/optuna.db``).
    ``gc_after_trial``: run the garbage collector after each trial (frees big models' memory at once;
    about 0.3 s a trial).
    """

    name: str = "search"
    samplers: list[str] = dataclasses.field(default_factory=lambda: ["tpe"])
    variants: list[str] = dataclasses.field(default_factory=lambda: ["baseline"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    n_trials: int | None = None
    objectives: list[str] | None = None
    storage: str | None = None
    save_graphs: bool = True
    max_failures_in_a_row: int = 5
    heartbeat_interval: int = 60
    gc_after_trial: bool = True
    sampler_options: SamplerOptions = dataclasses.field(default_factory=SamplerOptions)

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
        if self.n_trials is not None:
            check_range(f"{p}n_trials", self.n_trials, 1)
        check_range(f"{p}max_failures_in_a_row", self.max_failures_in_a_row, 0)
        check_range(f"{p}heartbeat_interval", self.heartbeat_interval, 1)

    def objectives_for(self, sampler: str) -> list[str]:
        if self.objectives is not None:
            return list(self.objectives)
        return ["accuracy", "compressed_size"] if sampler == "nsga2" else ["accuracy"]


@dataclasses.dataclass
class RunConfig(Config):
    """A whole search run (see the module docstring)."""

    search: SearchSection = dataclasses.field(default_factory=SearchSection)
    space: SpaceConfig = dataclasses.field(default_factory=SpaceConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    finetune: dict[str, Any] = dataclasses.field(default_factory=dict)
    compression: dict[str, Any] = dataclasses.field(default_factory=lambda: copy.deepcopy(DEFAULT_COMPRESSION))

    @classmethod
    def from_dict(cls, data, path: str = ""):  # type: ignore[override]
        model = (data or {}).get("model") or {}
        fixed = [k for k in MODEL_PARAMS if k in model]
        if fixed:
            raise ConfigError(f"model.{fixed[0]} is searched: set it in [space] as a list (e.g. {fixed[0]} = [{model[fixed[0]]}])")
        if "seed" in model:
            raise ConfigError("model.seed is set per study from search.seeds; remove it from [model]")
        return super().from_dict(data, path)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["model"] = {k: v for k, v in d["model"].items() if k not in (*MODEL_PARAMS, "seed")}
        return d

    def validate(self, path: str = "") -> None:
        self.finetune_config()
        if self.data.max_length > self.model.max_position_embeddings:
            raise ConfigError(
                f"data.max_length = {self.data.max_length} exceeds model.max_position_embeddings = "
                f"{self.model.max_position_embeddings}"
            )
        if self.data.num_labels != self.model.num_labels:
            raise ConfigError(f"data.num_labels = {self.data.num_labels} but model.num_labels = {self.model.num_labels}")
        if any(v in ("compress", "compress_finetune") for v in self.search.variants) or any(
            o == "compressed_size" for s in self.search.samplers for o in self.search.objectives_for(parse_sampler(s)[0])
        ):
            from passes import parse_pipeline

            parse_pipeline(self.compression)

    def finetune_config(self) -> TrainConfig:
        """``[train]`` with ``[finetune]``'s fields on top (one epoch unless it says otherwise)."""
        return TrainConfig.from_dict({**self.train.to_dict(), "epochs": 1, **self.finetune}, path="finetune")


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
    train = {k: v for k, v in cfg.train.to_dict().items() if k not in _NEUTRAL_TRAIN_FIELDS}
    d: dict[str, Any] = {  # in the order differences are reported
        "version": FINGERPRINT_VERSION,
        "space": space.to_dict(),
        "sampler": spec.sampler,
        "variant": spec.variant,
        "objectives": spec.objectives,
        "seed": spec.seed,
        "sampler_options": cfg.search.sampler_options.to_dict(),
        "data": {k: v for k, v in cfg.data.to_dict().items() if k not in ("data_dir", "cache_dir")},
        "train": train,
    }
    if spec.variant != "baseline" or "compressed_size" in spec.objectives:
        d["compression"] = cfg.compression
    if spec.variant == "compress_finetune":
        d["finetune"] = {k: v for k, v in cfg.finetune_config().to_dict().items() if k not in _NEUTRAL_TRAIN_FIELDS}
    return d


def _digest(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _short_repr(v: Any, n: int = 80) -> str:
    r = "(absent)" if v is _ABSENT else repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


_ABSENT = object()


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first differing entry of two nested dicts (in ``b``'s key order), as a phrase."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*b, *(k for k in a if k not in b)]:
            sub = f"{path}.{k}" if path else str(k)
            diff = _first_difference(a.get(k, _ABSENT), b.get(k, _ABSENT), sub)
            if diff:
                return diff
        return None
    if a != b:
        return f"{path}: {_short_repr(a)} in the stored study, {_short_repr(b)} in this config"
    return None


# --------------------------------------------------------------------------- storage


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str, heartbeat_interval: int | None = 60) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``, connected now: SearchError naming the URL if it cannot be."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                heartbeat_stale_trial_callback=_stale_trial_callback if heartbeat_interval else None,
            )
        if url.startswith("sqlite"):
            _sqlite_wal(storage)
        return storage
    except Exception as exc:  # driver missing, server unreachable, bad URL, unwritable file...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SearchError(f"cannot open the study storage {redact(url)}: {type(exc).__name__}: {msg}") from exc


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal with ``synchronous=NORMAL``: a commit no longer waits for fsync (a dozen per trial),
    and a killed process still loses nothing committed (only a power loss could drop the last ones)."""
    import sqlalchemy

    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened before the listener reconnect with it


def _study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    return set(optuna.study.get_all_study_names(storage))


# --------------------------------------------------------------------------- interrupted trials


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"  # a zombie is dead
    except (OSError, IndexError):
        return True


def _worker_gone(trial: FrozenTrial) -> bool:
    """Whether a RUNNING trial's worker process, on this host, no longer exists (or is this process)."""
    worker = trial.user_attrs.get("worker", "")
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine: its heartbeat decides
    return int(pid) == os.getpid() or not _pid_alive(int(pid))


def interrupted_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials that were interrupted (marked so, or queued again as ``retry_of``)."""
    out = set()
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            out.add(t.number)
        if t.user_attrs.get("retry_of") is not None:
            out.add(int(t.user_attrs["retry_of"]))
    return out


def _requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed, interrupted trial's configuration again (once), keeping its grid point if any."""
    if not trial.params:
        return
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    if "grid_id" in trial.system_attrs:
        # GridSampler needs every trial to carry its grid point; the retry takes the interrupted one's.
        retry = next(t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                     if t.user_attrs.get("retry_of") == trial.number)
        for key in ("grid_id", "search_space"):
            study._storage.set_trial_system_attr(retry._trial_id, key, trial.system_attrs[key])
    log.warning("study %s: trial %d was interrupted; its configuration is queued again", study.study_name, trial.number)


def _stale_trial_callback(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat: a trial whose worker stopped beating was failed by Optuna; run it again."""
    _requeue(study, trial)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker on this host is gone, and requeue every interrupted trial.

    Returns the numbers of the trials requeued.
    """
    storage = study._storage
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING and _worker_gone(t):
            try:
                storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                            f"interrupted: worker {t.user_attrs.get('worker', '?')} stopped mid-trial")
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
            t = storage.get_trial(t._trial_id)
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            _requeue(study, t)
            out.append(t.number)
    return out


def n_counted(study: optuna.Study) -> int:
    """Trials that used the budget: complete, or failed other than by an interruption."""
    trials = study.get_trials(deepcopy=False)
    skip = interrupted_numbers(trials)
    return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in skip)
               for t in trials)


class _Budget:
    """Stops a study when its budget is used, or after too many failures in a row (then ``aborted``)."""

    def __init__(self, n_trials: int, max_failures: int, bar=None):
        self.n_trials = n_trials
        self.max_failures = max_failures
        self.streak = 0
        self.aborted: str | None = None
        self.bar = bar

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted"):
            self.streak += 1  # (a heartbeat-failed trial of another worker never reaches this callback)
        elif trial.state == TrialState.COMPLETE:
            self.streak = 0
        done = n_counted(study)
        if self.bar is not None:
            self.bar.n = min(done, self.n_trials)
            best = _best_accuracy(study)
            if best is not None:
                self.bar.set_postfix(best=f"{best:.4f}", refresh=False)
            self.bar.refresh()
        if done >= self.n_trials:
            study.stop()
        elif self.max_failures and self.streak >= self.max_failures:
            self.aborted = f"{self.streak} trials in a row failed (last: {trial.user_attrs.get('fail_reason', '?')})"
            log.error("study %s stopped: %s", study.study_name, self.aborted)
            study.stop()


def _best_accuracy(study: optuna.Study) -> float | None:
    accs = [t.user_attrs.get("accuracy") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    accs = [a for a in accs if a is not None]
    return max(accs) if accs else None


# --------------------------------------------------------------------------- data


def load_data(cfg: RunConfig) -> Any:
    """Tokenised splits for the run, checked against the model's vocabulary and positions."""
    from mase_lite.data import load_splits, load_tokenizer

    tokenizer = load_tokenizer(cfg.data)
    if len(tokenizer) > cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer {cfg.data.tokenizer!r} has {len(tokenizer)} tokens but model.vocab_size = "
            f"{cfg.model.vocab_size}; raise model.vocab_size"
        )
    return load_splits(cfg.data, tokenizer)


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    storage_url: str
    studies: list[StudySpec]
    summary: list[dict[str, Any]]
    files: dict[str, Path]
    aborted: dict[str, str]


def prepare(cfg: RunConfig, run_dir: Path, storage_url: str | None, resume: bool) -> tuple[optuna.storages.RDBStorage, str, list[StudySpec]]:
    """Open the storage and check the run's studies against it, before any data or training.

    Without ``resume`` none of the studies may exist; with it, at least one must, and every
    existing one must have the same fingerprint.
    """
    specs = plan_studies(cfg)
    for spec in specs:  # grid + nodes, empty grid etc. are config errors, found before anything starts
        make_sampler(spec.sampler_name, SearchSpace.from_config(cfg.space, cfg.model, spec.nodes), spec.seed,
                     cfg.search.sampler_options)
    url = storage_url or cfg.search.storage
    if url is None:
        if resume and not (run_dir / "optuna.db").is_file():
            raise SearchError(f"--resume: no run to resume in {run_dir} (no optuna.db); run without --resume to start it")
        run_dir.mkdir(parents=True, exist_ok=True)
        url = default_storage_url(run_dir)
    storage = open_storage(url, cfg.search.heartbeat_interval)
    existing = _study_names(storage)
    mine = [s.name for s in specs if s.name in existing]
    if resume and not mine:
        names = ", ".join(s.name for s in specs[:3]) + (" ..." if len(specs) > 3 else "")
        raise SearchError(
            f"--resume: no study of run {cfg.search.name!r} ({names}) exists in {redact(url)}; "
            f"run without --resume to start it"
        )
    if not resume and mine:
        raise SearchError(
            f"study {mine[0]!r} already exists in {redact(url)}; pass --resume to continue it "
            f"(or add a worker to it), or change search.name"
        )
    for spec in specs:
        if spec.name in existing:
            study = optuna.load_study(study_name=spec.name, storage=storage)
            stored = study.user_attrs.get("fingerprint")
            want = study_fingerprint(cfg, spec)
            if stored is None:
                raise SearchError(f"study {spec.name!r} in {redact(url)} was not created by `mase-lite search`; "
                                  f"use another search.name")
            if stored.get("digest") != _digest(want):
                diff = _first_difference(stored.get("config", {}), want) or "unknown difference"
                raise SearchError(
                    f"study {spec.name!r} in {redact(url)} was created with a different search space or setup "
                    f"({diff}); use another search.name (or --out / --storage) for this config"
                )
    return storage, url, specs


def run_study(cfg: RunConfig, spec: StudySpec, storage: optuna.storages.BaseStorage, get_splits: Callable[[], Any],
              run_dir: Path, n_trials: int | None = None) -> tuple[optuna.Study, str | None]:
    """Create or continue one study and run trials until its budget is used (or the grid is done).

    ``get_splits()`` gives the data; it is only called when there are trials to run.
    """
    from tqdm.auto import tqdm

    space = SearchSpace.from_config(cfg.space, cfg.model, with_nodes=spec.nodes)
    sampler = make_sampler(spec.sampler_name, space, spec.seed, cfg.search.sampler_options)
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler,
                                directions=spec.directions, load_if_exists=True)
    if "fingerprint" not in study.user_attrs:
        fp = study_fingerprint(cfg, spec)
        for key, value in {
            "run": spec.run, "curve": spec.curve, "sampler": spec.sampler, "variant": spec.variant,
            "seed": spec.seed, "objectives": spec.objectives,
            "fingerprint": {"digest": _digest(fp), "config": fp},
        }.items():
            study.set_user_attr(key, value)
    recover_interrupted(study)
    budget = n_trials or spec.n_trials
    done = n_counted(study)
    graph_dir = run_dir / spec.name / "graphs" if cfg.search.save_graphs else None
    if done >= budget:
        log.info("study %s: %d of %d trials done already", spec.name, done, budget)
        if graph_dir is not None:
            keep_best_graphs(study)
        return study, None
    ctx = ObjectiveContext(
        space=space, splits=get_splits(), train=cfg.train.replace(seed=spec.seed), finetune=cfg.finetune_config().replace(seed=spec.seed),
        compression=cfg.compression, objectives=spec.objectives, seed=spec.seed, graph_dir=graph_dir,
    )
    objective = OBJECTIVES[spec.variant](ctx)
    with tqdm(total=budget, initial=done, desc=spec.name, unit="trial", dynamic_ncols=True) as bar:
        cb = _Budget(budget, cfg.search.max_failures_in_a_row, bar)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=None, catch=(Exception,), callbacks=[cb],
                           gc_after_trial=cfg.search.gc_after_trial)
    if graph_dir is not None:
        keep_best_graphs(study)
    return study, cb.aborted


def keep_best_graphs(study: optuna.Study) -> list[str]:
    """Delete saved graphs of finished trials that are not the best (or on the Pareto front); returns kept dirs."""
    import shutil

    try:
        best = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    except ValueError:
        best = []
    keep = {t.number for t in best}
    kept = []
    for t in study.get_trials(deepcopy=False):
        path = t.user_attrs.get("graph_dir")
        if not path or not t.state.is_finished():
            continue
        if t.number in keep:
            kept.append(path)
        elif Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return kept


def run_search(cfg: RunConfig, run_dir: str | Path | None = None, storage_url: str | None = None,
               resume: bool = False, n_trials: int | None = None) -> RunResult:
    """Run every study of ``cfg``; write the summary, trial table and figures into the run folder."""
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / cfg.search.name
    _quiet_optuna()
    storage, url, specs = prepare(cfg, run_dir, storage_url, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    data: list[Any] = []

    def get_splits() -> Any:  # loaded once, and only if some study has trials left
        if not data:
            data.append(load_data(cfg))
        return data[0]

    aborted = {}
    for spec in specs:
        _, why = run_study(cfg, spec, storage, get_splits, run_dir, n_trials)
        if why:
            aborted[spec.name] = why
    return finish(storage, url, specs, run_dir, aborted)


def finish(storage, url: str, specs: list[StudySpec], run_dir: Path, aborted: dict[str, str] | None = None) -> RunResult:
    """Write ``summary.{txt,json}``, ``trials.csv`` and the figures; return what was written."""
    from .plots import write_figures

    summary = summarize(storage, [s.name for s in specs])
    files = {
        "storage": Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else Path(redact(url)),
        "summary": run_dir / "summary.txt",
        "summary_json": run_dir / "summary.json",
        "trials": run_dir / "trials.csv",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (run_dir / "summary.txt").write_text(format_summary(summary) + "\n")
    write_trials_csv(storage, [s.name for s in specs], run_dir / "trials.csv")
    files.update(write_figures(storage, [s.name for s in specs], run_dir))
    return RunResult(run_dir, url, specs, summary, files, aborted or {})


def _quiet_optuna() -> None:
    """Optuna's per-trial logging only at -vv (ours reports trials)."""
    level = logging.getLogger().getEffectiveLevel()
    optuna.logging.set_verbosity(optuna.logging.INFO if level <= logging.DEBUG else optuna.logging.ERROR)


# --------------------------------------------------------------------------- summary


def _arch_str(arch: dict[str, Any] | None) -> str:
    if not arch:
        return "-"
    s = (f"L{arch.get('num_hidden_layers')} A{arch.get('num_attention_heads')} H{arch.get('hidden_size')} "
         f"I{arch.get('intermediate_size')}")
    if arch.get("n_identity"):
        s += f" id{arch['n_identity']}"
    return s


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    ua = t.user_attrs
    cost = ua.get("cost") or {}
    return {
        "trial": t.number,
        "state": t.state.name,
        "accuracy": ua.get("accuracy"),
        "accuracy_trained": ua.get("accuracy_trained"),
        "accuracy_compressed": ua.get("accuracy_compressed"),
        "accuracy_finetuned": ua.get("accuracy_finetuned"),
        "values": list(t.values) if t.values else None,
        "arch": ua.get("arch"),
        "cost": cost,
        "seconds": (ua.get("timings") or {}).get("total"),
        "graph_dir": ua.get("graph_dir"),
        "reason": ua.get("fail_reason") or ua.get("prune_reason"),
    }


def summarize(storage, study_names: Iterable[str]) -> list[dict[str, Any]]:
    """Per study: counts, and the best trial (single objective) or the Pareto front (several)."""
    out = []
    for name in study_names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials)
                  for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING)}
        counts["interrupted"] = len(interrupted_numbers(trials))
        try:
            best = study.best_trials if len(study.directions) > 1 else [study.best_trial]
        except ValueError:
            best = []
        best = sorted(best, key=lambda t: -(t.user_attrs.get("accuracy") or 0.0))
        out.append({
            "study": name,
            **{k: study.user_attrs.get(k) for k in ("run", "curve", "sampler", "variant", "seed", "objectives")},
            "directions": [d.name.lower() for d in study.directions],
            "trials": counts,
            "best": [_trial_row(t) for t in best],
        })
    return out


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _mb(v: Any) -> str:
    return "-" if v is None else f"{float(v) / 1e6:.2f}"


def format_summary(summary: list[dict[str, Any]]) -> str:
    """A plain-text table: one line per study's best trial (several for a Pareto front)."""
    head = ["study", "done/fail/pruned", "best", "acc", "acc_trained", "acc_compr", "acc_ft", "arch",
            "params", "fp32 MB", "compr MB", "s"]
    rows = []
    for s in summary:
        c = s["trials"]
        counts = f"{c['complete']}/{c['fail']}/{c['pruned']}"
        front = len(s["directions"]) > 1
        if not s["best"]:
            rows.append([s["study"], counts, "-", *["-"] * 9])
        for i, b in enumerate(s["best"]):
            cost = b["cost"] or {}
            rows.append([
                s["study"] if i == 0 else "", counts if i == 0 else "",
                f"{'pareto ' if front else ''}#{b['trial']}",
                _fmt(b["accuracy"]), _fmt(b["accuracy_trained"]), _fmt(b["accuracy_compressed"]),
                _fmt(b["accuracy_finetuned"]), _arch_str(b["arch"]), _fmt(cost.get("params")),
                _mb(cost.get("size_bytes_fp32")), _mb(_compressed(cost)), _fmt(b["seconds"], ".1f"),
            ])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _compressed(cost: dict[str, Any]) -> Any:
    from .objectives import compressed_size

    try:
        return compressed_size(cost)
    except MaseError:
        return None


def write_trials_csv(storage, study_names: Iterable[str], path: Path) -> Path:
    """Every trial of the studies, one row each (architecture, accuracies, cost, timings, reasons)."""
    rows = []
    cost_keys: list[str] = []
    for name in study_names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False):
            ua = t.user_attrs
            arch = ua.get("arch") or {}
            cost = ua.get("cost") or {}
            cost_keys += [k for k in cost if k not in cost_keys]
            rows.append({
                "study": name, "trial": t.number, "state": t.state.name,
                **{k: arch.get(k) for k in MODEL_PARAMS}, "n_identity": arch.get("n_identity"),
                "identity": " ".join(arch.get("identity") or []),
                "accuracy": ua.get("accuracy"), "accuracy_trained": ua.get("accuracy_trained"),
                "accuracy_compressed": ua.get("accuracy_compressed"), "accuracy_finetuned": ua.get("accuracy_finetuned"),
                "values": " ".join(map(str, t.values)) if t.values else "",
                **{f"cost.{k}": v for k, v in cost.items()},
                **{f"time.{k}": v for k, v in (ua.get("timings") or {}).items()},
                "interrupted": bool(ua.get("interrupted")),
                "reason": ua.get("fail_reason") or ua.get("prune_reason") or "",
                "graph_dir": ua.get("graph_dir") or "",
            })
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path
