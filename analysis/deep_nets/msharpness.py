"""m-sharpness (Foret et al.; Towards Understanding SAM, Fig. 1): test error vs the m of m-SAM
at a fixed rho, and the final one-step m-sharpness of ERM vs m-SAM at the small m."""

from __future__ import annotations

from typing import Any

from analysis.deep_nets import plots
from analysis.deep_nets.common import PAPER, Caption, m_of, method, per_seed, rel, setting
from analysis.deep_nets.runs import (
    EFFECT,
    Spec,
    SpecRuns,
    compare_contrasts,
    outcome,
    pooled_rows,
)
from suite.claims import Claim, ClaimRow, fmt_mean_std, gap
from suite.stage import Experiment, StageContext


def specs(P: dict[str, Any]) -> list[Spec]:
    out = per_seed(P, lambda s: method(P, s))
    for acc in P["accs"]:
        out += per_seed(P, lambda s, a=acc: method(P, s, rho=P["rho"], acc=a))
    return out


# The one-step m-sharpness row: an effect smaller than 0.001 nats (a tenth of ERM's ~0.01 on the
# quick base) is of no interest; fixed before the runs.
SHARPNESS_SESOI = 0.001


def report(ctx: StageContext) -> list[ClaimRow]:
    P, root = ctx.P, ctx.root
    erm = outcome(root, "ERM", per_seed(P, lambda s: method(P, s)))
    accs = sorted(P["accs"])  # ascending acc_steps = descending m
    outs = [
        outcome(
            root,
            f"m-SAM (m={m_of(P, a)})",
            per_seed(P, lambda s, a=a: method(P, s, rho=P["rho"], acc=a)),
        )
        for a in accs
    ]
    ms = [m_of(P, a) for a in accs]
    fig = plots.error_vs_x(
        ms,
        {f"SAM, rho {P['rho']}": outs},
        erm,
        ctx.figure(FIGURE),
        xlabel="m (examples per ascent)",
        title=f"m-sharpness: test error vs m ({setting(P)})",
    )
    big, small = outs[0], outs[-1]
    note = (
        f"rho = {P['rho']} fixed before the runs (untuned), m in {ms}; {setting(P)} (CPU "
        "budget); paired by seed and example, the seed variance pooled with every m vs ERM gap "
        "of this experiment (Bartlett-checked)"
    )
    # the row, and gaps that only inform the pool: each m against ERM (their rows are Fig. 1's)
    cs = compare_contrasts(
        big,
        small,
        claim=f"smaller m generalizes better (m = {ms[-1]} vs m = {ms[0]}, at rho {P['rho']:g})",
        paper_value="error falls as m shrinks (m = 256 -> 1, small ResNet CIFAR-10)",
        note=note,
        test=EFFECT,
        pool="m_sharpness",
    )
    for o in outs:
        cs += compare_contrasts(
            erm, o, claim="", paper_value="", test=EFFECT, pool="m_sharpness", row=False
        )
    rows = pooled_rows(cs, paper=f"{PAPER}, Fig. 1 / Foret et al. m-sharpness", figure=rel(fig))
    # ported from the former quick stage: the final one-step m-sharpness (same rho and m for every
    # method: --sharpness_rho / --sharpness_m of the base config); one number per run, paired by
    # seed (df = seeds - 1: no pool of this quantity)
    sh = {o.label: [r["summary"]["sharpness_last"] for r in o.runs] for o in (erm, small)}
    rows.append(
        ClaimRow(
            paper="Foret et al. 2021 (Hessian spectrum); the former quick stage",
            claim=f"{small.label} ends flatter than ERM "
            "(lower one-step m-sharpness, same rho and m)",
            paper_value="lambda_max 24.2 (SGD) vs 1.0 (SAM), WRN CIFAR-10",
            ours=f"ERM {fmt_mean_std(sh['ERM'], '.4f')} vs {small.label} "
            f"{fmt_mean_std(sh[small.label], '.4f')}",
            stat=gap(sh[small.label], sh["ERM"], paired=True),
            test=Claim("effect", SHARPNESS_SESOI),
            figure=rel(fig),
            note="one-step m-sharpness L(w+e)-L(w) (nats), not lambda_max; near-tautological: "
            "SAM minimizes this quantity; " + note.split("; paired")[0],
        )
    )
    return rows


FIGURE = "deep_nets_msharpness.png"
EXPERIMENT = Experiment(
    "m_sharpness",
    FIGURE,
    SpecRuns(specs),
    report,
    title="m-sharpness: test error vs m",
    shows=Caption("Test error vs the m of m-SAM at fixed rho {rho}, ERM as a line; {setting}."),
    reading=Caption(
        "The claim: a smaller m generalizes better (the error falls as m shrinks); the "
        "claims row tests the smallest m against m = batch at rho {rho}, untuned."
    ),
)
