"""Deep nets: the papers' deep-network experiments, trained, plotted and judged by code.

Stage ``deep_nets`` of ``make reproduce`` (``reproduce(profile, results_dir, figures_dir)``). Seven
experiments (``analysis.deep_nets.experiments``): Fig. 1 (test error vs rho: ERM, random, n-SAM,
SAM, m-SAM), m-sharpness (test error vs m), Fig. 9 (ERM <-> SAM switches and the linear
interpolation), Fig. 12 (noisy labels), convergence, LookSAM, and the seminar's own table. Each
trains through ``deep_nets/train.py`` (reusing finished runs, resuming unfinished ones), draws
``figures/deep_nets_*.png`` and adds rows to ``results/deep_nets/claims.csv``.

Profiles (``analysis.deep_nets.profiles``): ``quick`` (CPU minutes), ``full`` (CPU, <= 2 hours,
3 seeds), ``paper`` (the original setups; GPU and CIFAR on disk), ``test`` (seconds, for pytest).
Runs land in ``results/deep_nets/<profile>/runs/``; per-experiment wall-clock in
``results/deep_nets/<profile>/timings.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from analysis.deep_nets.experiments import (
    EXPERIMENTS,
    paper_scale_row,
    read_timings,
    write_timings,
)
from analysis.deep_nets.profiles import PROFILES
from analysis.deep_nets.runs import FAMILY, ensure_runs
from suite.claims import write_claims

__all__ = ["EXPERIMENTS", "PROFILES", "reproduce", "run_experiment", "report", "check_paper"]


def profile_root(results_dir: Path, profile: str) -> Path:
    return Path(results_dir) / FAMILY / profile


def _check_profile(profile: str) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: choose from {', '.join(PROFILES)}")
    return PROFILES[profile]


def check_paper() -> list[str]:
    """What the paper profile needs and this machine lacks (a GPU, CIFAR-10/100, Fashion-MNIST
    in their standard places or $SHARPNESS_DATA_DIR); empty when everything is there."""
    import torch

    from deep_nets.data import DataError, load_dataset

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    for name in ("cifar10", "cifar100", "fashion_mnist"):
        try:
            load_dataset(name, None, seed=0, download=False)
        except DataError as e:
            missing.append(f"{name}: {e}")
    return missing


def run_experiment(name: str, profile: str, results_dir: Path) -> dict[str, Any]:
    """Train the runs experiment ``name`` needs under ``profile`` (finished runs are reused)."""
    P = _check_profile(profile)
    runtime = {"workers": P["workers"]} if P["workers"] else {}
    return ensure_runs(
        EXPERIMENTS[name].specs(P), profile_root(results_dir, profile), runtime=runtime
    )


def report(name: str, results_dir: Path, profile: str, figures_dir: Path) -> list[dict]:
    """Figure and claims rows of experiment ``name`` from finished runs (never trains)."""
    _check_profile(profile)
    return EXPERIMENTS[name].report(profile_root(results_dir, profile), profile, Path(figures_dir))


def reproduce(
    profile: str, results_dir: Path, figures_dir: Path, only: list[str] | None = None
) -> list[dict]:
    """Run every experiment of ``profile`` (or ``only`` these), draw the figures, write
    ``results/deep_nets/claims.csv`` and the per-experiment wall-clock; returns the claims rows."""
    _check_profile(profile)
    if profile == "paper":
        missing = check_paper()
        if missing:
            raise RuntimeError("the paper profile needs: " + "; ".join(missing))
    for name in only or []:
        if name not in EXPERIMENTS:
            raise ValueError(f"experiment {name!r}: choose from {', '.join(EXPERIMENTS)}")
    root = profile_root(results_dir, profile)
    timings = read_timings(root)
    rows: list[dict] = []
    for name in only or EXPERIMENTS:
        t0, c0 = time.perf_counter(), time.process_time()
        info = run_experiment(name, profile, results_dir)
        rows += report(name, results_dir, profile, figures_dir)
        info["total_seconds"] = round(time.perf_counter() - t0, 2)
        info["total_cpu_seconds"] = round(time.process_time() - c0, 2)
        info["seconds"], info["cpu_seconds"] = (
            round(info["seconds"], 2),
            round(info["cpu_seconds"], 2),
        )
        timings[name] = info
        write_timings(root, timings)
        print(f"[deep_nets] {name}: {info['trained']} runs trained, {info['reused']} reused, "
              f"{info['total_seconds']:.1f} s ({info['total_cpu_seconds']:.1f} CPU s)",
              flush=True)  # fmt: skip
    if profile != "paper":
        rows.append(paper_scale_row(profile))
    write_claims(Path(results_dir) / FAMILY / "claims.csv", rows)
    for r in rows:
        print(f"  {r['verdict']:>13} | {r['claim']} | {r['ours']}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.deep_nets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--profile", choices=list(PROFILES), default="quick")
    ap.add_argument("--results_dir", type=Path, default=Path("results"))
    ap.add_argument("--figures_dir", type=Path, default=Path("figures"))
    ap.add_argument("--only", nargs="*", choices=list(EXPERIMENTS), default=None,
                    help="experiments to run (default: all)")  # fmt: skip
    a = ap.parse_args(argv)
    reproduce(a.profile, a.results_dir, a.figures_dir, a.only)
    return 0
