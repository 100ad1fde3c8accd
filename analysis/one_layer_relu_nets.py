"""One-hidden-layer ReLU nets: run the three experiments, draw their figures, write the claims.

Reads only run directories (config.json, metrics.jsonl, summary.json, params.json, data.json)
written by ``one_layer_relu_nets.training.train``; ``reproduce`` also launches the runs.
Figures (``figures_dir``):
    one_layer_relu_nets_fits.png          exp 1: fitted functions of GD / n-SAM / 1-SAM, all seeds
    one_layer_relu_nets_simplicity.png    exp 1: kinks, slope TV, path norm, Hessian lambda_max
                                          (SAM runs, GD, and GD stopped at SAM's loss)
    one_layer_relu_nets_over_training.png exp 1: kinks and slope TV over training
    one_layer_relu_nets_teacher.png       exp 2: test loss vs rho (mean +- std over seeds)
    one_layer_relu_nets_convergence.png   exp 3: training loss vs iterations
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from one_layer_relu_nets.experiments import MATCHED, experiment_configs
from one_layer_relu_nets.model import forward
from one_layer_relu_nets.training import (
    Config,
    load_params,
    matched_targets,
    targets_digest,
    train,
)
from suite.claims import ClaimRow, Gap, fmt_mean_std, gap
from suite.launch import DEFAULT_IGNORE, Run, run_all
from suite.profiles import PROFILES as PROFILE_NAMES
from suite.profiles import check_table
from suite.rundir import load_run, read_json
from suite.stage import Experiment, StageContext, run_stage

FAMILY = "one_layer_relu_nets"
PAPER = "Towards Understanding SAM (Andriushchenko & Flammarion 2022)"
ALG_LABEL = {"gd": "GD", "sgd": "SGD", "nsam": "n-SAM", "1sam": "1-SAM", "msam": "m-SAM"}
ALG_COLOR = {
    "gd": "tab:gray",
    "sgd": "tab:brown",
    "nsam": "tab:blue",
    "1sam": "tab:red",
    "msam": "tab:green",
}
MEASURES = ("kinks", "slope_tv", "path_norm", "lambda_max")
LOWER = {
    "kinks": "fewer kinks",
    "slope_tv": "a lower slope TV",
    "lambda_max": "a lower Hessian lambda_max",
}


# ------------------------------------------------------------------------------------ running
def run_dir(results_dir: Path, profile: str, name: str) -> Path:
    return Path(results_dir) / FAMILY / f"{profile}_{name}"


def train_comparison(cfg: Config, resume: bool = False) -> None:
    """``Run.train`` of one comparison (module level, so that ``functools.partial`` of it pickles
    for submitit's worker processes). ``suite.launch`` clears the directory before a fresh start."""
    train(cfg, resume=resume, show_progress=False)


# ``match_losses_of`` names where the base run lies, not what the control computes (that is
# ``match_digest``): a results directory given as a relative or an absolute path is the same run.
MATCHED_IGNORE = (*DEFAULT_IGNORE, "match_losses_of")


def comparison_runs(
    profile: str, results_dir: Path, matched: bool, experiments: tuple[str, ...] | None = None
) -> list[Run]:
    """The ``suite.launch.Run`` of every comparison of ``profile`` (of ``experiments``: "exp1",
    "exp2", "exp3"; default all): the base comparisons (``matched=False``) or their loss-matched
    GD controls (``matched=True``; their bases must be complete: a control's config holds the
    digest of its base's final losses). ``Run.config`` is exactly what ``train`` stores in
    config.json (``dataclasses.asdict``)."""
    runs = []
    configs = experiment_configs(profile)
    for exp in (configs[e] for e in experiments or configs):
        for name, cfg in exp.items():
            if name.endswith(MATCHED) != matched:
                continue
            path = run_dir(results_dir, profile, name)
            cfg = dataclasses.replace(cfg, out_dir=str(path))
            ignore = DEFAULT_IGNORE
            if matched:
                base = run_dir(results_dir, profile, name[: -len(MATCHED)])
                digest = targets_digest(matched_targets(base))
                cfg = dataclasses.replace(cfg, match_losses_of=str(base), match_digest=digest)
                ignore = MATCHED_IGNORE
            fn = functools.partial(train_comparison, cfg)
            runs.append(Run(name, path, dataclasses.asdict(cfg), fn, ignore))
    return runs


def run_experiments(profile: str, results_dir: Path) -> dict[str, Path]:
    """Bring every comparison of ``profile`` to completion through ``suite.launch.run_all`` (it
    skips finished runs of the same config, resumes interrupted ones, retrains changed ones or
    all under ``--force``, and may run them in parallel or on SLURM). Two waves: the base
    comparisons, then the loss-matched controls, which read their bases' final losses.
    Returns {comparison name: run dir}."""
    out = {}
    for matched in (False, True):
        runs = comparison_runs(profile, results_dir, matched)
        run_all(runs, stage=FAMILY)
        out |= {r.name: Path(r.out_dir) for r in runs}
    return out


def detect_profile(results_dir: Path) -> str:
    """The most complete profile present under ``results_dir`` (paper, full, quick, test)."""
    for profile in reversed(PROFILE_NAMES):
        if (run_dir(results_dir, profile, "exp3_decaying") / "summary.json").exists():
            return profile
    raise FileNotFoundError(
        f"no complete {FAMILY} results under {results_dir}: run `make reproduce` (or "
        f"python -m analysis.reproduce --only {FAMILY}) first"
    )


# ------------------------------------------------------------------------------------ loading
def runs_frame(path: str | Path) -> pd.DataFrame:
    """One row per run of a comparison: the summary record, the comparison's directory name and
    ``original_loop`` (its config's ``lr_decay_sam_only``: the reference notebook's loop)."""
    run = load_run(path)
    df = pd.DataFrame(run["summary"]["runs"])
    df["comparison"] = Path(path).name
    df["original_loop"] = bool(run["config"]["config"].get("lr_decay_sam_only", False))
    return df


def history_frame(path: str | Path) -> pd.DataFrame:
    """One row per (run, logged step): run_id, algorithm, step, train_loss, test_loss, and in 1-D
    kinks and slope_tv."""
    run = load_run(path)
    rows = []
    for m in run["metrics"]:
        k = len(m["run_ids"])
        cols = {c: m.get(c) or [None] * k for c in ("test_loss", "kinks", "slope_tv")}
        for j, rid in enumerate(m["run_ids"]):
            rows.append(
                {
                    "run_id": rid,
                    "algorithm": m["algorithm"],
                    "step": m["step"],
                    "train_loss": m["train_loss"][j],
                }
                | {c: v[j] for c, v in cols.items()}
            )
    hist = pd.DataFrame(rows)
    meta = runs_frame(path)[["run_id", "rho", "seed", "normalize", "rho_schedule"]]
    return hist.merge(meta, on="run_id")


# {profile: {experiment: {comparison: Config}}}: one_layer_relu_nets.experiments per profile
PROFILES = check_table({p: experiment_configs(p) for p in PROFILE_NAMES}, FAMILY)
ORIGINAL = " (notebook lr)"  # label suffix of the reference notebook's loop (paper profile)


def label(r: pd.Series) -> str:
    """'GD', 'n-SAM rho 0.3', or 'GD @ n-SAM rho 0.3 loss' (a loss-matched control); with the
    suffix ``ORIGINAL`` for a run of the notebook's loop (lr decayed for SAM only)."""
    tail = ORIGINAL if bool(r.get("original_loop", False)) else ""
    if r.get("matched_algorithm") is not None and not pd.isna(r.get("matched_algorithm")):
        return f"GD @ {ALG_LABEL[r['matched_algorithm']]} rho {r['matched_rho']:g} loss{tail}"
    if r["algorithm"] in ("gd", "sgd"):
        return ALG_LABEL[r["algorithm"]] + tail
    return f"{ALG_LABEL[r['algorithm']]} rho {r['rho']:g}{tail}"


EXP1 = ("exp1_main", "exp1_sweep", "exp1_original")  # the base comparisons of experiment 1


def exp1_frame(results_dir: Path, profile: str) -> pd.DataFrame:
    """Every run of experiment 1 (main, sweep, the notebook's loop and their loss-matched GD
    controls, those the profile has), labelled."""
    frames = []
    for name in (n + suffix for n in EXP1 for suffix in ("", MATCHED)):
        p = run_dir(results_dir, profile, name)
        if (p / "summary.json").exists():
            frames.append(runs_frame(p))
    df = pd.concat(frames, ignore_index=True)
    df["label"] = df.apply(label, axis=1)
    return df


def _mean_std(x: pd.Series) -> str:
    x = x.astype(float)
    return f"{x.mean():.3g} +- {x.std(ddof=1):.2g}"


# ------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_fits(paths: list[Path], out: Path) -> Path:
    """Fitted functions on the 1-D data: a panel per (comparison, algorithm), a line per seed."""
    plt = _plt()
    panels = []
    for p in paths:
        df = runs_frame(p)
        for alg in dict.fromkeys(df["algorithm"]):
            panels.append((p, alg, df[df["algorithm"] == alg]))
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
        ax.set_title(f"{ALG_LABEL[alg]}{rho}\nkinks {_mean_std(df['kinks'])}", fontsize=9)
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
        plot_fits([rd("exp1_main")], figures_dir / f"{FAMILY}_fits.png"),
        plot_simplicity(results_dir, profile, figures_dir / f"{FAMILY}_simplicity.png"),
        plot_over_training(results_dir, profile, figures_dir / f"{FAMILY}_over_training.png"),
        plot_teacher(rd("exp2_teacher"), figures_dir / f"{FAMILY}_teacher.png"),
        plot_convergence(exp3, figures_dir / f"{FAMILY}_convergence.png"),
    ]


# ------------------------------------------------------------------------------------ claims
def _cfg(path: Path) -> dict:
    return read_json(Path(path) / "config.json")["config"]


def _by_seed(df: pd.DataFrame, col: str) -> pd.Series:
    """One value per seed (float), indexed by seed."""
    return df.set_index("seed")[col].astype(float).sort_index()


def _paired(baseline: pd.Series, method: pd.Series) -> Gap:
    """The seed-paired gap (``suite.claims.gap``) of two per-seed series indexed by seed:
    baseline - method over the seeds both have (positive = ``method`` lower)."""
    b, m = baseline.align(method)
    return gap(m.to_numpy(float), b.to_numpy(float), paired=True)


def _row(
    claim: str, paper_value: str, ours: str, stat: Gap, figure: str, note: str, paper: str = PAPER
) -> ClaimRow:
    return ClaimRow(
        paper=paper,
        claim=claim,
        paper_value=paper_value,
        ours=ours,
        stat=stat,
        figure=figure,
        note=note,
    )


def _exp1_rows(results_dir: Path, profile: str) -> list[ClaimRow]:
    df = exp1_frame(results_dir, profile)
    rows = []
    for original in (False, True):
        sub = df[df["original_loop"] == original]
        if len(sub):
            rows += _exp1_loop_rows(results_dir, profile, sub, original)
    return rows


def _exp1_loop_rows(
    results_dir: Path, profile: str, df: pd.DataFrame, original: bool
) -> list[ClaimRow]:
    """Experiment 1's rows for the runs of one lr convention: the same schedule for every
    algorithm (ours), or the notebook's (``original``: lr decayed for SAM only)."""
    fig = f"{FAMILY}_simplicity.png, {FAMILY}_fits.png, {FAMILY}_over_training.png"
    c = _cfg(run_dir(results_dir, profile, "exp1_original" if original else "exp1_main"))
    who = (
        "for SAM only, GD at the constant lr (the notebook's loop)"
        if original
        else ("for every algorithm")
    )
    setting = (
        f"width {c['width']}, reference init, lr {c['lr']:g} {c['lr_schedule']} {who}, "
        f"T = {c['iterations']:.0e}, stop at loss {c['loss_threshold']:g}"
    )
    main = df[~df["label"].str.contains("@")]
    gd = main[main["algorithm"] == "gd"]
    gd_label = gd["label"].iloc[0]
    rows = []
    sam_labels = [lab for lab in dict.fromkeys(main["label"]) if lab != gd_label]
    for lab in sam_labels:
        sam = main[main["label"] == lab]
        alg, rho = sam["algorithm"].iloc[0], float(sam["rho"].iloc[0])
        first = alg == "nsam" and rho == 0.3  # the original's setting: every measure
        for m in ("kinks", "slope_tv", "lambda_max") if first else ("kinks",):
            g = gap(sam[m].astype(float), gd[m].astype(float))
            loss = fmt_mean_std(sam["train_loss"].astype(float), ".2g")
            rows.append(
                _row(
                    f"1-D regression: {lab} fits have {LOWER[m]} than {gd_label}'s",
                    "SAM fits visibly simpler (figure; no numbers)"
                    if m != "lambda_max"
                    else "(not in the notebook: flatness next to the kinks)",
                    f"{gd_label} {fmt_mean_std(gd[m], '.3g')} vs "
                    f"{lab} {fmt_mean_std(sam[m], '.3g')}; "
                    f"final train loss {gd_label} {fmt_mean_std(gd['train_loss'], '.2g')}, {lab} "
                    f"{loss}",
                    g,
                    fig,
                    f"{setting}. Not at equal training loss: see the loss-matched row.",
                    PAPER + ", one_layer_relu_nets notebook",
                )
            )
            matched = df[df["label"] == label_matched(lab, original)]
            if not len(matched):
                continue
            rows.append(
                _row(
                    f"1-D: {lab} fits have {LOWER[m]} than GD stopped at the same training loss "
                    "(seed-paired)",
                    "SAM simpler, not just less fitted (the issue's control)",
                    f"{label_matched(lab, original)} {fmt_mean_std(matched[m], '.3g')} vs {lab} "
                    f"{fmt_mean_std(sam[m], '.3g')}",
                    _paired(_by_seed(matched, m), _by_seed(sam, m)),
                    fig,
                    f"{setting}; GD run until its loss is <= the SAM run's final loss (same seed).",
                    PAPER + ", one_layer_relu_nets notebook",
                )
            )
    return rows


def label_matched(sam_label: str, original: bool) -> str:
    """The label of the loss-matched GD control of the runs labelled ``sam_label``."""
    base = sam_label[: -len(ORIGINAL)] if original else sam_label
    return f"GD @ {base} loss" + (ORIGINAL if original else "")


def _exp2_rows(results_dir: Path, profile: str) -> list[ClaimRow]:
    path = run_dir(results_dir, profile, "exp2_teacher")
    t = runs_frame(path)
    c = _cfg(path)
    gd = t[t["algorithm"] == "gd"]
    chosen = {}
    for alg in ("nsam", "1sam"):
        sub = t[t["algorithm"] == alg]
        rho = float(sub.groupby("rho")["val_loss"].mean().idxmin())
        chosen[alg] = sub[sub["rho"] == rho]
    note = (
        f"d = {c['d']}, {c['teacher_width']} teacher neurons, width {c['width']}, n = "
        f"{c['n_train']}, lr {c['lr']:g}, T = {c['iterations']}; rho chosen per algorithm on "
        f"{c['n_val']} validation points among {c['rhos']}"
    )
    rows = []
    for alg, base, base_name in (
        ("1sam", gd, "GD"),
        ("nsam", gd, "GD"),
        ("1sam", chosen["nsam"], "n-SAM"),
    ):
        sam = chosen[alg]
        rho = float(sam["rho"].iloc[0])
        rows.append(
            _row(
                f"teacher-student ReLU net: {ALG_LABEL[alg]} lowers the test loss vs {base_name} "
                "(seed-paired)",
                "diagonal nets (PAPERS.md#diagonal-nets): "
                "1-SAM test loss far below GD's, n-SAM ~ GD; "
                "no ReLU numbers in the paper",
                f"test loss {base_name} {fmt_mean_std(base['test_loss'], '.3g')}, "
                f"{ALG_LABEL[alg]} (rho {rho:g}) {fmt_mean_std(sam['test_loss'], '.3g')}; train "
                f"loss {fmt_mean_std(base['train_loss'], '.2g')} vs "
                f"{fmt_mean_std(sam['train_loss'], '.2g')}",
                _paired(_by_seed(base, "test_loss"), _by_seed(sam, "test_loss")),
                f"{FAMILY}_teacher.png",
                note,
            )
        )
    return rows


def _log_tail(df: pd.DataFrame) -> pd.Series:
    return np.log10(_by_seed(df, "tail_median"))


def _exp3_rows(results_dir: Path, profile: str) -> list[ClaimRow]:
    u, nz, dc = (
        runs_frame(run_dir(results_dir, profile, n))
        for n in ("exp3_unnormalized", "exp3_normalized", "exp3_decaying")
    )
    fig = f"{FAMILY}_convergence.png"
    note = (
        "teacher-student task of exp 2; convergence judged on the tail: median training loss "
        "and log-log slope over the last 10% of the steps (gaps in log10 of the median)"
    )
    gd = u[u["algorithm"] == "gd"]
    rows = []
    sam_u = u[u["algorithm"] != "gd"]
    slopes = sam_u["tail_slope"].astype(float)
    rows.append(
        _row(
            "unnormalized SAM with a constant rho keeps converging (tail slope < 0), like GD",
            "convergence theorem for unnormalized SAM with rho = O(1/L)",
            f"tail slope d log L / d log t: GD {fmt_mean_std(gd['tail_slope'], '.2f')}, "
            f"n-SAM/1-SAM rho {sorted(sam_u['rho'].unique().tolist())} "
            f"{fmt_mean_std(slopes, '.2f').replace('seeds', 'runs')}; tail median GD "
            f"{fmt_mean_std(gd['tail_median'], '.2g')}, SAM "
            f"{fmt_mean_std(sam_u['tail_median'], '.2g').replace('seeds', 'runs')}",
            gap(slopes, 0.0),
            fig,
            note + "; gap = minus the mean slope over the SAM runs",
        )
    )
    for alg in ("nsam", "1sam"):
        a = nz[nz["algorithm"] == alg]
        hi, lo = a[a["rho"] == a["rho"].max()], a[a["rho"] == a["rho"].min()]
        g = gap(_log_tail(hi), _log_tail(gd), lower_is_better=False)
        rows.append(
            _row(
                f"normalized {ALG_LABEL[alg]} with constant rho "
                f"{hi['rho'].iloc[0]:g} stalls above GD",
                "normalized SAM with constant rho need not converge",
                f"tail median GD {fmt_mean_std(gd['tail_median'], '.2g')}, {ALG_LABEL[alg]} "
                f"{fmt_mean_std(hi['tail_median'], '.2g')} (slope "
                f"{fmt_mean_std(hi['tail_slope'], '.2f')})",
                g,
                fig,
                note,
            )
        )
        g = gap(_log_tail(lo), _log_tail(hi))
        rows.append(
            _row(
                f"normalized {ALG_LABEL[alg]}: the stall level grows with rho "
                f"({lo['rho'].iloc[0]:g} vs {hi['rho'].iloc[0]:g})",
                "the stationary level of normalized SAM scales with rho",
                f"tail median rho {lo['rho'].iloc[0]:g}: {fmt_mean_std(lo['tail_median'], '.2g')}; "
                f"rho {hi['rho'].iloc[0]:g}: {fmt_mean_std(hi['tail_median'], '.2g')}",
                g,
                fig,
                note,
            )
        )
        d = dc[dc["algorithm"] == alg]
        rho = float(d["rho"].iloc[0])
        const = a[a["rho"] == rho]
        g = gap(_log_tail(d), _log_tail(const))
        rows.append(
            _row(
                f"normalized {ALG_LABEL[alg]} with rho_t = {rho:g}/sqrt(1+t) "
                "converges further than "
                "with the constant rho",
                "convergence with a decaying rho",
                f"tail median decaying {fmt_mean_std(d['tail_median'], '.2g')} vs constant "
                f"{fmt_mean_std(const['tail_median'], '.2g')}",
                g,
                fig,
                note,
            )
        )
    return rows


def claims_rows(results_dir: Path, profile: str = "quick") -> list[dict]:
    """The claims table in the suite's columns; every verdict from ``suite.claims`` on a gap
    with its seed spread (``gap``, seed-paired where the runs are paired)."""
    rows = [
        *_exp1_rows(results_dir, profile),
        *_exp2_rows(results_dir, profile),
        *_exp3_rows(results_dir, profile),
    ]
    return [r.cells(FAMILY, profile) for r in rows]


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
        f"Fitted functions f(x) of {algs} at rho 0.3 (one panel each), one line per seed, "
        f"dots = the data; {_one_d(ctx)}."
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


# --------------------------------------------------------------------------------- the stage
def _comparisons(exp: str, matched: bool = False) -> Callable[[StageContext], list[Run]]:
    """``Experiment.runs``: the comparisons of experiment ``exp`` (or their matched controls)."""
    return lambda ctx: comparison_runs(ctx.profile, ctx.results_dir, matched, (exp,))


def _fits(ctx: StageContext) -> list[ClaimRow]:
    plot_fits(
        [run_dir(ctx.results_dir, ctx.profile, "exp1_main")], ctx.figure(f"{FAMILY}_fits.png")
    )
    return []


def _simplicity(ctx: StageContext) -> list[ClaimRow]:
    plot_simplicity(ctx.results_dir, ctx.profile, ctx.figure(f"{FAMILY}_simplicity.png"))
    return _exp1_rows(ctx.results_dir, ctx.profile)


def _over_training(ctx: StageContext) -> list[ClaimRow]:
    plot_over_training(ctx.results_dir, ctx.profile, ctx.figure(f"{FAMILY}_over_training.png"))
    return []


def _teacher(ctx: StageContext) -> list[ClaimRow]:
    plot_teacher(
        run_dir(ctx.results_dir, ctx.profile, "exp2_teacher"), ctx.figure(f"{FAMILY}_teacher.png")
    )
    return _exp2_rows(ctx.results_dir, ctx.profile)


def _convergence(ctx: StageContext) -> list[ClaimRow]:
    names = ("exp3_unnormalized", "exp3_normalized", "exp3_decaying")
    plot_convergence(
        [run_dir(ctx.results_dir, ctx.profile, n) for n in names],
        ctx.figure(f"{FAMILY}_convergence.png"),
    )
    return _exp3_rows(ctx.results_dir, ctx.profile)


# The loss-matched GD controls read their bases' final losses: they are built in wave 1.
EXPERIMENTS = [
    Experiment(
        "fits",
        f"{FAMILY}_fits.png",
        _comparisons("exp1"),
        _fits,
        shows=_fits_shows,
        reading="SAM's fits have fewer kinks than GD's: the notebook's figure (kinks mean +- std "
        "in each panel title).",
    ),
    Experiment(
        "simplicity",
        f"{FAMILY}_simplicity.png",
        _comparisons("exp1", matched=True),
        _simplicity,
        wave=1,
        key=True,
        shows=_simplicity_shows,
        reading="SAM's fits are simpler and flatter than GD's, also than GD at the same training "
        "loss (the claims rows 'fits have fewer kinks' and their loss-matched rows).",
    ),
    Experiment(
        "over_training",
        f"{FAMILY}_over_training.png",
        _comparisons("exp1"),
        _over_training,
        shows=lambda ctx: (
            "Kinks and slope TV of the fitted function vs iteration (log x), mean over seeds, GD "
            f"and each SAM at each rho; {_one_d(ctx)}."
        ),
        reading="When SAM's fit simplifies (its kinks fall below GD's ~50): late in training, "
        "which is why a short budget shows no difference.",
    ),
    Experiment(
        "teacher",
        f"{FAMILY}_teacher.png",
        _comparisons("exp2"),
        _teacher,
        shows=_teacher_shows,
        reading="Whether SAM (1-SAM above all) lowers the test loss below GD's, as it does in "
        "diagonal nets (claims rows 'teacher-student'; rho chosen on validation there).",
    ),
    Experiment(
        "convergence",
        f"{FAMILY}_convergence.png",
        _comparisons("exp3"),
        _convergence,
        shows=_convergence_shows,
        reading="Unnormalized SAM converges like GD; normalized SAM stalls at a level that grows "
        "with rho; a decaying rho converges (the convergence claims rows).",
    ),
]


def _has(results_dir: Path, profile: str, name: str) -> bool:
    return (run_dir(results_dir, profile, name) / "summary.json").exists()


def _seeds(cfg: dict) -> str:
    s = cfg["seeds"]
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 1 else str(s)


def reproduce(profile: str, results_dir: Path, figures_dir: Path) -> list[dict]:
    """Run the comparisons of ``profile`` (see ``one_layer_relu_nets.experiments``) through
    ``suite.stage.run_stage``: the runs, the figures and their captions, claims.csv."""
    return run_stage(FAMILY, EXPERIMENTS, PROFILES, profile, results_dir, figures_dir)
