"""The seminar deck's table: SGD vs SAM on Fashion-MNIST with a ConvNet and a cosine schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from analysis.deep_nets import plots
from analysis.deep_nets.common import Caption, mean_sd, method, per_seed, rel, setting
from analysis.deep_nets.runs import Spec, SpecRuns, compare_rows, n_test, outcome
from suite.claims import ClaimRow, compare_to_paper, fmt_mean_std, gap, mean_std
from suite.stage import Experiment, StageContext

PAPER = "Seminar deck (PAPERS.md#seminar-deck)"
SEMINAR = {"SGD": 0.8730, "SAM": 0.8751}  # the deck's accuracies
SEMINAR_TOL = 0.01  # relative tolerance on the accuracy when the deck's setting is run


def sem_methods(P: dict[str, Any]) -> dict[str, Callable[[int], Spec]]:
    return {
        "SGD": lambda s: method(P, s, base="seminar"),
        "SAM": lambda s: method(P, s, base="seminar", rho=P["seminar_rho"]),
    }


def specs(P: dict[str, Any]) -> list[Spec]:
    return [sp for fn in sem_methods(P).values() for sp in per_seed(P, fn)]


def report(ctx: StageContext) -> list[ClaimRow]:
    P, root = ctx.P, ctx.root
    sgd, sam = (outcome(root, lab, per_seed(P, fn)) for lab, fn in sem_methods(P).items())
    acc = {x.label: [1 - v for v in x.last] for x in (sgd, sam)}
    fig = plots.bars(
        {
            "accuracy: the seminar's vs ours (last epoch)": {
                "SGD (seminar)": (SEMINAR["SGD"], 0.0),
                "SAM (seminar)": (SEMINAR["SAM"], 0.0),
                "SGD (ours)": mean_sd(acc["SGD"]),
                "SAM (ours)": mean_sd(acc["SAM"]),
            }
        },
        ctx.figure(FIGURE),
        ylabels=["test accuracy"],
        title=f"The seminar's table: {setting(P, 'seminar')}, rho {P['seminar_rho']}",
    )
    full = ctx.profile in ("full", "paper")
    note = (
        f"{setting(P, 'seminar')}; the deck does not state epochs / batch / lr / "
        "architecture"
        + ("" if full else "; quick subsamples, so the accuracies are not compared with the deck's")
    )
    rows = compare_rows(
        sgd,
        sam,
        claim="SAM beats SGD (Fashion-MNIST ConvNet, cosine lr, rho 0.05)",
        n=n_test(sgd.runs[0]),
        paper=PAPER,
        paper_value="accuracy SGD 0.8730 vs SAM 0.8751",
        figure=rel(fig),
        note=note,
    )
    for lab in ("SGD", "SAM"):
        m_ = mean_std(acc[lab])[0]
        g, se = compare_to_paper(m_ if full else None, SEMINAR[lab], rel_tol=SEMINAR_TOL)
        rows.append(
            ClaimRow(
                paper=PAPER,
                claim=f"our {lab} accuracy matches the deck's within {SEMINAR_TOL:.0%} (relative)",
                paper_value=f"{SEMINAR[lab]:.4f}",
                ours=fmt_mean_std(acc[lab], ".4f"),
                stat=gap(g, se=se),
                figure=rel(fig),
                note=note,
            )
        )
    return rows


FIGURE = "deep_nets_seminar.png"
EXPERIMENT = Experiment(
    "seminar",
    FIGURE,
    SpecRuns(specs),
    report,
    title="The seminar's table",
    shows=Caption(
        "Test accuracy per epoch of SGD and SAM (rho {seminar_rho}), the seminar's "
        "Fashion-MNIST ConvNet with a cosine schedule; {setting}.",
        base="seminar",
    ),
    reading=Caption(
        "The seminar's table: SAM slightly above SGD (0.8751 vs 0.8730); compare "
        "the final accuracies with the claims table.",
        base="seminar",
    ),
)
