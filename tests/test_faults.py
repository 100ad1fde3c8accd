"""Fault injection: what a user's machine does to a run, with real processes, signals and files.

Every case asserts the three things the suite promises under faults: nothing lost (the rows and
files a run had are still there and readable), nothing duplicated (each metric row exactly once),
and an error that names the file or flag and says what to do (no traceback).

- a driver (``suite.launch.run_all`` with two worker processes) killed by SIGKILL, SIGTERM or
  SIGHUP while its workers train: the workers die with it, and the rerun finishes every run with
  each row once;
- two writers on one run directory (two trainers, or a launcher and a trainer): the second is
  refused naming the first's PID;
- truncated, missing and garbage run files (metrics.jsonl, summary.json, config.json,
  checkpoint.pt, best.pt, a stray checkpoint, a temporary file of a killed writer);
- a full disk: a small tmpfs where this process may mount one (root), else a file-size limit
  (RLIMIT_FSIZE, a real EFBIG from the kernel);
- an --out_dir that is a file or read-only, a data file without read permission, a --data_dir
  that lacks the files, and the bad flag values the reliability review found.

The trainers run in tiny configs (a diagonal grid of two runs, a Fashion-MNIST MLP with 16 hidden
units on 3% of the data), so the module takes well under a minute on an idle core.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch

from suite.rundir import (
    LOCK_NAME,
    RunDirBusyError,
    read_json,
    read_jsonl,
    remove_stale_tmp,
    run_dir_lock,
)

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
DEEP = str(ROOT / "deep_nets" / "train.py")
DIAG = str(ROOT / "diagonal_linear_nets" / "train.py")
# the tiny deep_nets run: Fashion-MNIST (the Debian package of `make data`), an MLP of 16 units
TINY = (
    "--dataset fashion_mnist --model mlp --model_width 16 --batch_size 32 --frac_train 0.03 "
    "--lr_max 0.05 --n_eval 256 --n_eval_train 256 --n_sharpness 64 --sharpness_m 32 "
    "--sam_rho 0.1 --workers 1"
).split()
TIMING = ("seconds", "per_s")


def _wait(cond, timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll ``cond`` until true; the deadline is generous (a busy machine), never a threshold."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _end(pids) -> None:
    """Clean-up: end the processes this test started (by PID), if any outlived the test."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _rows(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not any(t in k for t in TIMING)}
        for r in read_jsonl(run_dir / "metrics.jsonl")
    ]


def _deep_main(argv: list[str], capsys) -> tuple[int, str]:
    """deep_nets/train.py's main in this process: (exit status, stderr)."""
    from deep_nets.train import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _cli(main, argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-epoch tiny deep_nets run (trained once for the module; copy it to edit)."""
    from deep_nets.train import main

    out = tmp_path_factory.mktemp("deep") / "run"
    assert main(TINY + ["--epochs", "2", "--out_dir", str(out)]) == 0
    return out


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ------------------------------------------------------------------ a driver killed mid-training
DRIVER = """
import dataclasses, functools, sys
from pathlib import Path
from suite.launch import Run, configure, run_all
from diagonal_linear_nets.train import TrainConfig, stored_config, train

ITERS = {iters}

def go(cfg, resume):
    train(dataclasses.replace(cfg, resume=resume))

def runs(root):
    out = []
    for seed in (0, 1):
        cfg = TrainConfig(out_dir=str(root / f"seed{{seed}}"), algo=["gd", "1sam"], rho=[0.1],
                          seeds=[seed], iters=ITERS, log_points=40, checkpoint_every=0.05)
        out.append(Run(f"seed {{seed}}", Path(cfg.out_dir), stored_config(cfg),
                       functools.partial(go, cfg)))
    return out

if __name__ == "__main__":
    with configure(jobs=2):
        run_all(runs(Path(sys.argv[1])), stage="faults")
"""
# about 10 s of the C kernel per run: long enough that no run finishes while the other worker
# is still starting (the kills must land mid-run), short enough for the final rerun
DRIVER_ITERS = 1_000_000


def _workers(driver: psutil.Process) -> list[int]:
    return [
        p.pid
        for p in driver.children()
        if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in p.cmdline()[-1]
    ]


def _unfinished(d: Path) -> bool:
    try:
        return read_json(d / "summary.json")["status"] != "finished"
    except FileNotFoundError:
        return True


def test_killed_driver_takes_its_workers_along_and_the_rerun_logs_each_row_once(tmp_path):
    """The driver is killed three times while its two workers train (SIGKILL: nothing can be
    passed on; SIGTERM and SIGHUP: handled like a Ctrl-C), each time restarted; after each kill
    every worker is gone (before: they trained on with PPID 1, and the rerun beside them
    duplicated rows, 193 -> 261 in the review's ReLU stage), and the last rerun finishes both
    runs with each metric row exactly once."""
    from diagonal_linear_nets.simulator import log_schedule

    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(iters=DRIVER_ITERS)))
    results = tmp_path / "results"
    dirs = [results / "seed0", results / "seed1"]
    started: list[int] = []
    log = (tmp_path / "driver.log").open("w")

    def stamps() -> list[int]:
        return [
            (d / "checkpoint.npz").stat().st_mtime_ns if (d / "checkpoint.npz").exists() else 0
            for d in dirs
        ]

    try:
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGHUP):
            before = stamps()
            proc = subprocess.Popen(
                [PY, str(script), str(results)], env=ENV, cwd=ROOT, stdout=log, stderr=log
            )
            started.append(proc.pid)
            # both workers are training: each unfinished run has written a checkpoint since this
            # start (a run may finish in a phase on a fast machine: it is then skipped on restart)
            _wait(
                lambda b=before: all(
                    x != y or not _unfinished(d) for x, y, d in zip(stamps(), b, dirs)
                ),
                180,
                "checkpoints",
            )
            workers = _workers(psutil.Process(proc.pid))
            started += workers
            assert len(workers) == 2 and any(_unfinished(d) for d in dirs)  # lands mid-run
            mid = [d for d in dirs if _unfinished(d)]
            proc.send_signal(sig)
            proc.wait(timeout=120)
            # no orphan: every worker ends with its driver
            _wait(lambda w=workers: all(_gone(p) for p in w), 60, f"the workers to die ({sig!r})")
            if sig != signal.SIGKILL:  # passed on as a Ctrl-C: each trainer saved and stopped
                status = [read_json(d / "summary.json")["status"] for d in mid]
                assert set(status) <= {"interrupted", "finished"}, status
        rerun = subprocess.run(
            [PY, str(script), str(results)],
            env=ENV,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    finally:
        _end(started)
        log.close()
    expected = len(log_schedule(DRIVER_ITERS, 40)) * 2  # rows per run directory: 2 runs each
    for d in dirs:
        rows = read_jsonl(d / "metrics.jsonl")
        keys = [(r["iter"], r["run"]) for r in rows]
        assert len(keys) == len(set(keys)) == expected, (d, len(keys), len(set(keys)), expected)
        assert read_json(d / "summary.json")["status"] == "finished"
        assert not list(d.glob(".*.tmp"))


# ------------------------------------------------------------------ two writers on one folder
def test_second_trainer_on_a_run_directory_is_refused_naming_the_first(tmp_path):
    """Two deep_nets --resume at once: the second exits 2 naming the PID that writes the folder;
    the first's rows stay each exactly once (before: both exit 0, epochs 2-5 logged twice)."""
    out = tmp_path / "run"
    flags = TINY + ["--epochs", "400", "--out_dir", str(out)]
    first = subprocess.Popen(
        [PY, DEEP, *flags],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: (out / "checkpoint.pt").exists(), 180, "the first epoch's checkpoint")
        second = subprocess.run(
            [PY, DEEP, *flags, "--resume"],
            env=ENV,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.poll() is None  # the first still runs: the two did overlap
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"PID {first.pid}" in second.stderr and str(out) in second.stderr
        assert "Traceback" not in second.stderr
        first.send_signal(signal.SIGINT)  # the first saves and stops (a Ctrl-C)
        assert first.wait(timeout=120) == 130, first.stderr.read()[-2000:]
    finally:
        _end([first.pid])
    first.stderr.close()
    rows = read_jsonl(out / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), "a metric row was written twice"
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["state"]["n_rows"] == len(rows)  # nothing lost: the checkpoint counts every row
    assert not (out / LOCK_NAME).exists()  # released by the writer that held it


def test_launcher_refuses_a_run_directory_another_process_writes(tmp_path):
    """A second driver (suite.launch.execute) on a directory whose lock a live process holds:
    RunDirBusyError naming that PID, and the directory is not cleared."""
    from suite.launch import Run, execute

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')  # another config's partial run
    holder = subprocess.Popen(
        [
            PY,
            "-c",
            "import sys, time; from suite.rundir import run_dir_lock\n"
            "with run_dir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
            str(out),
        ],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        trained = []
        run = Run("r", out, {"a": 1}, lambda resume: trained.append(resume))
        with pytest.raises(RunDirBusyError, match=f"PID {holder.pid}"):
            execute(run)
        assert trained == [] and (out / "metrics.jsonl").read_text() == '{"step": 0}\n'
    finally:
        _end([holder.pid])
        holder.wait()
        holder.stdout.close()
    # the holder is dead: its lock died with it, the next writer gets the folder
    with run_dir_lock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())


# ------------------------------------------------------------------ truncated and garbage files
@pytest.mark.parametrize("damage", ["torn", "missing"])
def test_resume_of_a_finished_run_with_lost_rows_refuses_and_keeps_the_summary(
    tiny_run, tmp_path, capsys, damage
):
    """Before: exit 0 and summary.json rewritten "finished" with epoch 1's numbers (torn) or
    nulls (missing)."""
    out = _copy(tiny_run, tmp_path / "run")
    metrics, summary = out / "metrics.jsonl", (out / "summary.json").read_bytes()
    if damage == "torn":
        metrics.write_text(metrics.read_text()[:-200])
    else:
        metrics.unlink()
    rc, err = _deep_main(TINY + ["--epochs", "2", "--out_dir", str(out), "--resume"], capsys)
    assert rc == 2 and str(metrics) in err and "fewer than" in err
    assert (out / "summary.json").read_bytes() == summary  # nothing invented


@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt"])
@pytest.mark.parametrize("content", [b"", b"garbage" * 10, "truncate"])
def test_corrupt_checkpoint_on_resume_names_the_file(tiny_run, tmp_path, capsys, name, content):
    out = _copy(tiny_run, tmp_path / "run")
    f = out / name
    f.write_bytes(f.read_bytes()[:500] if content == "truncate" else content)
    (out / "summary.json").unlink()  # an interrupted run
    rows = (out / "metrics.jsonl").read_bytes()
    rc, err = _deep_main(TINY + ["--epochs", "2", "--out_dir", str(out), "--resume"], capsys)
    assert rc == 2 and str(f) in err and "refused" in err, err
    assert "weights_only" not in err and "Traceback" not in err
    assert (out / "metrics.jsonl").read_bytes() == rows  # nothing lost


def test_stray_checkpoint_is_not_resumed_under_other_flags(tiny_run, tmp_path, capsys):
    """Before: "resumed ... at epoch 2" and a config.json claiming flags the weights never had."""
    out = tmp_path / "stray"
    out.mkdir()
    shutil.copy(tiny_run / "checkpoint.pt", out)
    argv = TINY + ["--epochs", "4", "--out_dir", str(out), "--resume"]
    argv[argv.index("--lr_max") + 1] = "0.01"
    rc, err = _deep_main(argv, capsys)
    assert rc == 2 and "--lr_max 0.05 (now 0.01)" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # nothing written


@pytest.mark.parametrize("garbage", ["{x", "[1, 2]", "\xff\xfe"])
def test_garbage_config_json_is_named_by_every_cli(tmp_path, capsys, garbage):
    from deep_nets.eval_sharpness import main as eval_main
    from diagonal_linear_nets.train import main as diag_main
    from one_layer_relu_nets.train import main as relu_main

    out = tmp_path / "run"
    out.mkdir()
    cfg = out / "config.json"
    cfg.write_bytes(garbage.encode("latin-1"))
    (out / "checkpoint.pt").write_bytes(b"x")
    cases = [
        (_deep_main, [*TINY, "--out_dir", str(out), "--resume"]),
        (lambda a, c: _cli(diag_main, a, c), ["--iters", "5", "--out_dir", str(out), "--resume"]),
        (
            lambda a, c: _cli(relu_main, a, c),
            ["--iterations", "5", "--out_dir", str(out), "--resume"],
        ),
        (lambda a, c: _cli(eval_main, a, c), ["--model_path", str(out), "--measure", "msharpness"]),
    ]
    for run, argv in cases:
        rc, err = run(argv, capsys)
        assert rc == 2 and str(cfg) in err and "Traceback" not in err, (argv, err)
    assert cfg.read_bytes() == garbage.encode("latin-1")  # left for the user to restore


def test_diagonal_garbage_summary_is_retrained_not_a_crash(tmp_path):
    """A garbage summary.json in a finished diagonal run: the stage (suite.launch) resumes it and
    writes a valid summary with each row once (before: JSONDecodeError on every rerun)."""
    from diagonal_linear_nets.simulator import log_schedule
    from diagonal_linear_nets.train import TrainConfig, stored_config, train
    from suite.launch import Run, execute

    cfg = TrainConfig(out_dir=str(tmp_path / "run"), algo=["gd", "1sam"], iters=300)
    run = Run(
        "r",
        Path(cfg.out_dir),
        stored_config(cfg),
        lambda resume: train(TrainConfig(**{**cfg.__dict__, "resume": resume})),
    )
    assert execute(run) == "trained"
    rows = _rows(run.out_dir)
    (run.out_dir / "summary.json").write_text("nonsense\n")
    assert execute(run) == "resumed"
    assert read_json(run.out_dir / "summary.json")["status"] == "finished"
    assert _rows(run.out_dir) == rows and len(rows) == 2 * len(log_schedule(300, 200))


def test_diagonal_run_resumes_under_another_spelling_of_its_path(tmp_path, monkeypatch):
    """Relative then absolute --out_dir, then a copied tree (before: '--out_dir ... (now ...)')."""
    from diagonal_linear_nets.train import main

    monkeypatch.chdir(tmp_path)
    flags = ["--algo", "gd", "1sam", "--iters", "3000", "--checkpoint_every", "0"]
    assert main([*flags, "--out_dir", "rel", "--stop_after_iter", "1000"]) == 0
    assert "out_dir" not in read_json(tmp_path / "rel" / "config.json")["config"]
    shutil.copytree(tmp_path / "rel", tmp_path / "copy")
    assert main([*flags, "--out_dir", str(tmp_path / "rel"), "--resume"]) == 0
    assert main([*flags, "--out_dir", str(tmp_path / "copy"), "--resume"]) == 0
    assert _rows(tmp_path / "rel") == _rows(tmp_path / "copy")
    keys = [(r["iter"], r["run"]) for r in read_jsonl(tmp_path / "rel" / "metrics.jsonl")]
    assert len(keys) == len(set(keys))


def test_temporary_files_of_dead_writers_are_removed_on_start(tiny_run, tmp_path, capsys):
    """A SIGKILL between write and rename leaves .checkpoint.pt.<pid>.tmp (full size); the next
    writer removes those of dead PIDs and keeps a live process's."""
    out = _copy(tiny_run, tmp_path / "run")
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([PY, "-c", "import time; time.sleep(120)"])
    try:
        stale = out / f".checkpoint.pt.{dead.pid}.tmp"
        kept = out / f".best.pt.{live.pid}.tmp"
        stale.write_bytes((out / "checkpoint.pt").read_bytes())
        kept.write_bytes(b"x")
        (out / "summary.json").unlink()  # an interrupted run
        rc, err = _deep_main(TINY + ["--epochs", "2", "--out_dir", str(out), "--resume"], capsys)
        assert rc == 0, err
        assert not stale.exists() and kept.exists()
        assert remove_stale_tmp(out) == []  # the live writer's file is still not touched
    finally:
        _end([live.pid])
        live.wait()
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and len(steps) == 3  # epochs 0..2 once each


def test_divergence_in_the_first_epoch_names_no_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    argv = TINY + ["--epochs", "1", "--out_dir", str(out)]
    argv[argv.index("--lr_max") + 1] = "1e30"
    rc, err = _deep_main(argv, capsys)
    assert rc == 1 and "non-finite loss" in err
    assert not (out / "checkpoint.pt").exists() and "checkpoint.pt" not in err
    assert read_json(out / "summary.json")["status"] == "diverged"


# ------------------------------------------------------------------ a full disk
def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return r.returncode == 0


def test_full_disk_names_the_file_keeps_the_run_and_resumes_exactly(tmp_path):
    """The tiny run with 512 hidden units (a 5.4 MB best.pt, an 8 MB checkpoint) on an 8 MB tmpfs:
    exit 1 naming the file; nothing torn, no temporary file left; moved to a bigger disk the
    run resumes to the same rows as an uninterrupted one. Without mount (not root), a file-size
    limit gives the kernel's EFBIG instead of ENOSPC."""
    disk = tmp_path / "disk"
    mounted = _tmpfs(disk, "8m")
    out = disk / "run"
    flags = TINY + ["--epochs", "2"]
    flags[flags.index("--model_width") + 1] = "512"
    limit = None
    if not mounted:

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, 6 << 20))

    try:
        full = subprocess.run(
            [PY, DEEP, *flags, "--out_dir", str(out)],
            env=ENV,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=limit,
        )
        assert full.returncode == 1, full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        why = os.strerror(errno.ENOSPC if mounted else errno.EFBIG)
        assert why in full.stderr and f"cannot write {out}" in full.stderr
        assert not list(out.glob(".*.tmp"))
        read_json(out / "config.json")  # every file left is whole
        rows = read_jsonl(out / "metrics.jsonl")
        assert rows and [r["step"] for r in rows] == sorted({r["step"] for r in rows})
        moved = shutil.copytree(out, tmp_path / "moved")
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
    from deep_nets.train import main

    assert main(flags + ["--out_dir", str(moved), "--resume"]) == 0
    assert main(flags + ["--out_dir", str(tmp_path / "ref")]) == 0
    assert _rows(moved) == _rows(tmp_path / "ref")


# ------------------------------------------------------------------ --out_dir, data files
def _read_only_dir(tmp_path: Path) -> tuple[Path, contextlib.ExitStack]:
    """A folder this process cannot write: a read-only tmpfs as root, else mode 0500."""
    ro, stack = tmp_path / "ro", contextlib.ExitStack()
    if _tmpfs(ro, "64k"):
        stack.callback(subprocess.run, ["umount", str(ro)], check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    else:
        ro.chmod(0o500)
        stack.callback(ro.chmod, 0o700)
    return ro, stack


def test_out_dir_that_is_a_file_or_read_only_is_named_before_any_work(tmp_path, capsys):
    from diagonal_linear_nets.train import main as diag_main
    from one_layer_relu_nets.train import main as relu_main

    a_file = tmp_path / "file"
    a_file.write_text("x")
    ro, cleanup = _read_only_dir(tmp_path)
    with cleanup:
        for out, what in (
            (a_file, "is a file"),
            (a_file / "sub", "is a file"),
            (ro, "not writable"),
            (ro / "sub", "not writable"),
        ):
            for run in (
                lambda a, c: _deep_main([*TINY, *a], c),
                lambda a, c: _cli(diag_main, ["--iters", "5", *a], c),
                lambda a, c: _cli(relu_main, ["--iterations", "5", *a], c),
            ):
                rc, err = run(["--out_dir", str(out)], capsys)
                assert rc == 2 and "--out_dir" in err and what in err, err
        assert list(ro.iterdir()) == []


def _fashion_files(d: Path, names=None) -> None:
    """Copy the system Fashion-MNIST's files (all four, or ``names``) into ``d``."""
    from deep_nets.data import FASHION_MNIST_FILES, SYSTEM_FASHION_MNIST_DIR

    d.mkdir(parents=True, exist_ok=True)
    for n in names if names is not None else FASHION_MNIST_FILES:
        shutil.copy(SYSTEM_FASHION_MNIST_DIR / n, d / n)


def test_a_given_data_dir_is_used_or_refused_never_replaced(tmp_path):
    """Before: an empty --data_dir, or one with 3 of the 4 files, trained on the system copy."""
    from deep_nets.data import FASHION_MNIST_FILES, DataError, load_dataset

    names = list(FASHION_MNIST_FILES)
    empty, partial = tmp_path / "empty", tmp_path / "partial"
    empty.mkdir()
    _fashion_files(partial, names[:3])
    for d, missing in ((empty, names), (partial, names[3:])):
        with pytest.raises(DataError, match=f"--data_dir={d}") as e:
            load_dataset("fashion_mnist", d, seed=0, download=False)
        assert all(m in str(e.value) for m in missing)
        assert all(
            m not in str(e.value).split("missing:")[1].split(")")[0]
            for m in names[:3]
            if m not in missing
        )
    _fashion_files(partial, names[3:])
    s = load_dataset("fashion_mnist", partial, seed=0, download=False)
    assert {Path(f["path"]).parent for f in s.info["files"]} == {partial}


def test_unreadable_data_file_is_named(tmp_path):
    """A data file without read permission: DataError naming it (before: PermissionError
    traceback). Root reads any file, so as root the loader runs in a child that drops to the
    user nobody."""
    import tempfile

    from deep_nets.data import DataError, load_dataset

    if os.geteuid() != 0:
        d = tmp_path / "fm"
        _fashion_files(d)
        bad = d / "train-labels-idx1-ubyte.gz"
        bad.chmod(0)
        with pytest.raises(DataError, match=f"cannot read {bad}"):
            load_dataset("fashion_mnist", d, seed=0, download=False)
        return
    # a folder the user nobody can reach (pytest's tmp_path is root's alone), one file unreadable
    d = Path(tempfile.mkdtemp(prefix="faults-fm-"))
    d.chmod(0o755)
    _fashion_files(d)
    bad = d / "train-labels-idx1-ubyte.gz"
    bad.chmod(0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the user nobody, the real loader
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_dataset("fashion_mnist", d, seed=0, download=False)
                msg = "loaded"
            except DataError as e:
                msg = "DataError " + str(e)
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                msg = f"{type(e).__name__} {e}"
            os.write(write, msg.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        msg = f.read()
    os.waitpid(pid, 0)
    shutil.rmtree(d)
    assert msg.startswith("DataError") and f"cannot read {bad}" in msg, msg
    assert os.strerror(errno.EACCES) in msg


# ------------------------------------------------------------------ flag values
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--momentum", "1.5"], "--momentum"),
        (["--lr_max", "1e308"], "--lr_max"),
        (["--weight_decay", "1e308"], "--weight_decay"),
        (["--sharpness_rho", "1e308"], "--sharpness_rho"),
        (["--model_width", "100000000"], "--model_width"),
    ],
)
def test_deep_nets_bad_values_exit_2_naming_the_flag(tmp_path, capsys, argv, flag):
    rc, err = _deep_main([*TINY, *argv, "--out_dir", str(tmp_path / "r")], capsys)
    assert rc == 2 and f"error: {flag}" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_diagonal_bad_values_and_a_grid_that_does_not_fit_in_memory(tmp_path, capsys):
    from diagonal_linear_nets.train import main

    for argv, flag in (
        (["--wd", "-1"], "--wd"),
        (["--seeds", "-1"], "--seeds"),
        (["--seed", "-3"], "--seed"),
        (["--n", "100000000"], "--n"),
    ):
        t0 = time.process_time()
        rc, err = _cli(main, [*argv, "--out_dir", str(tmp_path / "r")], capsys)
        assert rc == 2 and f"error: {flag}" in err, err
        assert time.process_time() - t0 < 30  # refused before allocating, not after
    assert "GiB" in err and "at most about --n" in err
    fit = int(err.split("at most about --n ")[1].split()[0])
    assert 0 < fit < 100_000_000
    assert not (tmp_path / "r").exists()


def test_relu_cli_refuses_flags_without_effect(tmp_path, capsys):
    from one_layer_relu_nets.train import main

    out = ["--out_dir", str(tmp_path / "r"), "--iterations", "5"]
    for argv, flag in (
        (["--d", "3"], "--d"),
        (["--data_seed", "4"], "--data_seed"),
        (["--algorithms", "gd", "--rhos", "0.2"], "--rhos"),
        (["--algorithms", "gd", "nsam", "--m", "2"], "--m"),
        (["--task", "teacher", "--data_seed", "-1"], "--data_seed"),
    ):
        rc, err = _cli(main, [*argv, *out], capsys)
        assert rc == 2 and f"error: {flag}" in err, (argv, err)
    assert not (tmp_path / "r").exists()


def test_eval_sharpness_name_stays_inside_measures(tiny_run, tmp_path, capsys):
    from deep_nets.eval_sharpness import main

    out = _copy(tiny_run, tmp_path / "a" / "run")
    before = sorted(p for p in tmp_path.rglob("*"))
    for name in ("../..", "..", "../x", "/abs", "a/b"):
        rc, err = _cli(
            main, ["--model_path", str(out), "--measure", "msharpness", "--name", name], capsys
        )
        assert rc == 2 and "--name" in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_model_path_error_never_advises_weights_only_false(tmp_path, capsys):
    """A pickle with a payload as --model_path: refused, the payload never runs, and the message
    does not pass on torch's advice to load it with weights_only=False."""
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, evil)
    rc, err = _deep_main(
        [*TINY, "--model_path", str(evil), "--out_dir", str(tmp_path / "r")], capsys
    )
    assert rc == 2 and f"--model_path {evil}" in err and "refused" in err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert not marker.exists()
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Payload()))
    from deep_nets.eval_sharpness import load_state_dict

    with pytest.raises(ValueError) as e:
        load_state_dict(tmp_path / "raw.pt")
    assert "weights_only" not in str(e.value) and not marker.exists()


def test_existing_run_message_offers_only_flags_the_cli_has(tiny_run, tmp_path, capsys):
    from suite.rundir import RunExistsError, create_run_dir

    out = _copy(tiny_run, tmp_path / "run")
    rc, err = _deep_main([*TINY, "--epochs", "2", "--out_dir", str(out)], capsys)
    assert rc == 2 and "--resume" in err and "--overwrite" not in err
    with pytest.raises(RunExistsError) as e:  # the race past the CLI's check: same message
        create_run_dir(out, {"a": 1})
    assert "--overwrite" not in str(e.value) and isinstance(e.value, ValueError)
    assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 2
