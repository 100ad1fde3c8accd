"""The diagonal-net stage's figures (``figures/diagonal_linear_nets_*.png``) and their captions
(what each shows, and its reading from the runs)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from analysis.diagonal_linear_nets.claims import NOTEBOOK, THEORY_TOL, _g
from analysis.diagonal_linear_nets.profiles import FAMILY, GRID, PAPER_FIG6, PAPER_FIG6_TRAIN
from analysis.diagonal_linear_nets.runs import (
    _at,
    _loss,
    _runs,
    barrier,
    chosen_on_validation,
    grid_table,
    interpolation,
    load_experiment,
    rho_orig,
    run_label,
    theory_table,
)
from suite.stage import StageContext


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, figures_dir: Path, what: str) -> Path:
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    p = figures_dir / f"{FAMILY}_{what}.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    _plt().close(fig)
    return p


def _curve(ax, s, key, **kw):
    it = np.asarray(s["iter"], float)
    ax.plot(np.maximum(it, 1), s[key], **kw)


def fig_curves(results_dir: Path, figures_dir: Path) -> Path:
    """Notebook cell 3: GD, SGD and the 1-SAM rho grid, train and test loss vs iteration."""
    plt = _plt()
    e = load_experiment(results_dir, "curves")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(e["summary"]["runs"]):
        for ax, key in zip(axes, ["train_loss", "test_loss"], strict=True):
            _curve(ax, e["series"][i], key, label=f"{run_label(r)} (gamma {r['gamma']:.3g})")
    for ax, key in zip(axes, ["train loss", "test loss"], strict=True):
        ax.set(xscale="log", yscale="log", xlabel="iteration", ylabel=key)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Notebook cell 3 (gamma 10/d, alpha 0.1); {RHO}")
    return _save(fig, figures_dir, "curves")


def fig_grid(results_dir: Path, figures_dir: Path) -> Path:
    plt = _plt()
    g = grid_table(results_dir)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.axhline(_loss(g["gd"]), color="silver", label="ERM (gamma 15/d)")
    ax.plot(GRID, [_loss(r) for r in g["nsam"]], "o-", color="red", label="n-SAM (gamma 10/d)")
    ax.plot(
        GRID,
        [_loss(r) for r in g["nsam_uniform"]],
        "o--",
        color="salmon",
        label="n-SAM (gamma 15/d, ours)",
    )
    ax.plot(GRID, [_loss(r) for r in g["1sam"]], "s-", color="orange", label="1-SAM (15/d)")
    nb = [np.nan if p is None else p for p in NOTEBOOK["grid"]]
    ax.plot(GRID, nb[1:8], "k+", ms=10, label="notebook's printed values")
    ax.plot(GRID, nb[8:], "k+", ms=10)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="rho (original convention)",
        ylabel="test loss",
        title="Fig. 5: test loss vs rho (10^4 + 1 iterations)",
    )
    ax.legend(fontsize=8)
    return _save(fig, figures_dir, "rho_grid")


def fig_switch(results_dir: Path, figures_dir: Path) -> Path:
    plt = _plt()
    a = load_experiment(results_dir, "switch_erm_sam")
    b = load_experiment(results_dir, "switch_sam_erm")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    names = {"gd": "ERM", "1sam": "ERM -> 1-SAM (rho 10)"}
    for e, lab in ((a, None), (b, "1-SAM (rho 0.175) -> ERM")):
        for i, r in enumerate(e["summary"]["runs"]):
            for ax, k in zip(axes[:2], ["train_loss", "test_loss"], strict=True):
                _curve(ax, e["series"][i], k, label=lab or names[r["algo"]])
    sw = a["config"]["config"]["switch_at"]
    for ax, k in zip(axes[:2], ["train loss", "test loss"], strict=True):
        ax.axvline(sw, color="gray", ls="--")
        ax.set(yscale="log", xlabel="iteration", ylabel=k, xlim=(0, 1.4 * sw))
        ax.legend(fontsize=8)
    ip = interpolation(results_dir)
    axes[2].plot(ip["t"], ip["test_loss"], "-", color="blue", label="test loss")
    axes[2].plot(ip["t"], ip["train_loss"], "--", color="blue", label="train loss")
    axes[2].set(
        xlabel="t: (1 - t) ERM->1-SAM + t ERM",
        ylabel="squared loss",
        title=f"interpolation; barrier on [0, 1] = {barrier(results_dir):.2g} x initial loss",
    )
    axes[2].legend()
    return _save(fig, figures_dir, "switch")


def fig_fig6(results_dir: Path, figures_dir: Path) -> Path:
    plt = _plt()
    e = load_experiment(results_dir, "fig6")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"gd": "red", "nsam": "blue", "1sam": "orange"}
    for i, r in enumerate(e["summary"]["runs"]):
        for ax, k in zip(axes, ["train_loss", "test_loss"], strict=True):
            lab = run_label(r) if r["seed"] == 0 else None
            _curve(ax, e["series"][i], k, label=lab, color=colors[r["algo"]], alpha=0.8)
    for ax, paper in zip(axes, (PAPER_FIG6_TRAIN, PAPER_FIG6), strict=True):
        for algo, p in paper.items():  # ERM's and n-SAM's coincide
            ax.axhline(p, color=colors[algo], ls=":", lw=1.2)
    for ax, k in zip(axes, ["train loss", "test loss"], strict=True):
        ax.set(xscale="log", yscale="log", xlabel="iteration", ylabel=k)
        ax.legend()
    c = e["config"]["config"]
    fig.suptitle(
        f"Fig. 6 at alpha {c['alpha'][0]:g}, gamma {c['gamma']:.3g}, rho {c['rho'][0]:g} "
        f"({RHO}), {c['iters']} iterations; dotted: the paper's levels",
        fontsize=10,
    )
    return _save(fig, figures_dir, "fig6")


def fig_theory(results_dir: Path, figures_dir: Path) -> Path:
    plt = _plt()
    tab = theory_table(results_dir)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for algo, name in (("gd", "GD"), ("nsam", "n-SAM"), ("1sam", "1-SAM")):
        rows = sorted(
            (r for r in tab if r["algo"] == algo and r["rel_dist"] is not None),
            key=lambda r: r["gamma"],
        )
        ax.plot([r["gamma"] for r in rows], [r["rel_dist"] for r in rows], "o-", label=name)
    ax.axhline(THEORY_TOL, color="gray", ls=":", label="0.1% (the paper)")
    ax.axvline(1 / 60, color="gray", ls="--", lw=0.8)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step size gamma",
        ylabel="||beta - beta_pred|| / ||beta_pred||",
        title="simulation vs flow prediction (rho 0.1, original convention)",
    )
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    # the step sizes themselves as "1/k" ticks (after ax.set: setting the scale resets them):
    # the default log ticks' labels overlap on this short axis
    gammas = sorted({r["gamma"] for r in tab})
    ax.xaxis.set_major_locator(FixedLocator(gammas))
    ax.xaxis.set_major_formatter(FixedFormatter([f"1/{round(1 / g)}" for g in gammas]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.legend()
    return _save(fig, figures_dir, "theory")


def make_figures(results_dir: str | Path, figures_dir: str | Path) -> list[Path]:
    r, f = Path(results_dir), Path(figures_dir)
    return [fig_curves(r, f), fig_grid(r, f), fig_switch(r, f), fig_fig6(r, f), fig_theory(r, f)]


DATA = "the notebook's data (n = 20, d = 30, sparsity 3, numpy seed 0)"
# One rho convention in every figure, legend and caption of this stage: the original code's.
RHO = "rho in the original convention: 1-SAM's is half the suite's --rho"


def _config(results_dir: Path, name: str) -> dict:
    return load_experiment(results_dir, name)["config"]["config"]


def _iters(results_dir: Path, name: str) -> int:
    return _config(results_dir, name)["iters"]


def curves_reading(ctx: StageContext) -> str:
    c = _runs(ctx.results_dir, "curves")
    gd_c = next(_loss(r) for r in c if r["algo"] == "gd")
    one = chosen_on_validation(
        _config(ctx.results_dir, "curves"), [r for r in c if r["algo"] == "1sam"]
    )
    return (
        f"The notebook's claim: 1-SAM's test loss falls with rho and SGD beats GD; here 1-SAM "
        f"at the rho its validation loss picks ({rho_orig(one):g}) {_g(_loss(one))} vs GD's "
        f"{_g(gd_c)} (each final value vs the notebook's in the claims)."
    )


def grid_reading(ctx: StageContext) -> str:
    g = grid_table(ctx.results_dir)
    cfg = _config(ctx.results_dir, "grid")
    one, ns = chosen_on_validation(cfg, g["1sam"]), chosen_on_validation(cfg, g["nsam"])
    return (
        "Fig. 5's claim: 1-SAM's best test loss lies far below n-SAM's, which stays near GD's; "
        f"here, each at the rho chosen on a validation set, 1-SAM {_g(_loss(one))} (rho "
        f"{rho_orig(one):g}), n-SAM {_g(_loss(ns))} (rho {rho_orig(ns):g}), GD "
        f"{_g(_loss(g['gd']))}."
    )


def switch_shows(ctx: StageContext) -> str:
    at = _runs(ctx.results_dir, "switch_erm_sam")[0]["switch_at"]
    return (
        f"Train/test loss vs iteration of ERM, ERM -> 1-SAM (rho 10) and 1-SAM (rho 0.175) -> "
        f"ERM switched at iteration {at} (dashed; {RHO}), gamma 1/d, {DATA}; right: losses on the "
        "line from the ERM -> 1-SAM solution (t = 0) to the ERM solution (t = 1)."
    )


def switch_reading(ctx: StageContext) -> str:
    sw = _runs(ctx.results_dir, "switch_erm_sam")
    erm = next(i for i, r in enumerate(sw) if r["algo"] == "gd")
    before = _at(ctx.results_dir, "switch_erm_sam", erm, sw[0]["switch_at"])
    after = next(_loss(r) for r in sw if r["algo"] == "1sam")
    return (
        "Fig. 8's claim: switching ERM -> 1-SAM late lowers the test loss without leaving "
        f"ERM's basin; here {_g(before)} -> {_g(after)}, barrier "
        f"{barrier(ctx.results_dir):.2g} x the initial loss."
    )


def fig6_shows(ctx: StageContext) -> str:
    c6 = load_experiment(ctx.results_dir, "fig6")["config"]["config"]
    return (
        f"Train and test loss vs iteration of ERM, n-SAM and 1-SAM at alpha "
        f"{c6['alpha'][0]:g}, gamma 5/d, rho {c6['rho'][0]:g} ({RHO}; chosen by the "
        f"README's search), {c6['iters']} iterations, data seeds {c6['seeds']}; dotted: the "
        "paper's levels (train ~1e-24 ERM and n-SAM, ~1e-13 1-SAM; test ~1.2e-3 and ~1.6e-4)."
    )


def fig6_reading(ctx: StageContext) -> str:
    f6 = _runs(ctx.results_dir, "fig6")
    r0 = {a: next(r for r in f6 if r["algo"] == a and r["seed"] == 0) for a in PAPER_FIG6}
    te = {a: _loss(r) for a, r in r0.items()}
    tr = {a: r["final_train_loss"] for a, r in r0.items()}
    return (
        "Fig. 6's claims are relations: 1-SAM's test plateau lies below ERM's (paper 7.5x) and "
        f"n-SAM's with ERM's; here ERM / 1-SAM = {te['gd'] / te['1sam']:.3g}x, n-SAM / ERM = "
        f"{te['nsam'] / te['gd']:.3g}; 1-SAM's train loss ends "
        f"{math.log10(tr['1sam'] / tr['gd']):.1f} decades above ERM's (paper 11; ERM stops at "
        "float64's floor) (seed 0)."
    )


def theory_reading(ctx: StageContext) -> str:
    tab = [r for r in theory_table(ctx.results_dir) if r["rel_dist"] is not None]
    g_min = min((r["gamma"] for r in tab), default=None)
    worst = max((r["rel_dist"] for r in tab if r["gamma"] == g_min), default=math.nan)
    return (
        "Section 4.2's claim: the runs converge to the predicted interpolator (within 0.1%), "
        "here up to discretization: "
        + (
            f"at most {worst:.2%} at the smallest gamma {g_min:.3g}."
            if tab
            else "no run interpolated, so there is no distance to show."
        )
    )
