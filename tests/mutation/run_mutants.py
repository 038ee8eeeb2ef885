#!/usr/bin/env python
"""A small mutation-testing driver over a curated list of single-point mutants (``mutants.toml``).

Each mutant names a source file, an exact snippet of it (which must occur exactly once), its
replacement, and the test files (or node ids) relevant to it. For every mutant the driver writes the
mutated file, runs those tests (one process, ``-x``: the first failure is enough) and restores the
file; a mutant is *caught* when the tests fail (or time out), *survived* when they pass. Mutants
marked ``equivalent = true`` (with a ``reason``) are judged not to change any specified behaviour;
they are run only with ``--run-equivalent`` and are left out of the score. A mutant whose snippet no
longer occurs exactly once (the code moved on) is reported as *stale* and not run: update its entry.
The score is::

    caught / (mutants - equivalent)

Where the mutants are applied:

* default: a private copy of the repository (``passes``, ``search``, ``mase_lite``, ``tests`` and the
  packaging files) in a temporary directory, removed at the end; the working tree is never written.
* ``--in-place ROOT``: in the tree at ``ROOT`` itself (e.g. a git worktree made for the purpose). The
  original text is kept in memory and in ``<file>.mutation-backup`` while a mutant is applied, and
  restored in a ``finally`` block (Ctrl-C and SIGTERM included); a backup left by a killed run is
  restored when the driver starts.

Imports resolve to the mutated tree (``PYTHONPATH=<tree>``, run from there), so an editable install
pointing elsewhere does not matter. Bytecode is not written, and the mutated module's cached
bytecode is removed, so a mutant is never masked by a stale ``.pyc``.

Usage (from the repository root, with the project's virtual environment)::

    .venv/bin/python tests/mutation/run_mutants.py                  # all mutants, score table
    .venv/bin/python tests/mutation/run_mutants.py --only prune-global-override shrink-tie
    .venv/bin/python tests/mutation/run_mutants.py --module passes/transforms/shrink.py
    .venv/bin/python tests/mutation/run_mutants.py --check          # snippets apply? (no tests run)
    .venv/bin/python tests/mutation/run_mutants.py --baseline       # the tests pass unmutated?
    .venv/bin/python tests/mutation/run_mutants.py --out results.json --csv results.csv
    .venv/bin/python tests/mutation/run_mutants.py --keep-caught results.json --out results2.json  # survivors only

The file name does not match pytest's ``test_*.py`` pattern, so pytest never collects this driver.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BACKUP_SUFFIX = ".mutation-backup"
#: what a private copy of the repository holds
COPY_ITEMS = ("passes", "search", "mase_lite", "tests", "setup.cfg", "pyproject.toml", "README.md", "examples")
#: statuses counted as caught
CAUGHT = ("caught", "timeout")


class MutantError(Exception):
    """A mutant that cannot be applied (snippet missing or ambiguous)."""


# ----------------------------------------------------------------------------------------- the list


def load_mutants(path: Path) -> list[dict]:
    data = tomllib.loads(path.read_text())
    mutants = data.get("mutant", [])
    seen = set()
    for i, m in enumerate(mutants):
        for key in ("id", "file", "original", "replacement", "tests"):
            if key not in m:
                raise MutantError(f"mutant #{i} ({m.get('id', '?')}): missing key {key!r}")
        if m["id"] in seen:
            raise MutantError(f"mutant id {m['id']!r} is repeated")
        seen.add(m["id"])
        if m["original"] == m["replacement"]:
            raise MutantError(f"mutant {m['id']}: replacement equals the original")
        if m.get("equivalent") and not m.get("reason"):
            raise MutantError(f"mutant {m['id']}: equivalent = true needs a reason")
        if isinstance(m["tests"], str):
            m["tests"] = [m["tests"]]
    return mutants


def mutated_text(text: str, m: dict) -> str:
    n = text.count(m["original"])
    if n != 1:
        raise MutantError(f"mutant {m['id']}: the original snippet occurs {n} times in {m['file']} (need exactly 1)")
    return text.replace(m["original"], m["replacement"], 1)


# ----------------------------------------------------------------------------------------- applying


class Applied:
    """Context manager: ``m`` applied to the tree at ``root``; the original is restored on exit."""

    def __init__(self, root: Path, m: dict):
        self.path = root / m["file"]
        self.backup = self.path.with_name(self.path.name + BACKUP_SUFFIX)
        self.m = m
        self.original: str | None = None

    def __enter__(self) -> "Applied":
        self.original = self.path.read_text()
        new = mutated_text(self.original, self.m)
        self.backup.write_text(self.original)
        _drop_bytecode(self.path)
        self.path.write_text(new)
        return self

    def __exit__(self, *exc) -> None:
        if self.original is not None:
            self.path.write_text(self.original)
            _drop_bytecode(self.path)
            self.backup.unlink(missing_ok=True)


def _drop_bytecode(path: Path) -> None:
    cache = path.parent / "__pycache__"
    if cache.is_dir():
        for pyc in cache.glob(f"{path.stem}.*.pyc"):
            pyc.unlink(missing_ok=True)


def restore_leftovers(root: Path) -> list[Path]:
    """Restore files from backups a killed run left behind; returns the restored files."""
    restored = []
    for backup in root.rglob(f"*{BACKUP_SUFFIX}"):
        if ".venv" in backup.parts or ".git" in backup.parts:
            continue
        target = backup.with_name(backup.name[: -len(BACKUP_SUFFIX)])
        target.write_text(backup.read_text())
        backup.unlink()
        restored.append(target)
    return restored


def _sigterm(signum, frame):  # SIGTERM -> the same clean-up path as Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


def make_copy(dest: Path) -> Path:
    for item in COPY_ITEMS:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache",
                                                                              "*" + BACKUP_SUFFIX))
        elif src.is_file():
            shutil.copy2(src, dest / item)
    return dest


# ----------------------------------------------------------------------------------------- running


def pytest_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # the native operator stays built in the real repository's cache (not rebuilt in every copy)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".pytest_cache" / "torch_extensions"))
    data = env.get("MASE_LITE_DATA")
    if data and not Path(data).is_absolute():  # relative to the real repository, as conftest reads it
        env["MASE_LITE_DATA"] = str((REPO / data).resolve())
    elif not data:
        env["MASE_LITE_DATA"] = str((REPO.parent / "shared" / "data").resolve())
    return env


def existing_tests(root: Path, tests: list[str]) -> list[str]:
    """The test paths (or node ids) of ``tests`` whose file exists in the tree at ``root``."""
    return [t for t in tests if (root / t.split("::", 1)[0]).exists()]


def run_tests(root: Path, tests: list[str], timeout: float, python: str) -> tuple[str, float, str]:
    """(``passed`` / ``failed`` / ``timeout`` / ``error``, seconds, the last lines of output). Test
    files that do not exist (yet) are left out; with none left the mutant is not tested (``error``)."""
    tests = existing_tests(root, tests)
    if not tests:
        return "error", 0.0, "none of the mutant's test files exists"
    cmd = [python, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-x", "-q", "--no-header",
           "-o", "addopts=", *tests]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, env=pytest_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        status = "passed" if proc.returncode == 0 else "failed"
        if proc.returncode in (4, 5):  # usage error / nothing collected: the mutant was not tested
            status = "error"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status = "timeout"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    tail = "\n".join((out or "").strip().splitlines()[-6:])
    return status, time.monotonic() - t0, tail


def classify(m: dict, status: str) -> str:
    if status == "error":
        return "error"
    if status == "timeout":
        return "timeout"
    return "caught" if status == "failed" else "survived"


def score(results: list[dict]) -> dict:
    counted = [r for r in results if not r["equivalent"] and r["status"] not in ("error", "stale")]
    caught = sum(r["status"] in CAUGHT for r in counted)
    return {"mutants": len(results), "equivalent": sum(r["equivalent"] for r in results),
            "errors": sum(r["status"] == "error" for r in results), "stale": sum(r["status"] == "stale" for r in results),
            "non_equivalent": len(counted),
            "caught": caught, "survived": len(counted) - caught,
            "score": caught / len(counted) if counted else None}


def print_table(results: list[dict], summary: dict) -> None:
    w = max([len(r["id"]) for r in results] + [10])
    print(f"\n{'mutant':<{w}}  {'module':<36} {'status':<9} {'secs':>6}  note")
    for r in results:
        status = r["status"] + ("*" if r["equivalent"] else "")
        print(f"{r['id']:<{w}}  {r['file'][-36:]:<36} {status:<9} {r['seconds']:>6.1f}  {r['note'][:70]}")
    print("(* judged equivalent: not scored)")
    s = summary
    pct = "n/a" if s["score"] is None else f"{100 * s['score']:.1f} %"
    print(f"\n{s['caught']} of {s['non_equivalent']} non-equivalent mutants caught ({pct}); {s['survived']} survived; "
          f"{s['equivalent']} judged equivalent; {s['errors']} could not be tested; {s['stale']} stale (snippet not "
          "found: update mutants.toml)")
    surv = [r["id"] for r in results if r["status"] == "survived" and not r["equivalent"]]
    if surv:
        print("survivors: " + ", ".join(surv))
    bad_eq = [r["id"] for r in results if r["equivalent"] and r["status"] in CAUGHT]
    if bad_eq:
        print("WARNING: mutants marked equivalent were caught (the judgement is wrong): " + ", ".join(bad_eq))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=Path, default=HERE / "mutants.toml", help="the mutant list (TOML)")
    ap.add_argument("--in-place", type=Path, metavar="ROOT", help="mutate the tree at ROOT itself (restored after "
                    "each mutant) instead of a private copy")
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutant ids")
    ap.add_argument("--module", nargs="+", metavar="FILE", help="run only the mutants of these source files")
    ap.add_argument("--run-equivalent", action="store_true", help="also run the mutants judged equivalent "
                    "(to check that they do survive)")
    ap.add_argument("--check", action="store_true", help="only check that every snippet applies; run no tests")
    ap.add_argument("--baseline", action="store_true", help="first run the union of the selected mutants' tests "
                    "on the unmutated tree (they must pass)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's test run (default 600)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--csv", type=Path, help="write the results as CSV here")
    ap.add_argument("--keep-caught", type=Path, metavar="RESULTS.json", help="take the mutants caught in this "
                    "earlier results file (of the same mutant list) as caught without running them again; run the "
                    "rest. Adding tests cannot let a caught mutant survive, so this only saves time")
    args = ap.parse_args(argv)

    mutants = load_mutants(args.mutants)
    if args.only:
        unknown = set(args.only) - {m["id"] for m in mutants}
        if unknown:
            ap.error(f"unknown mutant ids: {sorted(unknown)}")
        mutants = [m for m in mutants if m["id"] in args.only]
    if args.module:
        mutants = [m for m in mutants if m["file"] in args.module]
    if not args.run_equivalent and not args.check:
        skipped = [m for m in mutants if m.get("equivalent")]
    else:
        skipped = []

    kept: dict[str, dict] = {}
    if args.keep_caught:
        earlier = json.loads(args.keep_caught.read_text())["results"]
        kept = {r["id"]: r for r in earlier if r["status"] in CAUGHT}

    signal.signal(signal.SIGTERM, _sigterm)
    tmp = None
    if args.in_place:
        root = args.in_place.resolve()
        for f in restore_leftovers(root):
            print(f"restored {f} from a backup a previous run left behind", file=sys.stderr)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="mase-lite-mutants-"))
        root = make_copy(tmp)
    results: list[dict] = []
    try:
        # a mutant whose snippet no longer occurs exactly once (the code moved on) is "stale": reported, not run
        stale = {}
        for m in mutants:
            try:
                mutated_text((root / m["file"]).read_text(), m)
            except (MutantError, OSError) as exc:
                stale[m["id"]] = str(exc)
        for mid, why in stale.items():
            print(f"STALE {why}", file=sys.stderr)
        if args.check:
            print(f"{len(mutants) - len(stale)} of {len(mutants)} mutants apply" + (f"; stale: {', '.join(stale)}"
                                                                                   if stale else ""))
            return 1 if stale else 0
        if args.baseline:
            tests = sorted({t for m in mutants for t in m["tests"]})
            status, secs, tail = run_tests(root, tests, args.timeout * 4, args.python)
            print(f"baseline ({len(tests)} test paths): {status} in {secs:.0f} s\n{tail}", flush=True)
            if status != "passed":
                return 2
        for i, m in enumerate(mutants, 1):
            row = {"id": m["id"], "file": m["file"], "tests": m["tests"], "note": m.get("note", ""),
                   "equivalent": bool(m.get("equivalent")), "reason": m.get("reason", ""), "seconds": 0.0}
            if m["id"] in stale:
                row["status"] = "stale"
                results.append(row)
                continue
            if m in skipped:
                row["status"] = "skipped"
                results.append(row)
                continue
            if m["id"] in kept:
                row.update(status=kept[m["id"]]["status"], seconds=kept[m["id"]].get("seconds", 0.0),
                           output=kept[m["id"]].get("output", ""), from_earlier_run=str(args.keep_caught))
                results.append(row)
                print(f"[{i}/{len(mutants)}] {m['id']}: {row['status']} (earlier run)", flush=True)
                continue
            with Applied(root, m):
                status, secs, tail = run_tests(root, m["tests"], args.timeout, args.python)
            row.update(status=classify(m, status), seconds=secs, output=tail,
                       tests_run=existing_tests(root, m["tests"]))
            results.append(row)
            print(f"[{i}/{len(mutants)}] {m['id']}: {row['status']}{' (equivalent)' if row['equivalent'] else ''} "
                  f"in {secs:.0f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted: the tree is restored; partial results follow", file=sys.stderr)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for r in results:  # skipped equivalent mutants keep their judgement
        if r["status"] == "skipped":
            r["status"] = "equivalent-not-run"
    summary = score([r for r in results])
    print_table(results, summary)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    if args.csv:
        with args.csv.open("w", newline="") as fh:
            w = csv.DictWriter(fh, ["id", "file", "status", "equivalent", "seconds", "tests", "note", "reason"],
                               extrasaction="ignore")
            w.writeheader()
            for r in results:
                w.writerow({**r, "tests": " ".join(r["tests"])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
