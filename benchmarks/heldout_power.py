"""Power of the held-out Lab 2 table (144 rows) from the variance components of the 5k table.

    python benchmarks/heldout_power.py [--table benchmarks/tables/lab2-cpu-5k] [--out docs/results/lab2_heldout_5k]

Fits the additive model (architecture + shared seed effect + run noise, per metric; search.bench.power)
to the pilot table, then simulates candidate designs -- the pilot's own (3 seeds, scored on 1,000
validation rows of held-out seeds) and 6 seeds per architecture with 5,000, 10,000 or 25,000 test rows
-- and, for each pre-registrable test, the power of the held-out jackknife test at the pilot's
plug-in effect and the minimum detectable effect at 80 % power. Writes power.json and power.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from search.bench.power import simulate_power, variance_components
from search.bench.stats import to_jsonable
from search.bench.table import BenchTable

#: (training seeds per architecture, test rows): the pilot's own design (3 seeds, validation rows of held-out
#: seeds; None: no noise added to the pilot's), and 144-row designs with 5,000, 10,000 or all 25,000 test rows.
DESIGNS = [(3, None), (6, 5000), (6, 10000), (6, 25000)]
TESTS = [("q3", "compressed", "random", "random", 5), ("q3", "compressed", "random", "random", 10), ("q3", "compressed", "random", "random", 20),
         ("q3", "finetuned", "random", "random", 5), ("q3", "finetuned", "random", "random", 10), ("q3", "finetuned", "random", "random", 20),
         ("q1", "trained", "grid", "random", 20), ("q1", "compressed", "grid", "random", 20),
         ("q1", "finetuned", "grid", "random", 20)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, default=Path("benchmarks/tables/lab2-cpu-5k"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/lab2_heldout_5k"))
    ap.add_argument("--tables", type=int, default=200, help="simulated tables per design")
    args = ap.parse_args()
    t0 = time.perf_counter()
    comp = variance_components(BenchTable.load(args.table))
    rows = []
    for n_seeds, n_test in DESIGNS:
        rows += simulate_power(comp, TESTS, n_seeds, n_test, n_tables=args.tables, seed=n_seeds * 100000 + (n_test or 0))
    out = {"pilot": str(args.table), "components": comp.to_dict(), "designs": DESIGNS, "results": rows,
           "n_tables": args.tables, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "power.json").write_text(json.dumps(to_jsonable(out, 4), indent=1) + "\n")
    lines = ["| test | seeds | test rows | plug-in effect | power | power (one-sided) | sd of estimate | mean SE | "
             "MDE (80 %) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['test']} | {r['n_seeds']} | {r['n_test']} | {r['plugin_effect']:+.4f} | {r['power']:.2f} | {r['power_one_sided']:.2f} | "
                     f"{r['sd_estimate']:.4f} | {r['mean_se']:.4f} | {r['mde80']:.4f} |")
    (args.out / "power.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"components: {json.dumps(to_jsonable(comp.to_dict(), 3))}\n{out['seconds']} s")


if __name__ == "__main__":
    main()
