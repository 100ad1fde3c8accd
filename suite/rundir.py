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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch


# ----------------------------------------------------------------------------------------- writes
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one JSON object as a line, flushed and fsynced (a crash loses at most it)."""
        line = to_json(dict(row), indent=None)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log_many(self, rows: list[Mapping[str, Any]]) -> None:
        """Append rows as lines with one flush and fsync for all of them (a crash mid-write
        leaves a prefix of them, the last one possibly torn and dropped on reopening)."""
        if not rows:
            return
        text = "".join(to_json(dict(r), indent=None) + "\n" for r in rows)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

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
        return read_json(self.path / "config.json")


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
    """
    if resume and overwrite:
        raise ValueError(
            "--resume and --overwrite exclude each other: continue the run or replace it"
        )
    path = Path(out_dir)
    cfg_path = path / "config.json"
    if cfg_path.exists() and not (resume or overwrite):
        raise FileExistsError(
            f"{path} already holds a run (config.json exists): pass --resume to continue it, "
            f"--overwrite to replace it, or choose another --out_dir"
        )
    path.mkdir(parents=True, exist_ok=True)
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
        "config": read_json(path / "config.json"),
        "metrics": read_jsonl(path / "metrics.jsonl") if (path / "metrics.jsonl").exists() else [],
        "summary": read_json(summary) if summary.exists() else None,
    }
