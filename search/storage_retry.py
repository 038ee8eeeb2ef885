"""Storage calls that survive an outage: a study storage wrapper that retries with backoff.

:func:`with_retry` wraps an opened storage so that every call a study makes to it (Optuna's
``BaseStorage`` methods, and the heartbeat's) is retried while it fails for a reason that may pass:
the database server is down or restarting, a connection was dropped, the file system holding a
journal failed (an ``OSError``). The calls are retried with exponential backoff (0.5 s doubling to
5 s) for up to ``search.storage_retry_s`` seconds from the first failure of the call; then
:class:`StorageUnavailable` (a one-line :class:`~mase_lite.errors.MaseError`) is raised, and later
calls try once only until one succeeds. Other errors (a missing study, a finished trial, a
duplicated name...) are raised at once.

Retrying a write that was applied but whose acknowledgement was lost: a trial's final state is
recognised as already stored (the retry then succeeds); a new trial or study could in principle be
created twice (the window is one commit's acknowledgement). A missed heartbeat is not retried: the
next beat records it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from mase_lite.errors import MaseError

from . import optuna_compat as compat

log = logging.getLogger(__name__)

#: Seconds before the first retry; doubled after each failed retry up to :data:`MAX_DELAY_S`.
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 5.0


class StorageUnavailable(MaseError):
    """The study storage stayed unreachable for ``search.storage_retry_s`` seconds (the CLI prints
    its one line and exits with status 2)."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass by itself: a lost or refused database connection, a server that
    shuts down, a busy SQLite file, a failed file system call (journal). Optuna's own errors (no
    such study or trial, a finished trial, a duplicated study), ``KeyError`` and ``ValueError`` are not."""
    import sqlalchemy.exc as sa

    if isinstance(exc, (KeyError, ValueError)) or (
            isinstance(exc, optuna.exceptions.OptunaError)
            and not isinstance(exc, optuna.exceptions.StorageInternalError)):
        return False
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (OSError, sa.OperationalError, sa.InterfaceError, sa.TimeoutError,
                            sa.DisconnectionError, sa.PendingRollbackError)):
            return True
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of the database driver's or the file system's error in ``exc``'s chain
    (the innermost one; else the outermost exception other than Optuna's generic StorageInternalError)."""
    import sqlalchemy.exc as sa

    said, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (OSError, sa.DBAPIError)) or (
                said is None and not isinstance(exc, optuna.exceptions.StorageInternalError)):
            said = exc  # the driver's or the file system's error, else the outermost one
        exc = exc.__cause__ or exc.__context__
    text = str(said).strip().splitlines()
    return f"{type(said).__name__}: {text[0] if text else ''}".rstrip(": ")


class _Retrying(optuna.storages.BaseStorage):
    """Forwards every storage call to ``inner``, retrying transient failures (see the module)."""

    def __init__(self, inner: optuna.storages.BaseStorage, retry_s: float, name: str,
                 raw: optuna.storages.BaseStorage | None = None):
        self._inner = inner  # what the calls go to (an RDB storage behind Optuna's trial cache)
        self._raw = raw if raw is not None else inner  # the storage as opened
        self.retry_s = float(retry_s)
        self.name = name  # the storage as it can be printed (no password)
        self._lock = threading.Lock()
        self._down_since: float | None = None  # first failure of the current outage
        self._gave_up = False  # the last outage outlasted retry_s: try once until a call succeeds

    def __getattr__(self, name: str) -> Any:  # anything else (e.g. an RDB storage's engine)
        if name in ("_inner", "_raw"):
            raise AttributeError(name)
        return getattr(self._raw, name)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self._inner, method)
        delay, deadline, retried = FIRST_DELAY_S, None, False
        while True:
            try:
                out = fn(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if retried and method == "set_trial_state_values" and self._already_told(*args, **kwargs):
                    return True  # the lost acknowledgement of our own write
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                deadline = deadline or self._outage(method, exc)
                now = time.monotonic()
                if now >= deadline:
                    self._gave_up = True
                    raise StorageUnavailable(
                        f"the study storage {self.name} stayed unreachable for {self.retry_s:g} s "
                        f"({method}: {_first_line(exc)}); give search.storage_retry_s more time, or run "
                        f"again with --resume once it is back") from exc
                time.sleep(min(delay, deadline - now))
                delay, retried = min(2 * delay, MAX_DELAY_S), True
                self._reset_session()
                continue
            self._back()
            return out

    def _outage(self, method: str, exc: BaseException) -> float:
        """Note a failure (the first of an outage is logged); returns the deadline of the call's retries."""
        now = time.monotonic()
        with self._lock:
            if self._down_since is None:
                self._down_since = now
                if not self._gave_up:
                    log.warning("the study storage %s failed (%s: %s); retrying for up to %g s "
                                "(search.storage_retry_s)", self.name, method, _first_line(exc), self.retry_s)
        return now + (0.0 if self._gave_up else self.retry_s)

    def _back(self) -> None:
        if self._down_since is None and not self._gave_up:
            return
        with self._lock:
            if self._down_since is not None:
                log.warning("the study storage %s is back after %.1f s", self.name, time.monotonic() - self._down_since)
            self._down_since, self._gave_up = None, False

    def _reset_session(self) -> None:
        """Drop this thread's database session (it may hold a dead connection) before a retry."""
        try:
            self._inner.remove_session()
        except Exception:  # a dead session can fail to close; the next call opens a new one
            log.debug("remove_session failed before a retry", exc_info=True)

    def _already_told(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """Whether trial ``trial_id`` is stored with ``state`` and ``values`` already."""
        stored = self._inner.get_trial(trial_id)
        return stored.state == state and (values is None or list(stored.values or []) == list(values))

    # -- heartbeat (only on storages that have one: see with_retry)
    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._inner.record_heartbeat(trial_id)
        except Exception as exc:  # a missed beat is recorded by the next one
            if not is_transient(exc):
                raise
            log.debug("heartbeat of trial id %d not recorded: %s", trial_id, _first_line(exc))


def _forward(method: str) -> Any:
    def call(self: _Retrying, *args: Any, **kwargs: Any) -> Any:
        return self._call(method, *args, **kwargs)

    call.__name__ = call.__qualname__ = method
    return call


_METHODS = {"__module__": __name__, **{m: _forward(m) for m in compat.storage_methods()}}
#: The wrapper of a storage without a heartbeat (journal, or RDB with ``heartbeat_interval = None``).
RetryingStorage = type("RetryingStorage", (_Retrying,), dict(_METHODS, __doc__=_Retrying.__doc__))
#: The wrapper of a storage with Optuna's heartbeat (RDB): ``fail_stale_trials`` still works through it.
RetryingHeartbeatStorage = type("RetryingHeartbeatStorage", (_Retrying, compat.heartbeat_base()), {
    **_METHODS, **{m: _forward(m) for m in compat.HEARTBEAT_METHODS if m != "record_heartbeat"},
    "record_heartbeat": _Retrying.record_heartbeat, "__doc__": _Retrying.__doc__})


def with_retry(storage: optuna.storages.BaseStorage, retry_s: float, name: str) -> optuna.storages.BaseStorage:
    """``storage`` with its calls retried for up to ``retry_s`` seconds (``0``: not retried, but an
    outage is still the one-line :class:`StorageUnavailable`); ``name``: the storage as it can be printed."""
    if isinstance(storage, _Retrying):
        return storage
    inner = compat.cached_storage(storage)
    cls = RetryingHeartbeatStorage if compat.is_heartbeat_storage(inner) else RetryingStorage
    return cls(inner, retry_s, name, raw=storage)
