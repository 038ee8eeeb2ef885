"""The mase-lite CLI skeleton: help, report, one-line errors and --debug."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from mase_lite.cli import main
from mase_lite.models import ModelConfig, build_model

SIZE = ["--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64"]


def test_console_script_help():
    exe = shutil.which("mase-lite") or f"{sys.executable} -m mase_lite.cli"
    proc = subprocess.run(exe.split() + ["--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "report" in proc.stdout and "usage: mase-lite" in proc.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: mase-lite" in capsys.readouterr().out


def test_report_from_flags(capsys):
    assert main(["report", *SIZE, "--ops", "linear"]) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.0.attention.self.query" in out
    assert "embedding" not in out.split("total:")[0].split("\n", 2)[2]  # only linear rows
    assert "total:" in out and "parameters" in out


def test_report_json_by_module(capsys):
    assert main(["report", *SIZE, "--by", "module", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    params = sum(p.numel() for p in build_model(ModelConfig(num_hidden_layers=1, hidden_size=32,
                                                            num_attention_heads=2, intermediate_size=64)).parameters())
    assert data["totals"]["params"] == params
    assert any(r["module"] == "classifier" for r in data["rows"])


def test_report_from_checkpoint_and_model_config(tmp_path, capsys):
    model = build_model(ModelConfig(model_type="distilbert", num_hidden_layers=1, hidden_size=32,
                                    num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["report", "--checkpoint", str(tmp_path / "ckpt")]) == 0
    assert "distilbert.transformer.layer.0.attention.q_lin" in capsys.readouterr().out
    (tmp_path / "m.toml").write_text('[model]\nmodel_type = "roberta"\nnum_hidden_layers = 1\nhidden_size = 32\n'
                                    'num_attention_heads = 2\nintermediate_size = 64\n')
    assert main(["report", "--model-config", str(tmp_path / "m.toml")]) == 0
    assert "roberta.encoder.layer.0" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["report", "--checkpoint", "/no/such/dir"], "checkpoint directory not found: /no/such/dir"),
    (["report", "--hidden", "30", "--heads", "4"], "model.hidden_size = 30 is not divisible by model.num_attention_heads = 4"),
    (["report", "--layers", "0"], "model.num_hidden_layers = 0 is out of range"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("mase-lite report: error: ") and message in err


def test_unknown_model_type_and_bad_toml_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--model-type", "t5"])
    assert exc.value.code == 2
    assert "invalid choice: 't5'" in capsys.readouterr().err
    (tmp_path / "m.toml").write_text('[model]\nmodel_type = "t5"\nhiden_size = 3\n')
    assert main(["report", "--model-config", str(tmp_path / "m.toml")]) == 2
    assert "unknown config key 'model.hiden_size' (did you mean 'hidden_size'?)" in capsys.readouterr().err
    (tmp_path / "m.toml").write_text('[model]\nmodel_type = "t5"\n')
    assert main(["report", "--model-config", str(tmp_path / "m.toml")]) == 2
    assert "model.model_type = 't5' is not valid; choose one of: 'bert', 'distilbert', 'roberta'" in capsys.readouterr().err


def test_not_a_checkpoint(tmp_path, capsys):
    assert main(["report", "--checkpoint", str(tmp_path)]) == 2
    assert "is not a transformers checkpoint (no config.json)" in capsys.readouterr().err


def test_debug_shows_traceback():
    from mase_lite import MaseError

    with pytest.raises(MaseError):
        main(["--debug", "report", "--checkpoint", "/no/such/dir"])
