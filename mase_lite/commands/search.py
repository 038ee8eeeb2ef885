"""``mase-lite search``: run the studies of a search config (NAS, optionally compression-aware)."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Iterator


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="run a neural architecture search (Optuna studies) from a TOML config",
        description="Run every study of a search config (one per sampler x variant x seed) into Optuna "
                    "RDB storage, then write the summary, the trial table and the best-so-far figure "
                    "into the run folder. A killed run continues with --resume.",
    )
    p.add_argument("--config", type=Path, required=True, help="search config TOML ([search], [space], ...)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<search.name>)")
    p.add_argument("--storage", help="Optuna RDB URL, e.g. postgresql+psycopg://user:pw@host/db (needs "
                                     "mase-lite[postgres]), or journal:PATH for a journal file shared by "
                                     "several processes (default: search.storage, else "
                                     "sqlite:///<run folder>/optuna.db)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run's existing studies (also: join them as another worker)")
    p.add_argument("--n-trials", type=int, help="trials per study (overrides search.n_trials)")
    p.add_argument("--device", help="train.device: auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", dest="overrides",
                   help="override a config value, VALUE in TOML syntax (e.g. --set data.n_train=500 "
                        "--set 'search.seeds=[0]'); repeatable")
    p.set_defaults(run=run)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["data.n_train=500", "search.samplers=['tpe']"]`` -> ``{"data": {"n_train": 500}, ...}``."""
    import tomllib

    from mase_lite.errors import ConfigError

    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected TABLE.KEY=VALUE, e.g. data.n_train=500")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: a string
        node = out.setdefault(parts[0], {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


class _LazyFileHandler(logging.FileHandler):
    """A file handler that creates its file (and folder) on the first record."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


@contextlib.contextmanager
def _log_file(path: Path) -> Iterator[None]:
    """Also log INFO and above to ``path`` (created on the first record) without changing the console."""
    root = logging.getLogger()
    old_level = root.level
    touched = [h for h in root.handlers if h.level == logging.NOTSET]
    for h in touched:
        h.setLevel(old_level)
    handler = _LazyFileHandler(path, delay=True)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.INFO) if old_level != logging.NOTSET else logging.NOTSET)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
        for h in touched:
            h.setLevel(logging.NOTSET)


def run(args: argparse.Namespace) -> int:
    from mase_lite.errors import ConfigError
    from search.config import load_run_config
    from search.study import run_search
    from search.summary import format_summary

    from .common import storage_url

    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError(f"--n-trials = {args.n_trials} must be at least 1")
    overrides = parse_overrides(args.overrides)
    if args.device is not None:
        overrides.setdefault("train", {})["device"] = args.device
    cfg = load_run_config(args.config, overrides)
    run_dir = args.out or Path("runs") / cfg.search.name
    url = storage_url(run_dir, args.storage, new=True)
    with _log_file(run_dir / "search.log"):
        result = run_search(cfg, run_dir, storage_url=url, resume=args.resume, n_trials=args.n_trials)
    print(format_summary(result.summary))
    print()
    for name, why in result.aborted.items():
        print(f"stopped early: {name}: {why}")
    for study in result.summary:
        for best in study["best"]:
            if best.get("graph_dir"):
                print(f"best graph of {study['study']} (trial {best['trial']}): {best['graph_dir']}")
    print(f"run folder: {result.run_dir}")
    for key, path in result.files.items():
        print(f"  {key:<22} {path}")
    if (result.run_dir / "search.log").exists():
        print(f"  {'log':<22} {result.run_dir / 'search.log'}")
    return 1 if result.aborted else 0
