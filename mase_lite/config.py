"""Typed configuration dataclasses that round-trip to dict/TOML and validate at the edge.

A config is a ``@dataclass`` subclassing :class:`Config`. ``Cls.from_dict(d)`` checks every key and
value against the field types (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``Optional``,
``list[...]``, ``dict[str, ...]`` and nested configs) and raises :class:`ConfigError` naming the
offending field (with its dotted path) and the valid keys or values. ``to_dict()`` is the inverse.
Per-field checks beyond types go in ``validate()``, which ``from_dict`` calls.

A number read into a config must be finite: ``nan``/``inf`` (TOML's literals, ``--set``, a float
anywhere in a list, a table or an ``Any``-typed value) is one ConfigError naming the field's path,
and :func:`check_range` refuses them too. A field whose values are measured rather than chosen (a
recorded calibration range, which may legitimately be infinite) opts out with
``dataclasses.field(..., metadata={"finite": False})``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union

from .errors import ConfigError

C = TypeVar("C", bound="Config")


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_error(path: str, key: str, valid: list[str]) -> ConfigError:
    """The error for a key that is not one of ``valid``."""
    where = f"{path}." if path else ""
    return ConfigError(
        f"unknown config key '{where}{key}'{_suggest(key, valid)}; valid keys: {', '.join(sorted(valid))}"
    )


def check_choice(path: str, value: Any, choices: typing.Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a ConfigError listing them."""
    choices = list(choices)
    if value not in choices:
        hint = _suggest(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ConfigError(f"{path} = {value!r} is not valid{hint}; choose one of: {', '.join(map(repr, choices))}")
    return value


def check_finite(path: str, value: Any) -> None:
    """Raise a ConfigError naming the first ``nan``/``inf`` in ``value`` (lists and tables walked)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path} = {value!r} is not a finite number; nan and inf are not valid values, "
                          f"give a finite number")
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_finite(f"{path}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(f"{path}[{i}]", v)


def check_range(path: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Raise a ConfigError unless ``value`` is finite and ``lo <= value <= hi`` (either bound may be None)."""
    check_finite(path, value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else repr(lo)
        hi_s = "inf" if hi is None else repr(hi)
        raise ConfigError(f"{path} = {value!r} is out of range; it must be in [{lo_s}, {hi_s}]")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(path: str, value: Any, tp: Any, finite: bool = True) -> Any:
    """``value`` as type ``tp``; ``finite``: refuse ``nan``/``inf`` in it (see :func:`check_finite`)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if finite and (tp is Any or origin in (Union, types.UnionType) or isinstance(value, float)):
        check_finite(path, value)  # before a union's alternatives could hide which item is not finite
    if tp is Any:
        return value
    if origin is Literal:
        return check_choice(path, value, args)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, value, arg, finite)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ConfigError(f"{path} = {value!r} must be {names}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        return [_coerce(f"{path}[{i}]", v, item_tp, finite) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a table/dict, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(f"{path}.{k}", v, val_tp, finite) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        return tp.from_dict(value, path=path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path} must be {_type_name(tp)}, got {value!r}")
    return value


@dataclasses.dataclass
class Config:
    """Base class of typed configs: strict ``from_dict``, ``to_dict``, TOML loading."""

    def validate(self, path: str = "") -> None:
        """Check constraints between fields; raise ConfigError naming the field. Override as needed."""

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None, path: str = "") -> C:
        """Build and validate a config from a mapping; the mapping is not modified."""
        if data is None:
            data = {}
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or cls.__name__} must be a table/dict, got {data!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in data:
            if key not in fields:
                raise unknown_key_error(path, str(key), list(fields))
        kwargs = {}
        for name, value in data.items():
            finite = fields[name].metadata.get("finite", True)
            kwargs[name] = _coerce(f"{path}.{name}" if path else name, value, hints[name], finite)
        missing = [
            n
            for n, f in fields.items()
            if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            where = f"{path}." if path else ""
            raise ConfigError(f"missing required config key {where}{missing[0]}")
        obj = cls(**kwargs)
        obj.validate(path)
        return obj

    def to_dict(self) -> dict[str, Any]:
        """A plain-dict (TOML/JSON-able) copy; ``None`` values are dropped."""

        def conv(v: Any) -> Any:
            if isinstance(v, Config):
                return v.to_dict()
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed."""
        return type(self).from_dict({**self.to_dict(), **changes})


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning file and syntax errors into ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
