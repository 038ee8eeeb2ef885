"""``mase-lite plot``: figures and CSVs of search studies, read back from their storage."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="plot best-so-far accuracy (and Pareto fronts) of search studies",
        description="Read studies from a run folder or an Optuna storage URL and draw best validation accuracy "
                    "so far vs trial, one curve per sampler or variant (mean and min-max band over seeds), "
                    "plus accuracy vs compressed size for multi-objective studies. Writes PNG and CSV files.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, dest="run_dir", metavar="DIR", help="run folder of `mase-lite search` (reads its optuna.db)")
    src.add_argument("--storage", help="Optuna RDB URL, or journal:PATH, holding the studies")
    p.add_argument("--name", help="only the studies of this run (search.name)")
    p.add_argument("--studies", nargs="+", metavar="STUDY", help="only these studies, on one figure")
    p.add_argument("--out", type=Path, help="output folder (default: the run folder, or the current folder)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.plots import run_study_names, write_figures
    from search.config import SearchError
    from search.storage import open_storage

    from .common import storage_url

    storage = open_storage(storage_url(args.run_dir, args.storage), heartbeat_interval=None)
    out = args.out or args.run_dir or Path(".")
    if args.studies:
        known = set(run_study_names(storage))
        missing = [s for s in args.studies if s not in known]
        if missing:
            raise SearchError(f"no study {missing[0]!r} in the storage; it has: {', '.join(sorted(known)) or '(none)'}")
        groups = {"": list(args.studies)}
    else:
        names = run_study_names(storage, args.name)
        if not names:
            what = f"of run {args.name!r} " if args.name else ""
            raise SearchError(f"no studies {what}in the storage")
        runs: dict[str, list[str]] = {}
        from optuna.study import get_all_study_summaries

        run_of = {s.study_name: str(s.user_attrs.get("run") or s.study_name) for s in get_all_study_summaries(storage)}
        for n in names:
            runs.setdefault(run_of[n], []).append(n)
        groups = {("" if len(runs) == 1 else f"{r}_"): ns for r, ns in runs.items()}
    for prefix, names in groups.items():
        for key, path in write_figures(storage, names, out, prefix).items():
            print(f"{key:<22} {path}")
    return 0
