"""The CLI of one_layer_relu_nets: a real run (``python -m one_layer_relu_nets.train``), and clear
errors for bad flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from one_layer_relu_nets.train import main

ROOT = Path(__file__).resolve().parents[1]
# ``python -m`` from any directory: the checkout on the path (as running it from the root does)
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_cli_script_runs_and_writes_a_run(tmp_path):
    out = tmp_path / "cli_run"
    cmd = [
        sys.executable,
        "-m",
        "one_layer_relu_nets.train",
        "--algorithms",
        "gd",
        "1sam",
        "--rhos",
        "0.1",
        "--iterations",
        "20",
        "--num_seeds",
        "2",
        "--seed",
        "3",
        "--out_dir",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=ENV)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["algorithm"], r["seed"]) for r in summary["runs"]] == [
        ("gd", 3),
        ("gd", 4),
        ("1sam", 3),
        ("1sam", 4),
    ]
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
        ),
        (["--iterations", "ten"], "--iterations"),
        (["--task", "teacher", "--d", "0"], "--d"),
        (["--task", "teacher", "--n_train", "0"], "--n_train"),
        (["--task", "teacher", "--n_test", "0"], "--n_test"),
        (["--task", "teacher", "--teacher_width", "0"], "--teacher_width"),
        (["--rhos", "inf"], "--rhos"),
        (["--rhos", "0.1", "nan"], "--rhos"),
        (["--lr", "nan"], "--lr"),
        (["--resume"], "--resume"),
        (["--resume", "--overwrite"], "--resume"),
        (["--algorithms", "nsam", "--match_losses_of", "."], "--match_losses_of"),
        (["--algorithms", "sgd", "--batch_size", "4", "--backend", "c"], "--backend"),
    ],
)
def test_bad_flags_exit_2_with_the_flag_named(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out_dir", str(tmp_path / "x")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_existing_out_dir_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    out = str(tmp_path / "r")
    flags = ["--out_dir", out, "--iterations", "5", "--num_seeds", "1", "--width", "8"]
    assert main(flags) == 0
    with pytest.raises(SystemExit) as e:
        main(flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "already holds a run" in err and "--resume" in err
    assert main([*flags, "--overwrite", "--iterations", "7"]) == 0  # replaced, new config
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["iterations"] == 7
    assert main([*flags, "--iterations", "7", "--resume"]) == 0  # complete: nothing to redo
    with pytest.raises(SystemExit) as e:  # resuming with other flags is refused
        main([*flags, "--iterations", "9", "--resume"])
    assert e.value.code == 2 and "iterations" in capsys.readouterr().err


def test_ctrl_c_saves_finished_groups_and_resume_finishes_the_run(tmp_path):
    """A real SIGINT to the script while the second algorithm trains: exit 130 with the first
    algorithm saved; --resume then gives exactly the summary of an uninterrupted run."""
    out = tmp_path / "int"
    flags = [
        "--algorithms",
        "gd",
        "nsam",
        "--iterations",
        "250000",
        "--num_seeds",
        "1",
        "--n_logs",
        "10",
    ]
    cmd = [sys.executable, "-m", "one_layer_relu_nets.train", *flags]
    proc = subprocess.Popen(
        [*cmd, "--out_dir", str(out)], stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV
    )
    deadline = time.time() + 120
    while not (out / "groups" / "gd.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and not (out / "summary.json").exists()
    assert not (out / "groups" / "nsam.json").exists()
    res = subprocess.run(
        [*cmd, "--out_dir", str(out), "--resume"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    full = tmp_path / "full"
    subprocess.run(
        [*cmd, "--out_dir", str(full)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env=ENV,
        timeout=300,
    )
    a, b = (json.loads((d / "summary.json").read_text())["runs"] for d in (out, full))
    assert a == b
    rows = [(out / "metrics.jsonl").read_text(), (full / "metrics.jsonl").read_text()]
    assert rows[0] == rows[1]


def test_diverged_run_says_at_which_step(tmp_path, capsys):
    assert (
        main(
            [
                "--task",
                "teacher",
                "--width",
                "10",
                "--init",
                "standard",
                "--lr",
                "50",
                "--reduction",
                "mean",
                "--iterations",
                "200",
                "--num_seeds",
                "1",
                "--algorithms",
                "gd",
                "--out_dir",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "diverged at step" in out and "None" not in out


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--task",
        "--width",
        "--init",
        "--algorithms",
        "--rhos",
        "--unnormalized",
        "--rho_schedule",
        "--lr",
        "--lr_schedule",
        "--iterations",
        "--loss_threshold",
        "--num_seeds",
        "--out_dir",
        "--seed",
        "--batch_size",
        "--m",
        "--resume",
        "--overwrite",
        "--backend",
        "--lr_decay_sam_only",
        "--match_losses_of",
        "--device",
    ):
        assert flag in text
    assert "default: 30000" in text and "1000000" in text and "default: cpu" in text


def test_every_flag_reaches_its_config_field():
    """The parser is generated from ``Config`` (``suite.cli.dataclass_parser``): no flags gives
    ``Config()``'s values, and a non-default value of every flag field lands in that field."""
    import dataclasses

    from one_layer_relu_nets.engine import Config
    from one_layer_relu_nets.train import build_parser, config_from_args
    from suite.cli import cli_fields

    p = build_parser()
    # the flags of the hand-written parser this one replaced, each a Config field
    assert {f.name for f in cli_fields(Config)} == set(
        "task d teacher_width n_train n_test n_val data_seed width init init_scale algorithms "
        "rhos rho_schedule m batch_size lr lr_schedule lr_decay_sam_only iterations "
        "loss_threshold reduction n_logs threads dtype backend match_losses_of".split()
    )
    default = config_from_args(p.parse_args([]))
    assert dataclasses.replace(default, out_dir=None) == Config()
    other = {
        "task": "teacher",
        "init": "standard",
        "algorithms": ["1sam", "msam"],
        "rhos": [0.05, 0.2],
        "rho_schedule": "inv_sqrt",
        "lr_schedule": "cosine",
        "reduction": "mean",
        "dtype": "float32",
        "backend": "torch",
        "match_losses_of": "some/run",
        "lr_decay_sam_only": True,
    }
    for f in cli_fields(Config):
        value = other[f.name] if f.name in other else getattr(default, f.name) * 2 + 1
        if isinstance(value, bool):
            argv = [f"--{f.name}"]
        else:
            argv = [f"--{f.name}", *map(str, value if isinstance(value, list) else [value])]
        args = p.parse_args(argv)
        if f.name == "match_losses_of":  # the digest reads the base run: only the path here
            args.match_losses_of, path = None, args.match_losses_of
            assert path == value
            continue
        assert getattr(config_from_args(args), f.name) == value, f.name
    cfg = config_from_args(p.parse_args(["--unnormalized", "--seed", "4", "--num_seeds", "2"]))
    assert not cfg.normalize and cfg.seeds == [4, 5]
