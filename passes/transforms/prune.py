"""``prune``: MASE-compatible weight and activation pruning of linear nodes, masks persistent and enforced.

Config (MASE's ``prune_transform_pass`` format, plus per-node overrides)::

    [passes.prune]
    weight = { sparsity = 0.5, method = "l1-norm", scope = "local", granularity = "elementwise" }
    activation = { sparsity = 0.5, method = "l1-norm", scope = "local", granularity = "token" }
    # optional: per-node overrides, keyed by node name or module path (by = "name", default)
    # or by regular expressions re.match-ed against both (by = "regex_name")
    [passes.prune.nodes."classifier"]
    weight = { sparsity = 0.0 }
    activation = { sparsity = 0.0 }

Every linear node is targeted (as MASE: all Linear layers); override ``sparsity = 0`` to spare one.

Weights (``method``: ``l1-norm`` | ``random``; ``scope``: ``local`` | ``global``): exactly
``round(s * n)`` weights are pruned per tensor (local) or over all targeted weight tensors together
(global) -- smallest ``|w|`` of the float weights first, ties by flat index (see
:mod:`passes.transforms.sparsity`); ``random`` draws them with ``torch.Generator(seed)``. Under
``global`` scope a node with a weight override is pruned on its own with its override. The mask is a
registered bool buffer ``<module>.weight_mask`` read by a ``get_attr`` node, so it is saved and
loaded with the graph; the effective weight is ``w * mask`` on every forward pass and its gradient
is masked, and the raw weights are zeroed at prune time, so pruned weights stay exactly zero through
training (AdamW weight decay included). Pruning an already-pruned node keeps the old mask's zeros.

Activations (``method``: ``l1-norm`` | ``random``; ``scope``: ``local``; ``granularity``: ``token`` |
``tensor``): each forward pass zeroes the ``round(s * d)`` smallest-magnitude entries of every
feature vector of the node's input (``token``, ties by index, so a sample's result does not depend
on its batch) or MASE's ``|x| > quantile(|x|, s)`` over the whole batch tensor (``tensor``). On a
quantised node the mask is computed on the quantised input the matmul consumes. ``random`` draws
``round(s * d)`` uniformly chosen entries per vector (``token``) or each entry with probability
``s`` (``tensor``), anew on every forward pass, from a generator seeded by ``seed`` (default 0, as
for weights; a per-node override may set its own): call ``n`` (0, 1, ...) of the node at position
``i`` among the graph's linear nodes draws from ``activation_generator(seed, i, n)`` (see
:mod:`passes.transforms.sparsity`). The call count is a persistent int64 buffer
``<module>.act_prune_calls``, saved with the graph, so batches differ from call to call, while two
graphs built with the same seed (or a saved graph and its loaded copy) give the same sequence of
masks. Pruning a node again (re)starts its count at 0.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal, Optional

import torch
from torch import fx

from mase_lite.config import Config
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph

from ..registry import register_pass
from .compressed_nodes import (
    as_compressed_linear,
    assign_by_key,
    check_regex,
    get_tensor,
    linear_mask_node,
    linear_nodes,
    linear_settings,
    module_path,
    owner_and_name,
    refresh_shared_inputs,
    update_kwargs,
)
from .sparsity import check_sparsity, weight_masks

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WeightPruneConfig(Config):
    """``weight`` table: fraction ``sparsity`` in [0, 1] of each weight tensor (or of all, global)."""

    sparsity: float = 0.0
    method: Literal["l1-norm", "random"] = "l1-norm"
    scope: Literal["local", "global"] = "local"
    granularity: Literal["elementwise"] = "elementwise"
    seed: int = 0

    def validate(self, path: str = "") -> None:
        check_sparsity(self.sparsity, f"{path}.sparsity" if path else "sparsity")


@dataclasses.dataclass
class ActivationPruneConfig(Config):
    """``activation`` table: fraction ``sparsity`` of each node input zeroed on every forward pass."""

    sparsity: float = 0.0
    method: Literal["l1-norm", "random"] = "l1-norm"
    scope: Literal["local"] = "local"
    granularity: Literal["token", "tensor"] = "token"
    seed: int = 0

    def validate(self, path: str = "") -> None:
        check_sparsity(self.sparsity, f"{path}.sparsity" if path else "sparsity")


@dataclasses.dataclass
class WeightOverride(Config):
    """Per-node ``weight`` override: unset fields inherit from the pass's ``weight`` table."""

    sparsity: Optional[float] = None
    method: Optional[Literal["l1-norm", "random"]] = None
    seed: Optional[int] = None

    def validate(self, path: str = "") -> None:
        if self.sparsity is not None:
            check_sparsity(self.sparsity, f"{path}.sparsity" if path else "sparsity")


@dataclasses.dataclass
class ActivationOverride(Config):
    """Per-node ``activation`` override: unset fields inherit from the pass's ``activation`` table."""

    sparsity: Optional[float] = None
    method: Optional[Literal["l1-norm", "random"]] = None
    granularity: Optional[Literal["token", "tensor"]] = None
    seed: Optional[int] = None

    def validate(self, path: str = "") -> None:
        if self.sparsity is not None:
            check_sparsity(self.sparsity, f"{path}.sparsity" if path else "sparsity")


@dataclasses.dataclass
class NodeOverride(Config):
    weight: Optional[WeightOverride] = None
    activation: Optional[ActivationOverride] = None


@dataclasses.dataclass
class PruneConfig(Config):
    """The ``prune`` pass config (see the module docstring)."""

    weight: WeightPruneConfig = dataclasses.field(default_factory=WeightPruneConfig)
    activation: ActivationPruneConfig = dataclasses.field(default_factory=ActivationPruneConfig)
    by: Literal["name", "regex_name"] = "name"
    nodes: dict[str, NodeOverride] = dataclasses.field(default_factory=dict)

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.by == "regex_name":
            for key in self.nodes:
                check_regex(f"{p}nodes.{key}", key)


def _merge(base: Config, override: Optional[Config]) -> Config:
    if override is None:
        return base
    changes = {k: v for k, v in dataclasses.asdict(override).items() if v is not None}
    return dataclasses.replace(base, **changes)


def _assign_overrides(graph: MaseGraph, config: PruneConfig, nodes: list[fx.Node]) -> dict[fx.Node, NodeOverride]:
    return assign_by_key(graph, nodes, config.nodes, config.by == "regex_name", "prune.nodes", "linear node")


def _set_mask(graph: MaseGraph, node: fx.Node, mask: torch.Tensor) -> None:
    """Store ``mask`` (combined with an existing one) as a buffer next to the weight; wire it in."""
    weight_node = node.args[1]
    owner_path, wname = owner_and_name(weight_node.target)
    owner = graph.gm.get_submodule(owner_path) if owner_path else graph.gm
    weight = get_tensor(graph, weight_node)
    old_node = linear_mask_node(node)
    if old_node is not None:
        mask = mask & get_tensor(graph, old_node).to(torch.bool)
    buf_name = f"{wname}_mask"
    mask = mask.to(device=weight.device).contiguous()
    if buf_name in owner._buffers:
        owner._buffers[buf_name] = mask
    elif hasattr(owner, buf_name):
        raise ConfigError(f"cannot add pruning mask: {owner_path}.{buf_name} already exists and is not a buffer")
    else:
        owner.register_buffer(buf_name, mask)
    graph.write_tensor(weight, weight.detach() * mask)  # raw weights zero too: they stay zero under AdamW
    target = f"{owner_path}.{buf_name}" if owner_path else buf_name
    if old_node is None or old_node.target != target:
        with graph.fx_graph.inserting_before(node):
            mask_node = graph.fx_graph.get_attr(target)
        node.args = (*node.args[:3], mask_node)


#: The call counter of a node's random activation masks (on the module owning its weight).
ACT_CALLS_BUFFER = "act_prune_calls"
_ACT_STREAM_KWARGS = ("act_seed", "act_calls")


def _set_activation_stream(graph: MaseGraph, node: fx.Node, seed: int, offset: int) -> None:
    """Random activation pruning: ``act_seed = (seed, offset)`` and a call counter starting at 0."""
    weight_node = node.args[1]
    owner_path, wname = owner_and_name(weight_node.target)
    owner = graph.gm.get_submodule(owner_path) if owner_path else graph.gm
    buf_name = ACT_CALLS_BUFFER if owner_path else f"{wname}_{ACT_CALLS_BUFFER}"
    target = f"{owner_path}.{buf_name}" if owner_path else buf_name
    if hasattr(owner, buf_name) and buf_name not in owner._buffers:
        raise ConfigError(f"cannot add the activation-pruning call counter: {target} already exists and is not a "
                          "buffer")
    device = get_tensor(graph, weight_node).device
    owner.register_buffer(buf_name, torch.zeros((), dtype=torch.int64, device=device))  # a new tensor: count 0
    calls = node.kwargs.get("act_calls")
    if not (isinstance(calls, fx.Node) and calls.target == target):
        with graph.fx_graph.inserting_before(node):
            calls = graph.fx_graph.get_attr(target)
    update_kwargs(node, act_seed=(int(seed), int(offset)), act_calls=calls)


@register_pass("prune", PruneConfig, kind="transform",
               example={"weight": {"sparsity": 0.5, "method": "l1-norm", "scope": "local"},
                        "activation": {"sparsity": 0.25, "method": "random"}})
def prune(graph: MaseGraph, config: PruneConfig) -> tuple[MaseGraph, dict[str, Any]]:
    """Prune linear weights (persistent masks) and activations (every forward pass), MASE's config format."""
    nodes = linear_nodes(graph)
    if not nodes and (config.weight.sparsity > 0 or config.activation.sparsity > 0):
        raise ConfigError("prune: the graph has no linear nodes to prune")
    overrides = _assign_overrides(graph, config, nodes)
    w_cfg = {n: _merge(config.weight, (overrides.get(n) or NodeOverride()).weight) for n in nodes}
    a_cfg = {n: _merge(config.activation, (overrides.get(n) or NodeOverride()).activation) for n in nodes}

    # weight masks: one global group (global scope, nodes without a weight override) + local ones
    glob = [n for n in nodes if config.weight.scope == "global" and w_cfg[n].sparsity > 0
            and (overrides.get(n) is None or overrides[n].weight is None)]
    masks: dict[fx.Node, torch.Tensor] = {}

    def effective(n: fx.Node) -> torch.Tensor:
        w = get_tensor(graph, n.args[1]).detach()
        m = linear_mask_node(n)
        return w if m is None else w * get_tensor(graph, m)

    if glob:
        c = config.weight
        for n, m in zip(glob, weight_masks([effective(n) for n in glob], c.sparsity, c.method, "global", c.seed)):
            masks[n] = m
    for n in nodes:
        c = w_cfg[n]
        if n in masks or c.sparsity <= 0:
            continue
        masks[n] = weight_masks([effective(n)], c.sparsity, c.method, "local", c.seed)[0]

    report = []
    for offset, n in enumerate(nodes):
        a = a_cfg[n]
        if n not in masks and a.sparsity <= 0:
            continue
        as_compressed_linear(n)
        if n in masks:
            _set_mask(graph, n, masks[n])
        if a.sparsity > 0:
            update_kwargs(n, act_prune=(float(a.sparsity), a.method, a.granularity))
            if a.method == "random":
                _set_activation_stream(graph, n, a.seed, offset)
            else:  # deterministic: no stream (an earlier random setting's counter node becomes dead code)
                n.kwargs = {k: v for k, v in n.kwargs.items() if k not in _ACT_STREAM_KWARGS}
        report.append(node_sparsity(graph, n))
        graph.set_annotation(n, "prune", report[-1])
    shared = refresh_shared_inputs(graph)
    total = sum(r["weight_numel"] for r in report if r["weight_mask"])
    zeros = sum(r["weight_pruned"] for r in report if r["weight_mask"])
    log.info("prune: %d nodes, weight sparsity %.4f", len(report), zeros / total if total else 0.0)
    return graph, {"pruned": report, "weight_sparsity": (zeros / total) if total else 0.0,
                   "weights_pruned": zeros, "weights_targeted": total, "shared_inputs": shared}


def node_sparsity(graph: MaseGraph, node: fx.Node) -> dict[str, Any]:
    """Achieved weight sparsity (mask zeros / elements) and activation settings of a linear node."""
    mask_node = linear_mask_node(node)
    w = get_tensor(graph, node.args[1])
    numel = int(w.numel())
    pruned = 0
    if mask_node is not None:
        pruned = numel - int(get_tensor(graph, mask_node).sum())
    ap = linear_settings(node)["act_prune"]
    activation = None if ap is None else {"sparsity": ap[0], "method": ap[1], "granularity": ap[2]}
    if activation is not None and ap[1] == "random":
        activation["seed"] = (node.kwargs.get("act_seed") or (None,))[0]
    return {
        "node": node.name,
        "module": module_path(graph, node),
        "weight_mask": mask_node is not None,
        "weight_numel": numel,
        "weight_pruned": pruned,
        "weight_sparsity": pruned / numel if numel else 0.0,
        "activation": activation,
    }
