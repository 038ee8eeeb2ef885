"""Early stopping: one TPE study with and without a pruner, same seeds, real training on IMDb.

Each arm is one ``mase-lite search`` study (:func:`search.study.run_search`) of ``--n-trials`` trials
of the TPE sampler (seed 0) over a space of 1-4-layer BERTs (54 architectures) trained from scratch for one epoch
on ``--n-train`` IMDb reviews and selected on ``--n-val`` validation reviews. The pruned arm sets
``search.pruner`` (default ``successive_halving``), reporting the accuracy on a fixed seeded subset of
``--pruner-val-rows`` validation rows every ``--eval-every`` optimizer steps; early-stopped trials
count against ``n_trials``, so both arms spend the same number of sampler proposals.

Printed and written (``--out``, default ``docs/results/pruner_speedup/``): each arm's wall time (the whole
``run_search`` call: trials, summaries, figures; data loaded once beforehand), best validation
accuracy and trial counts, and the ratio of the wall times; and, independent of the machine's load,
the optimizer steps each arm trained (``--summarize`` recomputes them from ``trials.csv``). Seed noise: the best architecture of
each arm is retrained with ``--noise-seeds`` other model seeds (same data and recipe), and the
spread of those accuracies is reported beside the two bests. Files: ``results.json`` and
``trials.csv`` (one row per trial and arm). Run folders go to a temporary directory.

    MASE_LITE_DATA=/work/shared/data python benchmarks/pruner_speedup.py            # ~30-40 min on 2 cores
    MASE_LITE_DATA=/work/shared/data python benchmarks/pruner_speedup.py --n-trials 6 --n-train 500 --out /tmp/ps
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE = {  # 54 combinations, from 0.1M to 2.4M encoder weights; a repeated one is reused, not retrained
    "num_hidden_layers": [1, 2, 4],
    "num_attention_heads": [2, 4],
    "hidden_size": [64, 128, 256],
    "intermediate_size": [128, 512, 1024],
}


def run_config(args: argparse.Namespace, name: str, pruner: str):
    from search.config import RunConfig

    return RunConfig.from_dict({
        "search": {"name": name, "samplers": ["tpe"], "seeds": [args.seed], "n_trials": args.n_trials,
                   "save_graphs": False, "sampler_options": {"tpe_startup_trials": args.startup_trials},
                   "pruner": pruner, "eval_every": args.eval_every, "pruner_val_rows": args.pruner_val_rows,
                   "pruner_startup_trials": args.pruner_startup_trials},
        "space": SPACE,
        "data": {"n_train": args.n_train, "n_val": args.n_val, "n_test": 100, "max_length": args.max_length},
        "train": {"epochs": 1, "progress": False, "device": args.device, "num_threads": args.threads,
                  "batch_size": args.batch_size},
    })


def trial_rows(result, arm: str) -> list[dict]:
    import optuna

    from search.summary import trial_status

    storage = optuna.storages.RDBStorage(result.storage_url)
    rows = []
    for spec in result.studies:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            ua = t.user_attrs
            arch = ua.get("arch") or {}
            stop = ua.get("early_stop") or {}
            rows.append({
                "arm": arm, "trial": t.number, "status": trial_status(t),
                "arch": " ".join(f"{k}={arch.get(k)}" for k in SPACE),
                "accuracy": ua.get("accuracy"), "stopped_at_step": stop.get("step"),
                "total_steps": stop.get("total_steps"), "intermediate_accuracy": stop.get("accuracy"),
                "seconds": (ua.get("timings") or {}).get("total"),
            })
    return rows


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-trials", type=int, default=30)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--pruner", default="successive_halving", choices=["median", "successive_halving", "hyperband"])
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--pruner-val-rows", type=int, default=300)
    p.add_argument("--pruner-startup-trials", type=int, default=5)
    p.add_argument("--startup-trials", type=int, default=5, help="TPE's random start-up trials")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-seeds", type=int, nargs="*", default=[1, 2])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the available CPUs)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "pruner_speedup")
    p.add_argument("--summarize", action="store_true",
                   help="only recompute the load-independent figures (trained steps per arm) from --out's "
                        "trials.csv into its results.json")
    return p.parse_args(argv)


def _run_arms(args: argparse.Namespace, tmp: str) -> tuple[dict[str, dict], list[dict]]:
    """Both studies (without and with the pruner), run folders under ``tmp``: per arm its figures, and
    one row per trial."""
    from search.study import run_search

    arms = {}
    rows: list[dict] = []
    for arm, pruner in (("no_pruner", "none"), (args.pruner, args.pruner)):
        cfg = run_config(args, f"ps-{arm}", pruner)
        t0 = time.perf_counter()
        result = run_search(cfg, Path(tmp) / arm)
        wall = time.perf_counter() - t0
        s = result.summary[0]
        best = s["best"][0] if s["best"] else {}
        arms[arm] = {"pruner": pruner, "wall_s": round(wall, 1), "best_accuracy": best.get("accuracy"),
                     "best_trial": best.get("trial"), "best_arch": best.get("arch"), "trials": s["trials"]}
        rows += trial_rows(result, arm)
        print(f"{arm:>20}: wall {wall:7.1f} s  best accuracy {best.get('accuracy')}  trials {s['trials']}",
              flush=True)
    return arms, rows


def _seed_noise(args: argparse.Namespace, arms: dict[str, dict], lc, splits) -> dict[str, dict]:
    """The best architecture of each arm, retrained with the other model seeds ``--noise-seeds``."""
    from mase_lite.models import ModelConfig

    noise = {}
    for arm, a in arms.items():
        arch = {k: v for k, v in (a["best_arch"] or {}).items() if k in SPACE}
        if not arch or not args.noise_seeds:
            continue
        accs = []
        for seed in args.noise_seeds:
            cfg = run_config(args, "noise", "none")
            model = ModelConfig.from_dict({**cfg.model.to_dict(), **arch, "seed": seed,
                                           "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
            graph = lc.build(model)
            accs.append(lc.train_and_eval(graph, splits, cfg.train.replace(seed=seed))["accuracy"])
        noise[arm] = {"arch": arch, "seeds": args.noise_seeds, "accuracies": accs,
                      "with_search_seed": [a["best_accuracy"], *accs]}
        print(f"{arm:>20}: best arch retrained with seeds {args.noise_seeds}: {accs}", flush=True)
    return noise


def _write_results(args: argparse.Namespace, arms: dict[str, dict], noise: dict[str, dict], rows: list[dict],
                   device) -> None:
    """Print the comparison and write ``results.json`` and ``trials.csv`` into ``--out``."""
    from mase_lite.machine import machine_info
    from mase_lite.training import resolve_precision

    no, pr = arms["no_pruner"], arms[args.pruner]
    ratio = no["wall_s"] / pr["wall_s"] if pr["wall_s"] else float("nan")
    per_arch_sd = {arm: statistics.stdev(n["with_search_seed"]) for arm, n in noise.items()
                   if len(n["with_search_seed"]) > 1}
    diff = (no["best_accuracy"] - pr["best_accuracy"]) if None not in (no["best_accuracy"], pr["best_accuracy"]) else None
    out = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "space": SPACE,
        "machine": machine_info(resolve_precision("auto", device), None, device),
        "arms": arms,
        "wall_time_ratio": round(ratio, 3),
        "best_accuracy_difference": diff,
        "seed_noise": {"per_arch": noise, "per_arch_stdev": per_arch_sd},
        "note": "wall times on a shared, noisy machine (other jobs ran beside it)",
    }
    print(f"wall time: no pruner {no['wall_s']:.1f} s, {args.pruner} {pr['wall_s']:.1f} s, ratio {ratio:.2f}x")
    print(f"best accuracy: no pruner {no['best_accuracy']}, {args.pruner} {pr['best_accuracy']}, "
          f"difference {diff}; seed noise (stdev over seeds of each best arch): {per_arch_sd}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    with (args.out / "trials.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'trials.csv'}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.summarize:
        return summarize(args.out)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from mase_lite.training import resolve_device
    from search.lifecycle import default_lifecycle
    from search.study import load_data

    device = resolve_device(args.device)
    lc = default_lifecycle()
    base = run_config(args, "warmup", "none")
    t0 = time.perf_counter()
    splits = load_data(base, lc)  # tokenised once (cached): both arms then read the cache
    print(f"data: {len(splits.train)} train / {len(splits.val)} val rows, loaded in {time.perf_counter() - t0:.1f} s",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="pruner_speedup-") as tmp:
        arms, rows = _run_arms(args, tmp)
        noise = _seed_noise(args, arms, lc, splits)
    _write_results(args, arms, noise, rows, device)
    return summarize(args.out)


def trained_steps(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per arm, the optimizer steps actually trained: a complete trial trains the whole epoch, an
    early-stopped one up to its stop, and a repeated architecture (reused, not retrained) none. Unlike
    wall time this does not depend on what else ran on the machine (the epoch's length is read from the
    early-stopped trials' ``total_steps``)."""
    full = max((int(float(r["total_steps"])) for r in rows if r.get("total_steps")), default=None)
    out: dict[str, dict[str, int]] = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        seen, steps, trained, stopped = set(), 0, 0, 0
        for r in (r for r in rows if r["arm"] == arm):
            if r["arch"] in seen:
                continue  # reused: the study evaluated this configuration already
            seen.add(r["arch"])
            if r["status"] == "early-stopped" and r.get("stopped_at_step"):
                steps += int(float(r["stopped_at_step"]))
                stopped += 1
            elif r["status"] == "complete" and full:
                steps += full
            trained += 1
        out[arm] = {"trained_architectures": trained, "early_stopped": stopped, "steps": steps,
                    "epoch_steps": full or 0}
    return out


def summarize(out_dir: Path) -> int:
    rows = list(csv.DictReader((out_dir / "trials.csv").open()))
    res = json.loads((out_dir / "results.json").read_text())
    steps = trained_steps(rows)
    arms = list(steps)
    res["trained_steps"] = steps
    if len(arms) == 2 and steps[arms[1]]["steps"]:
        res["trained_steps_ratio"] = round(steps[arms[0]]["steps"] / steps[arms[1]]["steps"], 3)
    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    for arm, st in steps.items():
        print(f"{arm:>20}: {st['trained_architectures']} architectures trained ({st['early_stopped']} early-stopped), "
              f"{st['steps']} optimizer steps (epoch = {st['epoch_steps']} steps)")
    if "trained_steps_ratio" in res:
        print(f"trained steps ratio {res['trained_steps_ratio']:.2f}x; wall time ratio {res['wall_time_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
