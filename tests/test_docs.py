"""The documentation is tested: the site builds in strict mode, and every Python snippet runs.

* ``test_site_builds_strict``: ``mkdocs build --strict`` into a temporary folder (the same build as
  ``make docs``), so a broken link, a missing anchor, a page missing from the navigation, a
  docstring reference mkdocstrings cannot resolve, or a failure of the generated CLI / config
  reference pages (``docs/_gen/hooks.py``) fails the suite.
* ``test_python_snippets_run``: every fenced ```` ```python ```` block of ``README.md`` and of every
  page under ``docs/`` runs. The blocks of one page run in order in one namespace (a later block may
  use what an earlier one defined), in a fresh temporary working directory that has the
  repository's ``examples/`` folder, so paths such as ``examples/lab2_compression.toml`` work as they
  do from the repository root and nothing is written into the checkout. Snippets are written to run
  in seconds: tiny models, and a few rows of the data mirror (``MASE_LITE_DATA``) where they need
  data; a page whose snippets read data is skipped without the mirror (failed in CI, as every data
  test).
* The only way to keep a block from running is the line ``<!-- docs-test: skip -->`` directly
  above its fence (say why next to it). Keep such blocks rare: a block that cannot run is one that
  can go stale.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import DATA_DIR, require_data_dir

REPO = Path(__file__).resolve().parents[1]
SKIP_MARK = "<!-- docs-test: skip -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def snippet_pages() -> list[Path]:
    """README.md and every Markdown page of the documentation."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line number, code, skipped)`` for every fenced ``python`` block of a Markdown text."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), m.group("indent")
        lang = m.group("info").strip().split()[0].lower() if m.group("info").strip() else ""
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        if lang in ("python", "py"):
            skipped = start > 0 and lines[start - 1].strip() == SKIP_MARK
            blocks.append((start + 1, "\n".join(body) + "\n", skipped))
    return blocks


def test_block_extraction_finds_fences_and_the_skip_marker():
    text = "a\n```python\nx = 1\n```\n<!-- docs-test: skip -->\n```python\nboom()\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n", False), (6, "boom()\n", True)]


PAGES = [p for p in snippet_pages() if python_blocks(p.read_text(encoding="utf-8"))]


def test_snippets_exist_where_the_issue_asks_for_them():
    """The README and the guides carry runnable Python (guarding against the collector silently finding none)."""
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    assert "README.md" in names
    assert any(n.startswith("docs/guides/") for n in names)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_python_snippets_run(page: Path, tmp_path: Path, monkeypatch):
    text = page.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    if any(word in code for _, code, skip in blocks if not skip for word in ("load_splits", "DataConfig(")):
        require_data_dir(DATA_DIR)
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"docs_snippet_{re.sub(r'[^0-9a-zA-Z_]', '_', page.stem)}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    namespace = module.__dict__
    rel = page.relative_to(REPO).as_posix()
    from passes.registry import PASSES, available_passes

    available_passes()
    registered = dict(PASSES)  # a page may register an example pass: other tests must not see it
    try:
        for line, code, skipped in blocks:
            if skipped:
                continue
            try:
                exec(compile(code, f"{rel}:{line}", "exec"), namespace)
            except Exception as exc:  # the page and line in the failure, not only the traceback
                raise AssertionError(f"the Python block at {rel}, line {line}, no longer runs: "
                                     f"{type(exc).__name__}: {exc}") from exc
    finally:
        PASSES.clear()
        PASSES.update(registered)


def test_skip_marker_is_rare():
    """At most a few blocks are kept from running, each one on purpose."""
    skipped = [(p.name, line) for p in snippet_pages() for line, _, s in python_blocks(p.read_text(encoding="utf-8")) if s]
    assert len(skipped) <= 3, skipped


def test_readme_links_resolve():
    """The README is not part of the site (so not checked by the strict build): its relative links and
    images must name files that exist, and its anchors into docs pages must exist there."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http:", "https:", "mailto:", "#")):
            continue
        path, _, anchor = target.partition("#")
        assert (REPO / path).exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            page = (REPO / path).read_text(encoding="utf-8")
            slugs = {re.sub(r"[^\w\s-]", "", h).strip().lower().replace(" ", "-")
                     for h in re.findall(r"^#+ (.*?)(?: \{.*\})?$", page, flags=re.M)}
            ids = set(re.findall(r"\{ #([\w-]+) \}", page))
            assert anchor in slugs | ids, f"README.md links to {target}: no such heading in {path}"


def test_site_builds_strict(tmp_path: Path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (make install does)", pytrace=False)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    site = tmp_path / "site"
    for page in ("index.html", "reference/cli.html", "reference/config.html", "results/index.html"):
        assert (site / page).is_file(), page
    cli = (site / "reference/cli.html").read_text(encoding="utf-8")
    assert "mase-lite search" in cli and "--resume" in cli
    config = (site / "reference/config.html").read_text(encoding="utf-8")
    assert "size_budget_bytes" in config and "pruner_val_rows" in config
    # every figure a page shows is in the site
    for html in site.rglob("*.html"):
        for src in re.findall(r'<img[^>]+src="([^"]+)"', html.read_text(encoding="utf-8")):
            if not src.startswith(("http:", "https:", "data:")):
                assert (html.parent / src).resolve().is_file(), f"{html.relative_to(site)}: missing figure {src}"
