"""Structured shrinking: ``shrink_layers``, ``prune_heads`` and ``prune_ffn`` make the matrices smaller.

Unlike pruning masks, these passes register new, smaller parameters and edit the traced graph (the
head counts baked into view/reshape/expand/split shape arguments are rewritten), so parameters,
bytes and MACs (``cost``, ``report_graph``) really fall, and the graph still saves, loads and trains.
Every data- or weight-dependent choice is returned as concrete indices (the pass's *decisions*,
``keep`` / ``remove``, which the runner records in the history config), so ``MaseGraph.load``
replays exactly the same cut on the base program's full-size weights before loading the saved,
smaller state.

Layer indices are the ones in module paths (``...layer.<i>...``, ``...layers.<i>...``, GPT-2's
``h.<i>``; where a family keeps its layers is said by its adapter, :mod:`mase_lite.families`), given
as ints to ``shrink_layers`` and as string keys (``"0"``, ``"1"``...) to the per-layer dicts of
``prune_heads`` / ``prune_ffn``. Head and neuron indices are positions in the layer *as it is when
the pass runs* (0 .. heads-1 / width-1).

``shrink_layers`` (:class:`ShrinkLayersConfig`)::

    run_pass(g, "shrink_layers", {"keep": [0, 2]})            # original layer indices
    run_pass(g, "shrink_layers", {"num_layers": 2})           # strategy "spread" (default) or "first"

``num_layers`` is resolved into ``keep`` (recorded; ``num_layers`` is then cleared). ``"first"``
keeps the first n layers; ``"spread"`` keeps n evenly spaced ones, always the first and the last:
positions ``floor(i * (L - 1) / (n - 1) + 0.5)`` for ``i = 0 .. n-1`` of the L layers in order
(n = 1: the last layer only). A removed layer's output is replaced by its hidden-state input, dead
code is eliminated and the removed layers' parameters are dropped.
ALBERT: its encoder calls one shared layer repeatedly (torch.export marks the k-th repeated call
with an ``@k`` suffix in ``nn_module_stack``); layer ``i`` is the i-th call. Removing calls saves
MACs and time but **no parameters or bytes**, because the remaining calls still use the shared
weights.

``prune_heads`` (:class:`PruneHeadsConfig`)::

    run_pass(g, "prune_heads", {"keep": 6})                   # heads kept in every layer
    run_pass(g, "prune_heads", {"keep": {"0": 8, "1": 6}})    # per layer (others untouched)
    run_pass(g, "prune_heads", {"keep": 2, "score": "gradient"}, context=PassContext(batches=...))
    run_pass(g, "prune_heads", {"remove": {"0": [1, 3]}})     # concrete heads (what is recorded)

Scores (the lowest-scoring heads are removed; ties: the lower index first):

* ``"l1"`` (default, no data): the L1 norm of the head's ``head_dim`` columns of the attention output
  projection weight (``sum |W_o[:, h*d:(h+1)*d]|``);
* ``"gradient"`` (Taylor importance; needs data): over the context's batches (at most
  ``num_batches``; each a dict of graph inputs with ``labels``), in eval mode,
  ``sum_batches |sum_{w in head} w * dL/dw|`` where the head's weights are its rows of the query (and,
  without GQA, key and value) projection weights and biases and its columns of the output projection.
  Without batches and without a recorded ``remove`` it is one ConfigError.

The query/key/value rows (fused ``c_attn`` / ``Wqkv``: in each of the three parts) and biases and the
output projection's columns of the removed heads are cut. GQA (Llama with ``num_key_value_heads`` <
``num_attention_heads``): query head ``h`` uses key/value head ``h // (H / H_kv)``; the pass keeps the
key/value heads and removes the same number of query heads from every group, so ``keep`` must be a
multiple of ``num_key_value_heads`` (the lowest-scoring heads of each group go).
ALBERT: the one shared layer is ``"0"`` and the cut applies to every call of it.

``prune_ffn`` (:class:`PruneFFNConfig`)::

    run_pass(g, "prune_ffn", {"keep": 768})                   # neurons kept in every layer
    run_pass(g, "prune_ffn", {"keep": 0.5})                   # a fraction (0 < f < 1) of each layer's width
    run_pass(g, "prune_ffn", {"keep": {"0": 512}})            # per layer
    run_pass(g, "prune_ffn", {"remove": {"0": [3, 17]}})      # concrete neurons (what is recorded)

Score: the L1 norm of neuron ``j``'s weights: its row of the up projection (``intermediate.dense``,
``ffn.lin1``, ``c_fc``, ``up_proj``), plus its row of the gate projection where there is one (Llama's
``gate_proj``; ModernBERT's ``Wi`` holds [input | gate] rows ``j`` and ``I + j``), plus its column of
the down projection. The lowest-L1 neurons go; ties: the lower index first. A fractional keep is
``max(1, floor(f * width + 0.5))`` per layer.

How the cut is made in the graph: the projections are found by their module paths (the
``attention_roles`` / ``ffn_roles`` of the graph's family adapter, :mod:`mase_lite.families`: BERT,
RoBERTa, ELECTRA, DistilBERT, ALBERT, DeBERTa-v2, ModernBERT, GPT-2, Llama); in the nodes between a
layer's projections and its output projection (and the shape ops feeding them), literal sizes equal
to the old flattened width become the new width, literal head counts (any position of a shape but
the last, the head size; or a symbolic ``heads * batch``) the new count, and a GQA ``expand`` of a
size-1 axis by the group size the new group size. The fake values of the changed nodes are then
recomputed, which also checks that the shrunk graph runs (a PassError names the node otherwise).
Shrink before compressing (as the pretrained-start search does); on a compressed graph, pruning
masks are cut with their weights (formats that derive scales from the weight follow it), but
recorded ``calibrate`` ranges are not re-measured.

Every pass returns ``info`` with what was removed per layer (indices), and ``params_before`` /
``params_after`` / ``params_removed`` (elements of all the graph's parameters). Bad input is one
ConfigError naming the field and the valid options, and the graph is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
from typing import Any, Callable, Iterable, Literal, Optional

import torch
from torch import fx, nn

from mase_lite.config import Config
from mase_lite.errors import ConfigError, MaseError, PassError
from mase_lite.families import family_of, layer_calls
from mase_lite.graph import MaseGraph

from ..registry import PassContext, PassExample, PassResult, example_context, register_pass
from . import ops as _ops_module
from .compressed_nodes import compressed_input_node, is_linear, linear_mask_node, owner_and_name

log = logging.getLogger(__name__)

aten = torch.ops.aten

# ------------------------------------------------------------------------------------------
# Finding layers and their projections

_SHAPE_TARGETS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.expand.default)
_SPLIT_TARGETS = (aten.split.Tensor, aten.split_with_sizes.default)


def _layer_projections(graph: MaseGraph, kind: str) -> dict[str, dict[str, list[fx.Node]]]:
    """layer key -> role -> linear nodes (graph order) of that role in the layer; ``kind``: the family
    adapter's ``attention`` or ``ffn`` roles."""
    fam = family_of(graph)
    out: dict[str, dict[str, list[fx.Node]]] = {}
    for n in graph.nodes:
        if not is_linear(n):
            continue
        found = fam.role(graph.meta(n).module_path or "", kind)
        if found is not None:
            out.setdefault(found[0], {}).setdefault(found[1], []).append(n)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _weight_target(node: fx.Node) -> str:
    return node.args[1].target


def _tensor(graph: MaseGraph, target: str) -> torch.Tensor:
    return operator.attrgetter(target)(graph.gm)


def _one_weight(nodes: list[fx.Node], what: str) -> str:
    targets = {_weight_target(n) for n in nodes}
    if len(targets) != 1:
        raise PassError(f"{what}: expected one weight, found {sorted(targets)}")
    return targets.pop()


def _num_params(graph: MaseGraph) -> int:
    return sum(p.numel() for p in graph.gm.parameters())


def _layer_keys_error(field: str, key: str, keys: Iterable[str], what: str) -> ConfigError:
    return ConfigError(f"{field} = {key!r}: no such layer; the {what} layers are: {', '.join(keys) or '(none)'}")


# ------------------------------------------------------------------------------------------
# Editing tensors and shapes


def _replace_tensor(graph: MaseGraph, target: str, value: torch.Tensor) -> None:
    """Register ``value`` (a new tensor) under ``target``, as a parameter or buffer like the old one."""
    owner_path, name = owner_and_name(target)
    owner = graph.gm.get_submodule(owner_path) if owner_path else graph.gm
    old = getattr(owner, name)
    value = value.detach().clone().contiguous()
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        owner._buffers[name] = value


def _index_select(graph: MaseGraph, node: Optional[fx.Node], dim: int, index: torch.Tensor, done: set[str]) -> None:
    """Keep ``index`` along ``dim`` of the tensor ``node`` reads (once per tensor)."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or node.target in done:
        return
    done.add(node.target)
    t = _tensor(graph, node.target)
    _replace_tensor(graph, node.target, t.index_select(dim, index.to(t.device)))


def _cut_rows(graph: MaseGraph, nodes: list[fx.Node], rows: torch.Tensor, done: set[str]) -> None:
    """Keep the output rows ``rows`` of linear nodes: weight rows, bias entries, mask rows."""
    for n in nodes:
        _index_select(graph, n.args[1], 0, rows, done)
        _index_select(graph, n.args[2] if len(n.args) > 2 else None, 0, rows, done)
        _index_select(graph, linear_mask_node(n), 0, rows, done)


def _cut_cols(graph: MaseGraph, nodes: list[fx.Node], cols: torch.Tensor, done: set[str]) -> None:
    """Keep the input columns ``cols`` of linear nodes: weight and mask columns."""
    for n in nodes:
        _index_select(graph, n.args[1], 1, cols, done)
        _index_select(graph, linear_mask_node(n), 1, cols, done)


def _descendants(starts: Iterable[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = list(starts)
    while todo:
        n = todo.pop()
        for u in n.users:
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return seen


def _ancestors(starts: Iterable[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = list(starts)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return seen


def _region(producers: list[fx.Node], consumers: list[fx.Node]) -> set[fx.Node]:
    """Nodes computed from ``producers``' outputs that feed ``consumers``' (linear) inputs."""
    inner = _descendants(producers) & _ancestors([compressed_input_node(c) for c in consumers])
    # plus the shape ops feeding it from outside (DeBERTa expands its relative-position index to
    # [batch * heads, ...] before gathering from the scores)
    feeders = {a for n in inner for a in n.all_input_nodes
               if a.op == "call_function" and a.target in _SHAPE_TARGETS and a not in inner}
    return inner | feeders


def _fix_each_call(graph: MaseGraph, producers: list[fx.Node], consumers: list[fx.Node], touched: set[fx.Node],
                   fix: Callable[[set[fx.Node]], None]) -> None:
    """``fix(region)`` the shapes of each call of a shared layer: per consumer (in graph order), the region
    between it and the producers since the previous consumer. Adds those nodes to ``touched``."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    prev = -1
    for c in sorted(consumers, key=order.__getitem__):
        call = [p for p in producers if prev < order[p] < order[c]]
        prev = order[c]
        region = _region(call, [c])
        fix(region)
        touched |= region | set(call) | {c}


def _input_shape(node: fx.Node) -> tuple | None:
    src = node.args[0] if node.args else None
    val = src.meta.get("val") if isinstance(src, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _fix_shapes(region: set[fx.Node], widths: dict[int, int], heads: tuple[int, int] | None = None,
                repeat: tuple[int, int] | None = None, created: set[fx.Node] | None = None) -> int:
    """Rewrite the literal sizes in shape arguments of ``region``'s view/reshape/expand/split nodes.

    ``widths``: old -> new flattened width (anywhere in a shape, or a split size); ``heads``: (old,
    new) head count, at any position of a shape but the last (the head dimension); ``repeat``: (old,
    new) GQA repeat count, where an ``expand`` broadcasts a size-1 dimension. Returns how many
    arguments changed."""
    changed = 0
    for n in region:
        if n.op != "call_function":
            continue
        if n.target in _SHAPE_TARGETS and len(n.args) > 1 and isinstance(n.args[1], (list, tuple)):
            shape = list(n.args[1])
            src = _input_shape(n) if n.target is aten.expand.default else None
            for j, v in enumerate(shape):
                if heads is not None and _scaled_by(v, heads[0]):
                    # a size computed as heads * <batch> (DeBERTa's expand to [batch * heads, ...])
                    other = v.args[1] if v.args[0] == heads[0] else v.args[0]
                    with n.graph.inserting_before(n):
                        shape[j] = n.graph.call_function(operator.mul, (heads[1], other))
                    shape[j].meta.update({k: val for k, val in v.meta.items() if k != "val"})
                    if created is not None:
                        created.add(shape[j])
                    changed += 1
                    continue
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    continue
                if v in widths:
                    new = widths[v]
                elif (repeat is not None and src is not None and len(src) == len(shape) and src[j] == 1
                      and v == repeat[0]):
                    new = repeat[1]
                elif heads is not None and v == heads[0] and j != len(shape) - 1:
                    new = heads[1]
                else:
                    continue
                if new != v:
                    shape[j] = new
                    changed += 1
            n.args = (n.args[0], shape, *n.args[2:])
        elif n.target in _SPLIT_TARGETS and len(n.args) > 1:
            size = n.args[1]
            if isinstance(size, int) and size in widths and widths[size] != size:
                n.args = (n.args[0], widths[size], *n.args[2:])
                changed += 1
            elif isinstance(size, (list, tuple)) and any(isinstance(s, int) and s in widths for s in size):
                n.args = (n.args[0], [widths.get(s, s) if isinstance(s, int) else s for s in size], *n.args[2:])
                changed += 1
    return changed


def _scaled_by(v: Any, k: int) -> bool:
    """Whether ``v`` is a symbolic-size node computing ``k * x`` (or ``x * k``)."""
    return (isinstance(v, fx.Node) and v.op == "call_function" and v.target is operator.mul and len(v.args) == 2
            and any(isinstance(a, int) and not isinstance(a, bool) and a == k for a in v.args))


def _drop_unread_tensors(graph: MaseGraph, targets: Iterable[str]) -> int:
    """Delete the parameters/buffers among ``targets`` that no get_attr node reads any more; returns
    the parameter elements removed."""
    read = {n.target for n in graph.nodes if n.op == "get_attr"}
    removed = 0
    for target in dict.fromkeys(targets):
        if target in read:
            continue
        owner_path, name = owner_and_name(target)
        owner = graph.gm.get_submodule(owner_path) if owner_path else graph.gm
        if name in owner._parameters:
            removed += owner._parameters[name].numel()
            del owner._parameters[name]
        elif name in owner._buffers:
            del owner._buffers[name]
    return removed


_SHAPE_RULES = {
    "linear": lambda x, w, b=None, *rest: torch.nn.functional.linear(x, w, b),
    "embedding": lambda w, idx, *rest: torch.nn.functional.embedding(idx, w),
    "attention": lambda q, k, v, *rest: q.new_empty((*q.shape[:-1], v.shape[-1])),
    "elementwise": lambda x, *rest: x.new_empty(x.shape),
}


def refresh_shapes(graph: MaseGraph, what: str, nodes: Iterable[fx.Node] = ()) -> None:
    """Drop dead code, recompute the fake values (``node.meta["val"]``: the shapes the metadata and
    ``cost`` read) of ``nodes`` -- the nodes whose shapes the pass changed, in graph order, from their
    inputs' values. The runner then recompiles and re-annotates the graph (``passes.pipeline.run_pass``)."""
    from torch._guards import detect_fake_mode

    g = graph.fx_graph
    g.eliminate_dead_code()
    todo = set(nodes)
    if todo:
        vals = [n.meta.get("val") for n in g.nodes if n.op == "placeholder"]
        mode = detect_fake_mode(vals)
        if mode is None:
            raise PassError(f"{what}: the graph's placeholders carry no fake values to propagate shapes with")
        consts: dict[str, Any] = {}

        def value(a: fx.Node) -> Any:
            if a.op == "get_attr":
                if a.target not in consts:
                    consts[a.target] = mode.from_tensor(_tensor(graph, a.target), static_shapes=True)
                return consts[a.target]
            if a.op == "call_module":  # export's _training_flag
                return graph.gm.get_submodule(a.target)()
            if "val" not in a.meta and a.op == "call_function":  # a plain value (e.g. the dropout rate)
                args, kwargs = fx.node.map_arg((a.args, a.kwargs), value)
                return a.target(*args, **kwargs)
            return a.meta["val"]

        current = None
        try:
            with mode:
                for n in g.nodes:
                    if n not in todo or n.op != "call_function":
                        continue
                    current = n
                    args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
                    rule = None
                    if not isinstance(n.target, torch._ops.OpOverload) and \
                            getattr(n.target, "__module__", "") == _ops_module.__name__:
                        # the compression ops (custom kernels) have no fake implementation: their shape rule
                        rule = _SHAPE_RULES.get(getattr(n.target, "_mase_op", None))
                    n.meta["val"] = rule(*args) if rule is not None else n.target(*args, **kwargs)
        except Exception as exc:  # a shape argument the pass did not know how to rewrite
            raise PassError(f"{what}: the shrunk graph does not run at node {getattr(current, 'name', '?')} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); this "
                            f"model's attention/FFN layout is not supported") from exc


# ------------------------------------------------------------------------------------------
# shrink_layers


@dataclasses.dataclass
class ShrinkLayersConfig(Config):
    """Keep the layers ``keep`` (original indices) or ``num_layers`` of them chosen by ``strategy``."""

    keep: Optional[list[int]] = None
    num_layers: Optional[int] = None
    strategy: Literal["first", "spread"] = "spread"

    def validate(self, path: str = "") -> None:
        p = f"{path or 'shrink_layers'}."
        if (self.keep is None) == (self.num_layers is None):
            raise ConfigError(f"{p}keep / {p}num_layers: give exactly one of them (keep = [original layer "
                              f"indices] or num_layers = <count>)")
        if self.keep is not None:
            if not self.keep:
                raise ConfigError(f"{p}keep = []: keeping 0 layers; keep at least one")
            if len(set(self.keep)) != len(self.keep):
                raise ConfigError(f"{p}keep = {self.keep}: an index is repeated")
            if any(i < 0 for i in self.keep):
                raise ConfigError(f"{p}keep = {self.keep}: layer indices are >= 0")
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"{p}num_layers = {self.num_layers}: keeping 0 layers; keep at least one")


def spread_indices(n: int, layers: list[int]) -> list[int]:
    """``n`` evenly spaced entries of ``layers`` (first and last included; n = 1: the last)."""
    if n == 1:
        return [layers[-1]]
    L = len(layers)
    return [layers[math.floor(i * (L - 1) / (n - 1) + 0.5)] for i in range(n)]


def _layer_io(graph: MaseGraph, i: int, nodes: list[fx.Node]) -> tuple[fx.Node, fx.Node]:
    """(hidden-state input, output) of layer ``i``."""
    inside = set(nodes)
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(outputs) != 1:
        raise MaseError(f"shrink_layers: layer {i} has {len(outputs)} outputs used outside it "
                        f"({[n.name for n in outputs]}); expected one hidden state")
    out = outputs[0]
    want = graph.meta(out).outputs
    inputs = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a in inside or a.op == "get_attr" or a in inputs:
                continue
            if graph.meta(a).outputs == want:
                inputs.append(a)
    if len(inputs) != 1:
        raise MaseError(f"shrink_layers: layer {i}: found {len(inputs)} inputs shaped like its output "
                        f"({[n.name for n in inputs]}); expected one hidden-state input")
    return inputs[0], out


@register_pass("shrink_layers", ShrinkLayersConfig, kind="transform", example={"num_layers": 1})
def shrink_layers(graph: MaseGraph, config: ShrinkLayersConfig) -> PassResult:
    """Keep a subset of the encoder/decoder layers; removed layers pass their input through."""
    calls = layer_calls(graph)
    existing = list(calls)
    if not existing:
        raise ConfigError("shrink_layers: this graph has no layers (module paths ...layer.<i> / layers.<i> / h.<i>)")
    if config.num_layers is not None:
        if config.num_layers > len(existing):
            raise ConfigError(f"shrink_layers.num_layers = {config.num_layers}: the graph has only {len(existing)} "
                              f"layers ({existing})")
        keep = existing[:config.num_layers] if config.strategy == "first" else spread_indices(config.num_layers, existing)
    else:
        keep = list(config.keep)
    bad = [i for i in keep if i not in calls]
    if bad:
        raise ConfigError(f"shrink_layers.keep = {keep}: layer {bad[0]} does not exist; the layers are: "
                          f"{existing}")
    keep = sorted(keep)
    before = _num_params(graph)
    removed = [i for i in existing if i not in keep]
    ios = {i: _layer_io(graph, i, calls[i]) for i in removed}
    attrs_before = {n.target for n in graph.nodes if n.op == "get_attr"}
    subst: dict[fx.Node, fx.Node] = {}  # removed layer output -> what replaces it (chains of removed layers)
    for i in removed:
        x, out = ios[i]
        x = subst.get(x, x)
        out.replace_all_uses_with(x)
        subst[out] = x
        # erase the layer's nodes explicitly: dead-code elimination keeps random ops (dropout) as impure
        for n in reversed(calls[i]):
            if not n.users:
                graph.fx_graph.erase_node(n)
        left = [n.name for n in calls[i] if n.graph is not None and n in set(graph.nodes)]
        if left:
            raise PassError(f"shrink_layers: layer {i}: nodes {left[:5]} are still used after removing it")
    graph.fx_graph.eliminate_dead_code()
    dropped = _drop_unread_tensors(graph, attrs_before)
    refresh_shapes(graph, "shrink_layers")  # the remaining nodes keep their shapes
    after = _num_params(graph)
    log.info("shrink_layers: kept %s, removed %s (%d parameters)", keep, removed, dropped)
    info = {"kept": list(keep), "removed": removed, "params_before": before, "params_after": after,
            "params_removed": before - after}
    return PassResult(graph, info, {"keep": keep, "num_layers": None})


# ------------------------------------------------------------------------------------------
# prune_heads


def _check_keep_map(field: str, keep: Any, lo: int = 1) -> None:
    values = keep.items() if isinstance(keep, dict) else [(None, keep)]
    for k, v in values:
        where = f"{field}.{k}" if k is not None else field
        if isinstance(v, float):
            if not 0 < v < 1:
                raise ConfigError(f"{where} = {v}: a fraction must be in (0, 1); give an integer count otherwise")
        elif v < lo:
            raise ConfigError(f"{where} = {v}: keeping {v} {'heads' if 'heads' in field else 'neurons'}; keep at "
                              f"least {lo}")


def _check_remove(field: str, remove: dict[str, list[int]]) -> None:
    for k, idx in remove.items():
        if not k.isdigit():
            raise ConfigError(f"{field}.{k}: layer keys are layer indices as strings ('0', '1', ...)")
        if len(set(idx)) != len(idx):
            raise ConfigError(f"{field}.{k} = {idx}: an index is repeated")
        if any(i < 0 for i in idx):
            raise ConfigError(f"{field}.{k} = {idx}: indices are >= 0")


def _check_removed(name: str, layer: str, idx: list[int], n: int, unit: str) -> None:
    """Indices ``idx`` removed from layer ``layer`` of ``n`` units: each in range, and one unit left."""
    bad = [i for i in idx if i >= n]
    if bad:
        raise ConfigError(f"{name}.remove.{layer} = {idx}: {unit} {bad[0]} is out of range; layer {layer} has "
                          f"{unit}s 0 .. {n - 1}")
    if len(idx) >= n:
        raise ConfigError(f"{name}.remove.{layer} = {idx}: keeping 0 {unit}s in layer {layer}; keep at least one")


def _check_keep_or_remove(p: str, keep: Any, remove: Any, keep_what: str, unit: str) -> None:
    """``keep`` (an int, fraction or ``{layer: int}``, layer keys as digit strings) and/or concrete ``remove``."""
    if keep is None and remove is None:
        raise ConfigError(f"{p}.keep: give the {keep_what} or {p}.remove ({{layer: [{unit} indices]}})")
    if keep is not None:
        _check_keep_map(f"{p}.keep", keep)
        for k in (keep if isinstance(keep, dict) else {}):
            if not k.isdigit():
                raise ConfigError(f"{p}.keep.{k}: layer keys are layer indices as strings ('0', '1', ...)")
    if remove is not None:
        _check_remove(f"{p}.remove", remove)


@dataclasses.dataclass
class PruneHeadsConfig(Config):
    """Heads kept (all layers or per layer key), the score ranking them, or concrete ``remove`` indices."""

    keep: Optional[int | dict[str, int]] = None
    score: Literal["l1", "gradient"] = "l1"
    remove: Optional[dict[str, list[int]]] = None
    num_batches: int = 8

    def validate(self, path: str = "") -> None:
        p = path or "prune_heads"
        _check_keep_or_remove(p, self.keep, self.remove, "heads kept (an int, or {layer: int})", "head")
        if self.num_batches < 1:
            raise ConfigError(f"{p}.num_batches = {self.num_batches}: use at least 1 batch")


def _head_dim(graph: MaseGraph) -> int:
    try:
        return family_of(graph).head_dim(graph.model_info.get("hf_config") or {})
    except MaseError as exc:
        raise MaseError(f"prune_heads: {exc}") from None


class _Attn:
    """One layer's attention projections and its head layout."""

    def __init__(self, graph: MaseGraph, key: str, roles: dict[str, list[fx.Node]], d: int) -> None:
        self.key, self.roles, self.d = key, roles, d
        if "o" not in roles or not ("qkv" in roles or all(r in roles for r in "qkv")):
            raise MaseError(f"prune_heads: layer {key}: found projections {sorted(roles)}, need q, k, v (or fused qkv) and o")
        self.o_weight = _tensor(graph, _one_weight(roles["o"], f"layer {key} output projection"))
        if "qkv" in roles:
            w = _tensor(graph, _one_weight(roles["qkv"], f"layer {key} qkv"))
            self.q_width = self.kv_width = w.shape[0] // 3
        else:
            self.q_width = _tensor(graph, _one_weight(roles["q"], f"layer {key} query")).shape[0]
            self.kv_width = _tensor(graph, _one_weight(roles["k"], f"layer {key} key")).shape[0]
        if self.q_width % d or self.kv_width % d or self.o_weight.shape[1] != self.q_width:
            raise MaseError(f"prune_heads: layer {key}: projection widths {self.q_width}/{self.kv_width} do not fit "
                            f"head size {d}")
        self.heads, self.kv_heads = self.q_width // d, self.kv_width // d
        self.group = self.heads // self.kv_heads  # query heads per key/value head (1 without GQA)

    def head_rows(self, heads: list[int], offset: int = 0) -> list[int]:
        return [offset + h * self.d + j for h in heads for j in range(self.d)]


def _l1_head_scores(attn: _Attn) -> torch.Tensor:
    w = attn.o_weight.detach().abs().float()
    return w.reshape(w.shape[0], attn.heads, attn.d).sum(dim=(0, 2))


def _gradient_head_scores(graph: MaseGraph, layers: dict[str, _Attn], batches: Iterable[Any],
                          num_batches: int) -> dict[str, torch.Tensor]:
    """Taylor importance per head (see the module docstring)."""
    params: dict[str, torch.Tensor] = {}
    for a in layers.values():
        for role, nodes in a.roles.items():
            for n in nodes:
                for arg in (n.args[1], n.args[2] if len(n.args) > 2 else None):
                    if isinstance(arg, fx.Node) and arg.op == "get_attr":
                        params[arg.target] = _tensor(graph, arg.target)
    names = list(params)
    scores = {k: torch.zeros(a.heads) for k, a in layers.items()}
    was_training = graph.training
    used = 0
    graph.eval()
    try:
        for batch in batches:
            if used >= num_batches:
                break
            batch = dict(batch)
            if "labels" not in batch:
                raise ConfigError("prune_heads.score = 'gradient': the context's batches need 'labels'")
            inputs = {k: v for k, v in batch.items() if k in graph.input_names}
            with torch.enable_grad():
                loss = graph(**inputs, labels=batch["labels"]).loss
                grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
            prod = {k: (params[k].detach() * g.detach()) if g is not None else torch.zeros_like(params[k])
                    for k, g in zip(names, grads)}
            for key, a in layers.items():
                per_head = torch.zeros(a.heads)
                for role, nodes in a.roles.items():
                    n = nodes[0]
                    w = prod[n.args[1].target]
                    b = prod.get(n.args[2].target) if len(n.args) > 2 and isinstance(n.args[2], fx.Node) else None
                    if role == "o":
                        per_head += w.reshape(w.shape[0], a.heads, a.d).sum(dim=(0, 2))
                        continue
                    parts = {"q": [0], "k": [], "v": [], "qkv": [0, 1, 2]}[role] if a.group > 1 else \
                        {"q": [0], "k": [0], "v": [0], "qkv": [0, 1, 2]}[role]
                    for part in parts:
                        if role == "qkv" and part > 0 and a.group > 1:
                            continue
                        rows = w[part * a.q_width:(part + 1) * a.q_width] if role == "qkv" else w
                        per_head += rows.reshape(a.heads, a.d, -1).sum(dim=(1, 2))
                        if b is not None:
                            bb = b[part * a.q_width:(part + 1) * a.q_width] if role == "qkv" else b
                            per_head += bb.reshape(a.heads, a.d).sum(dim=1)
                scores[key] += per_head.abs()
            used += 1
    finally:
        graph.train(was_training)
    if used == 0:
        raise ConfigError("prune_heads.score = 'gradient': the context's batches are empty; give at least one batch")
    return scores


def _lowest(scores: torch.Tensor, candidates: list[int], n: int) -> list[int]:
    """The ``n`` candidates with the lowest scores (ties: lower index first), sorted."""
    ranked = sorted(candidates, key=lambda i: (float(scores[i]), i))
    return sorted(ranked[:n])


def _resolve_keep(field: str, keep: Any, key: str, width: int, what: str) -> int | None:
    """Units kept in layer ``key`` (None: layer not targeted)."""
    if isinstance(keep, dict):
        if key not in keep:
            return None
        k, where = keep[key], f"{field}.{key}"
    else:
        k, where = keep, field
    if isinstance(k, float):
        k = max(1, math.floor(k * width + 0.5))
    if k > width:
        raise ConfigError(f"{where} = {k}: layer {key} has only {width} {what}; keep 1 .. {width}")
    return k


def _heads_targeted(layers: dict[str, _Attn], keep: Any) -> dict[str, int]:
    """Heads kept per targeted layer; under GQA a multiple of the layer's key/value heads."""
    targets = {k: _resolve_keep("prune_heads.keep", keep, k, a.heads, "heads") for k, a in layers.items()}
    targets = {k: v for k, v in targets.items() if v is not None}
    for k, v in targets.items():
        a = layers[k]
        if a.group > 1 and v % a.kv_heads:
            where = f"prune_heads.keep.{k}" if isinstance(keep, dict) else "prune_heads.keep"
            raise ConfigError(f"{where} = {v}: layer {k} has {a.heads} query heads in {a.kv_heads} key/value "
                              f"groups (GQA); heads kept must be a multiple of {a.kv_heads} (the same number in "
                              f"every group): choose one of {list(range(a.kv_heads, a.heads + 1, a.kv_heads))}")
    return targets


def _heads_to_remove(graph: MaseGraph, layers: dict[str, _Attn], config: PruneHeadsConfig,
                     context: PassContext) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """The scores and the lowest-scoring heads to remove per targeted layer (the same number per GQA group)."""
    targets = _heads_targeted(layers, config.keep)
    if config.score == "gradient":
        if context.batches is None:
            raise ConfigError("prune_heads.score = 'gradient' needs data: run_pass(graph, 'prune_heads', config, "
                              "context=PassContext(batches=<iterable of input dicts with labels>)) (or give "
                              "prune_heads.remove)")
        scores = _gradient_head_scores(graph, {k: layers[k] for k in targets}, context.batches, config.num_batches)
    else:
        scores = {k: _l1_head_scores(layers[k]) for k in targets}
    remove = {}
    for k, v in targets.items():
        a = layers[k]
        if a.group == 1:
            remove[k] = _lowest(scores[k], list(range(a.heads)), a.heads - v)
            continue
        per_group = a.group - v // a.kv_heads
        remove[k] = sorted(h for g in range(a.kv_heads)
                           for h in _lowest(scores[k], list(range(g * a.group, (g + 1) * a.group)), per_group))
    return scores, remove


def _check_heads_removed(layers: dict[str, _Attn], remove: dict[str, list[int]]) -> None:
    """The (given or resolved) indices are valid heads, the same number from each GQA group."""
    for k, idx in remove.items():
        a = layers[k]
        _check_removed("prune_heads", k, idx, a.heads, "head")
        counts = [sum(1 for i in idx if i // a.group == g) for g in range(a.kv_heads)]
        if a.group > 1 and len(set(counts)) > 1:
            raise ConfigError(f"prune_heads.remove.{k} = {idx}: layer {k} groups its {a.heads} query heads in "
                              f"{a.kv_heads} key/value groups of {a.group} (GQA); remove the same number from each "
                              f"group (removed per group: {counts})")


def _cut_heads(graph: MaseGraph, a: _Attn, idx: list[int], touched: set[fx.Node]) -> int:
    """Cut the heads ``idx`` out of layer ``a``'s projections and fix the shapes after them; returns the heads left.

    Adds the nodes whose shapes change to ``touched``.
    """
    d = a.d
    kept = [h for h in range(a.heads) if h not in idx]
    new_heads = len(kept)
    done: set[str] = set()
    q_rows = torch.tensor(a.head_rows(kept))
    if "qkv" in a.roles:
        rows = torch.tensor(a.head_rows(kept) + a.head_rows(kept, a.q_width) + a.head_rows(kept, 2 * a.q_width))
        _cut_rows(graph, a.roles["qkv"], rows, done)
        widths = {a.q_width: new_heads * d, 3 * a.q_width: 3 * new_heads * d}
    else:
        _cut_rows(graph, a.roles["q"], q_rows, done)
        if a.group == 1:
            _cut_rows(graph, a.roles["k"] + a.roles["v"], q_rows, done)
        widths = {a.q_width: new_heads * d}
    _cut_cols(graph, a.roles["o"], q_rows, done)
    producers = [n for r in ("q", "k", "v", "qkv") for n in a.roles.get(r, [])]
    repeat = (a.group, new_heads // a.kv_heads) if a.group > 1 else None
    _fix_each_call(graph, producers, a.roles["o"], touched,
                   lambda region: _fix_shapes(region, widths, heads=(a.heads, new_heads), repeat=repeat,
                                              created=touched))
    return new_heads


@register_pass("prune_heads", PruneHeadsConfig, kind="transform", takes_context=True,
               example=PassExample({"keep": 1, "score": "gradient", "num_batches": 2}, context=example_context))
def prune_heads(graph: MaseGraph, config: PruneHeadsConfig, context: PassContext) -> PassResult:
    """Remove whole attention heads per layer (ranked by L1 of the output projection or a gradient score)."""
    d = _head_dim(graph)
    projections = _layer_projections(graph, "attention")
    layers = {k: _Attn(graph, k, r, d) for k, r in projections.items()}
    keys = list(layers)
    for field, mapping in (("prune_heads.keep", config.keep), ("prune_heads.remove", config.remove)):
        for k in (mapping if isinstance(mapping, dict) else {}):
            if k not in layers:
                raise _layer_keys_error(f"{field}.{k}", k, keys, "attention")
    if config.remove is None:
        scores, remove = _heads_to_remove(graph, layers, config, context)
        decisions = {"remove": remove}
    else:
        scores, remove, decisions = {}, config.remove, None
    _check_heads_removed(layers, remove)
    before = _num_params(graph)
    rows_info = []
    touched: set[fx.Node] = set()  # nodes whose shapes change
    for k, idx in remove.items():
        a = layers[k]
        if not idx:
            rows_info.append({"layer": k, "heads_before": a.heads, "heads_after": a.heads, "removed": []})
            continue
        new_heads = _cut_heads(graph, a, idx, touched)
        info_row = {"layer": k, "heads_before": a.heads, "heads_after": new_heads, "removed": list(idx)}
        if k in scores:
            info_row["scores"] = [float(s) for s in scores[k]]
        rows_info.append(info_row)
    refresh_shapes(graph, "prune_heads", touched)
    after = _num_params(graph)
    log.info("prune_heads: %s", {r["layer"]: r["heads_after"] for r in rows_info})
    info = {"layers": rows_info, "params_before": before, "params_after": after, "params_removed": before - after}
    return PassResult(graph, info, decisions)


# ------------------------------------------------------------------------------------------
# prune_ffn


@dataclasses.dataclass
class PruneFFNConfig(Config):
    """Neurons kept per feed-forward layer (int, fraction, or per layer key) or concrete ``remove`` indices."""

    keep: Optional[int | float | dict[str, int]] = None
    remove: Optional[dict[str, list[int]]] = None

    def validate(self, path: str = "") -> None:
        p = path or "prune_ffn"
        _check_keep_or_remove(p, self.keep, self.remove,
                              "neurons kept (an int, a fraction in (0, 1), or {layer: int})", "neuron")


class _FFN:
    def __init__(self, graph: MaseGraph, key: str, roles: dict[str, list[fx.Node]]) -> None:
        self.key, self.roles = key, roles
        if "down" not in roles or not ("up" in roles or "glu" in roles):
            raise MaseError(f"prune_ffn: layer {key}: found projections {sorted(roles)}, need up (or Wi) and down")
        self.down = _tensor(graph, _one_weight(roles["down"], f"layer {key} down projection"))
        self.width = self.down.shape[1]
        self.up = _tensor(graph, _one_weight(roles["up"], f"layer {key} up")) if "up" in roles else None
        self.gate = _tensor(graph, _one_weight(roles["gate"], f"layer {key} gate")) if "gate" in roles else None
        self.glu = _tensor(graph, _one_weight(roles["glu"], f"layer {key} Wi")) if "glu" in roles else None

    def l1(self) -> torch.Tensor:
        s = self.down.detach().abs().float().sum(dim=0)
        if self.up is not None:
            s = s + self.up.detach().abs().float().sum(dim=1)
        if self.gate is not None:
            s = s + self.gate.detach().abs().float().sum(dim=1)
        if self.glu is not None:
            g = self.glu.detach().abs().float().sum(dim=1)
            s = s + g[:self.width] + g[self.width:]
        return s


@register_pass("prune_ffn", PruneFFNConfig, kind="transform", example={"keep": 0.5})
def prune_ffn(graph: MaseGraph, config: PruneFFNConfig) -> PassResult:
    """Remove feed-forward (intermediate) neurons per layer, the lowest-L1 ones."""
    layers = {k: _FFN(graph, k, r) for k, r in _layer_projections(graph, "ffn").items()}
    keys = list(layers)
    for field, mapping in (("prune_ffn.keep", config.keep), ("prune_ffn.remove", config.remove)):
        for k in (mapping if isinstance(mapping, dict) else {}):
            if k not in layers:
                raise _layer_keys_error(f"{field}.{k}", k, keys, "feed-forward")
    scores: dict[str, torch.Tensor] = {}
    if config.remove is None:
        remove = {}
        for k, f in layers.items():
            v = _resolve_keep("prune_ffn.keep", config.keep, k, f.width, "neurons")
            if v is None:
                continue
            scores[k] = f.l1()
            remove[k] = _lowest(scores[k], list(range(f.width)), f.width - v)
        decisions = {"remove": remove}
    else:
        remove, decisions = config.remove, None
    for k, idx in remove.items():
        f = layers[k]
        _check_removed("prune_ffn", k, idx, f.width, "neuron")
    before = _num_params(graph)
    rows_info = []
    touched: set[fx.Node] = set()  # nodes whose shapes change
    for k, idx in remove.items():
        f = layers[k]
        kept = [j for j in range(f.width) if j not in idx]
        if idx:
            done: set[str] = set()
            keep_t = torch.tensor(kept)
            ups = f.roles.get("up", []) + f.roles.get("gate", [])
            _cut_rows(graph, ups, keep_t, done)
            if "glu" in f.roles:
                _cut_rows(graph, f.roles["glu"], torch.tensor(kept + [f.width + j for j in kept]), done)
            _cut_cols(graph, f.roles["down"], keep_t, done)
            widths = {f.width: len(kept), 2 * f.width: 2 * len(kept)}
            _fix_each_call(graph, ups + f.roles.get("glu", []), f.roles["down"], touched,
                           lambda region: _fix_shapes(region, widths))
        row = {"layer": k, "width_before": f.width, "width_after": len(kept), "removed": list(idx)}
        if k in scores:
            row["scores"] = [float(s) for s in scores[k]]
        rows_info.append(row)
    refresh_shapes(graph, "prune_ffn", touched)
    after = _num_params(graph)
    log.info("prune_ffn: %s", {r["layer"]: r["width_after"] for r in rows_info})
    info = {"layers": rows_info, "params_before": before, "params_after": after, "params_removed": before - after}
    return PassResult(graph, info, decisions)
