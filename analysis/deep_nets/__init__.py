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
from suite import launch
from suite.captions import caption_figure
from suite.claims import write_claims
from suite.profiles import settings
from suite.rundir import atomic_write_json, read_json

# the family's key figure (notebooks/overview.ipynb): the mission's noisy-label curves
KEY_FIGURE = "noisy"

__all__ = ["EXPERIMENTS", "PROFILES", "reproduce", "run_experiment", "report", "check_paper"]


def profile_root(results_dir: Path, profile: str) -> Path:
    return Path(results_dir) / FAMILY / profile


def _check_profile(profile: str) -> dict[str, Any]:
    return settings(PROFILES, profile)


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


def _runtime(P: dict[str, Any]) -> dict[str, Any]:
    return {"workers": P["workers"]} if P["workers"] else {}


def run_experiment(name: str, profile: str, results_dir: Path) -> dict[str, Any]:
    """Train the runs experiment ``name`` needs under ``profile`` (finished runs are reused)."""
    P = _check_profile(profile)
    root = profile_root(results_dir, profile)
    info = ensure_runs(EXPERIMENTS[name].specs(P), root, runtime=_runtime(P))
    _update_run_seconds(root, info["runs"])
    return info


def _update_run_seconds(root: Path, runs: dict[str, dict]) -> dict[str, dict]:
    """Record the wall-clock and CPU seconds of the runs trained now in ``run_seconds.json``
    (a reused run keeps the numbers of the call that trained it); returns every record."""
    path = Path(root) / "run_seconds.json"
    table = read_json(path) if path.exists() else {}
    for d, r in runs.items():
        if r["action"] == "skipped" and d in table:
            table[d]["trained_now"] = False
        else:
            table[d] = {"seconds": round(r["seconds"], 2), "cpu_seconds": r["cpu_seconds"],
                        "trained_now": r["action"] != "skipped"}  # fmt: skip
    atomic_write_json(path, table)
    return table


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
    P = PROFILES[profile]
    names = list(only or EXPERIMENTS)
    rows: list[dict] = []
    t0 = time.perf_counter()
    # every run of every experiment in one call: the launcher can run them in parallel (--jobs)
    specs = {name: EXPERIMENTS[name].specs(P) for name in names}
    info = ensure_runs([s for v in specs.values() for s in v], root, runtime=_runtime(P))
    per_run = _update_run_seconds(root, info["runs"])
    timings = read_timings(root)
    owner: dict[str, str] = {}  # a shared run is counted in the first experiment that needs it
    for name in names:
        dirs = [sp.dirname() for sp in dict.fromkeys(specs[name])]
        mine = [d for d in dirs if owner.setdefault(d, name) == name]
        t1 = time.perf_counter()
        rows += report(name, results_dir, profile, figures_dir)
        caption_figure(results_dir, FAMILY, EXPERIMENTS[name].figure, key=name == KEY_FIGURE,
                       **EXPERIMENTS[name].caption(P))  # fmt: skip
        timings[name] = {
            "runs": len(dirs),
            "runs_counted": len(mine),  # = trained + reused
            "trained": sum(info["runs"][d]["action"] != "skipped" for d in mine),
            "reused": sum(info["runs"][d]["action"] == "skipped" for d in mine),
            # the training cost of its runs (whenever they were trained), one process each
            "run_seconds": round(sum(per_run.get(d, {}).get("seconds") or 0 for d in mine), 2),
            "run_cpu_seconds": round(
                sum(per_run.get(d, {}).get("cpu_seconds") or 0 for d in mine), 2
            ),
            "report_seconds": round(time.perf_counter() - t1, 2),
        }
        t = timings[name]
        print(f"[deep_nets] {name}: {len(dirs)} runs ({t['trained']} trained now), "
              f"{t['run_seconds']:.1f} s of training ({t['run_cpu_seconds']:.1f} CPU s)",
              flush=True)  # fmt: skip
    timings["_stage"] = {
        "seconds": round(time.perf_counter() - t0, 2),
        "train_seconds": round(info["seconds"], 2),
        "experiments": names,
    }
    write_timings(root, timings)
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
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once in worker processes (default 1)")  # fmt: skip
    ap.add_argument("--force", action="store_true", help="retrain every run, even finished ones")
    a = ap.parse_args(argv)
    if a.jobs < 1:
        ap.error(f"--jobs {a.jobs}: give the number of runs to train at once (>= 1)")
    with launch.configure(jobs=a.jobs, force=a.force):
        reproduce(a.profile, a.results_dir, a.figures_dir, a.only)
    return 0
