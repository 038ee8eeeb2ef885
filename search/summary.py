"""The summary table and the trial CSV of a search, read back from storage.

Beside each best trial's validation accuracy (``acc``: what the search selected on, so optimistic --
the winner's curse) both show ``test``: the same model's accuracy on the test split, which nothing
selected on (``search.objectives``: evaluated for every trial that was best, tied or on the Pareto
front when it finished). ``trials.csv`` fills ``test_accuracy`` only for the study's final best trials.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from mase_lite.errors import MaseError

from .space import MODEL_PARAMS
from .best import best_trials
from .budget import is_early_stopped
from .liveness import interrupted_numbers

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- summary


def _arch_str(arch: dict[str, Any] | None) -> str:
    if not arch:
        return "-"
    heads = arch.get("num_attention_heads")
    if isinstance(arch.get("heads_per_layer"), dict):  # a shrunk checkpoint: heads kept per layer, in layer order
        heads = "/".join(str(v) for _, v in sorted(arch["heads_per_layer"].items(), key=lambda kv: int(kv[0])))
    s = (f"L{arch.get('num_hidden_layers')} A{heads} H{arch.get('hidden_size')} "
         f"I{arch.get('intermediate_size')}")
    if arch.get("n_identity"):
        s += f" id{arch['n_identity']}"
    return s


def trial_status(t: FrozenTrial, interrupted: set[int] | None = None) -> str:
    """``complete``, ``failed``, ``interrupted``, ``unbuildable`` (pruned: the architecture cannot be
    built, no training), ``early-stopped`` (pruned by the study's pruner, mid-training),
    ``over-budget`` (dropped by the budget guard of several workers, not counted), ``running`` or
    ``waiting``."""
    if t.state == TrialState.PRUNED:
        if t.user_attrs.get("over_budget"):
            return "over-budget"
        return "early-stopped" if is_early_stopped(t) else "unbuildable"
    if t.state == TrialState.FAIL:
        return "interrupted" if (t.user_attrs.get("interrupted") or t.number in (interrupted or ())) else "failed"
    return t.state.name.lower()


def _reason(ua: dict[str, Any]) -> str | None:
    return ua.get("fail_reason") or ua.get("prune_reason") or ua.get("early_stop_reason")


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    ua = t.user_attrs
    cost = ua.get("cost") or {}
    return {
        "trial": t.number,
        "state": t.state.name,
        "accuracy": ua.get("accuracy"),
        "test_accuracy": ua.get("test_accuracy"),
        "test_n": ua.get("test_n"),
        "accuracy_trained": ua.get("accuracy_trained"),
        "accuracy_compressed": ua.get("accuracy_compressed"),
        "accuracy_finetuned": ua.get("accuracy_finetuned"),
        "values": list(t.values) if t.values else None,
        "arch": ua.get("arch"),
        "cost": cost,
        "seconds": (ua.get("timings") or {}).get("total"),
        "graph_dir": ua.get("graph_dir"),
        "graph_artifact": ua.get("graph_artifact"),
        "reused_from": ua.get("reused_from"),
        "reason": _reason(ua),
        "sparsity": ua.get("sparsity") or _sparsity(cost),
        "compression_choices": ua.get("compression_choices"),
        "feasible": ua.get("feasible"),
    }


def _sparsity(cost: dict[str, Any]) -> dict[str, float]:
    from .objectives import sparsity_attrs

    return sparsity_attrs(cost)


def _short_format(name: str) -> str:
    """A format's short label (its ``short_name``; the name itself for an unknown format)."""
    from passes.formats import format_names, get_format

    return (get_format(name).short_name or name) if name in format_names() else name


def choices_str(choices: dict[str, dict[str, Any]] | None) -> str:
    """Per-node compression choices, counted: ``int8:10 int4/f2:2 | s0.5:4`` (format+width[/f frac
    width] : nodes, then the nodes per positive sparsity)."""
    if not choices:
        return "-"
    fmts: dict[str, int] = {}
    sparse: dict[str, int] = {}
    for c in choices.values():
        f = f"{_short_format(c['format'])}{c['width']}"
        if c.get("frac_width") not in (None, "auto"):
            f += f"/f{c['frac_width']}"
        fmts[f] = fmts.get(f, 0) + 1
        if c.get("sparsity"):
            k = f"s{c['sparsity']:g}"
            sparse[k] = sparse.get(k, 0) + 1
    out = " ".join(f"{k}:{v}" for k, v in sorted(fmts.items()))
    return out + (" | " + " ".join(f"{k}:{v}" for k, v in sorted(sparse.items())) if sparse else "")


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def summarize(storage, study_names: Iterable[str]) -> list[dict[str, Any]]:
    """Per study: counts, and the best trial (single objective) or the Pareto front (several)."""
    out = []
    for name in study_names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials)
                  for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING)}
        counts["early_stopped"] = sum(is_early_stopped(t) for t in trials)
        counts["pruned"] -= counts["early_stopped"]  # pruned: unbuildable architectures only
        counts["interrupted"] = len(interrupted_numbers(trials))
        counts["over_budget"] = sum(t.state == TrialState.PRUNED and bool(t.user_attrs.get("over_budget"))
                                    for t in trials)
        counts["pruned"] -= counts["over_budget"]  # dropped by the budget guard of several workers (search.storage)
        counts["reused"] = sum(t.state == TrialState.COMPLETE and t.user_attrs.get("reused_from") is not None
                               for t in trials)
        best = best_trials(study)
        tied = [{"trial": t.number, "accuracy": t.user_attrs.get("accuracy"),
                 "test_accuracy": t.user_attrs.get("test_accuracy")} for t in best] if len(study.directions) == 1 else []
        if len(study.directions) == 1:
            # of tied trials, the earliest with a saved graph (with several workers an earlier-numbered
            # trial can finish later, tie, and save none), else the earliest
            best = sorted(best, key=lambda t: (not (t.user_attrs.get("graph_dir") or t.user_attrs.get("graph_artifact")),
                                               t.number))[:1]
        best = sorted(best, key=lambda t: -(t.user_attrs.get("accuracy") or 0.0))
        out.append({
            "study": name,
            **{k: study.user_attrs.get(k) for k in ("run", "curve", "sampler", "variant", "seed", "objectives")},
            "directions": [d.name.lower() for d in study.directions],
            "trials": counts,
            "best": [_trial_row(t) for t in best],
            **({"tied": tied} if len(tied) > 1 else {}),
            **({"compress_after_nas": study.user_attrs["compress_after_nas"]}
               if "compress_after_nas" in study.user_attrs else {}),
        })
    return out


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _mb(v: Any) -> str:
    return "-" if v is None else f"{float(v) / 1e6:.2f}"


def format_summary(summary: list[dict[str, Any]]) -> str:
    """A plain-text table: one line per study's best trial (several for a Pareto front)."""
    early = any(s["trials"].get("early_stopped") for s in summary)
    head = ["study", "done/fail/pruned" + ("/early-stopped" if early else ""), "best", "acc", "test", "acc_trained",
            "acc_compr", "acc_ft", "arch", "params", "fp32 MB", "compr MB", "s"]
    # compressed trials: the zeros from pruning and from rounding, and per-node formats when searched
    # only when some best trial has zeros to show (an uncompressed model has none: no all-0.0 columns)
    sparse = any(any((b.get("sparsity") or {}).values()) for s in summary for b in s["best"])
    mixed = any(b.get("compression_choices") for s in summary for b in s["best"])
    extra = (["pruned", "round0", "zeros"] if sparse else []) + (["formats"] if mixed else [])
    head += extra
    rows = []
    for s in summary:
        c = s["trials"]
        counts = f"{c['complete']}/{c['fail']}/{c['pruned']}" + (f"/{c.get('early_stopped', 0)}" if early else "")
        front = len(s["directions"]) > 1
        if not s["best"]:
            rows.append([s["study"], counts, "-", *["-"] * (10 + len(extra))])
        for i, b in enumerate(s["best"]):
            cost = b["cost"] or {}
            sp = b.get("sparsity") or {}
            rows.append([
                s["study"] if i == 0 else "", counts if i == 0 else "",
                f"{'pareto ' if front else ''}#{b['trial']}",
                _fmt(b["accuracy"]), _fmt(b.get("test_accuracy")), _fmt(b["accuracy_trained"]), _fmt(b["accuracy_compressed"]),
                _fmt(b["accuracy_finetuned"]), _arch_str(b["arch"]), _fmt(cost.get("params")),
                _mb(cost.get("size_bytes_fp32")), _mb(_compressed(cost)), _fmt(b["seconds"], ".1f"),
                *([_pct(sp.get("pruned_fraction")), _pct(sp.get("rounding_zero_fraction_of_kept")),
                   _pct(sp.get("effective_sparsity"))] if sparse else []),
                *([choices_str(b.get("compression_choices"))] if mixed else []),
            ])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", "acc: validation accuracy, selected on (optimistic: the best of several noisy trials); test: the "
                  "same model on the test split" + _test_rows(summary) + ", never used for selection"]
    if sparse:
        lines += ["", "pruned: weights pruned; round0: weights kept by pruning that quantisation rounds to zero "
                      "(of the kept ones); zeros: effective sparsity (every zero weight); of the non-embedding "
                      "parameters (cost pass)"]
    if early:
        lines += ["", "pruned: unbuildable architectures (not trained, not counted in n_trials); early-stopped: "
                      "stopped by the pruner mid-training (counted in n_trials)"]
    for s in summary:
        if s.get("tied"):
            lines.append(f"{s['study']}: {len(s['tied'])} trials tie for best; their test accuracies: " + ", ".join(
                f"#{t['trial']} {_fmt(t['test_accuracy'])}" for t in s["tied"]))
    return "\n".join(lines + _format_compress_after_nas(summary))


def _test_rows(summary: list[dict[str, Any]]) -> str:
    """`` (N rows, standard error about x)`` for the test split of the best trials: the binomial SE at their
    mean test accuracy (empty when unknown)."""
    ns = {b.get("test_n") for s in summary for b in s["best"] if b.get("test_n")}
    accs = [b["test_accuracy"] for s in summary for b in s["best"] if b.get("test_accuracy") is not None]
    if len(ns) != 1 or not accs:
        return ""
    n, p = ns.pop(), sum(accs) / len(accs)
    return f" ({n} rows, standard error about {(p * (1 - p) / n) ** 0.5:.3f})"


def _format_compress_after_nas(summary: list[dict[str, Any]]) -> list[str]:
    """Compress-after-NAS (the best baseline graph, compressed afterwards) beside the compression-aware bests."""
    best_of = {s["study"]: (s["best"][0]["accuracy"] if s["best"] else None) for s in summary}
    test_of = {s["study"]: (s["best"][0].get("test_accuracy") if s["best"] else None) for s in summary}
    lines = []
    for s in summary:
        r = s.get("compress_after_nas")
        if not r:
            continue
        if not lines:
            lines = ["", "compress-after-NAS (best baseline graph, compressed afterwards) vs compression-aware search:"]
        parts = [f"  {s['study']} #{r['trial']} ({_arch_str(r.get('arch'))}): trained {_fmt(r.get('accuracy_trained'))}",
                 f"compressed {_fmt(r.get('accuracy_compressed'))} (test {_fmt(r.get('test_accuracy_compressed'))})"]
        if "accuracy_finetuned" in r:
            parts.append(f"fine-tuned {_fmt(r.get('accuracy_finetuned'))} (test {_fmt(r.get('test_accuracy_finetuned'))})")
        aware = [f"{name} best {_fmt(best_of.get(name))} (test {_fmt(test_of.get(name))})"
                 for name in r.get("compared_with", {}).values()]
        lines.append(", ".join(parts) + "; compression-aware: " + ", ".join(aware))
    return lines


def _compressed(cost: dict[str, Any]) -> Any:
    from .objectives import compressed_size

    try:
        return compressed_size(cost)
    except MaseError:
        return None


def write_trials_csv(storage, study_names: Iterable[str], path: Path) -> Path:
    """Every trial of the studies, one row each (architecture, accuracies, cost, timings, reasons)."""
    rows = []
    cost_keys: list[str] = []
    for name in study_names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        interrupted = interrupted_numbers(study.get_trials(deepcopy=False))
        best = {t.number for t in best_trials(study)}  # the held-out figure belongs to the final best trials
        for t in study.get_trials(deepcopy=False):
            ua = t.user_attrs
            arch = ua.get("arch") or {}
            cost = ua.get("cost") or {}
            cost_keys += [k for k in cost if k not in cost_keys]
            rows.append({
                "study": name, "trial": t.number, "state": t.state.name,
                **{k: arch.get(k) for k in MODEL_PARAMS}, "n_identity": arch.get("n_identity"),
                "identity": " ".join(arch.get("identity") or []),
                **({"shrink": json.dumps(ua["shrink"], sort_keys=True)} if ua.get("shrink") else {}),
                "accuracy": ua.get("accuracy"),
                "test_accuracy": ua.get("test_accuracy") if t.number in best else None, "best": t.number in best,
                "accuracy_trained": ua.get("accuracy_trained"),
                "accuracy_compressed": ua.get("accuracy_compressed"), "accuracy_finetuned": ua.get("accuracy_finetuned"),
                "values": " ".join(map(str, t.values)) if t.values else "",
                **{f"cost.{k}": v for k, v in cost.items()},
                **{f"time.{k}": v for k, v in (ua.get("timings") or {}).items()},
                **{k: (ua.get("machine") or {}).get(k) for k in ("precision", "num_threads", "cpu", "device")},
                "status": trial_status(t, interrupted),
                "interrupted": bool(ua.get("interrupted")),
                "early_stop_step": (ua.get("early_stop") or {}).get("step", ""),
                "reason": _reason(ua) or "",
                "graph_dir": ua.get("graph_dir") or "",
            })
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path
