"""Run directories, atomic writes, seeding, device selection and progress bars.

The results format every family writes and ``analysis/`` reads (JSON only, never pickles):

    <run_dir>/config.json     {"config": flags, "git": {"commit", "dirty"}, "versions": {...},
                               "device": "...", "created": ISO time, "command": argv}
    <run_dir>/metrics.jsonl   one JSON object per logged step or epoch
    <run_dir>/summary.json    final numbers of the run
    <run_dir>/*.pt            optional checkpoints (tensors only, ``torch.load(weights_only=True)``)

Claims tables (one per family) are CSV files with the columns of ``CLAIM_COLUMNS``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

CLAIM_COLUMNS = ("family", "claim", "paper", "ours", "verdict", "figure")
VERDICTS = ("reproduced", "partly", "not reproduced", "n/a")


# ----------------------------------------------------------------------------------------- writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.device):
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


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a metrics file; a torn last line (crash mid-write) is ignored."""
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # only the last line may be torn
                break
            raise
    return rows


def write_claims(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a claims table (CSV with ``CLAIM_COLUMNS``); verdicts must be one of ``VERDICTS``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CLAIM_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        if r.get("verdict") not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {r.get('verdict')!r}")
        w.writerow({k: r.get(k, "") for k in CLAIM_COLUMNS})
    atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------------- provenance
def git_info(cwd: str | os.PathLike | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the repository holding this file."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        st = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
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

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one JSON object as a line, flushed and fsynced (a crash loses at most it)."""
        line = to_json(dict(row), indent=None)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, keep: int) -> None:
        """Keep the first ``keep`` metric rows (used when resuming from an earlier checkpoint)."""
        rows = read_jsonl(self.metrics_path) if self.metrics_path.exists() else []
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
) -> RunDir:
    """Create ``out_dir`` and write ``config.json`` (flags, git commit + dirty flag, versions,
    device, time, command line).

    A directory that already holds a run is an error unless ``resume`` is set (then its metrics
    are kept, and the stored config is left as it was): results are never overwritten silently.
    """
    path = Path(out_dir)
    cfg_path = path / "config.json"
    if cfg_path.exists() and not resume:
        raise FileExistsError(
            f"{path} already holds a run (config.json exists): pass --resume to continue it, "
            f"or choose another --out_dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    if not cfg_path.exists():
        dev = torch.device(device) if device is not None else torch.device("cpu")
        atomic_write_json(
            cfg_path,
            {
                "config": dict(config),
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


# --------------------------------------------------------------------------- seeds and devices
@dataclass
class Seeds:
    """Separate random streams: model initialization and data order never share a generator, so
    changing the batch order does not change the initial weights (and vice versa)."""

    init: torch.Generator
    data: torch.Generator
    seed: int


def make_seeds(seed: int, device: torch.device | str = "cpu") -> Seeds:
    """Seed Python/numpy/torch globally and return independent generators for init and data.

    The two streams derive from ``seed`` through numpy's SeedSequence (statistically independent).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    init_seed, data_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    g_init = torch.Generator(device="cpu").manual_seed(init_seed)
    g_data = torch.Generator(device="cpu").manual_seed(data_seed)
    return Seeds(init=g_init, data=g_data, seed=seed)


def select_device(name: str | None = None) -> torch.device:
    """``name`` if given ("cpu", "cuda", "cuda:1", "mps"), else cuda when present, else cpu."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device name (try cpu or cuda)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    return dev


def progress(iterable=None, **kwargs):
    """tqdm that switches itself off when stderr is not a terminal (logs, CI, notebooks' stdout)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


# ------------------------------------------------------------------------------------ argparse
def common_parser() -> argparse.ArgumentParser:
    """Parent parser with the flags every training script shares (``parents=[common_parser()]``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument(
        "--device",
        type=str,
        default=None,
        help="cpu, cuda, cuda:N (default: cuda if available, else cpu)",
    )
    g.add_argument(
        "--out_dir", type=str, default=None, help="run directory to write (default: under runs/)"
    )
    return p


def finite_or_none(x: float) -> float | None:
    """A float for JSON where a diverged value should read as missing, not as a number."""
    return x if x is not None and math.isfinite(x) else None
