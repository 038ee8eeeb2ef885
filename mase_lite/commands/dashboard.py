"""``mase-lite dashboard``: optuna-dashboard (the ``[dashboard]`` extra) on the storage of a search run."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard", help="serve a live optuna-dashboard of a search run's studies",
        description="Start optuna-dashboard (pip install mase-lite[dashboard]) for the studies of a run folder "
                    "(its optuna.db) or of a storage URL (an RDB URL or journal:PATH), on localhost by default. "
                    "It runs until interrupted (Ctrl-C).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, dest="run_dir", metavar="DIR", help="run folder of `mase-lite search`")
    src.add_argument("--storage", help="Optuna storage URL, or journal:PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--artifacts", type=Path, help="artifact folder to show (default: the run folder's artifacts/)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mase_lite.errors import ConfigError
    from search.config import SearchError
    from search.storage import open_artifacts, open_storage, redact

    from .common import storage_url

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port = {args.port}: use 1-65535")
    try:
        import optuna_dashboard
    except ImportError:
        raise SearchError("optuna-dashboard is not installed; install mase-lite[dashboard]") from None
    url = storage_url(args.run_dir, args.storage)
    storage = open_storage(url, heartbeat_interval=None)
    folder = args.artifacts or (args.run_dir / "artifacts" if args.run_dir is not None else None)
    store = open_artifacts(folder) if folder is not None and folder.is_dir() else None
    print(f"optuna-dashboard {optuna_dashboard.__version__} for {redact(url)} at http://{args.host}:{args.port}/ "
          f"(Ctrl-C stops it)", flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=store)
    return 0
