"""One-hidden-layer ReLU nets: run the three experiments, draw their figures, write the claims.

Reads only run directories (config.json, metrics.jsonl, summary.json, params.json, data.json)
written by ``one_layer_relu_nets.engine.train``; ``reproduce`` also launches the runs.
Figures (``figures_dir``):
    one_layer_relu_nets_fits.png          exp 1: fitted functions of GD / n-SAM / 1-SAM, all seeds
    one_layer_relu_nets_simplicity.png    exp 1: kinks, slope TV, path norm, Hessian lambda_max
                                          (SAM runs, GD, and GD stopped at SAM's loss)
    one_layer_relu_nets_over_training.png exp 1: kinks and slope TV over training
    one_layer_relu_nets_teacher.png       exp 2: test loss vs rho (mean +- std over seeds)
    one_layer_relu_nets_convergence.png   exp 3: training loss vs iterations

The stage's files: ``profiles`` (the settings of every profile: the one place they live),
``runs`` (run directories, launch records, data frames), ``figures`` (plots and captions),
``claims`` (the claims rows); this module holds the ``suite.stage.Experiment``s and ``reproduce``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from analysis.one_layer_relu_nets.claims import _exp1_rows, _exp2_rows, _exp3_rows, claims_rows
from analysis.one_layer_relu_nets.figures import (
    _convergence_shows,
    _fits_shows,
    _one_d,
    _simplicity_shows,
    _teacher_shows,
    fits_panels,
    make_figures,
    plot_convergence,
    plot_fits,
    plot_over_training,
    plot_simplicity,
    plot_teacher,
    simplicity_table,
    teacher_table,
)
from analysis.one_layer_relu_nets.profiles import FAMILY, MATCHED, PROFILES, experiment_configs
from analysis.one_layer_relu_nets.runs import (
    comparison_runs,
    detect_profile,
    exp1_frame,
    history_frame,
    run_dir,
    run_experiments,
    runs_frame,
)
from suite.claims import ClaimRow
from suite.launch import Run
from suite.stage import Experiment, StageContext, run_stage

__all__ = [
    "EXPERIMENTS",
    "FAMILY",
    "MATCHED",
    "PROFILES",
    "claims_rows",
    "comparison_runs",
    "detect_profile",
    "exp1_frame",
    "experiment_configs",
    "history_frame",
    "make_figures",
    "reproduce",
    "run_dir",
    "run_experiments",
    "runs_frame",
    "simplicity_table",
    "teacher_table",
]


# --------------------------------------------------------------------------------- the stage
def _comparisons(exp: str, matched: bool = False) -> Callable[[StageContext], list[Run]]:
    """``Experiment.runs``: the comparisons of experiment ``exp`` (or their matched controls)."""
    return lambda ctx: comparison_runs(ctx.profile, ctx.results_dir, matched, (exp,))


def _fits(ctx: StageContext) -> list[ClaimRow]:
    plot_fits(fits_panels(ctx.results_dir, ctx.profile), ctx.figure(f"{FAMILY}_fits.png"))
    return []


def _simplicity(ctx: StageContext) -> list[ClaimRow]:
    plot_simplicity(ctx.results_dir, ctx.profile, ctx.figure(f"{FAMILY}_simplicity.png"))
    return _exp1_rows(ctx.results_dir, ctx.profile)


def _over_training(ctx: StageContext) -> list[ClaimRow]:
    plot_over_training(ctx.results_dir, ctx.profile, ctx.figure(f"{FAMILY}_over_training.png"))
    return []


def _teacher(ctx: StageContext) -> list[ClaimRow]:
    plot_teacher(
        run_dir(ctx.results_dir, ctx.profile, "exp2_teacher"), ctx.figure(f"{FAMILY}_teacher.png")
    )
    return _exp2_rows(ctx.results_dir, ctx.profile)


def _convergence(ctx: StageContext) -> list[ClaimRow]:
    names = ("exp3_unnormalized", "exp3_normalized", "exp3_decaying")
    plot_convergence(
        [run_dir(ctx.results_dir, ctx.profile, n) for n in names],
        ctx.figure(f"{FAMILY}_convergence.png"),
    )
    return _exp3_rows(ctx.results_dir, ctx.profile)


# The loss-matched GD controls read their bases' final losses: they are built in wave 1.
EXPERIMENTS = [
    Experiment(
        "fits",
        f"{FAMILY}_fits.png",
        _comparisons("exp1"),
        _fits,
        shows=_fits_shows,
        reading="SAM's fits have fewer kinks than GD's where they fit the data (the notebook's "
        "figure; kinks mean +- std in each title); a panel marked DOES NOT FIT (1-SAM at rho "
        "0.3) is underfit, not simpler, and its claims rows are not comparable.",
    ),
    Experiment(
        "simplicity",
        f"{FAMILY}_simplicity.png",
        _comparisons("exp1", matched=True),
        _simplicity,
        wave=1,
        key=True,
        shows=_simplicity_shows,
        reading="SAM's fits are simpler and flatter than GD's, also than GD at the same training "
        "loss (the claims rows 'fits have fewer kinks' and their loss-matched rows).",
    ),
    Experiment(
        "over_training",
        f"{FAMILY}_over_training.png",
        _comparisons("exp1"),
        _over_training,
        shows=lambda ctx: (
            "Kinks and slope TV of the fitted function vs iteration (log x), mean over seeds, GD "
            f"and each SAM at each rho; {_one_d(ctx)}."
        ),
        reading="When SAM's fit simplifies (its kinks fall below GD's ~50): late in training, "
        "which is why a short budget shows no difference.",
    ),
    Experiment(
        "teacher",
        f"{FAMILY}_teacher.png",
        _comparisons("exp2"),
        _teacher,
        shows=_teacher_shows,
        reading="Whether SAM (1-SAM above all) lowers the test loss below GD's, as it does in "
        "diagonal nets (claims rows 'teacher-student'; rho chosen on validation there).",
    ),
    Experiment(
        "convergence",
        f"{FAMILY}_convergence.png",
        _comparisons("exp3"),
        _convergence,
        shows=_convergence_shows,
        reading="Unnormalized SAM converges like GD; normalized SAM stalls at a level that grows "
        "with rho; a decaying rho converges (the convergence claims rows).",
    ),
]


def reproduce(profile: str, results_dir: Path, figures_dir: Path) -> list[dict]:
    """Run the comparisons of ``profile`` (see ``analysis.one_layer_relu_nets.profiles``) through
    ``suite.stage.run_stage``: the runs, the figures and their captions, claims.csv."""
    return run_stage(FAMILY, EXPERIMENTS, PROFILES, profile, results_dir, figures_dir)
