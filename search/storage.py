"""Optuna RDB storage for searches, and recovery of trials whose worker was interrupted."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import optuna_compat as compat
from .config import SearchError
from .storage_retry import StorageUnavailable, with_retry  # noqa: F401  (re-exported)



log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- storage

#: Prefix of a journal-file storage "URL": ``journal:PATH`` (Optuna's ``JournalStorage`` with a file backend).
JOURNAL_PREFIX = "journal:"
#: The extra that carries each database driver (a missing driver names it).
_DRIVER_EXTRAS = {"psycopg": "postgres", "psycopg2": "postgres"}


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"


def is_journal(url: str) -> bool:
    """Whether ``url`` names a journal file (``journal:PATH``) rather than an RDB URL."""
    return url.startswith(JOURNAL_PREFIX)


def redact(url: str) -> str:
    """``url`` as it can be printed: any password replaced by ``***``, nothing else changed.

    RDB URLs are rendered by SQLAlchemy (``postgresql://user:***@host:5432/db``,
    ``sqlite:///relative.db``, ``sqlite:////abs/path.db``); ``journal:PATH`` and other strings that
    are not URLs come back as they are.
    """
    if is_journal(url) or "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _missing_driver(exc: BaseException) -> str | None:
    """The extra to install when ``exc`` (or its cause) is a missing database driver module."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            root = exc.name.split(".")[0]
            if root in _DRIVER_EXTRAS:
                return _DRIVER_EXTRAS[root]
        exc = exc.__cause__ or exc.__context__
    return None


def open_storage(url: str, heartbeat_interval: int | None = 60,
                 retry_s: float | None = None) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``url``, connected now: SearchError naming the URL if it cannot be.

    ``journal:PATH``: a ``JournalStorage`` on the file ``PATH`` (several processes on one machine, or
    on a shared file system; no heartbeat). Anything else: an ``RDBStorage`` (with the heartbeat
    every ``heartbeat_interval`` seconds unless ``None``). A missing PostgreSQL driver is one line
    asking to install ``mase-lite[postgres]``. ``retry_s`` (``search.storage_retry_s``): later calls
    that fail while the storage is unreachable are retried for that long
    (:func:`search.storage_retry.with_retry`); ``None``: not wrapped.
    """
    storage = _open(url, heartbeat_interval)
    return storage if retry_s is None else with_retry(storage, retry_s, redact(url))


def _open(url: str, heartbeat_interval: int | None) -> optuna.storages.BaseStorage:
    if is_journal(url):
        return _open_journal(url)
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
        extra = _missing_driver(exc)
        if extra:
            raise SearchError(f"cannot open the study storage {redact(url)}: its database driver is not "
                              f"installed; install mase-lite[{extra}]") from exc
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SearchError(f"cannot open the study storage {redact(url)}: {type(exc).__name__}: {msg}") from exc


def _open_journal(url: str) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = Path(url[len(JOURNAL_PREFIX):]).expanduser()
    if not url[len(JOURNAL_PREFIX):].strip():
        raise SearchError(f"storage {url!r}: give the journal file, e.g. journal:/shared/run/optuna.journal")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # the open(O_EXCL) lock also works where symlinks do not (some network file systems)
            backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
            return optuna.storages.JournalStorage(backend)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SearchError(f"cannot open the study storage {url}: {type(exc).__name__}: {msg}") from exc


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether ``storage`` fails the trials of dead workers by itself (an RDB storage with a heartbeat)."""
    return compat.heartbeat_enabled(storage)


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


def study_names(storage: optuna.storages.BaseStorage) -> set[str]:
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
    enqueue_fixed(study, trial.params, {"retry_of": trial.number}, like=trial)
    log.warning("study %s: trial %d was interrupted; its configuration is queued again", study.study_name, trial.number)


def _stale_trial_callback(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat: a trial whose worker stopped beating was failed by Optuna; run it again."""
    _requeue(study, trial)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker on this host is gone, and requeue every interrupted trial.

    Returns the numbers of the trials requeued.
    """
    storage = compat.storage_of(study)
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING and _worker_gone(t):
            tid = compat.trial_id_of(t)
            try:
                storage.set_trial_user_attr(tid, "interrupted", True)
                storage.set_trial_user_attr(tid, "fail_reason",
                                            f"interrupted: worker {t.user_attrs.get('worker', '?')} stopped mid-trial")
                storage.set_trial_state_values(tid, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
            t = storage.get_trial(tid)
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            _requeue(study, t)
            out.append(t.number)
    return out


def is_early_stopped(trial: FrozenTrial) -> bool:
    """Whether a trial was stopped by the study's pruner (it trained, so it counts against the budget),
    as opposed to one pruned because its architecture cannot be built (it cost nothing)."""
    return trial.state == TrialState.PRUNED and bool(trial.user_attrs.get("early_stopped"))


def is_counted(trial: FrozenTrial, interrupted: set[int]) -> bool:
    """Whether a finished trial used the budget: complete (reused ones too), early-stopped by the
    pruner, or failed other than by an interruption (``interrupted``: :func:`interrupted_numbers`)."""
    return (trial.state == TrialState.COMPLETE or is_early_stopped(trial)
            or (trial.state == TrialState.FAIL and trial.number not in interrupted))


def n_counted(study: optuna.Study) -> int:
    """Trials that used the budget: complete, early-stopped by the pruner, or failed other than by an
    interruption."""
    trials = study.get_trials(deepcopy=False)
    skip = interrupted_numbers(trials)
    return sum(is_counted(t, skip) for t in trials)


# --------------------------------------------------------------------------- several workers
#
# Exact budgets with several workers. Trial numbers are unique and follow creation order in every
# storage (the RDB storage creates a trial under a row lock on its study; a journal is one ordered
# log), so a trial that might still use the budget is RUNNING or WAITING, or has finished counted.
# Two checks use that:
#
# * before a worker creates a trial (:func:`budget_state`, like Optuna's ``MaxTrialsCallback``):
#   only when counted + running trials leave a slot; otherwise it waits for the running ones (one
#   of them may be interrupted and queued again) or stops;
# * inside the trial, at its start and again before it reports its result (:func:`admitted`): it
#   goes on only while fewer than ``n_trials`` trials numbered below it are counted, running or
#   waiting. Of the trials that end up counted, take the highest-numbered one: when it last checked,
#   every lower-numbered trial that ends up counted already existed and was counted, running or
#   waiting, so fewer than ``n_trials`` of them are counted and the total is at most ``n_trials``.
#   A trial that fails the check is pruned with ``over_budget`` (it does not count; a queued
#   configuration, e.g. a grid point, is queued again). Since the budget is only reached when the
#   loop finds ``n_trials`` counted, the total is exactly ``n_trials``.


def admitted(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` may use the budget: fewer than ``n_trials`` trials numbered below it
    are counted, running or waiting (see the comment above)."""
    trials = study.get_trials(deepcopy=False)
    skip = interrupted_numbers(trials)
    ahead = sum(t.number < number and (t.state in (TrialState.RUNNING, TrialState.WAITING) or is_counted(t, skip))
                for t in trials)
    return ahead < n_trials


def _on_this_host(trial: FrozenTrial) -> bool:
    worker = trial.user_attrs.get("worker")
    return worker is None or worker.rpartition(":")[0] == socket.gethostname()


def budget_state(study: optuna.Study, n_trials: int, queue_only: bool = False) -> str:
    """What a worker does next: ``"go"`` (start a trial), ``"wait"`` (the running trials fill the
    budget, but one of them may still be interrupted and queued again) or ``"done"``.

    ``queue_only``: trials come only from the queue (grid: its points are queued when the study is
    made), so with no waiting trial there is nothing to start. Running trials are waited for when a
    dead worker's trial would be found out: with a heartbeat (RDB), or when it runs on this host.
    """
    trials = study.get_trials(deepcopy=False)
    skip = interrupted_numbers(trials)
    done = sum(is_counted(t, skip) for t in trials)
    if done >= n_trials:
        return "done"
    running = [t for t in trials if t.state == TrialState.RUNNING]
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if done + len(running) < n_trials and (waiting or not queue_only):
        return "go"
    if running and (has_heartbeat(compat.storage_of(study)) or any(_on_this_host(t) for t in running)):
        return "wait"
    if running:
        log.info("study %s: %d trials still run on other hosts; without a heartbeat this worker cannot tell "
                 "whether they finish (run again with --resume if one of them died)", study.study_name, len(running))
    return "done"


def fail_dead_workers(study: optuna.Study) -> list[int]:
    """Fail the trials of dead workers now: stale heartbeats (RDB) and gone processes on this host;
    their configurations are queued again. Returns the numbers requeued."""
    optuna.storages.fail_stale_trials(study)
    return recover_interrupted(study)


def requeue_over_budget(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue again the fixed configuration of a trial dropped by :func:`admitted` (a grid point or a
    retry), keeping its grid point; a sampled one is not (the sampler proposes again). Returns whether queued."""
    fixed = trial.system_attrs.get("fixed_params")
    if not fixed:
        return False
    attrs = {"requeue_of": trial.number}
    for key in ("retry_of", "grid_point"):
        if trial.user_attrs.get(key) is not None:
            attrs[key] = trial.user_attrs[key]
    enqueue_fixed(study, fixed, attrs, like=trial)
    return True


def enqueue_fixed(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any],
                  like: FrozenTrial | None = None, grid: dict[str, Any] | None = None) -> None:
    """Queue a trial of fixed ``params`` with all its attributes in ONE storage write (as
    ``enqueue_trial`` does, plus the grid attributes): another worker may take a queued trial the
    moment it exists, so attributes added afterwards could miss it. ``like``: a trial whose grid point
    (``grid_id``, ``search_space``; GridSampler needs them on every trial) the new one takes;
    ``grid``: those attributes given directly."""
    system = {"fixed_params": dict(params)}
    if like is not None and "grid_id" in like.system_attrs:
        system.update({k: like.system_attrs[k] for k in ("grid_id", "search_space")})
    system.update(grid or {})
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=dict(user_attrs),
                                              system_attrs=system))


def enqueue_grid(study: optuna.Study, sampler: optuna.samplers.GridSampler) -> int:
    """Queue every point of ``sampler``'s grid, in its (seeded) order, each with its ``grid_id``, so
    that several workers take distinct points from the queue (Optuna's ``GridSampler`` alone may give
    two workers the same point). Call once, by the process that created the study. Returns the count."""
    names, points, space = compat.grid_points(sampler)
    for grid_id, values in enumerate(points):
        enqueue_fixed(study, dict(zip(names, values)), {"grid_point": grid_id},
                      grid={"grid_id": grid_id, "search_space": space})
    return len(points)


def wait_for_grid(study: optuna.Study, timeout_s: float = 120.0, poll_s: float = 0.2) -> None:
    """A worker that joined a grid study waits until its creator has queued every point
    (``grid_queued``), so that it neither samples a point itself nor finds the queue empty too early."""
    deadline = time.monotonic() + timeout_s
    # the creator queues the grid before it writes the fingerprint: a study with a fingerprint and no
    # grid_queued was made before grids were queued (it samples its points as it always did)
    while not {"grid_queued", "fingerprint"} & set(study.user_attrs):
        if time.monotonic() > deadline:
            raise SearchError(f"study {study.study_name}: the process that created this grid study did not queue "
                              f"its points within {timeout_s:.0f} s (it may have died); delete the study and run again")
        time.sleep(poll_s)


class Budget:
    """Stops a study when its budget is used, or after too many failures in a row (then ``aborted``).

    A callback of ``study.optimize`` (it calls ``study.stop()``), or of a loop of one's own
    (``in_optimize=False``: it only sets ``stopped``)."""

    def __init__(self, n_trials: int, max_failures: int, bar=None, in_optimize: bool = True):
        self.n_trials = n_trials
        self.max_failures = max_failures
        self.streak = 0
        self.aborted: str | None = None
        self.bar = bar
        self.in_optimize = in_optimize
        self.stopped = False

    def _stop(self, study: optuna.Study) -> None:
        self.stopped = True
        if self.in_optimize:
            study.stop()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted"):
            self.streak += 1  # (a heartbeat-failed trial of another worker never reaches this callback)
        elif trial.state == TrialState.COMPLETE or is_early_stopped(trial):
            self.streak = 0
        done = n_counted(study)
        if self.bar is not None:
            self.bar.n = min(done, self.n_trials)
            best = _best_accuracy(study)
            if best is not None:
                self.bar.set_postfix(best=f"{best:.4f}", refresh=False)
            self.bar.refresh()
        if done >= self.n_trials:
            self._stop(study)
        elif self.max_failures and self.streak >= self.max_failures:
            self.aborted = f"{self.streak} trials in a row failed (last: {trial.user_attrs.get('fail_reason', '?')})"
            log.error("study %s stopped: %s", study.study_name, self.aborted)
            self._stop(study)


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether ``trial`` meets its constraints (``search.size_budget_bytes``; no constraints: yes).
    Infeasible trials never count as best: not in the summary, the figures nor the progress bar."""
    return not any(c > 0 for c in trial.constraints.values())


def _best_accuracy(study: optuna.Study) -> float | None:
    accs = [t.user_attrs.get("accuracy") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if is_feasible(t)]
    accs = [a for a in accs if a is not None]
    return max(accs) if accs else None


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's best trials, earliest first: every complete trial whose value ties the best value
    (one objective; Optuna picks an arbitrary one of tied trials, and storages order them
    differently), or the Pareto front (several objectives)."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values
            and is_feasible(t)]  # feasible only (search.size_budget_bytes)
    if not done:
        return []
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best = pick(t.values[0] for t in done)
    return sorted((t for t in done if t.values[0] == best), key=lambda t: t.number)



# --------------------------------------------------------------------------- artifacts


def open_artifacts(path: str | Path) -> Any:
    """The Optuna ``FileSystemArtifactStore`` at ``path`` (made if missing): where best graphs are uploaded,
    e.g. a folder on a file system that every worker mounts."""
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"search.artifacts = {str(path)!r}: cannot create the artifact folder: {exc}") from exc
    return FileSystemArtifactStore(str(path))


def upload_graph(store: Any, graph_dir: Path, trial: optuna.Trial | FrozenTrial,
                 storage: optuna.storages.BaseStorage | None = None) -> str:
    """Upload a saved graph folder to ``store`` as one ``.tar`` artifact of ``trial``; returns its id."""
    import tarfile
    import tempfile

    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory(prefix="mase-lite-graph-") as tmp:
        tar = Path(tmp) / f"{Path(graph_dir).name}.tar"
        with tarfile.open(tar, "w") as fh:
            fh.add(graph_dir, arcname=".")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return upload_artifact(artifact_store=store, file_path=str(tar), study_or_trial=trial, storage=storage)


def fetch_graph(store: Any, artifact_id: str, dest: Path) -> Path:
    """Download the graph artifact ``artifact_id`` from ``store`` and unpack it into ``dest`` (kept if
    it is there already); returns ``dest``. SearchError if the store does not hold it."""
    import tarfile
    import tempfile

    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    with tempfile.TemporaryDirectory(prefix="mase-lite-graph-") as tmp:
        tar = Path(tmp) / "graph.tar"
        try:
            download_artifact(artifact_store=store, file_path=str(tar), artifact_id=artifact_id)
        except ArtifactNotFound as exc:
            raise SearchError(f"graph artifact {artifact_id} is not in the artifact store ({exc}); "
                              f"is search.artifacts the same folder for every worker?") from exc
        part = dest.with_name(dest.name + f".part-{os.getpid()}")
        with tarfile.open(tar) as fh:
            fh.extractall(part, filter="data")
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            part.rename(dest)
        except OSError:  # another reader got there first
            import shutil

            shutil.rmtree(part, ignore_errors=True)
    return dest


def remove_graph(store: Any, artifact_id: str) -> None:
    """Remove a graph artifact (missing ones are ignored)."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        store.remove(artifact_id)
    except (ArtifactNotFound, FileNotFoundError):
        pass
