"""How fast samplers replay against a benchmark table (target: 100 seeds x {grid, random, tpe} x 30 trials <= 60 s).

Builds a synthetic table shaped like a real one (48 buildable architectures of 54 combinations,
3 training seeds; ``search.bench.synthetic.DEFAULT_SPACE``), then times
:func:`search.bench.replay.replay_many` for grid, random and tpe together and for nsga2 alone,
with 1 worker and with the default workers.

    python benchmarks/replay_speed.py
    python benchmarks/replay_speed.py --seeds 20 --trials 30     # quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time

from search.bench.replay import default_workers, replay_many
from search.bench.synthetic import write_synthetic_table
from search.bench.table import BenchTable

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--workers", type=int, nargs="*", default=None, help="worker counts to time (default: 1 and the default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        write_synthetic_table(d)
        table = BenchTable.load(d)
        print(f"table: {table.n_archs} architectures x {len(table.seeds)} seeds, {len(table.unbuildable)} unbuildable "
              f"combinations; {args.seeds} seeds x {args.trials} trials")
        workers = args.workers or sorted({1, default_workers()})
        for group in (["grid", "random", "tpe"], ["nsga2"]):
            for w in workers:
                t0 = time.perf_counter()
                runs = replay_many(table, group, list(range(args.seeds)), args.trials, "trained", workers=w)
                dt = time.perf_counter() - t0
                n_runs = sum(len(r) for r in runs.values())
                line = (f"{'+'.join(group):<16} workers {w}: {dt:6.2f} s, {dt / n_runs * 1000:6.1f} ms per run "
                        f"({n_runs} runs)")
                if group[0] == "grid":
                    scale = 100 / args.seeds * 30 / args.trials
                    line += f"; {dt * scale / TARGET_S:.2f} x the {TARGET_S:.0f} s target (scaled to 100 seeds x 30 trials)"
                print(line)


if __name__ == "__main__":
    main()
