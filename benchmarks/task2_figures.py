"""The figures the docs quote from a Lab 2 Task 2 run (``mase-lite search --config
examples/lab2_task2_compression_aware.toml``), computed from its ``trials.csv``.

    python benchmarks/task2_figures.py docs/results/lab2_task2_trials.csv > docs/results/lab2_task2_figures.txt

Per compressed variant: what compression changed (compressed minus trained accuracy of the same
trial), what the fine-tune epoch changed, the effective sparsity (every zero non-embedding weight:
pruned or rounded to zero) and how much smaller the non-embedding weights are; per variant, its best
trial's validation accuracy (selected on) and test accuracy (never selected on).
"""

from __future__ import annotations

import csv
import statistics
import sys
from typing import Sequence


def _span(values: Sequence[float], digits: int = 3) -> str:
    return (f"mean {statistics.mean(values):+.{digits}f}, range {min(values):+.{digits}f} to "
            f"{max(values):+.{digits}f}")


def variant_lines(study: str, rows: list[dict[str, str]]) -> list[str]:
    """The figures of one study's completed trials."""
    lines = [f"{study}: {len(rows)} trials"]
    best = [r for r in rows if r.get("best") == "True"]
    for r in best:
        lines.append(f"  best #{r['trial']}: validation {r['accuracy']} (selected on), test {r['test_accuracy'] or '-'}")
    if not rows[0].get("accuracy_compressed"):
        return lines
    comp = [float(r["accuracy_compressed"]) - float(r["accuracy_trained"]) for r in rows]
    lines.append(f"  compressed - trained: {_span(comp)}; {sum(d < 0 for d in comp)} of {len(comp)} lost accuracy")
    if rows[0].get("accuracy_finetuned"):
        ft = [float(r["accuracy_finetuned"]) - float(r["accuracy_compressed"]) for r in rows]
        vs = [float(r["accuracy_finetuned"]) - float(r["accuracy_trained"]) for r in rows]
        lines.append(f"  fine-tuned - compressed: {_span(ft)}; {sum(d > 0 for d in ft)} of {len(ft)} improved")
        lines.append(f"  fine-tuned - trained (uncompressed): {_span(vs)}; {sum(d > 0 for d in vs)} of {len(vs)} above, "
                     f"{sum(d == 0 for d in vs)} equal")
    zeros = [1 - float(r["cost.nonzero_non_embedding"]) / float(r["cost.params_non_embedding"]) for r in rows]
    shrink = [float(r["cost.size_bytes_fp32_non_embedding"]) / float(r["cost.size_bytes_compressed_non_embedding"])
              for r in rows]
    lines.append(f"  effective sparsity (non-embedding): {min(zeros):.1%} to {max(zeros):.1%}")
    lines.append(f"  non-embedding weights {min(shrink):.1f}x to {max(shrink):.1f}x smaller than fp32")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["state"] == "COMPLETE"]
    for study in dict.fromkeys(r["study"] for r in rows):
        print("\n".join(variant_lines(study, [r for r in rows if r["study"] == study])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
