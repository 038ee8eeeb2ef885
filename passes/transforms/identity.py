"""``replace_linear_with_identity``: Lab 2's structural choice -- chosen square Linear nodes become identities.

Config (at least one selector)::

    [passes.replace_linear_with_identity]
    module_paths = ["bert.encoder.layer.0.attention.self.query"]   # module paths
    nodes = ["linear_3"]                                           # node names
    regex = "bert\\.encoder\\.layer\\.1\\.attention\\.output"        # re.match on path or node name
    all_square = false                                             # every square linear node

A replaced node's output is its input (``y = x``; the bias goes too), so only ``in_features ==
out_features`` layers qualify: a non-square target, or a path, name or regex that matches no linear
node, is an error naming it. The replaced layers' parameters are removed from the graph (unless
another node still reads them), so parameter counts and the optimizer see the smaller model. The
graph still runs and trains; ``info["replaced"]`` lists what changed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

from torch import fx

from mase_lite.config import Config
from mase_lite.errors import ConfigError
from mase_lite.graph import MaseGraph

from ..registry import register_pass
from .compressed_nodes import (
    check_regex,
    compressed_input_node,
    linear_features,
    linear_mask_node,
    linear_nodes,
    match_nodes,
    module_path,
    no_match_error,
    owner_and_name,
    refresh_shared_inputs,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class IdentityConfig(Config):
    """Which linear nodes become identities: by module path, node name, regex, or all square ones."""

    module_paths: Optional[list[str]] = None
    nodes: Optional[list[str]] = None
    regex: Optional[str] = None
    all_square: bool = False

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.module_paths is None and self.nodes is None and self.regex is None and not self.all_square:
            raise ConfigError(f"{path or 'replace_linear_with_identity'} needs targets: set {p}module_paths, "
                              f"{p}nodes, {p}regex or {p}all_square = true")
        if self.regex is not None:
            check_regex(f"{p}regex", self.regex)


def _square(graph: MaseGraph, node: fx.Node) -> bool:
    i, o = linear_features(graph, node)
    return i == o


def _chosen_nodes(graph: MaseGraph, nodes: list[fx.Node], config: IdentityConfig) -> dict[fx.Node, str]:
    """The linear nodes the config selects, each with the selector that chose it (for errors)."""
    chosen: dict[fx.Node, str] = {}
    selectors: list[tuple[str, str, bool]] = []
    for i, path in enumerate(config.module_paths or []):
        selectors.append((f"replace_linear_with_identity.module_paths[{i}]", path, False))
    for i, name in enumerate(config.nodes or []):
        selectors.append((f"replace_linear_with_identity.nodes[{i}]", name, False))
    if config.regex is not None:
        selectors.append(("replace_linear_with_identity.regex", config.regex, True))
    for field, key, regex in selectors:
        if regex:
            matched = match_nodes(graph, nodes, key, True)
        elif field.split(".")[-1].startswith("module_paths"):
            matched = [n for n in nodes if module_path(graph, n) == key]
        else:
            matched = [n for n in nodes if n.name == key]
        if not matched:
            raise no_match_error(field, key, graph, nodes, "linear node")
        for n in matched:
            if not _square(graph, n):
                i, o = linear_features(graph, n)
                raise ConfigError(
                    f"{field} = {key!r}: {module_path(graph, n) or n.name} (node {n.name}) is not square "
                    f"(in_features {i} != out_features {o}); only square Linear layers can become identities; "
                    f"square ones: {', '.join(module_path(graph, m) or m.name for m in nodes if _square(graph, m))}"
                )
            chosen.setdefault(n, field)
    if config.all_square:
        square = [n for n in nodes if _square(graph, n)]
        if not square:
            raise ConfigError("replace_linear_with_identity.all_square = true but the graph has no square linear node")
        for n in square:
            chosen.setdefault(n, "all_square")
    return chosen


def _drop_unread(graph: MaseGraph, param_nodes: list[fx.Node]) -> int:
    """Erase the get_attr nodes in ``param_nodes`` nothing reads and the parameters/buffers no node reads any
    more; returns the number of parameter elements removed."""
    g = graph.fx_graph
    removed = 0
    still_read = {n.target for n in g.nodes if n.op == "get_attr" and n.users}
    for pn in dict.fromkeys(param_nodes):
        if pn.users or pn.target in still_read:
            continue
        g.erase_node(pn)
        if any(n.op == "get_attr" and n.target == pn.target for n in g.nodes):
            continue
        owner_path, name = owner_and_name(pn.target)
        owner = graph.gm.get_submodule(owner_path) if owner_path else graph.gm
        t = owner._parameters.get(name)
        if t is None:
            t = owner._buffers.get(name)
        if t is not None:
            removed += t.numel() if name in owner._parameters else 0
            delattr(owner, name)
    return removed


@register_pass("replace_linear_with_identity", IdentityConfig, kind="transform",
               example={"all_square": True})
def replace_linear_with_identity(graph: MaseGraph, config: IdentityConfig) -> tuple[MaseGraph, dict[str, Any]]:
    """Replace the chosen square linear nodes by identities (y = x) and drop their parameters."""
    nodes = linear_nodes(graph)
    chosen = _chosen_nodes(graph, nodes, config)
    replaced = []
    g = graph.fx_graph
    param_nodes: list[fx.Node] = []
    for n in [m for m in nodes if m in chosen]:
        i, o = linear_features(graph, n)
        replaced.append({"node": n.name, "module": module_path(graph, n), "features": i})
        param_nodes += [a for a in (n.args[1], n.args[2] if len(n.args) > 2 else None, linear_mask_node(n),
                                    n.kwargs.get("act_calls")) if isinstance(a, fx.Node)]
        n.replace_all_uses_with(compressed_input_node(n))
        g.erase_node(n)
    refresh_shared_inputs(graph)
    removed = _drop_unread(graph, param_nodes)
    log.info("replace_linear_with_identity: %d nodes replaced", len(replaced))
    return graph, {"replaced": replaced, "params_removed": removed}
