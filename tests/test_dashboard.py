"""``mase-lite dashboard``: a real optuna-dashboard server on a free loopback port, asked over HTTP
for the run's studies (``GET /api/studies``), then stopped."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import optuna
import pytest

from mase_lite.cli import main

pytest.importorskip("optuna_dashboard", reason="the [dashboard] extra is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_run_studies(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    storage = optuna.storages.RDBStorage(f"sqlite:///{run / 'optuna.db'}")
    for name, n in (("dash-a", 3), ("dash-b", 1)):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    storage.engine.dispose()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mase_lite.cli", "dashboard", "--run", str(run),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < end, "the dashboard never answered"
                time.sleep(0.3)
        studies = {s["study_name"]: s for s in body["study_summaries"]}
        assert set(studies) == {"dash-a", "dash-b"}
        assert [d.lower() for d in studies["dash-a"]["directions"]] == ["maximize"]
    finally:
        proc.kill()
        proc.communicate()


def test_dashboard_bad_input_is_one_clear_error(tmp_path, capsys):
    assert main(["dashboard", "--run", str(tmp_path)]) == 2
    assert "is not a search run folder (no optuna.db)" in capsys.readouterr().err
    assert main(["dashboard", "--storage", "sqlite:///x.db", "--port", "0"]) == 2
    assert "--port = 0: use 1-65535" in capsys.readouterr().err


def test_dashboard_without_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    assert main(["dashboard", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert capsys.readouterr().err.strip() == \
        "mase-lite dashboard: error: optuna-dashboard is not installed; install mase-lite[dashboard]"
