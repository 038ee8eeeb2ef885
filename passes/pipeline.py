"""Running passes: one at a time (:func:`run_pass`) or as a pipeline from Python or TOML.

TOML pipelines follow MASE's style: one ``[passes.<name>]`` table per pass, run in document order::

    [passes.quantize]
    by = "type"
    [passes.quantize.linear.config]
    name = "integer"
    ...

    [passes.prune]
    weight = { sparsity = 0.5, method = "l1-norm", scope = "local" }

To run a pass twice, use an array of tables instead, each entry naming its pass::

    [[passes]]
    name = "prune"
    weight = { sparsity = 0.3 }
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from mase_lite.config import Config, load_toml
from mase_lite.errors import ConfigError, MaseError, PassError
from mase_lite.graph import HistoryEntry, MaseGraph

from .registry import PassContext, PassResult, PassSpec, get_pass

log = logging.getLogger(__name__)

PipelineSpec = list[tuple[str, Any]]


def run_pass(graph: MaseGraph, name: str, config: Config | Mapping[str, Any] | None = None, *,
             context: PassContext | None = None, version: int | None = None,
             _undo: list | None = None) -> tuple[MaseGraph, dict[str, Any]]:
    """Run pass ``name`` on ``graph`` and return ``(graph, info)``.

    ``context``: data for passes registered with ``takes_context=True`` (see
    :mod:`passes.registry`); other passes ignore it. ``version``: the pass version a replayed history
    entry was made with (``MaseGraph.load``); newer than the installed pass is a MaseError.

    What the runner does for every pass (passes do not):

    * validates the config first and never modifies the caller's config;
    * **analysis** passes run on ``graph`` itself, with no copy; if one fails, the node metadata it
      may have written is restored. One that changes the graph's code is a PassError (register it
      as a transform);
    * **transform** passes run on a structural copy that *shares* the parameter and buffer objects
      (:meth:`MaseGraph.copy` with ``share_tensors=True``); ``graph`` adopts the copy only if the
      pass succeeds, so on any error ``graph`` is exactly as it was (code, tensors, node metadata and
      annotations: the copy's metadata is its own), and tensors the pass leaves
      alone stay the same objects, so an optimizer built before the pass keeps training the graph.
      A pass therefore never edits an existing tensor in place: it registers a new one, or calls
      ``graph.write_tensor``, which the runner applies on success (``_undo``, for
      :func:`run_pipeline`: a list that receives ``(tensor, old value)`` of each write applied, so a
      later failure can restore them); the runner checks tensor
      version counters and reports a pass that edits in place as a PassError;
    * after a transform, once (passes do not): drops dead code, lints the graph, regenerates its code
      and refreshes the node metadata (:meth:`MaseGraph.recompile`, as torch.fx's ``PassManager``
      recompiles and lints after each pass); a graph that does not lint is a PassError naming the
      pass, with nothing committed;
    * records transform passes (and recorded analysis passes) in ``graph.history`` with the pass's
      version and its config with the *decisions* the pass returned (``PassResult``: its
      data-dependent choices) in place of the given values, for replay by ``MaseGraph.load``;
    * refuses (PassError) a pass that writes into its config or returns decisions that are not
      fields of its config.
    """
    spec = get_pass(name)
    if version is not None and version > spec.version:
        raise MaseError(f"history entry {name!r} was made by version {version} of the pass; this mase-lite has "
                        f"version {spec.version}: upgrade mase-lite to load it")
    if context is not None and not isinstance(context, PassContext):
        raise ConfigError(f"context must be a passes.PassContext, got {type(context).__name__}")
    cfg = _private_config(spec, config)
    fn = spec.fn
    if spec.takes_context:
        ctx = context if context is not None else PassContext()
        fn = lambda g, c: spec.fn(g, c, ctx)  # noqa: E731
    if spec.kind == "analysis":
        return _run_analysis(graph, spec, fn, cfg)
    return _run_transform(graph, name, spec, fn, cfg, _undo)


def _run_transform(graph: MaseGraph, name: str, spec: PassSpec, fn, cfg: Config,
                   undo: list | None) -> tuple[MaseGraph, dict[str, Any]]:
    """Run a transform pass on a tensor-sharing copy of ``graph``; ``graph`` adopts it only on success.

    See :func:`run_pass` for the steps (staged writes, in-place edit check, recompile, history).
    """
    versions = _tensor_versions(graph)
    work = graph.copy(share_tensors=True)
    staged: list[tuple[Any, Any]] = []
    work.__dict__["_staged_writes"] = staged
    try:
        result, info, decisions = _call(name, fn, work, cfg)
    finally:
        work.__dict__.pop("_staged_writes", None)
    _finish_transform(name, result)
    touched = [k for k, (t, v) in versions.items() if t._version != v]
    if touched:
        raise PassError(f"pass {name!r} modified the tensor {touched[0]!r} in place; a pass must use "
                        f"graph.write_tensor() or register a new tensor (the graph shares its tensors with "
                        f"the pass's working copy, so an in-place edit could not be rolled back)")
    entry = _history_entry(spec, cfg, decisions)
    with torch.no_grad():
        if undo is not None:
            undo.extend((tensor, tensor.detach().clone()) for tensor, _ in staged)
        for tensor, value in staged:
            tensor.copy_(value)
    result.history.append(entry)
    graph.adopt(result)
    log.info("pass %s done", name)
    return graph, info


def _finish_transform(name: str, graph: MaseGraph) -> None:
    """What every transform needs after editing: dead code dropped, lint, code and metadata refreshed."""
    try:
        graph.recompile()
    except Exception as exc:
        raise PassError(f"pass {name!r} left a graph that does not lint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was changed") from exc


def unmet_requirements(pipeline: Mapping[str, Any] | Iterable[Any]) -> list[str]:
    """The requirements (``register_pass(..., requires=...)``) of a pipeline's steps that no earlier
    step provides (``provides=...``), in order of first need; ``pipeline``: anything
    :func:`parse_pipeline` takes."""
    provided: set[str] = set()
    unmet: list[str] = []
    for name, cfg in parse_pipeline(pipeline):
        spec = get_pass(name)
        unmet.extend(r for r in sorted(spec.requirements(cfg)) if r not in provided and r not in unmet)
        provided.update(spec.provides)
    return unmet


def _private_config(spec: PassSpec, config: Config | Mapping[str, Any] | None) -> Config:
    """A validated copy of ``config`` as the pass's config class (the caller's object is not touched)."""
    if isinstance(config, spec.config_cls):
        cfg = copy.deepcopy(config)
        cfg.validate(spec.name)  # an instance is checked like a dict: an invalid one would not replay on load
        return cfg
    if config is None or isinstance(config, Mapping):
        return spec.config_cls.from_dict(copy.deepcopy(dict(config or {})), path=spec.name)
    raise ConfigError(f"config of pass {spec.name!r} must be a dict or {spec.config_cls.__name__}, "
                      f"got {type(config).__name__}")


def _call(name: str, fn, graph: MaseGraph, cfg: Config) -> PassResult:
    """Run the pass; its result as a :class:`PassResult`. PassError if it writes into ``cfg``."""
    before = cfg.to_dict()
    try:
        out = fn(graph, cfg)
    except MaseError:
        raise
    except Exception as exc:
        raise PassError(f"pass {name!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise PassError(f"pass {name!r} returned {type(out).__name__}; a pass returns (graph, info) or "
                        f"PassResult(graph, info, decisions)")
    if cfg.to_dict() != before:
        raise PassError(f"pass {name!r} wrote into its config; a pass returns what it chose as "
                        f"PassResult(graph, info, decisions={{field: value}}) instead (see passes.registry)")
    return PassResult(*out)


def _history_entry(spec: PassSpec, cfg: Config, decisions: Mapping[str, Any] | None) -> HistoryEntry:
    """The history entry of a run: ``cfg`` with the pass's ``decisions`` in place of those fields."""
    if not decisions:
        return HistoryEntry(spec.name, cfg.to_dict(), spec.version)
    fields = [f.name for f in dataclasses.fields(cfg)]
    unknown = [k for k in decisions if k not in fields]
    if unknown:
        raise PassError(f"pass {spec.name!r} returned the decision {unknown[0]!r}, which is not a field of "
                        f"{type(cfg).__name__}; decisions are config fields: {', '.join(fields)}")
    if not spec.in_history:
        raise PassError(f"pass {spec.name!r} returned decisions but is not recorded in the history; register it "
                        f"with recorded=True")
    chosen = dataclasses.replace(cfg, **decisions)
    try:
        chosen.validate(spec.name)
    except ConfigError as exc:
        raise PassError(f"pass {spec.name!r} returned decisions that do not make a valid config: {exc}") from exc
    return HistoryEntry(spec.name, chosen.to_dict(), spec.version)


def _run_analysis(graph: MaseGraph, spec: PassSpec, fn, cfg: Config) -> tuple[MaseGraph, dict[str, Any]]:
    """Run an analysis pass on ``graph`` itself; on failure restore the node metadata it may have written."""
    code = graph.gm.code
    saved = [(n, n.meta.get("mase"), copy.deepcopy(getattr(n.meta.get("mase"), "annotations", None)))
             for n in graph.nodes]
    try:
        result, info, decisions = _call(spec.name, fn, graph, cfg)
        if result is not graph or graph.gm.code != code:
            raise PassError(f"analysis pass {spec.name!r} changed the graph; register it with kind='transform'")
        entry = _history_entry(spec, cfg, decisions) if (spec.recorded or decisions) else None
    except BaseException:
        for node, meta, annotations in saved:
            node.meta["mase"] = meta
            if annotations is not None:
                meta.annotations = annotations
        raise
    if entry is not None:
        graph.history.append(entry)
    log.info("pass %s done", spec.name)
    return graph, info


def _tensor_versions(graph: MaseGraph) -> dict[str, tuple[Any, int]]:
    """name -> (tensor, version counter) of every parameter and buffer (inference tensors have none)."""
    out = {}
    for key, t in (*graph.gm.named_parameters(), *graph.gm.named_buffers()):
        if not t.is_inference():
            out[key] = (t, t._version)
    return out


def parse_pipeline(data: Mapping[str, Any] | Iterable[Any]) -> PipelineSpec:
    """``[(name, config_dict), ...]`` from a TOML-style mapping (``{"passes": ...}``) or a list.

    Accepts ``{"passes": {"quantize": {...}, "prune": {...}}}`` (document order),
    ``{"passes": [{"name": "prune", ...}, ...]}``, or a list of ``(name, config)`` pairs.
    Every name and config is validated before any pass runs.
    """
    if isinstance(data, Mapping):
        if "passes" not in data:
            raise ConfigError("pipeline config has no 'passes' section; add [passes.<name>] tables")
        body = data["passes"]
    else:
        body = list(data)
    steps: PipelineSpec = []
    if isinstance(body, Mapping):
        steps = [(str(k), v) for k, v in body.items()]
    elif isinstance(body, list):
        for i, entry in enumerate(body):
            if isinstance(entry, (tuple, list)) and len(entry) == 2:
                steps.append((str(entry[0]), entry[1]))
            elif isinstance(entry, Mapping) and "name" in entry:
                steps.append((str(entry["name"]), {k: v for k, v in entry.items() if k != "name"}))
            else:
                raise ConfigError(f"passes[{i}] must be a table with a 'name' key or a (name, config) pair")
    else:
        raise ConfigError("'passes' must be a table of [passes.<name>] tables or an array of [[passes]] tables")
    for name, cfg in steps:
        spec = get_pass(name)
        if isinstance(cfg, spec.config_cls):
            copy.deepcopy(cfg).validate(name)
        else:
            if cfg is not None and not isinstance(cfg, Mapping):
                raise ConfigError(f"config of pass {name!r} must be a table, got {cfg!r}")
            spec.config_cls.from_dict(copy.deepcopy(dict(cfg or {})), path=name)
    return steps


def run_pipeline(graph: MaseGraph, pipeline: Mapping[str, Any] | Iterable[Any] | str | Path, *,
                 context: PassContext | None = None) -> tuple[MaseGraph, dict[str, Any]]:
    """Run a pipeline (a TOML path, mapping or list; see :func:`parse_pipeline`) in order.

    Returns ``(graph, {pass_name: info})`` (a repeated pass's infos are ``name#2``...). All configs
    are validated before the first pass runs; if a pass fails, ``graph`` is left as it was before
    the whole pipeline. ``context`` is given to every pass that takes one.
    """
    if isinstance(pipeline, (str, Path)):
        pipeline = load_toml(pipeline)
    steps = parse_pipeline(pipeline)
    work = graph.copy(share_tensors=True)
    infos: dict[str, Any] = {}
    undo: list[tuple[torch.Tensor, torch.Tensor]] = []  # tensors written by passes that succeeded
    try:
        for name, cfg in steps:
            _, info = run_pass(work, name, cfg, context=context, _undo=undo)
            key, k = name, 2
            while key in infos:
                key, k = f"{name}#{k}", k + 1
            infos[key] = info
    except BaseException:
        with torch.no_grad():  # the copy shares graph's tensors: put back what earlier passes wrote
            for tensor, old in reversed(undo):
                tensor.copy_(old)
        raise
    graph.adopt(work)
    return graph, infos
