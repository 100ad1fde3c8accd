"""The trainer as real processes: Ctrl-C (SIGINT) mid-epoch then --resume, and a 2-process
DistributedDataParallel run (torchrun, gloo on CPU) against its single-process equivalent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deep_nets.config import TIMING_FIELDS, TrainConfig
from deep_nets.train import train
from suite.rundir import load_run, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not FMNIST.exists(), reason="needs the Debian package dataset-fashion-mnist"
)

# Fashion-MNIST, 324 training examples (20 steps per epoch), a small CNN; evaluation capped.
FLAGS = dict(
    dataset="fashion_mnist",
    model="cnn",
    model_width=4,
    frac_train=0.006,
    batch_size=16,
    lr_max=0.05,
    n_eval=200,
    n_eval_train=200,
    n_sharpness=64,
    workers=1,
)


def argv(flags: dict) -> list[str]:
    out = []
    for k, v in flags.items():
        if v is True:
            out.append(f"--{k}")
        elif v is not False and v is not None:
            out += [f"--{k}", str(v)]
    return out


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def test_sigint_mid_epoch_saves_and_resume_matches_uninterrupted(tmp_path):
    flags = dict(FLAGS, epochs=2, sam_rho=0.05, acc_steps=4, eval_iter_freq=4)
    run_dir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "deep_nets.train", *argv(flags)]
    proc = subprocess.Popen(
        [*cmd, "--out_dir", str(run_dir)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:  # wait for the row at step 4
        if metrics.exists() and len(read_jsonl(metrics)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "continue with --resume" in err
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ck["state"]["global_step"] < 2 * 20  # stopped before the end
    assert ck["state"]["gen_state"] is not None  # the epoch's random streams were saved
    assert load_run(run_dir)["summary"]["status"] == "interrupted"

    resumed = subprocess.run(
        [*cmd, "--out_dir", str(run_dir), "--resume"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    train(TrainConfig(**flags, out_dir=str(tmp_path / "straight")))
    a, b = load_run(tmp_path / "straight"), load_run(run_dir)
    assert b["summary"]["status"] == "finished"
    assert strip(a["metrics"]) == strip(b["metrics"])
    wa = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ddp_two_workers_equal_msam_with_one_chunk_per_worker(tmp_path):
    """2 workers with acc_steps=1: each perturbs with its own half of the batch (per-worker
    m-sharpness, m = batch/2) and the SAM gradients are averaged: the same algorithm as one
    process with acc_steps=2 (no augmentation, no batch norm, so the data and model agree)."""
    flags = dict(FLAGS, epochs=2, sam_rho=0.1, no_data_augm=True, l2_reg=1e-3)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "deep_nets.train",
        *argv(flags),
        "--out_dir",
        str(tmp_path / "ddp"),
    ]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = load_run(tmp_path / "ddp")
    assert ddp["summary"]["world_size"] == 2 and ddp["summary"]["m"] == 8
    assert len(ddp["metrics"]) == 3  # only rank 0 wrote (epoch 0, 1, 2)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "best.pt",
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "wrong.npz",
    ]

    train(TrainConfig(**flags, acc_steps=2, out_dir=str(tmp_path / "single")))
    single = load_run(tmp_path / "single")
    for a, b in zip(strip(ddp["metrics"]), strip(single["metrics"]), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
            else:
                assert a[k] == b[k], k
    wa = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
