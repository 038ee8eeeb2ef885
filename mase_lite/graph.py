"""``MaseGraph``: a traced model as a trainable ``torch.fx`` graph with per-node metadata.

A MaseGraph is an ``nn.Module`` wrapping the normalised GraphModule (``graph.gm``) of a
``torch.export`` program. It is called like the model it came from (same keyword inputs, same output
type; HF classifiers also take ``labels`` and return ``loss``), trains with autograd, switches dropout
with ``.train()``/``.eval()`` and follows ``.to(device)``.

Persistence (``save``/``load``) stores the *base* exported program (``torch.export.save``: a
serialised graph, no pickled code), the pass history ``[(name, config), ...]`` and the final
parameters and buffers (safetensors). Each history entry is saved with the version of the pass that
made it (:class:`HistoryEntry`; entries saved before versions existed have none and replay as
version 1). ``load`` replays the history on the base program and then
loads the tensors, so transformed graphs come back transformed, pruning masks included. Replaying
needs the pass registry, which lives above the IR: it is found through the ``mase_lite.passes``
entry point (``passes.pipeline:run_pass``), keeping ``mase_lite`` free of imports from ``passes``.
"""

from __future__ import annotations

import copy
import inspect
import importlib
import importlib.metadata
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import networkx as nx
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import fx, nn

from . import metadata as md
from .errors import MaseError, TraceError
from .tracing import export_module, normalise

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class HistoryEntry(tuple):
    """One history entry: the pair ``(name, config)`` (it unpacks and compares as that pair) plus the
    ``version`` of the pass that made it (``None``: unknown, i.e. saved before versions existed,
    replayed as version 1)."""

    def __new__(cls, name: str, config: dict[str, Any], version: int | None = None) -> "HistoryEntry":
        obj = super().__new__(cls, (name, config))
        obj.version = version
        return obj

    def __reduce__(self):
        return (HistoryEntry, (self[0], self[1], self.version))

    def __repr__(self) -> str:
        return f"HistoryEntry({self[0]!r}, {self[1]!r}, version={self.version!r})"


def _model_info(model: nn.Module) -> dict[str, Any]:
    """What the graph needs to know about its source model (JSON-able)."""
    info: dict[str, Any] = {"class": type(model).__name__}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        cfg = config.to_dict()
        info["hf_config"] = {k: v for k, v in cfg.items() if _jsonable(v)}
        info["num_labels"] = getattr(config, "num_labels", None)
        info["problem_type"] = getattr(config, "problem_type", None)
        info["max_position_embeddings"] = getattr(config, "max_position_embeddings", None)
        if type(model).__name__.endswith("ForSequenceClassification"):
            info["task"] = "sequence_classification"
    extra = getattr(model, "mase_model_info", None)  # e.g. the classification head (mase_lite.models.apply_pooling)
    if isinstance(extra, dict):
        info.update({k: v for k, v in extra.items() if _jsonable(v)})
    return info


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int,
                                 problem_type: str | None) -> torch.Tensor:
    """The loss transformers' ``*ForSequenceClassification`` models compute, with the same problem-type rules."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)


class MaseGraph(nn.Module):
    """A traced model: ``gm`` (the fx GraphModule), node metadata, and the history of passes applied."""

    def __init__(
        self,
        gm: fx.GraphModule,
        base: torch.export.ExportedProgram,
        input_names: list[str],
        model_info: Mapping[str, Any] | None = None,
        history: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        super().__init__()
        self.gm = gm
        self.input_names = list(input_names)
        self.model_info = dict(model_info or {})
        self.history: list[tuple[str, dict[str, Any]]] = list(history or [])
        # The base program is immutable and shared between copies; kept out of nn.Module attributes.
        self.__dict__["_base"] = base
        md.annotate(self.gm)

    # ----------------------------------------------------------------------------------- creation
    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        example_inputs: Mapping[str, Any] | tuple[Any, ...],
        dynamic_shapes: Mapping[str, Any] | None = None,
    ) -> "MaseGraph":
        """Trace ``model`` called as ``model(**example_inputs)`` with dynamic batch and sequence axes.

        ``example_inputs`` are keyword tensors (or a tuple, matched to ``forward``'s parameters) with
        batch size >= 2 (e.g. ``input_ids`` and ``attention_mask``); do not include ``labels``: the
        graph computes the loss itself.
        The model's train/eval mode is kept on the graph.
        """
        if isinstance(example_inputs, Mapping) and "labels" in example_inputs:
            raise TraceError("do not pass 'labels' in example_inputs: call the traced graph with labels= instead")
        info = _model_info(model)
        info["output_modules"] = []
        if isinstance(example_inputs, (tuple, list)):
            names = [n for n in inspect.signature(model.forward).parameters if n not in ("self",)]
            example_inputs = dict(zip(names, example_inputs))
        ep = export_module(model, example_inputs, dynamic_shapes)
        info["output_modules"] = sorted(_spec_modules(ep.call_spec.out_spec))
        graph = cls(normalise(ep), ep, list(example_inputs), info)
        graph.train(model.training)
        return graph

    def copy(self, share_tensors: bool = False) -> "MaseGraph":
        """An independent deep copy; the base program is shared.

        Every node of the copy has its own :class:`~mase_lite.metadata.NodeMeta` (annotations
        included): editing one graph's metadata never changes the other's.
        ``share_tensors=True``: the graph, modules and metadata are copied, but the parameters and
        buffers are the same tensor objects as this graph's (what a transform pass works on, so an
        optimizer built on this graph stays valid for the result).
        """
        new = MaseGraph.__new__(MaseGraph)
        nn.Module.__init__(new)
        memo: dict[int, Any] = {}
        if share_tensors:
            for t in (*self.gm.parameters(), *self.gm.buffers()):
                memo[id(t)] = t
        with warnings.catch_warnings():  # torch's pytree spec deprecation noise on deepcopy
            warnings.simplefilter("ignore", FutureWarning)
            new.gm = copy.deepcopy(self.gm, memo)
        for node in new.gm.graph.nodes:  # fx copies node.meta shallowly: the NodeMeta objects would be shared
            if isinstance(node.meta.get("mase"), md.NodeMeta):
                node.meta["mase"] = node.meta["mase"].copy()
        new.input_names = list(self.input_names)
        new.model_info = copy.deepcopy(self.model_info)
        new.history = copy.deepcopy(self.history)
        new.__dict__["_base"] = self._base
        new.train(self.training)
        return new

    def write_tensor(self, tensor: torch.Tensor, value: torch.Tensor) -> None:
        """Set the values of one of this graph's tensors in place (the object stays the same).

        Inside a pass run by the pass runner the write is staged and applied only when the pass
        succeeds (the pass works on a copy that shares its tensors with the original graph, so a
        direct in-place edit could not be rolled back); elsewhere it is applied at once.
        """
        staged = self.__dict__.get("_staged_writes")
        if staged is None:
            with torch.no_grad():
                tensor.copy_(value)
        else:
            staged.append((tensor, value.detach().clone()))

    def adopt(self, other: "MaseGraph") -> None:
        """Take over ``other``'s graph, state and history in place (used to commit a pass's result)."""
        self.gm = other.gm
        self.input_names = other.input_names
        self.model_info = other.model_info
        self.history = other.history
        self.__dict__["_base"] = other._base
        self.train(other.training)

    # ----------------------------------------------------------------------------------- running
    def forward(self, *args: Any, labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if args:
            if len(args) > len(self.input_names):
                raise TypeError(f"expected at most {len(self.input_names)} positional inputs {self.input_names}")
            kwargs.update(zip(self.input_names, args))
        if set(kwargs) != set(self.input_names):
            missing = sorted(set(self.input_names) - set(kwargs))
            extra = sorted(set(kwargs) - set(self.input_names))
            raise TypeError(
                f"this graph was traced with inputs {self.input_names}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
            )
        out = self.gm(**kwargs)
        if labels is None:
            return out
        if self.model_info.get("task") != "sequence_classification":
            raise TypeError(f"labels= is only supported for sequence classifiers, not {self.model_info.get('class')}")
        loss = sequence_classification_loss(
            out.logits, labels, self.model_info["num_labels"], self.model_info.get("problem_type")
        )
        return type(out)(loss=loss, **{k: v for k, v in out.items()})

    # ----------------------------------------------------------------------------------- structure
    @property
    def fx_graph(self) -> fx.Graph:
        return self.gm.graph

    @property
    def nodes(self) -> Iterator[fx.Node]:
        """The graph's nodes in topological order."""
        return iter(self.gm.graph.nodes)

    def node(self, name: str) -> fx.Node:
        """The node called ``name``; KeyError listing similar names otherwise."""
        for n in self.gm.graph.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}")

    def meta(self, node: fx.Node | str) -> md.NodeMeta:
        """The :class:`~mase_lite.metadata.NodeMeta` of a node."""
        n = self.node(node) if isinstance(node, str) else node
        return n.meta["mase"]

    def set_annotation(self, node: fx.Node | str, key: str, value: Any) -> None:
        """Set annotation ``key`` of a node (or node name) to ``value``: how passes record facts on
        nodes (``graph.meta(node).annotations`` is for reading). The metadata is this graph's own
        (:meth:`copy`), so the write never reaches another graph."""
        if not isinstance(key, str) or not key:
            raise MaseError(f"annotation key must be a non-empty string, got {key!r}")
        self.meta(node).annotations[key] = value

    def recompile(self) -> None:
        """Regenerate code after editing ``gm.graph``, drop dead nodes and refresh metadata."""
        self.gm.graph.eliminate_dead_code()
        self.gm.graph.lint()
        self.gm.recompile()
        md.annotate(self.gm)

    def to_networkx(self) -> nx.DiGraph:
        """The graph as a ``networkx.DiGraph`` with metadata as node attributes."""
        return md.to_networkx(self.gm)

    # ----------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the graph to directory ``path`` (created); returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.export.save(self._base, path / "base.pt2")
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.gm.state_dict().items()}
        save_file(state, path / "state.safetensors")
        record = {
            "format_version": FORMAT_VERSION,
            "input_names": self.input_names,
            "model_info": self.model_info,
            "history": [_history_record(h) for h in self.history],
        }
        (path / "graph.json").write_text(json.dumps(record, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MaseGraph":
        """Load a graph written by :meth:`save` (eval mode, on the CPU), or a compact export
        (``mase-lite export``; a directory with ``export.json``, read by ``passes.export.load_export``)."""
        path = Path(path)
        if not (path / "graph.json").is_file() and (path / EXPORT_MANIFEST).is_file():
            return _export_loader()(path)
        if not (path / "graph.json").is_file():
            raise MaseError(f"{path} is not a saved MaseGraph (no graph.json)")
        record = json.loads((path / "graph.json").read_text())
        if record.get("format_version") != FORMAT_VERSION:
            raise MaseError(f"{path}: unsupported format version {record.get('format_version')}")
        _import_output_types(record["model_info"])
        base = torch.export.load(path / "base.pt2")
        graph = cls(normalise(base), base, record["input_names"], record["model_info"])
        if record["history"]:
            run_pass = _pass_runner()
            for step in record["history"]:
                run_pass(graph, step["name"], step["config"], version=step.get("version"))
        state = load_file(path / "state.safetensors")
        missing, unexpected = graph.gm.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MaseError(f"{path}: saved state does not match the replayed graph "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        graph.eval()
        return graph

    def extra_repr(self) -> str:
        n = sum(1 for _ in self.gm.graph.nodes)
        return f"model={self.model_info.get('class')}, nodes={n}, passes={[h[0] for h in self.history]}"


def _history_record(entry: tuple) -> dict[str, Any]:
    name, config = entry[0], entry[1]
    out: dict[str, Any] = {"name": name, "config": config}
    version = getattr(entry, "version", None)
    if version is not None:
        out["version"] = version
    return out


def _spec_modules(spec: Any) -> set[str]:
    """Modules defining the (non-builtin) output container types of a pytree spec."""
    mods = set()
    tp = getattr(spec, "type", None)
    if tp is not None and getattr(tp, "__module__", "builtins") != "builtins":
        mods.add(tp.__module__)
    for child in spec.children() if hasattr(spec, "children") else []:
        mods |= _spec_modules(child)
    return mods


def _import_output_types(model_info: Mapping[str, Any]) -> None:
    """Import the modules that register a saved graph's output types as pytree nodes (transformers'
    ``ModelOutput`` classes) so ``torch.export.load`` can rebuild its output spec in a fresh process.
    Only transformers modules are imported."""
    for name in model_info.get("output_modules", []):
        if name.split(".")[0] == "transformers":
            importlib.import_module(name)


#: The manifest file of a compact export directory (``passes.export``).
EXPORT_MANIFEST = "export.json"


def _export_loader() -> Callable[[Path], "MaseGraph"]:
    """``passes.export.load_export``: found next to the pass runner of the ``mase_lite.passes`` entry
    point (same package), so the IR does not import ``passes``."""
    runner = _pass_runner()
    package = runner.__module__.split(".")[0]
    return importlib.import_module(f"{package}.export").load_export


def _pass_runner() -> Callable[[MaseGraph, str, Mapping[str, Any]], Any]:
    """``passes.pipeline.run_pass``, found through the ``mase_lite.passes`` entry point."""
    for ep in importlib.metadata.entry_points(group="mase_lite.passes"):
        if ep.name == "run_pass":
            return ep.load()
    raise MaseError("no pass registry installed (entry point group 'mase_lite.passes'); install mase-lite")


def trace(model: nn.Module, example_inputs: Mapping[str, Any], dynamic_shapes: Mapping[str, Any] | None = None) -> MaseGraph:
    """Trace ``model`` into a :class:`MaseGraph` (see :meth:`MaseGraph.from_module`)."""
    return MaseGraph.from_module(model, example_inputs, dynamic_shapes)
