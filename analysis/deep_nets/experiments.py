"""The seven deep-net experiments, one module each (``suite.stage.Experiment``: its runs, its
report, its figure and caption): ``fig1`` (test error vs rho), ``msharpness`` (test error vs m),
``fig9`` (ERM <-> SAM switches and the interpolation), ``fig12`` (noisy labels),
``convergence``, ``looksam`` and ``seminar`` (the seminar deck's table). Runs are shared
between experiments when their flags are equal (ERM, SAM at the fixed rho, m-SAM at the small
m); ``runs.SpecRuns`` turns an experiment's specs into launcher runs.

Claims compare test error at the best-validation epoch and at the last epoch (two rows); the gap is
in percentage points, positive in the paper's direction, paired by seed and by test example
(``suite.claims.gap`` on each run's per-example errors, ``wrong.npz``), the seed variance pooled
within an experiment and epoch (``suite.claims.pool``), judged on a pre-registered
``suite.stats.Claim`` (``runs.EFFECT``, ``runs.NULL`` and the experiments' own constants).
"""

from __future__ import annotations

from analysis.deep_nets import convergence, fig1, fig9, fig12, looksam, msharpness, seminar
from analysis.deep_nets.common import PAPER
from analysis.deep_nets.profiles import PAPER_CONFIGS
from suite.claims import ClaimRow
from suite.stage import Experiment, StageContext

EXPERIMENTS: dict[str, Experiment] = {
    fig1.GRID.name: fig1.GRID,  # wave 0: the rho grid Fig. 1's boundary rule reads
    **{
        m.EXPERIMENT.name: m.EXPERIMENT
        for m in (fig1, msharpness, fig9, fig12, convergence, looksam, seminar)
    },
}


def paper_scale_row(ctx: StageContext) -> list[ClaimRow]:
    """Below the paper profile: one "not run" row naming the paper-scale configs."""
    if ctx.profile == "paper":
        return []
    names = ", ".join(c for cs in PAPER_CONFIGS.values() for c in cs)
    return [
        ClaimRow(
            paper=f"{PAPER}, Figs. 1 / 9 / 12; LookSAM; SAM m-sharpness",
            claim="the experiments at paper scale (ResNet-18/34, CIFAR-10/100, 200-1000 epochs)",
            paper_value="see PAPERS.md#deep-nets",
            ours="not run here (GPU-days)",
            profile="paper",
            note=f"named configs: {names}; make reproduce PROFILE=paper on a GPU with the data",
        )
    ]
