"""The fused C backend of the full-batch training loop (``kernel.c``), compiled on first use.

``kernel.c`` does a whole GD / m-SAM step of one run in one call-free loop, ~100x fewer
instructions of overhead than the torch path's ~40 tensor ops per step. It is compiled with the
system C compiler (``cc``/``gcc``; about a second) into a cache directory keyed by the source's
hash, and loaded with ctypes. ``available()`` says whether that worked; the training loop falls
back to the torch path when it did not (``--backend auto``).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from suite.cbuild import load_library

SOURCE = Path(__file__).with_name("kernel.c")
# -O3 without -ffast-math: no reassociation, so the sums run in a fixed order (deterministic);
# -march=native is safe because the cache lives on the machine that compiled it.
CFLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-std=c99"]
STATUS = {0: "running", 1: "stopped", 2: "diverged", 3: "finished"}

_LIB: ctypes.CDLL | None = None
_ERROR: str | None = None


def _load() -> ctypes.CDLL:
    global _LIB, _ERROR
    if _LIB is not None:
        return _LIB
    if _ERROR is not None:
        raise RuntimeError(_ERROR)
    try:
        lib = load_library(SOURCE, CFLAGS, prefix="relu_kernel")
    except RuntimeError as e:
        _ERROR = f"the C backend is unavailable: {e}"
        raise RuntimeError(_ERROR) from e
    dp, lp = ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_long)
    f = lib.relu_advance
    i, d, L = ctypes.c_int, ctypes.c_double, ctypes.c_long
    f.argtypes = [i, i, i, i, dp, dp, dp, dp, dp, d, d, i, d, d, d, dp, dp, d, L, L, L, dp, lp, dp]
    f.restype = ctypes.c_int
    _LIB = lib
    return lib


def available() -> bool:
    """True when the kernel compiled and loaded (compiling it on the first call)."""
    try:
        _load()
        return True
    except RuntimeError:
        return False


def _ptr(a: np.ndarray):
    assert a.dtype == np.float64 and a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


class Run:
    """One run's state for ``relu_advance``: params W (width, d), b, a as float64 numpy arrays,
    updated in place."""

    def __init__(self, X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, a: np.ndarray):
        self.X, self.y = np.ascontiguousarray(X, np.float64), np.ascontiguousarray(y, np.float64)
        self.W = np.ascontiguousarray(W, np.float64).copy()
        self.b = np.ascontiguousarray(b, np.float64).copy()
        self.a = np.ascontiguousarray(a, np.float64).copy()
        n, d = self.X.shape
        width = self.W.shape[0]
        self.work = np.zeros(n * width + n + 4 * (width * d + 2 * width) + width)
        self._loss, self._t = ctypes.c_double(), ctypes.c_long()

    def advance(
        self,
        m: int,
        omega: float,
        omega_chunk: float,
        normalize: bool,
        rho: float,
        eps: float,
        lr: float,
        lr_f: np.ndarray,
        rho_f: np.ndarray,
        thr: float,
        t0: int,
        t1: int,
        T: int,
    ) -> tuple[str, int, float]:
        """Run steps t0 .. until a stop or t1; ``lr_f``/``rho_f`` hold the factors of steps
        t0 .. t1 - 1. Returns (status, t, loss at t) with status in ``STATUS``'s values."""
        lib = _load()
        n, d = self.X.shape
        width = self.W.shape[0]
        lr_f = np.ascontiguousarray(lr_f, np.float64)
        rho_f = np.ascontiguousarray(rho_f, np.float64)
        if len(lr_f) < t1 - t0 or len(rho_f) < t1 - t0:
            raise ValueError("lr_f and rho_f need one factor per step t0 .. t1 - 1")
        if m and n % m:
            raise ValueError(f"m={m} must divide n={n}")
        code = lib.relu_advance(
            n,
            d,
            width,
            m,
            _ptr(self.X),
            _ptr(self.y),
            _ptr(self.W),
            _ptr(self.b),
            _ptr(self.a),
            omega,
            omega_chunk,
            int(normalize),
            rho,
            eps,
            lr,
            _ptr(lr_f),
            _ptr(rho_f),
            thr,
            t0,
            t1,
            T,
            ctypes.byref(self._loss),
            ctypes.byref(self._t),
            _ptr(self.work),
        )
        return STATUS[code], int(self._t.value), float(self._loss.value)
