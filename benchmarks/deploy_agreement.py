"""Simulation = deployment on real rows (issue #20, item 3): mase-lite's deployable ONNX file against the
simulation it was exported from, on the same 2,000 IMDb test rows, fed as the same batches.

Uses ``benchmarks/deploy_speed.py``'s models and files (trained and built there, cached): for each model,
the graph ``mase-lite transform`` made (``dynamic_int8``: the simulation, run by torch) and its
deployable export (run by ONNX Runtime with the session options its ``onnx.json`` records). Two
feeds, each given to both sides identically:

* ``b1``: batch 1, every row unpadded (its own length);
* ``b32``: batches of 32 rows padded to 128 tokens (the activation scales span the batch, padding
  included).

Reported per model and feed: rows, rows whose labels agree (and the share), the largest and the median
|logit difference| as a fraction of the row's largest |logit|, and the simulated margin
(|logit 1 - logit 0|) of each disagreeing row: a row whose margin is below the logit difference the
kernels' float rounding can cause is a near tie that either side may call. Writes ``--out``/
``agreement.json`` and ``agreement.md``.

    MASE_LITE_DATA=/work/shared/data python benchmarks/deploy_agreement.py --out docs/results/deploy_speed
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

log = logging.getLogger("deploy_agreement")

#: The goal: labels agree on at least this share of rows.
MIN_AGREEMENT = 0.995


def feeds(ids: np.ndarray, mask: np.ndarray) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``b1``: each row alone at its own length; ``b32``: batches of 32 rows at the padded width."""
    lengths = mask.sum(1)
    b1 = [(ids[i:i + 1, :n], mask[i:i + 1, :n]) for i, n in enumerate(lengths)]
    b32 = [(ids[i:i + 32], mask[i:i + 32]) for i in range(0, len(ids), 32)]
    return {"b1": b1, "b32": b32}


def compare(sim: np.ndarray, ort: np.ndarray) -> dict[str, Any]:
    """Labels and logits of the runtime (``ort``) against the simulation (``sim``), row by row."""
    agree = sim.argmax(1) == ort.argmax(1)
    scale = np.maximum(np.abs(sim).max(1), 1e-12)
    rel = np.abs(sim - ort).max(1) / scale
    margins = np.abs(sim[:, 1] - sim[:, 0]) if sim.shape[1] == 2 else None
    return {"rows": int(len(sim)), "labels_agree": int(agree.sum()), "share": round(float(agree.mean()), 5),
            "meets_goal": bool(agree.mean() >= MIN_AGREEMENT),
            "max_rel_logit_diff": round(float(rel.max()), 4), "median_rel_logit_diff": round(float(np.median(rel)), 5),
            "max_abs_logit_diff": round(float(np.abs(sim - ort).max()), 4),
            "disagreeing_rows": [int(i) for i in np.flatnonzero(~agree)],
            "disagreeing_margins": [] if margins is None else [round(float(m), 4) for m in margins[~agree]],
            "median_margin": None if margins is None else round(float(np.median(margins)), 4)}


def logits(run: Callable[[np.ndarray, np.ndarray], np.ndarray], batches: list) -> np.ndarray:
    return np.concatenate([run(i, m) for i, m in batches])


def agreement(model: dict[str, Any], n_rows: int) -> dict[str, Any]:
    """Both feeds of ``model`` (a prepared deploy_speed model) through the simulation and ONNX Runtime."""
    import torch

    from mase_lite.graph import MaseGraph
    from passes.export.deployable import deploy_session
    from mase_lite.weight_scope import frozen_weights

    onnx_path = Path(model["paths"]["mase"])
    graph = MaseGraph.load(onnx_path.parent.parent / "transform" / "graph").eval()
    session = deploy_session(onnx_path, num_threads=2)
    data = np.load(model["inputs"])
    ids, mask = data["ids"][:n_rows], data["mask"][:n_rows]

    def sim(i, m):
        with torch.inference_mode():
            return graph(input_ids=torch.from_numpy(i), attention_mask=torch.from_numpy(m)).logits.float().numpy()

    def ort(i, m):
        return session.run(None, {"input_ids": i, "attention_mask": m})[0]

    out = {}
    with frozen_weights():
        for name, batches in feeds(ids, mask).items():
            log.info("%s: %s feed, %d batches ...", model["name"], name, len(batches))
            out[name] = compare(logits(sim, batches), logits(ort, batches))
    return out


def report(result: dict[str, Any]) -> list[str]:
    lines = ["| model | feed | rows | labels agree | share | max / median rel. logit diff | margins of disagreeing rows |",
             "|---|---|---|---|---|---|---|"]
    for name, feeds_ in result["models"].items():
        for feed, r in feeds_.items():
            lines.append(f"| {name} | {feed} | {r['rows']} | {r['labels_agree']} | {r['share']:.4f} | "
                         f"{r['max_rel_logit_diff']:.3f} / {r['median_rel_logit_diff']:.4f} | "
                         f"{', '.join(str(m) for m in r['disagreeing_margins']) or '-'} (median row {r['median_margin']}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import deploy_speed as ds

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=lambda s: s.split(","), default=list(ds.MODELS))
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "deploy_speed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    speed_args = ds.parse_args(["--models", ",".join(args.models), "--n-test", str(args.n_test)])
    result = {"machine": ds.machine_record(), "min_agreement": MIN_AGREEMENT,
              "command": "python benchmarks/deploy_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "models": {}}
    for name in args.models:
        model = ds.prepare(name, speed_args)
        if "mase" not in model["paths"]:
            raise SystemExit(f"{name}: mase-lite's deployable file was not built ({model['mase_status']})")
        result["models"][name] = agreement(model, args.n_test)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agreement.json").write_text(json.dumps(result, indent=1))
    lines = report(result)
    (args.out / "agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
