"""Stage ``core`` of ``make reproduce``: what the SAM core shows on its own.

SGD vs SAM vs ASAM vs LookSAM on MNIST-1D with an MLP, each run a ``deep_nets/train.py`` run
(``analysis.core.runs``), measured afterwards on its saved weights (``analysis.core.measure``):
lambda_max, per-example test errors, and the step cost of LookSAM. The claims (SAM is flatter,
SAM / ASAM / LookSAM lower the test error, LookSAM costs ~1.2x SGD) and their pre-registered
tests are in ``analysis.core.claims``; the budgets in ``analysis.core.profiles``; the figure in
``analysis.core.figures``. Runs land in ``results/core/runs/``.

    python -c "from analysis.core import reproduce; reproduce('quick', 'results', 'figures')"
"""

from __future__ import annotations

from pathlib import Path

from analysis.core.claims import report, setting
from analysis.core.figures import FIGURE
from analysis.core.profiles import FAMILY, PROFILES
from analysis.core.runs import RUNS
from suite.stage import Experiment, StageContext, run_stage

__all__ = ["EXPERIMENTS", "FAMILY", "PROFILES", "reproduce"]


def _shows(ctx: StageContext) -> str:
    return (
        f"SGD / SAM / ASAM / LookSAM (k = 5): test accuracy and training loss per epoch (mean, "
        f"+- std band on accuracy), top Hessian eigenvalue of the last weights (mean +- std, "
        f"each bar labelled with its final training loss); {setting(ctx.P)}."
    )


EXPERIMENTS = [
    Experiment(
        "core",
        FIGURE,
        RUNS,
        report,
        key=True,
        shows=_shows,
        reading="SAM's lambda_max below SGD's is the flatness claim, its test accuracy above "
        "SGD's the generalization claim (the papers', at CPU scale; see the claims rows). A "
        "hatched bar marks a method that does not fit its training set: its low lambda_max is "
        "that of a model far from a minimum, not a flatter one.",
    )
]


def reproduce(profile: str, results_dir: Path, figures_dir: Path) -> list[dict]:
    """Train (or reuse) every run of ``profile`` through ``suite.stage.run_stage``, measure,
    plot, caption, write ``results/core/claims.csv``; returns the claims rows."""
    return run_stage(FAMILY, EXPERIMENTS, PROFILES, profile, results_dir, figures_dir)
