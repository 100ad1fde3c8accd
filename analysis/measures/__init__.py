"""Sharpness measurements: the SAM paper's Hessian-spectrum figure, loss landscapes, m-sharpness
against generalization, and exact curvature of the small nets' GD and SAM solutions.

Stage ``measures`` of ``make reproduce``: ``reproduce(profile, results_dir, figures_dir)`` runs
``EXPERIMENTS`` through ``suite.stage.run_stage``. The stage's files: ``profiles`` (the budgets),
``runs`` (the trainer runs and every measurement), ``figures``, ``claims``.

- Figure 1 (``measures_hessian_spectrum.png``): ERM (SGD) vs SAM, the Hessian's eigenvalue
  density (stochastic Lanczos quadrature) at the end of training, and lambda_max and lambda_max /
  lambda_5 (Lanczos) over training. SAM paper (WRN-40-10 without BN, CIFAR-10): at the end,
  lambda_max 24.2 (SGD) vs 1.0 (SAM), lambda_max / lambda_5 11.4 vs 2.6.
- Figure 2 (``measures_landscapes.png``): 1-D and 2-D slices along random filter-normalized
  directions around the ERM and SAM solutions (Li et al. 2018; the seminar's pictures), and the
  linear interpolation between an ERM solution and the ERM -> SAM fine-tuned one (t in
  [-0.5, 1.5]; "Towards Understanding SAM", Fig. 9: ERM -> SAM stays in the ERM basin).

  Both figures' runs are ``deep_nets/train.py`` runs of the deep-net stage's MNIST-1D MLP recipe
  (``analysis.measures.profiles``; quick: width 128, 60 epochs, 3 seeds, SAM rho 0.1; they fit
  their training set), measured afterwards from their saved checkpoints with
  ``python -m deep_nets.eval_sharpness`` (the Hessian of the training cross-entropy on 1024
  seeded training examples). The paper profile (WRN without BN on CIFAR-10, GPU days) is not run.
- Figure 3 (``measures_msharpness_vs_error.png``): "Towards Understanding SAM" Sec. 3:
  m-sharpness (worst case, L2, projected ascent) of each deep-net run's final model against its
  test error, for m in {4, 16, 64, 128 (= batch)} x rho in {0.05, 0.1, 0.2} (fixed before the
  results), with Kendall's tau and Spearman's rho; claims: tau at the smallest m exceeds tau at
  m = batch. The pool is the ``deep_nets`` stage's finished runs of the same profile without
  label noise, on the most common task. Without them the stage writes a "not run" row naming
  ``python -m analysis.reproduce --only deep_nets``.
- Figure 4 (``measures_small_nets_lambda_max.png``): diagonal linear nets at the original
  notebook's cell-3 setting (the family's simulator, one data set per seed): exact lambda_max of
  the dense float64 Hessian over (u, v) (``exact_spectrum``; cross-checked against the closed
  form in the tests) and ||beta||_1 of GD, n-SAM, 1-SAM; the ReLU family's stored exact
  lambda_max against kinks.

Each claims row's test (an effect with its smallest effect of interest, a null claim with its
equivalence margin) and its preconditions are constants of ``analysis.measures.claims``, fixed
before the results. Measured numbers: results/measures/claims.csv and REPORT.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from analysis.deep_nets.runs import SpecRuns
from analysis.measures.claims import (
    correlation_gap,
    fig3_claims,
    fig3_not_run,
    fig4_claims,
    landscape_rows,
    paper_scale_row,
    setup,
    spectrum_rows,
    where,
)
from analysis.measures.figures import (
    FIG1,
    FIG2,
    FIG3,
    FIG4,
    plot_landscapes,
    plot_msharpness_vs_error,
    plot_small_nets,
    plot_spectrum,
)
from analysis.measures.profiles import DIAG, DIAG_SEEDS, FAMILY, FIG3_SETTINGS, PROFILES
from analysis.measures.runs import (
    FIG3_TABLE,
    DiagonalNet,
    diagonal_hessian_closed_form,
    diagonal_solutions,
    exact_spectrum,
    fig3_table,
    finetune_specs,
    half_mse,
    load_fig3_table,
    load_results,
    load_small_nets,
    msharpness_vs_error,
    rank_correlation,
    relu_lambda_max,
    small_nets,
    spectrum_specs,
)
from suite.stage import Experiment, StageContext, no_runs, run_stage

__all__ = [
    "DIAG",
    "DIAG_SEEDS",
    "EXPERIMENTS",
    "FIG1",
    "FIG2",
    "FIG3",
    "FIG3_SETTINGS",
    "FIG3_TABLE",
    "FIG4",
    "PROFILES",
    "DiagonalNet",
    "correlation_gap",
    "diagonal_hessian_closed_form",
    "diagonal_solutions",
    "exact_spectrum",
    "fig3_claims",
    "fig4_claims",
    "figure3",
    "half_mse",
    "load_fig3_table",
    "load_results",
    "load_small_nets",
    "msharpness_vs_error",
    "plot_landscapes",
    "plot_msharpness_vs_error",
    "plot_small_nets",
    "plot_spectrum",
    "rank_correlation",
    "relu_lambda_max",
    "reproduce",
]


def _measured(ctx: StageContext) -> dict:
    torch.set_num_threads(1)  # a shared machine: tiny models, one core
    return load_results(ctx.profile, ctx.results_dir, measure=True)


def _spectrum(ctx: StageContext) -> list:
    res = _measured(ctx)
    plot_spectrum(res, ctx.figure(FIG1))
    return spectrum_rows(res["runs"])


def _landscapes(ctx: StageContext) -> list:
    res = _measured(ctx)
    plot_landscapes(res, ctx.figure(FIG2))
    return landscape_rows(res, ctx.P["seeds"])


def _setup(ctx: StageContext) -> str:
    res = load_results(ctx.profile, ctx.results_dir)
    return f"{setup(res['runs'])}; SAM rho {ctx.P['rho']}, {len(ctx.P['seeds'])} seeds"


def _at(ctx: StageContext) -> str:
    return where(load_results(ctx.profile, ctx.results_dir)["runs"])


def figure3(results_dir: Path, figures_dir: Path, profile: str) -> list:
    """Figure 3 end to end: pool, table, plot, claims rows. Raises FileNotFoundError (naming
    the command) without deep-net runs."""
    torch.set_num_threads(1)
    df, note = fig3_table(results_dir, profile)
    plot_msharpness_vs_error(df, Path(figures_dir) / FIG3)
    return fig3_claims(df, note, profile)


def _figure3(ctx: StageContext) -> list:
    try:
        return figure3(ctx.results_dir, ctx.figures_dir, ctx.profile)
    except FileNotFoundError as e:  # the deep_nets stage has not run: say so, do not crash
        print(f"  measures: Figure 3 not drawn: {e}", flush=True)
        return [fig3_not_run(str(e))]


def _fig3_shows(ctx: StageContext) -> str:
    st = FIG3_SETTINGS[ctx.profile]
    n = load_fig3_table(ctx.results_dir, ctx.profile)["run"].nunique()
    return (
        f"m-sharpness (worst case, L2, {st['steps']} ascent steps, {st['n_examples']} "
        f"train examples) of each deep-net run's final model against its test error; panels: "
        f"m x rho; {n} runs."
    )


def _figure4(ctx: StageContext) -> list:
    diag = small_nets(ctx.results_dir, ctx.profile)
    plot_small_nets(diag, relu_lambda_max(ctx.results_dir, ctx.profile), ctx.figure(FIG4))
    return fig4_claims(diag)


EXPERIMENTS = [
    Experiment(
        "spectrum",
        FIG1,
        SpecRuns(spectrum_specs),
        _spectrum,
        key=True,
        shows=lambda ctx: (
            f"{_setup(ctx)}: SLQ eigenvalue density of the training loss's Hessian at the end "
            "(seed 0), lambda_max and lambda_max / lambda_5 (Lanczos) over epochs, mean +- std; "
            f"measured at {_at(ctx)}."
        ),
        reading="The SAM paper's claim: SAM ends with a much smaller lambda_max (and ratio) than "
        "SGD (WRN: 24.2 vs 1.0; 11.4 vs 2.6).",
    ),
    Experiment(
        "landscapes",
        FIG2,
        SpecRuns(lambda P: spectrum_specs(P) + finetune_specs(P)),
        _landscapes,
        shows=lambda ctx: (
            f"{_setup(ctx)}: 1-D and 2-D train-loss slices along filter-normalized random "
            "directions (seed 0), and the linear interpolation ERM -> ERM->SAM fine-tuned (t from "
            f"-0.5 to 1.5); measured at {_at(ctx)}."
        ),
        reading="SAM's solution is wider along random directions; the ERM -> SAM solution stays "
        "in the ERM basin (no barrier on the interpolation), as in Fig. 9.",
    ),
    Experiment(
        "fig3",
        FIG3,
        no_runs,
        _figure3,
        shows=_fig3_shows,
        reading="The paper: the smallest m correlates best (Kendall's tau in each title); the "
        "claims rows compare tau at the smallest m with tau at m = batch.",
    ),
    Experiment(
        "fig4",
        FIG4,
        no_runs,
        _figure4,
        shows="Diagonal linear nets (n 20, d 30, alpha 0.1, gamma 10/d, 10^4 steps, rho 0.1): "
        "exact Hessian lambda_max over (u, v) and ||beta||_1 of GD, n-SAM, 1-SAM, one point per "
        "data seed; right: the ReLU family's exact lambda_max against kinks per run.",
        reading="The claim: SAM's solutions are sparser (smaller l1) and flatter (smaller "
        "lambda_max) than GD's; each line joins one data seed's GD, n-SAM and 1-SAM solutions.",
    ),
]


def reproduce(profile: str, results_dir: Path, figures_dir: Path) -> list[dict]:
    """Run the profile, draw Figures 1 to 4 with their captions, write
    results/measures/claims.csv (``suite.stage.run_stage``). Figure 3 reads the deep_nets
    stage's runs: without them its claims row says "not run" and names the command."""
    return run_stage(
        FAMILY,
        EXPERIMENTS,
        PROFILES,
        profile,
        results_dir,
        figures_dir,
        root=Path(results_dir) / FAMILY / profile,
        extra_rows=lambda ctx: [paper_scale_row()],
    )
