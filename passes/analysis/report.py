"""``report_graph``: a table of nodes or modules with op kinds, shapes, parameter counts and MACs.

On a quantised graph node rows also show each node's number formats (``formats``: per role, from
the ``quantize`` pass's annotation, e.g. ``in=integer(8.4) w=scaled_integer(8,per_channel)``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from mase_lite import metadata as md
from mase_lite.config import Config, check_choice, check_range
from mase_lite.graph import MaseGraph

from ..registry import register_pass

_HIDDEN_BY_DEFAULT = ("view", "other", "dropout")


@dataclass
class ReportConfig(Config):
    """``by`` node or module; MACs are evaluated for ``batch_size`` x ``seq_len`` inputs.

    ``ops`` restricts node rows to these op kinds (default: all but view/other/dropout nodes);
    totals always cover the whole graph.
    """

    by: Literal["node", "module"] = "node"
    batch_size: int = 1
    seq_len: int = 128
    ops: list[str] | None = None

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        check_range(p + "batch_size", self.batch_size, 1)
        check_range(p + "seq_len", self.seq_len, 1)
        for i, op in enumerate(self.ops or []):
            check_choice(f"{p}ops[{i}]", op, md.OP_KINDS)


def _shape(meta: md.NodeMeta) -> str:
    if not meta.outputs:
        return ""
    return "[" + ", ".join(str(d) for d in meta.outputs[0].shape) + "]"


@register_pass("report_graph", ReportConfig, kind="analysis", example={"by": "node"})
def report_graph(graph: MaseGraph, config: ReportConfig) -> tuple[MaseGraph, dict[str, Any]]:
    """Rows per node (or module) with op kind, output shape, parameters and MACs, plus totals and a text table."""
    b, s = config.batch_size, config.seq_len
    shown = set(config.ops) if config.ops else set(md.OP_KINDS) - set(_HIDDEN_BY_DEFAULT)
    seen_params: set[str] = set()
    rows: list[dict[str, Any]] = []
    total_macs = 0
    for node in graph.nodes:
        meta = graph.meta(node)
        new_params = [p for p in meta.params if p.trainable and p.name not in seen_params]
        seen_params.update(p.name for p in new_params)
        n_params = sum(p.numel for p in new_params)
        macs = meta.macs(b, s)
        total_macs += macs
        rows.append({
            "node": node.name, "op": meta.op, "module": meta.module_path or "",
            "module_class": meta.module_class or "", "shape": _shape(meta), "params": n_params, "macs": macs,
            "formats": format_summary(meta.annotations.get("quant")),
        })
    total_params = sum(p.numel() for p in graph.gm.parameters())
    totals = {"nodes": len(rows), "params": total_params, "macs": total_macs,
              "op_counts": dict(sorted(_count(r["op"] for r in rows).items()))}
    if config.by == "module":
        groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"ops": set(), "params": 0, "macs": 0, "module_class": ""})
        for r in rows:
            if r["op"] in ("placeholder", "output"):
                continue
            g = groups[r["module"] or "<top>"]
            g["ops"].add(r["op"])
            g["params"] += r["params"]
            g["macs"] += r["macs"]
            g["module_class"] = g["module_class"] or r["module_class"]
        out_rows = [{"module": k, "module_class": v["module_class"], "ops": ",".join(sorted(v["ops"])),
                     "params": v["params"], "macs": v["macs"]} for k, v in groups.items()]
        columns = ["module", "module_class", "ops", "params", "macs"]
    else:
        out_rows = [r for r in rows if r["op"] in shown]
        columns = ["node", "op", "module", "shape", "params", "macs"]
        if any(r["formats"] for r in out_rows):
            columns.append("formats")
    table = format_table(out_rows, columns)
    table += (f"\n\ntotal: {totals['nodes']} nodes, {total_params:,} parameters, "
              f"{total_macs:,} MACs for a {b}x{s} input")
    return graph, {"rows": out_rows, "totals": totals, "table": table}


_ROLE_SHORT = {"data_in": "in", "weight": "w", "bias": "b", "data_out": "out"}


def format_summary(quant: Any) -> str:
    """``in=integer(8.4) w=scaled_integer(8,per_channel)`` from a node's ``quant`` annotation ("" if none)."""
    if not quant:
        return ""
    parts = []
    for role, fmt in quant.items():
        if not fmt:
            continue
        if "name" not in fmt:  # integer: {"width", "frac_width", "floor"}
            desc = f"integer({fmt['width']}.{fmt['frac_width']}{',floor' if fmt.get('floor') else ''})"
        else:
            vals = [str(v) for k, v in fmt.items() if k != "name" and v is not None]
            desc = f"{fmt['name']}({','.join(vals)})"
        parts.append(f"{_ROLE_SHORT.get(role, role)}={desc}")
    return " ".join(parts)


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for i in items:
        counts[i] += 1
    return counts


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table with right-aligned numbers."""
    def cell(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) else str(v)

    widths = {c: max([len(c)] + [len(cell(r[c])) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    for r in rows:
        lines.append("  ".join(cell(r[c]).rjust(widths[c]) if isinstance(r[c], int) else cell(r[c]).ljust(widths[c])
                               for c in columns))
    return "\n".join(lines)
