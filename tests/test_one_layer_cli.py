"""The CLI of one_layer_relu_nets: a real run as a script, and clear errors for bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from one_layer_relu_nets.train import main

ROOT = Path(__file__).resolve().parents[1]


def test_cli_script_runs_and_writes_a_run(tmp_path):
    out = tmp_path / "cli_run"
    cmd = [sys.executable, str(ROOT / "one_layer_relu_nets" / "train.py"), "--algorithms", "gd",
           "1sam", "--rhos", "0.1", "--iterations", "20", "--num_seeds", "2", "--seed", "3",
           "--out_dir", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["algorithm"], r["seed"]) for r in summary["runs"]] == [
        ("gd", 3), ("gd", 4), ("1sam", 3), ("1sam", 4)]  # fmt: skip
    assert "1sam" in res.stdout and "wrote" in res.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "--lr"),
        (["--algorithms", "adam"], "--algorithms"),
        (["--algorithms", "sgd"], "--batch_size"),
        (["--algorithms", "msam", "--m", "5"], "--m"),
        (["--rhos", "-0.1"], "--rhos"),
        (["--num_seeds", "0"], "--num_seeds"),
        (["--iterations", "0"], "--iterations"),
        (["--init", "xavier"], "--init"),
        (
            ["--device", "cuda:7"]
            if not __import__("torch").cuda.is_available()
            else ["--device", "nonsense"],
            "--device",
        ),  # fmt: skip
        (["--iterations", "ten"], "--iterations"),
    ],
)
def test_bad_flags_exit_2_with_the_flag_named(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out_dir", str(tmp_path / "x")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_existing_out_dir_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["--out_dir", str(tmp_path), "--iterations", "1"])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--task", "--width", "--init", "--algorithms", "--rhos", "--unnormalized",
                 "--rho_schedule", "--lr", "--lr_schedule", "--iterations", "--loss_threshold",
                 "--num_seeds", "--out_dir", "--seed", "--batch_size", "--m"):  # fmt: skip
        assert flag in text
