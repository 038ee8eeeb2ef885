"""``add_common_metadata``: (re)compute the typed :class:`~mase_lite.metadata.NodeMeta` of every node."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from mase_lite import metadata as md
from mase_lite.config import Config
from mase_lite.graph import MaseGraph

from ..registry import register_pass


@dataclass
class CommonMetadataConfig(Config):
    """No options: the pass always annotates every node."""


@register_pass("add_common_metadata", CommonMetadataConfig, kind="analysis", example={})
def add_common_metadata(graph: MaseGraph, config: CommonMetadataConfig) -> tuple[MaseGraph, dict[str, Any]]:
    """Annotate every node with op kind, module, shapes, dtypes and parameters; info counts op kinds."""
    md.annotate(graph.gm)
    counts = Counter(graph.meta(n).op for n in graph.nodes)
    return graph, {"op_counts": dict(sorted(counts.items()))}
