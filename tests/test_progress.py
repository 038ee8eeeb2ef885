"""The progress TTY rule: tqdm bars on a terminal; off a terminal one line per trial and no step bars."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from tqdm import tqdm as tqdm_cls

from mase_lite.progress import LineProgress, is_terminal, nested_progress, progress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def lines(text: str) -> list[str]:
    """What a log viewer shows: every carriage return or newline starts a new line."""
    return [x for x in text.replace("\r", "\n").split("\n") if x.strip()]


def test_top_level_progress_off_a_terminal_writes_one_line_per_step():
    buf = io.StringIO()
    with progress(total=3, desc="study", unit="trial", file=buf) as bar:
        assert isinstance(bar, LineProgress)
        bar.update()
        bar.set_postfix(best="0.5100", refresh=False)
        bar.update()
        bar.n = 3  # as search.storage.Budget does: set n, then refresh
        bar.refresh()
        bar.refresh()  # no change: no line
    assert buf.getvalue() == "study: 1/3 trial\nstudy: 2/3 trial  best=0.5100\nstudy: 3/3 trial  best=0.5100\n"
    buf = io.StringIO()
    assert list(progress(range(4), desc="rows", unit="row", initial=0, file=buf)) == [0, 1, 2, 3]
    assert lines(buf.getvalue()) == [f"rows: {i}/4 row" for i in range(1, 5)]


def test_nested_progress_off_a_terminal_writes_nothing():
    buf = io.StringIO()
    assert list(nested_progress(range(50), desc="train", leave=False, file=buf)) == list(range(50))
    bar = nested_progress(total=10, desc="train", file=buf)
    for _ in range(10):
        bar.update(1)
        bar.set_postfix(loss="0.1", refresh=False)
    bar.close()
    assert buf.getvalue() == ""


def test_disabled_and_terminal_only_bars_write_nothing_off_a_terminal():
    buf = io.StringIO()
    for disable in (True, None):  # None: tqdm's "only on a terminal" (replay's bar)
        with progress(total=5, file=buf, disable=disable) as bar:
            bar.update(5)
    assert buf.getvalue() == ""


def test_on_a_terminal_both_are_tqdm_bars():
    tty = FakeTTY()
    assert is_terminal(tty) and not is_terminal(io.StringIO())
    top = progress(total=2, desc="study", file=tty)
    inner = nested_progress(total=2, desc="train", file=tty, leave=False)
    assert isinstance(top, tqdm_cls) and isinstance(inner, tqdm_cls) and not top.disable and not inner.disable
    inner.update(2)
    inner.close()
    top.update(2)
    top.close()
    assert "\r" in tty.getvalue() and "study" in tty.getvalue() and "train" in tty.getvalue()


CHILD = ("import tqdm\nfrom mase_lite.progress import progress, nested_progress\n"
         "a, b = progress(total=2), nested_progress(total=2)\n"
         "print('tqdm' if isinstance(a, tqdm.tqdm) else type(a).__name__, getattr(a, 'disable', None), b.disable)\n")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_real_pseudo_terminal_versus_pipe():
    import pty

    master, slave = pty.openpty()
    try:
        on_tty = subprocess.run([sys.executable, "-c", CHILD], stderr=slave, stdout=subprocess.PIPE, text=True,
                                timeout=60, env=os.environ.copy())
    finally:
        os.close(slave)
        os.close(master)
    piped = subprocess.run([sys.executable, "-c", CHILD], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           timeout=60, env=os.environ.copy())
    assert on_tty.stdout.split() == ["tqdm", "False", "False"]
    assert piped.stdout.split() == ["LineProgress", "None", "True"]


SEARCH = """
[search]
name = "p"
samplers = ["grid", "random"]
variants = ["baseline"]
n_trials = 3
gc_after_trial = false

[space]
num_hidden_layers = [1]
num_attention_heads = [2]
hidden_size = [8, 12, 16]
intermediate_size = [16]

[model]
vocab_size = 64
max_position_embeddings = 32

[data]
max_length = 16
"""


def test_search_with_stderr_not_a_terminal_prints_one_line_per_trial(tmp_path, capsys, fake_training):
    from mase_lite.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(SEARCH)
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    shown = lines(err)
    trial_lines = [x for x in shown if " trial" in x and x.startswith("p-")]
    assert len(trial_lines) == 2 * 3  # 2 studies x 3 trials
    assert [x.split(":")[1].split()[0] for x in trial_lines[:3]] == ["1/3", "2/3", "3/3"]
    assert len(shown) <= len(trial_lines) + 2


def test_train_with_stderr_not_a_terminal_has_no_step_bars(tmp_path, capsys, data_dir):
    from mase_lite.cli import main

    rc = main(["train", "--layers", "1", "--heads", "2", "--hidden", "16", "--intermediate", "32",
               "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "c"), "--n-train", "64", "--n-val", "16",
               "--max-length", "16", "--batch-size", "8", "--precision", "fp32", "--threads", "1", "--progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "\r" not in err and lines(err) == []
