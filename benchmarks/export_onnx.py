"""Benchmark: ONNX Runtime fp32 vs ONNX Runtime compressed (QDQ) vs the mase-lite simulation.

One run builds bert-tiny (Lab 2's smallest point: L2 H128 A2 I512), trains it one epoch on
``--train-rows`` IMDb reviews, compresses it with Lab 2's pipeline (8-bit fixed point, 4 fraction
bits; 50 % l1-norm weight and per-token activation pruning), and writes the artefacts (compact
export, ONNX fp32, ONNX compressed). Then each arm runs in its own subprocess (so peak memory,
its own ``VmHWM``, is that arm's alone) with threads pinned (torch and ONNX Runtime
intra-op = ``--threads``, inter-op 1), on real IMDb test reviews (max_length 128):

* latency per batch (``--batch`` reviews padded to 128 tokens) and per single review (batch 1),
  median and spread (p10 / p90) of ``--runs`` timed runs after warm-up;
* model file size; peak resident memory of the process (``VmHWM``);
* agreement: predicted labels and max |logit difference| of each arm against the simulation.

Arms: ``torch_fp32`` (the traced graph, uncompressed), ``sim`` (mase-lite's compressed graph,
fake quantisation in fp32), ``ort_fp32`` and ``ort_compressed``. CPU model and flags are recorded
(int8 matmuls are fast only with VNNI / AMX; without them ONNX Runtime dequantises or runs
int8 kernels no faster than fp32).

    python benchmarks/export_onnx.py --out docs/results/export_onnx      # writes results.json / results.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARMS = ("torch_fp32", "sim", "ort_fp32", "ort_compressed")


def _stats(times_ms: list[float]) -> dict:
    q = np.percentile(times_ms, [10, 50, 90])
    return {"median_ms": round(float(q[1]), 3), "p10_ms": round(float(q[0]), 3), "p90_ms": round(float(q[2]), 3),
            "runs": len(times_ms)}


def _timings(fn, runs: int, warmup: int) -> list[float]:
    """Milliseconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _time(fn, runs: int, warmup: int) -> dict:
    return _stats(_timings(fn, runs, warmup))


def _ort_session(path: str, threads: int, profile_prefix: str | None = None, config: dict | None = None):
    """An ONNX Runtime CPU session, threads pinned (intra-op ``threads``, inter-op 1), without importing torch:
    the same settings as passes.export.onnx.ort_session (see ORT_DISABLED_OPTIMIZERS there), plus the session
    config entries ``config``; with ``profile_prefix``, ONNX Runtime's profiler on (``sess.end_profiling()``
    names its JSON file)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["QDQPropagationTransformer"])


# ------------------------------------------------------------------------------------------- one arm

def _peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (the high-water mark of its own address space;
    ``getrusage``'s ``ru_maxrss`` would include the parent's peak, inherited across fork + exec),
    falling back to ``ru_maxrss`` where /proc is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_arm(arm: str, artefact: str, inputs: str, threads: int, runs: int, runs_batch: int) -> dict:
    """Load one arm's model, time it, return its figures (runs in its own process)."""
    data = np.load(inputs)
    one = {"input_ids": data["one_ids"], "attention_mask": data["one_mask"]}
    batch = {"input_ids": data["ids"], "attention_mask": data["mask"]}
    evals = {"input_ids": data["eval_ids"], "attention_mask": data["eval_mask"]}
    if arm.startswith("ort"):  # onnxruntime only: no torch in this process
        sess = _ort_session(artefact, threads)

        def run(feed):
            return sess.run(None, feed)[0]
    else:
        import torch

        from mase_lite.graph import MaseGraph
        from mase_lite.weight_scope import frozen_weights

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        graph = MaseGraph.load(artefact).eval()

        def run(feed):
            with torch.inference_mode(), frozen_weights():
                return graph(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    logits = np.concatenate([run({k: v[i:i + 32] for k, v in evals.items()}) for i in range(0, len(evals["input_ids"]), 32)])
    result = {"arm": arm, "threads": threads,
              "batch1": _time(lambda: run(one), runs, 5),
              f"batch{len(batch['input_ids'])}": _time(lambda: run(batch), runs_batch, 2)}
    result["peak_rss_mb"] = _peak_rss_mb()
    np.save(Path(inputs).with_name(f"logits_{arm}.npy"), logits)
    return result


# ------------------------------------------------------------------------------------------- driver

def _pad(rows, pad_id: int, n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Token rows as (ids, attention mask) arrays of ``n`` columns."""
    ids = np.full((len(rows), n), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), n), dtype=np.int64)
    for i, r in enumerate(rows):
        r = list(r)[:n]
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def _write_inputs(work: Path, splits, batch: int) -> int:
    """``work/inputs.npz``: a batch, one full-length row, every test row and the labels; returns the test rows."""
    test_ids = [splits.test[i]["input_ids"] for i in range(len(splits.test))]
    labels = np.array([splits.test[i]["labels"] for i in range(len(splits.test))])
    ids, mask = _pad(test_ids[:batch], splits.pad_id)
    one = max(test_ids, key=len)  # a full-length review: 128 tokens
    one_ids, one_mask = _pad([one], splits.pad_id)
    eval_ids, eval_mask = _pad(test_ids, splits.pad_id)
    np.savez(work / "inputs.npz", ids=ids, mask=mask, one_ids=one_ids, one_mask=one_mask,
             eval_ids=eval_ids, eval_mask=eval_mask, labels=labels)
    return len(test_ids)


def build(work: Path, train_rows: int, eval_rows: int, batch: int, seed: int) -> dict:
    """Train, compress and export bert-tiny; write the inputs file. Returns artefact paths and sizes."""
    import torch

    from mase_lite.config import load_toml
    from mase_lite.data import DataConfig, load_splits, load_tokenizer
    from mase_lite.graph import trace
    from mase_lite.models import ModelConfig, build_model, example_inputs
    from mase_lite.training import TrainConfig, evaluate, train
    from passes import run_pipeline
    from passes.export import export_graph

    dcfg = DataConfig(n_train=train_rows, n_val=0, n_test=eval_rows, max_length=128, seed=seed)
    splits = load_splits(dcfg, load_tokenizer(dcfg))
    model = build_model(ModelConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                                    intermediate_size=512, seed=seed))
    graph = trace(model, example_inputs(model))
    t0 = time.perf_counter()
    train(graph, splits.train, TrainConfig(epochs=1, progress=False, precision="fp32", seed=seed))
    train_s = time.perf_counter() - t0
    graph.eval()
    acc_fp32 = evaluate(graph, splits.test, precision="fp32").accuracy
    fp32_dir = work / "fp32_graph"
    graph.save(fp32_dir)
    passes_cfg = load_toml(Path(__file__).resolve().parents[1] / "examples" / "lab2_compression.toml")["passes"]
    comp = graph.copy()
    run_pipeline(comp, {"passes": passes_cfg})
    comp.eval()
    acc_comp = evaluate(comp, splits.test, precision="fp32").accuracy
    compact = export_graph(comp, work / "compact")
    onnx_fp32 = export_graph(graph, work / "onnx_fp32", format="onnx")
    onnx_comp = export_graph(comp, work / "onnx_compressed", format="onnx")
    n_eval = _write_inputs(work, splits, batch)
    state_bytes = sum(v.numel() * v.element_size() for v in graph.gm.state_dict().values())
    return {
        "train_rows": train_rows, "train_s": round(train_s, 1), "eval_rows": n_eval,
        "accuracy_fp32": acc_fp32, "accuracy_compressed": acc_comp,
        "artefacts": {"torch_fp32": str(fp32_dir), "sim": str(work / "compact"),
                      "ort_fp32": onnx_fp32["path"], "ort_compressed": onnx_comp["path"]},
        "file_bytes": {"torch_fp32": state_bytes, "sim": sum(compact["file_bytes"].values()),
                       "ort_fp32": onnx_fp32["file_bytes"], "ort_compressed": onnx_comp["file_bytes"]},
        "compact_groups": compact["groups"], "compact_cost": compact["cost"],
        "onnx_ops_compressed": onnx_comp["ops"],
    }


def _run_arms(args: argparse.Namespace, work: Path, info: dict) -> dict:
    """Each arm timed in its own process, then its accuracy and agreement with the simulation."""
    arms = {}
    for arm in ARMS:
        cmd = [sys.executable, __file__, "--arm", arm, "--artefact", info["artefacts"][arm],
               "--inputs", str(work / "inputs.npz"), "--threads", str(args.threads), "--runs", str(args.runs),
               "--runs-batch", str(args.runs_batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        arms[arm] = json.loads(res.stdout.strip().splitlines()[-1])
        arms[arm]["file_bytes"] = info["file_bytes"][arm]
        print(f"{arm}: {arms[arm]}", file=sys.stderr)
    labels = np.load(work / "inputs.npz")["labels"]
    sim = np.load(work / "logits_sim.npy")
    for arm in ARMS:
        lg = np.load(work / f"logits_{arm}.npy")
        arms[arm]["accuracy"] = round(float((lg.argmax(-1) == labels).mean()), 4)
        arms[arm]["labels_equal_to_sim"] = int((lg.argmax(-1) == sim.argmax(-1)).sum())
        arms[arm]["max_abs_logit_diff_vs_sim"] = float(np.abs(lg - sim).max())
    return arms


def _write_results(args: argparse.Namespace, info: dict, arms: dict, t_start: float) -> None:
    """``results.json`` and the ``results.md`` table in ``--out`` (the table printed too)."""
    from mase_lite.machine import cpu_flags, cpu_model

    flags = cpu_flags()
    interesting = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    import onnxruntime
    import torch

    result = {
        "cpu": cpu_model(), "cpu_flags": {f: f in flags for f in interesting}, "threads": args.threads,
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "model": "bert-tiny L2 H128 A2 I512, 1 epoch on IMDb, Lab 2 compression",
        "wall_s": round(time.perf_counter() - t_start, 1),
        **{k: v for k, v in info.items() if k != "artefacts"}, "arms": arms,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    bkey = f"batch{args.batch}"
    lines = [f"CPU: {result['cpu']}; flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in result['cpu_flags'].items()),
             f"threads pinned: {args.threads} (torch and ONNX Runtime intra-op; inter-op 1); torch {result['torch']}, "
             f"onnxruntime {result['onnxruntime']}; {info['eval_rows']} IMDb test rows", "",
             f"| arm | batch 1: median (p10-p90) ms | batch {args.batch}: median (p10-p90) ms | file bytes | peak RSS MB | "
             f"accuracy | labels = sim | max abs logit diff vs sim |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        a = arms[arm]
        b1, bb = a["batch1"], a[bkey]
        lines.append(f"| {arm} | {b1['median_ms']:.2f} ({b1['p10_ms']:.2f}-{b1['p90_ms']:.2f}) | {bb['median_ms']:.1f} "
                     f"({bb['p10_ms']:.1f}-{bb['p90_ms']:.1f}) | {a['file_bytes']} | {a['peak_rss_mb']} | {a['accuracy']} | "
                     f"{a['labels_equal_to_sim']}/{info['eval_rows']} | {a['max_abs_logit_diff_vs_sim']:.3g} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/results/export_onnx"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per arm")
    p.add_argument("--runs-batch", type=int, default=30, help="timed batch runs per arm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--eval-rows", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, help="keep the trained/exported artefacts here (a second run reuses them)")
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--artefact", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:  # child process
        print(json.dumps(run_arm(args.arm, args.artefact, args.inputs, args.threads, args.runs, args.runs_batch)))
        return 0
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export-onnx-bench-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if (work / "build.json").is_file():  # --work DIR of an earlier run: its artefacts are reused
            info = json.loads((work / "build.json").read_text())
        else:
            info = build(work, args.train_rows, args.eval_rows, args.batch, args.seed)
            (work / "build.json").write_text(json.dumps(info))
        arms = _run_arms(args, work, info)
    _write_results(args, info, arms, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
