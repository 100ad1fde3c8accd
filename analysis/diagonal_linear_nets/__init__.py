"""Diagonal linear networks (PAPERS.md#diagonal-nets): the original notebook's experiments at its
own settings, the paper's Fig. 6, the theory check; figures and the claims table.

``reproduce(profile, results_dir, figures_dir)`` hands one ``suite.launch.Run`` per experiment
(run directories under ``results/diagonal_linear_nets/<exp>/``) to ``suite.launch.run_all``: a
run finished with the same config is skipped, an interrupted one resumes from its checkpoint,
``--force`` retrains. Then the figures, their captions and the claims read those run
directories only (the notebook calls the same functions).

The stage's files: ``profiles`` (the experiments' settings per profile, the only place they
live), ``runs`` (the runs and the readers of their directories), ``figures`` (the figures and
their captions), ``claims`` (the claims rows and their pre-registered tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from analysis.diagonal_linear_nets.claims import (
    claims,
    curves_rows,
    fig6_rows,
    grid_rows,
    switch_rows,
    theory_rows,
)
from analysis.diagonal_linear_nets.figures import (
    DATA,
    _iters,
    curves_reading,
    fig6_reading,
    fig6_shows,
    fig_curves,
    fig_fig6,
    fig_grid,
    fig_switch,
    fig_theory,
    grid_reading,
    make_figures,
    switch_reading,
    switch_shows,
    theory_reading,
)
from analysis.diagonal_linear_nets.profiles import (
    FAMILY,
    PAPER_FIG6,
    PROFILES,
    THEORY_TIME,
    experiment_configs,
    fig6_search,
)
from analysis.diagonal_linear_nets.runs import (
    _loss,
    experiment_runs,
    grid_table,
    run_experiments,
    theory_table,
    train_experiment,
)
from suite.claims import ClaimRow
from suite.launch import Run
from suite.profiles import settings
from suite.rundir import atomic_write_json
from suite.stage import Experiment, StageContext, run_stage

__all__ = [
    "EXPERIMENTS",
    "FAMILY",
    "PAPER_FIG6",
    "PROFILES",
    "claims",
    "experiment_configs",
    "experiment_runs",
    "fig6_search",
    "grid_table",
    "make_figures",
    "reproduce",
    "results_from_env",
    "run_experiments",
    "theory_table",
    "train_experiment",
    "_loss",
]


def _runs_of(*names: str) -> Callable[[StageContext], list[Run]]:
    """``Experiment.runs``: the runs of the experiments named (a name ending in ``*``: every one
    with that prefix)."""

    def runs(ctx: StageContext) -> list[Run]:
        return [
            r
            for r in experiment_runs(ctx.profile, ctx.results_dir, ctx.P["scale"])
            if any(r.name == n or (n.endswith("*") and r.name.startswith(n[:-1])) for n in names)
        ]

    return runs


def _report(figure: Callable[[Path, Path], Path], rows: Callable[[Path], list[ClaimRow]]):
    def report(ctx: StageContext) -> list[ClaimRow]:
        figure(ctx.results_dir, ctx.figures_dir)
        return rows(ctx.results_dir)

    return report


EXPERIMENTS = [
    Experiment(
        "curves",
        f"{FAMILY}_curves.png",
        _runs_of("cell_nsam", "cell_1sam", "curves"),
        _report(fig_curves, curves_rows),
        shows=lambda ctx: (
            "Train and test loss vs iteration of GD, SGD (b = 1, gamma 10/(3d)) and 1-SAM "
            f"(rho 0.03-0.3, original convention) on beta = u*v, {DATA}, gamma 10/d, alpha "
            f"0.1, {_iters(ctx.results_dir, 'curves')} iterations, one run each (notebook cell "
            "3)."
        ),
        reading=curves_reading,
    ),
    Experiment(
        "rho_grid",
        f"{FAMILY}_rho_grid.png",
        _runs_of("grid", "grid_uniform"),
        _report(fig_grid, grid_rows),
        key=True,
        shows=lambda ctx: (
            "Final test loss vs rho (original convention) after "
            f"{_iters(ctx.results_dir, 'grid')} iterations: GD and 1-SAM at gamma 15/d, n-SAM at "
            f"10/d (as the notebook) and at 15/d, {DATA}, alpha 0.1; black crosses: the "
            "notebook's printed values (Fig. 5)."
        ),
        reading=grid_reading,
    ),
    Experiment(
        "switch",
        f"{FAMILY}_switch.png",
        _runs_of("switch_erm_sam", "switch_sam_erm", "erm_N"),
        _report(fig_switch, switch_rows),
        shows=switch_shows,
        reading=switch_reading,
    ),
    Experiment(
        "fig6",
        f"{FAMILY}_fig6.png",
        _runs_of("fig6"),
        _report(fig_fig6, fig6_rows),
        shows=fig6_shows,
        reading=fig6_reading,
    ),
    Experiment(
        "theory",
        f"{FAMILY}_theory.png",
        _runs_of("theory_g*"),
        _report(fig_theory, theory_rows),
        shows="Relative distance of the simulated solution to the hyperbolic-entropy prediction "
        "(with the alpha_inf tracked along the run) vs step size, GD / n-SAM / 1-SAM at rho 0.1, "
        f"{DATA}, gamma x iterations = {THEORY_TIME:g}.",
        reading=theory_reading,
    ),
]


def reproduce(
    profile: str, results_dir: Path, figures_dir: Path, scale: float | None = None
) -> list[dict]:
    """Run every experiment of ``profile`` (``PROFILES``, module docstring) through
    ``suite.stage.run_stage``: the runs, the figures and their captions, claims.csv.
    ``scale`` overrides the profile's fraction of the iterations (tests)."""
    P = settings(PROFILES, profile)
    if scale is not None:
        P = {**P, "scale": scale}
    rows = run_stage(FAMILY, EXPERIMENTS, {profile: P}, profile, results_dir, figures_dir)
    atomic_write_json(
        Path(results_dir) / FAMILY / "profile.json", {"profile": profile, "scale": P["scale"]}
    )
    return rows


def results_from_env() -> tuple[Path, Path]:
    """(results dir, figures dir) from SHARPNESS_RESULTS / SHARPNESS_FIGURES (notebook)."""
    return Path(os.environ.get("SHARPNESS_RESULTS", "results")), Path(
        os.environ.get("SHARPNESS_FIGURES", "figures")
    )
