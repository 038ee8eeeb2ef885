"""``mase-lite export``: write a saved (compressed) graph as a real compressed artefact.

``--format compact`` (default): integer codes, bit-packed, masks as bits, in safetensors, plus an
``export.json`` manifest; ``MaseGraph.load(DIR)`` reads it back (bit-identical outputs). The command
prints the measured bytes beside the ``cost`` pass's prediction, per group. ``--format onnx``:
``model.onnx`` for ONNX Runtime (QDQ nodes; needs the ``deploy`` extra): a faithful simulation
(``onnx.json``: ``kind = "simulation"``), not a fast model. ``--format onnx --deployable``: the fast
model of the ``dynamic_int8`` scheme (``kind = "deployable"``; :mod:`passes.export.deployable`),
refusing any node it cannot make fast (named, with the reason) and never writing a model that
disagrees with the simulation. An uncompressed graph exports as plain fp32, and the command says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a saved graph as integer codes (compact) or an ONNX model",
        description="Export GRAPH_DIR (a graph saved by 'mase-lite transform' / MaseGraph.save, or an export) to "
                    "--out DIR. compact: weights.safetensors (quantised tensors as bit-packed integer codes, pruned "
                    "tensors as bitmask + non-zero codes or dense codes where smaller, other tensors in their own "
                    "dtype; no pickles) and export.json (format version, model config, output type, pass history, "
                    "per-tensor encoding and SHA-256); load it with MaseGraph.load(DIR). onnx: model.onnx for ONNX "
                    "Runtime (QuantizeLinear/DequantizeLinear with power-of-two scales; needs "
                    "pip install 'mase-lite[deploy]'). Prints measured bytes beside the cost pass's prediction.",
    )
    p.add_argument("graph_dir", type=Path, metavar="GRAPH_DIR", help="saved graph directory (graph.json) or export")
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    p.add_argument("--format", choices=["compact", "onnx"], default="compact",
                   help="compact (safetensors integer codes, default) or onnx (ONNX Runtime)")
    p.add_argument("--deployable", action="store_true",
                   help="onnx only: write the fast model of the dynamic_int8 scheme (ONNX Runtime's integer kernels: "
                        "DynamicQuantizeMatMul, QAttention, int8 embeddings; fused layer norms), checked against the "
                        "simulation before it is written; any node that cannot run fast is refused, named, with the "
                        "reason. Without it, onnx is the faithful QDQ simulation (kind = simulation), not a fast model")
    p.add_argument("--check", action="store_true",
                   help="after exporting, run the export on random inputs and compare with the graph "
                        "(compact: bit-identical; onnx: with onnxruntime, max |logit difference|)")
    p.set_defaults(run=run)


def _check(graph, args, report) -> None:
    import torch

    from ..models import random_inputs

    inputs = random_inputs(graph.input_names, graph.model_info.get("hf_config") or {}, 4, 32)
    graph.eval()
    with torch.no_grad():
        ref = graph(**inputs).logits
    if args.format == "compact":
        from .common import lifecycle

        back = lifecycle().load(args.out)
        with torch.no_grad():
            same = torch.equal(back(**inputs).logits, ref)
        print(f"check: loaded export {'is bit-identical to' if same else 'DIFFERS from'} the graph on 4 random rows")
    else:
        from passes.export.onnx import deploy_session, ort_session

        sess = deploy_session(report["path"]) if report.get("kind") == "deployable" else ort_session(report["path"])
        out = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        diff = float(abs(torch.from_numpy(out) - ref).max())
        print(f"check: onnxruntime vs graph on 4 random rows: max |logit difference| {diff:.3g}")


def run(args: argparse.Namespace) -> int:
    from passes.export import export_graph

    from .common import lifecycle

    if args.deployable and args.format != "onnx":
        raise ConfigError("--deployable is for --format onnx (the compact format is not a runtime model)")
    graph = lifecycle().load(args.graph_dir)
    options = {"deployable": True} if args.deployable else {}
    report = export_graph(graph, args.out, format=args.format, **options)
    if not report["compressed"]:
        print("note: the graph has no quantised or pruned tensors; exported as plain fp32")
    if args.format == "compact":
        print(f"{'group':<14} {'measured B':>12} {'predicted B':>12} {'difference':>10}")
        for name, grp in report["groups"].items():
            pred = grp["predicted"] if name != "uncounted" else None
            rel = "" if not pred else f"{100 * (grp['measured'] - pred) / pred:+.2f} %"
            print(f"{name:<14} {grp['measured']:>12} {pred if pred is not None else '(not counted)':>12} {rel:>10}")
        files = report["file_bytes"]
        print(f"files: " + ", ".join(f"{k} {v} B" for k, v in files.items())
              + f" (safetensors header {report['safetensors_header_bytes']} B)")
        counts: dict[str, int] = {}
        for t in report["tensors"]:
            counts[t["encoding"]] = counts.get(t["encoding"], 0) + 1
        print("encodings: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
        print(f"load with: MaseGraph.load({str(args.out)!r})")
    elif report.get("kind") == "deployable":
        chk = report["check"]
        print(f"onnx (deployable): {report['path']} ({report['file_bytes']} B, opset {report['opset']})")
        print("ops: " + ", ".join(f"{k} x{v}" for k, v in report["ops"].items()))
        print(f"checked against the simulation on {chk['rows']} random rows: {chk['labels_agree']}/{chk['rows']} labels "
              f"agree, max |logit difference| {chk['max_logit_diff']:.3g}")
        if report["session_config"]:
            print(f"session options needed on this CPU: {report['session_config']} (passes.export.onnx.deploy_session)")
    else:
        print(f"onnx: {report['path']} ({report['file_bytes']} B, opset {report['opset']}, "
              f"{len(report['compressed_nodes'])} compressed nodes, "
              f"{report['ops'].get('QuantizeLinear', 0)} QuantizeLinear / {report['ops'].get('DequantizeLinear', 0)} "
              f"DequantizeLinear)")
    if args.check:
        _check(graph, args, report)
    return 0
