#!/usr/bin/env python
"""A small mutation-testing driver over a curated list of single-point mutants (``mutants.toml``).

Each mutant names a source file, an exact snippet of it (which must occur exactly once), its
replacement, and the test files (or node ids) relevant to it. For every mutant the driver writes the
mutated file, runs those tests (one process, ``-x``: the first failure is enough) and restores the
file; a mutant is *caught* when the tests fail (or time out), *survived* when they pass. Mutants
marked ``equivalent = true`` (with a ``reason``) are judged not to change any specified behaviour;
they are run only with ``--run-equivalent`` and are left out of the score. A mutant whose snippet no
longer occurs exactly once (the code moved on) is reported as *stale* and not run: update its entry.
A mutant naming a test path that does not exist is reported (``MISSING TESTS ...`` on stderr,
status ``error``) and not run: it is never tested with fewer tests than it names. The score is::

    caught / (mutants - equivalent)

(stale and untested mutants are left out of it too, and counted on the summary line).

Running the audit (from the repository root, one test process at a time; on 2 cores about 25
minutes, plus 6 for ``--baseline``)::

    export MASE_LITE_DATA=../shared/data      # the data mirror, as for the test suite
    mkdir -p /tmp/mut
    .venv/bin/python tests/mutation/run_mutants.py --check       # every snippet applies, test paths exist
    nice -n 10 .venv/bin/python tests/mutation/run_mutants.py --baseline \\
        --out /tmp/mut/main.json --csv /tmp/mut/main.csv 2>&1 | tee /tmp/mut/main.log

It prints one line per mutant as it goes (``[i/N] id: caught|survived|timeout|error in S s``), then a
table (mutant, module, status -- ``*``: judged equivalent, not scored --, seconds, note) and the
score line::

    96 of 96 non-equivalent mutants caught (100.0 %); 0 survived; 12 judged equivalent; 0 could not be
    tested; 0 stale (snippet not found: update mutants.toml)

followed by the survivors, the mutants that could not be tested (and why), and a warning if a mutant
judged equivalent was caught. ``--out`` / ``--csv`` keep every result (with the tail of the test
output). Exit status: 0 when every non-equivalent mutant was caught and none is stale or untested;
1 otherwise (or when interrupted); 2 when ``--baseline`` fails on the unmutated tree.

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
    .venv/bin/python tests/mutation/run_mutants.py --only prune-global-override shrink-tie-high-first
    .venv/bin/python tests/mutation/run_mutants.py --module passes/transforms/shrink.py
    .venv/bin/python tests/mutation/run_mutants.py --check          # snippets apply? (no tests run)
    .venv/bin/python tests/mutation/run_mutants.py --baseline       # the tests pass unmutated?
    .venv/bin/python tests/mutation/run_mutants.py --out results.json --csv results.csv
    .venv/bin/python tests/mutation/run_mutants.py --keep-caught results.json --out results2.json  # survivors only

The file name does not match pytest's ``test_*.py`` pattern (``setup.cfg``: ``testpaths = tests``, default
``python_files``), so the test suite never collects this driver or anything else in ``tests/mutation``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
COPY_ITEMS = ("passes", "search", "mase_lite", "tests", "setup.cfg", "pyproject.toml", "README.md", "examples",
              "benchmarks", "docs")  # benchmark scripts and the committed results some tests read
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
        if not m["tests"] or not all(isinstance(t, str) and t.strip() for t in m["tests"]):
            raise MutantError(f"mutant {m['id']}: tests must name at least one test path, got {m['tests']!r}")
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


def missing_tests(root: Path, tests: list[str]) -> list[str]:
    """The test paths (or node ids) of ``tests`` whose file does not exist in the tree at ``root``."""
    return [t for t in tests if not (root / t.split("::", 1)[0]).exists()]


def missing_message(root: Path, missing: list[str]) -> str:
    """One line saying which test paths were not found (and why, for a path outside the private copy)."""
    msg = f"test path(s) not found: {', '.join(missing)}"
    outside = [t for t in missing if (REPO / t.split("::", 1)[0]).exists()]
    if outside and root != REPO:
        msg += (f" ({', '.join(outside)} exist in the repository but not in the tree the mutants run in, {root}: "
                f"add their folder to COPY_ITEMS)")
    return msg + "; fix the mutant's tests = [...] in mutants.toml"


#: pytest's final summary line (``-q``): ``1 failed, 288 passed in 371.42s (0:06:11)``, ``no tests ran in 0.01s``
_SUMMARY = re.compile(r"^=*\s*(?P<body>(?:\d+ \w+|no tests ran)(?:, \d+ \w+)*) in [\d.]+s\b", re.M)
#: seconds a test process may take to exit after printing its summary (a process that outlives its
#: tests -- a leftover child holding the output pipe, a thread blocking interpreter exit -- is killed)
EXIT_GRACE = 30.0


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the session the test run was started in (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def run_tests(root: Path, tests: list[str], timeout: float, python: str) -> tuple[str, float, str]:
    """(``passed`` / ``failed`` / ``timeout`` / ``error``, seconds, the last lines of output). A test
    path that does not exist is an ``error`` (nothing is run): leaving it out silently would test the
    mutant with fewer tests than its entry names. A run that printed pytest's summary but does not
    exit (within :data:`EXIT_GRACE` seconds) is judged by that summary, not left to time out."""
    if not tests:  # (pytest without paths would run the whole suite)
        return "error", 0.0, "no test paths given"
    missing = missing_tests(root, tests)
    if missing:
        return "error", 0.0, missing_message(root, missing)
    cmd = [python, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-x", "-q", "--no-header",
           "-o", "addopts=", *tests]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, env=pytest_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    status, hung, summary_at = None, False, None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - t0 > timeout:
                status = "timeout"
                break
            if summary_at is None and _SUMMARY.search("".join(lines[-3:])):
                summary_at = now
            if summary_at is not None and now - summary_at > EXIT_GRACE:
                hung = True
                break
            time.sleep(0.2)
    except BaseException:
        _kill_group(proc)
        reader.join(5)
        raise
    _kill_group(proc)  # whatever the run left behind (nothing, normally)
    proc.wait()
    reader.join(10)
    out = "".join(lines)
    if status is None:
        found = _SUMMARY.findall(out)
        if hung:
            status = "failed" if found and re.search(r"\b(failed|errors?)\b", found[-1]) else "passed"
            out += f"\n(pytest printed its summary but its process did not exit within {EXIT_GRACE:.0f} s: killed)"
        else:
            status = "passed" if proc.returncode == 0 else "failed"
            if proc.returncode in (4, 5):  # usage error / nothing collected: the mutant was not tested
                status = "error"
    tail = "\n".join(out.strip().splitlines()[-6:])
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
    for r in results:
        if r["status"] == "error":
            last = (r.get("output") or "").strip().splitlines()
            print(f"could not be tested: {r['id']}: {last[-1] if last else '?'}")
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
    interrupted = False
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
        # a mutant naming a test path that does not exist is an error: reported, not run
        missing = {m["id"]: missing_message(root, miss) for m in mutants if (miss := missing_tests(root, m["tests"]))}
        for mid, why in missing.items():
            print(f"MISSING TESTS mutant {mid}: {why}", file=sys.stderr)
        if args.check:
            print(f"{len(mutants) - len(stale)} of {len(mutants)} mutants apply" + (f"; stale: {', '.join(stale)}"
                                                                                   if stale else "")
                  + (f"; test paths missing: {', '.join(missing)}" if missing else ""))
            return 1 if stale or missing else 0
        if args.baseline:
            tests = sorted({t for m in mutants if m["id"] not in missing for t in m["tests"]})
            if not tests:
                print("baseline: skipped (no selected mutant has test paths that exist)", flush=True)
            else:
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
            if m["id"] in missing:
                row.update(status="error", output=missing[m["id"]])
                results.append(row)
                print(f"[{i}/{len(mutants)}] {m['id']}: error (test paths missing)", flush=True)
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
                       tests_run=list(m["tests"]))
            results.append(row)
            print(f"[{i}/{len(mutants)}] {m['id']}: {row['status']}{' (equivalent)' if row['equivalent'] else ''} "
                  f"in {secs:.0f} s", flush=True)
    except KeyboardInterrupt:
        interrupted = True
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
    # 0: every non-equivalent mutant caught, none stale or untested, not interrupted
    return 1 if interrupted or summary["survived"] or summary["stale"] or summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
