"""Named registries with one rule: a name is registered once.

Passes (:data:`passes.registry.PASSES`), number formats (``passes.formats``), samplers
(:data:`search.samplers.SAMPLERS`) and model families (:mod:`mase_lite.families`) are each a
:class:`Registry`. The rule, for all of them:

* registering a name that is already taken by a *different* entry is a
  :class:`DuplicateRegistration` naming the registry, the name and what holds it -- never a silent
  overwrite;
* registering the *same* entry again under its name is a no-op (a module imported twice);
* a name is a non-empty string;
* looking up an unknown name is a :class:`~mase_lite.errors.ConfigError` naming the field and
  listing the registered names (:meth:`Registry.lookup`).

To replace an entry (a test double), :meth:`Registry.unregister` it first (or use
``monkeypatch.setitem`` on a name that is not registered: deleting restores the registry).
"""

from __future__ import annotations

from collections import UserDict
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError, MaseError

T = TypeVar("T")


class DuplicateRegistration(MaseError, ValueError):
    """A name is already registered to a different entry of the same registry."""


def _describe(obj: Any) -> str:
    """``module.qualname`` of a function or class (else its repr)."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{mod}.{qual}" if mod and qual else repr(obj)


class Registry(UserDict, Generic[T]):
    """A ``name -> entry`` mapping that refuses to rebind a name (see the module docstring).

    ``kind`` names the registry in messages ("pass", "number format", "sampler", ...).
    ``identity(entry)`` is what makes two entries "the same" (default: the entry itself; e.g. a
    pass spec's function), compared with ``is``; it is also what messages name.
    """

    def __init__(self, kind: str, identity: Callable[[T], Any] | None = None) -> None:
        self.kind = kind
        self._identity = identity or (lambda entry: entry)
        super().__init__()

    def __setitem__(self, name: str, entry: T) -> None:
        if not isinstance(name, str) or not name:
            raise DuplicateRegistration(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self.data:
            old, new = self._identity(self.data[name]), self._identity(entry)
            if old is new:
                return
            raise DuplicateRegistration(
                f"{self.kind} {name!r} is already registered (by {_describe(old)}); cannot register "
                f"{_describe(new)} under the same name: choose another name")
        self.data[name] = entry

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` (the rule above); returns ``entry``."""
        self[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return the entry of ``name`` (KeyError if there is none)."""
        return self.data.pop(name)

    def lookup(self, name: Any, field: str) -> T:
        """The entry of ``name``; ConfigError naming ``field`` and the registered names otherwise."""
        if isinstance(name, str) and name in self.data:
            return self.data[name]
        from .config import _suggest

        hint = _suggest(name, list(self.data)) if isinstance(name, str) else ""
        raise ConfigError(f"{field} = {name!r} is not a registered {self.kind}{hint}; choose one of: "
                          f"{', '.join(map(repr, sorted(self.data)))}")
