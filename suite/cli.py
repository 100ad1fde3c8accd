"""Command-line parents, progress bars, devices, seeds and Ctrl-C handling (all families)."""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    init_seed, data_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    g_init = torch.Generator(device="cpu").manual_seed(init_seed)
    g_data = torch.Generator(device="cpu").manual_seed(data_seed)
    return Seeds(init=g_init, data=g_data, seed=seed)


DEVICE_CHOICES = "cpu, cuda, cuda:N (N an existing GPU index)"


def select_device(name: str | None = None) -> torch.device:
    """``name`` if given (cpu, cuda, cuda:N), else cuda when present, else cpu. Anything else
    (mps, a missing GPU index, a typo) is a ValueError naming ``--device`` and the choices."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {name!r} is not a device name; choose {DEVICE_CHOICES}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: this suite supports {DEVICE_CHOICES}")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"--device {name!r}: use --device cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available on this machine; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    return dev


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate: the kernel's MemAvailable, capped by a
    cgroup (container) limit; None where neither can be read (then nothing is checked)."""
    have = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: the container's limit minus what it uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = max(0, int(limit) - used)
            have = room if have is None else min(have, room)
    except (OSError, ValueError):
        pass
    return have


def progress(iterable=None, **kwargs):
    """tqdm that switches itself off when stderr is not a terminal (logs, CI, notebooks' stdout)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


# ------------------------------------------------------------------------------------ Ctrl-C
class GracefulInterrupt:
    """Ctrl-C handler for training loops: the first SIGINT sets ``requested`` so the loop can save
    a checkpoint and stop at its next safe point; a second one raises KeyboardInterrupt at once.
    Outside the main thread (where signals can't be handled) it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: saving at the next safe point (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


# ------------------------------------------------------------------------------------ argparse
def run_dir_flags_error(out_dir: str | os.PathLike, resume: bool, overwrite: bool) -> str | None:
    """What is wrong with ``--out_dir`` / ``--resume`` / ``--overwrite`` together (None: nothing):
    the two options exclude each other, a directory holding a run (its config.json) needs one of
    them, and ``--resume`` needs such a run. The caller passes the message to ``parser.error``."""
    if resume and overwrite:
        return "--resume and --overwrite exclude each other: continue the run or replace it"
    if problem := out_dir_error(out_dir):
        return problem
    exists = (Path(out_dir) / "config.json").exists()
    if exists and not (resume or overwrite):
        return (
            f"--out_dir {out_dir} already holds a run: pass --resume to continue it, --overwrite "
            "to replace it, or choose another directory"
        )
    if resume and not exists:
        return f"--resume: {out_dir} holds no run to continue (no config.json)"
    return None


def out_dir_error(out_dir: str | os.PathLike) -> str | None:
    """Why ``--out_dir`` cannot hold a run (None: it can), checked before any data is loaded: it
    or a folder above it is a file, or the folder that would hold it is not writable."""
    path = Path(out_dir)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                return f"--out_dir {out_dir}: {p} is a file, not a folder; choose another directory"
            if not os.access(p, os.W_OK | os.X_OK):
                where = "is" if p == path else f"would be created in {p}, which is"
                return (
                    f"--out_dir {out_dir} {where} not writable (permissions or a read-only "
                    "file system); choose another directory"
                )
            return None
    return None


def common_parser() -> argparse.ArgumentParser:
    """Parent parser with the flags every training script shares (``parents=[common_parser()]``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument(
        "--device", type=str, default=None, help=f"{DEVICE_CHOICES} (default: cuda if available)"
    )
    g.add_argument(
        "--out_dir", type=str, default=None, help="run directory to write (default: under runs/)"
    )
    return p


def finite_float(text: str) -> float:
    """argparse ``type=`` for a float flag that must be finite: ``--rho nan`` is an error (argparse
    prefixes the message with the flag's name)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return x


def finite_or_none(x: float | None) -> float | None:
    """A float for JSON where a diverged value should read as missing, not as a number."""
    return x if x is not None and math.isfinite(x) else None
