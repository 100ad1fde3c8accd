"""Run directories, atomic writes and provenance: the results format every family writes.

    <run_dir>/config.json     {"config": flags, "git": {"commit", "dirty"}, "versions": {...},
                               "device": "...", "created": ISO time, "command": argv}
    <run_dir>/metrics.jsonl   one JSON object per logged step or epoch
    <run_dir>/summary.json    final numbers of the run
    <run_dir>/*.pt            optional checkpoints (tensors only, ``torch.load(weights_only=True)``)

JSON only, never pickles. Every file is replaced atomically (temporary file, fsync, rename, fsync
of the directory), so a crash leaves the old version or the new one, never a torn file. The one
exception is ``metrics.jsonl``, which is appended to: a torn last line (a crash mid-write) is
dropped when the run is opened again and never makes a reader fail.

One writer per run directory: ``create_run_dir`` (and ``run_dir_lock``, which a trainer or the
launcher holds for a whole run) takes an exclusive OS lock (``fcntl.flock``) on ``<run_dir>/.lock``;
a second process gets ``RunDirBusyError`` naming the holder's PID instead of writing every row a
second time. The lock dies with its process (a crash or SIGKILL frees it at once), and the
temporary files a killed writer left behind (``.<name>.<pid>.tmp`` of a dead PID) are removed
when the next writer takes the lock. Damaged files are errors naming the file: ``read_json`` on
a file that is not JSON, ``safe_torch_load`` on a checkpoint that is not one of tensors, and a
failed write (a full disk) names the file it was writing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch


class RunDirError(ValueError):
    """A run directory or one of its files cannot be used (the message names the file and what
    to do). A ValueError, so every CLI reports it as a usage error (exit status 2)."""


class RunDirBusyError(RunDirError):
    """Another live process holds the run directory's lock (its PID is in the message)."""


class RunExistsError(FileExistsError, RunDirError):
    """The directory already holds a run and neither resume nor overwrite was asked for."""


# ----------------------------------------------------------------------------------------- writes
def _write_error(e: OSError, path: Path) -> OSError:
    """``e`` with the file being written named, and what to do when the disk is full."""
    hint = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "; free some space (the last complete checkpoint is kept) and continue with --resume"
    return type(e)(e.errno, f"cannot write {path}: {e.strerror or e}{hint}")


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX; a no-op where directories can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    The file gets the usual permissions (0666 & ~umask, 0644 by default), not a temporary file's
    0600, and the directory is fsynced after the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not str(e).startswith("cannot write"):
            raise _write_error(e, path) from e
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, (Path, torch.device)):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON with numpy/torch values converted. Non-finite floats are written as NaN/Infinity
    (a common JSON extension that Python's json and pandas read back), never silently dropped."""
    return json.dumps(obj, indent=indent, default=_json_default, allow_nan=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, to_json(obj) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temporary file and a rename (no half-written checkpoints)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


_DAMAGED = "restore it, or delete the run directory (or pass --overwrite) to start the run over"


def read_json(path: str | os.PathLike, *, want_dict: bool = False) -> Any:
    """The JSON value in ``path``; a file that is not JSON (or, with ``want_dict``, not a JSON
    object) is a ``RunDirError`` naming it, never a bare decoder message."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is not valid JSON ({e}): the file is damaged; {_DAMAGED}") from e
    if want_dict and not isinstance(obj, dict):
        raise RunDirError(
            f"{path} holds a JSON {type(obj).__name__}, not an object: the file is damaged; "
            f"{_DAMAGED}"
        )
    return obj


def safe_torch_load(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, nothing is
    unpickled. A file that cannot be read so is a ``RunDirError`` naming it and ``what`` it
    should be; torch's own advice to retry with ``weights_only=False`` is left out on purpose
    (that would run whatever code the file holds)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any format or unpickling error: name the file
        raise RunDirError(
            f"{path} cannot be read as {what} ({load_error_reason(e)}); it is refused: only "
            "files of tensors are loaded, never pickled objects"
        ) from None


def load_error_reason(e: BaseException) -> str:
    """The reason in a ``torch.load(weights_only=True)`` error, without torch's advice to retry
    with ``weights_only=False`` (for an untrusted file that would run the code it holds)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:  # the explanation with the advice, then the reason
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if not first or "weights_only" in first:
        return type(e).__name__
    return f"{type(e).__name__}: {first[:200]}"


def _parse_jsonl(text: str, path: str | os.PathLike) -> tuple[list[dict], int]:
    """(rows, character length of the well-formed prefix). Only the last line may be torn (a
    crash mid-append); a bad line before it is corruption and raises."""
    rows, good = [], 0
    lines = text.split("\n")
    last_nonempty = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i == last_nonempty:
                    break
                raise ValueError(
                    f"{path}: line {i + 1} is not JSON (the file is corrupt)"
                ) from None
        good += len(line) + 1
    return rows, min(good, len(text))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a metrics file; a torn last line (crash mid-write) is ignored."""
    with open(path, encoding="utf-8") as f:
        return _parse_jsonl(f.read(), path)[0]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a config (sorted JSON): equal configs, equal hashes."""
    text = json.dumps(dict(config), sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------- provenance
def git_info(cwd: str | os.PathLike | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the repository holding this file.
    Untracked files count as dirty: a new, uncommitted module changes what ran."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        st = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        return {"commit": sha.stdout.strip(), "dirty": bool(st.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def library_versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("scipy", "pandas", "matplotlib"):
        mod = sys.modules.get(name)
        if mod is not None:
            v[name] = getattr(mod, "__version__", "?")
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
    return v


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()}"


# ----------------------------------------------------------------------------------- run dirs
@dataclass
class RunDir:
    """A run directory: ``config.json`` written at creation, metrics appended, summary last."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._repair_metrics()

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def _repair_metrics(self) -> None:
        """Drop a torn last line left by a crash, so the next append starts on a fresh line."""
        if not self.metrics_path.exists():
            return
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        _, good = _parse_jsonl(text, self.metrics_path)
        keep = text[:good]
        if keep and not keep.endswith("\n"):
            keep += "\n"  # a complete last row without its newline: keep it, end the line
        if keep != text:
            atomic_write_text(self.metrics_path, keep)

    def _append(self, text: str) -> None:
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _write_error(e, self.metrics_path) from e

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one JSON object as a line, flushed and fsynced (a crash loses at most it)."""
        self._append(to_json(dict(row), indent=None) + "\n")

    def log_many(self, rows: list[Mapping[str, Any]]) -> None:
        """Append rows as lines with one flush and fsync for all of them (a crash mid-write
        leaves a prefix of them, the last one possibly torn and dropped on reopening)."""
        if rows:
            self._append("".join(to_json(dict(r), indent=None) + "\n" for r in rows))

    def close(self) -> None:
        """Release the run directory's lock if this object holds it (``create_run_dir`` outside
        ``run_dir_lock``); it is released anyway when the object is collected or the process
        ends."""
        fin = getattr(self, "_unlock", None)
        if fin is not None:
            fin()

    def truncate_metrics(self, keep: int) -> None:
        """Keep the first ``keep`` metric rows (used when resuming from an earlier checkpoint)."""
        rows = self.metrics()
        atomic_write_text(self.metrics_path, "".join(to_json(r, None) + "\n" for r in rows[:keep]))

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / "summary.json", dict(summary))

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    @property
    def config(self) -> dict:
        return read_json(self.path / "config.json", want_dict=True)


# ----------------------------------------------------------------------------------- locking
LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # real path of a run directory -> fd of its lock, held by this process
_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # atomic_write_bytes' temporary files


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete the temporary files of writers that died between write and rename (SIGKILL, power
    loss): ``.<name>.<pid>.tmp`` whose PID is no live process. Returns what was deleted."""
    gone = []
    for d in (path, *(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())):
        for f in d.iterdir():
            m = _TMP.match(f.name)
            if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    f.unlink()
                    gone.append(f)
    return gone


def _make_dir(path: Path) -> None:
    """``mkdir -p path`` with errors that name the file in the way and say what to do."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise RunDirError(
            f"cannot use {path} as a run directory: {blocker} is a file, not a folder; choose "
            "another --out_dir"
        ) from None
    except OSError as e:
        raise RunDirError(
            f"cannot create the run directory {path}: {e.strerror}; choose a writable --out_dir"
        ) from None


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text().strip()
    except OSError:
        text = ""
    return f"PID {text}" if text.isdigit() else "another process"


def _acquire(path: Path) -> str | None:
    """Lock ``path`` (created if missing) for this process; returns its key, or None when this
    process already holds it (nested use) or the platform has no ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        _make_dir(path)
        return None
    _make_dir(path)
    key = os.path.realpath(path)
    if key in _held:
        return None
    lock = Path(key) / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            raise RunDirError(
                f"cannot write the run directory {path}: {e.strerror}; choose a writable --out_dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirError(f"cannot lock {lock}: {e.strerror}") from None
            raise RunDirBusyError(
                f"{path} is being written by {_holder(lock)} (it holds {lock}): one writer per "
                "run directory; wait for that process to end (or stop it), then run again"
            ) from None
        # the previous holder unlinks the file as it releases: make sure we locked the live one
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd
    remove_stale_tmp(Path(key))
    return key


def _release(key: str | None) -> None:
    fd = _held.pop(key, None) if key is not None else None
    if fd is not None:
        with contextlib.suppress(OSError):  # unlink while holding it (see _acquire's check)
            os.unlink(Path(key) / LOCK_NAME)
        os.close(fd)


@contextlib.contextmanager
def run_dir_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory ``path``'s lock (creating the directory) for the block: the one
    writer. Nested use in one process is free (the outermost block holds it); another process
    gets ``RunDirBusyError`` naming this one's PID. An ``--out_dir`` that is a file or cannot be
    written is a ``RunDirError`` naming it."""
    key = _acquire(Path(path))
    try:
        yield Path(path)
    finally:
        _release(key)


def create_run_dir(
    out_dir: str | os.PathLike,
    config: Mapping[str, Any],
    *,
    device: torch.device | str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunDir:
    """Create ``out_dir`` and write ``config.json`` (flags, git commit + dirty flag, versions,
    device, time, command line).

    A directory that already holds a run is an error unless ``resume`` is set (then its metrics
    are kept, and the stored config is left as it was) or ``overwrite`` is set (then its
    config, metrics and summary are replaced): results are never overwritten silently.
    The directory's lock is taken first (``run_dir_lock``; held by the returned object unless
    the caller holds it already): another live writer is a ``RunDirBusyError``.
    """
    if resume and overwrite:
        raise ValueError(
            "--resume and --overwrite exclude each other: continue the run or replace it"
        )
    path = Path(out_dir)
    cfg_path = path / "config.json"
    key = _acquire(path)  # before looking: another writer may be creating the run right now
    try:
        if cfg_path.exists() and not (resume or overwrite):
            raise RunExistsError(
                f"{path} already holds a run (config.json exists): pass --resume to continue it, "
                "or choose another --out_dir"
            )
        run = _create_run_dir(path, config, device, overwrite)
    except BaseException:
        _release(key)
        raise
    if key is not None:  # no enclosing run_dir_lock: the lock lives as long as this object
        run._unlock = weakref.finalize(run, _release, key)
    return run


def _create_run_dir(
    path: Path, config: Mapping[str, Any], device: torch.device | str | None, overwrite: bool
) -> RunDir:
    cfg_path = path / "config.json"
    if overwrite:
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
    if not cfg_path.exists():
        dev = torch.device(device) if device is not None else torch.device("cpu")
        atomic_write_json(
            cfg_path,
            {
                "config": dict(config),
                "config_hash": config_hash(config),
                "git": git_info(),
                "versions": library_versions(),
                "device": device_description(dev),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": sys.argv,
            },
        )
    return RunDir(path)


def load_run(path: str | os.PathLike) -> dict:
    """{"path", "config", "metrics" (list of dicts), "summary" (dict or None)} of a run dir."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json)")
    summary = path / "summary.json"
    return {
        "path": str(path),
        "config": read_json(path / "config.json", want_dict=True),
        "metrics": read_jsonl(path / "metrics.jsonl") if (path / "metrics.jsonl").exists() else [],
        "summary": read_json(summary, want_dict=True) if summary.exists() else None,
    }
