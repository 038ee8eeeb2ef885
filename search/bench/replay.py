"""Replaying Optuna samplers against a benchmark table instead of training.

:func:`replay` runs a real Optuna study (in-memory storage) with the live search's space
(:class:`search.space.SearchSpace`, same parameter names and choices) and sampler
(:func:`search.samplers.make_sampler`); its objective looks the sampled architecture up in the
table. It behaves as a live study does:

* Noise: every trial of a live study trains with the same model seed, so by default (``seed_mode =
  "run"``) a replay run uses one of the table's seeds for every architecture, drawn with
  ``numpy.random.default_rng((seed, NOISE_STREAM, 1))``; seed effects shared by all architectures
  then shift every candidate of the run alike, as in a live study. ``seed_mode = "arch"`` (the
  behaviour before the held-out analysis) draws one seed per architecture
  (``default_rng((seed, NOISE_STREAM))``). Either way the draw depends on the replay seed (and the
  architecture) only: a repeated pick returns the same value, and all samplers and metrics replayed
  with one seed see the same training noise, as the studies of one live seed do -- so their picks
  are paired, and :mod:`search.bench.heldout` scores each pick on the seeds its run did not draw.
  This is the live search's rule for duplicates (``search.reuse_duplicates``): a trial
  whose configuration was already evaluated reuses that result, counts against ``n_trials``, and
  is marked ``reused_from`` (the 1-based ``trial`` of the first evaluation).
* An unbuildable combination raises :class:`~search.space.InvalidArchitecture` (pruned; it costs
  nothing and does not count). A table value of NaN (a run that failed) fails the trial, which
  counts, as a failed live trial does. A run stops after ``n_trials`` counted trials, or when the
  sampler stops the study (grid: every combination visited once), so grid runs are shorter when
  the space is smaller.
* Multi-objective samplers (``nsga2``: maximise accuracy, minimise compressed size) are scored by the
  hypervolume of their Pareto front (:func:`hypervolume_2d`); single-objective ones by the best
  observed accuracy so far.

:func:`replay_many` runs every (sampler, seed), optionally in a process pool.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .heldout import DEFAULT_SEED_MODE, SEED_MODES
from .table import ARCH_PARAMS, METRIC_COLUMNS, BenchTable, TableError, arch_id

log = logging.getLogger(__name__)

#: Objectives a replay knows (as in ``search.objectives.METRICS``) -> direction.
DIRECTIONS = {"accuracy": "maximize", "compressed_size": "minimize"}
#: Stream key of the per-architecture seed draw (``default_rng((seed, NOISE_STREAM))``).
NOISE_STREAM = 0x5EED
#: Hypervolume reference point: accuracy 0 and this times the table's largest compressed size.
HV_REF_SIZE = 1.1


class _FailedRun(Exception):
    """The table's value for the drawn seed is NaN: the trial fails (and counts)."""


@dataclasses.dataclass(slots=True)
class ReplayTrial:
    """One counted trial of a replay run.

    ``trial``: 1-based position among counted trials; ``number``: Optuna's trial number (pruned
    trials included); ``observed``: the study metric of the drawn seed (NaN if that run failed);
    ``mean_*``: the architecture's mean over seeds of each metric; ``size_bytes_compressed``: of the
    drawn seed's row. ``reused_from``: for a repeated configuration, the ``trial`` that evaluated
    it first (its result is reused, as a live search does; None for a first evaluation).
    """

    trial: int
    number: int
    arch: str
    table_seed: int
    observed: float
    mean_trained: float
    mean_compressed: float
    mean_finetuned: float
    size_bytes_compressed: float
    reused_from: int | None = None

    def mean(self, metric: str) -> float:
        return getattr(self, f"mean_{metric}")


@dataclasses.dataclass
class ReplayRun:
    """One replayed study: its counted trials in order and how it ended."""

    sampler: str
    seed: int
    metric: str
    n_trials: int
    objectives: list[str]
    trials: list[ReplayTrial]
    n_pruned: int = 0
    stopped_by_sampler: bool = False
    size_ref: float = 1.0  # sizes are divided by this for the hypervolume
    seed_mode: str = DEFAULT_SEED_MODE  # how training seeds were drawn (heldout.SEED_MODES)

    def __len__(self) -> int:
        return len(self.trials)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def best_so_far(self) -> list[float]:
        """Best observed value after each counted trial (NaN until the first that did not fail)."""
        out, best = [], math.nan
        for t in self.trials:
            if not math.isnan(t.observed) and (math.isnan(best) or t.observed > best):
                best = t.observed
            out.append(best)
        return out

    def hypervolume(self) -> list[float]:
        """Hypervolume of (observed accuracy, compressed size / ``size_ref``) after each counted trial."""
        pts: list[tuple[float, float]] = []
        out = []
        for t in self.trials:
            if not math.isnan(t.observed):
                pts.append((t.observed, t.size_bytes_compressed / self.size_ref))
            out.append(hypervolume_2d(pts, HV_REF_SIZE))
        return out

    def measure(self) -> list[float]:
        """The run's curve: hypervolume if multi-objective, else best observed accuracy so far."""
        return self.hypervolume() if self.multi_objective else self.best_so_far()

    def pick(self, budget: int | None = None) -> ReplayTrial | None:
        """The trial with the best observed value among the first ``budget`` (earliest on ties)."""
        best = None
        for t in self.trials[: budget if budget is not None else len(self.trials)]:
            if not math.isnan(t.observed) and (best is None or t.observed > best.observed):
                best = t
        return best


def hypervolume_2d(points: Sequence[tuple[float, float]], ref_size: float = HV_REF_SIZE) -> float:
    """Area dominated by ``(accuracy, size)`` points (maximise accuracy, minimise size) and bounded by
    the reference point ``(0, ref_size)``: a sweep over the points sorted by size."""
    pts = sorted((s, a) for a, s in points if a > 0 and s < ref_size)
    area, best_a = 0.0, 0.0
    for i, (s, a) in enumerate(pts):
        best_a = max(best_a, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_size
        area += (nxt - s) * best_a
    return area


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logging at WARNING and its ExperimentalWarning ignored, restored afterwards."""
    import optuna

    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optimize_log = logging.getLogger("optuna.study._optimize")
    optimize_log.addFilter(_drop_failed_trial)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optimize_log.removeFilter(_drop_failed_trial)
        optuna.logging.set_verbosity(old)


def _drop_failed_trial(record: logging.LogRecord) -> bool:
    """Drop Optuna's warnings for failed trials: in a replay they are NaN table values (expected, counted)."""
    msg = record.getMessage()
    return not (msg.startswith("Trial ") and " failed with " in msg)


class _Context:
    """What every replay on one table shares: the table, its per-arch means and sizes, the space."""

    def __init__(self, table: BenchTable, space_config: Any = None):
        from mase_lite.models import ModelConfig
        from search.space import SearchSpace, SpaceConfig

        self.table = table
        self.means = {m: table.means(m) for m in METRIC_COLUMNS}
        self.sizes = table.array("size_bytes_compressed")
        finite = self.sizes[np.isfinite(self.sizes)]
        self.size_ref = float(finite.max()) if finite.size else 1.0
        if space_config is None:
            space_config = SpaceConfig(**table.space)
        self.space_config = space_config
        self.space = SearchSpace.from_config(space_config, ModelConfig())
        self.n_combos = len(self.space.model.combinations())

    def draws(self, seed: int, seed_mode: str = DEFAULT_SEED_MODE) -> np.ndarray:
        """The table seed index of every architecture for replay seed ``seed``: one for the whole run
        (``run``) or one per architecture (``arch``)."""
        n_seeds, n_archs = len(self.table.seeds), len(self.table.archs)
        if seed_mode == "run":
            j = np.random.default_rng((seed, NOISE_STREAM, 1)).integers(0, n_seeds)
            return np.full(n_archs, j, dtype=np.int64)
        return np.random.default_rng((seed, NOISE_STREAM)).integers(0, n_seeds, size=n_archs)


def default_objectives(sampler: str) -> list[str]:
    """As the live search: accuracy and compressed size for nsga2, else accuracy."""
    return ["accuracy", "compressed_size"] if sampler == "nsga2" else ["accuracy"]


def _check_args(sampler: str, metric: str, n_trials: int, objectives: Sequence[str],
                seed_mode: str = DEFAULT_SEED_MODE) -> None:
    from mase_lite.config import check_choice
    from search.samplers import SAMPLERS, NODES_SUFFIX

    check_choice("seed_mode", seed_mode, list(SEED_MODES))

    if sampler.endswith(NODES_SUFFIX):
        raise TableError(f"sampler = {sampler!r}: a table has model-level architectures only; per-node (+nodes) "
                         f"choices cannot be replayed; use {sampler[: -len(NODES_SUFFIX)]!r}")
    check_choice("sampler", sampler, list(SAMPLERS))
    check_choice("metric", metric, list(METRIC_COLUMNS))
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise TableError(f"n_trials = {n_trials!r} must be a positive integer")
    if not objectives:
        raise TableError(f"objectives is empty; use some of {list(DIRECTIONS)}")
    for i, o in enumerate(objectives):
        check_choice(f"objectives[{i}]", o, list(DIRECTIONS))


def _replay(ctx: _Context, sampler: str, seed: int, n_trials: int, metric: str, options: Any,
            objectives: Sequence[str], seed_mode: str = DEFAULT_SEED_MODE) -> ReplayRun:
    import optuna
    from optuna.trial import TrialState

    from search.samplers import make_sampler

    table = ctx.table
    column = table.array(metric)
    draws = ctx.draws(seed, seed_mode)
    index = table.arch_index
    archs = table.archs
    means_t, means_c, means_f = ctx.means["trained"], ctx.means["compressed"], ctx.means["finetuned"]
    model_space = ctx.space.model
    records: list[ReplayTrial] = []
    state = {"pruned": 0}
    first_trial: dict[str, int] = {}  # arch -> the counted trial that evaluated it first

    def objective(trial: optuna.Trial) -> Any:
        config = model_space.suggest(trial)  # InvalidArchitecture (pruned) for an unbuildable combination
        arch = arch_id({p: getattr(config, p) for p in ARCH_PARAMS})
        i = index[arch]
        j = int(draws[i])
        value = float(column[i, j])
        size = float(ctx.sizes[i, j])
        first = first_trial.setdefault(arch, len(records) + 1)
        records.append(ReplayTrial(len(records) + 1, trial.number, arch, table.seeds[j], value,
                                   float(means_t[i]), float(means_c[i]), float(means_f[i]), size,
                                   reused_from=None if first == len(records) + 1 else first))
        if math.isnan(value):
            raise _FailedRun(f"{arch} seed {table.seeds[j]}: {METRIC_COLUMNS[metric]} is nan")
        out = [value if o == "accuracy" else size for o in objectives]
        return out[0] if len(out) == 1 else out

    def stop(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.state == TrialState.PRUNED:
            state["pruned"] += 1
        if len(records) >= n_trials:
            study.stop()

    cap = n_trials * 50 + ctx.n_combos  # a safety net: samplers stuck on unbuildable combinations
    with quiet_optuna():
        study = optuna.create_study(sampler=make_sampler(sampler, ctx.space, seed, options),
                                    directions=[DIRECTIONS[o] for o in objectives])
        study.optimize(objective, n_trials=cap, callbacks=[stop], catch=(_FailedRun,), gc_after_trial=False)
    n_total = len(records) + state["pruned"]
    if len(records) < n_trials and n_total >= cap:
        log.warning("replay %s seed %d: stopped after %d trials (%d pruned) with %d of %d counted", sampler, seed,
                    n_total, state["pruned"], len(records), n_trials)
    return ReplayRun(sampler, seed, metric, n_trials, list(objectives), records, state["pruned"],
                     stopped_by_sampler=len(records) < n_trials and n_total < cap, size_ref=ctx.size_ref,
                     seed_mode=seed_mode)


def replay(table: BenchTable, sampler: str, seed: int, n_trials: int, metric: str = "trained",
           options: Any = None, objectives: Sequence[str] | None = None, space_config: Any = None,
           _ctx: _Context | None = None, seed_mode: str = DEFAULT_SEED_MODE) -> ReplayRun:
    """Replay one study of ``sampler`` (seeded ``seed``) for ``n_trials`` counted trials on ``metric``.

    ``options``: ``search.samplers.SamplerOptions``; ``objectives``: default
    :func:`default_objectives`; ``space_config``: the search's ``SpaceConfig`` (its value order is
    what the sampler sees; default: the table's space); ``seed_mode``: one training seed per run
    (``run``, as a live study) or per architecture (``arch``).
    """
    objectives = list(objectives) if objectives is not None else default_objectives(sampler)
    _check_args(sampler, metric, n_trials, objectives, seed_mode)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TableError(f"seed = {seed!r} must be a non-negative integer")
    ctx = _ctx or _Context(table, space_config)
    return _replay(ctx, sampler, int(seed), n_trials, metric, options, objectives, seed_mode)


# --------------------------------------------------------------------------- many runs

_WORKER_CTX: _Context | None = None


def _init_worker(ctx: _Context) -> None:
    global _WORKER_CTX
    _WORKER_CTX = ctx


def _work(task: tuple) -> ReplayRun:
    assert _WORKER_CTX is not None
    return _replay(_WORKER_CTX, *task)


def default_workers() -> int:
    """``min(2, CPUs available)``."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def replay_many(table: BenchTable, samplers: Sequence[str], seeds: Sequence[int], n_trials: int,
                metric: str = "trained", options: Any = None,
                objectives: Mapping[str, Sequence[str]] | None = None, space_config: Any = None,
                workers: int | None = None, progress: bool = False, desc: str | None = None,
                seed_mode: str = DEFAULT_SEED_MODE) -> dict[str, list[ReplayRun]]:
    """Replay every (sampler, seed): ``{sampler: [runs in seeds order]}``; deterministic for given seeds.

    ``objectives``: per sampler (default :func:`default_objectives`). ``workers`` processes (default
    :func:`default_workers`; small jobs run in this process). ``progress``: a tqdm bar on stderr
    (shown only on a terminal). ``seed_mode``: as for :func:`replay`.
    """
    from mase_lite.progress import progress as tqdm  # one line per run when stderr is not a terminal

    objectives = dict(objectives or {})
    tasks = []
    for s in samplers:
        objs = list(objectives.get(s) or default_objectives(s))
        _check_args(s, metric, n_trials, objs, seed_mode)
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise TableError(f"seeds: {seed!r} must be a non-negative integer")
            tasks.append((s, int(seed), n_trials, metric, options, objs, seed_mode))
    ctx = _Context(table, space_config)
    workers = default_workers() if workers is None else max(1, int(workers))
    results: list[ReplayRun] = []
    bar_kw = dict(total=len(tasks), desc=desc or f"replay ({metric})", unit="run", dynamic_ncols=True,
                  disable=None if progress else True)
    if workers > 1 and len(tasks) >= 4 * workers:
        methods = multiprocessing.get_all_start_methods()
        mp = multiprocessing.get_context("fork" if "fork" in methods else None)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=mp, initializer=_init_worker,
                                                    initargs=(ctx,)) as pool:
            with tqdm(**bar_kw) as bar:
                for run in pool.map(_work, tasks, chunksize=max(1, len(tasks) // (workers * 8))):
                    results.append(run)
                    bar.update()
    else:
        with tqdm(**bar_kw) as bar:
            for task in tasks:
                results.append(_replay(ctx, *task))
                bar.update()
    out: dict[str, list[ReplayRun]] = {s: [] for s in samplers}
    for run in results:
        out[run.sampler].append(run)
    return out


def runs_rows(runs: Mapping[str, Sequence[ReplayRun]]) -> Iterator[dict[str, Any]]:
    """Every trial of every run as a flat dict (for ``replay_runs.csv``)."""
    for sampler_runs in runs.values():
        for r in sampler_runs:
            best = r.best_so_far()
            hv = r.hypervolume() if r.multi_objective else [None] * len(r.trials)
            for t, b, h in zip(r.trials, best, hv):
                yield {"metric": r.metric, "sampler": r.sampler, "seed": r.seed, "seed_mode": r.seed_mode,
                       "trial": t.trial,
                       "trial_number": t.number, "arch": t.arch, "table_seed": t.table_seed,
                       "observed": t.observed, "best_so_far": b, "hypervolume": h,
                       "mean_trained": t.mean_trained, "mean_compressed": t.mean_compressed,
                       "mean_finetuned": t.mean_finetuned, "reused_from": t.reused_from,
                       "size_bytes_compressed": int(t.size_bytes_compressed) if math.isfinite(t.size_bytes_compressed)
                       else None}
