"""The key figures of one or more ``bench replay`` runs, side by side, as one CSV (issue #21).

Reads the ``stats.json`` that ``mase-lite bench replay`` writes and extracts, per replay: the
pre-registered hypotheses (when the table has a pre-registration), question 1's sampler pairs, question
3's comparisons, question 2's cross-run agreement minus the test-retest ceiling and, with ``--noise``,
each metric's noise figures on the scoring split (two-way ANOVA p of the architecture, ICC, sds,
collapsed runs). Every value is copied from ``stats.json`` as it is; nothing is recomputed.

    python benchmarks/replay_key_figures.py --out docs/results/lab2_heldout_5k/key_figures.csv \\
        0-199=docs/results/lab2_heldout_5k/seeds-0-199/stats.json \\
        5000-5199=docs/results/lab2_heldout_5k/seeds-5000-5199/stats.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterator

COLUMNS = ["replay_seeds", "question", "what", "budget", "estimate", "ci_lo", "ci_hi", "p", "p_holm", "n_runs"]
Q1_SAMPLERS = ("grid", "random", "tpe")


def _ci(ci: Any) -> tuple[Any, Any]:
    return (ci[0], ci[1]) if ci else ("", "")


def preregistered_rows(stats: dict) -> Iterator[list]:
    for family, rows in (stats.get("preregistered") or {}).items():
        if family == "alpha":
            continue
        for r in rows:
            if "missing" in r:
                yield [family, r["hypothesis"] + ": " + r["missing"], "", "", "", "", "", "", ""]
                continue
            yield [family, f"{r['hypothesis']} ({r['alternative']})", "", r["estimate"], *_ci(r["ci"]),
                   "" if r.get("p") is None else r["p"], r.get("p_holm", ""), ""]


def q1_rows(stats: dict, budgets: list[int]) -> Iterator[list]:
    for metric, s in stats["searches"].items():
        for p in s["pairs"]:
            if p["budget"] in budgets and p["a"] in Q1_SAMPLERS and p["b"] in Q1_SAMPLERS:
                yield ["q1", f"{p['a']} - {p['b']} on {metric}", p["budget"], p["mean_difference"], *_ci(p["ci"]),
                       p["p"], p["p_holm"], p["n"]]


def q3_rows(stats: dict, budgets: list[int]) -> Iterator[list]:
    for c in (stats.get("q3") or {}).get("comparisons", []):
        if c["budget"] in budgets:
            what = (f"{c['sampler']}: aware - after, {c['target']} (after {c['after_mean']}, aware {c['aware_mean']}, "
                    f"aware selected {c['aware_selected_mean']})")
            yield ["q3", what, c["budget"], c["mean_difference"], *_ci(c["ci"]), c["p"], c["p_holm"], c["n"]]


def q2_rows(stats: dict) -> Iterator[list]:
    for target, r in (stats["q2"].get("independent_runs") or {}).items():
        d = r["difference"]
        what = f"cross-run tau trained vs {target} {r['cross_runs']} minus retest ceiling {r['ceiling']}"
        yield ["q2", what, "", d["estimate"], *_ci(d["ci"]), d["p"], "", ""]


def noise_rows(stats: dict) -> Iterator[list]:
    split = stats["scoring"]["split"]
    for metric, n in stats["noise"][split].items():
        what = (f"{metric} on {split}: median sd {n['median_sd']}, pooled sd {n['pooled_sd']}, ICC {n['icc']}, "
                f"collapsed {n['n_collapsed']} of {n['n_runs']}, retest tau {n['retest_tau']}; "
                f"two-way ANOVA (architecture + seed), p of the architecture")
        yield ["noise", what, "", "", "", "", n.get("arch_p", ""), "", n["n_runs"]]


def key_figures(label: str, stats: dict, q1_budgets: list[int], q3_budgets: list[int], noise: bool) -> list[list]:
    """The CSV rows (without header) of one replay's ``stats``, labelled ``label``."""
    rows = list(preregistered_rows(stats))
    if noise:
        rows += noise_rows(stats)
    rows += [*q1_rows(stats, q1_budgets), *q3_rows(stats, q3_budgets), *q2_rows(stats)]
    return [[label, *r] for r in rows]


def _budgets(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("replays", nargs="+", metavar="LABEL=STATS_JSON", help="a label (the replay seeds) and a stats.json")
    ap.add_argument("--out", required=True, help="the CSV to write")
    ap.add_argument("--q1-budgets", default="20", help="question 1's budgets, comma-separated (default 20)")
    ap.add_argument("--q3-budgets", default="5,20", help="question 3's budgets, comma-separated (default 5,20)")
    ap.add_argument("--noise", action="store_true", help="also the noise figures of each metric")
    args = ap.parse_args(argv)
    rows = []
    for item in args.replays:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"{item!r}: give LABEL=STATS_JSON with an existing stats.json")
        stats = json.loads(Path(path).read_text())
        rows += key_figures(label, stats, _budgets(args.q1_budgets), _budgets(args.q3_budgets), args.noise)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)
    print(f"{len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
