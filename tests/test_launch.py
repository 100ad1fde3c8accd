"""suite.launch: skip / resume / --force decisions, and the submitit path with real subprocess jobs.

The trainer is deep_nets.train.train on a tiny Fashion-MNIST MLP (seconds per run, exact resume from
its per-epoch checkpoint). The submitit test runs two runs as jobs of submitit's LocalExecutor
(real processes started by submitit's own controller), preempts one of them with the signal
SLURM sends (SIGUSR2 to the job's process), and checks that submitit requeued it, that it
resumed from its checkpoint rather than starting over, and that both runs' metrics equal those
of the same runs trained in this process.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from suite import launch
from suite.launch import Run, configure, plan, run_all, run_state, submit
from suite.rundir import read_json, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
# timings differ between two executions of the same run; everything else must be equal
TIMING = ("seconds", "per_s", "time", "wall", "throughput")


def tiny_config(seed: int, epochs: int = 3) -> dict:
    """The full config the trainer stores (its defaults included), as a stage passes it."""
    from deep_nets.config import TrainConfig

    # Fashion-MNIST from the Debian package (`make data`): each job process loads it in ~1 s,
    # where generating MNIST-1D costs several seconds per process.
    flags = dict(
        dataset="fashion_mnist",
        model="mlp",
        model_width=16,
        batch_size=32,
        epochs=epochs,
        frac_train=0.03,
        lr_max=0.05,
        n_eval=256,
        n_eval_train=256,
        n_sharpness=64,
        sharpness_m=32,
        sam_rho=0.1,
        seed=seed,
        workers=1,
    )
    return TrainConfig(**flags).to_dict()


def train_tiny(cfg: dict, out_dir: str, resume: bool) -> dict:
    """A stage's train callable: the real trainer, resuming from its checkpoint on request."""
    from deep_nets.config import TrainConfig
    from deep_nets.train import train

    return train(TrainConfig(**{**cfg, "out_dir": out_dir, "resume": resume}))


def make_runs(root: Path, epochs: int = 3) -> list[Run]:
    runs = []
    for seed in (0, 1):
        cfg, out = tiny_config(seed, epochs), root / f"seed{seed}"
        runs.append(Run(f"seed {seed}", out, cfg, functools.partial(train_tiny, cfg, str(out))))
    return runs


def comparable(run_dir: Path) -> tuple[list[dict], dict]:
    def strip(row: dict) -> dict:  # nested too: summary.json's "scored" has its own seconds
        return {
            k: strip(v) if isinstance(v, dict) else v
            for k, v in row.items()
            if not any(t in k for t in TIMING)
        }

    rows = [strip(r) for r in read_jsonl(run_dir / "metrics.jsonl")]
    return rows, strip(read_json(run_dir / "summary.json"))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def runs_planned(self, stage: str, runs: list) -> None:
        self.events.append(("planned", f"{stage}:{len(runs)}"))

    def run_started(self, run: Run) -> None:
        self.events.append(("started", run.name))

    def run_ended(self, outcome: launch.Outcome) -> None:
        self.events.append((outcome.action, outcome.name))


def test_skip_resume_force_and_stale(tmp_path):
    runs = make_runs(tmp_path, epochs=1)
    rec = Recorder()
    old = launch.set_reporter(rec)
    try:
        assert [run_state(r) for r in runs] == ["new", "new"]
        assert [o.action for o in run_all(runs, stage="t")] == ["trained", "trained"]
        assert [run_state(r) for r in runs] == ["done", "done"]
        stamp = (runs[0].out_dir / "summary.json").stat().st_mtime_ns
        # same config: skipped, nothing rewritten
        assert [o.action for o in run_all(runs, stage="t")] == ["skipped", "skipped"]
        assert (runs[0].out_dir / "summary.json").stat().st_mtime_ns == stamp
        # where a run executes is not part of its identity; what it computes is
        moved = Run("seed 0", runs[0].out_dir, {**runs[0].config, "workers": 2}, runs[0].train)
        assert run_state(moved) == "done"
        changed = Run("seed 0", runs[0].out_dir, {**runs[0].config, "lr_max": 0.01}, runs[0].train)
        assert run_state(changed) == "stale" and plan(changed) == "fresh"
        assert launch.config_diff(changed) == ["lr_max"]
        # an interrupted run (no summary yet, checkpoint on disk) is resumed, not restarted
        (runs[1].out_dir / "summary.json").unlink()
        assert run_state(runs[1]) == "resume" and plan(runs[1]) == "resume"
        with configure(force=True):
            assert [o.action for o in run_all(runs[:1], stage="t")] == ["trained"]
        assert (runs[0].out_dir / "summary.json").stat().st_mtime_ns != stamp
    finally:
        launch.set_reporter(old)
    assert ("planned", "t:2") in rec.events and ("skipped", "seed 1") in rec.events
    with pytest.raises(ValueError, match="--launcher"):
        with configure(launcher="kubernetes"):
            pass


def _task_pids(job) -> list[int]:
    """The worker processes of a LocalExecutor job (children of submitit's controller)."""
    return [p.pid for p in psutil.Process(job._process.pid).children()]


def _wait(cond, timeout: float, what: str) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_submitit_jobs_preempted_requeued_equal_in_process(tmp_path, monkeypatch):
    # the jobs are fresh interpreters: they must import this worktree's code
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    epochs = 4
    ref = make_runs(tmp_path / "inproc", epochs)
    with configure(launcher="local"):
        run_all(ref, stage="ref")

    runs = make_runs(tmp_path / "jobs", epochs)
    ex = launch.make_executor("submitit-local", tmp_path / "submitit", {"timeout_min": 5})
    jobs = submit(runs, ex)
    victim_run, victim = jobs[0]
    metrics = victim_run.out_dir / "metrics.jsonl"

    def epochs_logged() -> int:
        return sum(1 for r in read_jsonl(metrics) if r.get("epoch_end")) if metrics.exists() else 0

    _wait(lambda: epochs_logged() >= 1, 120, "the first epoch of the job to be preempted")
    pids = _task_pids(victim)
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGUSR2)  # what SLURM sends before preempting / at the time limit
    done_at_signal = epochs_logged()
    assert done_at_signal < epochs, "the job ended before it could be preempted"
    outcomes: dict = {}
    launch._wait_jobs(jobs, outcomes, 0.0)  # how run_all collects its jobs
    assert [outcomes[r.name].action for r in runs] == ["resumed", "trained"]

    log = victim.paths.stderr.read_text() + victim.paths.stdout.read_text()
    assert "Requeued job" in log, log[-2000:]
    # "resumed" above: the requeued job continued from the checkpoint instead of starting over
    cfg = read_json(victim_run.out_dir / "config.json")
    assert cfg["config"]["resume"] is False  # the first start's config.json is kept
    for r, (mine, _) in zip(ref, jobs):
        assert comparable(r.out_dir) == comparable(mine.out_dir)
    # a second pass through the launcher submits nothing: every run is done
    with configure(launcher="submitit-local", folder=tmp_path / "submitit"):
        assert [o.action for o in run_all(runs, stage="again")] == ["skipped", "skipped"]
    assert not list((tmp_path / "submitit" / "again").glob("*_submitted.pkl"))


def test_slurm_job_script_from_the_command_line(tmp_path, monkeypatch):
    """The sbatch script submitit writes for ``--launcher slurm`` (no cluster here: a stand-in
    ``srun`` on PATH passes submitit's "am I on a cluster" check; nothing is submitted)."""
    from analysis.reproduce import build_parser, slurm_params

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    argv = [
        "--launcher",
        "slurm",
        "--partition",
        "gpu",
        "--timeout_min",
        "90",
        "--gpus_per_node",
        "2",
        "--slurm_extra",
        "account=proj",
        "qos=high",
    ]
    params = slurm_params(build_parser().parse_args(argv))
    ex = launch.make_executor("slurm", tmp_path / "jobs", params)
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in (
        "--partition=gpu",
        "--time=90",
        "--gpus-per-node=2",
        "--account=proj",
        "--qos=high",
        "--signal=USR2@",
    ):
        assert f"#SBATCH {line}" in text, text


def _fail(resume: bool) -> None:
    raise ValueError("this run's trainer failed")


def _record_pid(out_dir: str, resume: bool) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "pid").write_text(str(os.getpid()))


def test_parallel_local_jobs_skip_and_fail(tmp_path):
    """``--jobs 2``: the runs train in two spawned worker processes (their CPU time measured
    there), a second call skips them, a failing run is raised by name. (Equality with runs
    trained in this process: the Ctrl-C test below.)"""
    par = make_runs(tmp_path / "par", epochs=1)
    rec = Recorder()
    old = launch.set_reporter(rec)
    try:
        with configure(jobs=2):
            outcomes = run_all(par, stage="par")
            first = list(rec.events)
            assert [o.action for o in run_all(par, stage="par")] == ["skipped", "skipped"]
    finally:
        launch.set_reporter(old)
    assert [o.action for o in outcomes] == ["trained", "trained"]
    assert all(o.cpu_seconds and o.cpu_seconds > 0 for o in outcomes)
    assert first[0] == ("planned", "par:2")
    assert sorted(first[1:]) == sorted(
        [("started", "seed 0"), ("started", "seed 1"), ("trained", "seed 0"), ("trained", "seed 1")]
    )
    # the runs really ran in worker processes, not in this one
    dirs = [tmp_path / f"p{i}" for i in (0, 1)]
    probes = [Run(d.name, d, {"d": d.name}, functools.partial(_record_pid, str(d))) for d in dirs]
    with configure(jobs=2):
        run_all(probes, stage="pids")
    pids = {int((r.out_dir / "pid").read_text()) for r in probes}
    assert os.getpid() not in pids
    bad = Run("broken", tmp_path / "broken", {"x": 1}, _fail)
    with configure(jobs=2, force=True), pytest.raises(ValueError, match="trainer failed"):
        run_all([bad, par[0]], stage="bad")
    with pytest.raises(ValueError, match="--jobs"):
        with configure(jobs=0):
            pass


_CTRL_C_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from suite.launch import configure, run_all
from test_launch import make_runs
with configure(jobs=2):
    run_all(make_runs(Path({root!r}), epochs={epochs}), stage="ctrl-c")
"""


def test_parallel_jobs_ctrl_c_saves_and_resumes(tmp_path):
    """A Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while two runs train
    in worker processes: the trainers save their checkpoint, the job exits, and the next call
    resumes the interrupted runs to results equal to uninterrupted ones."""
    import subprocess
    import sys

    epochs = 8
    script = _CTRL_C_SCRIPT.format(
        tests=str(ROOT / "tests"), root=str(tmp_path / "par"), epochs=epochs
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        start_new_session=True,  # its own process group: the SIGINT below reaches it alone
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = [tmp_path / "par" / f"seed{s}" / "metrics.jsonl" for s in (0, 1)]

    def both_started() -> bool:
        return all(m.exists() and any(r.get("epoch_end") for r in read_jsonl(m)) for m in metrics)

    _wait(both_started, 120, "both runs' first epoch")
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert "KeyboardInterrupt" in out, out[-2000:]
    runs = make_runs(tmp_path / "par", epochs)
    states = [read_json(r.out_dir / "summary.json").get("status") for r in runs]
    # the run that started first may have finished before the signal (the second worker starts
    # a little later); the other one was mid-way: both trainers saw the Ctrl-C
    assert "interrupted" in states and set(states) <= {"interrupted", "finished"}, (states, out)
    expected = ["resumed" if st == "interrupted" else "skipped" for st in states]
    with configure(jobs=2):
        assert [o.action for o in run_all(runs, stage="again")] == expected
    ref = make_runs(tmp_path / "ref", epochs)
    run_all(ref, stage="ref")
    for a, b in zip(ref, runs):
        assert comparable(a.out_dir) == comparable(b.out_dir)
