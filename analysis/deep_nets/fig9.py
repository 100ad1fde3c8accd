"""Fig. 9 of Towards Understanding SAM: switching ERM <-> SAM late in training, and the linear
interpolation between the ERM and the ERM -> SAM solutions (one basin: no loss barrier)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from analysis.deep_nets import plots
from analysis.deep_nets.common import PAPER, Caption, method, per_seed, rel, setting
from analysis.deep_nets.runs import Outcome, Spec, SpecRuns, compare_rows, n_test, outcome
from suite.claims import ClaimRow, fmt_mean_std, gap
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
BARRIER_TOL = 0.05  # nats of train loss above the worse end point: fixed before the runs


def interpolation(root: Path, erm: Outcome, ft: Outcome) -> list[dict[str, list[float]]]:
    """Per seed: train/test loss along (1 - t) w_ERM + t w_(ERM->SAM), cached in root."""
    from analysis.deep_nets.interpolation import interpolate_runs
    from suite.rundir import config_hash

    out = []
    for a, b in zip(erm.runs, ft.runs, strict=True):
        key = config_hash(
            {"a": a["path"], "b": b["path"], "t": INTERP_T, "ca": a["config"], "cb": b["config"]}
        )
        path = root / "interpolation" / f"{key}.json"
        if path.exists():
            out.append(read_json(path))
            continue
        res = interpolate_runs(a, b, INTERP_T)
        atomic_write_json(path, res)
        out.append(res)
    return out


def barrier(curve: dict[str, list[float]]) -> float:
    """max over t in [0, 1] of the train loss minus the larger of its two end values."""
    t, loss = np.array(curve["t"]), np.array(curve["train"])
    inside = (t >= -1e-9) & (t <= 1 + 1e-9)
    ends = max(loss[np.argmin(np.abs(t))], loss[np.argmin(np.abs(t - 1))])
    return float(loss[inside].max() - ends)


def report(ctx: StageContext) -> list[ClaimRow]:
    P, root = ctx.P, ctx.root
    o = {lab: outcome(root, lab, per_seed(P, fn)) for lab, fn in ft_methods(P).items()}
    curves = interpolation(root, o["ERM"], o["ERM -> SAM"])

    def interp_panel(ax: Any) -> None:
        t = curves[0]["t"]
        for name, c in (("train", "C0"), ("test", "C3")):
            ax.plot(
                t,
                np.mean([cv[name] for cv in curves], axis=0),
                color=c,
                marker=".",
                label=f"{name} loss",
            )
        ax.axvline(0, color="k", lw=0.5)
        ax.axvline(1, color="k", lw=0.5)
        ax.set_xlabel("t: (1-t) w_ERM + t w_(ERM->SAM)")
        ax.set_title("linear interpolation")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    fig = plots.curves(
        list(o.values()),
        [("test_err", "test error (%)")],
        ctx.figure(FIGURE),
        title=f"Fig. 9: ERM <-> SAM switches at {P['switch']:.0%} of training ({setting(P)})",
        extra=interp_panel,
    )
    note = (
        f"switch at {P['switch']:.0%} of the epochs, rho {P['rho']}, m = batch; "
        f"{setting(P)} (CPU budget). The switch as the original counts it: SAM on in the "
        "1-based epochs e with e / epochs >= switch (ERM -> SAM) or <= switch (SAM -> ERM), "
        f"so epoch {switch_epoch(P)} is a SAM epoch in both; curves start at the epoch-0 "
        "evaluation"
    )
    common = dict(paper=f"{PAPER}, Fig. 9", figure=rel(fig), n=n_test(o["ERM"].runs[0]), note=note)
    b = [barrier(c) for c in curves]
    return [
        *compare_rows(
            o["ERM"],
            o["ERM -> SAM"],
            claim="switching ERM -> SAM late improves",
            paper_value="CIFAR-10 ~4.65% -> ~4.2%",
            **common,
        ),
        *compare_rows(
            o["ERM"],
            o["SAM -> ERM"],
            claim="SAM -> ERM keeps SAM's gain over ERM",
            paper_value="CIFAR-10 ERM ~4.65%, SAM -> ERM ~3.95%",
            **common,
        ),
        ClaimRow(
            paper=f"{PAPER}, Fig. 9 (interpolation)",
            claim=f"ERM -> SAM stays in the ERM basin: train-loss barrier on the segment < "
            f"{BARRIER_TOL} nats",
            paper_value="no barrier between the ERM and ERM -> SAM solutions",
            ours=f"barrier {fmt_mean_std(b, '.4f')} nats",
            stat=gap(b, BARRIER_TOL),
            figure=rel(fig),
            note="gap = tolerance - mean barrier; batch-norm statistics recomputed at every t. "
            + note,
        ),
    ]


FIGURE = "deep_nets_fig9_finetune.png"
EXPERIMENT = Experiment(
    "finetune",
    FIGURE,
    SpecRuns(specs),
    report,
    title="Fig. 9: ERM <-> SAM switches and interpolation",
    shows=Caption(
        "Test error per epoch of ERM, ERM -> SAM, SAM -> ERM and SAM (switch at "
        "{switch:.0%} of training), and the train/test loss on the line between the "
        "ERM and ERM -> SAM solutions (t from -0.5 to 1.5); {setting}."
    ),
    reading=Caption(
        "Fig. 9's claims: switching to SAM late improves on ERM, and the two "
        "solutions lie in one basin (no loss barrier between t = 0 and t = 1)."
    ),
)
