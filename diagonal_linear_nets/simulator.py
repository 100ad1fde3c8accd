"""Batched float64 simulator of diagonal linear networks trained by GD, SGD, n-SAM, 1-SAM, m-SAM.

Model and loss (PAPERS.md#diagonal-setup). beta = u (.) v with u0 = alpha 1, v0 = 0
(``param="uv"``), or beta = u^2 - v^2 with u0 = v0 = alpha (``param="u2v2"``); the loss of a set S
of examples is

    L_S(beta) = ||X_S beta - y_S||^2 / (2 |S|),  g_S = grad_beta L_S = X_S^T r_S / |S|,
    r = X beta - y.

The training loss is L over all n examples. One step of m-SAM with step size gamma (m divides n,
the n examples are cut into n/m consecutive chunks c of m examples):

    w_c = w + e(grad_w L_c(w))          e from ``sharpness.functional.perturbation``
    w  <- w - gamma * (1/#chunks) sum_c grad_w L_c(w_c)

with w = (u, v); unnormalized ascent e = rho * grad (the suite's convention, below), normalized
e = rho * grad / ||grad||_2 (joint norm over u and v of one chunk). n-SAM is m = n, 1-SAM is m = 1,
GD is rho = 0. SGD draws b examples uniformly with replacement each step and descends on their loss.

The rho convention of the whole suite: rho multiplies the gradient of the suite's loss of the
chunk, ||X_c beta - y_c||^2 / (2m). The original numpy code (understanding-sam, diag_nets.py) uses
this same convention for n-SAM but ascends 1-SAM by 2 rho r_k x_k (.) v, i.e. by rho times the
gradient of (x_k^T beta - y_k)^2 without the 1/2. Hence

    rho_suite = rho_original            for n-SAM
    rho_suite = 2 * rho_original        for 1-SAM

(the original's 1-SAM grid 0.001 .. 0.9 is 0.002 .. 1.8 here).

Engines and batching. Every run of a grid (algorithm x rho x alpha x gamma x seed) is one row of
the same arrays: u, v have shape (R, d), the data X has shape (R, n, d) (one data set per run's
seed). The default engine (``kernel``, fused C) advances each row on its own with the same
instruction sequence; the reference engine (``sam_step``, PyTorch, the ascent from
``sharpness.functional.perturbation``) uses an (n x n) averaging matrix A_r per run
(A_r[k, j] = 1/m when k and j share a chunk), so G = A_r (r (.) X) gives every example the
beta-gradient of its own chunk. No operation mixes runs, so a run's result does not depend on the
grid it is in (bit for bit) and a diverging run cannot poison the others.

Implicit bias bookkeeping (``track_alpha``): for the flow, (u + v) and (u - v) evolve
multiplicatively, and the effective initialization of the hyperbolic-entropy representation
beta = (a^2 / 2) sinh(theta) obeys

    log a_inf^2 = log a_0^2 - c * gamma * sum_t sum_j w_j rho_eff,j (g~_j (.) G_j)

with G_j the beta-gradient of example j's chunk at w, g~_j = r~_j x_j the example's gradient at the
perturbed point, w_j the descent weight (1/n), rho_eff,j = <e_j, grad_j> / ||grad_j||^2 (rho for
the unnormalized ascent), and c = 2 for u (.) v (a_0 = alpha), c = 8 for u^2 - v^2 (a_0 = 2 alpha).
This discretizes alpha_inf^2 = alpha^2 exp(-2 rho int grad L(beta~) (.) grad L(beta) dt)
(n-SAM) and of its per-example average (1-SAM). The exact discrete counterpart is
a^2 = u^2 - v^2 (u (.) v) or 4 u v (u^2 - v^2), also returned.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sharpness.functional import perturbation

ALGOS = ("gd", "sgd", "nsam", "1sam", "msam")
PARAMS = ("uv", "u2v2")
SWITCHES = ("none", "erm_to_sam", "sam_to_erm")
DTYPE = torch.float64
# Steps per call of the C kernel at most: bounds the time to answer a Ctrl-C (~0.02 s per run
# in the grid) and the memory of SGD's pre-drawn examples; the results do not depend on it.
MAX_CHUNK = 1 << 14


# ------------------------------------------------------------------------------------------ data
@dataclass
class Problem:
    """One sparse regression problem (float64 tensors)."""

    X: Tensor  # (n, d)
    y: Tensor  # (n,)
    X_test: Tensor  # (n_test, d)
    y_test: Tensor  # (n_test,)
    beta_star: Tensor  # (d,)


def make_problem(
    n: int = 20,
    d: int = 30,
    sparsity: int = 3,
    n_test: int = 1000,
    noise: float = 0.0,
    seed: int = 0,
) -> Problem:
    """The reference data: X, X_test ~ N(0, I_d); beta* = |N(0, 1)| on the first ``sparsity``
    coordinates, zero elsewhere, normalized to unit L2 norm; y = X beta* (+ sigma N(0, 1) on the
    training labels when ``noise`` = sigma > 0).

    Drawn with numpy's legacy ``RandomState(seed)`` in the original notebook's order (X, X_test,
    beta*), so seed 0 gives exactly the original notebook's data set.
    """
    return problem_and_stream(n, d, sparsity, n_test, noise, seed)[0]


def problem_and_stream(
    n: int, d: int, sparsity: int, n_test: int, noise: float, seed: int
) -> tuple[Problem, np.random.RandomState]:
    """``make_problem`` and the RandomState positioned after the data: the original notebook's
    SGD draws its examples from this continuing global stream."""
    if not (1 <= sparsity <= d):
        raise ValueError(f"sparsity must be in [1, d={d}] (got {sparsity})")
    if n < 1 or d < 1 or n_test < 1:
        raise ValueError(f"n, d and n_test must be >= 1 (got n={n}, d={d}, n_test={n_test})")
    if noise < 0:
        raise ValueError(f"noise must be >= 0 (got {noise})")
    rs = np.random.RandomState(seed)
    X = rs.multivariate_normal(np.zeros(d), np.eye(d), n)
    X_test = rs.multivariate_normal(np.zeros(d), np.eye(d), n_test)
    beta = rs.randn(d)
    beta[sparsity:] = 0
    beta = np.abs(beta) / np.linalg.norm(beta)
    y = X @ beta
    if noise > 0:
        y = y + noise * rs.randn(n)
    t = lambda a: torch.as_tensor(a, dtype=DTYPE)  # noqa: E731
    return Problem(t(X), t(y), t(X_test), t(X_test @ beta), t(beta)), rs


# ------------------------------------------------------------------------------------------ runs
@dataclass
class RunSpec:
    """One run of a grid. ``rho`` is in the suite's convention (module docstring).

    Options of the original code (defaults = the original's defaults): ``wd`` and
    ``balancedness`` (its GD's weight decay and balancedness terms, w -= wd w and
    w -= b w (2 [|w| > |other|] - 1), not scaled by gamma), ``normalized_gd`` (grad_u and grad_v
    each divided by its norm), ``thresholds`` (gamma halves after these 0-based step indices, as
    the original's ``i in thresholds``), ``loss_derivative_only`` (1-SAM's variant: the descent
    multiplies the perturbed residual by dbeta/dw at the unperturbed point). SGD draws
    ``batch_size`` examples uniformly with replacement per step from numpy
    ``RandomState(sgd_seed)``; ``sgd_seed=None`` continues the data seed's stream after the data
    (the original notebook's global numpy state); ``sgd_skip`` discards that many draws first (the
    notebook's cell 3 ran after 5 (10^4 + 1) earlier draws). SGD with rho > 0 is mini-batch SAM:
    the ascent uses the sampled batch's gradient (chunks of m of the batch when m is given).
    """

    algo: str = "gd"
    rho: float = 0.0
    alpha: float = 0.1
    gamma: float = 0.167
    seed: int = 0
    m: int | None = None  # chunk size of m-SAM (nsam: n, 1sam: 1)
    batch_size: int = 1  # SGD only
    switch: str = "none"
    switch_at: int = 0
    sgd_seed: int | None = None
    sgd_skip: int = 0  # draws discarded from the SGD stream first
    wd: float = 0.0
    balancedness: float = 0.0
    normalized_gd: bool = False
    thresholds: tuple[int, ...] = ()
    loss_derivative_only: bool = False

    def validate(self, n: int) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS} (got {self.algo!r})")
        for name in ("rho", "alpha", "gamma", "wd", "balancedness"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite (got {getattr(self, name)})")
        if self.rho < 0:
            raise ValueError(f"rho must be >= 0 (got {self.rho})")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (got {self.alpha})")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0 (got {self.gamma})")
        if self.algo == "msam" or (self.algo == "sgd" and self.m is not None):
            lim = n if self.algo == "msam" else self.batch_size
            if self.m is None or self.m < 1 or lim % self.m:
                raise ValueError(f"m must divide {lim} for {self.algo} (got m={self.m})")
        if self.algo == "sgd" and not (1 <= self.batch_size <= n):
            raise ValueError(f"SGD batch_size must be in [1, n={n}] (got {self.batch_size})")
        if self.switch not in SWITCHES:
            raise ValueError(f"switch must be one of {SWITCHES} (got {self.switch!r})")
        if self.switch != "none" and self.switch_at < 0:
            raise ValueError(f"switch_at must be >= 0 (got {self.switch_at})")
        if self.normalized_gd and self.algo != "gd":
            raise ValueError("normalized_gd is the original's GD option: use it with algo gd")
        if self.loss_derivative_only and self.algo in ("gd",):
            raise ValueError("loss_derivative_only is a SAM option (nsam, 1sam, msam, sgd+rho)")
        if self.sgd_skip < 0:
            raise ValueError(f"sgd_skip must be >= 0 (got {self.sgd_skip})")
        if any(int(t) < 0 for t in self.thresholds):
            raise ValueError(f"thresholds must be >= 0 (got {self.thresholds})")

    def chunk(self, n: int) -> int:
        if self.algo == "sgd":
            return self.m or self.batch_size
        return {"nsam": n, "1sam": 1, "msam": self.m}.get(self.algo, n)

    def label(self) -> str:
        s = self.algo if self.algo != "msam" else f"{self.m}-sam"
        if self.algo == "sgd":
            s += f"(b={self.batch_size})"
        if self.algo not in ("gd", "sgd") or self.rho:
            s += f" rho={self.rho:g}"
        if self.switch != "none":
            s += f" {self.switch}@{self.switch_at}"
        return s


ENGINES = ("auto", "c", "torch")


@dataclass
class SimConfig:
    """Settings shared by every run of a grid. ``engine``: "c" (the fused kernel, ``kernel``),
    "torch" (the reference: ``sam_step`` with ``sharpness.functional.perturbation``), "auto"
    (c when a C compiler is available)."""

    n: int = 20
    d: int = 30
    sparsity: int = 3
    n_test: int = 1000
    noise: float = 0.0
    param: str = "uv"
    normalize: bool = False
    iters: int = 10_000
    diverge_threshold: float = 1e10
    engine: str = "auto"

    def validate(self) -> None:
        if self.param not in PARAMS:
            raise ValueError(f"param must be one of {PARAMS} (got {self.param!r})")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES} (got {self.engine!r})")
        if self.iters < 0:
            raise ValueError(f"iters must be >= 0 (got {self.iters})")
        if not (1 <= self.sparsity <= self.d):
            raise ValueError(f"sparsity must be in [1, d={self.d}] (got {self.sparsity})")


@dataclass
class SimResult:
    """Everything a grid produced; arrays are numpy float64, first axis = run. A diverged run's
    u, v, beta are its last finite state (``diverged_at``: the iteration it was stopped;
    ``state_at``: the iteration of the state returned)."""

    runs: list[RunSpec]
    log_iters: np.ndarray  # (L,)
    train_loss: np.ndarray  # (R, L)
    test_loss: np.ndarray  # (R, L)
    l1: np.ndarray  # (R, L)  ||beta||_1
    beta: np.ndarray  # (R, d)  final
    u: np.ndarray
    v: np.ndarray
    diverged_at: list[int | None]
    state_at: list[int] = field(default_factory=list)  # the iteration of the returned u, v
    alpha_inf_flow: np.ndarray | None = None  # (R, d) accumulated along the trajectory
    alpha_inf_exact: np.ndarray | None = None  # (R, d) from the final (u, v)
    engine: str = ""
    extra: dict = field(default_factory=dict)
    # the iteration a run of ``simulate`` was stopped at by ``on_chunk`` (None: ran to the end);
    # a stopped result is partial: its u, v, beta are the state at that iteration
    stopped_at: int | None = None


def log_schedule(iters: int, points: int = 200, first: int = 100) -> np.ndarray:
    """Iterations to log: 0..first-1 every step, then ``points`` log-spaced up to ``iters``."""
    if iters <= 0:
        return np.array([0])
    lin = np.arange(min(first, iters + 1))
    lg = np.unique(np.round(np.logspace(0, math.log10(iters), max(points, 2))).astype(int))
    return np.unique(np.concatenate([lin, lg, [iters]]))


# ------------------------------------------------------------------------------------------ core
def _dbeta(u: Tensor, v: Tensor, param: str) -> tuple[Tensor, Tensor]:
    """(d beta / d u, d beta / d v), elementwise."""
    return (v, u) if param == "uv" else (2 * u, -2 * v)


def _beta(u: Tensor, v: Tensor, param: str) -> Tensor:
    return u * v if param == "uv" else u * u - v * v


def _losses(X: Tensor, y: Tensor, beta: Tensor) -> Tensor:
    """||X beta - y||^2 / (2 n) per run; X (R, n, d), beta (R, d)."""
    r = (X * beta[:, None, :]).sum(-1) - y
    return 0.5 * (r * r).mean(-1)


def sam_step(
    u: Tensor,
    v: Tensor,
    X: Tensor,
    y: Tensor,
    A: Tensor,
    w: Tensor,
    rho: Tensor,
    gamma: Tensor,
    *,
    param: str,
    normalize: bool,
    track: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of every run (module docstring). Shapes: u, v (R, d); X (R, n, d); y, w (R, n);
    A (R, n, n); rho, gamma (R, 1). ``track`` (R, d) accumulates log a^2 in place."""
    du, dv = _dbeta(u, v, param)
    r = (X * _beta(u, v, param)[:, None, :]).sum(-1) - y  # (R, n) residuals
    G = torch.bmm(A, r.unsqueeze(-1) * X)  # (R, n, d): beta-gradient of each example's chunk
    gu, gv = G * du[:, None, :], G * dv[:, None, :]
    eu, ev = perturbation([gu, gv], rho, normalize=normalize, batch_dims=2)
    ut, vt = u[:, None, :] + eu, v[:, None, :] + ev  # (R, n, d): each example's perturbed point
    rt = (X * _beta(ut, vt, param)).sum(-1) - y  # residual of example j at its chunk's point
    q = (rt * w).unsqueeze(-1) * X  # (R, n, d): w_j g~_j
    dut, dvt = _dbeta(ut, vt, param)
    new_u = u - gamma * (q * dut).sum(1)
    new_v = v - gamma * (q * dvt).sum(1)
    if track is not None:
        gn = (gu * gu).sum(-1) + (gv * gv).sum(-1)
        rho_eff = ((eu * gu).sum(-1) + (ev * gv).sum(-1)) / gn.clamp_min(1e-300)  # (R, n)
        c = 2.0 if param == "uv" else 8.0
        track.sub_(c * gamma * (rho_eff.unsqueeze(-1) * q * G).sum(1))
    return new_u, new_v


def _pick_engine(cfg: SimConfig, runs: Sequence[RunSpec]) -> str:
    """The engine that will run this grid (``SimConfig`` docstring)."""
    from diagonal_linear_nets import kernel

    needs_c = [
        r.label()
        for r in runs
        if r.wd
        or r.balancedness
        or r.normalized_gd
        or r.loss_derivative_only
        or (r.algo == "sgd" and r.rho)
    ]
    if cfg.engine == "torch":
        if needs_c:
            raise ValueError(
                f"engine torch does not implement wd, balancedness, normalized_gd, "
                f"loss_derivative_only or mini-batch SAM (runs {needs_c}); use engine c"
            )
        return "torch"
    if kernel.load() is not None:
        return "c"
    if cfg.engine == "c" or needs_c:
        raise RuntimeError(
            f"the C kernel could not be built ({kernel.error()}); install a C "
            "compiler (cc/gcc) or use engine torch"
        )
    warnings.warn(
        f"the C kernel could not be built ({kernel.error()}); using the slower torch engine",
        stacklevel=3,
    )
    return "torch"


def _rho_at(r: RunSpec, t: int) -> float:
    """rho of run r for the step taken at iteration t (switches)."""
    if r.switch == "erm_to_sam":
        return r.rho if t >= r.switch_at else 0.0
    if r.switch == "sam_to_erm":
        return r.rho if t < r.switch_at else 0.0
    return r.rho


def _gamma_at(r: RunSpec, t: int) -> float:
    """gamma of run r for the step taken at iteration t: halved after every threshold step i
    (0-based) with i < t, as the original's ``if i in thresholds: gamma = gamma / 2``."""
    return r.gamma / 2 ** sum(1 for i in set(r.thresholds) if int(i) < t)


def _torch_steps(st: dict, k: int, idx: np.ndarray | None, cfg: SimConfig) -> None:
    """k steps of every run with the reference engine (``sam_step``), state in place."""
    R, n = st["y"].shape
    T = torch.from_numpy
    u, v = T(st["u"]), T(st["v"])
    X, y, A = T(st["X"]), T(st["y"]), st["A"]
    rho = T(st["rho"])[:, None]
    gamma = T(st["gamma"])[:, None]
    track = T(st["track"]) if st["track"] is not None else None
    w_full = torch.full((R, n), 1.0 / n, dtype=DTYPE)
    sgd = [i for i, b in enumerate(st["batch"]) if b > 0]
    for s in range(k):
        w = w_full
        if sgd:
            w = w_full.clone()
            for i in sgd:
                b = st["batch"][i]
                w[i] = torch.bincount(T(idx[i, s].astype(np.int64)), minlength=n).to(DTYPE) / b
        nu, nv = sam_step(
            u, v, X, y, A, w, rho, gamma, param=cfg.param, normalize=cfg.normalize, track=track
        )
        u.copy_(nu)
        v.copy_(nv)


def simulate(
    runs: Sequence[RunSpec],
    cfg: SimConfig,
    log_iters: Sequence[int] | np.ndarray | None = None,
    *,
    track_alpha: bool = False,
    problems: dict[int, Problem] | None = None,
    callback=None,
    on_chunk: Callable[[int, Callable[[], dict[str, np.ndarray]]], bool] | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
    max_chunk: int = MAX_CHUNK,
) -> SimResult:
    """Advance every run of ``runs`` together for ``cfg.iters`` steps (module docstring).

    ``log_iters``: iterations at which train/test loss and ||beta||_1 are recorded (iteration t =
    after t steps; default ``log_schedule``). ``track_alpha`` accumulates the flow's alpha_inf.
    ``problems`` maps a seed to a ready data set (default: generated).
    ``callback(t, result_so_far_dict)`` is called at each log point (for streaming metrics).

    Divergence: the C engine checks every step (a run whose loss exceeds
    ``cfg.diverge_threshold`` or is NaN stops there; a step that would make the state non-finite
    is not taken); the torch engine checks at every log point or event and puts a run back to
    its state at the previous check. Either way a diverged run keeps a finite state.

    Checkpoints. The steps run in chunks: the C engine splits each interval between log points
    (or events) into chunks of at most ``max_chunk`` steps (the result does not depend on the
    split: each step is the same instruction sequence and SGD's draws are taken in order), the
    torch engine runs one interval per chunk (its divergence check sits at the chunk's end).
    After each chunk, ``on_chunk(t, snapshot)`` is called with the iteration t reached;
    ``snapshot()`` returns the whole simulator state at t (``SNAPSHOT_KEYS``: u, v, the alpha
    bookkeeping, the metrics so far, divergence, the SGD streams' RandomState) as numpy arrays.
    When ``on_chunk`` returns True the simulation stops there and the result is partial
    (``stopped_at`` = t). ``resume_from`` = such a snapshot continues the simulation from it:
    the result equals an uninterrupted one bit for bit.
    """
    if max_chunk < 1:
        raise ValueError(f"max_chunk must be >= 1 (got {max_chunk})")
    cfg.validate()
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to simulate")
    n, d = cfg.n, cfg.d
    for r in runs:
        r.validate(n)
    engine = _pick_engine(cfg, runs)
    log_iters = np.unique(np.asarray(log_schedule(cfg.iters) if log_iters is None else log_iters))
    if len(log_iters) and (log_iters.min() < 0 or log_iters.max() > cfg.iters):
        raise ValueError(f"log iterations must lie in [0, iters={cfg.iters}]")
    problems = dict(problems or {})
    for s in {r.seed for r in runs}:
        if s not in problems:
            problems[s] = make_problem(n, d, cfg.sparsity, cfg.n_test, cfg.noise, s)
    R = len(runs)

    def stack(key: str) -> np.ndarray:
        return np.ascontiguousarray(
            np.stack([getattr(problems[r.seed], key).numpy() for r in runs])
        )

    X, y, Xt, yt = stack("X"), stack("y"), stack("X_test"), stack("y_test")
    alpha = np.array([r.alpha for r in runs], dtype=np.float64)[:, None]
    u = np.tile(alpha, (1, d))
    v = np.zeros((R, d)) if cfg.param == "uv" else u.copy()
    batch = [r.batch_size if r.algo == "sgd" else 0 for r in runs]
    streams: dict[int, np.random.RandomState] = {}
    for i, r in enumerate(runs):
        if batch[i]:
            streams[i] = (
                np.random.RandomState(r.sgd_seed)
                if r.sgd_seed is not None
                else problem_and_stream(n, d, cfg.sparsity, cfg.n_test, cfg.noise, r.seed)[1]
            )
            if r.sgd_skip:
                streams[i].randint(0, n, size=r.sgd_skip)  # the same stream as one-by-one draws
    bmax = max(batch)
    a0sq = alpha**2 if cfg.param == "uv" else 4 * alpha**2
    track = np.tile(np.log(a0sq), (1, d)) if track_alpha else None
    st = {"X": X, "y": y, "u": u, "v": v, "track": track, "batch": batch}
    if engine == "torch":
        A = torch.zeros(R, n, n, dtype=DTYPE)
        for i, r in enumerate(runs):
            m = r.chunk(n) if r.algo != "sgd" else n
            for c in range(n // m):
                A[i, c * m : (c + 1) * m, c * m : (c + 1) * m] = 1.0 / m
        st["A"] = A
    events = {r.switch_at for r in runs if r.switch != "none"}
    events |= {int(i) + 1 for r in runs for i in r.thresholds}
    events = {e for e in events if 0 < e <= cfg.iters}
    L = len(log_iters)
    tr = np.full((R, L), np.nan)
    te = np.full((R, L), np.nan)
    l1 = np.full((R, L), np.nan)
    diverged: list[int | None] = [None] * R
    state_at: list[int] = [cfg.iters] * R

    # a diverged run's last finite state may be huge: its products overflow harmlessly (its
    # losses are reported as missing)
    def quiet():
        return np.errstate(over="ignore", invalid="ignore")

    def beta_of(uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
        with quiet():
            return uu * vv if cfg.param == "uv" else uu * uu - vv * vv

    def losses(XX: np.ndarray, yy: np.ndarray, beta: np.ndarray) -> np.ndarray:
        with quiet():
            res = np.einsum("rnd,rd->rn", XX, beta) - yy
            return 0.5 * np.mean(res * res, axis=-1)

    def record(j: int, t: int) -> None:
        beta = beta_of(u, v)
        ok = np.array([dv is None for dv in diverged])
        tr[:, j] = np.where(ok, losses(X, y, beta), np.nan)
        te[:, j] = np.where(ok, losses(Xt, yt, beta), np.nan)
        l1[:, j] = np.where(ok, np.abs(beta).sum(-1), np.nan)
        if callback is not None:
            callback(t, {"train_loss": tr[:, j], "test_loss": te[:, j], "l1": l1[:, j]})

    def advance(t0: int, k: int) -> None:
        alive = [i for i in range(R) if diverged[i] is None]
        if not alive:
            return
        idx = None
        if bmax:
            idx = np.zeros((R, k, bmax), dtype=np.int32)
            for i, rs in streams.items():
                idx[i, :, : batch[i]] = rs.randint(0, n, size=(k, batch[i]))
        on = np.array([dv is None for dv in diverged], dtype=np.float64)
        # a diverged run is frozen in the reference engine by a zero step (its state is finite)
        st["rho"] = np.array([_rho_at(r, t0) for r in runs]) * on
        st["gamma"] = np.array([_gamma_at(r, t0) for r in runs]) * on
        if engine == "c":
            _c_steps(st, alive, k, idx, cfg, runs, diverged, t0)
            for i in alive:
                if diverged[i] is not None:
                    state_at[i] = diverged[i]
        else:
            keep_u, keep_v = u.copy(), v.copy()
            keep_t = None if track is None else track.copy()
            _torch_steps(st, k, idx, cfg)
            beta = beta_of(u, v)
            lo = losses(X, y, beta)
            bad = ~np.isfinite(lo) | (lo > cfg.diverge_threshold) | ~np.isfinite(u).all(-1)
            bad |= ~np.isfinite(v).all(-1)
            for i in np.nonzero(bad)[0]:
                if diverged[i] is None:
                    diverged[i] = t0 + k
                    state_at[i] = t0
                    u[i], v[i] = keep_u[i], keep_v[i]
                    if track is not None:
                        track[i] = keep_t[i]

    def snapshot(t: int, j: int) -> dict[str, np.ndarray]:
        snap = {
            "t": np.array(t, dtype=np.int64),
            "j": np.array(j, dtype=np.int64),
            "engine": np.array(engine),
            "log_iters": np.asarray(log_iters, dtype=np.int64),
            "u": u.copy(),
            "v": v.copy(),
            "train_loss": tr.copy(),
            "test_loss": te.copy(),
            "l1": l1.copy(),
            "diverged_at": np.array([-1 if x is None else x for x in diverged], dtype=np.int64),
            "state_at": np.array(state_at, dtype=np.int64),
        }
        if track is not None:
            snap["track"] = track.copy()
        snap.update(_stream_states(streams))
        return snap

    t = 0
    j = 0
    if resume_from is not None:
        t, j = _restore(resume_from, engine, log_iters, u, v, track, tr, te, l1, streams)
        diverged[:] = [None if x < 0 else int(x) for x in resume_from["diverged_at"]]
        state_at[:] = [int(x) for x in resume_from["state_at"]]
    elif L and log_iters[0] == 0:
        record(0, 0)
        j = 1
    stops = sorted(set(log_iters.tolist()) | events | {cfg.iters})
    stopped_at = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and kind to a shared machine
    try:
        with torch.no_grad():
            for stop in (s for s in stops if s > t):
                while t < stop and stopped_at is None:
                    k = stop - t if engine == "torch" else min(stop - t, max_chunk)
                    advance(t, k)
                    t += k
                    if j < L and log_iters[j] == t:
                        record(j, t)
                        j += 1
                    stop_now = on_chunk is not None and on_chunk(t, lambda t=t, j=j: snapshot(t, j))
                    if stop_now and t < cfg.iters:  # at the end there is nothing left to stop
                        stopped_at = t
                if stopped_at is not None:
                    break
    finally:
        torch.set_num_threads(threads)
    beta = beta_of(u, v)
    res = SimResult(
        runs=runs,
        log_iters=log_iters,
        train_loss=tr,
        test_loss=te,
        l1=l1,
        beta=beta.copy(),
        u=u.copy(),
        v=v.copy(),
        diverged_at=diverged,
        state_at=state_at,
        engine=engine,
        stopped_at=stopped_at,
    )
    if track is not None:
        res.alpha_inf_flow = np.exp(0.5 * track)
    with quiet():
        exact = u * u - v * v if cfg.param == "uv" else 4 * u * v
        res.alpha_inf_exact = np.sqrt(np.clip(exact, 0, None))
    return res


SNAPSHOT_KEYS = (
    "t",
    "j",
    "engine",
    "log_iters",
    "u",
    "v",
    "train_loss",
    "test_loss",
    "l1",
    "diverged_at",
    "state_at",
    "track",
    "stream_runs",
    "stream_keys",
    "stream_pos",
    "stream_has_gauss",
    "stream_gauss",
)


def _stream_states(streams: dict[int, np.random.RandomState]) -> dict[str, np.ndarray]:
    """The SGD streams' MT19937 states as arrays (run index, key, position, gauss cache)."""
    order = sorted(streams)
    states = [streams[i].get_state() for i in order]
    return {
        "stream_runs": np.array(order, dtype=np.int64),
        "stream_keys": np.array([s[1] for s in states], dtype=np.uint32).reshape(len(order), 624),
        "stream_pos": np.array([s[2] for s in states], dtype=np.int64),
        "stream_has_gauss": np.array([s[3] for s in states], dtype=np.int64),
        "stream_gauss": np.array([s[4] for s in states], dtype=np.float64),
    }


def _restore(snap, engine, log_iters, u, v, track, tr, te, l1, streams) -> tuple[int, int]:
    """Put a ``simulate`` snapshot back into the state arrays (in place); returns (t, j).
    A snapshot of another grid, engine or logging schedule is refused: continuing from it
    would not give the uninterrupted run's result."""
    missing = [k for k in SNAPSHOT_KEYS if k not in snap and k != "track"]
    if missing:
        raise ValueError(f"checkpoint lacks {', '.join(missing)} (not a simulator checkpoint)")
    if str(snap["engine"]) != engine:
        raise ValueError(
            f"checkpoint was written by engine {snap['engine']}, this run uses engine {engine}: "
            f"pass --engine {snap['engine']} to continue it"
        )
    if not np.array_equal(snap["log_iters"], log_iters) or snap["u"].shape != u.shape:
        raise ValueError("checkpoint is of another grid (runs, d or logging schedule differ)")
    if ("track" in snap) != (track is not None):
        raise ValueError("checkpoint and run disagree on alpha tracking (--theory)")
    if sorted(streams) != snap["stream_runs"].tolist():
        raise ValueError("checkpoint is of another grid (its SGD runs differ)")
    for dst, key in ((u, "u"), (v, "v"), (tr, "train_loss"), (te, "test_loss"), (l1, "l1")):
        dst[...] = snap[key]
    if track is not None:
        track[...] = snap["track"]
    for q, i in enumerate(snap["stream_runs"].tolist()):
        streams[i].set_state(
            (
                "MT19937",
                snap["stream_keys"][q],
                int(snap["stream_pos"][q]),
                int(snap["stream_has_gauss"][q]),
                float(snap["stream_gauss"][q]),
            )
        )
    return int(snap["t"]), int(snap["j"])


def _c_steps(st, alive, k, idx, cfg, runs, diverged, t0) -> None:
    """k steps of the alive runs with the C kernel; marks runs that stopped."""
    from diagonal_linear_nets import kernel

    R = len(runs)
    sub = alive if len(alive) < R else None
    params = (kernel.RunParams * len(alive))()
    n = st["X"].shape[1]
    for p, i in zip(params, alive, strict=True):
        r = runs[i]
        p.m = r.chunk(n)
        p.batch = st["batch"][i]
        p.ldo = int(r.loss_derivative_only)
        p.ngd = int(r.normalized_gd)
        p.rho = st["rho"][i]
        p.gamma = st["gamma"][i]
        p.wd = r.wd
        p.bal = r.balancedness

    def pick(a):
        if a is None or sub is None:
            return a
        return np.ascontiguousarray(a[sub])

    X, y, u, v, tr = (pick(st[key]) for key in ("X", "y", "u", "v", "track"))
    div = kernel.advance(
        X,
        y,
        u,
        v,
        params,
        k,
        param=cfg.param,
        normalize=cfg.normalize,
        threshold=cfg.diverge_threshold,
        idx=pick(idx),
        track=tr,
    )
    if sub is not None:
        st["u"][sub], st["v"][sub] = u, v
        if tr is not None:
            st["track"][sub] = tr
    for q, i in enumerate(alive):
        if div[q] >= 0:
            diverged[i] = t0 + int(div[q])
