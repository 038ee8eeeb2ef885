"""Progress output, with one rule for terminals and logs.

When the stream (stderr) is a terminal, progress is shown with ``tqdm`` bars, nested ones included.
When it is not (a log file, a pipe, CI), bars would write a line per refresh -- about 1,400 for the
quickstart -- so instead:

* a top-level bar (:func:`progress`: trials of a study, rows of a table, replay runs) writes one
  plain line per step, e.g. ``quickstart-grid: 3/6 trial  best=0.8120``;
* a nested bar (:func:`nested_progress`: training steps, evaluation batches) writes nothing.

Both are drop-in replacements for ``tqdm(...)`` (iterable or ``total=``, ``update``, ``set_postfix``,
``refresh``, ``n``, context manager). ``disable=True`` turns either off; ``disable=None`` keeps tqdm's
meaning, a bar on a terminal and nothing otherwise (for progress only worth showing interactively).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator, TextIO

__all__ = ["LineProgress", "is_terminal", "nested_progress", "progress"]


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class LineProgress:
    """A tqdm-like counter that writes one line per change of ``n`` (for streams that are not terminals)."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "it", initial: int = 0, file: TextIO | None = None, **_: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc or ""
        self.unit = unit
        self.n = initial
        self.file = file
        self.postfix = ""
        self._printed = initial

    # -- tqdm's interface
    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = "  ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Write a line if ``n`` changed since the last one."""
        if self.n == self._printed:
            return
        self._printed = self.n
        of = f"/{self.total}" if self.total is not None else ""
        head = f"{self.desc}: " if self.desc else ""
        tail = f"  {self.postfix}" if self.postfix else ""
        stream = self.file if self.file is not None else sys.stderr
        stream.write(f"{head}{self.n}{of} {self.unit}{tail}\n")
        stream.flush()

    def close(self) -> None:
        pass


def _tqdm(iterable: Any, kwargs: dict[str, Any]):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any):
    """A top-level progress bar: ``tqdm`` on a terminal, else a :class:`LineProgress` (one line per step).

    Takes ``tqdm``'s arguments (``total``, ``desc``, ``unit``, ``initial``, ``file``, ``disable`` ...).
    """
    terminal = is_terminal(kwargs.get("file"))
    if "disable" not in kwargs:
        kwargs["disable"] = False
    elif kwargs["disable"] is None:
        kwargs["disable"] = not terminal
    if kwargs["disable"] or terminal:
        return _tqdm(iterable, kwargs)
    return LineProgress(iterable, **kwargs)


def nested_progress(iterable: Iterable[Any] | None = None, **kwargs: Any):
    """A bar inside another (training steps, evaluation batches): ``tqdm`` on a terminal, else disabled
    (a pass-through that writes nothing)."""
    if kwargs.get("disable") is None:
        kwargs["disable"] = False
    if not is_terminal(kwargs.get("file")):
        kwargs["disable"] = True
    return _tqdm(iterable, kwargs)
