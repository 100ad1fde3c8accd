"""Train diagonal linear networks with GD, SGD, n-SAM, 1-SAM, m-SAM: one batched grid per call.

    python diagonal_linear_nets/train.py --algo gd nsam 1sam --rho 0.01 0.1 --iters 10000 \
        --out_dir runs/diag_demo

Every combination of (--algo x --rho x --alpha x --seeds) is one run; GD and SGD ignore --rho (one
run each per alpha and seed). rho uses the suite's convention (``simulator`` docstring): it
multiplies the gradient of ||X_c beta - y_c||^2 / (2m); the original notebook's 1-SAM rho is half
of ours. Writes the common run format: config.json, metrics.jsonl (one row per run and logged
iteration: train_loss, test_loss, l1), summary.json (per run: final beta, divergence, alpha_inf,
theory prediction with --theory).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from diagonal_linear_nets.simulator import (
    ALGOS,
    PARAMS,
    SWITCHES,
    RunSpec,
    SimConfig,
    log_schedule,
    make_problem,
    simulate,
)
from diagonal_linear_nets.theory import predict_interpolator, relative_distance
from suite.cli import common_parser, finite_or_none
from suite.rundir import create_run_dir


@dataclass
class TrainConfig:
    """Everything ``train`` needs (the CLI only builds this)."""

    out_dir: str
    algo: list[str] = field(default_factory=lambda: ["gd", "nsam", "1sam"])
    rho: list[float] = field(default_factory=lambda: [0.1])
    alpha: list[float] = field(default_factory=lambda: [0.1])
    gamma: float = 0.167
    seeds: list[int] = field(default_factory=lambda: [0])
    m: int | None = None
    batch_size: int = 1
    n: int = 20
    d: int = 30
    sparsity: int = 3
    n_test: int = 1000
    noise: float = 0.0
    param: str = "uv"
    normalize: bool = False
    iters: int = 10_000
    log_points: int = 200
    switch: str = "none"
    switch_at: int = 0
    theory: bool = False
    compile: bool = False

    def runs(self) -> list[RunSpec]:
        out = []
        for algo, alpha, seed in itertools.product(self.algo, self.alpha, self.seeds):
            rhos = [0.0] if algo in ("gd", "sgd") else self.rho
            for rho in rhos:
                sw = self.switch if algo not in ("gd", "sgd") else "none"
                out.append(
                    RunSpec(
                        algo=algo,
                        rho=rho,
                        alpha=alpha,
                        gamma=self.gamma,
                        seed=seed,
                        m=self.m,
                        batch_size=self.batch_size,
                        switch=sw,
                        switch_at=self.switch_at,
                    )
                )
        return out

    def sim_config(self) -> SimConfig:
        """The grid-wide settings: this config's fields that SimConfig also has."""
        return SimConfig(
            **{f.name: getattr(self, f.name) for f in fields(SimConfig) if hasattr(self, f.name)}
        )


def train(config: TrainConfig) -> Path:
    """Run the grid of ``config`` and write its run directory; returns its path."""
    runs = config.runs()
    cfg = config.sim_config()
    for r in runs:
        r.validate(cfg.n)
    cfg.validate()
    rd = create_run_dir(config.out_dir, asdict(config))
    logs = log_schedule(config.iters, config.log_points)

    def stream(t, row):
        for i, r in enumerate(runs):
            rd.log(
                {
                    "iter": int(t),
                    "run": i,
                    "label": r.label(),
                    "algo": r.algo,
                    "rho": r.rho,
                    "alpha": r.alpha,
                    "seed": r.seed,
                    "train_loss": finite_or_none(float(row["train_loss"][i])),
                    "test_loss": finite_or_none(float(row["test_loss"][i])),
                    "l1": finite_or_none(float(row["l1"][i])),
                }
            )

    res = simulate(runs, cfg, logs, track_alpha=config.theory, callback=stream)
    problems = {}
    per_run = []
    for i, r in enumerate(runs):
        te = res.test_loss[i]
        entry = asdict(r) | {
            "label": r.label(),
            "diverged_at": res.diverged_at[i],
            "final_train_loss": finite_or_none(float(res.train_loss[i, -1])),
            "final_test_loss": finite_or_none(float(te[-1])),
            "best_test_loss": finite_or_none(float(np.nanmin(te)))
            if np.isfinite(te).any()
            else None,
            "final_l1": finite_or_none(float(res.l1[i, -1])),
            "beta": res.beta[i].tolist() if res.diverged_at[i] is None else None,
            "u": res.u[i].tolist(),
            "v": res.v[i].tolist(),
            "alpha_inf_exact": res.alpha_inf_exact[i].tolist(),
        }
        if config.theory and res.diverged_at[i] is None:
            if r.seed not in problems:
                problems[r.seed] = make_problem(
                    cfg.n, cfg.d, cfg.sparsity, cfg.n_test, cfg.noise, r.seed
                )
            P = problems[r.seed]
            a_flow = res.alpha_inf_flow[i]
            entry["alpha_inf_flow"] = a_flow.tolist()
            # The prediction assumes the run interpolates; a run that did not converge (or whose
            # exact a^2 = u^2 - v^2 went non-positive) gets no prediction rather than a crash.
            for key, a in (("", a_flow), ("_exact", res.alpha_inf_exact[i])):
                try:
                    pred = predict_interpolator(P.X.numpy(), P.y.numpy(), a)
                except (ValueError, RuntimeError) as err:
                    entry[f"theory_error{key}"] = str(err)
                    continue
                entry[f"rel_dist_pred{key}"] = relative_distance(res.beta[i], pred)
                if not key:
                    entry["beta_pred"] = pred.tolist()
                    entry["l1_pred"] = float(np.abs(pred).sum())
        per_run.append(entry)
    rd.write_summary({"param": cfg.param, "normalize": cfg.normalize, "runs": per_run})
    return rd.path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parser()],
    )
    a = p.add_argument
    a(
        "--algo",
        type=str,
        nargs="+",
        choices=ALGOS,
        default=["gd", "nsam", "1sam"],
        help="algorithms (default: gd nsam 1sam); msam needs --m, sgd uses --batch_size",
    )
    a(
        "--rho",
        type=float,
        nargs="+",
        default=[0.1],
        help="SAM radii, suite convention (original 1-SAM rho x 2); >= 0 (default: 0.1)",
    )
    a(
        "--alpha",
        type=float,
        nargs="+",
        default=[0.1],
        help="initialization scales alpha (u0 = alpha, v0 = 0); > 0 (default: 0.1)",
    )
    a("--gamma", type=float, default=0.167, help="step size; > 0 (default: 0.167)")
    a(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="data seeds, one data set each (default: --seed)",
    )
    a("--m", type=int, default=None, help="m-SAM chunk size, must divide --n (default: none)")
    a("--batch_size", type=int, default=1, help="SGD batch size in [1, n] (default: 1)")
    a("--n", type=int, default=20, help="training examples (default: 20)")
    a("--d", type=int, default=30, help="dimension (default: 30)")
    a("--sparsity", type=int, default=3, help="nonzeros of beta*, in [1, d] (default: 3)")
    a("--n_test", type=int, default=1000, help="test examples (default: 1000)")
    a("--noise", type=float, default=0.0, help="label noise std sigma >= 0 (default: 0)")
    a(
        "--param",
        type=str,
        choices=PARAMS,
        default="uv",
        help="uv: beta = u*v (u0=alpha, v0=0); u2v2: beta = u^2 - v^2 (u0=v0=alpha) (default: uv)",
    )
    a(
        "--normalize",
        action="store_true",
        help="normalized ascent rho g/||g|| (default: unnormalized rho g, as in the theory)",
    )
    a("--iters", type=int, default=10_000, help="iterations (steps) (default: 10000)")
    a(
        "--log_points",
        type=int,
        default=200,
        help="log-spaced logging points after the first 100 steps (default: 200)",
    )
    a(
        "--switch",
        type=str,
        choices=SWITCHES,
        default="none",
        help="erm_to_sam: rho = 0 before --switch_at; sam_to_erm: rho = 0 from it (default: none)",
    )
    a("--switch_at", type=int, default=0, help="iteration of the switch (default: 0)")
    a(
        "--theory",
        action="store_true",
        help="track alpha_inf and solve the hyperbolic-entropy prediction (default: off)",
    )
    a(
        "--compile",
        action="store_true",
        help="torch.compile unrolled blocks of steps (faster for long runs, ~15-45 s compile)",
    )
    return p


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    p = build_parser()
    args = p.parse_args(argv)
    if any(r < 0 for r in args.rho):
        p.error("--rho must be >= 0 (the ascent radius); e.g. --rho 0.01 0.1")
    if any(a <= 0 for a in args.alpha):
        p.error("--alpha must be > 0 (the initialization scale)")
    if args.gamma <= 0:
        p.error("--gamma must be > 0 (the step size)")
    if min(args.n, args.d, args.n_test) < 1:
        p.error("--n, --d and --n_test must be >= 1")
    if not (1 <= args.sparsity <= args.d):
        p.error(f"--sparsity must be in [1, --d={args.d}] (got {args.sparsity})")
    if "msam" in args.algo and (args.m is None or args.m < 1 or args.n % args.m):
        p.error(f"--m must divide --n={args.n} for --algo msam (got --m {args.m})")
    if "sgd" in args.algo and not (1 <= args.batch_size <= args.n):
        p.error(f"--batch_size must be in [1, --n={args.n}] (got {args.batch_size})")
    if args.noise < 0:
        p.error("--noise must be >= 0")
    if args.iters < 1:
        p.error("--iters must be >= 1")
    if args.log_points < 2:
        p.error("--log_points must be >= 2")
    if args.switch != "none" and not (0 <= args.switch_at <= args.iters):
        p.error(f"--switch_at must be in [0, --iters={args.iters}]")
    if args.device not in (None, "cpu"):
        p.error("--device: the simulator runs on cpu only (float64 on tiny tensors)")
    out = args.out_dir or f"runs/diag_{'_'.join(args.algo)}_seed{args.seed}"
    return TrainConfig(
        out_dir=out,
        algo=args.algo,
        rho=args.rho,
        alpha=args.alpha,
        gamma=args.gamma,
        seeds=args.seeds if args.seeds is not None else [args.seed],
        m=args.m,
        batch_size=args.batch_size,
        n=args.n,
        d=args.d,
        sparsity=args.sparsity,
        n_test=args.n_test,
        noise=args.noise,
        param=args.param,
        normalize=args.normalize,
        iters=args.iters,
        log_points=args.log_points,
        switch=args.switch,
        switch_at=args.switch_at,
        theory=args.theory,
        compile=args.compile,
    )


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    try:
        path = train(config)
    except FileExistsError as e:
        print(f"error: --out_dir: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
