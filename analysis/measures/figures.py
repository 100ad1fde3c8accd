"""The measures stage's figures, drawn from what ``analysis.measures.runs`` measured (never
trains, never measures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analysis.measures.runs import DIAG_ALGOS, OPTS, RELU_CMD, rank_correlation
from sharpness import measures as M

FIG1 = "measures_hessian_spectrum.png"
FIG2 = "measures_landscapes.png"
FIG3 = "measures_msharpness_vs_error.png"
FIG4 = "measures_small_nets_lambda_max.png"
COLORS = {"sgd": "tab:blue", "sam": "tab:red"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spectrum(res: dict[str, Any], path: Path) -> None:
    """Figure 1: density at the end (seed 0), lambda_max and lambda_max / lambda_5 over epochs."""
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for o in OPTS:
        s = res["runs"][o][0]["final"]
        d = M.Density(s["density_nodes"], s["density_weights"])
        nodes = np.concatenate([np.asarray(n) for n in d.nodes])
        lo, hi = nodes.min(), nodes.max()
        sigma = 0.01 * max(hi - lo, 1e-6)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 2000)
        ax[0].semilogy(grid, d.smooth(grid, sigma) + 1e-8, color=COLORS[o], label=o.upper())
        for key, a in (("lambda_max", ax[1]), ("ratio", ax[2])):
            runs = res["runs"][o]
            ep = [r["epoch"] for r in runs[0]["curve"]]
            v = np.array([[r[key] for r in run["curve"]] for run in runs])
            a.plot(ep, v.mean(0), "o-", color=COLORS[o], label=o.upper())
            a.fill_between(
                ep, v.mean(0) - v.std(0), v.mean(0) + v.std(0), color=COLORS[o], alpha=0.2
            )
    ax[0].set(
        xlabel="eigenvalue",
        ylabel="density (SLQ, smoothed)",
        title="Hessian spectrum at the end (seed 0)",
    )
    ax[1].set(xlabel="epoch", ylabel="lambda_max", title="top eigenvalue (mean +- std)")
    ax[2].set(xlabel="epoch", ylabel="lambda_max / lambda_5", title="spectral ratio")
    for a in ax:
        a.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_landscapes(res: dict[str, Any], path: Path) -> None:
    """Figure 2: 1-D slices, 2-D contours of SGD and SAM (seed 0), ERM -> ERM->SAM interpolation."""
    plt = _plt()
    land = res["landscapes"]
    fig, ax = plt.subplots(1, 4, figsize=(19, 4))
    for o in OPTS:
        rows = land[f"{o}_seed0"]["slice_1d"]
        ax[0].plot(
            [r["alpha"] for r in rows], [r["loss"] for r in rows], color=COLORS[o], label=o.upper()
        )
    ax[0].set(
        xlabel="alpha (filter-normalized direction)",
        ylabel="train loss",
        yscale="log",
        title="1-D slices",
    )
    ax[0].legend()
    vmax = max(r["loss"] for o in OPTS for r in land[f"{o}_seed0"]["slice_2d"])
    levels = np.geomspace(
        min(r["loss"] for o in OPTS for r in land[f"{o}_seed0"]["slice_2d"]), vmax, 15
    )
    for o, a in zip(OPTS, ax[1:3]):
        rows = land[f"{o}_seed0"]["slice_2d"]
        al = sorted({r["alpha"] for r in rows})
        be = sorted({r["beta"] for r in rows})
        z = np.array([[r["loss"] for r in rows if r["alpha"] == x] for x in al])
        cs = a.contour(be, al, z, levels=levels, cmap="viridis")
        a.clabel(cs, fontsize=6, fmt="%.2g")
        a.set(xlabel="beta", ylabel="alpha", title=f"2-D slice, {o.upper()}")
    for split, style in (("train", "-"), ("test", "--")):
        rows = land["interpolation"][split]
        ax[3].plot([r["t"] for r in rows], [r["loss"] for r in rows], style, label=split)
    ax[3].axvline(0, color="gray", lw=0.5)
    ax[3].axvline(1, color="gray", lw=0.5)
    ax[3].set(xlabel="t (0: ERM, 1: ERM -> SAM)", ylabel="loss", title="linear interpolation")
    ax[3].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_msharpness_vs_error(df, path: Path) -> None:
    """Figure 3: one panel per (rho, m), m-sharpness against test error, one point per run,
    Kendall's tau and Spearman's rho in the title."""
    plt = _plt()
    corr = rank_correlation(df)
    ms, rhos = sorted(df["m"].unique()), sorted(df["rho"].unique())
    fig, ax = plt.subplots(
        len(rhos), len(ms), figsize=(3.6 * len(ms), 3.0 * len(rhos)), squeeze=False
    )
    for i, rho in enumerate(rhos):
        for j, m in enumerate(ms):
            g = df[(df["m"] == m) & np.isclose(df["rho"], rho)]
            c = corr[(corr["m"] == m) & np.isclose(corr["rho"], rho)].iloc[0]
            a = ax[i][j]
            a.scatter(g["sharpness"], 100 * g["test_error"], s=14)
            a.set_title(
                f"m={m}, rho={rho:g}: tau {c['kendall_tau']:.2f}, r_s {c['spearman']:.2f}",
                fontsize=9,
            )
            a.set_xlabel("m-sharpness (worst case)", fontsize=8)
            a.set_ylabel("test error (%)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_small_nets(diag: list[dict], relu_df, path: Path) -> None:
    """Figure 4: diagonal nets (lambda_max and ||beta||_1 per algorithm, one point per seed)
    and the ReLU family's lambda_max against kinks per run (its own stored measurements)."""
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"gd": "tab:gray", "nsam": "tab:blue", "1sam": "tab:red"}
    ax[0].set_ylabel("one point per data seed, lines join a seed")
    for k, (key, title) in enumerate(
        (
            ("lambda_max", "exact Hessian lambda_max over (u, v)"),
            ("l1", "||beta||_1 (implicit bias)"),
        )
    ):
        by = {(r["algo"], r["seed"]): r[key] for r in diag}
        for s in sorted({r["seed"] for r in diag}):  # paired by seed: one line per data set
            vals = [by[a, s] for a in DIAG_ALGOS]
            ax[k].plot(range(len(vals)), vals, color="0.7", lw=0.8, zorder=1)
            ax[k].scatter(range(len(vals)), vals, c=[colors[a] for a in DIAG_ALGOS], zorder=2)
        ax[k].set_xticks(range(len(DIAG_ALGOS)), list(DIAG_ALGOS.values()))
        ax[k].set_title(f"diagonal nets: {title}", fontsize=10)
    if relu_df is None:
        ax[2].text(
            0.5,
            0.5,
            f"ReLU family not run:\n{RELU_CMD}",
            ha="center",
            va="center",
            transform=ax[2].transAxes,
            fontsize=9,
        )
    else:
        for lab, g in relu_df.groupby("label", sort=False):
            ax[2].scatter(g["kinks"], g["lambda_max"], label=lab, s=18)
        ax[2].set_yscale("log")
        ax[2].legend(fontsize=7)
    ax[2].set(xlabel="kinks", ylabel="exact lambda_max", title="one-hidden-layer ReLU nets (exp 1)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
