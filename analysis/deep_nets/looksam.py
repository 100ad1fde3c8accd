"""LookSAM (Liu et al. 2022): most of SAM's gain over ERM at a fraction of SAM's extra cost."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from analysis.deep_nets import plots
from analysis.deep_nets.common import Caption, m_of, mean_sd, method, per_seed, rel, setting
from analysis.deep_nets.runs import Spec, SpecRuns, compare_rows, epoch_rows, n_test, outcome, pct
from suite.claims import ClaimRow, fmt_mean_std, gap
from suite.stage import Experiment, StageContext

PAPER = "Liu et al. 2022 (LookSAM), Table 1"


def look_methods(P: dict[str, Any]) -> dict[str, Callable[[int], Spec]]:
    return {
        "ERM": lambda s: method(P, s),
        f"SAM (m={m_of(P, 1)})": lambda s: method(P, s, rho=P["rho"]),
        f"LookSAM (k={P['looksam_k']})": lambda s: method(P, s, rho=P["rho"], variant="looksam"),
    }


def specs(P: dict[str, Any]) -> list[Spec]:
    return [sp for fn in look_methods(P).values() for sp in per_seed(P, fn)]


COST_FRACTION = 0.5  # LookSAM's extra cost as a fraction of SAM's: "a fraction" means < 0.5


def cpu_per_epoch(run: dict[str, Any]) -> float:
    """Process CPU seconds of the training steps per epoch (robust on a shared machine)."""
    rows = run["metrics"]
    return sum(r.get("train_cpu_seconds", 0.0) for r in rows) / max(1, len(epoch_rows(run)))


def report(ctx: StageContext) -> list[ClaimRow]:
    P, root = ctx.P, ctx.root
    o = {lab: outcome(root, lab, per_seed(P, fn)) for lab, fn in look_methods(P).items()}
    erm, sam, look = o.values()
    cpu = {lab: [cpu_per_epoch(r) for r in x.runs] for lab, x in o.items()}
    fig = plots.bars(
        {
            "test error at the last epoch": {
                k: mean_sd([100 * v for v in x.last]) for k, x in o.items()
            },
            "training CPU seconds per epoch": {k: mean_sd(v) for k, v in cpu.items()},
        },
        ctx.figure(FIGURE),
        ylabels=["test error (%)", "CPU s / epoch"],
        title=f"LookSAM vs SAM vs ERM, rho {P['rho']} ({setting(P)})",
    )
    rows = compare_rows(
        erm,
        look,
        claim=f"{look.label} keeps SAM's gain: beats ERM",
        n=n_test(erm.runs[0]),
        paper=PAPER,
        figure=rel(fig),
        paper_value="ViT-S/32 ImageNet acc.: AdamW 68.1%, SAM 68.9%, LookSAM 68.8%",
        note=f"SAM: {pct(sam.last)} (last epoch); {setting(P)}, SGD instead of AdamW",
    )
    triples = zip(cpu["ERM"], cpu[sam.label], cpu[look.label], strict=True)
    frac = [(c_l - c_e) / (c_s - c_e) if c_s > c_e else math.nan for c_e, c_s, c_l in triples]
    rows.append(
        ClaimRow(
            paper=PAPER,
            claim=f"{look.label}'s extra cost over ERM is < {COST_FRACTION} of SAM's extra cost",
            paper_value="img/s AdamW 5154, SAM 2566, LookSAM 4273: fraction 0.20",
            ours=f"fraction {fmt_mean_std(frac, '.2f')}; CPU s/epoch ERM "
            f"{fmt_mean_std(cpu['ERM'], '.3f')}, SAM {fmt_mean_std(cpu[sam.label], '.3f')}, "
            f"LookSAM {fmt_mean_std(cpu[look.label], '.3f')}",
            stat=gap(frac, COST_FRACTION),
            figure=rel(fig),
            note="process CPU time of the training steps (the machine is shared: wall-clock is "
            "noisier); tiny models are dominated by per-step overheads",
        )
    )
    return rows


FIGURE = "deep_nets_looksam.png"
EXPERIMENT = Experiment(
    "looksam",
    FIGURE,
    SpecRuns(specs),
    report,
    title="LookSAM vs SAM vs ERM",
    shows=Caption(
        "Test error per epoch and CPU seconds per epoch of ERM, SAM and LookSAM "
        "(k = {looksam_k}); {setting}."
    ),
    reading=Caption(
        "LookSAM's claim: it keeps most of SAM's gain over ERM at a fraction of SAM's extra cost."
    ),
)
