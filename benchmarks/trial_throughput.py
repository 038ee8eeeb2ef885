"""One NAS trial, two recipes: mase-lite's CPU recipe vs the HF ``Trainer`` defaults of MASE's tutorial.

A trial = build bert-tiny (BertConfig num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
intermediate_size=512, vocab 30522) from the same seed, train one epoch on the same seeded IMDb rows
(default: the full 25,000-row training split, max_length 128), then evaluate on the same seeded test
rows (default 2,000). Recipes, run alternately in the same process (``--repeats`` rounds, order
swapped every round, so a busy machine slows both alike):

* ``mase``: :func:`mase_lite.training.train` with the default :class:`TrainConfig`, then
  :func:`mase_lite.training.evaluate`. The model uses ``attn_implementation="eager"`` (same maths as
  HF's default ``sdpa``, whose bf16 backward is slow on CPU). ``--graph`` trains the traced
  :class:`mase_lite.MaseGraph` instead of the eager module.
* ``hf``: ``transformers.Trainer`` with ``TrainingArguments`` defaults (batch 8, lr 5e-5, linear decay,
  no warmup, dropout on, fp32, random batches padded by ``DataCollatorWithPadding``), then
  ``trainer.evaluate`` with an accuracy metric. Needs ``accelerate``.

Also printed: the machine's fp32 matmul rate (1024x1024 matmul, measured in the same run, before and
after) and the fraction of it each recipe achieves on the model's useful matmul FLOPs (real tokens,
forward + backward = 3x forward, attention included, padding excluded).

    python benchmarks/trial_throughput.py                    # full comparison (~3.5 min on 2 idle cores)
    python benchmarks/trial_throughput.py --recipes mase     # mase-lite's recipe only (README figures)
    python benchmarks/trial_throughput.py --n-train 2000 --n-test 500   # quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mase_lite.data import DataConfig, load_splits, load_tokenizer
from mase_lite.machine import default_num_threads
from mase_lite.training import TrainConfig, resolve_precision
from search.lifecycle import Lifecycle

BERT_TINY = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512, vocab_size=30522)


def matmul_peak(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """Best fp32 GFLOP/s of an ``n x n`` matmul over ~``seconds``."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def cpu_stall_us() -> float | None:
    """Linux PSI: total microseconds some task waited for a CPU (None where unavailable)."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return float(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def useful_train_flops(lengths: np.ndarray, cfg: dict) -> float:
    """Matmul FLOPs of one training epoch over rows of these lengths (no padding), fwd + bwd = 3x fwd."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    L = lengths.astype(np.float64)
    per_layer = 2 * L * (4 * h * h + 2 * h * inter) + 2 * 2 * L * L * h
    fwd = layers * per_layer.sum() + len(L) * (2 * h * h + 2 * h * 2)  # + pooler and classifier
    return 3 * fwd


def build_model(seed: int, attn: str):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**BERT_TINY, attn_implementation=attn))


def run_mase(splits, args) -> dict:
    model = build_model(args.model_seed, "eager")
    if args.graph:
        from mase_lite import trace
        from mase_lite.models import example_inputs

        model = trace(model, example_inputs(model))
    cfg = TrainConfig(progress=args.progress, num_threads=args.threads,
                      **({"lr": args.lr} if args.lr is not None else {}),
                      **({"warmup_ratio": args.warmup_ratio} if args.warmup_ratio is not None else {}))
    out = Lifecycle().train_and_eval(model, splits, cfg, split="test")  # the lifecycle's train-then-evaluate
    tr = out["training"]
    return {"train_s": out["train_s"], "eval_s": out["eval_s"], "accuracy": out["accuracy"], "eval_loss": out["loss"],
            "steps": tr["steps"], "precision": tr["precision"], "padding_overhead": tr["padded_tokens"] / tr["tokens"] - 1}


def run_hf(splits, tokenizer, args) -> dict:
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    torch.set_num_threads(args.threads)
    model = build_model(args.model_seed, "sdpa")
    train_ds = splits.train.remove_columns(["length"])
    test_ds = splits.test.remove_columns(["length"])

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, num_train_epochs=1, report_to="none", save_strategy="no",
                                  use_cpu=True, disable_tqdm=not args.progress, seed=args.model_seed,
                                  logging_strategy="no")
        trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=test_ds,
                          data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
        trainer.remove_callback(PrinterCallback)  # it prints metric dicts when tqdm is disabled
        t0 = time.perf_counter()
        out_train = trainer.train()
        t1 = time.perf_counter()
        metrics = trainer.evaluate()
        t2 = time.perf_counter()
    return {"train_s": t1 - t0, "eval_s": t2 - t1, "accuracy": metrics["eval_accuracy"],
            "eval_loss": metrics["eval_loss"], "steps": out_train.global_step, "precision": "fp32",
            "padding_overhead": float("nan")}


def _parse_args(argv) -> tuple[argparse.Namespace, list[str]]:
    """(the arguments, with ``threads`` resolved; the recipes to run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=None, help="training rows (default: all 25,000)")
    p.add_argument("--n-test", type=int, default=2000, help="test rows evaluated (default 2000)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--truncation", choices=["head", "head_tail"], default="head_tail",
                   help="which tokens rows longer than max_length keep (default head_tail, mase-lite's default)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="rounds of (mase, hf), order alternating")
    p.add_argument("--recipes", default="mase,hf", help="comma-separated subset of mase,hf")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: available CPUs)")
    p.add_argument("--lr", type=float, default=None, help="mase recipe learning rate (default: TrainConfig's)")
    p.add_argument("--warmup-ratio", type=float, default=None, help="mase recipe warmup ratio (default: TrainConfig's)")
    p.add_argument("--graph", action="store_true", help="train the traced MaseGraph in the mase recipe")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args.threads = args.threads or default_num_threads()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = [r for r in recipes if r not in ("mase", "hf")]
    if bad:
        p.error(f"--recipes: unknown recipe {bad[0]!r}; choose from mase, hf")
    return args, recipes


def _run_rounds(args, recipes: list[str], splits, tokenizer, flops: float) -> dict[str, list[dict]]:
    """``--repeats`` rounds of every recipe, the order swapped every round; the results per recipe."""
    results: dict[str, list[dict]] = {r: [] for r in recipes}
    for rep in range(args.repeats):
        order = recipes if rep % 2 == 0 else recipes[::-1]
        for recipe in order:
            stall0, t0 = cpu_stall_us(), time.perf_counter()
            r = run_mase(splits, args) if recipe == "mase" else run_hf(splits, tokenizer, args)
            stall1, t1 = cpu_stall_us(), time.perf_counter()
            r["trial_s"] = r["train_s"] + r["eval_s"]
            r["gflops"] = flops / r["train_s"] / 1e9
            r["cpu_wait"] = (stall1 - stall0) / 1e6 / (t1 - t0) if stall0 is not None and stall1 is not None else None
            results[recipe].append(r)
            wait = "" if r["cpu_wait"] is None else f"  cpu-wait {r['cpu_wait']:.0%}"
            print(f"[{rep + 1}/{args.repeats}] {recipe:4s}: train {r['train_s']:7.1f} s  eval {r['eval_s']:5.1f} s  "
                  f"accuracy {r['accuracy']:.4f}  steps {r['steps']}  {r['precision']}  "
                  f"{r['gflops']:.1f} useful GFLOP/s{wait}", flush=True)
    return results


def _summary(args, recipes: list[str], results: dict[str, list[dict]], peak_before: float,
             peak_after: float) -> dict:
    """Print the medians per recipe (and the comparison when both ran); return the summary."""
    peak = max(peak_before, peak_after)
    print(f"fp32 matmul after: {peak_after:.1f} GFLOP/s; peak taken as {peak:.1f} (a big gap between the two means "
          f"the machine was busy; so does a cpu-wait above a few %: the share of time tasks waited for a CPU)")
    for recipe in recipes:
        for r in results[recipe]:
            r["fraction_of_fp32_peak"] = r["gflops"] / peak

    def med(recipe, key):
        return float(np.median([r[key] for r in results[recipe]]))

    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "peak_gflops": peak, "peak_gflops_before_after": [peak_before, peak_after], "results": results}
    for recipe in recipes:
        print(f"{recipe:4s} median: train {med(recipe, 'train_s'):.1f} s, trial {med(recipe, 'trial_s'):.1f} s, "
              f"accuracy {med(recipe, 'accuracy'):.4f}, {med(recipe, 'fraction_of_fp32_peak'):.2f}x the fp32 matmul "
              f"rate (a yardstick: with bf16 autocast the real peak is higher)")
    if set(recipes) == {"mase", "hf"}:
        ratio_train = med("hf", "train_s") / med("mase", "train_s")
        ratio_trial = med("hf", "trial_s") / med("mase", "trial_s")
        dacc = med("mase", "accuracy") - med("hf", "accuracy")
        ok = ratio_trial >= 1.5 and dacc >= 0
        summary.update(ratio_train=ratio_train, ratio_trial=ratio_trial, accuracy_gain=dacc, goal_met=ok)
        print(f"mase-lite vs HF Trainer defaults: {ratio_train:.2f}x faster training, {ratio_trial:.2f}x faster trial, "
              f"accuracy {dacc:+.4f} -> goal (>= 1.5x, accuracy >= HF) {'met' if ok else 'NOT met'}")
    return summary


def main(argv=None) -> int:
    args, recipes = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    data_cfg = DataConfig(n_train=args.n_train, n_val=0, n_test=args.n_test, max_length=args.max_length,
                          truncation=args.truncation, seed=args.data_seed)
    tokenizer = load_tokenizer(data_cfg)
    splits = load_splits(data_cfg, tokenizer, ("train", "test"))
    lengths = np.asarray(splits.train["length"])
    flops = useful_train_flops(lengths, BERT_TINY)
    peak_before = matmul_peak(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
          f"mase precision {resolve_precision('auto')}; fp32 1024x1024 matmul: {peak_before:.1f} GFLOP/s")
    print(f"data: {len(splits.train)} train rows ({lengths.sum()} tokens, max_length {args.max_length}), "
          f"{len(splits.test)} test rows; useful training matmul work {flops / 1e12:.2f} TFLOP")
    results = _run_rounds(args, recipes, splits, tokenizer, flops)
    summary = _summary(args, recipes, results, peak_before, matmul_peak(args.threads))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
