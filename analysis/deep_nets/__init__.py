"""Deep nets: the papers' deep-network experiments, trained, plotted and judged by code.

Stage ``deep_nets`` of ``make reproduce`` (``reproduce(profile, results_dir, figures_dir)``). Seven
experiments (``analysis.deep_nets.experiments``): Fig. 1 (test error vs rho: ERM, random, n-SAM,
SAM, m-SAM), m-sharpness (test error vs m), Fig. 9 (ERM <-> SAM switches and the linear
interpolation), Fig. 12 (noisy labels), convergence, LookSAM, and the seminar's own table. Each
trains through ``deep_nets/train.py`` (reusing finished runs, resuming unfinished ones), draws
``figures/deep_nets_*.png`` and adds rows to ``results/deep_nets/claims.csv``.

Each experiment is one module (``fig1``, ``msharpness``, ``fig9``, ``fig12``, ``convergence``,
``looksam``, ``seminar``) holding a ``suite.stage.Experiment``; ``suite.stage.run_stage`` runs
them. Profiles (``analysis.deep_nets.profiles``): ``quick`` (CPU minutes), ``full`` (CPU,
<= 2 hours, 3 seeds), ``paper`` (the original setups; GPU and CIFAR on disk), ``test``
(seconds, for pytest).
Runs land in ``results/deep_nets/<profile>/runs/``; per-experiment wall-clock in
``results/deep_nets/<profile>/timings.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from analysis.deep_nets import fig1
from analysis.deep_nets.experiments import EXPERIMENTS, paper_scale_row
from analysis.deep_nets.profiles import PROFILES
from analysis.deep_nets.runs import FAMILY, ensure_runs, runtime_flags
from suite import launch
from suite.profiles import settings
from suite.rundir import read_json
from suite.stage import StageContext, run_stage

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


def run_experiment(name: str, profile: str, results_dir: Path) -> dict[str, Any]:
    """Train the runs experiment ``name`` needs under ``profile`` (finished runs are reused)."""
    P = _check_profile(profile)
    root = profile_root(results_dir, profile)
    info = ensure_runs(EXPERIMENTS[name].runs.specs(P), root, runtime=runtime_flags(P))
    if name == "fig1":  # the boundary rule's extensions, decided from the finished grid
        more = ensure_runs(fig1.extension_specs(P, root), root, runtime=runtime_flags(P))
        for k in ("trained", "reused", "seconds"):
            info[k] += more[k]
        info["runs"].update(more["runs"])
    return info


def _context(profile: str, results_dir: Path, figures_dir: Path) -> StageContext:
    P = _check_profile(profile)
    root = profile_root(results_dir, profile)
    return StageContext(FAMILY, profile, P, Path(results_dir), Path(figures_dir), root)


def report(name: str, results_dir: Path, profile: str, figures_dir: Path) -> list[dict]:
    """Figure and claims rows (column dicts) of experiment ``name`` from finished runs (never
    trains)."""
    rows = EXPERIMENTS[name].report(_context(profile, results_dir, figures_dir))
    return [r.cells(FAMILY, profile) for r in rows]


def reproduce(
    profile: str, results_dir: Path, figures_dir: Path, only: list[str] | None = None
) -> list[dict]:
    """Run every experiment of ``profile`` (or ``only`` these) through ``suite.stage.run_stage``:
    draw the figures, write ``results/deep_nets/claims.csv`` and the per-experiment wall-clock;
    returns the claims rows."""
    _check_profile(profile)
    if profile == "paper":
        missing = check_paper()
        if missing:
            raise RuntimeError("the paper profile needs: " + "; ".join(missing))
    for name in only or []:
        if name not in EXPERIMENTS:
            raise ValueError(f"experiment {name!r}: choose from {', '.join(EXPERIMENTS)}")
    names = list(only or EXPERIMENTS)
    if "fig1" in names and "fig1_grid" not in names:  # Fig. 1 reads its grid (wave 0)
        names.insert(names.index("fig1"), "fig1_grid")
    experiments = [EXPERIMENTS[n] for n in names]
    return run_stage(
        FAMILY,
        experiments,
        PROFILES,
        profile,
        results_dir,
        figures_dir,
        root=profile_root(results_dir, profile),
        extra_rows=paper_scale_row,
    )


def read_timings(root: Path) -> dict[str, Any]:
    """``timings.json`` of a profile's runs (``suite.stage.run_stage``); empty before a run."""
    p = Path(root) / "timings.json"
    return read_json(p) if p.exists() else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.deep_nets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--profile", choices=list(PROFILES), default="quick")
    ap.add_argument("--results_dir", type=Path, default=Path("results"))
    ap.add_argument("--figures_dir", type=Path, default=Path("figures"))
    ap.add_argument(
        "--only",
        nargs="*",
        choices=list(EXPERIMENTS),
        default=None,
        help="experiments to run (default: all)",
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="runs trained at once in worker processes (default 1)"
    )
    ap.add_argument("--force", action="store_true", help="retrain every run, even finished ones")
    a = ap.parse_args(argv)
    if a.jobs < 1:
        ap.error(f"--jobs {a.jobs}: give the number of runs to train at once (>= 1)")
    with launch.configure(jobs=a.jobs, force=a.force):
        reproduce(a.profile, a.results_dir, a.figures_dir, a.only)
    return 0
