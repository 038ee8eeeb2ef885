"""A scope in which parameters are frozen, so values derived from them may be cached.

Transformed graphs compute derived weights on every call (e.g. a quantised and masked weight). In
evaluation that work repeats identically for every batch, so it is worth caching -- but only while
the weights cannot change. Detecting a change is not reliable: fused optimizers update parameters
without bumping ``tensor._version``, and ``.data`` edits bump nothing. So a cache lives exactly as
long as a :func:`frozen_weights` block, which the caller opens where it knows no weight changes
(:func:`mase_lite.training.evaluate` opens one per evaluation), and is dropped when the block ends.

Contract: code inside the block must not modify parameters or buffers; functions that derive
values from them may store those values in :func:`scope_cache` (keyed by whatever identifies the
inputs) and reuse them until the block ends. Outside any block :func:`scope_cache` is ``None`` and
nothing is cached. Blocks nest; an inner block gets its own cache.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

__all__ = ["frozen_weights", "scope_cache"]

_CACHE: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("mase_lite_weight_cache", default=None)


@contextlib.contextmanager
def frozen_weights() -> Iterator[dict[Any, Any]]:
    """Declare that no parameter or buffer changes inside the block; yields the block's cache."""
    cache: dict[Any, Any] = {}
    token = _CACHE.set(cache)
    try:
        yield cache
    finally:
        _CACHE.reset(token)
        cache.clear()


def scope_cache() -> dict[Any, Any] | None:
    """The cache of the innermost :func:`frozen_weights` block, or ``None`` outside one."""
    return _CACHE.get()
