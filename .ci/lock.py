"""The install lock: check that the installed distributions equal ``requirements.lock``, or write it.

``python .ci/lock.py check requirements.lock`` exits 1, listing every difference, unless the running
interpreter has exactly the distributions the lock names, at exactly its versions (pip and setuptools
included; the project itself, ``mase-lite``, is left out: it is installed editable from the tree).
``python .ci/lock.py sync requirements.lock`` uninstalls every distribution the lock does not name
(what an older lock brought in). ``python .ci/lock.py write requirements.lock`` writes the lock from
what is installed. Used by ``make install`` (sync, check) and ``make lock`` (write, after the suite
passed).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

PROJECT = "mase-lite"
HEADER = (
    "# Exact versions the test suite last passed with (every installed distribution, transitive ones\n"
    "# included; the project itself is installed editable). Written by `make lock`; used by `make install`\n"
    "# as pip constraints and checked after it (.ci/lock.py). Do not edit by hand except to move torch.\n"
)


def canonical(name: str) -> str:
    """PEP 503 name normalisation (``Foo_bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """A version without its local label (``2.13.0+cpu`` -> ``2.13.0``): the lock pins releases, not
    builds (pip's ``==2.13.0`` accepts any build of that release, e.g. the CPU or a CUDA wheel)."""
    return version.split("+", 1)[0]


def installed() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution the running interpreter sees, less the project."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) != PROJECT:
            out[canonical(name)] = public(dist.version)
    return out


def read_lock(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` from a lock of ``name==version`` lines (``#`` comments allowed)."""
    out = {}
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if m is None:
            raise SystemExit(f"{path}:{i}: expected 'name==version', got {raw!r}")
        out[canonical(m.group(1))] = m.group(2)
    return out


def differences(lock: dict[str, str], have: dict[str, str]) -> list[str]:
    """Human-readable differences between a lock and the installed set (empty when equal)."""
    diffs = []
    for name in sorted(set(lock) | set(have)):
        if name not in have:
            diffs.append(f"{name}: locked {lock[name]}, not installed")
        elif name not in lock:
            diffs.append(f"{name}: installed {have[name]}, not in the lock")
        elif lock[name] != have[name]:
            diffs.append(f"{name}: locked {lock[name]}, installed {have[name]}")
    return diffs


def sync(path: Path) -> int:
    """Uninstall the installed distributions that the lock does not name."""
    extra = sorted(set(installed()) - set(read_lock(path)))
    if not extra:
        return 0
    print(f"uninstalling {len(extra)} distributions not in {path}: {' '.join(extra)}")
    return subprocess.call([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *extra])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("check", "sync", "write"):
        print("usage: python .ci/lock.py check|sync|write LOCKFILE", file=sys.stderr)
        return 2
    action, path = argv[0], Path(argv[1])
    if action == "sync":
        return sync(path)
    have = installed()
    if action == "write":
        path.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(have.items())))
        print(f"wrote {path}: {len(have)} distributions")
        return 0
    if not path.is_file():
        print(f"no lock file {path}", file=sys.stderr)
        return 1
    diffs = differences(read_lock(path), have)
    if diffs:
        print(f"installed distributions differ from {path} ({len(diffs)}):", file=sys.stderr)
        for d in diffs:
            print(f"  {d}", file=sys.stderr)
        print("run `make clean install` to install the lock, or `make lock` to move to newer releases",
              file=sys.stderr)
        return 1
    print(f"installed distributions equal {path} ({len(have)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
