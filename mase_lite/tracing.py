"""Frontend: ``torch.export`` a model and normalise the result into a trainable, mode-switching GraphModule.

``torch.export.export(..., strict=False)`` handles transformers-5 models (which ``torch.fx.symbolic_trace``
cannot), keeps the original parameter names and fills ``node.meta`` with fake-tensor values and the
``nn_module_stack``. Its raw output has three properties the IR must undo:

* dropout is specialised to the mode at export time (``aten.dropout(x, p, True)`` and the ``dropout_p``
  argument of ``aten.scaled_dot_product_attention``), and ``ep.module()`` refuses ``.train()``/``.eval()``;
  we export in train mode (so every dropout site is in the graph) and make each site read the
  module's ``training`` flag at run time through a :class:`TrainingFlag` submodule;
* several nodes hard-code ``device=cpu``: they are rewritten to use the device of the first parameter,
  so the graph follows ``.to(device)``;
* ``_assert_tensor_metadata`` nodes pin the export-time device; they are dropped (they check nothing
  the graph's own ops would not).

Before export, :func:`export_module` makes two model-level normalisations: GPT-2-style ``Conv1D``
projections (``y = x @ W + b`` with ``W`` stored ``[in, out]``) are replaced in place by equivalent
``nn.Linear`` modules (:func:`linearise_conv1d`), so every pass sees a ``linear`` node with the right
in/out features; and ``config.use_cache`` is switched off while exporting (a decoder's key/value
cache is not a tensor output). A model that cannot be traced gives one :class:`TraceError` naming the
innermost submodule that was running when export failed and what failed.
"""

from __future__ import annotations

import inspect
import logging
import operator
from typing import Any, Mapping

import torch
from torch import fx, nn
from torch.export import Dim

from .errors import TraceError

log = logging.getLogger(__name__)

aten = torch.ops.aten

# Dimension names of the dynamic axes: dim 0 of every tensor input is the batch; dim 1 of 2-D integer
# inputs (token ids, masks) is the sequence.
BATCH, SEQ = "batch", "seq"


class TrainingFlag(nn.Module):
    """Returns ``self.training``: the graph's dropout sites read their mode from here."""

    def forward(self) -> bool:
        return self.training


def dropout_rate(p: float, training: bool) -> float:
    """``p`` in training mode, 0 in eval mode (the ``dropout_p`` of attention)."""
    return p if training else 0.0


def dynamic_shapes_for(example_inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Dynamic-shape spec: batch (dim 0) for every tensor input, sequence (dim 1) for 2-D integer inputs.

    ``Dim.AUTO`` lets export infer each axis's range (e.g. the position-embedding limit) instead of
    failing on a hand-written bound; :func:`export_module` then checks that the axes stayed dynamic.
    """
    spec: dict[str, Any] = {}
    for name, value in example_inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            spec[name] = None
            continue
        dims: dict[int, Any] = {0: Dim.AUTO}
        if value.dim() >= 2 and not value.is_floating_point():
            dims[1] = Dim.AUTO
        spec[name] = dims
    return spec


def _check_dynamic(ep: torch.export.ExportedProgram, example_inputs: Mapping[str, Any]) -> None:
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in example_inputs]
    for node in placeholders:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() > 0 and not isinstance(val.shape[0], torch.SymInt):
            raise TraceError(
                f"the batch dimension of input {node.name!r} was specialised to {val.shape[0]} during "
                "tracing; the model must not depend on the batch size"
            )


def linearise_conv1d(model: nn.Module) -> list[str]:
    """Replace every ``transformers.pytorch_utils.Conv1D`` of ``model`` in place by an ``nn.Linear``
    computing the same function (weight transposed to ``[out, in]``, same bias, dtype and device; the
    parameter names stay the same). Returns the qualified names of the replaced modules."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return []
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, Conv1D):
            continue
        n_in, n_out = module.weight.shape
        linear = nn.Linear(n_in, n_out, bias=module.bias is not None, device=module.weight.device,
                           dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        linear.weight.requires_grad_(module.weight.requires_grad)
        linear.train(module.training)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, linear)
        replaced.append(name)
    if replaced:
        log.info("replaced %d Conv1D modules by nn.Linear (e.g. %s)", len(replaced), replaced[0])
    return replaced


def _failing_module(exc: BaseException, model: nn.Module) -> str | None:
    """``"path (Class)"`` of the innermost submodule of ``model`` whose code was running when ``exc`` was
    raised (from the traceback's ``self`` locals), or ``None``."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            obj = tb.tb_frame.f_locals.get("self")
            if isinstance(obj, nn.Module) and id(obj) in names:
                name = names[id(obj)]
                found = f"{name!r} ({type(obj).__name__})" if name else f"{type(obj).__name__}.forward"
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return found


def export_module(
    model: nn.Module,
    example_inputs: Mapping[str, Any],
    dynamic_shapes: Mapping[str, Any] | None = None,
) -> torch.export.ExportedProgram:
    """Export ``model`` in train mode (so every dropout site appears) with dynamic batch/sequence axes."""
    if not isinstance(model, nn.Module):
        raise TraceError(f"can only trace a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, Mapping) or not example_inputs:
        raise TraceError(
            "example_inputs must be a non-empty dict of keyword inputs, e.g. "
            "{'input_ids': LongTensor[batch, seq], 'attention_mask': ...}"
        )
    for name, value in example_inputs.items():
        if not isinstance(value, torch.Tensor):
            raise TraceError(f"example input {name!r} must be a tensor, got {type(value).__name__}")
        if value.dim() > 0 and value.shape[0] < 2:
            raise TraceError(
                f"example input {name!r} has batch size {value.shape[0]}; use at least 2 so the batch "
                "dimension can be traced as dynamic"
            )
    params = {n: p for n, p in inspect.signature(model.forward).parameters.items()
              if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    if params:  # tensor inputs must be named parameters of forward (HF's **kwargs carry only flags)
        unknown = [k for k in example_inputs if k not in params]
        if unknown:
            raise TraceError(
                f"example inputs do not match {type(model).__name__}.forward: {unknown[0]!r} is not one of "
                f"its parameters ({', '.join(params)})"
            )
    if dynamic_shapes is None:
        dynamic_shapes = dynamic_shapes_for(example_inputs)
    linearise_conv1d(model)
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    was_training = model.training
    model.train()
    try:
        if use_cache:
            config.use_cache = False
        with torch.no_grad():
            ep = torch.export.export(
                model, (), dict(example_inputs), dynamic_shapes=dict(dynamic_shapes), strict=False
            )
    except TypeError as exc:
        raise TraceError(f"example inputs do not match {type(model).__name__}.forward: {exc}") from exc
    except Exception as exc:  # torch.export raises many types (UserError, GuardOnDataDependent, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = _failing_module(exc, model)
        at = f" in {'module ' if where and not where.endswith('.forward') else ''}{where}" if where else ""
        raise TraceError(f"could not trace {type(model).__name__} with torch.export{at}: "
                         f"{type(exc).__name__}: {first}") from exc
    finally:
        model.train(was_training)
        if use_cache:
            config.use_cache = use_cache
    _check_dynamic(ep, example_inputs)
    return ep


def _first_state_getattr(graph: fx.Graph, gm: nn.Module) -> fx.Node | None:
    for node in graph.nodes:
        if node.op == "get_attr":
            try:
                value = operator.attrgetter(node.target)(gm)
            except AttributeError:
                continue
            if isinstance(value, torch.Tensor):
                return node
    return None


def _arg_index(node: fx.Node, name: str) -> int:
    return [a.name for a in node.target._schema.arguments].index(name)


def _get_arg(node: fx.Node, name: str, default: Any) -> Any:
    i = _arg_index(node, name)
    return node.args[i] if i < len(node.args) else node.kwargs.get(name, default)


def _set_arg(node: fx.Node, name: str, value: Any) -> None:
    """Set a schema argument of an aten call, positional or keyword, wherever the node has it."""
    i = _arg_index(node, name)
    if i < len(node.args):
        node.args = (*node.args[:i], value, *node.args[i + 1 :])
    else:
        node.kwargs = {**node.kwargs, name: value}


def normalise(ep: torch.export.ExportedProgram) -> fx.GraphModule:
    """A plain, trainable ``fx.GraphModule`` from an exported program, with mode-following dropout and
    device-following constants (see module docstring)."""
    stateful = ep.module()
    gm = fx.GraphModule(stateful, stateful.graph, class_name=type(stateful).__name__.split(".")[-1])
    gm._in_spec = stateful._in_spec
    gm._out_spec = stateful._out_spec
    graph = gm.graph
    gm.add_submodule("_training_flag", TrainingFlag())

    first_real = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first_real):
        flag = graph.call_module("_training_flag")
        flag.meta["mase_internal"] = True

    device_node: fx.Node | None = None

    def device_of_state() -> fx.Node:
        nonlocal device_node
        if device_node is None:
            anchor = _first_state_getattr(graph, gm)
            if anchor is None:  # no parameters: follow the first input
                anchor = next(n for n in graph.nodes if n.op == "placeholder")
                where = graph.inserting_before(first_real)
            else:
                where = graph.inserting_after(anchor)
            with where:
                device_node = graph.call_function(getattr, (anchor, "device"))
                device_node.meta["mase_internal"] = True
        return device_node

    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten._assert_tensor_metadata.default:
            graph.erase_node(node)
            continue
        if node.target is aten.dropout.default:
            _set_arg(node, "train", flag)
        elif node.target is aten.scaled_dot_product_attention.default:
            p = _get_arg(node, "dropout_p", 0.0)
            if p:
                with graph.inserting_before(node):
                    rate = graph.call_function(dropout_rate, (p, flag))
                    rate.meta["mase_internal"] = True
                _set_arg(node, "dropout_p", rate)
        if isinstance(node.kwargs.get("device"), torch.device):
            node.kwargs = {**node.kwargs, "device": device_of_state()}
        if node.target is aten.to.device and isinstance(node.args[1], torch.device):
            node.args = (node.args[0], device_of_state(), *node.args[2:])
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm
