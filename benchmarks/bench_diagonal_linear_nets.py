"""Diagonal linear nets: the rho grid (GD + 7 n-SAM + 7 1-SAM, n=20, d=30, 10^4 iterations) and
Fig. 6 (GD, n-SAM, 1-SAM, 10^6 iterations), batched simulator vs a plain per-example loop (the
original's algorithm written straightforwardly in numpy) timed in the same run."""

from __future__ import annotations

import time

import numpy as np

from diagonal_linear_nets.simulator import RunSpec, SimConfig, make_problem, simulate

GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.9]


def _grid_runs() -> list[RunSpec]:
    runs = [RunSpec("gd")] + [RunSpec("nsam", rho=r) for r in GRID]
    return runs + [RunSpec("1sam", rho=2 * r) for r in GRID]


def plain_loop(run: RunSpec, iters: int, X, y) -> np.ndarray:
    """One run, per example, no batching (what the original notebook does)."""
    n, d = X.shape
    u, v = np.full(d, run.alpha), np.zeros(d)
    for _ in range(iters):
        r = X @ (u * v) - y
        if run.algo == "gd":
            g = X.T @ r / n
            u, v = u - run.gamma * g * v, v - run.gamma * g * u
            continue
        gu, gv = np.zeros(d), np.zeros(d)
        if run.algo == "nsam":
            g = X.T @ r / n
            us, vs = u + run.rho * g * v, v + run.rho * g * u
            gs = X.T @ (X @ (us * vs) - y) / n
            gu, gv = gs * vs, gs * us
        else:
            for k in range(n):
                us, vs = u + run.rho * r[k] * X[k] * v, v + run.rho * r[k] * X[k] * u
                rk = X[k] @ (us * vs) - y[k]
                gu += rk * X[k] * vs / n
                gv += rk * X[k] * us / n
        u, v = u - run.gamma * gu, v - run.gamma * gv
    return u * v


def main() -> str:
    lines = ["## Diagonal linear networks", "", "| what | time (s) | target |", "|---|---|---|"]
    runs = _grid_runs()
    t = time.perf_counter()
    res = simulate(runs, SimConfig(iters=10_000), [0, 10_000])
    t_eager = time.perf_counter() - t
    print(f"grid eager {t_eager:.2f} s", flush=True)
    t = time.perf_counter()
    simulate(runs, SimConfig(iters=10_000, compile=True), [0, 10_000])
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    resc = simulate(runs, SimConfig(iters=10_000, compile=True), [0, 10_000])
    t_comp = time.perf_counter() - t
    print(f"grid compiled first {t_first:.1f} s, warm {t_comp:.2f} s", flush=True)
    P = make_problem()
    X, y = P.X.numpy(), P.y.numpy()
    t = time.perf_counter()
    betas = [plain_loop(r, 10_000, X, y) for r in runs]
    t_loop = time.perf_counter() - t
    print(f"plain loop {t_loop:.1f} s", flush=True)
    ok = [r.algo != "1sam" or r.rho < 1 for r in runs]
    err = max(float(np.abs(b - res.beta[i]).max()) for i, b in enumerate(betas) if ok[i])
    errc = float(np.nanmax(np.abs(resc.beta - res.beta)[ok]))
    t = time.perf_counter()
    f6 = [RunSpec("gd"), RunSpec("nsam", rho=0.1), RunSpec("1sam", rho=0.2)]
    simulate(f6, SimConfig(iters=1_000_000, compile=True), [0, 1_000_000])
    t_f6 = time.perf_counter() - t
    print(f"fig6 compiled {t_f6:.1f} s", flush=True)
    lines += [
        f"| rho grid, 15 runs x 10^4, batched eager | {t_eager:.2f} | <= 1 |",
        f"| rho grid, torch.compile (warm; first call {t_first:.1f} s) | {t_comp:.2f} | <= 1 |",
        f"| rho grid, plain per-example numpy loop | {t_loop:.2f} | - |",
        f"| ratio loop / batched eager, loop / compiled warm | {t_loop / t_eager:.1f}x, "
        f"{t_loop / t_comp:.1f}x | - |",
        f"| Fig. 6, 3 runs x 10^6, torch.compile incl. compile | {t_f6:.1f} | <= 60 |",
        "",
        f"max |beta_batched - beta_loop| over converging runs: {err:.2e}; "
        f"compiled vs eager: {errc:.2e}.",
    ]
    return "\n".join(lines) + "\n"
