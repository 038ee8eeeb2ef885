"""Building a benchmark table: every architecture of a grid space, trained once per seed.

The build is one Optuna study (``<search.name>-table``) whose grid is the model-level space times
the table seeds (parameter ``table_seed``), so it has what a search has: RDB storage, resume after
a kill (an interrupted trial is queued again), several worker processes on one storage, a progress
bar; it is run by the study runner (:mod:`search.runner`): its grid is queued whole when the study is
made and each row is admitted within the budget, so parallel workers never train a row twice. Each
trial is the ``compress_finetune`` trial of a live search (:mod:`search.objectives`) with
the model and training seed set to its ``table_seed`` and the fine-tune seed derived from it, so
one row records the trained, compressed and fine-tuned accuracy of the same model -- on the
validation rows (what searches select on) and on the test split (``data.n_test`` rows, never
selected on; :data:`MIN_TEST_ROWS` or more are advised). The config's ``[bench]`` table (the
pre-registered analysis, :class:`search.bench.plan.BenchPlan`) is part of the build's fingerprint and
is written into the manifest's ``preregistration``. The table is
written (:func:`search.bench.table.write_table`, then the manifest) once every (architecture,
seed) row is complete; until then a rerun of the same command continues the build.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

from ..config import RunConfig, SearchError, StudySpec, digest, fingerprint_difference, study_fingerprint
from ..lifecycle import Lifecycle, default_lifecycle
from ..objectives import CompressFinetuneObjective, ObjectiveContext
from ..space import SearchSpace
from ..runner import catch_up, open_study, run_trials
from ..storage import default_storage_url, open_storage, redact
from .table import ARCH_PARAMS, TABLE_COLUMNS, arch_id, buildable, space_combinations, write_manifest, write_table

log = logging.getLogger(__name__)

SEED_PARAM = "table_seed"
#: trial timings -> table columns
_TIMES = {"build": "time_build_s", "train": "time_train_s", "eval_trained": "time_eval_trained_s",
          "compress": "time_compress_s", "eval_compressed": "time_eval_compressed_s",
          "finetune": "time_finetune_s", "eval_finetuned": "time_eval_finetuned_s", "total": "time_total_s",
          "eval_test": "time_eval_test_s"}
#: Test rows below which a table's held-out columns are too noisy to be worth their evaluation
#: (binomial SE about 0.006 at 5,000 rows and accuracy 0.8).
MIN_TEST_ROWS = 5000


@dataclasses.dataclass
class BuildResult:
    out: Path
    storage_url: str
    rows_done: int
    rows_total: int
    table: Path | None  # written once every row is complete
    seconds: float  # wall time of this call


class TableObjective:
    """One (architecture, seed) row: the ``compress_finetune`` trial with this row's seeds."""

    def __init__(self, ctx: ObjectiveContext, seeds: Sequence[int], finetune_for: Callable[[int], Any]):
        self.ctx, self.seeds, self.finetune_for = ctx, list(seeds), finetune_for

    def __call__(self, trial: optuna.Trial) -> float:
        seed = trial.suggest_categorical(SEED_PARAM, self.seeds)
        ctx = dataclasses.replace(self.ctx, seed=seed, train=self.ctx.train.replace(seed=seed),
                                  finetune=self.finetune_for(seed))
        return CompressFinetuneObjective(ctx)(trial)


def table_spec(cfg: RunConfig, n_rows: int) -> StudySpec:
    name = f"{cfg.search.name}-table"
    return StudySpec(name, cfg.search.name, name, "grid", 0, "compress_finetune", ["accuracy"], n_rows)


def table_fingerprint(cfg: RunConfig, seeds: Sequence[int]) -> dict[str, Any]:
    fp = study_fingerprint(cfg, table_spec(cfg, 0))
    fp.pop("finetune", None)  # per row: derived from the row's seed
    fp["table_seeds"] = list(seeds)
    fp["finetune"] = dict(cfg.finetune)
    plan = preregistration(cfg)
    if plan:  # absent without one: builds started before pre-registration stay valid
        fp["preregistration"] = plan
    return fp


def preregistration(cfg: RunConfig) -> dict[str, Any]:
    """The config's ``[bench]`` table as recorded in the manifest (``{}`` without one)."""
    plan = getattr(cfg, "bench", None)
    return plan.to_dict() if plan is not None else {}


def n_rows(cfg: RunConfig, seeds: Sequence[int]) -> int:
    return len(_buildable(cfg)) * len(seeds)


def _buildable(cfg: RunConfig) -> list[dict[str, int]]:
    space = {p: getattr(cfg.space, p) for p in ARCH_PARAMS}
    return [c for c in space_combinations(space) if buildable(c)]


def build_table(cfg: RunConfig, out: str | Path, seeds: Sequence[int] = (0, 1, 2), *, storage_url: str | None = None,
                lifecycle: Lifecycle | None = None, command: str = "") -> BuildResult:
    """Train the missing rows of the table of ``cfg``'s space into ``out`` (resumable; see the module doc).

    ``lifecycle`` builds, trains and evaluates (default: :func:`search.lifecycle.default_lifecycle`);
    the data are only loaded when rows are missing. Returns how many rows are done; ``table`` is set once all are.
    """
    from ..study import _quiet_optuna

    t0 = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SearchError(f"table seeds {seeds}: give distinct seeds (at least one)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _quiet_optuna()
    total = n_rows(cfg, seeds)
    url = storage_url or cfg.search.storage or default_storage_url(out)
    space = SearchSpace.from_config(cfg.space, cfg.model, with_nodes=False)
    study = _open_table_study(cfg, space, seeds, url)
    done = catch_up(study, out, total)
    if done < total:
        objective = _objective(cfg, space, seeds, total, lifecycle)
        _build_rows(cfg, study, objective, out, total, done)
    rows = table_rows(study)
    table = None
    if len(rows) >= total:
        table = _write(cfg, study, rows, seeds, out, command)
    return BuildResult(out, url, len(rows), total, table, time.perf_counter() - t0)


def _open_table_study(cfg: RunConfig, space: SearchSpace, seeds: list[int], url: str) -> optuna.Study:
    """The build's study (made, with its grid queued, or joined), checked against ``cfg``'s fingerprint."""
    storage = open_storage(url, cfg.search.heartbeat_interval, retry_s=cfg.search.storage_retry_s)
    grid = {**space.model.grid_search_space(), SEED_PARAM: seeds}
    spec = table_spec(cfg, 0)
    fp = table_fingerprint(cfg, seeds)
    study = open_study(spec.name, storage, optuna.samplers.GridSampler(grid, seed=0), ["maximize"])
    stored = study.user_attrs.get("fingerprint")
    diff = None if stored is None else fingerprint_difference(stored.get("config", {}), fp)
    if stored is None:
        study.set_user_attr("fingerprint", {"digest": digest(fp), "config": fp})
    elif diff:
        raise SearchError(f"the table study {spec.name!r} in {redact(url)} was started with another setup ({diff}); "
                          f"use another --out, --storage or search.name")
    return study


def _objective(cfg: RunConfig, space: SearchSpace, seeds: list[int], total: int,
               lifecycle: Lifecycle | None) -> TableObjective:
    """The rows' objective, on the loaded data (each row admitted within the budget of ``total`` rows)."""
    from ..study import load_data

    lifecycle = lifecycle or default_lifecycle()
    if cfg.data.n_test is not None and cfg.data.n_test < MIN_TEST_ROWS:
        log.warning("data.n_test = %d: the table's held-out test columns will have a binomial SE of about "
                    "%.3f; use %d or more rows", cfg.data.n_test, math.sqrt(0.16 / cfg.data.n_test), MIN_TEST_ROWS)
    ctx = ObjectiveContext(space=space, splits=load_data(cfg, lifecycle), train=cfg.train,
                           finetune=cfg.finetune_config(), compression=cfg.compression,
                           objectives=["accuracy"], seed=0, graph_dir=None, lifecycle=lifecycle, test_eval="all",
                           n_trials=total)
    return TableObjective(ctx, seeds, cfg.finetune_config)


def _build_rows(cfg: RunConfig, study: optuna.Study, objective: TableObjective, out: Path, total: int,
                done: int) -> None:
    """Run the study's trials (:func:`search.runner.run_trials`) until ``total`` rows are counted."""
    from mase_lite.progress import progress as tqdm  # one line per row when stderr is not a terminal

    with tqdm(total=total, initial=done, desc=study.study_name, unit="row", dynamic_ncols=True) as bar:
        aborted = run_trials(study, objective, total, run_dir=out, max_failures=cfg.search.max_failures_in_a_row,
                             bar=bar, gc_after_trial=cfg.search.gc_after_trial)
    if aborted:
        raise SearchError(f"table build stopped: {aborted}")


def _write(cfg: RunConfig, study: optuna.Study, rows: list[dict[str, Any]], seeds: list[int], out: Path,
           command: str) -> Path:
    """Write the complete table and its manifest into ``out``; returns the table's path."""
    table = write_table(rows, out)
    write_manifest(
        out, space={p: getattr(cfg.space, p) for p in ARCH_PARAMS}, model=cfg.to_dict()["model"],
        data={k: v for k, v in cfg.data.to_dict().items() if k not in ("data_dir", "cache_dir")},
        train=cfg.train.to_dict(), finetune=cfg.finetune_config().to_dict(),
        compression=cfg.compression, seeds=seeds,
        total_seconds=round(sum(r["time_total_s"] for r in rows), 1), command=command,
        machine=_machine(study), preregistration=preregistration(cfg),
    )
    log.info("table of %d rows written to %s", len(rows), out)
    return table


def table_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per (architecture, seed) from the study's trials: the first complete trial of each,
    or (where every attempt failed) a row of NaN accuracies from the last failed one."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    interrupted = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("interrupted")}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or t.number in interrupted or "arch" not in t.user_attrs:
            continue
        ua = t.user_attrs
        arch = {p: int(ua["arch"][p]) for p in ARCH_PARAMS}
        key = (arch_id(arch), int(t.params[SEED_PARAM]))
        if key in rows and (rows[key]["_complete"] or t.state != TrialState.COMPLETE):
            continue
        cost, timings, machine = ua.get("cost") or {}, ua.get("timings") or {}, ua.get("machine") or {}
        row: dict[str, Any] = {"arch": key[0], **arch, "seed": key[1], "_complete": t.state == TrialState.COMPLETE}
        for stage in ("trained", "compressed", "finetuned"):
            for col in (f"accuracy_{stage}", f"loss_{stage}", f"test_accuracy_{stage}", f"test_loss_{stage}"):
                row[col] = float(ua.get(col, math.nan))
        for col in ("params", "size_bytes_fp32", "size_bytes_compressed"):
            row[col] = int(cost.get(col, 0))
        for name, col in _TIMES.items():
            row[col] = float(timings.get(name, 0.0))
        row["precision"], row["num_threads"] = machine.get("precision") or "", int(machine.get("num_threads") or 0)
        rows[key] = row
    return [{k: r[k] for k in TABLE_COLUMNS} for r in rows.values()]


def _machine(study: optuna.Study) -> dict[str, Any]:
    """The machine of the trials (those of the first complete trial; ``mixed`` lists every distinct one)."""
    seen = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        m = t.user_attrs.get("machine")
        if m and m not in seen:
            seen.append(m)
    out = dict(seen[0]) if seen else {}
    if len(seen) > 1:
        out["mixed"] = seen
        log.warning("the table's rows come from %d different machine setups (see manifest machine.mixed)", len(seen))
    return out
