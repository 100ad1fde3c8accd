"""Compile a family's small C kernel once per machine and load it with ctypes.

The theory families' inner loops (a diagonal net of 20 x 30, a ReLU net of 100 units) are so
small that any tensor library spends its time in per-call overhead; their fused steps are plain
C (``diagonal_linear_nets/_kernel.c``, ``one_layer_relu_nets/kernel.c``), pinned in the tests to
the PyTorch reference paths that use ``sharpness.functional``. This module is the one place that
finds a compiler, compiles and caches.

The shared object is cached under ``$SHARPNESS_CACHE`` (default ``~/.cache/sharpness``), named by
the hash of the source, the compiler, the flags and this CPU's feature flags (``-march=native``
builds are only valid on the CPU that built them). It is compiled to a private name and renamed,
so concurrent first uses never load a half-written file. Without a compiler (or when it fails)
``load_library`` raises RuntimeError with the reason; callers fall back to their torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


def cache_dir() -> Path:
    """Where compiled kernels live: $SHARPNESS_CACHE or ~/.cache/sharpness."""
    return Path(os.environ.get("SHARPNESS_CACHE") or Path.home() / ".cache" / "sharpness")


def compiler() -> str | None:
    """$CC if set (even when it does not exist: the caller asked for it), else cc, gcc, clang."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def build(source: Path, flags: Sequence[str], *, prefix: str) -> Path:
    """The cached shared object of ``source`` compiled with ``flags`` (+ -shared -fPIC -lm);
    a compiler without ``-march=native`` gets the portable build."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler on PATH (cc, gcc or clang; or set CC)")
    flags = [*flags, "-shared", "-fPIC"]
    src = Path(source).read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"{prefix}_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        for fl in (flags, [f for f in flags if f != "-march=native"]):
            proc = subprocess.run(
                [cc, *fl, "-o", tmp, str(source), "-lm"], capture_output=True, text=True
            )
            if proc.returncode == 0:
                break
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {Path(source).name}: {proc.stderr.strip()[:500]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load_library(source: Path, flags: Sequence[str], *, prefix: str) -> ctypes.CDLL:
    """``build`` then ``ctypes.CDLL``; RuntimeError (with the reason) when either fails."""
    try:
        return ctypes.CDLL(str(build(source, flags, prefix=prefix)))
    except OSError as e:
        raise RuntimeError(f"could not load the compiled {Path(source).name}: {e}") from e
