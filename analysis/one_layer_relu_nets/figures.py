"""The figures of the one_layer_relu_nets stage and their captions (``Experiment.shows``).

one_layer_relu_nets_fits.png          exp 1: fitted functions of GD / n-SAM / 1-SAM, all seeds
one_layer_relu_nets_simplicity.png    exp 1: kinks, slope TV, path norm, Hessian lambda_max
                                      (SAM runs, GD, and GD stopped at SAM's loss)
one_layer_relu_nets_over_training.png exp 1: kinks and slope TV over training
one_layer_relu_nets_teacher.png       exp 2: test loss vs rho (mean +- std over seeds)
one_layer_relu_nets_convergence.png   exp 3: training loss vs iterations
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.one_layer_relu_nets.claims import FIT_TOL, fit_rho
from analysis.one_layer_relu_nets.profiles import FAMILY, SWEEP_RHOS
from analysis.one_layer_relu_nets.runs import (
    ALG_LABEL,
    _cfg,
    _has,
    _seeds,
    exp1_frame,
    history_frame,
    run_dir,
    runs_frame,
)
from one_layer_relu_nets.engine import load_params
from one_layer_relu_nets.model import forward
from suite.rundir import read_json
from suite.stage import StageContext

ALG_COLOR = {
    "gd": "tab:gray",
    "sgd": "tab:brown",
    "nsam": "tab:blue",
    "1sam": "tab:red",
    "msam": "tab:green",
}
MEASURES = ("kinks", "slope_tv", "path_norm", "lambda_max")


def _mean_std(x: pd.Series) -> str:
    x = x.astype(float)
    return f"{x.mean():.3g} +- {x.std(ddof=1):.2g}"


# ------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def fits_panels(results_dir: Path, profile: str) -> list[tuple[Path, str, pd.DataFrame]]:
    """The fits figure's panels (comparison dir, algorithm, its runs): every algorithm of the
    main comparison (rho 0.3), then each algorithm at the rho the fit rule chose for it
    (``claims.fit_rho``) where that is another rho of the sweep."""
    df = exp1_frame(results_dir, profile)
    df = df[~df["original_loop"] & ~df["label"].str.contains("@")]
    main = run_dir(results_dir, profile, "exp1_main")
    panels = []
    for alg in dict.fromkeys(df.loc[df["comparison"] == main.name, "algorithm"]):
        panels.append((main, alg, df[(df["comparison"] == main.name) & (df["algorithm"] == alg)]))
        rho = fit_rho(df, alg) if alg != "gd" else None
        sweep = df[(df["comparison"] != main.name) & (df["algorithm"] == alg) & (df["rho"] == rho)]
        if rho is not None and len(sweep):
            panels.append((main.parent / sweep["comparison"].iloc[0], alg, sweep))
    return panels


def plot_fits(panels: list[tuple[Path, str, pd.DataFrame]], out: Path) -> Path:
    """Fitted functions on the 1-D data: a panel per (comparison, algorithm), a line per seed;
    the title says whether the runs fit the data (``claims.FIT_TOL``) and their kinks."""
    plt = _plt()
    fig, axs = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (p, alg, df) in zip(axs[0], panels, strict=True):
        data = read_json(Path(p) / "data.json")
        x = np.array(data["X"])[:, 0]
        params = load_params(p)
        grid = torch.linspace(x.min() - 0.3, x.max() + 0.3, 600, dtype=torch.float64)
        for _, r in df.iterrows():
            f = forward(params[r["run_id"]], grid.reshape(-1, 1)).out
            ax.plot(grid, f, lw=1.2, label=f"seed {r['seed']}")
        ax.scatter(x, data["y"], c="k", s=14, zorder=5)
        ax.set_ylim(min(data["y"]) - 1.5, max(data["y"]) + 1.5)
        sched = (
            ""
            if df["rho_schedule"].iloc[0] == "constant"
            else f", rho {df['rho_schedule'].iloc[0]}"
        )
        rho = "" if alg == "gd" else f" rho={df['rho'].iloc[0]:g}{sched}"
        miss = float(df["max_residual"].max())
        fit = "fits" if miss <= FIT_TOL else "DOES NOT FIT"
        ax.set_title(
            f"{ALG_LABEL[alg]}{rho}: {fit} (max miss {miss:.2f})\nkinks {_mean_std(df['kinks'])}",
            fontsize=9,
        )
        ax.set_xlabel("x")
    axs[0][0].set_ylabel("f(x)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def simplicity_table(results_dir: Path, profile: str) -> pd.DataFrame:
    """Mean and std over seeds of the simplicity measures, lambda_max and the final loss."""
    df = exp1_frame(results_dir, profile)
    cols = [*MEASURES, "train_loss", "iterations"]
    agg = df.groupby("label", sort=False)[cols].agg(["mean", "std"])
    agg["stopped"] = df.groupby("label", sort=False)["stopped"].mean()
    return agg


def plot_simplicity(results_dir: Path, profile: str, out: Path) -> Path:
    plt = _plt()
    df = exp1_frame(results_dir, profile)
    labels = list(dict.fromkeys(df["label"]))
    fig, axs = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, m in zip(axs, MEASURES, strict=True):
        for i, lab in enumerate(labels):
            sub = df[df["label"] == lab]
            vals = sub[m].astype(float).to_numpy()
            c = "silver" if "@" in lab else ALG_COLOR[sub["algorithm"].iloc[0]]
            ax.scatter(np.full(len(vals), i), vals, color=c, s=18)
            ax.errorbar(i + 0.2, vals.mean(), yerr=vals.std(), fmt="k_", capsize=3)
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=70)
        ax.set_title(m.replace("_", " ") + (" (log)" if m == "lambda_max" else ""))
        if m == "lambda_max":
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_over_training(results_dir: Path, profile: str, out: Path) -> Path:
    """Kinks and slope TV of the fitted function at the logged steps (mean over seeds)."""
    plt = _plt()
    hist = history_frame(run_dir(results_dir, profile, "exp1_main"))
    sweep = run_dir(results_dir, profile, "exp1_sweep")
    if (sweep / "summary.json").exists():
        hist = pd.concat([hist, history_frame(sweep)], ignore_index=True)
    hist = hist[hist["step"] > 0]
    fig, axs = plt.subplots(1, 2, figsize=(12, 4))
    styles = {0.03: ":", 0.1: "--", 0.3: "-"}
    for ax, m in zip(axs, ("kinks", "slope_tv"), strict=True):
        for (alg, rho), sub in hist.groupby(["algorithm", "rho"], sort=False):
            curve = sub.groupby("step")[m].mean()
            name = ALG_LABEL[alg] if alg == "gd" else f"{ALG_LABEL[alg]} rho {rho:g}"
            ax.plot(
                curve.index, curve.values, color=ALG_COLOR[alg], ls=styles.get(rho, "-"), label=name
            )
        ax.set_xscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(m.replace("_", " ") + " over training (mean over seeds)")
    axs[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def teacher_table(path: Path) -> pd.DataFrame:
    """Test loss (mean, std over seeds) per algorithm and rho."""
    df = runs_frame(path)
    cols = ["test_loss", "val_loss", "train_loss"]
    return df.groupby(["algorithm", "rho"], sort=False)[cols].agg(["mean", "std"])


def plot_teacher(path: Path, out: Path) -> Path:
    plt = _plt()
    df = runs_frame(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    g = df[df["algorithm"] == "gd"]["test_loss"].astype(float)
    if len(g):
        ax.axhline(g.mean(), color=ALG_COLOR["gd"], ls="--", label="GD")
        ax.axhspan(g.mean() - g.std(ddof=0), g.mean() + g.std(ddof=0), color="0.85")
    for alg in ("nsam", "1sam", "msam"):
        sub = df[df["algorithm"] == alg]
        if not len(sub):
            continue
        agg = sub.groupby("rho")["test_loss"].agg(["mean", "std"])
        ax.errorbar(
            agg.index,
            agg["mean"],
            yerr=agg["std"].fillna(0),
            marker="o",
            color=ALG_COLOR[alg],
            label=ALG_LABEL[alg],
            capsize=3,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rho (normalized ascent)")
    ax.set_ylabel("test loss (0.5 mean sq.)")
    ax.set_title("teacher-student, d=5")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_convergence(paths: list[Path], out: Path) -> Path:
    plt = _plt()
    hist = pd.concat([history_frame(p) for p in paths], ignore_index=True)
    hist = hist[hist["step"] > 0]
    fig, axs = plt.subplots(1, 3, figsize=(15, 3.8), sharey=True)
    titles = ["unnormalized, constant rho", "normalized, constant rho", "normalized, rho/sqrt(1+t)"]
    sel = [
        (hist["normalize"] == False) | (hist["algorithm"] == "gd"),  # noqa: E712
        (hist["normalize"] == True) & (hist["rho_schedule"] == "constant"),  # noqa: E712
        (hist["rho_schedule"] == "inv_sqrt"),
    ]
    gd = hist[hist["algorithm"] == "gd"].groupby("step")["train_loss"].mean()
    styles = ["-", "--", ":", "-."]
    for ax, title, mask in zip(axs, titles, sel, strict=True):
        sub = hist[mask]
        if len(gd):
            ax.plot(gd.index, gd.values, color=ALG_COLOR["gd"], lw=2, label="GD")
        for alg in ("nsam", "1sam"):
            for k, rho in enumerate(sorted(sub[sub["algorithm"] == alg]["rho"].unique())):
                c = sub[(sub["algorithm"] == alg) & (sub["rho"] == rho)]
                curve = c.groupby("step")["train_loss"].mean()
                ax.plot(
                    curve.index,
                    curve.values,
                    color=ALG_COLOR[alg],
                    ls=styles[k % 4],
                    label=f"{ALG_LABEL[alg]} rho={rho:g}",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    axs[0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def make_figures(results_dir: Path, figures_dir: Path, profile: str = "quick") -> list[Path]:
    """All five figures from the runs of ``profile`` under ``results_dir``."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)

    def rd(name: str) -> Path:
        return run_dir(results_dir, profile, name)

    exp3 = [rd("exp3_unnormalized"), rd("exp3_normalized"), rd("exp3_decaying")]
    return [
        plot_fits(fits_panels(results_dir, profile), figures_dir / f"{FAMILY}_fits.png"),
        plot_simplicity(results_dir, profile, figures_dir / f"{FAMILY}_simplicity.png"),
        plot_over_training(results_dir, profile, figures_dir / f"{FAMILY}_over_training.png"),
        plot_teacher(rd("exp2_teacher"), figures_dir / f"{FAMILY}_teacher.png"),
        plot_convergence(exp3, figures_dir / f"{FAMILY}_convergence.png"),
    ]


# ------------------------------------------------------------------------------------ captions
def _one_d(ctx: StageContext) -> str:
    e1 = _cfg(run_dir(ctx.results_dir, ctx.profile, "exp1_main"))
    return (
        f"12-point 1-D data, width-{e1['width']} ReLU net, reference init, lr {e1['lr']:g} "
        f"{e1['lr_schedule']}, T = {e1['iterations']:.0e}, seeds {_seeds(e1)}"
    )


def _fits_shows(ctx: StageContext) -> str:
    e1 = _cfg(run_dir(ctx.results_dir, ctx.profile, "exp1_main"))
    algs = ", ".join(ALG_LABEL[a] for a in e1["algorithms"])
    return (
        f"Fitted functions f(x) of {algs} at rho 0.3 (one panel each), then each SAM at the "
        f"largest rho of {SWEEP_RHOS} at which it fits every point within {FIT_TOL:g} (where "
        "that is not 0.3), one line per seed, dots = the data; the title says whether the runs "
        f"fit; {_one_d(ctx)}."
    )


def _simplicity_shows(ctx: StageContext) -> str:
    original = _has(ctx.results_dir, ctx.profile, "exp1_original")
    return (
        "Kinks, slope TV, path norm and Hessian lambda_max (log) of every experiment-1 run "
        "per algorithm and rho, grey = GD stopped at each SAM run's loss; dots = seeds, bars "
        f"= mean +- std; {_one_d(ctx)}"
        + (
            ", and the notebook's loop (lr decayed for SAM only, 'notebook lr')."
            if original
            else "."
        )
    )


def _teacher_shows(ctx: StageContext) -> str:
    e2 = _cfg(run_dir(ctx.results_dir, ctx.profile, "exp2_teacher"))
    return (
        "Test loss vs rho of normalized n-SAM and 1-SAM (mean +- std over seeds), GD dashed "
        f"with its +-1 std band; log-log; teacher-student d = {e2['d']}, width {e2['width']}, "
        f"n = {e2['n_train']}, lr {e2['lr']:g}, T = {e2['iterations']}, seeds "
        f"{_seeds(e2)}."
    )


def _convergence_shows(ctx: StageContext) -> str:
    e3 = _cfg(run_dir(ctx.results_dir, ctx.profile, "exp3_decaying"))
    return (
        "Training loss vs iteration (log-log), mean over seeds: unnormalized SAM | normalized "
        "with constant rho | normalized with rho/sqrt(1+t), GD grey; the teacher-student "
        f"task, T = {e3['iterations']}, seeds {_seeds(e3)}."
    )
