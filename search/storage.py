"""Study storages: opening an Optuna storage from a URL (an RDB URL, or ``journal:PATH``), printable URLs.

The rest of the storage layer has one module per concern: :mod:`search.liveness` (trials of dead
workers), :mod:`search.budget` (the budget protocol), :mod:`search.queue` (queued trials),
:mod:`search.artifacts` (best graphs), :mod:`search.best` (best trials) and
:mod:`search.storage_retry` (outages); their names are re-exported here for older imports.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import optuna

from .config import SearchError
from .liveness import has_heartbeat, stale_trial_callback
from .storage_retry import StorageUnavailable, with_retry

# re-exported for older imports (``from search.storage import n_counted``)
from .artifacts import fetch_graph, open_artifacts, remove_graph, upload_graph
from .best import _best_accuracy, best_trials, is_feasible  # noqa: F401
from .budget import Budget, admitted, budget_state, is_counted, is_early_stopped, n_counted
from .liveness import fail_dead_workers, interrupted_numbers, recover_interrupted
from .queue import enqueue_fixed, enqueue_grid, requeue_over_budget, wait_for_grid

__all__ = [
    "JOURNAL_PREFIX", "default_storage_url", "is_journal", "redact", "open_storage", "study_names", "has_heartbeat",
    "StorageUnavailable", "with_retry", "fetch_graph", "open_artifacts", "remove_graph", "upload_graph", "best_trials",
    "is_feasible", "Budget", "admitted", "budget_state", "is_counted", "is_early_stopped", "n_counted",
    "fail_dead_workers", "interrupted_numbers", "recover_interrupted", "enqueue_fixed", "enqueue_grid",
    "requeue_over_budget", "wait_for_grid",
]

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
                heartbeat_stale_trial_callback=stale_trial_callback if heartbeat_interval else None,
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

