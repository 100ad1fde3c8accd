"""Fig. 9 of Towards Understanding SAM: switching ERM <-> SAM late in training, and the linear
interpolation between the ERM and the ERM -> SAM solutions (one basin: no loss barrier)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.deep_nets.common import PAPER, Caption, method, per_seed, rel, setting
from analysis.deep_nets.runs import (
    EFFECT,
    Outcome,
    Spec,
    SpecRuns,
    error_gap,
    mean_curve,
    outcome,
    pct,
)
from suite.claims import Claim, ClaimRow, fmt_mean_std, gap
from suite.rundir import atomic_write_json, read_json
from suite.stage import Experiment, StageContext


def ft_methods(P: dict[str, Any]) -> dict[str, Callable[[int], Spec]]:
    rho, sw = P["rho"], P["switch"]
    return {
        "ERM": lambda s: method(P, s),
        "ERM -> SAM": lambda s: method(P, s, rho=rho, start=sw),
        "SAM -> ERM": lambda s: method(P, s, rho=rho, end=sw),
        "SAM": lambda s: method(P, s, rho=rho),
    }


def specs(P: dict[str, Any]) -> list[Spec]:
    return [sp for fn in ft_methods(P).values() for sp in per_seed(P, fn)]


def switch_epoch(P: dict[str, Any]) -> int:
    """The 1-based epoch where the switch lands: the first e with e / epochs >= switch."""
    return math.ceil(P["switch"] * P["base"]["epochs"] - 1e-9)


INTERP_T = [round(-0.5 + 0.1 * i, 2) for i in range(21)]  # -0.5 .. 1.5
# Pre-registered (module constants, fixed before the runs they judge):
# - "no barrier" is a null claim: the train-loss barrier on the segment (max over t in [0, 1]
#   minus the larger end value, >= 0) is shown within BARRIER_TOL nats (TOST);
# - it is tested only between end points that differ: ||w_(ERM->SAM) - w_ERM|| >= MIN_DISTANCE
#   ||w_ERM|| in every seed, else "not comparable" (the review's vacuous case was 1.1% apart;
#   ERM and SAM, different solutions, are 59-65% apart). Seen before this constant was fixed:
#   seed 0 of the quick profile on a scratch run, 8.2% with the switch at 50%, 1.2% at 75%.
BARRIER_TOL = 0.05
MIN_DISTANCE = 0.05
BARRIER_TEST = Claim("null", BARRIER_TOL)
# The paper's effects (CIFAR-10, points): ERM -> SAM 4.65% -> 4.2%; SAM -> ERM 3.95% vs 4.65%.
PAPER_EFFECT_ERM_TO_SAM = 0.45
PAPER_EFFECT_SAM_TO_ERM = 0.7


def interpolation(root: Path, erm: Outcome, ft: Outcome) -> list[dict[str, Any]]:
    """Per seed: train/test loss along (1 - t) w_ERM + t w_(ERM->SAM) and the end points'
    relative distance, cached in root."""
    from analysis.deep_nets.interpolation import interpolate_runs
    from suite.rundir import config_hash

    out = []
    for a, b in zip(erm.runs, ft.runs, strict=True):
        key = config_hash(
            {
                "a": a["path"],
                "b": b["path"],
                "t": INTERP_T,
                "ca": a["config"],
                "cb": b["config"],
                "v": 2,  # with rel_distance
            }
        )
        path = root / "interpolation" / f"{key}.json"
        if path.exists():
            out.append(read_json(path))
            continue
        res = interpolate_runs(a, b, INTERP_T)
        atomic_write_json(path, res)
        out.append(res)
    return out


def barrier(curve: Mapping[str, Any]) -> float:
    """max over t in [0, 1] of the train loss minus the larger of its two end values."""
    t, loss = np.array(curve["t"]), np.array(curve["train"])
    inside = (t >= -1e-9) & (t <= 1 + 1e-9)
    ends = max(loss[np.argmin(np.abs(t))], loss[np.argmin(np.abs(t - 1))])
    return float(loss[inside].max() - ends)


def same_point(dist: Sequence[float]) -> str:
    """The precondition's reason when the end points do not differ (any seed), else ""."""
    if min(dist) >= MIN_DISTANCE:
        return ""
    return (
        "the end points barely differ (ERM -> SAM is "
        + ", ".join(f"{100 * d:.1f}%" for d in dist)
        + f" of ||w_ERM|| from ERM per seed; the precondition, fixed before the runs, is >= "
        f"{100 * MIN_DISTANCE:g}%): a barrier cannot appear"
    )


def figure(P: dict[str, Any], o: Mapping[str, Outcome], curves: list[dict], path: Path) -> Path:
    """Three panels: ERM and ERM -> SAM, SAM and SAM -> ERM (test error per epoch, mean over
    seeds; the switch run dashed: it equals its partner up to the switch), the interpolation."""
    import matplotlib.pyplot as plt

    from analysis.deep_nets.plots import _color, _save

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    sw = switch_epoch(P)
    for ax, (a, b) in zip(axes, (("ERM", "ERM -> SAM"), ("SAM", "SAM -> ERM"))):
        for lab, ls in ((a, "-"), (b, "--")):
            x, y = mean_curve(o[lab].runs, "test_err")
            ax.plot(x, 100 * y, ls=ls, lw=2, color=_color(lab), label=lab)
        ax.axvline(sw, color="0.4", ls=":", lw=1)
        ax.annotate(
            f"switch (epoch {sw})",
            (sw, 0.98),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color="0.3",
            ha="right",
            va="top",
            rotation=90,
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"{a} vs {b}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[2]
    t = curves[0]["t"]
    for name, c in (("train", "C0"), ("test", "C3")):
        ax.plot(
            t,
            np.mean([cv[name] for cv in curves], axis=0),
            color=c,
            marker=".",
            label=f"{name} loss",
        )
    for v in (0, 1):
        ax.axvline(v, color="k", lw=0.5)
    ax.set_xlabel("t: (1 - t) w_ERM + t w_(ERM -> SAM)")
    dist = ", ".join(f"{100 * cv['rel_distance']:.1f}%" for cv in curves)
    ax.set_title(f"interpolation (end points {dist} apart)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"Fig. 9: switch at {P['switch']:.0%} of training; {setting(P)}", fontsize=11)
    return _save(fig, path)


def report(ctx: StageContext) -> list[ClaimRow]:
    P, root = ctx.P, ctx.root
    o = {lab: outcome(root, lab, per_seed(P, fn)) for lab, fn in ft_methods(P).items()}
    curves = interpolation(root, o["ERM"], o["ERM -> SAM"])
    fig = rel(figure(P, o, curves, ctx.figure(FIGURE)))
    note = (
        f"switch at {P['switch']:.0%} of the epochs, rho {P['rho']}, m = batch; {setting(P)}. "
        "The switch as the original counts it: SAM on in the 1-based epochs e with "
        f"e / epochs >= switch (ERM -> SAM) or <= switch (SAM -> ERM), so epoch "
        f"{switch_epoch(P)} is a SAM epoch in both. Last epoch only: the best-validation rows "
        "would repeat Fig. 1's when the best epoch falls before the switch"
    )
    erm = o["ERM"]
    rows = []
    for lab, claim, value, eff in (
        (
            "ERM -> SAM",
            "switching ERM -> SAM late improves on ERM",
            "CIFAR-10 ~4.65% -> ~4.2%",
            PAPER_EFFECT_ERM_TO_SAM,
        ),
        (
            "SAM -> ERM",
            "SAM -> ERM keeps SAM's gain over ERM",
            "CIFAR-10 ERM ~4.65%, SAM -> ERM ~3.95%",
            PAPER_EFFECT_SAM_TO_ERM,
        ),
    ):
        rows.append(
            ClaimRow(
                paper=f"{PAPER}, Fig. 9",
                claim=f"{claim} (at the last epoch)",
                paper_value=value,
                ours=f"ERM {pct(erm.last)} vs {lab} {pct(o[lab].last)}",
                stat=error_gap(o[lab].scores("last"), erm.scores("last")),
                test=EFFECT,
                paper_effect=eff,
                figure=fig,
                note=f"gap = ERM - {lab} test error in points, paired by seed and example; " + note,
            )
        )
    b = [barrier(c) for c in curves]
    dist = [float(c["rel_distance"]) for c in curves]
    rows.append(
        ClaimRow(
            paper=f"{PAPER}, Fig. 9 (interpolation)",
            claim=f"ERM -> SAM stays in the ERM basin: no train-loss barrier on the segment "
            f"(within {BARRIER_TOL} nats)",
            paper_value="no barrier between the ERM and ERM -> SAM solutions",
            ours=f"barrier {fmt_mean_std(b, '.4f')} nats; end points "
            + ", ".join(f"{100 * d:.1f}%" for d in dist)
            + " of ||w_ERM|| apart",
            stat=gap(b, 0.0),
            test=BARRIER_TEST,
            not_comparable=same_point(dist),
            figure=fig,
            note="gap = -mean barrier (a null claim: equivalent when shown within the margin); "
            "batch-norm statistics recomputed at every t. " + note,
        )
    )
    return rows


FIGURE = "deep_nets_fig9_finetune.png"
EXPERIMENT = Experiment(
    "finetune",
    FIGURE,
    SpecRuns(specs),
    report,
    title="Fig. 9: ERM <-> SAM switches and interpolation",
    shows=Caption(
        "Test error per epoch (mean over seeds) of ERM with ERM -> SAM, and of SAM with "
        "SAM -> ERM (switch at {switch:.0%} of training, dotted line; each switch run, dashed, "
        "equals its partner until the switch), and the train/test loss on the line between the "
        "ERM and ERM -> SAM solutions (t from -0.5 to 1.5; the title gives how far apart the "
        "end points are); {setting}."
    ),
    reading=Caption(
        "Fig. 9's claims: switching to SAM late improves on ERM, SAM -> ERM keeps SAM's gain, "
        "and the ERM -> SAM solution stays in the ERM basin (no loss barrier between t = 0 and "
        "t = 1; tested only when the end points differ)."
    ),
)
