"""The deployment benchmark's logic (benchmarks/deploy_speed.py), nothing timed: CPU flags, CPU choice,
arm order, the paired accuracy CI, the goal check at its exact boundaries, the report, and the arms'
files built on a tiny model (ONNX Runtime's fusions and dynamic quantisation, OpenVINO loading them)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deploy_speed", ROOT / "benchmarks" / "deploy_speed.py")
ds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ds)


def test_flag_record_summarises_vnni_amx_and_bf16():
    epyc = ds.flag_record("fpu sse4_2 avx avx2 fma".split())
    assert epyc["avx2"] and not epyc["vnni"] and not epyc["amx"] and not epyc["bf16"]
    xeon = ds.flag_record("avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16".split())
    assert xeon["vnni"] and xeon["amx"] and xeon["bf16"] and xeon["avx512_vnni"]
    client = ds.flag_record("avx2 avx_vnni".split())  # Alder Lake: VNNI without AVX-512
    assert client["vnni"] and not client["avx512_vnni"]
    assert set(ds.FLAGS) <= set(epyc)


def test_pick_cpus_takes_distinct_physical_cores_first():
    core = {0: "a", 1: "a", 2: "b", 3: "b"}.__getitem__  # 0/1 and 2/3 are SMT siblings
    assert ds.pick_cpus(2, [0, 1, 2, 3], core) == [0, 2]
    assert ds.pick_cpus(3, [0, 1, 2, 3], core) == [0, 2, 1]
    assert ds.pick_cpus(1, [5], core_of=lambda c: c) == [5]


def test_rotated_order_puts_each_arm_first_once():
    arms = ["a", "b", "c"]
    orders = [ds.rotated(arms, r) for r in range(3)]
    assert [o[0] for o in orders] == arms
    assert all(sorted(o) == arms for o in orders)


def test_within_and_ci_above_at_exact_boundaries():
    assert ds.within(1.05, 1.0) and ds.within(105.0, 100.0) and ds.within(10.5, 10.0)
    assert ds.within(0.5, 1.0)
    assert not ds.within(1.0501, 1.0) and not ds.within(105.01, 100.0)
    assert not ds.ci_above(-0.01)  # "lies above": the floor itself is not above it
    assert ds.ci_above(-0.0099) and not ds.ci_above(-0.0101)


def _summary(mase_ms: float | None, anchor_ms: float = 10.0) -> list[dict]:
    rows = []
    for threads in (1, 2):
        for batch in (1, 32):
            rows.append({"model": "minilm", "arm": "anchor", "threads": threads, "batch": batch, "median_ms": anchor_ms})
            if mase_ms is not None:
                rows.append({"model": "minilm", "arm": "mase", "threads": threads, "batch": batch, "median_ms": mase_ms})
    return rows


def test_goal_check_passes_at_the_limit_and_fails_past_it():
    acc = {"minilm": {"mase": {"ci95_low": -0.0095, "ci95_high": 0.004, "n": 2000}}}
    files = {"minilm": {"anchor": 1000, "mase": 1050}}
    ok = ds.goal_check(_summary(10.5), files, acc)
    assert ok["passed"] is True and len(ok["checks"]) == 6 and ok["not_covered"] == []
    slow = ds.goal_check(_summary(10.51), files, acc)
    assert slow["passed"] is False and sum(not c["passed"] for c in slow["checks"]) == 4
    big = ds.goal_check(_summary(9.0), {"minilm": {"anchor": 1000, "mase": 1051}}, acc)
    assert big["passed"] is False
    lossy = ds.goal_check(_summary(9.0), files, {"minilm": {"mase": {"ci95_low": -0.01, "ci95_high": 0.0}}})
    assert lossy["passed"] is False
    missing = ds.goal_check(_summary(None), {"minilm": {"anchor": 1000}}, {})
    assert missing["passed"] is None and all(c["passed"] is None for c in missing["checks"])


def test_goal_check_names_what_a_partial_run_did_not_cover():
    summary = [r for r in _summary(10.0) if r["threads"] == 1]
    acc = {"minilm": {"mase": {"ci95_low": 0.0, "ci95_high": 0.01, "n": 200}}}
    goal = ds.goal_check(summary, {"minilm": {"anchor": 1000, "mase": 1000}}, acc)
    assert goal["passed"] is True  # on what was measured
    assert goal["not_covered"] == ["minilm: 2 thread(s), batch 1", "minilm: 2 thread(s), batch 32",
                                   "minilm accuracy on 2000 rows (this run: 200)"]
    tiny_only = ds.goal_check([], {"bert-tiny": {"anchor": 1000}}, {})
    assert "model minilm" in tiny_only["not_covered"]


def test_paired_accuracy_ci_agrees_with_the_normal_interval_of_the_paired_differences():
    rng = np.random.default_rng(1)
    n = 2000
    labels = rng.integers(0, 2, n)
    ref_ok = rng.random(n) < 0.86
    flip = rng.random(n) < 0.03  # the int8 arm disagrees with fp32 on ~3 % of the rows
    arm_ok = ref_ok ^ flip

    def logits(ok):
        pred = np.where(ok, labels, 1 - labels)
        return np.stack([1.0 - pred, pred.astype(float)], axis=1)

    out = ds.accuracy(labels, {"ort_fp32": logits(ref_ok), "anchor": logits(arm_ok)}, seed=0)
    d = arm_ok.astype(float) - ref_ok.astype(float)
    half = 1.959964 * d.std(ddof=1) / np.sqrt(n)  # independent: the CLT interval of the mean difference
    a = out["anchor"]
    assert a["delta_vs_fp32"] == pytest.approx(d.mean())
    assert a["ci95_low"] == pytest.approx(d.mean() - half, abs=0.0015)
    assert a["ci95_high"] == pytest.approx(d.mean() + half, abs=0.0015)
    assert a["labels_equal_fp32"] == n - flip.sum() and a["n"] == n
    assert out["ort_fp32"]["delta_vs_fp32"] == 0.0 and out["ort_fp32"]["ci95_low"] == 0.0


def test_session_config_comes_from_the_exports_onnx_json(tmp_path):
    assert ds.session_config(tmp_path / "model.onnx") == {}
    (tmp_path / "onnx.json").write_text(json.dumps({"session_config": {"session.x64quantprecision": "1"}}))
    assert ds.session_config(tmp_path / "model.onnx") == {"session.x64quantprecision": "1"}


def test_batched_logits_feeds_one_shape_and_drops_the_padding():
    ids = np.arange(10 * 4).reshape(10, 4)
    shapes = []

    def run(feed):
        shapes.append(feed["input_ids"].shape)
        return feed["input_ids"][:, :2].astype(np.float32)

    out = ds.batched_logits(run, ids, np.ones_like(ids), batch=4)
    assert shapes == [(4, 4)] * 3
    np.testing.assert_array_equal(out, ids[:, :2])


def _result() -> dict:
    summary = [{"model": "minilm", "arm": a, "threads": 1, "batch": 1, "median_ms": m, "p10_ms": m * 0.9,
                "p90_ms": m * 1.1, "runs": 10, "rounds": 2, "peak_rss_mb": 100.0}
               for a, m in (("ort_fp32", 20.0), ("anchor", 8.0), ("mase", 8.2))]
    files = {"minilm": {"ort_fp32": 90_000_000, "anchor": 23_000_000, "mase": 23_500_000}}
    acc = ds.accuracy(np.array([0, 1, 1, 0]), {a: np.array([[1.0, 0], [0, 1], [0, 1], [0, 1]])
                                               for a in ("ort_fp32", "anchor", "mase")})
    return {"machine": {"cpu": "test CPU", "logical_cpus": 2, "cpu_flags": ds.flag_record(["avx2"]),
                        "onnxruntime": "1", "openvino": "2"},
            "args": {"threads": [1], "seq": 128}, "cpus": {1: [0]},
            "load": ds.load_record([0.1, 0.1, 0.1], [1.2], [1.1, 1.0, 0.5], 1), "arms": ["ort_fp32", "anchor", "mase"],
            "summary": summary, "file_bytes": files, "accuracy": {"minilm": acc},
            "goal": ds.goal_check(summary, files, {"minilm": acc}), "mase_status": {"minilm": "ok"}}


def test_outputs_hold_the_ratios_flags_and_goal(tmp_path):
    lines = ds.write_outputs(tmp_path, _result())
    text = "\n".join(lines)
    assert "2.50x" in text  # fp32 / anchor: 20 / 8
    assert "1.025x" in text  # mase / anchor: 8.2 / 8
    assert "avx2=yes" in text and "avx512_vnni=no" in text and "DISTURBED" not in text
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("model,arm,file,runtime,threads,batch,median_ms") and len(rows) == 4
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["goal"]["checks"][0]["ratio"] == pytest.approx(8.2 / 8)


def test_load_record_marks_a_disturbed_run():
    assert not ds.load_record([0.2, 0, 0], [2.3], [2.1, 0, 0], 2)["disturbed"]
    busy = ds.load_record([3.0, 0, 0], [6.0], [5.0, 0, 0], 2)
    assert busy["disturbed"] and "before" in busy["disturbed_reason"] and "while it ran" in busy["disturbed_reason"]


def test_parse_args_lists_and_refusals():
    args = ds.parse_args(["--models", "minilm", "--threads", "1,2", "--batches", "1", "--arms", "ort_fp32,anchor"])
    assert args.models == ["minilm"] and args.threads == [1, 2] and args.batches == [1]
    with pytest.raises(SystemExit):
        ds.parse_args(["--arms", "anchor,bogus"])
    with pytest.raises(SystemExit):
        ds.parse_args(["--arms", "anchor"])  # no fp32 reference to pair the accuracy with


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from mase_lite.graph import trace
    from mase_lite.models import ModelConfig, build_model, example_inputs

    cache = tmp_path_factory.mktemp("deploy-cache")
    model = build_model(ModelConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                    vocab_size=1000, pooling="mean", seed=0))
    graph = trace(model, example_inputs(model))
    graph_dir = graph.save(cache / "tiny-0")
    built = ds.build_files("tiny", graph_dir, cache, cache / "no-such-config.toml")
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, (6, 16))
    mask = np.ones_like(ids)
    mask[2, 9:] = 0
    np.savez(cache / "inputs.npz", ids=ids, mask=mask, labels=rng.integers(0, 2, 6), time_ids=ids, time_mask=mask)
    return built, cache


def test_arms_are_built_from_a_tiny_model(tiny_files):
    built, _ = tiny_files
    assert "mase" not in built["paths"] and "no-such-config.toml" in built["mase_status"]
    assert {"Attention", "EmbedLayerNormalization"} <= set(built["fused_operators"])
    files = built["files"]
    assert {"QAttention", "QEmbedLayerNormalization", "MatMulInteger"} <= set(files["anchor"]["ops"])
    assert "QAttention" not in files["int8_unfused"]["ops"] and "MatMulInteger" in files["int8_unfused"]["ops"]
    assert files["fp32"]["embedding_dtypes"] == ["FLOAT"] and files["anchor"]["embedding_dtypes"] == ["UINT8"]
    assert files["anchor"]["file_bytes"] < files["fp32"]["file_bytes"] / 2
    assert built["fp32_export"]["max_abs_logit_diff_vs_graph"] < 1e-4


@pytest.mark.parametrize("arm", ["ort_fused", "anchor", "ov_fp32", "ov_int8"])
def test_each_arm_runs_and_agrees_with_fp32(tiny_files, arm):
    if ds.ARM_RUNTIME[arm] == "ov":
        pytest.importorskip("openvino")
    built, cache = tiny_files

    def logits(a):
        job = {"mode": "eval", "runtime": ds.ARM_RUNTIME[a], "file": built["paths"][ds.ARM_FILE[a]],
               "inputs": str(cache / "inputs.npz"), "threads": 1, "cpus": [], "batch": 4, "seq": 16,
               "logits": str(cache / f"logits-{a}.npy")}
        res = ds.child(job)  # in this process (cpus=[]: its affinity is left alone)
        assert res["peak_rss_mb"] > 0
        return np.load(job["logits"])

    ref, out = logits("ort_fp32"), logits(arm)
    assert out.shape == ref.shape == (6, 2)
    tol = 1e-4 if arm in ("ort_fused", "ov_fp32") else 0.05  # int8 weights of a random tiny model
    np.testing.assert_allclose(out, ref, atol=tol)


def test_op_profile_counts_operator_types_after_the_warmup(tiny_files, tmp_path):
    built, cache = tiny_files
    data = np.load(cache / "inputs.npz")
    feed = {"input_ids": data["time_ids"][:2], "attention_mask": data["time_mask"][:2]}
    prof = ds.op_profile(built["paths"]["anchor"], 1, feed, runs=3, prefix=str(tmp_path / "prof"))
    assert prof["runs"] == 3 and prof["model_run_ms"] > 0
    assert {"QAttention", "QEmbedLayerNormalization"} <= set(prof["op_ms"])
    assert list(tmp_path.iterdir()) == []  # the profiler's trace file is removed
    lines = ds.profile_table({"tiny": {"anchor": {"2": prof}}})
    assert any(line.startswith("| QAttention |") for line in lines) and lines[-1].startswith("| whole run |")
