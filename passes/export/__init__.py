"""Real compressed artefacts: a compact integer export (safetensors + JSON manifest) that
``MaseGraph.load`` reads back, integer-code inference of quantised linears, and ONNX export.

* :func:`export_graph` ``(graph_or_dir, out_dir, format="compact" | "onnx")``;
* :func:`load_export` (also reached through ``MaseGraph.load`` on an export directory);
* :mod:`.integer`: quantised linears computed from integer codes, exact accumulation;
* :mod:`.onnx`: QDQ ONNX models for ONNX Runtime (needs the ``deploy`` extra): a faithful
  simulation (``kind = "simulation"``), not a fast model;
* :mod:`.deployable`: the ``dynamic_int8`` scheme as ONNX Runtime's integer kernels
  (``export_graph(g, out, format="onnx", deployable=True)``, ``kind = "deployable"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mase_lite.config import check_choice
from mase_lite.graph import MaseGraph

from .compact import (EXPORT_FORMAT_VERSION, MANIFEST, WEIGHTS, ExportLoadError, export_compact, is_export_dir,
                      load_export, read_manifest)

__all__ = ["EXPORT_FORMAT_VERSION", "EXPORT_FORMATS", "MANIFEST", "WEIGHTS", "ExportLoadError", "export_graph",
           "is_export_dir", "load_export", "read_manifest"]

EXPORT_FORMATS = ("compact", "onnx")


def export_graph(graph_or_dir: MaseGraph | str | Path, out_dir: str | Path, format: str = "compact",
                 **options: Any) -> dict[str, Any]:
    """Export a graph (or a saved graph directory) to ``out_dir``; returns a report dict.

    ``format="compact"``: integer codes in safetensors (:mod:`.compact`; its report compares the
    measured bytes with the ``cost`` pass per tensor). ``format="onnx"``: ``model.onnx`` for ONNX
    Runtime (:mod:`.onnx`; ``options`` go to :func:`passes.export.onnx.export_onnx`).
    """
    check_choice("format", format, EXPORT_FORMATS)
    graph = graph_or_dir if isinstance(graph_or_dir, MaseGraph) else MaseGraph.load(graph_or_dir)
    if format == "onnx":
        from .onnx import export_onnx

        return export_onnx(graph, out_dir, **options)
    if options:
        raise TypeError(f"unexpected options for the compact format: {sorted(options)}")
    return export_compact(graph, out_dir)
