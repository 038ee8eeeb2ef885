"""One full-scale Lab 2 trial per device: build, train one epoch, evaluate, compress, evaluate, cost.

Full scale is ``examples/lab2_full_gpu.toml``'s data: every IMDb training row not held out for
validation (25,000 - 2,000 = 23,000) at 512 tokens, 2,000 validation rows. The architecture is one
point of that file's space (default L4 A4 H256 I1024, a middle point; ``--layers`` etc. choose
another). The steps are those of a ``compress`` search trial, through :class:`search.lifecycle.Lifecycle`
(the recipe of :mod:`mase_lite.training`, Lab 2's compression pipeline).

* ``cuda`` (when CUDA is available): the full trial, measured (bf16 autocast where the GPU has it).
* ``cpu``: scaled down so it finishes in minutes: ``--cpu-train-rows`` training and ``--cpu-val-rows``
  validation rows (same architecture, 512 tokens). Its training and evaluation times are
  **extrapolated** linearly in rows to the full 23,000 / 2,000 (build, compress and cost do not depend
  on the rows and are taken as measured); the output labels them ``extrapolated``. Accuracies of the
  scaled-down leg mean nothing (a few dozen rows).

    MASE_LITE_DATA=/work/shared/data python benchmarks/gpu_trial.py                 # cpu leg (+ cuda if present)
    MASE_LITE_DATA=... python benchmarks/gpu_trial.py --devices cuda --out /tmp/gpu  # on a GPU machine

Writes ``gpu_trial.json`` into ``--out`` (default: a temporary folder, printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL_TRAIN, FULL_VAL, MAX_LENGTH = 23_000, 2_000, 512


def one_trial(device: str, arch: dict, n_train: int | None, n_val: int, threads: int | None) -> dict:
    """Run the trial on ``device`` with ``n_train`` training rows (``None``: all) and ``n_val`` validation rows."""
    import torch

    from mase_lite.data import DataConfig
    from mase_lite.machine import machine_info
    from mase_lite.models import ModelConfig
    from mase_lite.training import TrainConfig, resolve_device, resolve_precision
    from search.config import DEFAULT_COMPRESSION
    from search.lifecycle import Lifecycle

    dev = resolve_device(device)
    lc = Lifecycle()
    model_cfg = ModelConfig.from_dict({**arch, "max_position_embeddings": MAX_LENGTH, "seed": 0,
                                       "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    data_cfg = DataConfig(n_train=n_train, n_val=n_val, n_test=10, max_length=MAX_LENGTH)
    train_cfg = TrainConfig(device=device, progress=False, num_threads=threads)
    t = {}
    t0 = time.perf_counter()
    splits = lc.load_data(data_cfg, model_cfg, ("train", "val"))
    t["data"] = time.perf_counter() - t0

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    graph = lc.build(model_cfg)
    t["build"] = time.perf_counter() - t0
    trained = lc.train_and_eval(graph, splits, train_cfg)
    sync()
    t["train"], t["eval_trained"] = trained["train_s"], trained["eval_s"]
    t0 = time.perf_counter()
    graph = lc.compress(graph, DEFAULT_COMPRESSION, splits)
    t["compress"] = time.perf_counter() - t0
    compressed = lc.train_and_eval(graph, splits, train_cfg, train=False)
    sync()
    t["eval_compressed"] = compressed["eval_s"]
    t0 = time.perf_counter()
    lc.cost(graph)
    t["cost"] = time.perf_counter() - t0
    return {
        "device": device, "rows": {"train": len(splits.train), "val": len(splits.val)},
        "seconds": {k: round(v, 2) for k, v in t.items()},
        "trial_s": round(sum(v for k, v in t.items() if k != "data"), 1),
        "accuracy_trained": trained["accuracy"], "accuracy_compressed": compressed["accuracy"],
        "training": trained["training"],
        "machine": machine_info(resolve_precision(train_cfg.precision, dev), trained["training"]["num_threads"], dev),
    }


def extrapolate(r: dict) -> dict:
    """The full-scale trial time from a scaled-down run: train/eval times scaled by rows."""
    s = r["seconds"]
    ft, fv = FULL_TRAIN / r["rows"]["train"], FULL_VAL / r["rows"]["val"]
    full = {"build": s["build"], "train": s["train"] * ft, "eval_trained": s["eval_trained"] * fv,
            "compress": s["compress"], "eval_compressed": s["eval_compressed"] * fv, "cost": s["cost"]}
    return {"seconds": {k: round(v, 1) for k, v in full.items()}, "trial_s": round(sum(full.values()), 1),
            "factor_train_rows": round(ft, 1), "factor_val_rows": round(fv, 1)}


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--cpu-train-rows", type=int, default=64)
    p.add_argument("--cpu-val-rows", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the available CPUs)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    arch = {"num_hidden_layers": args.layers, "num_attention_heads": args.heads, "hidden_size": args.hidden,
            "intermediate_size": args.intermediate}
    out = {"arch": arch, "full_scale": {"train_rows": FULL_TRAIN, "val_rows": FULL_VAL, "max_length": MAX_LENGTH},
           "legs": []}
    for device in devices:
        if device == "cpu":
            r = one_trial("cpu", arch, args.cpu_train_rows, args.cpu_val_rows, args.threads)
            r["measured"] = "scaled down"
            r["full_scale_extrapolated"] = extrapolate(r)
            print(f"cpu: {r['rows']['train']} train / {r['rows']['val']} val rows measured in {r['trial_s']} s "
                  f"({r['seconds']}); full-scale trial EXTRAPOLATED: {r['full_scale_extrapolated']['trial_s']} s "
                  f"= {r['full_scale_extrapolated']['trial_s'] / 3600:.2f} h ({r['full_scale_extrapolated']['seconds']})",
                  flush=True)
        else:
            r = one_trial(device, arch, None, FULL_VAL, args.threads)
            r["measured"] = "full scale"
            print(f"{device}: full-scale trial ({r['rows']['train']} train / {r['rows']['val']} val rows) measured "
                  f"in {r['trial_s']} s ({r['seconds']}), accuracy {r['accuracy_trained']:.4f} trained, "
                  f"{r['accuracy_compressed']:.4f} compressed, {r['machine'].get('gpu')}", flush=True)
        out["legs"].append(r)
    folder = args.out or Path(tempfile.mkdtemp(prefix="gpu_trial-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_trial.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {folder / 'gpu_trial.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
