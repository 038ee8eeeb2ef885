"""Running a search: its studies in Optuna RDB storage, resume and summary (config: :mod:`search.config`).

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

Budget: ``n_trials`` counts the trials that trained (complete, failed, or early-stopped by the
``search.pruner``), not pruned unbuildable ones (an unbuildable architecture costs nothing) nor
interrupted ones. An interrupted trial -- its worker
process on this host is gone (checked when a run starts or resumes), its heartbeat went stale (a
worker on another host; Optuna's heartbeat, checked before each trial), or Ctrl-C -- is failed
and marked ``interrupted``, and its configuration is queued again once (a trial with user
attribute ``retry_of``, on the same grid point for grid), so ``--resume`` repeats only that trial
and loses no completed one.

Several workers (``mase-lite search --resume`` processes sharing the storage: an RDB URL such as
PostgreSQL, or ``journal:PATH``) run a study's budget together, exactly: a worker starts a trial
only while counted and running trials leave room, and a trial checks again at its start and end
(:func:`search.budget.admitted`; the runner of every study: :mod:`search.runner`). A grid's points
are queued when the study is made, so no point is evaluated twice. A trial whose parameters equal
an earlier complete one's reuses its result (``reused_from``; ``search.reuse_duplicates``). Best
graphs are uploaded to an Optuna artifact store (``search.artifacts``, default ``<run dir>/artifacts``);
the summary fetches them into the reader's run folder.

A storage outage (the database server restarting, a journal's file system failing for a while):
every storage call is retried for ``search.storage_retry_s`` seconds (:mod:`search.storage_retry`),
and each trial is asked and told by :func:`search.trial_loop.run_trial`; a storage that stays down
ends the run with one error line, a trial that had finished kept in ``<run dir>/pending/`` and
stored by the next ``--resume`` (:mod:`search.pending`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import optuna


from .lifecycle import Lifecycle, default_lifecycle
from .objectives import OBJECTIVES, ObjectiveContext, pruner_subset
from .samplers import make_sampler
from .space import SearchSpace
from .config import (RunConfig, SearchError, StudySpec, derived_seed, digest, fingerprint_difference,
                     plan_studies, study_fingerprint)
from .artifacts import fetch_graph, open_artifacts, remove_graph
from .best import best_trials
from .runner import catch_up, open_study, run_trials
from .storage import default_storage_url, open_storage, redact, study_names
from .summary import format_summary, summarize, write_trials_csv

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- data


def load_data(cfg: RunConfig, lifecycle: Lifecycle | None = None) -> Any:
    """Tokenised splits for the run, checked against the model's vocabulary and positions."""
    return (lifecycle or default_lifecycle()).load_data(cfg.data, cfg.model)


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
    from mase_lite.training import resolve_device

    resolve_device(cfg.train.device)  # cuda without CUDA: an error before the storage is touched
    for spec in specs:  # grid + nodes, empty grid etc. are config errors, found before anything starts
        make_sampler(spec.sampler_name, SearchSpace.from_config(cfg.space, cfg.model, spec.nodes), spec.seed,
                     cfg.search.sampler_options)
    url = storage_url or cfg.search.storage
    if url is None:
        if resume and not (run_dir / "optuna.db").is_file():
            raise SearchError(f"--resume: no run to resume in {run_dir} (no optuna.db); run without --resume to start it")
        run_dir.mkdir(parents=True, exist_ok=True)
        url = default_storage_url(run_dir)
    storage = open_storage(url, cfg.search.heartbeat_interval, retry_s=cfg.search.storage_retry_s)
    existing = study_names(storage)
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
            diff = fingerprint_difference(stored.get("config", {}), want)
            if diff:
                raise SearchError(
                    f"study {spec.name!r} in {redact(url)} was created with a different search space or setup "
                    f"({diff}); use another search.name (or --out / --storage) for this config"
                )
    return storage, url, specs


def run_study(cfg: RunConfig, spec: StudySpec, storage: optuna.storages.BaseStorage, get_splits: Callable[[], Any],
              run_dir: Path, n_trials: int | None = None, lifecycle: Lifecycle | None = None
              ) -> tuple[optuna.Study, str | None]:
    """Create or continue one study and run trials until its budget is used (or the grid is done),
    with the study runner (:mod:`search.runner`).

    ``get_splits()`` gives the data; it is only called when there are trials to run.
    """
    from mase_lite.progress import progress as tqdm  # one line per trial when stderr is not a terminal

    space = SearchSpace.from_config(cfg.space, cfg.model, with_nodes=spec.nodes)
    sampler = make_sampler(spec.sampler_name, space, spec.seed, cfg.search.sampler_options)
    study = open_study(spec.name, storage, sampler, spec.directions, make_pruner(cfg))
    _describe(study, cfg, spec)
    budget = n_trials or spec.n_trials
    done = catch_up(study, run_dir, budget)
    graph_dir = run_dir / spec.name / "graphs" if cfg.search.save_graphs else None
    if done >= budget:
        log.info("study %s: %d of %d trials done already", spec.name, done, budget)
        if graph_dir is not None:
            keep_best_graphs(study, artifact_store(cfg, run_dir))
        return study, None
    ctx = _objective_context(cfg, spec, space, get_splits(), graph_dir, budget, lifecycle, run_dir)
    with tqdm(total=budget, initial=done, desc=spec.name, unit="trial", dynamic_ncols=True) as bar:
        aborted = run_trials(study, OBJECTIVES[spec.variant](ctx), budget, run_dir=run_dir, bar=bar,
                             max_failures=cfg.search.max_failures_in_a_row, gc_after_trial=cfg.search.gc_after_trial)
    if graph_dir is not None:
        keep_best_graphs(study, ctx.artifacts)
    return study, aborted


def _describe(study: optuna.Study, cfg: RunConfig, spec: StudySpec) -> None:
    """Write the study's user attributes (run, curve, sampler, ..., fingerprint) unless it has them."""
    if "fingerprint" in study.user_attrs:
        return
    fp = study_fingerprint(cfg, spec)
    for key, value in {
        "run": spec.run, "curve": spec.curve, "sampler": spec.sampler, "variant": spec.variant,
        "seed": spec.seed, "objectives": spec.objectives,
        "fingerprint": {"digest": digest(fp), "config": fp},
    }.items():
        study.set_user_attr(key, value)


def _objective_context(cfg: RunConfig, spec: StudySpec, space: SearchSpace, splits: Any, graph_dir: Path | None,
                       budget: int, lifecycle: Lifecycle | None, run_dir: Path) -> ObjectiveContext:
    """What every trial of the study ``spec`` shares."""
    pruning = cfg.search.pruner != "none"
    return ObjectiveContext(
        space=space, splits=splits, train=cfg.train.replace(seed=spec.seed), finetune=cfg.finetune_config(spec.seed),
        compression=cfg.compression, objectives=spec.objectives, seed=spec.seed, graph_dir=graph_dir,
        lifecycle=lifecycle or default_lifecycle(),
        size_budget_bytes=cfg.search.size_budget_bytes, reuse_trained=cfg.search.reuse_trained,
        eval_every=cfg.search.eval_every if pruning else 0,
        pruner_val=pruner_subset(splits, cfg.search.pruner_val_rows, derived_seed(cfg.data.seed, "pruner_val"))
        if pruning else None,
        n_trials=budget, reuse_duplicates=cfg.search.reuse_duplicates,
        artifacts=artifact_store(cfg, run_dir) if graph_dir is not None else None,
        test_eval="best",  # the held-out figure of the best trials (never selected on)
    )


#: Test rows below which a search's held-out figure is too noisy to read (binomial SE ~0.009 at 2,000
#: rows and accuracy 0.8; 0.05 at 100).
MIN_TEST_ROWS = 2000


def _check_test_rows(splits: Any) -> None:
    """Warn when the test split (the best trials' held-out figure) has fewer than :data:`MIN_TEST_ROWS` rows."""
    test = getattr(splits, "test", None)
    n = len(test) if test is not None else None
    if n is not None and n < MIN_TEST_ROWS:
        log.warning("the test split has %d rows: the best trials' held-out test accuracy has a standard error of "
                    "about %.3f; set data.n_test to %d or more", n, (0.16 / max(n, 1)) ** 0.5, MIN_TEST_ROWS)


def artifact_store(cfg: RunConfig, run_dir: Path) -> Any:
    """The run's artifact store for best graphs: ``search.artifacts``, default ``<run dir>/artifacts``."""
    return open_artifacts(cfg.search.artifacts or run_dir / "artifacts")


def best_graph_path(trial: optuna.trial.FrozenTrial, run_dir: Path, store: Any, study_name: str) -> Path | None:
    """A local folder holding ``trial``'s saved graph: fetched from the artifact store into
    ``<run_dir>/<study>/graphs/`` when the trial has an artifact (whichever worker ran it), else the
    trial's ``graph_dir`` if it exists here. None when there is neither."""
    artifact = trial.user_attrs.get("graph_artifact")
    if artifact and store is not None:
        try:
            return fetch_graph(store, artifact, run_dir / study_name / "graphs" / f"trial-{trial.number:05d}")
        except SearchError as exc:
            log.warning("%s", exc)
    path = trial.user_attrs.get("graph_dir")
    return Path(path) if path and Path(path).is_dir() else None


def make_pruner(cfg: RunConfig) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``search.pruner`` (``NopPruner`` for ``none``)."""
    s = cfg.search
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials)
    if s.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s.eval_every)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=s.eval_every)
    return optuna.pruners.NopPruner()


def keep_best_graphs(study: optuna.Study, store: Any = None) -> list[str]:
    """Delete saved graphs of finished trials that are not best (tied for best, or on the Pareto front),
    locally and in the artifact store ``store``; returns kept dirs."""
    import shutil

    keep = {t.number for t in best_trials(study)}  # every tied trial: only the earliest has a graph
    kept = []
    for t in study.get_trials(deepcopy=False):
        path = t.user_attrs.get("graph_dir")
        if not path or not t.state.is_finished():
            continue
        if t.number in keep:
            kept.append(path)
            continue
        if Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
        if store is not None and t.user_attrs.get("graph_artifact"):
            remove_graph(store, t.user_attrs["graph_artifact"])
    return kept


def run_search(cfg: RunConfig, run_dir: str | Path | None = None, storage_url: str | None = None,
               resume: bool = False, n_trials: int | None = None, lifecycle: Lifecycle | None = None) -> RunResult:
    """Run every study of ``cfg``; write the summary, trial table and figures into the run folder.

    ``lifecycle`` builds, trains and evaluates (default: :func:`search.lifecycle.default_lifecycle`).
    """
    lifecycle = lifecycle or default_lifecycle()
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / cfg.search.name
    _quiet_optuna()
    storage, url, specs = prepare(cfg, run_dir, storage_url, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    data: list[Any] = []

    def get_splits() -> Any:  # loaded once, and only if some study has trials left
        if not data:
            data.append(load_data(cfg, lifecycle))
            _check_test_rows(data[0])
        return data[0]

    aborted = {}
    for spec in specs:
        _, why = run_study(cfg, spec, storage, get_splits, run_dir, n_trials, lifecycle)
        if why:
            aborted[spec.name] = why
    store = artifact_store(cfg, run_dir) if cfg.search.save_graphs else None
    compress_after_nas(cfg, specs, storage, get_splits, lifecycle, run_dir=run_dir, artifacts=store)
    return finish(storage, url, specs, run_dir, aborted, artifacts=store)


def compress_after_nas(cfg: RunConfig, specs: list[StudySpec], storage, get_splits: Callable[[], Any],
                       lifecycle: Lifecycle | None = None, *, run_dir: Path | None = None,
                       artifacts: Any = None) -> list[dict[str, Any]]:
    """Lab 2's question 3 in a live run: compress (and fine-tune) the best graph of each ``baseline``
    study whose run also has a ``compress`` / ``compress_finetune`` study of the same sampler and seed.

    The best baseline graph (saved by the study) is loaded, put through the run's compression
    pipeline and evaluated on the validation split and the test split (``test_accuracy_compressed``);
    with a ``compress_finetune`` sibling it is then fine-tuned with that study's fine-tune recipe and
    evaluated again (``test_accuracy_finetuned``). The result is stored as the
    baseline study's user attribute ``compress_after_nas`` (computed once; a resumed run reuses it)
    and shown in the summary beside the compression-aware bests. Returns the results.
    """
    lc = lifecycle or default_lifecycle()
    out = []
    for spec in specs:
        if spec.variant != "baseline" or len(spec.objectives) != 1:
            continue
        siblings = {s.variant: s.name for s in specs if s.sampler == spec.sampler and s.seed == spec.seed
                    and s.variant in ("compress", "compress_finetune")}
        if not siblings:
            continue
        study = optuna.load_study(study_name=spec.name, storage=storage)
        best = next((t for t in best_trials(study) if t.user_attrs.get("graph_dir")), None)
        done = study.user_attrs.get("compress_after_nas")
        if best is None or (done and done.get("trial") == best.number):
            out.extend([done] if done else [])
            continue
        path = best_graph_path(best, run_dir, artifacts, spec.name) if run_dir is not None else None
        path = path or Path(best.user_attrs["graph_dir"])
        if not path.is_dir():
            log.warning("compress-after-NAS: the best graph of %s (%s) is gone; skipped", spec.name, path)
            continue
        splits = get_splits()
        graph = lc.compress(lc.load(path), cfg.compression, splits)
        record: dict[str, Any] = {"trial": best.number, "arch": best.user_attrs.get("arch"),
                                  "accuracy_trained": best.user_attrs.get("accuracy_trained"),
                                  "compared_with": siblings}
        record["accuracy_compressed"] = lc.train_and_eval(graph, splits, cfg.train, train=False)["accuracy"]
        record["test_accuracy_compressed"] = _test_accuracy(lc, graph, splits, cfg)
        if "compress_finetune" in siblings:
            record["accuracy_finetuned"] = lc.train_and_eval(graph, splits, cfg.finetune_config(spec.seed))["accuracy"]
            record["test_accuracy_finetuned"] = _test_accuracy(lc, graph, splits, cfg)
        study.set_user_attr("compress_after_nas", record)
        log.info("compress-after-NAS for %s: %s", spec.name, record)
        out.append(record)
    return out


def _test_accuracy(lc: Lifecycle, graph: Any, splits: Any, cfg: RunConfig) -> float | None:
    """``graph``'s accuracy on the test split (held out: compress-after-NAS selected on validation rows);
    None when the loaded data have no test split."""
    from .objectives import has_test_rows

    if not has_test_rows(splits):
        return None
    return lc.train_and_eval(graph, splits, cfg.train, train=False, split="test")["accuracy"]


def finish(storage, url: str, specs: list[StudySpec], run_dir: Path, aborted: dict[str, str] | None = None,
           artifacts: Any = None) -> RunResult:
    """Write ``summary.{txt,json}``, ``trials.csv`` and the figures; return what was written.

    The best graphs in the summary are fetched from the artifact store ``artifacts`` into this run
    folder (whichever worker saved them), and the summary names these local copies.
    """
    from .plots import write_figures

    summary = summarize(storage, [s.name for s in specs])
    fetch_best_graphs(summary, run_dir, artifacts)
    files: dict[str, Any] = {
        # a file path for SQLite; else the printable URL (a str: Path() would merge its "//")
        "storage": Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else redact(url),
        "summary": run_dir / "summary.txt",
        "summary_json": run_dir / "summary.json",
        "trials": run_dir / "trials.csv",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (run_dir / "summary.txt").write_text(format_summary(summary) + "\n")
    write_trials_csv(storage, [s.name for s in specs], run_dir / "trials.csv")
    files.update(write_figures(storage, [s.name for s in specs], run_dir))
    return RunResult(run_dir, url, specs, summary, files, aborted or {})


def fetch_best_graphs(summary: list[dict[str, Any]], run_dir: Path, store: Any) -> None:
    """Point each best trial of ``summary`` that has a graph artifact at a local copy in ``run_dir``
    (downloaded from ``store`` if needed; left as it is when the store does not hold it)."""
    if store is None:
        return
    for study in summary:
        for row in study["best"]:
            if not row.get("graph_artifact"):
                continue
            dest = run_dir / study["study"] / "graphs" / f"trial-{row['trial']:05d}"
            try:
                row["graph_dir"] = str(fetch_graph(store, row["graph_artifact"], dest))
            except SearchError as exc:
                log.warning("%s", exc)


def _quiet_optuna() -> None:
    """Optuna's per-trial logging only at -vv (ours reports trials)."""
    level = logging.getLogger().getEffectiveLevel()
    optuna.logging.set_verbosity(optuna.logging.INFO if level <= logging.DEBUG else optuna.logging.ERROR)
