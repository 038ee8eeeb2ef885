"""One semantic comparison of a stored record with this config, and one list of the fields that do
not change results.

A study's fingerprint (``--resume``, ``bench build``; :func:`search.config.fingerprint_difference`)
and a benchmark table's manifest (:func:`search.bench.table.check_compatible`) are both compared with
:func:`config_difference`, so a study and a table agree on what is a difference.

The rules, inside a config section (``sections``: where ``[model]``, ``[data]``, ``[train]``,
``[finetune]``, ``[search.sampler_options]`` and ``[compression]`` sit in the compared dicts):

* a field of :data:`NEUTRAL_FIELDS` is never compared;
* a field absent on one side counts as its default (a field added to the config classes since the
  record was written never invalidates it); one that this mase-lite does not know, absent on one
  side, is not compared;
* the compression pipeline is compared with each pass's config defaults filled in (:func:`normalize_pipeline`).

Everywhere: numbers compare by value (``1 == 1.0``), booleans only with booleans, lists in order.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Collection, Mapping

from mase_lite.models import ARCH_FIELDS

log = logging.getLogger(__name__)

#: ``[train]`` and ``[finetune]`` fields that do not change results (reason beside each).
RECIPE_NEUTRAL: dict[str, str] = {
    "progress": "a progress bar",
    "num_threads": "CPU threads: speed only",
    "log_every": "how often the training loss is logged",
    "eval_every": "how often the training callback runs; a pruner's reports use search.eval_every "
                  "(in the fingerprint's pruner section)",
    "eval_batch_size": "rows per evaluation batch: the same rows are scored",
}

#: Config fields that do not change results, by section, with the reason: never compared.
#: ``finetune.seed`` is compared: a study derives it from its own seed unless ``[finetune]`` sets it
#: (a table, whose rows derive it from their seeds, compares it only when ``[finetune]`` sets it).
NEUTRAL_FIELDS: dict[str, dict[str, str]] = {
    "data": {"data_dir": "where the dataset files are, not which rows are drawn",
             "cache_dir": "where tokenised splits are cached"},
    "train": {**RECIPE_NEUTRAL,
              "seed": "a study trains with its own seed (search.seeds), a table row with its seed axis"},
    "finetune": dict(RECIPE_NEUTRAL),
    "model": {"seed": "set per study from search.seeds (per row in a table)",
              **{p: "searched: compared as the space's lists (a pretrained base: its checkpoint's)"
                 for p in ARCH_FIELDS}},
}

#: The section kind of a compression pipeline (compared normalised).
PIPELINE = "compression"


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


#: A key missing from one side of a comparison.
ABSENT: Any = _Absent()


@dataclasses.dataclass(frozen=True)
class Difference:
    """The first difference: its dotted ``path`` and the two values (:data:`ABSENT` where missing)."""

    path: str
    stored: Any
    current: Any


def show(value: Any, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters (``(absent)`` for :data:`ABSENT`)."""
    r = repr(value)
    return r if len(r) <= width else r[: width - 3] + "..."


def config_difference(stored: Any, current: Any, sections: Mapping[str, str],
                      ignore: Collection[str] = ()) -> Difference | None:
    """The first difference that changes results between ``stored`` (a record) and ``current``
    (this config), in ``current``'s key order, or ``None``.

    ``sections``: dotted path -> section kind (a key of :data:`NEUTRAL_FIELDS`, ``sampler_options``
    or :data:`PIPELINE`). ``ignore``: dotted paths the record does not pin down (not compared).
    """
    return _walk(stored, current, "", sections, ignore)


def _walk(a: Any, b: Any, path: str, sections: Mapping[str, str], ignore: Collection[str]) -> Difference | None:
    kind = sections.get(path)
    if kind == PIPELINE:
        return _pipeline_difference(a, b, path)
    if kind is not None and isinstance(a, Mapping) and isinstance(b, Mapping):
        return _section_difference(a, b, path, kind, ignore)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in _keys(a, b):
            sub = f"{path}.{key}" if path else str(key)
            if sub not in ignore:
                diff = _walk(a.get(key, ABSENT), b.get(key, ABSENT), sub, sections, ignore)
                if diff:
                    return diff
        return None
    return None if _same(a, b) else Difference(path, a, b)


def _keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Any]:
    return [*b, *(k for k in a if k not in b)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _section_difference(a: Mapping[str, Any], b: Mapping[str, Any], path: str, kind: str,
                        ignore: Collection[str]) -> Difference | None:
    """A config section, field by field (see the module docstring)."""
    defaults = section_defaults(kind)
    neutral = NEUTRAL_FIELDS.get(kind, {})
    for key in _keys(a, b):
        sub = f"{path}.{key}"
        if key in neutral or sub in ignore:
            continue
        if (key not in a or key not in b) and key not in defaults:
            continue  # a field one side's mase-lite does not know, with no known default
        diff = _walk(a.get(key, defaults.get(key)), b.get(key, defaults.get(key)), sub, {}, ignore)
        if diff:
            if diff.path == sub:  # a missing field shows as (absent), unless its default is None (to_dict drops None)
                diff = Difference(sub, _shown(a, key, diff.stored), _shown(b, key, diff.current))
            return diff
    return None


def _shown(side: Mapping[str, Any], key: str, value: Any) -> Any:
    return value if key in side or value is None else ABSENT


def section_defaults(kind: str) -> dict[str, Any]:
    """``{field: default}`` of a section kind's config class, ``None`` defaults included (``{}``: none)."""
    from mase_lite.data import DataConfig
    from mase_lite.training import TrainConfig

    from .config import RunModelConfig
    from .samplers import SamplerOptions

    classes = {"model": RunModelConfig, "data": DataConfig, "train": TrainConfig, "finetune": TrainConfig,
               "sampler_options": SamplerOptions}
    cls = classes.get(kind)
    if cls is None:
        return {}
    d = cls().to_dict()
    return {f.name: d.get(f.name) for f in dataclasses.fields(cls)}


def normalize_pipeline(pipeline: Mapping[str, Any]) -> Any:
    """A pipeline as ``[[name, config with defaults filled], ...]`` (the plain dict if it cannot be parsed)."""
    try:
        from passes.pipeline import parse_pipeline
        from passes.registry import get_pass

        steps = parse_pipeline(copy.deepcopy(dict(pipeline)))
        return [[name, get_pass(name).config_cls.from_dict(copy.deepcopy(dict(cfg or {})), path=name).to_dict()]
                for name, cfg in steps]
    except Exception:  # an unknown pass, or passes not importable: compare as plain dicts
        log.debug("compression pipeline not normalised", exc_info=True)
        return copy.deepcopy(dict(pipeline))


def _pipeline_difference(a: Any, b: Any, path: str) -> Difference | None:
    """Two compression pipelines: the pass order, then each pass's config with its defaults filled in."""
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        return _walk(a, b, path, {}, ())
    ta, tb = normalize_pipeline(a), normalize_pipeline(b)
    if not (isinstance(ta, list) and isinstance(tb, list)):
        return _walk(a, b, path, {}, ())
    names_a, names_b = [n for n, _ in ta], [n for n, _ in tb]
    if names_a != names_b:
        return Difference(f"{path}.passes (pass order)", names_a, names_b)
    for (name, ca), (_, cb) in zip(ta, tb):
        diff = _walk(ca, cb, f"{path}.passes.{name}", {}, ())
        if diff:
            return diff
    return None
