"""m-sharpness (Foret et al.; Towards Understanding SAM, Fig. 1): test error vs the m of m-SAM
at a fixed rho, and the final one-step m-sharpness of ERM vs m-SAM at the small m."""

from __future__ import annotations

from typing import Any

from analysis.deep_nets import plots
from analysis.deep_nets.common import PAPER, Caption, m_of, method, per_seed, rel, setting
from analysis.deep_nets.runs import Spec, SpecRuns, compare_rows, n_test, outcome
from suite.claims import ClaimRow, fmt_mean_std, gap
from suite.stage import Experiment, StageContext


def specs(P: dict[str, Any]) -> list[Spec]:
    out = per_seed(P, lambda s: method(P, s))
    for acc in P["accs"]:
        out += per_seed(P, lambda s, a=acc: method(P, s, rho=P["rho"], acc=a))
    return out


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
    note = f"rho = {P['rho']}, m in {ms}; {setting(P)} (CPU budget)"
    rows = compare_rows(
        big,
        small,
        claim=f"smaller m generalizes better (m = {ms[-1]} vs m = {ms[0]})",
        paper=f"{PAPER}, Fig. 1 / Foret et al. m-sharpness",
        figure=rel(fig),
        paper_value="error falls as m shrinks (m = 256 -> 1, small ResNet CIFAR-10)",
        note=note,
        n=n_test(erm.runs[0]),
    )
    # ported from the former quick stage: the final one-step m-sharpness (same rho and m for every
    # method: --sharpness_rho / --sharpness_m of the base config)
    sh = {o.label: [r["summary"]["sharpness_last"] for r in o.runs] for o in (erm, small)}
    rows.append(
        ClaimRow(
            paper="Foret et al. 2021 (Hessian spectrum); the former quick stage",
            claim=f"{small.label} ends flatter than ERM "
            "(lower one-step m-sharpness, same rho and m)",
            paper_value="lambda_max 24.2 (SGD) vs 1.0 (SAM), WRN CIFAR-10",
            ours=f"ERM {fmt_mean_std(sh['ERM'], '.4f')} vs {small.label} "
            f"{fmt_mean_std(sh[small.label], '.4f')}",
            stat=gap(sh[small.label], sh["ERM"]),
            figure=rel(fig),
            note="one-step m-sharpness L(w+e)-L(w), not lambda_max; " + note,
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
    reading=Caption("The claim: a smaller m generalizes better (the error falls as m shrinks)."),
)
