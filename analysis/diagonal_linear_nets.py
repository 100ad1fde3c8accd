"""Diagonal linear networks (PAPERS.md#diagonal-nets): the original notebook's experiments at its
own settings, the paper's Fig. 6, the theory check; figures and the claims table.

``reproduce(profile, results_dir, figures_dir)`` hands one ``suite.launch.Run`` per experiment
(run directories under ``results/diagonal_linear_nets/<exp>/``) to ``suite.launch.run_all``: a
run finished with the same config is skipped, an interrupted one resumes from its checkpoint,
``--force`` retrains. Then ``make_figures``, ``caption_figures`` and ``claims`` read those run
directories only (the notebook calls the same functions). Data: the original notebook's (numpy
seed 0: n = 20, d = 30, sparsity 3, n_test = 1000). Iterations: the notebook's num_iter =
10^4 + 1 (``N``). rho is given in the original code's convention (``rho_convention="original"``:
1-SAM's suite rho is twice it).

Profiles (``PROFILES``). These settings are CPU-feasible, so every profile but test runs the
paper's and the notebook's own settings (no shortened runs):
- test: quick at 0.2% of the iterations (seconds, for the tests).
- quick: every experiment below, Fig. 6 at 10^6 iterations on the paper's one data set (seed 0),
  the theory check at gamma 1/2 .. 1/60 (~1-2 minutes on one core).
- paper: quick + the theory check at gamma 1/200 (10^6 iterations), the smallest step, where the
  paper's "within 0.1%" is checked best.
- full: paper + Fig. 6 on four more data sets (seeds 1-4; ours, not the paper's: the spread over
  data; the claims compare seed 0, the paper's data).

Experiments:
- cell_nsam   notebook cell 1: gamma 5/d, alpha 0.1: GD + n-SAM rho 0.01..1.0.
- cell_1sam   notebook cell 2: gamma 5/d, alpha 0.02: GD + 1-SAM rho 0.01..0.3.
- curves      notebook cell 3: gamma 10/d, alpha 0.1: GD, SGD (b = 1, gamma 10/(3d), the
              notebook's numpy stream), 1-SAM rho 0.03..0.3.
- grid        notebook cell 4 (Fig. 5): GD and 1-SAM at gamma 15/d, n-SAM at 10/d (the
              notebook passes its leftover ``gamma_sgd`` = 10/d to n-SAM), rho 0.001..0.9.
- grid_uniform the same n-SAM grid at gamma 15/d (ours, not in the original: one step size).
- switch_erm_sam, switch_sam_erm, erm_N   notebook cell 5: gamma 1/d; ERM for 2N steps; ERM for
              N then 1-SAM rho 10 for N; 1-SAM rho 0.175 for N then ERM for N; ERM for N (the
              start of the interpolation of cell 7, t in [-1, 2]).
- fig6        the paper's Fig. 6 at the setting chosen by the documented search (``FIG6``,
              README): 10^6 iterations.
- theory_g*   theory vs simulation at rho 0.1 for the profile's gammas (gamma x iterations
              fixed), with the flow's alpha_inf.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diagonal_linear_nets.simulator import make_problem
from diagonal_linear_nets.train import TrainConfig, initial_loss, stored_config, train
from suite.claims import ClaimRow, compare_to_paper, fmt_mean_std, gap
from suite.launch import Outcome, Run, run_all
from suite.profiles import check_table, settings
from suite.rundir import atomic_write_json, load_run
from suite.stage import Experiment, StageContext, run_stage

FAMILY = "diagonal_linear_nets"
PAPER = "Towards Understanding SAM (Andriushchenko & Flammarion 2022)"
D = 30
N = 10_001  # the notebook's num_iter = 10^4 + 1
GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.9]
# The original notebook's printed test losses (PAPERS.md#diagonal-notebook), in the order of the
# runs of each experiment below (None: the notebook prints nan, the run diverges).
NOTEBOOK = {
    "cell_nsam": [
        0.015056044189449159,
        0.015143589149560101,
        0.01532189739609112,
        0.01598195225147282,
        0.018241642036376265,
        0.03606494489010675,
    ],
    "cell_1sam": [
        0.0006337885714222886,
        0.0004663830742908966,
        0.00023853572282255735,
        1.5396958089444108e-05,
        0.024183218285324055,
    ],
    "curves": [
        0.015747762611708224,
        0.009127933293039658,
        0.0015235412218010903,
        0.00025260386614471894,
        1.5622244035909675e-05,
        1.316634050881677e-08,
        0.00917508147156238,
    ],
    "grid": [
        0.016445781003091926,
        0.015756677115280553,
        0.015774538224235406,
        0.01583739124793595,
        0.016019930687941112,
        0.016695513663723727,
        0.019007119935097728,
        0.032812027137658364,
        0.016174901502986682,
        0.015641003537756094,
        0.013855445463941646,
        0.009469059057662111,
        0.0015339774886805526,
        6.350068450874803e-09,
        None,
    ],
}
# cell 5: (ERM 2N, ERM N, ERM N -> 1-SAM N, 1-SAM N, 1-SAM N -> ERM N)
NOTEBOOK_SWITCH = (
    0.014602323023706629,
    0.014865600195083558,
    0.00014269229669575567,
    0.0001245758657536336,
    9.834845199886545e-05,
)
NOTEBOOK_TOL = 1e-6  # relative: the simulator is exact; the rest is float64 rounding
# A run stuck far from interpolation (final train loss > STUCK x its initial loss: cell 2's
# 1-SAM rho 0.3 wanders near a saddle) amplifies rounding differences: its final value is
# compared at this looser relative tolerance.
STUCK = 1e-2
STUCK_TOL = 0.1
# Paper Fig. 6 (read off a log-scale figure, approx.)
PAPER_FIG6 = {"gd": 1.2e-3, "nsam": 1.2e-3, "1sam": 1.6e-4}
PAPER_FIG6_TRAIN = {"gd": 1e-24, "nsam": 1e-24, "1sam": 1e-13}
FIG6_TOL = 0.25  # relative, for numbers read off a log-scale plot
FIG6_TRAIN_DECADES = 2.0  # |log10(ours / paper)| for train losses read off a 30-decade axis
# The Fig. 6 setting chosen by the search documented in diagonal_linear_nets/README.md.
FIG6 = {"alpha": 0.03, "gamma": 5 / D, "rho": 0.07}
THEORY_TIME = 5000.0  # gamma x iterations: every gamma run to the same flow time
THEORY_TOL = 1e-3  # the paper: "within 0.1%"
BARRIER_TOL = 1e-2  # a barrier below 1% of the initial loss counts as "no barrier"
# Per profile (module docstring): the theory check's step sizes; the data seeds of Fig. 6 (the
# paper's Fig. 6 is one data set, the notebook's seed 0; "full" adds four more, ours); the
# fraction of every experiment's iterations run (1: the notebook's and the paper's own; test:
# quick at 0.2% of the iterations, seconds).
PROFILES = check_table(
    {
        "test": dict(theory_gammas=[1 / 2, 1 / 6, 1 / 20, 1 / 60], fig6_seeds=[0], scale=0.002),
        "quick": dict(theory_gammas=[1 / 2, 1 / 6, 1 / 20, 1 / 60], fig6_seeds=[0], scale=1.0),
        "full": dict(
            theory_gammas=[1 / 2, 1 / 6, 1 / 20, 1 / 60, 1 / 200],
            fig6_seeds=[0, 1, 2, 3, 4],
            scale=1.0,
        ),
        "paper": dict(
            theory_gammas=[1 / 2, 1 / 6, 1 / 20, 1 / 60, 1 / 200], fig6_seeds=[0], scale=1.0
        ),
    },
    FAMILY,
)


def _cfg(root: Path, name: str, iters: int, **kw) -> TrainConfig:
    kw.setdefault("alpha", [0.1])
    kw.setdefault("seeds", [0])
    return TrainConfig(out_dir=str(root / name), iters=iters, rho_convention="original", **kw)


def experiment_configs(
    profile: str, root: Path, scale: float | None = None
) -> dict[str, TrainConfig]:
    """Every experiment's config (module docstring); ``scale`` (default: the profile's) < 1
    shrinks the iterations (tests)."""
    P = settings(PROFILES, profile)
    scale = P["scale"] if scale is None else scale

    def it(x: float) -> int:
        return max(int(x * scale), 10)

    n, n2 = it(N), 2 * it(N)
    out = {
        "cell_nsam": _cfg(
            root, "cell_nsam", n, algo=["gd", "nsam"], gamma=5 / D, rho=[0.01, 0.03, 0.1, 0.3, 1.0]
        ),
        "cell_1sam": _cfg(
            root,
            "cell_1sam",
            n,
            algo=["gd", "1sam"],
            gamma=5 / D,
            alpha=[0.02],
            rho=[0.01, 0.03, 0.1, 0.3],
        ),
        "curves": _cfg(
            root,
            "curves",
            n,
            algo=["gd", "1sam", "sgd"],
            gamma=10 / D,
            gamma_per_algo={"sgd": 10 / D / 3},
            rho=[0.03, 0.1, 0.15, 0.2, 0.3],
            sgd_skip=5 * N,
        ),
        "grid": _cfg(
            root,
            "grid",
            n,
            algo=["gd", "nsam", "1sam"],
            gamma=15 / D,
            gamma_per_algo={"nsam": 10 / D},
            rho=GRID,
        ),
        "grid_uniform": _cfg(root, "grid_uniform", n, algo=["nsam"], gamma=15 / D, rho=GRID),
        "switch_erm_sam": _cfg(
            root,
            "switch_erm_sam",
            n2,
            algo=["gd", "1sam"],
            gamma=1 / D,
            rho=[10.0],
            switch="erm_to_sam",
            switch_at=n,
        ),
        "switch_sam_erm": _cfg(
            root,
            "switch_sam_erm",
            n2,
            algo=["1sam"],
            gamma=1 / D,
            rho=[0.175],
            switch="sam_to_erm",
            switch_at=n,
        ),
        "erm_N": _cfg(root, "erm_N", n, algo=["gd"], gamma=1 / D),
        "fig6": _cfg(
            root,
            "fig6",
            it(1_000_000),
            algo=["gd", "nsam", "1sam"],
            gamma=FIG6["gamma"],
            alpha=[FIG6["alpha"]],
            rho=[FIG6["rho"]],
            seeds=P["fig6_seeds"],
        ),
    }
    for g in P["theory_gammas"]:
        name = f"theory_g{round(1 / g)}"
        out[name] = _cfg(
            root,
            name,
            it(THEORY_TIME / g),
            algo=["gd", "nsam", "1sam"],
            gamma=g,
            rho=[0.1],
            theory=True,
        )
    return out


def fig6_score(test: dict[str, float]) -> float:
    """The search's criterion: sum over ERM, n-SAM, 1-SAM of |log10(test plateau / paper's)|."""
    return float(sum(abs(math.log10(test[a] / PAPER_FIG6[a])) for a in PAPER_FIG6))


def fig6_search(
    alphas=(0.025, 0.03, 0.035, 0.04),
    gammas=(5 / D, 10 / D),
    rhos=(0.03, 0.05, 0.07, 0.1),
    n: int = 20,
    d: int = D,
    sparsity: int = 3,
    iters: int = 1_000_000,
) -> list[dict]:
    """The documented search for the Fig. 6 setting (README): every (alpha, gamma, rho) on seed
    0's data, test and train loss after ``iters`` steps, sorted by ``fig6_score``. Not part of
    ``reproduce`` (minutes); rho in the original convention, shared by n-SAM and 1-SAM."""
    from diagonal_linear_nets.simulator import RunSpec, SimConfig, simulate

    runs, keys = [], []
    for a in alphas:
        for g in gammas:
            runs.append(RunSpec("gd", alpha=a, gamma=g))
            keys.append((a, g, None, "gd"))
            for r in rhos:
                runs += [RunSpec("nsam", rho=r, alpha=a, gamma=g)]
                runs += [RunSpec("1sam", rho=2 * r, alpha=a, gamma=g)]
                keys += [(a, g, r, "nsam"), (a, g, r, "1sam")]
    res = simulate(runs, SimConfig(n=n, d=d, sparsity=sparsity, iters=iters), [iters])
    got = {k: (res.test_loss[i, -1], res.train_loss[i, -1]) for i, k in enumerate(keys)}
    out = []
    for a in alphas:
        for g in gammas:
            for r in rhos:
                te = {"gd": got[a, g, None, "gd"][0]}
                te |= {x: got[a, g, r, x][0] for x in ("nsam", "1sam")}
                tr = {"gd": got[a, g, None, "gd"][1]}
                tr |= {x: got[a, g, r, x][1] for x in ("nsam", "1sam")}
                out.append(
                    {
                        "alpha": a,
                        "gamma": g,
                        "rho": r,
                        "score": fig6_score(te),
                        "test": te,
                        "train": tr,
                    }
                )
    return sorted(out, key=lambda x: x["score"])


def train_experiment(cfg: TrainConfig, resume: bool = False) -> Path:
    """``Run.train`` of one experiment: its grid, continued from its checkpoint with ``resume``
    (module-level with a dataclass argument, so a ``functools.partial`` of it pickles for
    worker processes and submitit jobs)."""
    return train(dataclasses.replace(cfg, resume=resume, overwrite=False))


def experiment_runs(profile: str, results_dir: Path, scale: float | None = None) -> list[Run]:
    """One ``suite.launch.Run`` per experiment; its config is what the trainer stores in
    config.json, so a finished run with the same settings is skipped on the next call."""
    root = Path(results_dir) / FAMILY
    return [
        Run(name, Path(cfg.out_dir), stored_config(cfg), functools.partial(train_experiment, cfg))
        for name, cfg in experiment_configs(profile, root, scale).items()
    ]


def run_experiments(profile: str, results_dir: Path, scale: float | None = None) -> list[Outcome]:
    """Bring every experiment's run directory to completion through ``suite.launch.run_all``
    (skipped when finished with the same config, resumed when interrupted, ``--force``
    retrains; the launcher and the progress display are ``make reproduce``'s)."""
    return run_all(experiment_runs(profile, results_dir, scale), stage=FAMILY)


# ------------------------------------------------------------------------------------- reading
def load_experiment(results_dir: Path, name: str) -> dict:
    """{"config", "summary", "series": {run index: {"iter", "train_loss", "test_loss", "l1"}}}."""
    path = Path(results_dir) / FAMILY / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"no {FAMILY} results at {path}: run `make reproduce` (or "
            f"`python -m analysis.reproduce --only {FAMILY}`) first"
        )
    run = load_run(path)
    series: dict[int, dict[str, list]] = {}
    for row in run["metrics"]:
        s = series.setdefault(row["run"], {"iter": [], "train_loss": [], "test_loss": [], "l1": []})
        for k in s:
            v = row[k]
            s[k].append(np.nan if v is None else v)
    return {"config": run["config"], "summary": run["summary"], "series": series}


def _runs(results_dir: Path, name: str) -> list[dict]:
    return load_experiment(results_dir, name)["summary"]["runs"]


def _loss(r: dict) -> float:
    """Final test loss; NaN for a diverged run."""
    v = r["final_test_loss"]
    return np.nan if v is None or r["status"] == "diverged" else v


def _at(results_dir: Path, name: str, run: int, t: int, key: str = "test_loss") -> float:
    s = load_experiment(results_dir, name)["series"][run]
    return float(s[key][s["iter"].index(t)])


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
            _curve(ax, e["series"][i], key, label=f"{r['label']} (gamma {r['gamma']:.3g})")
    for ax, key in zip(axes, ["train loss", "test loss"], strict=True):
        ax.set(xscale="log", yscale="log", xlabel="iteration", ylabel=key)
    axes[1].legend(fontsize=7)
    fig.suptitle("Notebook cell 3 (gamma 10/d, alpha 0.1); rho in the suite's convention")
    return _save(fig, figures_dir, "curves")


def grid_table(results_dir: Path) -> dict:
    """The notebook's grid (Fig. 5): GD, n-SAM (at 10/d and at 15/d) and 1-SAM test losses."""
    g = _runs(results_dir, "grid")
    return {
        "rho_orig": GRID,
        "gd": next(r for r in g if r["algo"] == "gd"),
        "nsam": [r for r in g if r["algo"] == "nsam"],
        "1sam": [r for r in g if r["algo"] == "1sam"],
        "nsam_uniform": _runs(results_dir, "grid_uniform"),
    }


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


def interpolation(results_dir: Path, points: int = 100) -> dict:
    """The notebook's cell 7: losses along (u, v)(t) = (1 - t) (u, v)_{ERM->1-SAM} +
    t (u, v)_{ERM at N}, t in [-1, 2] (t = 0: the ERM -> 1-SAM endpoint, t = 1: ERM)."""
    a = next(r for r in _runs(results_dir, "switch_erm_sam") if r["algo"] == "1sam")
    b = _runs(results_dir, "erm_N")[0]
    P = make_problem(seed=0)
    X, y, Xt, yt = (t.numpy() for t in (P.X, P.y, P.X_test, P.y_test))
    ts = np.linspace(-1, 2, points)
    tr, te = [], []
    for t in ts:
        u = (1 - t) * np.asarray(a["u"]) + t * np.asarray(b["u"])
        v = (1 - t) * np.asarray(a["v"]) + t * np.asarray(b["v"])
        tr.append(0.5 * np.mean((X @ (u * v) - y) ** 2))
        te.append(0.5 * np.mean((Xt @ (u * v) - yt) ** 2))
    return {"t": ts.tolist(), "train_loss": tr, "test_loss": te, "loss0": initial_loss(y)}


def barrier(results_dir: Path) -> float:
    """max over t in [0, 1] of the train loss minus the larger endpoint's, divided by the
    initial loss ||y||^2 / (2n) (the problem's loss scale; ratios of ~1e-11 endpoint losses are
    ill-posed)."""
    ip = interpolation(results_dir, points=301)
    t = np.asarray(ip["t"])
    tr = np.asarray(ip["train_loss"])
    inside = tr[(t >= 0) & (t <= 1)]
    ends = max(inside[0], inside[-1])
    return float((inside.max() - ends) / ip["loss0"])


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
            lab = r["label"] if r["seed"] == 0 else None
            _curve(ax, e["series"][i], k, label=lab, color=colors[r["algo"]], alpha=0.8)
    for algo, p in PAPER_FIG6.items():
        axes[1].axhline(p, color=colors[algo], ls=":", lw=1)
    for ax, k in zip(axes, ["train loss", "test loss"], strict=True):
        ax.set(xscale="log", yscale="log", xlabel="iteration", ylabel=k)
        ax.legend()
    c = e["config"]["config"]
    fig.suptitle(
        f"Fig. 6 at alpha {c['alpha'][0]:g}, gamma {c['gamma']:.3g}, rho {c['rho'][0]:g} "
        f"(original convention), {c['iters']} iterations; dotted: the paper's plateaus"
    )
    return _save(fig, figures_dir, "fig6")


def theory_table(results_dir: Path) -> list[dict]:
    """Per gamma and algorithm: relative distance of the simulated solution to the flow
    prediction (only for runs that interpolated), alpha_inf's geometric mean."""
    out = []
    for p in sorted((Path(results_dir) / FAMILY).glob("theory_g*")):
        for r in _runs(results_dir, p.name):
            out.append(
                {
                    "gamma": r["gamma"],
                    "algo": r["algo"],
                    "status": r["status"],
                    "rel_dist": r.get("rel_dist_pred"),
                    "alpha_gm": float(np.exp(np.mean(np.log(r["alpha_inf_flow"])))),
                    "l1": r["final_l1"],
                    "l1_pred": r.get("l1_pred"),
                }
            )
    return out


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
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log axis
    ax.axhline(THEORY_TOL, color="gray", ls=":", label="0.1% (the paper)")
    ax.axvline(1 / 60, color="gray", ls="--", lw=0.8)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step size gamma",
        ylabel="||beta - beta_pred|| / ||beta_pred||",
        title="simulation vs flow prediction (rho 0.1): -> 0 as gamma -> 0",
    )
    ax.legend()
    return _save(fig, figures_dir, "theory")


def make_figures(results_dir: str | Path, figures_dir: str | Path) -> list[Path]:
    r, f = Path(results_dir), Path(figures_dir)
    return [fig_curves(r, f), fig_grid(r, f), fig_switch(r, f), fig_fig6(r, f), fig_theory(r, f)]


# -------------------------------------------------------------------------------------- claims
def _g(x: float | None) -> str:
    return "diverged" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _stuck(r: dict) -> bool:
    tr = r["final_train_loss"]
    return r["status"] == "no convergence" and tr > STUCK * r["initial_train_loss"]


def notebook_gap(
    ours: list[float | None], paper: list[float | None], stuck: list[bool] | None = None
) -> tuple[float, float]:
    """The worst ``compare_to_paper`` gap over a list of the notebook's printed values at
    ``NOTEBOOK_TOL`` (``STUCK_TOL`` for runs stuck far from interpolation); a printed nan must be
    a diverged run of ours (and vice versa)."""
    gaps = []
    stuck = stuck or [False] * len(ours)
    for o, p, st in zip(ours, paper, stuck, strict=True):
        o_div = o is None or not np.isfinite(o)
        tol = STUCK_TOL if st else NOTEBOOK_TOL
        if p is None or o_div:
            gaps.append(tol if (p is None and o_div) else -1.0)
        else:
            gaps.append(compare_to_paper(o, p, rel_tol=tol)[0])
    return min(gaps), 0.0


def _losses(runs: list[dict]) -> list[float | None]:
    return [None if r["status"] == "diverged" else r["final_test_loss"] for r in runs]


def _row(
    where: str,
    claim: str,
    paper_value: str,
    ours: str,
    gap_se: tuple[float, float],
    figure: str,
    note: str = "",
) -> ClaimRow:
    """A row of this family: deterministic runs, so ``gap_se`` is (gap, 0) or a tolerance's."""
    g, se = gap_se
    return ClaimRow(
        paper=f"{PAPER}, {where}",
        claim=claim,
        paper_value=paper_value,
        ours=ours,
        stat=gap(g, se=se),
        figure=f"figures/{FAMILY}_{figure}.png",
        note=note,
    )


TOL_NOTE = f"tolerance {NOTEBOOK_TOL:g} relative; gap = tolerance - worst relative deviation"
CELLS = {
    "cell_nsam": ("notebook cell 1", "n-SAM gets worse with rho (gamma 5/d)"),
    "cell_1sam": ("notebook cell 2", "1-SAM improves with rho up to 0.1 (gamma 5/d, alpha 0.02)"),
    "curves": ("notebook cell 3", "1-SAM improves with rho; SGD beats GD (gamma 10/d)"),
    "grid": (
        "Fig. 5 / notebook cell 4",
        "the rho grid: n-SAM ~ ERM, 1-SAM much better, diverges at 0.9",
    ),
}


def notebook_rows(results_dir: Path, names: list[str]) -> list[ClaimRow]:
    """Each run's final test loss against the notebook's printed value, one row per cell."""
    rows = []
    for name in names:
        where, claim = CELLS[name]
        runs = _runs(results_dir, name)
        ours = _losses(runs)
        note = TOL_NOTE
        stuck = [r["label"] for r in runs if _stuck(r)]
        if stuck:
            note += (
                f"; runs stuck far from interpolation ({', '.join(stuck)}: train loss > "
                f"{STUCK:g} x initial, rounding-sensitive near a saddle) at {STUCK_TOL:g}; "
                "the PyTorch engine happens to land on the notebook's value"
            )
        if name == "grid":
            note += (
                "; n-SAM at gamma 10/d as the original (its leftover gamma_sgd), GD and "
                "1-SAM at 15/d"
            )
        if name == "curves":
            note += "; SGD at gamma 10/(3d) from the notebook's numpy stream"
        rows.append(
            _row(
                where,
                f"{claim}: the notebook's printed test losses",
                ", ".join(_g(p) for p in NOTEBOOK[name]),
                ", ".join(_g(o) for o in ours),
                notebook_gap(ours, NOTEBOOK[name], [_stuck(r) for r in runs]),
                "rho_grid" if name == "grid" else "curves",
                note,
            )
        )
    return rows


def curves_rows(results_dir: Path) -> list[ClaimRow]:
    return notebook_rows(results_dir, ["cell_nsam", "cell_1sam", "curves"])


def grid_rows(results_dir: Path) -> list[ClaimRow]:
    rows = notebook_rows(results_dir, ["grid"])
    g = grid_table(results_dir)
    best1 = np.nanmin([_loss(r) for r in g["1sam"]])
    for key, lab in (("nsam", "gamma 10/d as the original"), ("nsam_uniform", "gamma 15/d")):
        bestn = np.nanmin([_loss(r) for r in g[key]])
        rows.append(
            _row(
                "Fig. 5",
                f"1-SAM's best test loss is far below n-SAM's (n-SAM at {lab})",
                "1-SAM 6.35e-9 vs n-SAM 0.0158 (notebook)",
                f"1-SAM {best1:.3g} vs n-SAM {bestn:.3g}",
                (math.log10(bestn / best1), 0.0),
                "rho_grid",
                "gap = log10(n-SAM best / 1-SAM best), one data set (deterministic, se 0)"
                + (
                    ""
                    if key == "nsam"
                    else "; ours: n-SAM at GD's step size, not run by the original"
                ),
            )
        )
    return rows


def switch_rows(results_dir: Path) -> list[ClaimRow]:
    sw = _runs(results_dir, "switch_erm_sam")
    se_ = _runs(results_dir, "switch_sam_erm")[0]
    erm = next(i for i, r in enumerate(sw) if r["algo"] == "gd")
    n = sw[0]["switch_at"]
    ours = [
        sw[erm]["final_test_loss"],
        _at(results_dir, "switch_erm_sam", erm, n),
        next(r for r in sw if r["algo"] == "1sam")["final_test_loss"],
        _at(results_dir, "switch_sam_erm", 0, n),
        se_["final_test_loss"],
    ]
    b = barrier(results_dir)
    return [
        _row(
            "Fig. 8 (diagonal nets) / notebook cell 5",
            "ERM -> 1-SAM (rho 10) at 10^4+1 of 2(10^4+1) steps drops the test loss ~100x; "
            "1-SAM (rho 0.175) -> ERM keeps its gain",
            "ERM 2N 0.0146, ERM N 0.01487 -> 1-SAM 1.427e-4; 1-SAM N 1.246e-4 -> ERM 9.835e-5",
            ", ".join(_g(o) for o in ours),
            notebook_gap(ours, list(NOTEBOOK_SWITCH)),
            "switch",
            TOL_NOTE + "; gamma 1/d; the notebook labels the ERM -> 1-SAM print 'rho=0.9' (a "
            "stale variable): it runs rho 10",
        ),
        _row(
            "Fig. 8 (interpolation, notebook cell 7)",
            "the ERM -> 1-SAM solution stays in the ERM basin: no loss barrier on the linear path",
            "no barrier (plot)",
            f"barrier {b:.3g} x initial loss",
            (BARRIER_TOL - b, 0.0),
            "switch",
            f"barrier = max train loss on t in [0, 1] - max endpoint, relative to the initial "
            f"loss ||y||^2/(2n); tolerance {BARRIER_TOL:g}",
        ),
    ]


def fig6_rows(results_dir: Path) -> list[ClaimRow]:
    f6 = _runs(results_dir, "fig6")
    c6 = load_experiment(results_dir, "fig6")["config"]["config"]
    setting = (
        f"alpha {c6['alpha'][0]:g}, gamma {c6['gamma']:.3g}, rho {c6['rho'][0]:g} (original "
        f"convention), {c6['iters']} iterations; chosen by the search in the README"
    )
    rows = []
    for algo, name in (("gd", "ERM"), ("nsam", "n-SAM"), ("1sam", "1-SAM")):
        rs = [r for r in f6 if r["algo"] == algo]
        seed0 = next(r for r in rs if r["seed"] == 0)
        vals = [r["final_test_loss"] for r in rs if r["status"] != "diverged"]
        rows.append(
            _row(
                "Fig. 6",
                f"{name}'s test loss plateau",
                f"~{PAPER_FIG6[algo]:g}",
                f"{_g(seed0['final_test_loss'])} (seed 0); {fmt_mean_std(vals)}",
                compare_to_paper(_loss(seed0), PAPER_FIG6[algo], rel_tol=FIG6_TOL),
                "fig6",
                f"{setting}; the paper's number read off a log plot: "
                f"tolerance {FIG6_TOL:g} relative "
                "(seed 0 = the original data)",
            )
        )
    for algo, name in (("gd", "ERM"), ("nsam", "n-SAM"), ("1sam", "1-SAM")):
        r0 = next(r for r in f6 if r["algo"] == algo and r["seed"] == 0)
        tr = r0["final_train_loss"]
        dec = abs(math.log10(tr / PAPER_FIG6_TRAIN[algo])) if tr else math.nan
        rows.append(
            _row(
                "Fig. 6",
                f"{name}'s final train loss (1-SAM converges much more slowly)",
                f"~{PAPER_FIG6_TRAIN[algo]:g}",
                f"{_g(tr)} (seed 0)",
                (FIG6_TRAIN_DECADES - dec, 0.0),
                "fig6",
                f"{setting}; gap = {FIG6_TRAIN_DECADES:g} decades - |log10(ours/paper)|; "
                "no setting "
                "of the search matches the test plateaus and these train levels together: "
                "ours reach "
                "float64's floor (~1e-30) sooner",
            )
        )
    return rows


def theory_rows(results_dir: Path) -> list[ClaimRow]:
    tab = theory_table(results_dir)
    small = [r for r in tab if r["gamma"] <= 1 / 60 + 1e-12]
    rows = []
    for algo, name in (("gd", "GD"), ("nsam", "n-SAM"), ("1sam", "1-SAM")):
        rs = sorted((r for r in tab if r["algo"] == algo), key=lambda r: -r["gamma"])
        sm = [r for r in small if r["algo"] == algo]
        worst = max((r["rel_dist"] for r in sm if r["rel_dist"] is not None), default=None)
        g = (THEORY_TOL - worst, 0.0) if worst is not None else (math.nan, math.nan)
        rows.append(
            _row(
                "Section 4.2 (implicit bias)",
                f"{name} converges to argmin phi_alpha_inf s.t. X beta = y: distance -> 0 as "
                "gamma -> 0, < 0.1% at gamma <= 1/60",
                "within 0.1% (rho 0.1)",
                "; ".join(
                    f"gamma {r['gamma']:.3g}: "
                    + (f"{r['rel_dist']:.2%}" if r["rel_dist"] is not None else r["status"])
                    for r in rs
                ),
                g,
                "theory",
                "flow alpha_inf accumulated along the trajectory; rho 0.1 original convention; "
                f"gamma x iterations = {THEORY_TIME:g}; distances only for interpolating runs",
            )
        )
    ref = [r for r in tab if abs(r["gamma"] - 1 / 60) < 1e-12] or tab
    gm = {r["algo"]: r["alpha_gm"] for r in ref}
    rows.append(
        _row(
            "Section 4.2 (implicit bias)",
            "effective initialization alpha_inf: 1-SAM < n-SAM < GD = alpha",
            "1-SAM < n-SAM < GD",
            ", ".join(f"{k} {v:.4g}" for k, v in gm.items()) + " (geometric means)",
            (min(math.log(gm["gd"] / gm["nsam"]), math.log(gm["nsam"] / gm["1sam"])), 0.0),
            "theory",
            f"gamma {ref[0]['gamma']:.3g}; gap = smallest log-ratio of successive alpha_inf",
        )
    )
    return rows


def claims(results_dir: str | Path, profile: str = "quick") -> list[dict]:
    """The claims rows (``suite.claims.CLAIM_COLUMNS``), computed from the run directories."""
    r = Path(results_dir)
    rows = [*curves_rows(r), *grid_rows(r), *switch_rows(r), *fig6_rows(r), *theory_rows(r)]
    return [row.cells(FAMILY, profile) for row in rows]


# ------------------------------------------------------------------------------------ captions
DATA = "the notebook's data (n = 20, d = 30, sparsity 3, numpy seed 0)"


def _iters(results_dir: Path, name: str) -> int:
    return load_experiment(results_dir, name)["config"]["config"]["iters"]


def curves_reading(ctx: StageContext) -> str:
    c = _runs(ctx.results_dir, "curves")
    gd_c = next(_loss(r) for r in c if r["algo"] == "gd")
    best_c = np.nanmin([_loss(r) for r in c if r["algo"] == "1sam"])
    return (
        f"The notebook's claim: 1-SAM's test loss falls with rho and SGD beats GD; here "
        f"1-SAM's best {_g(best_c)} vs GD's {_g(gd_c)} (each final value vs the notebook's in "
        "the claims)."
    )


def grid_reading(ctx: StageContext) -> str:
    g = grid_table(ctx.results_dir)
    best1 = np.nanmin([_loss(r) for r in g["1sam"]])
    bestn = np.nanmin([_loss(r) for r in g["nsam"]])
    return (
        "Fig. 5's claim: 1-SAM's best test loss lies far below n-SAM's, which stays near GD's; "
        f"here 1-SAM {_g(best1)}, n-SAM {_g(bestn)}, GD {_g(_loss(g['gd']))}."
    )


def switch_shows(ctx: StageContext) -> str:
    at = _runs(ctx.results_dir, "switch_erm_sam")[0]["switch_at"]
    return (
        f"Train/test loss vs iteration of ERM, ERM -> 1-SAM (rho 10) and 1-SAM (rho 0.175) -> "
        f"ERM switched at iteration {at} (dashed), gamma 1/d, {DATA}; right: losses on the "
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
        f"{c6['alpha'][0]:g}, gamma 5/d, rho {c6['rho'][0]:g} (original convention, chosen "
        f"by the README's search), {c6['iters']} iterations, data seeds {c6['seeds']}; "
        "dotted: the paper's test plateaus."
    )


def fig6_reading(ctx: StageContext) -> str:
    f6 = _runs(ctx.results_dir, "fig6")
    plat = {a: next(_loss(r) for r in f6 if r["algo"] == a and r["seed"] == 0) for a in PAPER_FIG6}
    return (
        "Fig. 6's claim: 1-SAM plateaus ~10x below ERM and n-SAM (paper 1.6e-4 vs 1.2e-3); "
        f"here 1-SAM {_g(plat['1sam'])}, ERM {_g(plat['gd'])}, n-SAM {_g(plat['nsam'])} "
        "(seed 0)."
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


# --------------------------------------------------------------------------------- the stage
def _runs_of(*names: str) -> Callable[[StageContext], list[Run]]:
    """``Experiment.runs``: the runs of the experiments named (a name ending in ``*``: every one
    with that prefix)."""

    def runs(ctx: StageContext) -> list[Run]:
        return [
            r
            for r in experiment_runs(ctx.profile, ctx.results_dir, ctx.P["scale"])
            if any(r.name == n or (n.endswith("*") and r.name.startswith(n[:-1])) for n in names)
        ]

    return runs


def _report(figure: Callable[[Path, Path], Path], rows: Callable[[Path], list[ClaimRow]]):
    def report(ctx: StageContext) -> list[ClaimRow]:
        figure(ctx.results_dir, ctx.figures_dir)
        return rows(ctx.results_dir)

    return report


EXPERIMENTS = [
    Experiment(
        "curves",
        f"{FAMILY}_curves.png",
        _runs_of("cell_nsam", "cell_1sam", "curves"),
        _report(fig_curves, curves_rows),
        shows=lambda ctx: (
            "Train and test loss vs iteration of GD, SGD (b = 1, gamma 10/(3d)) and 1-SAM "
            f"(rho 0.03-0.3, original convention) on beta = u*v, {DATA}, gamma 10/d, alpha "
            f"0.1, {_iters(ctx.results_dir, 'curves')} iterations, one run each (notebook cell "
            "3)."
        ),
        reading=curves_reading,
    ),
    Experiment(
        "rho_grid",
        f"{FAMILY}_rho_grid.png",
        _runs_of("grid", "grid_uniform"),
        _report(fig_grid, grid_rows),
        key=True,
        shows=lambda ctx: (
            "Final test loss vs rho (original convention) after "
            f"{_iters(ctx.results_dir, 'grid')} iterations: GD and 1-SAM at gamma 15/d, n-SAM at "
            f"10/d (as the notebook) and at 15/d, {DATA}, alpha 0.1; black crosses: the "
            "notebook's printed values (Fig. 5)."
        ),
        reading=grid_reading,
    ),
    Experiment(
        "switch",
        f"{FAMILY}_switch.png",
        _runs_of("switch_erm_sam", "switch_sam_erm", "erm_N"),
        _report(fig_switch, switch_rows),
        shows=switch_shows,
        reading=switch_reading,
    ),
    Experiment(
        "fig6",
        f"{FAMILY}_fig6.png",
        _runs_of("fig6"),
        _report(fig_fig6, fig6_rows),
        shows=fig6_shows,
        reading=fig6_reading,
    ),
    Experiment(
        "theory",
        f"{FAMILY}_theory.png",
        _runs_of("theory_g*"),
        _report(fig_theory, theory_rows),
        shows="Relative distance of the simulated solution to the hyperbolic-entropy prediction "
        "(with the alpha_inf tracked along the run) vs step size, GD / n-SAM / 1-SAM at rho 0.1, "
        f"{DATA}, gamma x iterations = {THEORY_TIME:g}.",
        reading=theory_reading,
    ),
]


def reproduce(
    profile: str, results_dir: Path, figures_dir: Path, scale: float | None = None
) -> list[dict]:
    """Run every experiment of ``profile`` (``PROFILES``, module docstring) through
    ``suite.stage.run_stage``: the runs, the figures and their captions, claims.csv.
    ``scale`` overrides the profile's fraction of the iterations (tests)."""
    P = settings(PROFILES, profile)
    if scale is not None:
        P = {**P, "scale": scale}
    rows = run_stage(FAMILY, EXPERIMENTS, {profile: P}, profile, results_dir, figures_dir)
    atomic_write_json(
        Path(results_dir) / FAMILY / "profile.json", {"profile": profile, "scale": P["scale"]}
    )
    return rows


def results_from_env() -> tuple[Path, Path]:
    """(results dir, figures dir) from SHARPNESS_RESULTS / SHARPNESS_FIGURES (notebook)."""
    return Path(os.environ.get("SHARPNESS_RESULTS", "results")), Path(
        os.environ.get("SHARPNESS_FIGURES", "figures")
    )
