"""Running a stage's runs: skip finished ones, resume interrupted ones, here or on a SLURM cluster.

A reproduction stage describes each run as a ``Run`` (its directory, the config that identifies
it, and a ``train(resume)`` callable) and hands the list to ``run_all``:

    runs = [Run(f"sam seed {s}", out, cfg, functools.partial(train_one, cfg)) for ...]
    run_all(runs, stage="deep_nets")   # returns when every run's directory is complete

For each run, ``run_state`` decides from the directory alone:

- ``done``:   ``summary.json`` says the run ended (status finished/complete/diverged, or no status
              field: families that write the summary only at the end) and the stored config equals
              ``run.config`` (``suite.rundir.config_hash`` of both, keys in ``run.ignore`` left out)
              -> skipped;
- ``resume``: ``config.json`` holds the same config but the run did not end (Ctrl-C, a crash, a
              preempted job) -> ``train(resume=True)`` continues from the trainer's checkpoint;
- ``stale``:  the directory holds a run of another config -> deleted and trained afresh;
- ``new``:    no run there -> ``train(resume=False)``.

``configure(force=True)`` (``--force``) retrains every run from scratch.

Launchers (``configure(launcher=...)``):

- ``local`` (default): on this machine. ``jobs=1``: in this process, one run after the other;
  ``jobs=N``: N worker processes (spawned, each with cores / N torch threads), each taking the
  next run when its current one ends: the way to use every core of a CPU machine for a sweep of
  single-threaded runs. Results are the same as serial ones (every run is deterministic given its
  config; each worker process starts fresh). The workers sit in their own process group, so a
  Ctrl-C reaches this process alone, which passes it on once to every worker: a trainer with a
  Ctrl-C handler (``suite.cli.GracefulInterrupt``) saves its checkpoint and stops, one without
  stops at once (as it would in this process); the queued runs are dropped and ``run_all``
  raises KeyboardInterrupt. The next call resumes them. SIGTERM and SIGHUP (``kill``, ``docker
  stop``, a closed terminal) are handled the same way. Workers never outlive this process: if it
  dies without passing anything on (SIGKILL, the OOM killer), the kernel kills them at once
  (Linux ``PR_SET_PDEATHSIG``) and, on every platform, a thread in each worker watching its
  parent ends it, so a rerun never trains a run directory beside an orphan. As with any
  spawned worker, a script that calls ``run_all`` with ``jobs > 1`` needs the
  ``if __name__ == "__main__":`` guard.
- ``slurm``: one SLURM job per run through submitit (``slurm_partition``, ``timeout_min``, GPUs...
  from ``configure(slurm=...)``). A job that is preempted or reaches its time limit receives
  submitit's signal, requeues itself (submitit's checkpointing protocol) and, when it starts again,
  resumes from the trainer's last checkpoint in the run directory. ``run_all`` waits for every job
  (the results land in the same run directories) and raises if any job failed, naming it.
- ``submitit-local``: the same jobs as real subprocesses of this machine (submitit's
  ``LocalExecutor``): what the tests use, and a way to run a stage's runs in parallel.

One writer per run directory: ``execute`` holds the directory's lock
(``suite.rundir.run_dir_lock``) from deciding what to do until the trainer returns; a second
driver (or a trainer started by hand) on the same directory gets ``RunDirBusyError`` naming the
PID that holds it, and the run's rows are never written twice.

Progress: ``run_all`` reports each run to the reporter installed by ``set_reporter`` (the
``make reproduce`` progress display); without one it prints one line per run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.rundir import LOCK_NAME, config_hash, read_json, run_dir_lock

LAUNCHERS = ("local", "slurm", "submitit-local")
# summary["status"] values meaning "this run has ended and its result stands"; a diverged run is a
# result too (retraining it would diverge again).
ENDED = ("finished", "complete", "completed", "diverged")
# keys that name where or how a run executes, not what it computes
DEFAULT_IGNORE = ("out_dir", "resume", "device", "workers")


@dataclass(frozen=True)
class Run:
    """One run of a stage. ``train(resume: bool)`` must write the run directory ``out_dir`` with
    ``config.json`` holding ``config`` (minus ``ignore``) under its "config" key, and
    ``summary.json`` when it ends; with ``resume=True`` it continues from its own checkpoint."""

    name: str
    out_dir: Path
    config: Mapping[str, Any]
    train: Callable[..., Any]
    ignore: tuple[str, ...] = DEFAULT_IGNORE


@dataclass
class Outcome:
    """What ``run_all`` did with one run: action in {"skipped", "trained", "resumed", "failed"}."""

    name: str
    out_dir: Path
    action: str
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None
    cpu_seconds: float | None = None  # CPU time of the process that ran it (None: not measured)


@dataclass
class _Settings:
    launcher: str = "local"
    force: bool = False
    jobs: int = 1
    folder: Path = Path("results/.submitit")
    slurm: dict[str, Any] = field(default_factory=dict)
    poll_s: float = 2.0


_settings = _Settings()
_reporter: Any = None


# ------------------------------------------------------------------------------ configuration
@contextlib.contextmanager
def configure(
    *,
    launcher: str = "local",
    force: bool = False,
    folder: str | Path | None = None,
    slurm: Mapping[str, Any] | None = None,
    poll_s: float = 2.0,
    jobs: int = 1,
) -> Iterator[None]:
    """Set the launcher, --force and the local launcher's parallel ``jobs`` for the ``run_all``
    calls inside the block.

    ``folder``: where submitit keeps its job files and logs (default results/.submitit).
    ``slurm``: executor parameters, e.g. {"slurm_partition": "gpu", "timeout_min": 240,
    "gpus_per_node": 1, "cpus_per_task": 8}."""
    global _settings
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher {launcher!r}: choose from {', '.join(LAUNCHERS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs {jobs!r}: give a whole number of parallel runs >= 1")
    old = _settings
    _settings = _Settings(
        launcher=launcher,
        force=force,
        folder=Path(folder) if folder is not None else old.folder,
        slurm=dict(slurm or {}),
        poll_s=poll_s,
        jobs=jobs,
    )
    try:
        yield
    finally:
        _settings = old


def set_reporter(reporter: Any) -> Any:
    """Install the progress reporter (an object with ``runs_planned(stage, runs)``,
    ``run_started(run)``, ``run_ended(outcome)``); returns the previous one."""
    global _reporter
    old, _reporter = _reporter, reporter
    return old


def _report(method: str, *args: Any) -> None:
    if _reporter is not None:
        getattr(_reporter, method)(*args)
    elif method == "run_ended":
        o = args[0]
        extra = "".join(f"; {x}" for x in (o.error, o.note) if x)
        print(f"  {o.name}: {o.action} ({o.seconds:.1f} s){extra}", flush=True)


# ------------------------------------------------------------------------------ run state
def _identity(config: Mapping[str, Any], ignore: Sequence[str]) -> str:
    return config_hash({k: v for k, v in dict(config).items() if k not in ignore})


def config_diff(run: Run) -> list[str]:
    """The config keys (outside ``run.ignore``) whose values differ between ``run.config`` and
    the run directory's ``config.json`` (all of ``run.config``'s keys when there is none)."""
    try:
        stored = read_json(Path(run.out_dir) / "config.json", want_dict=True).get("config", {})
    except (OSError, ValueError):
        stored = {}
    keys = sorted((set(stored) | set(run.config)) - set(run.ignore))
    # compared as JSON (a tuple here equals the list json wrote there)
    return [
        k
        for k in keys
        if k not in stored
        or k not in run.config
        or config_hash({"v": stored[k]}) != config_hash({"v": run.config[k]})
    ]


def run_state(run: Run) -> str:
    """ "done", "resume", "stale" or "new" for ``run`` (see the module docstring)."""
    d = Path(run.out_dir)
    cfg_path = d / "config.json"
    if not cfg_path.exists():
        return "stale" if d.exists() and any(p.name != LOCK_NAME for p in d.iterdir()) else "new"
    try:
        stored = read_json(cfg_path, want_dict=True).get("config", {})
    except (OSError, ValueError):
        return "stale"
    if _identity(stored, run.ignore) != _identity(run.config, run.ignore):
        return "stale"
    summary_path = d / "summary.json"
    if summary_path.exists():
        try:
            status = read_json(summary_path, want_dict=True).get("status", "finished")
        except (OSError, ValueError):
            return "resume"
        if status in ENDED:
            return "done"
    return "resume"


def plan(run: Run, force: bool = False) -> str:
    """The action for ``run``: "skip", "resume" or "fresh" (the directory is cleared first)."""
    state = run_state(run)
    if force:
        return "fresh"
    return {"done": "skip", "resume": "resume", "stale": "fresh", "new": "fresh"}[state]


def _clear(out_dir: Path) -> None:
    """Empty ``out_dir`` for a fresh run, keeping the lock file its writer holds (deleting it
    would let a second writer lock a new file of the same name)."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _stale_note(run: Run) -> str | None:
    """Why a run is retrained although its directory holds a run (a silent mismatch between the
    stage's config and the trainer's stored one would retrain it on every call)."""
    if run_state(run) != "stale":
        return None
    keys = config_diff(run)
    return f"retrained: config changed in {', '.join(keys[:8]) or 'an unreadable config.json'}"


def execute(run: Run, force: bool = False) -> str:
    """Bring one run to completion in this process; returns "skipped", "trained" or "resumed".

    Raises KeyboardInterrupt when the trainer stopped on a Ctrl-C (its summary says
    "interrupted"), so that the whole job stops with the checkpoint saved. The run directory's
    lock is held throughout: another live writer is a ``RunDirBusyError`` naming its PID."""
    if plan(run, force) == "skip":  # a finished run is only read: no lock needed
        return "skipped"
    with run_dir_lock(run.out_dir):
        action = plan(run, force)  # again: another writer may have finished it meanwhile
        if action == "skip":
            return "skipped"
        if action == "fresh":
            _clear(Path(run.out_dir))
        run.train(resume=action == "resume")
        summary = Path(run.out_dir) / "summary.json"
        if summary.exists() and read_json(summary).get("status") == "interrupted":
            raise KeyboardInterrupt(f"{run.name} interrupted; its checkpoint is in {run.out_dir}")
    return "trained" if action == "fresh" else "resumed"


# ------------------------------------------------------------------------------ launchers
def run_all(runs: Sequence[Run], *, stage: str = "") -> list[Outcome]:
    """Bring every run of ``runs`` to completion with the configured launcher (see module doc)."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names) or len({str(r.out_dir) for r in runs}) != len(runs):
        raise ValueError(f"stage {stage}: runs must have distinct names and directories")
    _report("runs_planned", stage, list(runs))
    if _settings.launcher != "local":
        return _run_submitit(runs, stage)
    todo = [r for r in runs if plan(r, _settings.force) != "skip"]
    if _settings.jobs > 1 and len(todo) > 1:
        return _run_pool(runs, min(_settings.jobs, len(todo)))
    return [_run_local(r) for r in runs]


def _timed_execute(run: Run, force: bool, in_worker: bool = False) -> tuple[str, float, float]:
    """``execute`` with its wall-clock and this process's CPU seconds. In a pool worker a Ctrl-C
    passed on by ``run_all`` interrupts the run like in the main process (idle, it is ignored)."""
    import signal

    if in_worker:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        action = execute(run, force)
        return action, time.perf_counter() - t0, time.process_time() - c0
    finally:
        if in_worker:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_local(run: Run) -> Outcome:
    _report("run_started", run)
    note = _stale_note(run)
    action, wall, cpu = _timed_execute(run, _settings.force)
    out = Outcome(run.name, Path(run.out_dir), action, wall, note=note, cpu_seconds=cpu)
    _report("run_ended", out)
    return out


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the process that started it dies, however it dies (SIGKILL
    included, when it cannot pass anything on). Its own process group keeps a terminal's
    signals away from it, so without this an orphan would train on, racing the rerun.

    Two mechanisms: on Linux the kernel sends SIGKILL at the parent's death (prctl
    PR_SET_PDEATHSIG, through ctypes); everywhere, a daemon thread waits on multiprocessing's
    parent sentinel (a pipe that closes when the parent dies) and kills this process."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the prctl above took effect
        os.kill(os.getpid(), signal.SIGKILL)

    import multiprocessing as mp
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:  # pragma: no cover - not a multiprocessing child
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _worker_init(threads: int, parent_pid: int | None = None) -> None:
    """A pool worker: its share of the cores, its own process group (a terminal's Ctrl-C goes to
    ``run_all``'s process, which passes it on once), Ctrl-C ignored while idle, and its death
    tied to its parent's (``_die_with_parent``)."""
    import signal

    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    try:
        import torch
    except ImportError:  # pragma: no cover - the suite always has torch
        return
    torch.set_num_threads(threads)


def cpu_count() -> int:
    """The CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _as_ctrl_c(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_signals_as_ctrl_c() -> dict[int, Any]:
    """While the pool runs, SIGTERM and SIGHUP stop it like a Ctrl-C (the workers save and
    stop), instead of killing this process alone. Only from the main thread (signals)."""
    import signal
    import threading

    old: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return old
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            old[sig] = signal.signal(sig, _as_ctrl_c)
    return old


def _restore_handlers(old: dict[int, Any]) -> None:
    import signal

    for sig, handler in old.items():
        signal.signal(sig, handler)


def _run_pool(runs: Sequence[Run], jobs: int) -> list[Outcome]:
    """The local launcher with ``jobs`` worker processes (module docstring). Runs are handed out
    in order, one per free worker; the first failure stops handing out and is raised once the
    running ones have ended."""
    import concurrent.futures as cf
    import multiprocessing as mp

    outcomes: dict[str, Outcome] = {}
    queue: list[tuple[Run, str | None]] = []
    for r in runs:
        if plan(r, _settings.force) == "skip":
            outcomes[r.name] = Outcome(r.name, Path(r.out_dir), "skipped", cpu_seconds=0.0)
            _report("run_ended", outcomes[r.name])
        else:
            queue.append((r, _stale_note(r)))
    # spawn, not fork: forking a process whose torch thread pools are running is unsafe
    pool = cf.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(max(1, cpu_count() // jobs), os.getpid()),
    )
    running: dict[Any, tuple[Run, str | None]] = {}
    error: BaseException | None = None
    old_handlers = _stop_signals_as_ctrl_c()
    try:
        while queue or running:
            while queue and len(running) < jobs and error is None:
                r, note = queue.pop(0)
                _report("run_started", r)
                running[pool.submit(_timed_execute, r, _settings.force, True)] = (r, note)
            if not running:
                break
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                r, note = running.pop(fut)
                try:
                    action, wall, cpu = fut.result()
                except BaseException as e:  # noqa: BLE001 - raised below, after the others end
                    error = error or e
                    continue
                outcomes[r.name] = Outcome(
                    r.name, Path(r.out_dir), action, wall, note=note, cpu_seconds=cpu
                )
                _report("run_ended", outcomes[r.name])
    except KeyboardInterrupt:
        # pass the Ctrl-C on to the workers (their trainers save and stop), drop what is queued
        import signal

        for proc in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        _restore_handlers(old_handlers)
    pool.shutdown(wait=True)
    if error is not None:
        raise error
    return [outcomes[r.name] for r in runs]


class RunJob:
    """The callable a submitit job executes: ``execute`` on the run directory's state at start.

    submitit's checkpointing protocol: on preemption or timeout it calls ``checkpoint()`` and
    requeues the returned submission (this object again). The trainer saves its own checkpoints
    in the run directory, so the requeued job decides "resume" from the directory when it starts;
    nothing needs saving at signal time."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __call__(self) -> str:
        # A requeued job must resume, not start over, even under --force: force applied at the
        # first submission (run_all cleared the directory before submitting).
        return execute(self.run, force=False)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(RunJob(self.run))


def make_executor(kind: str, folder: Path, params: Mapping[str, Any]) -> Any:
    """A submitit executor: SLURM (``kind="slurm"``) or local subprocesses."""
    import submitit

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    else:
        ex = submitit.LocalExecutor(folder=folder)
    p = dict(params)
    if kind != "slurm":  # LocalExecutor knows no slurm_* keys
        p = {k: v for k, v in p.items() if not k.startswith("slurm_")}
    p.setdefault("timeout_min", 60)
    ex.update_parameters(**p)
    return ex


def submit(runs: Sequence[Run], executor: Any, force: bool = False) -> list[tuple[Run, Any]]:
    """Submit one job per run that is not done; returns (run, job) pairs (job None: skipped)."""
    jobs = []
    for r in runs:
        action = plan(r, force)
        if action == "skip":
            jobs.append((r, None))
            continue
        if action == "fresh":
            _clear(Path(r.out_dir))
        jobs.append((r, executor.submit(RunJob(r))))
    return jobs


def _run_submitit(runs: Sequence[Run], stage: str) -> list[Outcome]:
    folder = _settings.folder / (stage or "stage")
    executor = make_executor(_settings.launcher, folder, _settings.slurm)
    t0 = time.perf_counter()
    pending = submit(runs, executor, _settings.force)
    outcomes: dict[str, Outcome] = {}
    for r, job in pending:
        if job is None:
            outcomes[r.name] = Outcome(r.name, Path(r.out_dir), "skipped")
            _report("run_ended", outcomes[r.name])
        else:
            _report("run_started", r)
    try:
        _wait_jobs(pending, outcomes, t0)
    except KeyboardInterrupt:
        # Cancel what is still queued or running, so that a re-run does not race a live job on
        # the same run directory; each run resumes from its last checkpoint next time.
        for r, job in pending:
            if job is not None and r.name not in outcomes:
                job.cancel(check=False)
        raise
    failed = [o for o in outcomes.values() if o.action == "failed"]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(runs)} jobs failed (logs under {folder}): "
            + "; ".join(f"{o.name}: {o.error}" for o in failed)
        )
    return [outcomes[r.name] for r in runs]


def _wait_jobs(pending: list[tuple[Run, Any]], outcomes: dict[str, Outcome], t0: float) -> None:
    while len(outcomes) < len(pending):
        for r, job in pending:
            if r.name in outcomes or not job.done():
                continue
            try:
                action = job.result()
                out = Outcome(r.name, Path(r.out_dir), action, time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - a failed job is reported, the others go on
                err = f"job {job.job_id} failed: {str(e).strip().splitlines()[-1][:300]}"
                out = Outcome(r.name, Path(r.out_dir), "failed", time.perf_counter() - t0, err)
            outcomes[r.name] = out
            _report("run_ended", out)
        time.sleep(_settings.poll_s if len(outcomes) < len(pending) else 0)
