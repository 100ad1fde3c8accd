"""The fast engine: fused closed-form steps in C (``_kernel.c``), compiled once per machine.

Why C: a step of a diagonal net is ~5 passes over an n x d matrix (n = 20, d = 30), so any
tensor library spends its time in per-call overhead (eager PyTorch: ~130 us per step for a grid)
and torch.compile costs 15-45 s of compilation per process with an empty cache. The kernel
is ~150 lines of plain C, compiled by the system C compiler in ~0.4 s and cached by the hash of
its source; without a compiler the simulator falls back to the PyTorch engine (same math).

The step, for one run (w = (u, v); beta = u (.) v or u^2 - v^2; J = all n examples, or the b
examples sampled for this step; chunks of m consecutive entries of J):

    r_j = x_j . beta - y_j,                      G_c = (1/m) sum_{j in c} r_j x_j
    (u~, v~)_c = (u, v) + rho_c (G_c (.) dbeta/du, G_c (.) dbeta/dv)     (the SAM ascent)
    rho_c = rho (unnormalized) or rho / ||(G_c dbeta/du, G_c dbeta/dv)||_2 (normalized)
    r~_j = x_j . beta(u~_c, v~_c) - y_j
    grad_u = (1/|J|) sum_c sum_{j in c} r~_j x_j (.) dbeta/du(u~_c, v~_c)      (same for v)
    u <- u - gamma grad_u - wd u - bal u (2 [|u| > |v|] - 1)                  (same for v)

i.e. exactly ``sharpness.functional.perturbation`` (unnormalized or normalized, per chunk)
followed by the gradient at the perturbed point, as in ``simulator.sam_step``; the tests pin the
two engines against each other and against autograd. Options of the original code: ``ldo``
(1-SAM's "loss derivative only": dbeta/du at (u, v) instead of (u~, v~)), ``ngd`` (normalized GD:
grad_u / ||grad_u||, grad_v / ||grad_v||), ``wd`` and ``bal`` (weight decay and balancedness, as in
the original's GD: not multiplied by gamma).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from suite.cbuild import load_library

_SRC = Path(__file__).with_name("_kernel.c")
# -march=native: vector instructions of this CPU (the cache key includes its flags);
# -ffp-contract=off and no -ffast-math: plain IEEE float64, no fused or reordered arithmetic.
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math"]
_LIB = None
_ERROR: str | None = None


class RunParams(ctypes.Structure):
    """Mirror of ``run_t`` in ``_kernel.c``."""

    _fields_ = [
        ("m", ctypes.c_int32),
        ("batch", ctypes.c_int32),
        ("ldo", ctypes.c_int32),
        ("ngd", ctypes.c_int32),
        ("rho", ctypes.c_double),
        ("gamma", ctypes.c_double),
        ("wd", ctypes.c_double),
        ("bal", ctypes.c_double),
    ]


def load():
    """The compiled library, or None (with ``error()`` saying why) when it cannot be built."""
    global _LIB, _ERROR
    if _LIB is not None or _ERROR is not None:
        return _LIB
    try:
        lib = load_library(_SRC, _FLAGS, prefix="dln_kernel")
    except RuntimeError as e:
        _ERROR = str(e)
        return None
    f = lib.dln_advance
    dp = ctypes.POINTER(ctypes.c_double)
    ip = ctypes.POINTER(ctypes.c_int32)
    f.restype = None
    f.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        dp,
        dp,
        dp,
        dp,
        ctypes.POINTER(RunParams),
        ip,
        ctypes.c_int,
        ctypes.c_long,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_double,
        dp,
        ip,
        dp,
    ]
    _LIB = lib
    return lib


def error() -> str | None:
    """Why the kernel is unavailable (None when it loaded or was not tried)."""
    return _ERROR


def _ptr(a: np.ndarray | None, ctype):
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctype))


def advance(
    X: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    params: ctypes.Array,
    steps: int,
    *,
    param: str,
    normalize: bool,
    threshold: float,
    idx: np.ndarray | None = None,
    track: np.ndarray | None = None,
) -> np.ndarray:
    """Advance every run ``steps`` steps in place (module docstring). Shapes: X (R, n, d),
    y (R, n), u, v, track (R, d) float64 C-contiguous; ``params`` a ctypes array of R
    ``RunParams``; ``idx`` (R, steps, bmax) int32 sampled examples (runs with batch > 0).
    Returns div (R,) int32: -1, or the step at which the run stopped (loss above ``threshold``
    or NaN: the state is the one with that loss; a non-finite next state: the state before it)."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"the C kernel is unavailable: {_ERROR}")
    R, n, d = X.shape
    for a in (X, y, u, v) + (() if track is None else (track,)):
        assert a.dtype == np.float64 and a.flags.c_contiguous
    bmax = 0
    if idx is not None:
        assert idx.dtype == np.int32 and idx.flags.c_contiguous and idx.shape[:2] == (R, steps)
        bmax = idx.shape[2]
    div = np.full(R, -1, dtype=np.int32)
    work = np.zeros(7 * d + 2 * n, dtype=np.float64)
    lib.dln_advance(
        R,
        n,
        d,
        _ptr(X, ctypes.c_double),
        _ptr(y, ctypes.c_double),
        _ptr(u, ctypes.c_double),
        _ptr(v, ctypes.c_double),
        params,
        _ptr(idx, ctypes.c_int32),
        bmax,
        int(steps),
        1 if param == "u2v2" else 0,
        int(bool(normalize)),
        float(threshold),
        _ptr(track, ctypes.c_double),
        _ptr(div, ctypes.c_int32),
        _ptr(work, ctypes.c_double),
    )
    return div
