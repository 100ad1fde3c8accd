"""Checkpoints, Ctrl-C and --resume of diagonal_linear_nets/train.py: an interrupted and resumed
run equals the uninterrupted one bit for bit (metrics.jsonl and summary.json, which holds every
run's final u, v, beta as exact JSON floats)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diagonal_linear_nets.simulator import RunSpec, SimConfig, log_schedule, simulate
from diagonal_linear_nets.train import (
    CHECKPOINT,
    TrainConfig,
    config_from_args,
    load_checkpoint,
    main,
    train,
)
from suite.rundir import read_json

ROOT = Path(__file__).resolve().parents[1]

# Each variant carries the state a resume must restore: GD (weights, metrics), SGD (the numpy
# streams: the notebook's continuing data stream with a skip, and an own seed; mini-batch SAM),
# SAM with ERM <-> SAM switches, a run that diverges after the switch, and the alpha_inf
# bookkeeping (--theory); the torch engine (its chunks end at log points only).
VARIANTS = {
    "gd": dict(algo=["gd"], alpha=[0.05, 0.1], iters=40_000, log_points=3),
    "sgd": dict(
        algo=["sgd"],
        batch_size=2,
        sgd_skip=7,
        seeds=[0, 1],
        rho_per_algo={"sgd": [0.0, 0.2]},
        iters=40_000,
        log_points=3,
    ),
    "sgd_own_seed": dict(algo=["sgd"], batch_size=3, sgd_seed=5, iters=3000, log_points=30),
    "sam_switch": dict(
        algo=["nsam", "1sam"],
        rho=[0.1, 2.0],
        gamma=0.5,
        switch="erm_to_sam",
        switch_at=150,
        theory=True,
        iters=3000,
        log_points=30,
    ),
    "sam_to_erm": dict(
        algo=["1sam", "msam"],
        m=5,
        rho=[0.2],
        gamma=0.5,
        switch="sam_to_erm",
        switch_at=900,
        iters=3000,
        log_points=30,
    ),
    "torch_engine": dict(
        algo=["gd", "1sam"], rho=[0.2], engine="torch", theory=True, iters=300, log_points=10
    ),
}
# stop points: inside the per-step logging (< 100), inside a long C chunk (the 40k-step
# variants log at 0..99 and 40000 only: chunks of 16384 steps), and late
STOPS = {"gd": (50, 100), "sgd": (60, 100), "torch_engine": (40, 150)}


def _files(path: Path) -> tuple[str, str]:
    return (path / "metrics.jsonl").read_text(), (path / "summary.json").read_text()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stopped_and_resumed_equals_uninterrupted_bitwise(tmp_path, variant):
    kw = VARIANTS[variant]
    ref = train(TrainConfig(out_dir=str(tmp_path / "ref"), **kw))
    # checkpoints at the stops only, and for one variant after every chunk besides
    every = 0 if variant == "sam_switch" else 1e9
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), checkpoint_every=every, **kw)
    stops = STOPS.get(variant, (120, 1000))
    reached = []
    for i, stop in enumerate(stops):
        path = train(dataclasses.replace(cfg, stop_after_iter=stop, resume=i > 0))
        s = read_json(path / "summary.json")
        assert s["status"] == "stopped" and stop <= s["iter"] < cfg.iters
        assert (path / CHECKPOINT).exists()
        reached.append(s["iter"])
    assert reached[0] < reached[1]
    if variant == "sgd_own_seed":  # rows logged after the checkpoint (a crash), one torn
        with open(path / "metrics.jsonl", "a") as f:
            f.write('{"iter": 99999, "run": 0, "train_loss": 1.0}\n{"iter": 1000')
    path = train(dataclasses.replace(cfg, resume=True))
    assert _files(path) == _files(ref)
    assert not (path / CHECKPOINT).exists()  # the finished summary holds the final state
    summ = read_json(path / "summary.json")
    assert summ["status"] == "finished"
    if variant == "sam_switch":  # the diverged run's state and iteration survive a resume
        assert any(r["status"] == "diverged" for r in summ["runs"])
    if variant == "gd":  # the first stop is inside the 99 -> 40000 interval: a C-kernel chunk
        assert 100 < reached[1] < 40_000


def test_chunk_size_does_not_change_results():
    """The C engine splits intervals between log points into chunks (checkpoints, Ctrl-C): the
    result must not depend on the split, SGD's draws included."""
    runs = [
        RunSpec("gd", thresholds=(33,)),
        RunSpec("sgd", batch_size=2, sgd_skip=3, seed=1),
        RunSpec("sgd", batch_size=4, m=2, rho=0.3, sgd_seed=9),
        RunSpec("1sam", rho=0.3, switch="erm_to_sam", switch_at=50),
        RunSpec("msam", m=4, rho=0.2),
        RunSpec("1sam", rho=2.0, gamma=0.5, switch="erm_to_sam", switch_at=150),  # diverges
    ]
    cfg = SimConfig(iters=700)
    logs = [0, 10, 333, 700]
    a = simulate(runs, cfg, logs, track_alpha=True)
    b = simulate(runs, cfg, logs, track_alpha=True, max_chunk=7)
    assert a.diverged_at == b.diverged_at and a.diverged_at[-1] is not None
    for key in ("u", "v", "train_loss", "test_loss", "l1", "alpha_inf_flow"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_simulate_snapshot_resume_equals_uninterrupted():
    """The simulator level: stop at a chunk end, continue from the snapshot."""
    runs = [
        RunSpec("sgd", batch_size=2),
        RunSpec("1sam", rho=0.4, switch="sam_to_erm", switch_at=222),
    ]
    cfg = SimConfig(iters=500)
    logs = [0, 5, 100, 500]
    ref = simulate(runs, cfg, logs, track_alpha=True)
    saved = {}

    def stop_at_126(t, snapshot):
        if t >= 126:
            saved.update(snapshot())
            return True
        return False

    part = simulate(runs, cfg, logs, track_alpha=True, on_chunk=stop_at_126, max_chunk=13)
    assert part.stopped_at == 126 and int(saved["t"]) == 126 and int(saved["j"]) == 3
    assert np.isnan(part.test_loss[:, -1]).all()  # not reached: a partial result
    rest = simulate(runs, cfg, logs, track_alpha=True, resume_from=saved)
    assert rest.stopped_at is None
    for key in ("u", "v", "train_loss", "test_loss", "l1", "alpha_inf_flow"):
        np.testing.assert_array_equal(getattr(ref, key), getattr(rest, key))
    with pytest.raises(ValueError, match="another grid"):
        simulate(runs[:1], cfg, logs, resume_from=saved)
    with pytest.raises(ValueError, match="engine"):
        simulate(runs, SimConfig(iters=500, engine="torch"), logs, resume_from=saved)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_ctrl_c_or_crash_then_resume_continues_bitwise(tmp_path, sig):
    """A real SIGINT to the CLI: exit 130, summary "interrupted", checkpoint saved at once; a
    SIGKILL (a crash): the last periodic checkpoint stays. --resume continues from it; compared
    at a common log point (the run is long: it is stopped there by --stop_after_iter) with an
    uninterrupted run stopped at the same point."""
    flags = ["--algo", "gd", "1sam", "sgd", "--rho", "0.2", "--iters", "1000000", "--theory"]
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "diagonal_linear_nets.train", *flags]
    proc = subprocess.Popen(
        cmd + ["--out_dir", str(out), "--checkpoint_every", "0.3"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )

    def checkpoint_iter() -> int:
        try:
            return int(load_checkpoint(out / CHECKPOINT, _identity(out))["t"])
        except (OSError, ValueError, KeyError):  # not written yet
            return 0

    # signal once a periodic checkpoint lies well past the per-step logging (a loaded machine
    # runs the subprocess slowly: wait for progress, not for a fixed time)
    deadline = time.time() + 120
    while checkpoint_iter() <= 1000 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        s = read_json(out / "summary.json")
        assert s["status"] == "interrupted" and "--resume" in err
        t_stop = s["iter"]
    else:
        assert proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists()
        t_stop = int(load_checkpoint(out / CHECKPOINT, _identity(out))["t"])
    assert t_stop > 1000  # mid-run, well past the per-step logging
    # a log point after the interruption: the chunks of both runs end there (their chunks
    # between log points differ: the resumed run's start at t_stop)
    target = int(next(t for t in log_schedule(1_000_000) if t > 1.02 * t_stop))
    assert main(flags + ["--out_dir", str(out), "--resume", "--stop_after_iter", str(target)]) == 0
    ref = tmp_path / "ref"
    assert main(flags + ["--out_dir", str(ref), "--stop_after_iter", str(target)]) == 0
    a, b = read_json(out / "summary.json"), read_json(ref / "summary.json")
    assert a["status"] == b["status"] == "stopped" and a["iter"] == b["iter"] == target
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
    ca = load_checkpoint(out / CHECKPOINT, _identity(out))
    cb = load_checkpoint(ref / CHECKPOINT, _identity(ref))
    assert sorted(ca) == sorted(cb)
    for k in ca:
        np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)


def _identity(path: Path) -> str:
    from suite.rundir import config_hash

    return config_hash(read_json(path / "config.json")["config"])


def test_resume_with_changed_flags_names_them(tmp_path, capsys):
    out = str(tmp_path / "r")
    base = ["--algo", "gd", "1sam", "--rho", "0.1", "--iters", "3000", "--out_dir", out]
    assert main(base + ["--stop_after_iter", "200"]) == 0
    changed = ["--algo", "gd", "1sam", "--rho", "0.2", "--iters", "4000", "--out_dir", out]
    assert main(changed + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "--rho [0.1] (now [0.2])" in err and "--iters 3000 (now 4000)" in err
    assert "--algo" not in err  # only the flags that differ
    # a checkpoint/metrics/summary left as they were: the same flags still resume
    assert read_json(tmp_path / "r" / "summary.json")["status"] == "stopped"
    # flags that say how to run, not what, may change
    assert main(base + ["--resume", "--checkpoint_every", "5"]) == 0
    assert read_json(tmp_path / "r" / "summary.json")["status"] == "finished"


def test_resume_of_finished_run_changes_nothing(tmp_path, capsys):
    cfg = TrainConfig(out_dir=str(tmp_path / "r"), algo=["gd"], iters=300, log_points=10)
    path = train(cfg)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.iterdir()}
    assert train(dataclasses.replace(cfg, resume=True)) == path
    assert "already finished" in capsys.readouterr().err
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.iterdir()}
    assert after == before
    argv = ["--algo", "gd", "--iters", "300", "--log_points", "10", "--out_dir", str(path)]
    assert main(argv + ["--resume"]) == 0


def test_checkpoint_of_another_config_or_with_pickles_is_refused(tmp_path):
    a = TrainConfig(out_dir=str(tmp_path / "a"), algo=["gd"], iters=3000, stop_after_iter=200)
    b = dataclasses.replace(a, out_dir=str(tmp_path / "b"), alpha=[0.2])
    train(a)
    train(b)
    (tmp_path / "b" / CHECKPOINT).write_bytes((tmp_path / "a" / CHECKPOINT).read_bytes())
    with pytest.raises(ValueError, match="another config"):
        train(dataclasses.replace(b, resume=True, stop_after_iter=None))
    # an object array would need unpickling: refused, never loaded
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_checkpoint(tmp_path / "evil.npz", "x")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--resume", "--overwrite"], "--resume and --overwrite"),
        (["--resume"], "holds no run"),
        (["--checkpoint_every", "-1"], "--checkpoint_every"),
        (["--checkpoint_every", "nan"], "--checkpoint_every"),
        (["--stop_after_iter", "0"], "--stop_after_iter"),
    ],
)
def test_resume_flags_errors(tmp_path, argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        config_from_args(argv + ["--out_dir", str(tmp_path / "none")])
    assert e.value.code == 2
    assert needle in capsys.readouterr().err
