"""``mase-lite bench``: a tabular NAS benchmark (every architecture of a grid trained once per seed).

Subcommands, each added by one ``add_<name>`` function listed in :data:`SUBCOMMANDS`:

* ``replay`` — replay a search config's samplers against a table (no training) and write the
  statistics (held-out regret, paired tests at the level of training runs, noise, Lab 2's questions
  2 and 3) and figures.

* ``build`` — train every architecture of a config's space with several seeds into a table
  (:mod:`search.bench.build`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- replay


def add_replay(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser(
        "replay", help="replay a search config's samplers against a benchmark table",
        description="Run the samplers of a search config ([search] samplers and sampler_options) as real Optuna "
                    "studies whose trials look architectures up in a benchmark table instead of training, for "
                    "many seeds; write stats.json, summary.txt, figures and every replayed trial into --out.",
    )
    p.add_argument("--table", type=Path, required=True, help="table directory (table.csv + manifest.json)")
    p.add_argument("--config", type=Path, required=True, help="search config TOML (as for `mase-lite search`)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="replay seeds per sampler: N (0..N-1), A-B (A to B) or a,b,c (default: the table's "
                        "pre-registered replay_seeds, else 200)")
    p.add_argument("--seed-mode", default=None, dest="seed_mode",
                   help="training seeds of a replay run: run (one for every architecture, as a live study) or "
                        "arch (one per architecture) (default: the table's pre-registered seed_mode, else run)")
    p.add_argument("--budgets", default=None, help="trial budgets compared, comma-separated (default: the table's "
                   "pre-registered budgets, else 5,10,20,50; those above the number of architectures are dropped); "
                   "runs last max(budgets) trials")
    p.add_argument("--metric", help="accuracy searched on: trained, compressed or finetuned (default: from "
                                    "search.variants: baseline -> trained, compress -> compressed, "
                                    "compress_finetune -> finetuned; one replay per metric)")
    p.add_argument("--workers", default=None, metavar="N", help="processes (default: min(2, CPUs))")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", dest="overrides",
                   help="override a config value, VALUE in TOML syntax; repeatable")
    p.set_defaults(run=run_replay)


from search.bench.plan import SEEDS_FORMS, parse_seeds  # noqa: E402,F401  (the CLI's --seeds forms)


def _positive_int(name: str, raw: Any) -> int:
    from mase_lite.errors import ConfigError

    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name} = {raw!r} must be a positive integer")
    return value


def parse_budgets(raw: str) -> list[int]:
    """``"5,10,20"`` -> ``[5, 10, 20]``; ConfigError unless every entry is a positive integer."""
    from mase_lite.errors import ConfigError

    try:
        budgets = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        budgets = []
    if not budgets or any(b < 1 for b in budgets):
        raise ConfigError(f"--budgets = {raw!r}: give positive integers separated by commas, e.g. 5,10,20,50")
    return sorted(set(budgets))


def _write_runs_csv(path: Path, runs: list[dict[str, list]]) -> Path:
    from search.bench.replay import runs_rows

    with path.open("w", newline="") as fh:
        w = None
        for by_sampler in runs:
            for row in runs_rows(by_sampler):
                if w is None:
                    w = csv.DictWriter(fh, fieldnames=list(row))
                    w.writeheader()
                w.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()})
    return path


def _replay_settings(args: argparse.Namespace, plan: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Replay seeds and budgets from the options, else the table's pre-registered ones, else the defaults;
    sets ``args.seeds``, ``args.budgets`` and ``args.seed_mode`` to what is used."""
    from mase_lite.config import check_choice
    from search.bench.heldout import SEED_MODES

    args.seeds = args.seeds if args.seeds is not None else str(plan.get("replay_seeds", "200"))
    args.budgets = args.budgets if args.budgets is not None else ",".join(map(str, plan.get("budgets", [5, 10, 20, 50])))
    args.seed_mode = args.seed_mode or plan.get("seed_mode", "run")
    seeds, budgets = parse_seeds(args.seeds), parse_budgets(args.budgets)
    check_choice("--seed-mode", args.seed_mode, list(SEED_MODES))
    return seeds, budgets


def _question3_runs(table: Any, runs: dict[str, dict[str, list]], objectives: dict[str, list[str]], seeds: list[int],
                    n_trials: int, common: dict[str, Any]) -> tuple[dict[tuple[str, str], list], dict[str, dict[str, list]]]:
    """Question 3's replays: tpe and random searched on every metric, single-objective (reusing the search's
    runs where they are the same); returns them and the extra runs made."""
    from search.bench.replay import default_objectives, replay_many
    from search.bench.table import METRIC_COLUMNS

    q3_runs: dict[tuple[str, str], list] = {}
    extra: dict[str, dict[str, list]] = {}
    for m in METRIC_COLUMNS:
        todo = []
        for s in ("tpe", "random"):
            if m in runs and s in runs[m] and objectives[s] == default_objectives(s):
                q3_runs[s, m] = runs[m][s]
            else:
                todo.append(s)
        if todo:
            extra[m] = replay_many(table, todo, seeds, n_trials, m, desc=f"question 3, {m}", **common)
            q3_runs.update({(s, m): r for s, r in extra[m].items()})
    return q3_runs, extra


def run_replay(args: argparse.Namespace) -> int:
    from mase_lite.config import check_choice
    from mase_lite.errors import ConfigError
    from search.bench import plots
    from search.bench.replay import replay_many
    from search.bench.stats import analyse, format_summary, preregistered, to_jsonable, valid_budgets
    from search.bench.table import METRIC_COLUMNS, VARIANT_METRICS, BenchTable, check_compatible
    from search.config import load_run_config
    from search.samplers import parse_sampler

    from .common import check_out_dir
    from .search import parse_overrides

    table = BenchTable.load(args.table)
    plan = table.manifest.get("preregistration") or {}  # a pre-registered table's defaults
    seeds, budgets = _replay_settings(args, plan)
    workers = _positive_int("--workers", args.workers) if args.workers is not None else None
    if args.metric is not None:
        check_choice("--metric", args.metric, list(METRIC_COLUMNS))
    check_out_dir(args.out)
    cfg = load_run_config(args.config, parse_overrides(args.overrides))
    metrics = [args.metric] if args.metric else list(dict.fromkeys(VARIANT_METRICS[v] for v in cfg.search.variants))
    check_compatible(table, cfg, cfg.search.samplers, metrics)
    samplers = [parse_sampler(s)[0] for s in cfg.search.samplers]
    n_trials = max(budgets)
    if not valid_budgets(budgets, table.n_archs, n_trials):
        raise ConfigError(f"--budgets = {args.budgets!r}: every budget exceeds the {table.n_archs} buildable architectures "
                          f"of the table; use budgets up to {table.n_archs}")
    objectives = {s: cfg.search.objectives_for(s) for s in samplers}
    common = dict(options=cfg.search.sampler_options, space_config=cfg.space, workers=workers, progress=True,
                  seed_mode=args.seed_mode)
    log.info("replaying %s on %s for %d seeds (one training seed per %s), %d trials each", ", ".join(samplers),
             ", ".join(metrics), len(seeds), args.seed_mode, n_trials)
    runs = {m: replay_many(table, samplers, seeds, n_trials, m, objectives=objectives, desc=f"replay {m}", **common)
            for m in metrics}
    q3_runs, extra = _question3_runs(table, runs, objectives, seeds, n_trials, common)
    stats = analyse(table, runs, budgets, q3_runs)
    stats["config"] = str(args.config)
    stats["command"] = _command_line()
    clean = to_jsonable(stats)
    clean["preregistered"] = to_jsonable(preregistered(clean, plan))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "stats": out / "stats.json", "summary": out / "summary.txt", "best_so_far_png": out / "best_so_far.png",
        "best_so_far_csv": out / "best_so_far.csv", "q2_scatter_png": out / "q2_scatter.png",
        "q3_png": out / "q3_compress_after_vs_aware.png", "replay_runs_csv": out / "replay_runs.csv",
    }
    files["stats"].write_text(json.dumps(clean, indent=1) + "\n")
    summary = format_summary(clean)
    files["summary"].write_text(summary)
    plots.plot_best_so_far(clean, files["best_so_far_png"])
    plots.write_curves_csv(clean, files["best_so_far_csv"])
    plots.plot_q2_scatter(table, files["q2_scatter_png"])
    plots.plot_q3(clean, files["q3_png"])
    _write_runs_csv(files["replay_runs_csv"], [*runs.values(), *extra.values()])
    log.info("summary written to %s", files["summary"])
    print(summary)
    print(f"output folder: {out}")
    for key, path in files.items():
        print(f"  {key:<18} {path}")
    return 0


def _command_line() -> str:
    import shlex
    import sys

    return "mase-lite " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""


# --------------------------------------------------------------------------- the command

#: ``add_<name>(bsub)`` for every ``bench`` subcommand; ``add_build`` goes here.
# --------------------------------------------------------------------------- build


def add_build(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser(
        "build", help="train every architecture of a config's space with several seeds into a table",
        description="Train every buildable architecture of the config's [space] once per seed (one epoch, "
                    "Lab 2's compression, one fine-tune epoch; [data], [train], [finetune], [compression] as for "
                    "`mase-lite search`) and write DIR/table.csv and DIR/manifest.json. The work is an Optuna "
                    "study in --storage (default DIR/optuna.db): rerun the same command to continue a killed "
                    "build, or start it in several processes to share the rows.",
    )
    p.add_argument("--config", type=Path, required=True, help="search config TOML ([space], [data], [train], ...)")
    p.add_argument("--out", type=Path, required=True, help="table directory")
    p.add_argument("--seeds", default=None, help="training seeds, comma-separated (default: the config's "
                   "pre-registered [bench] seeds, else 0,1,2)")
    p.add_argument("--storage", help="Optuna RDB URL shared by the workers (default sqlite:///DIR/optuna.db)")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", dest="overrides",
                   help="override a config value, VALUE in TOML syntax; repeatable")
    p.set_defaults(run=run_build)


def _training_seeds(raw: str) -> list[int]:
    from mase_lite.errors import ConfigError

    try:
        seeds = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds = {raw!r}: give distinct integers separated by commas, e.g. 0,1,2")
    return seeds


def run_build(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from mase_lite.errors import ConfigError
    from search.bench.build import build_table
    from search.config import load_run_config

    from .common import storage_url
    from .search import _log_file, parse_overrides

    seeds = _training_seeds(args.seeds) if args.seeds is not None else None
    cfg = load_run_config(args.config, parse_overrides(args.overrides))
    planned = list(cfg.bench.seeds) if cfg.bench is not None else None
    if seeds is not None and planned is not None and seeds != planned:
        raise ConfigError(f"--seeds = {args.seeds!r} differs from the pre-registered bench.seeds = {planned} of "
                          f"{args.config}; drop --seeds (or change [bench] before the build starts)")
    seeds = seeds or planned or [0, 1, 2]
    url = storage_url(args.out, args.storage, new=True)
    command = "mase-lite " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    with _log_file(args.out / "build.log"):
        result = build_table(cfg, args.out, seeds, storage_url=url, command=command)
    if result.table is None:
        print(f"{result.rows_done} of {result.rows_total} rows done (other workers may still be running); "
              f"rerun the same command to continue")
        return 1
    print(f"table of {result.rows_total} rows: {result.table}")
    print(f"manifest: {result.out / 'manifest.json'}")
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_replay, add_build]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="a tabular NAS benchmark: replay searches against a table of trained architectures",
                       description="A tabular NAS benchmark: every architecture of a model-level space trained with "
                                   "several seeds, once; searches are then replayed against the table.")
    bsub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(bsub)

    def no_subcommand(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(run=no_subcommand)
