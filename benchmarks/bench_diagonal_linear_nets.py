"""Diagonal linear nets, cold: the notebook's rho grid (GD + 7 n-SAM + 7 1-SAM at its settings,
10^4 + 1 steps) and a 45-run Fig. 6 sweep (5 alpha x 3 algorithms x 3 seeds, 10^6 steps), each in
a fresh process with an empty kernel cache, next to a plain per-run numpy loop (the original's
algorithm written straightforwardly, run here) whose results must agree.

Targets (issue 12): the grid <= 1 s and the sweep <= 120 s, cold. "cold" = a fresh Python process
whose kernel cache ($SHARPNESS_CACHE) is empty, so the C compilation is included; the time of
``simulate`` is reported, and the process's wall time (Python + torch import) next to it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diagonal_linear_nets.simulator import RunSpec, SimConfig, make_problem, simulate

D = 30
N = 10_001
GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.9]
SWEEP_ALPHA = [0.01, 0.02, 0.03, 0.05, 0.1]
SWEEP_ITERS = 1_000_000
REF_ITERS = 10_000  # the numpy loop on the sweep is timed on this many steps and extrapolated
ROOT = Path(__file__).resolve().parents[1]


def grid_runs() -> list[RunSpec]:
    """The notebook's cell 4: GD, 1-SAM at 15/d, n-SAM at 10/d; suite rho (1-SAM x2)."""
    runs = [RunSpec("gd", gamma=15 / D)]
    runs += [RunSpec("nsam", rho=r, gamma=10 / D) for r in GRID]
    return runs + [RunSpec("1sam", rho=2 * r, gamma=15 / D) for r in GRID]


def sweep_runs() -> list[RunSpec]:
    """alpha x algorithm x seed at the Fig. 6 setting (gamma 5/d, rho 0.07 original)."""
    out = []
    for alpha in SWEEP_ALPHA:
        for algo, rho in (("gd", 0.0), ("nsam", 0.07), ("1sam", 0.14)):
            out += [RunSpec(algo, rho=rho, alpha=alpha, gamma=5 / D, seed=s) for s in range(3)]
    return out


def plain_loop(run: RunSpec, iters: int, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One run, per example, no batching: the original's loops (suite rho: no factor 2)."""
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
        if not np.isfinite(u).all():
            break
    return u * v


_CHILD = """
import json, sys, time
t0 = time.perf_counter()
c0 = time.process_time()
from benchmarks.bench_diagonal_linear_nets import {fn}
from diagonal_linear_nets.simulator import SimConfig, simulate
t1 = time.perf_counter()
c1 = time.process_time()
runs = {fn}()
res = simulate(runs, SimConfig(iters={iters}), [{iters}])
t2 = time.perf_counter()
c2 = time.process_time()
json.dump({{"import": t1 - t0, "simulate": t2 - t1, "cpu": c2 - c1, "engine": res.engine,
           "beta": res.beta.tolist()}}, sys.stdout)
"""


def cold(fn: str, iters: int) -> dict:
    """Run ``simulate(fn(), iters)`` in a fresh process with an empty kernel cache. Returns the
    wall and CPU seconds of ``simulate`` (CPU: the process's, plus the compiler's, since on a
    shared machine the wall time also measures the other users)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, SHARPNESS_CACHE=cache, PYTHONPATH=str(ROOT))
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _CHILD.format(fn=fn, iters=iters)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(out)
    res["wall"] = wall
    # CPU of every descendant (python, cc, as, ld) minus the child's own import time
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["cpu_all"] = total
    return res


def main() -> str:
    lines = ["## Diagonal linear networks (cold: fresh process, empty kernel cache)", ""]
    g = cold("grid_runs", N)
    print(f"grid cold: simulate {g['simulate']:.2f} s, process {g['wall']:.2f} s", flush=True)
    P = make_problem()
    X, y = P.X.numpy(), P.y.numpy()
    runs = grid_runs()
    t = time.perf_counter()
    with np.errstate(all="ignore"):  # 1-SAM at 0.9 (original) overflows, as in the original
        ref = [plain_loop(r, N, X, y) for r in runs]
    t_ref = time.perf_counter() - t
    print(f"grid numpy loop {t_ref:.1f} s", flush=True)
    beta = np.asarray(g["beta"])
    ok = [r.rho < 1.8 for r in runs]  # 1-SAM at 0.9 (original) diverges in both
    err = max(float(np.abs(b - beta[i]).max()) for i, b in enumerate(ref) if ok[i])
    s = cold("sweep_runs", SWEEP_ITERS)
    print(f"sweep cold: simulate {s['simulate']:.1f} s, process {s['wall']:.1f} s", flush=True)
    sw = sweep_runs()
    probs = {k: make_problem(seed=k) for k in range(3)}
    t = time.perf_counter()
    sref = [plain_loop(r, REF_ITERS, probs[r.seed].X.numpy(), probs[r.seed].y.numpy()) for r in sw]
    t_sref = (time.perf_counter() - t) * SWEEP_ITERS / REF_ITERS
    short = simulate(sw, SimConfig(iters=REF_ITERS), [REF_ITERS])
    serr = float(np.abs(np.asarray(sref) - short.beta).max())
    singles = simulate(sw[:3], SimConfig(iters=REF_ITERS), [REF_ITERS])
    bitwise = bool(np.array_equal(singles.beta, short.beta[:3]))
    lines += [
        "| what | simulate wall (s) | simulate CPU (s) | process wall / CPU incl. cc (s) "
        "| numpy per-run loop (s) | ratio | target |",
        "|---|---|---|---|---|---|---|",
        f"| rho grid: 15 runs x (10^4+1), notebook settings | {g['simulate']:.2f} | "
        f"{g['cpu']:.2f} | {g['wall']:.2f} / {g['cpu_all']:.2f} | {t_ref:.1f} | "
        f"{t_ref / g['simulate']:.0f}x | <= 1 |",
        f"| Fig. 6 sweep: 45 runs x 10^6 (5 alpha x 3 algorithms x 3 seeds) | "
        f"{s['simulate']:.1f} | {s['cpu']:.1f} | {s['wall']:.1f} / {s['cpu_all']:.1f} | "
        f"~{t_sref:.0f} (10^4 steps x 100) | {t_sref / s['simulate']:.0f}x | <= 120 |",
        "",
        f"Engine: {g['engine']} (float64). Max |beta - beta_numpy| over the grid's converging "
        f"runs: {err:.1e}; over the sweep at 10^4 steps: {serr:.1e}. Batched == single, bit for "
        f"bit: {bitwise}.",
    ]
    return "\n".join(lines) + "\n"
