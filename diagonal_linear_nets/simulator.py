"""Batched float64 simulator of diagonal linear networks trained by GD, SGD, n-SAM, 1-SAM, m-SAM.

Model and loss (REFERENCE.md §4.2). beta = u (.) v with u0 = alpha 1, v0 = 0 (``param="uv"``), or
beta = u^2 - v^2 with u0 = v0 = alpha (``param="u2v2"``); the loss of a set S of examples is

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

Batching. Every run of a grid (algorithm x rho x alpha x gamma x seed) is one row of the same
tensors: u, v have shape (R, d), the data X has shape (R, n, d) (one data set per run's seed), and
the chunk structure of run r is an (n x n) averaging matrix A_r (A_r[k, j] = 1/m when k and j share
a chunk), so G = A_r (r (.) X) gives every example the beta-gradient of its own chunk, and GD,
n-SAM, 1-SAM and m-SAM advance in one tensor program. Every operation is per run (no reduction
mixes runs), so a diverging run cannot poison the others: at every logging point runs whose loss
is non-finite or above ``diverge_threshold`` are marked diverged (iteration recorded) and frozen.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from sharpness.functional import perturbation

ALGOS = ("gd", "sgd", "nsam", "1sam", "msam")
PARAMS = ("uv", "u2v2")
SWITCHES = ("none", "erm_to_sam", "sam_to_erm")
DTYPE = torch.float64


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
    return Problem(t(X), t(y), t(X_test), t(X_test @ beta), t(beta))


# ------------------------------------------------------------------------------------------ runs
@dataclass
class RunSpec:
    """One run of a grid. ``rho`` is in the suite's convention (module docstring)."""

    algo: str = "gd"
    rho: float = 0.0
    alpha: float = 0.1
    gamma: float = 0.167
    seed: int = 0
    m: int | None = None  # chunk size of m-SAM (nsam: n, 1sam: 1)
    batch_size: int = 1  # SGD only
    switch: str = "none"
    switch_at: int = 0

    def validate(self, n: int) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS} (got {self.algo!r})")
        if self.rho < 0 or not math.isfinite(self.rho):
            raise ValueError(f"rho must be finite and >= 0 (got {self.rho})")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (got {self.alpha})")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0 (got {self.gamma})")
        if self.algo == "msam":
            if self.m is None or self.m < 1 or n % self.m:
                raise ValueError(f"m-SAM needs m dividing n={n} (got m={self.m})")
        if self.algo == "sgd":
            if not (1 <= self.batch_size <= n):
                raise ValueError(f"SGD batch_size must be in [1, n={n}] (got {self.batch_size})")
            if self.rho != 0:
                raise ValueError("SGD is plain SGD here: use rho = 0 (SAM variants are full batch)")
        if self.switch not in SWITCHES:
            raise ValueError(f"switch must be one of {SWITCHES} (got {self.switch!r})")
        if self.switch != "none" and self.switch_at < 0:
            raise ValueError(f"switch_at must be >= 0 (got {self.switch_at})")

    def chunk(self, n: int) -> int:
        return {"nsam": n, "1sam": 1, "msam": self.m}.get(self.algo, n)

    def label(self) -> str:
        s = self.algo if self.algo != "msam" else f"{self.m}-sam"
        if self.algo == "sgd":
            s += f"(b={self.batch_size})"
        if self.algo not in ("gd", "sgd"):
            s += f" rho={self.rho:g}"
        if self.switch != "none":
            s += f" {self.switch}@{self.switch_at}"
        return s


@dataclass
class SimConfig:
    """Settings shared by every run of a grid."""

    n: int = 20
    d: int = 30
    sparsity: int = 3
    n_test: int = 1000
    noise: float = 0.0
    param: str = "uv"
    normalize: bool = False
    iters: int = 10_000
    diverge_threshold: float = 1e10
    compile: bool = False
    unroll: int = 20

    def validate(self) -> None:
        if self.param not in PARAMS:
            raise ValueError(f"param must be one of {PARAMS} (got {self.param!r})")
        if self.iters < 0:
            raise ValueError(f"iters must be >= 0 (got {self.iters})")
        if not (1 <= self.sparsity <= self.d):
            raise ValueError(f"sparsity must be in [1, d={self.d}] (got {self.sparsity})")


@dataclass
class SimResult:
    """Everything a grid produced; arrays are numpy float64, first axis = run."""

    runs: list[RunSpec]
    log_iters: np.ndarray  # (L,)
    train_loss: np.ndarray  # (R, L)
    test_loss: np.ndarray  # (R, L)
    l1: np.ndarray  # (R, L)  ||beta||_1
    beta: np.ndarray  # (R, d)  final
    u: np.ndarray
    v: np.ndarray
    diverged_at: list[int | None]
    alpha_inf_flow: np.ndarray | None = None  # (R, d) accumulated along the trajectory
    alpha_inf_exact: np.ndarray | None = None  # (R, d) from the final (u, v)
    extra: dict = field(default_factory=dict)

    def run_dicts(self) -> list[dict]:
        return [asdict(r) | {"label": r.label()} for r in self.runs]


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


def _multi_step(u, v, X, y, A, w, rho, gamma, param: str, normalize: bool, k: int):
    for _ in range(k):
        u, v = sam_step(u, v, X, y, A, w, rho, gamma, param=param, normalize=normalize)
    return u, v


_COMPILED: dict = {}


def _compiled_block(param: str, normalize: bool, k: int):
    """torch.compile of ``k`` unrolled steps (one C++ kernel set; cached per process)."""
    key = (param, normalize, k)
    if key not in _COMPILED:

        def block(u, v, X, y, A, w, rho, gamma):
            return _multi_step(u, v, X, y, A, w, rho, gamma, param, normalize, k)

        _COMPILED[key] = torch.compile(block, dynamic=False)
    return _COMPILED[key]


def simulate(
    runs: Sequence[RunSpec],
    cfg: SimConfig,
    log_iters: Sequence[int] | np.ndarray | None = None,
    *,
    track_alpha: bool = False,
    problems: dict[int, Problem] | None = None,
    callback=None,
) -> SimResult:
    """Advance every run of ``runs`` together for ``cfg.iters`` steps (module docstring).

    ``log_iters``: iterations at which train/test loss and ||beta||_1 are recorded (iteration t =
    after t steps; default ``log_schedule``). ``track_alpha`` accumulates the flow's alpha_inf (it
    disables ``cfg.compile``). ``problems`` maps a seed to a ready data set (default: generated).
    ``callback(t, result_so_far_dict)`` is called at each log point (for streaming metrics).
    """
    cfg.validate()
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to simulate")
    n, d = cfg.n, cfg.d
    for r in runs:
        r.validate(n)
    log_iters = np.unique(np.asarray(log_schedule(cfg.iters) if log_iters is None else log_iters))
    if len(log_iters) and (log_iters.min() < 0 or log_iters.max() > cfg.iters):
        raise ValueError(f"log iterations must lie in [0, iters={cfg.iters}]")
    problems = dict(problems or {})
    for s in {r.seed for r in runs}:
        if s not in problems:
            problems[s] = make_problem(n, d, cfg.sparsity, cfg.n_test, cfg.noise, s)
    R = len(runs)
    X = torch.stack([problems[r.seed].X for r in runs])
    y = torch.stack([problems[r.seed].y for r in runs])
    Xt = torch.stack([problems[r.seed].X_test for r in runs])
    yt = torch.stack([problems[r.seed].y_test for r in runs])
    A = torch.zeros(R, n, n, dtype=DTYPE)
    for i, r in enumerate(runs):
        m = r.chunk(n)
        for c in range(n // m):
            A[i, c * m : (c + 1) * m, c * m : (c + 1) * m] = 1.0 / m
    alpha = torch.tensor([r.alpha for r in runs], dtype=DTYPE)[:, None]
    u = alpha.expand(R, d).clone()
    v = torch.zeros(R, d, dtype=DTYPE) if cfg.param == "uv" else u.clone()
    gamma = torch.tensor([r.gamma for r in runs], dtype=DTYPE)[:, None]
    rho_full = torch.tensor([r.rho for r in runs], dtype=DTYPE)[:, None]
    w_full = torch.full((R, n), 1.0 / n, dtype=DTYPE)
    sgd_rows = [i for i, r in enumerate(runs) if r.algo == "sgd"]
    sgd_gens = {i: torch.Generator().manual_seed(10_007 * runs[i].seed + 1) for i in sgd_rows}
    a0sq = alpha**2 if cfg.param == "uv" else 4 * alpha**2
    track = torch.log(a0sq).expand(R, d).clone() if track_alpha else None
    use_compile = cfg.compile and not track_alpha and not sgd_rows

    # Events at which a run's rho changes: switches.
    def rho_at(t: int) -> Tensor:
        if not any(r.switch != "none" for r in runs):
            return rho_full
        on = [
            (r.switch == "none")
            or (r.switch == "erm_to_sam" and t >= r.switch_at)
            or (r.switch == "sam_to_erm" and t < r.switch_at)
            for r in runs
        ]
        return rho_full * torch.tensor(on, dtype=DTYPE)[:, None]

    events = sorted({r.switch_at for r in runs if r.switch != "none" and r.switch_at <= cfg.iters})
    L = len(log_iters)
    tr = np.full((R, L), np.nan)
    te = np.full((R, L), np.nan)
    l1 = np.full((R, L), np.nan)
    diverged: list[int | None] = [None] * R
    alive = torch.ones(R, 1, dtype=DTYPE)

    def record(j: int, t: int) -> None:
        nonlocal u, v
        beta = _beta(u, v, cfg.param)
        a = _losses(X, y, beta)
        b = _losses(Xt, yt, beta)
        bad = ~torch.isfinite(a) | (a > cfg.diverge_threshold) | ~torch.isfinite(beta).all(-1)
        for i in torch.nonzero(bad).flatten().tolist():
            if diverged[i] is None:
                diverged[i] = t
        if bad.any():  # freeze diverged runs at a harmless point so they cost nothing and
            # never produce NaN that later code could mistake for a result
            keep = (~bad).to(DTYPE)[:, None]
            alive.mul_(keep)
            u = torch.where(bad[:, None], torch.zeros_like(u), u)
            v = torch.where(bad[:, None], torch.zeros_like(v), v)
        ok = np.array([dv is None for dv in diverged])
        tr[:, j] = np.where(ok, a.numpy(), np.nan)
        te[:, j] = np.where(ok, b.numpy(), np.nan)
        l1[:, j] = np.where(ok, beta.abs().sum(-1).numpy(), np.nan)
        if callback is not None:
            callback(t, {"train_loss": tr[:, j], "test_loss": te[:, j], "l1": l1[:, j]})

    t = 0
    j = 0
    if L and log_iters[0] == 0:
        record(0, 0)
        j = 1
    stops = sorted(set(log_iters.tolist()) | set(events) | {cfg.iters})
    stops = [s for s in stops if s > 0]
    threads = torch.get_num_threads()
    # Tiny tensors: one thread is fastest, and more threads thrash a shared machine.
    torch.set_num_threads(1)
    with torch.no_grad():
        try:
            for stop in stops:
                # rho and gamma are constant between stops (switches are stops): build them once.
                rho = rho_at(t) * alive
                g = gamma * alive
                while t < stop:
                    k = stop - t
                    if use_compile and k >= cfg.unroll:
                        blk = _compiled_block(cfg.param, cfg.normalize, cfg.unroll)
                        for _ in range(k // cfg.unroll):
                            u, v = blk(u, v, X, y, A, w_full, rho, g)
                        t += (k // cfg.unroll) * cfg.unroll
                        continue
                    w = w_full
                    if sgd_rows:
                        w = w_full.clone()
                        for i in sgd_rows:
                            b = runs[i].batch_size
                            idx = torch.randint(0, n, (b,), generator=sgd_gens[i])
                            w[i] = torch.bincount(idx, minlength=n).to(DTYPE) / b
                    u, v = sam_step(
                        u,
                        v,
                        X,
                        y,
                        A,
                        w,
                        rho,
                        g,
                        param=cfg.param,
                        normalize=cfg.normalize,
                        track=track,
                    )
                    t += 1
                if j < L and log_iters[j] == t:
                    record(j, t)
                    j += 1
        finally:
            torch.set_num_threads(threads)
    beta = _beta(u, v, cfg.param)
    res = SimResult(
        runs=runs,
        log_iters=log_iters,
        train_loss=tr,
        test_loss=te,
        l1=l1,
        beta=beta.numpy().copy(),
        u=u.numpy().copy(),
        v=v.numpy().copy(),
        diverged_at=diverged,
    )
    if track is not None:
        res.alpha_inf_flow = torch.exp(0.5 * track).numpy()
    exact = u * u - v * v if cfg.param == "uv" else 4 * u * v
    res.alpha_inf_exact = exact.clamp_min(0).sqrt().numpy()
    return res


def test_loss_of(beta: np.ndarray, problem: Problem) -> float:
    """||X_test beta - y_test||^2 / (2 n_test)."""
    r = problem.X_test.numpy() @ beta - problem.y_test.numpy()
    return float(0.5 * np.mean(r * r))
