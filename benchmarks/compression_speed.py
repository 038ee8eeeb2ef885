"""Speed of Lab 2's compressed graph against the float32 graph: forward pass and training step.

The model is a bert-tiny classifier (L2 H128 A2 I512 by default) traced into a MaseGraph; the
compressed graph is the same graph after Lab 2's pipeline (integer quantisation of every linear
node -- 8-bit data, weight and bias, 4 fraction bits -- then 50 % l1-norm local pruning of weights
and activations, per token). Both graphs run on the same batch (32 x 128 by default) with the same
thread count, in alternating repeats, and the ratios compressed / float32 of the median times are
printed. The script also checks that the compressed graph's logits equal those of the
straightforward formulation (``ops.compressed_linear_reference``: the quantiser formula and a
stable sort per token), and can time that formulation's forward pass (``--reference``) and the
compressed graph without the native operator, i.e. with the torch formulation of the same fused
functions (``--torch-formulation``).

    python benchmarks/compression_speed.py                # 2 threads, 32 x 128, fp32
    python benchmarks/compression_speed.py --format scaled_integer   # int8, per-channel weight scales

``--format`` picks the number format of the quantize step (default ``integer``, Lab 2's fixed point;
``scaled_integer``: int8 weights with per-channel scales, int8 biases and inputs, the input scales
from a ``calibrate`` pass on the benchmark batch; any other registered format: its 8-bit-ish preset
in :data:`FORMAT_ENTRIES`). The pruning step is the same for every format.
    python benchmarks/compression_speed.py --precision bf16 --repeats 20

Timings on a shared machine are noisy; the ratios, measured in one run with alternating repeats,
are the figures to compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mase_lite.graph import trace  # noqa: E402
from mase_lite.weight_scope import frozen_weights  # noqa: E402
from mase_lite.models import ModelConfig, build_model, example_inputs  # noqa: E402
from passes import PassContext, run_pipeline  # noqa: E402
from passes.transforms import native, ops  # noqa: E402

Q8 = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8,
      "weight_frac_width": 4, "bias_width": 8, "bias_frac_width": 4}
LAB2_PIPELINE = {"passes": {
    "quantize": {"by": "type", "default": {"config": {"name": "NA"}}, "linear": {"config": Q8}},
    "prune": {"weight": {"sparsity": 0.5, "method": "l1-norm", "scope": "local"},
              "activation": {"sparsity": 0.5, "method": "l1-norm", "scope": "local"}},
}}


#: The quantize entry of each format timed by ``--format``.
FORMAT_ENTRIES = {
    "integer": Q8,
    "scaled_integer": {"name": "scaled_integer", "data_in_width": 8, "weight_width": 8,
                       "weight_granularity": "per_channel", "bias_width": 8},
    "minifloat": {"name": "minifloat", "data_in_preset": "fp8_e4m3", "weight_preset": "fp8_e4m3"},
    "block_fp": {"name": "block_fp", "weight_mantissa_width": 7, "weight_block_size": 16},
}


def pipeline_for(fmt: str) -> dict:
    """Lab 2's pipeline with the quantize step in format ``fmt`` (calibrating first where needed)."""
    if fmt not in FORMAT_ENTRIES:
        raise SystemExit(f"--format {fmt!r}: choose one of {', '.join(FORMAT_ENTRIES)}")
    pipe = copy.deepcopy(LAB2_PIPELINE)
    pipe["passes"]["quantize"]["linear"]["config"] = copy.deepcopy(FORMAT_ENTRIES[fmt])
    return pipe


def reference_graph(graph):
    """A copy of ``graph`` whose compressed linears run the straightforward formulation."""
    ref = graph.copy()
    for node in ref.gm.graph.nodes:
        if node.target is ops.compressed_linear:
            node.target = ops.compressed_linear_reference
        elif node.target is ops.quantize_prune_input:
            node.target = ops.quantize_prune_input_reference
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "ste"}
    ref.gm.recompile()
    return ref


def timed(fn, device: str = "cpu") -> float:
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: CPU autocast")
    ap.add_argument("--reference", action="store_true", help="also time the straightforward formulation")
    ap.add_argument("--torch-formulation", action="store_true",
                    help="also time the compressed graph without the native operator (passes.transforms.native)")
    ap.add_argument("--no-weight-cache", action="store_true",
                    help="time the forward pass without the per-evaluation derived-weight cache")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--format", default="integer", help=f"number format of the quantize step: {', '.join(FORMAT_ENTRIES)}")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    return ap.parse_args(argv)


def _build(args):
    """(float32 graph, compressed graph, batch, labels), all on ``args.device``."""
    cfg = ModelConfig(num_hidden_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                      intermediate_size=args.intermediate, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, seed=0)
    model = build_model(cfg).eval()
    fp32 = trace(model, example_inputs(model))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pipeline = pipeline_for(args.format)
    if args.format == "scaled_integer":  # input scales from a calibration on the benchmark batch
        pipeline = [("calibrate", {"num_batches": 1}), *pipeline["passes"].items()]
    comp, _ = run_pipeline(fp32.copy(), pipeline, context=PassContext(batches=[batch]))
    fp32.to(args.device), comp.to(args.device)
    batch = {k: v.to(args.device) for k, v in batch.items()}
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(args.device)
    return fp32, comp, batch, labels


def _workloads(batch, labels, amp):
    """``forward(graph)`` and ``step(graph)`` (a training step, one AdamW per graph) on the batch."""

    def forward(graph):
        graph.eval()
        with torch.inference_mode(), amp():
            graph(**batch)

    opts = {}

    def step(graph):
        graph.train()
        if id(graph) not in opts:
            opts[id(graph)] = torch.optim.AdamW(graph.parameters(), lr=1e-4, fused=True)
        opt = opts[id(graph)]
        with amp():
            loss = graph(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return forward, step


def formulation(name: str):
    """The context a graph entry runs in: the torch formulation entry without the native operator."""
    return native.disabled() if name == "torch_formulation" else nullcontext()


def _time_graphs(graphs: dict, forward, step, args, dev_type: str) -> dict[str, dict[str, float]]:
    """Median milliseconds of each graph's forward pass and training step, in alternating repeats."""
    results: dict[str, dict[str, float]] = {}
    for what, fn in (("forward", forward), ("train_step", step)):
        # forward: as in an evaluation, all batches run in one frozen-weights block, so derived
        # weights are computed once (--no-weight-cache: every forward recomputes them)
        scope = frozen_weights() if what == "forward" and not args.no_weight_cache else nullcontext()
        scope.__enter__()
        names = [n for n in graphs if not (what == "train_step" and n == "reference")]
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.warmup):
            for n in names:
                with formulation(n):
                    fn(graphs[n])
        for _ in range(args.repeats):
            for n in names:  # alternate, so load changes hit both alike
                with formulation(n):
                    times[n].append(timed(lambda: fn(graphs[n]), dev_type))
        results[what] = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        scope.__exit__(None, None, None)
    return results


def _print_report(args, out: dict) -> None:
    same, results, ratios = out["equal_to_reference"], out["ms"], out["ratio_to_fp32"]
    print(f"format: {args.format}")
    print(f"bert L{args.layers} H{args.hidden} A{args.heads} I{args.intermediate}, batch {args.batch}x{args.seq}, "
          f"{args.device}, {args.threads} threads, {args.precision}, torch {torch.__version__}, median of {args.repeats}")
    print(f"native quantise-and-prune operator: {'available (CPU float32/bf16 inputs)' if native.available() else 'not available (torch formulation)'}")
    print(f"compressed logits == straightforward formulation: {same}")
    for what, r in results.items():
        cells = "  ".join(f"{n} {ms:8.1f} ms" for n, ms in r.items())
        rat = "  ".join(f"{n}/fp32 = {x:.2f}x" for n, x in ratios[what].items())
        print(f"{what:<11} {cells}   {rat}")


def main(argv=None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    fp32, comp, batch, labels = _build(args)
    dev_type = torch.device(args.device).type
    amp = (lambda: torch.autocast(dev_type, dtype=torch.bfloat16)) if args.precision == "bf16" else nullcontext

    with torch.inference_mode(), amp():
        fp32.eval(), comp.eval()
        same = torch.equal(comp(**batch).logits, reference_graph(comp).eval()(**batch).logits)

    forward, step = _workloads(batch, labels, amp)
    graphs = {"fp32": fp32, "compressed": comp}
    if args.torch_formulation:
        graphs["torch_formulation"] = comp  # the same graph, run under native.disabled()
    if args.reference:
        graphs["reference"] = reference_graph(comp)
    results = _time_graphs(graphs, forward, step, args, dev_type)
    ratios = {what: {n: r[n] / r["fp32"] for n in r if n != "fp32"} for what, r in results.items()}
    out = {"config": vars(args), "torch": torch.__version__, "native_operator": native.available(),
           "equal_to_reference": same,
           "ms": results, "ratio_to_fp32": ratios}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    _print_report(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
