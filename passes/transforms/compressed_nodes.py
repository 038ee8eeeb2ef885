"""Graph-side helpers shared by the compression passes: finding linear / embedding / attention nodes,
turning them into calls of :mod:`passes.transforms.ops`, reading their settings back, and sharing
one input quantise/prune node between linears that read the same tensor with the same settings.

A compressed linear node is ``compressed_linear(x, weight, bias, weight_mask, **settings)`` with
``get_attr`` nodes for the tensors (``bias``/``weight_mask`` may be ``None``) and plain-value
keyword settings; the node keeps the name and metadata of the ``aten.linear`` node it replaces.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Iterable, Mapping, Optional, TypeVar

import torch
from torch import fx

from mase_lite.errors import ConfigError, PassError
from mase_lite.graph import MaseGraph

from .ops import compressed_embedding, compressed_linear, compressed_sdpa, has_exact_linear, quantize_prune_input

T = TypeVar("T")

aten = torch.ops.aten

LINEAR_TARGETS = (aten.linear.default, compressed_linear)
EMBEDDING_TARGETS = (aten.embedding.default, compressed_embedding)
ATTENTION_TARGETS = (aten.scaled_dot_product_attention.default, compressed_sdpa)

_LINEAR_DEFAULTS: dict[str, Any] = {
    "data_in": None, "weight_q": None, "bias_q": None, "data_out": None, "act_prune": None, "ste": "plain",
    "prepared_input": False,
}
SHARED_INPUT_MARK = "mase_shared_input"


def is_linear(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in LINEAR_TARGETS


def is_embedding(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in EMBEDDING_TARGETS


def is_attention(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in ATTENTION_TARGETS


def linear_nodes(graph: MaseGraph) -> list[fx.Node]:
    """The graph's linear nodes (plain or compressed), in graph order."""
    return [n for n in graph.nodes if is_linear(n)]


def module_path(graph: MaseGraph, node: fx.Node) -> str:
    return graph.meta(node).module_path or ""


def linear_features(graph: MaseGraph, node: fx.Node) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear node, from its weight."""
    w = get_tensor(graph, node.args[1])
    return int(w.shape[1]), int(w.shape[0])


def get_tensor(graph: MaseGraph, node: Optional[fx.Node]) -> Optional[torch.Tensor]:
    """The tensor a ``get_attr`` node reads (None for None)."""
    if node is None:
        return None
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise PassError(f"expected a parameter (get_attr node), got {node!r}")
    return operator.attrgetter(node.target)(graph.gm)


def linear_settings(node: fx.Node) -> dict[str, Any]:
    """The settings of a linear node (all defaults for a plain ``aten.linear``)."""
    if node.target is compressed_linear:
        return {**_LINEAR_DEFAULTS, **node.kwargs}
    return dict(_LINEAR_DEFAULTS)


def linear_mask_node(node: fx.Node) -> Optional[fx.Node]:
    if node.target is compressed_linear and len(node.args) > 3:
        return node.args[3]
    return None


def as_compressed_linear(node: fx.Node) -> fx.Node:
    """Turn an ``aten.linear`` node into ``compressed_linear(x, w, b, mask=None)`` in place."""
    if node.target is compressed_linear:
        return node
    if node.kwargs:
        raise PassError(f"linear node {node.name} has unexpected keyword arguments {dict(node.kwargs)}")
    x, w, *rest = node.args
    b = rest[0] if rest else None
    node.target = compressed_linear
    node.args = (x, w, b, None)
    node.kwargs = dict(_LINEAR_DEFAULTS)
    return node


def update_kwargs(node: fx.Node, **changes: Any) -> None:
    node.kwargs = {**node.kwargs, **changes}


def as_compressed_embedding(node: fx.Node) -> fx.Node:
    """Turn an ``aten.embedding`` node into ``compressed_embedding(weight, indices, padding_idx)``."""
    if node.target is compressed_embedding:
        return node
    names = ("weight", "indices", "padding_idx", "scale_grad_by_freq", "sparse")
    values = dict(zip(names, node.args))
    values.update(node.kwargs)
    if values.get("scale_grad_by_freq") or values.get("sparse"):
        raise PassError(f"embedding node {node.name}: scale_grad_by_freq/sparse embeddings cannot be quantised")
    node.target = compressed_embedding
    node.args = (values["weight"], values["indices"], values.get("padding_idx", -1))
    node.kwargs = {"weight_q": None, "data_out": None, "ste": "plain"}
    return node


def as_compressed_sdpa(node: fx.Node) -> fx.Node:
    """Turn an ``aten.scaled_dot_product_attention`` node into ``compressed_sdpa`` (same arguments)."""
    if node.target is compressed_sdpa:
        return node
    node.target = compressed_sdpa
    node.kwargs = {**node.kwargs, "data_in": None, "data_out": None, "ste": "plain"}
    return node


def owner_and_name(target: str) -> tuple[str, str]:
    """``("a.b", "weight")`` for ``"a.b.weight"``."""
    owner, _, name = target.rpartition(".")
    return owner, name


def match_nodes(graph: MaseGraph, nodes: Iterable[fx.Node], key: str, regex: bool) -> list[fx.Node]:
    """Nodes whose name or module path equals ``key`` (or, with ``regex``, ``re.match`` it, as MASE)."""
    out = []
    if regex:
        pattern = re.compile(key)
        for n in nodes:
            if pattern.match(n.name) or pattern.match(module_path(graph, n)):
                out.append(n)
    else:
        out = [n for n in nodes if n.name == key or module_path(graph, n) == key]
    return out


def assign_by_key(graph: MaseGraph, nodes: list[fx.Node], entries: Mapping[str, T], regex: bool, path: str,
                  what: str) -> dict[fx.Node, T]:
    """Map each node to the value of the first key (name, module path or regex) that matches it.

    A key that matches none of ``nodes`` is a ConfigError naming ``path.key`` and the candidates."""
    out: dict[fx.Node, T] = {}
    for key, value in entries.items():
        matched = match_nodes(graph, nodes, key, regex)
        if not matched:
            raise no_match_error(f"{path}.{key}", key, graph, nodes, what)
        for n in matched:
            out.setdefault(n, value)
    return out


def check_regex(path: str, pattern: str) -> None:
    """Raise a ConfigError naming ``path`` if ``pattern`` is not a valid regular expression."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{path} = {pattern!r} is not a valid regular expression: {exc}") from None


def describe_choices(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def no_match_error(path: str, key: str, graph: MaseGraph, nodes: list[fx.Node], what: str) -> ConfigError:
    paths = list(dict.fromkeys(module_path(graph, n) or n.name for n in nodes))
    return ConfigError(f"{path} = {key!r} matches no {what}; the {what}s are (by module path; node names also "
                       f"work): {describe_choices(paths) or '(none)'}")


# ------------------------------------------------------------------------------------------
# Sharing the input path of linears that read the same tensor (e.g. query/key/value)


def _deterministic(settings: dict[str, Any]) -> bool:
    ap = settings["act_prune"]
    return ap is None or ap[1] != "random"


def refresh_shared_inputs(graph: MaseGraph) -> int:
    """Recompute the shared input nodes; returns how many there are.

    Linears reading the same tensor with the same ``data_in``/``act_prune``/``ste`` (and a
    deterministic pruning method) compute ``prune(q(x))`` once, in a :func:`quantize_prune_input` node
    placed before the first of them, and take it with ``prepared_input=True``. Results are identical
    to computing it per node. Deterministic in the graph's structure (safe to replay).
    """
    g = graph.fx_graph
    # undo earlier sharing
    for node in list(g.nodes):
        if node.op == "call_function" and node.target is quantize_prune_input and node.meta.get(SHARED_INPUT_MARK):
            src = node.args[0]
            for user in list(node.users):
                update_kwargs(user, prepared_input=False)
            node.replace_all_uses_with(src)
            g.erase_node(node)
    groups: dict[tuple, list[fx.Node]] = {}
    for node in g.nodes:
        if node.target is not compressed_linear:
            continue
        s = linear_settings(node)
        if s["data_in"] is None and s["act_prune"] is None:
            continue
        if not _deterministic(s):
            continue
        if has_exact_linear(s["data_in"]):
            continue  # such a linear quantises its own input, to compute from the integer codes
        key = (node.args[0], s["data_in"], s["act_prune"], s["ste"])
        groups.setdefault(key, []).append(node)
    shared = 0
    for (x, data_in, act_prune, ste), users in groups.items():
        if len(users) < 2:
            continue
        with g.inserting_before(users[0]):
            prep = g.call_function(quantize_prune_input, (x,), {"data_in": data_in, "act_prune": act_prune, "ste": ste})
        prep.meta[SHARED_INPUT_MARK] = True
        if isinstance(x, fx.Node) and "val" in x.meta:
            prep.meta["val"] = x.meta["val"]
        for user in users:
            user.args = (prep, *user.args[1:])
            update_kwargs(user, prepared_input=True)
        shared += 1
    return shared


def compressed_input_node(node: fx.Node) -> fx.Node:
    """The tensor a (compressed) linear node's input path starts from (before a shared input node)."""
    x = node.args[0]
    if isinstance(x, fx.Node) and x.target is quantize_prune_input and x.meta.get(SHARED_INPUT_MARK):
        return x.args[0]
    return x
