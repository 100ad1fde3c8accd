"""The measures stage's claims rows, computed from what ``analysis.measures.runs`` measured.

Every row's test is a module constant below, declared before the results it decides were seen
(``suite.stats.Claim``: an effect with its smallest effect of interest, or a null claim with its
equivalence margin), and so are the preconditions that make a row "not comparable".

Units. Curvatures and loss rises are compared as log ratios per seed, d_s = log(baseline_s /
method_s) (positive: the method is flatter/smaller), paired by seed (both runs of a seed share
the initialization, the data and its order; a diagonal-net seed is one data set), gap = mean(d),
SE = std(d) / sqrt(k), df = k - 1: a relative effect, so one margin serves every profile's model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.measures.figures import FIG1, FIG2, FIG3, FIG4
from analysis.measures.profiles import DIAG, FIG3_SETTINGS
from analysis.measures.runs import DIAG_ALGOS
from suite.claims import ClaimRow, fmt_mean_std, gap
from suite.rundir import read_json
from suite.stats import Claim

SPECTRUM_PAPER = "SAM paper (Foret et al. 2021), Hessian spectrum figure"
FIG3_PAPER = "Towards Understanding SAM (Andriushchenko & Flammarion 2022), Fig. 3 / Sec. 3"
DIAG_PAPER = "Towards Understanding SAM (Andriushchenko & Flammarion 2022), Sec. 4 (diagonal nets)"

# ---- pre-registered tests and preconditions (fixed before the results; never tuned to them)
# "Flatter" means at least 10% smaller (a log ratio of log(1 / 0.9)); anything less would not
# support "SAM finds flatter minima" (the paper's effect is 24.2 -> 1.0, log 3.19).
FLATTER = Claim("effect", math.log(1 / 0.9))
# The spectrum and landscape rows speak of minima: both methods must fit their training set
# (train error <= 1% at the last epoch, the trainer's epoch row); else "not comparable".
FIT_TRAIN_ERR = 0.01
# lambda_max / lambda_5 can only shrink from an outlier: the baseline (SGD) must have one,
# mean lambda_max / lambda_5 >= 3 (the paper's SGD has 11.4); else "not comparable".
OUTLIER_RATIO = 3.0
# Fig. 3: tau(m small) - tau(m = batch) of at least 0.1 (Kendall's tau) is the smallest of
# interest; its SE from a bootstrap that resamples seeds (runs of one seed share the data split,
# the init and the data order), df = seeds - 1.
TAU_GAP = Claim("effect", 0.1)
# Diagonal nets. The paper's null claims: n-SAM's solution is GD's (same lambda_max, same l1),
# and 1-SAM's sparser solution is not flatter: equivalence (TOST) within a 5% change (a log
# ratio of log 1.05); its effect claim: 1-SAM's l1 at least 5% smaller.
SAME_AS_GD = Claim("null", math.log(1.05))
SPARSER = Claim("effect", math.log(1.05))


def at_minima(runs: dict[str, list[dict]]) -> bool:
    """Whether every spectrum run fits its training set (``FIT_TRAIN_ERR``)."""
    return all(r["final"]["train_err"] <= FIT_TRAIN_ERR for rs in runs.values() for r in rs)


def where(runs: dict[str, list[dict]]) -> str:
    """ "minima" or "iterates": what the spectrum and landscape rows measure."""
    return "minima" if at_minima(runs) else "iterates, not minima (a run misses the fit)"


def _not_fit(runs: dict[str, list[dict]]) -> str:
    if at_minima(runs):
        return ""
    worst = max(r["final"]["train_err"] for rs in runs.values() for r in rs)
    return (
        f"precondition: both methods fit their training set (train error <= "
        f"{100 * FIT_TRAIN_ERR:g}%); the worst run ends at {100 * worst:.1f}%: flatter "
        "iterates, not minima"
    )


def log_ratio_gap(baseline: Sequence[float], method: Sequence[float]):
    """Paired by seed on the log scale: d = log(baseline / method) per seed (module docstring)."""
    return gap([math.log(v) for v in method], [math.log(v) for v in baseline], paired=True)


def setup(runs: dict[str, list[dict]]) -> str:
    """The spectrum runs' setting in words (read from the first run's config)."""
    c = read_json(f"{runs['sgd'][0]['path']}/config.json")["config"]
    fits = ", ".join(
        f"{o.upper()} train err {fmt_mean_std([100 * r['final']['train_err'] for r in rs], '.2f')}%"
        for o, rs in runs.items()
    )
    return (
        f"MNIST-1D, MLP 40-{c['model_width']}x2-10 (no norm), deep_nets/train.py, {c['epochs']} "
        f"epochs {c['lr_schedule']} from lr {c['lr_max']}, L2 {c['l2_reg']}; at the end {fits}"
    )


def spectrum_rows(runs: dict[str, list[dict]]) -> list[ClaimRow]:
    """lambda_max and lambda_max / lambda_5 at the end, SGD vs SAM (log ratio paired by seed,
    ``FLATTER``), with the fit (and, for the ratio, the outlier) precondition."""
    note = (
        f"{setup(runs)}; paper: WRN-40-10 without BN on CIFAR-10 (GPU days); ours: a "
        "CPU-minutes MLP, so the magnitudes are not comparable, only the direction; measured "
        f"at {where(runs)}; Hessian of the training cross-entropy (no L2 term) on the measured "
        "examples; gap: mean over seeds of log(SGD / SAM), paired by seed"
    )
    rows = []
    for key, what, paper, (p_sgd, p_sam) in (
        ("lambda_max", "a smaller top Hessian eigenvalue", "24.2 vs 1.0", (24.2, 1.0)),
        ("ratio", "a smaller lambda_max / lambda_5", "11.4 vs 2.6", (11.4, 2.6)),
    ):
        a = [r["final"][key] for r in runs["sgd"]]
        b = [r["final"][key] for r in runs["sam"]]
        why = _not_fit(runs)
        if key == "ratio" and not why and float(np.mean(a)) < OUTLIER_RATIO:
            why = (
                f"precondition: the baseline has a separated top eigenvalue (SGD lambda_max / "
                f"lambda_5 >= {OUTLIER_RATIO:g}); ours {np.mean(a):.2f}: this MLP's top "
                "eigenvalues are not separated, so the ratio cannot fall as the paper's"
            )
        rows.append(
            ClaimRow(
                paper=SPECTRUM_PAPER,
                claim=f"SAM ends at a minimum with {what} than SGD",
                paper_value=f"{paper} (SGD vs SAM)",
                ours=f"SGD {fmt_mean_std(a)} vs SAM {fmt_mean_std(b)}",
                stat=log_ratio_gap(a, b),
                test=FLATTER,
                paper_effect=math.log(p_sgd / p_sam),
                not_comparable=why,
                figure=FIG1,
                note=note,
            )
        )
    return rows


def paper_scale_row() -> ClaimRow:
    return ClaimRow(
        paper="SAM paper, Hessian spectrum figure (paper profile)",
        claim="the same at the paper's scale (WRN-40-10 without BN, CIFAR-10)",
        paper_value="24.2 vs 1.0; 11.4 vs 2.6",
        ours="not run (GPU days)",
        profile="paper",
        test=FLATTER,
        note="deep_nets/eval_sharpness.py --measure hessian on a WRN run gives these numbers",
    )


def sharpness_1d(rows: list[dict], radius: float = 0.5) -> float:
    """Mean loss increase L(w + a d) - L(w) over |a| <= radius of a 1-D slice."""
    l0 = min(rows, key=lambda r: abs(r["alpha"]))["loss"]
    return float(np.mean([r["loss"] - l0 for r in rows if abs(r["alpha"]) <= radius + 1e-9]))


def landscape_rows(res: dict[str, Any], seeds: list[int]) -> list[ClaimRow]:
    """The mean train-loss rise along one random filter-normalized direction per seed (log
    ratio paired by seed, ``FLATTER``; the fit precondition)."""
    land = res["landscapes"]
    a = [sharpness_1d(land[f"sgd_seed{s}"]["slice_1d"]) for s in seeds]
    b = [sharpness_1d(land[f"sam_seed{s}"]["slice_1d"]) for s in seeds]
    return [
        ClaimRow(
            paper="SAM seminar slides / Li et al. 2018, 1-D loss landscapes",
            claim="SAM's minimum is flatter along random filter-normalized directions (mean "
            "train-loss rise for |alpha| <= 0.5)",
            paper_value="qualitative (pictures)",
            ours=f"SGD {fmt_mean_std(a)} vs SAM {fmt_mean_std(b)}, one direction per seed",
            stat=log_ratio_gap(a, b),
            test=FLATTER,
            not_comparable=_not_fit(res["runs"]),
            figure=FIG2,
            note=f"{setup(res['runs'])}; measured at {where(res['runs'])}; {len(seeds)} seeds, "
            "one seeded random direction each; gap: mean over seeds of log(SGD / SAM)",
        )
    ]


def correlation_gap(
    df,
    m_small: int,
    m_large: int,
    rho: float,
    *,
    boot: int,
    seed: int = 0,
    clusters: dict[str, Any] | None = None,
):
    """Kendall's tau (sharpness vs test error over runs) at ``m_small`` minus that at
    ``m_large`` (rho fixed), and its bootstrap standard error: the same resample for both m (so
    the SE is that of the paired difference), ``boot`` times. ``clusters`` ({run: cluster}, e.g.
    its seed) resamples whole clusters with replacement (every run of a drawn cluster, once per
    draw), the runs of a cluster being dependent; without it each run is its own cluster.
    Returns (tau_small, tau_large, gap, se, number of clusters)."""
    from scipy.stats import kendalltau

    def wide(m):
        g = df[(df["m"] == m) & np.isclose(df["rho"], rho)].sort_values("run")
        return g["run"].tolist(), g["sharpness"].to_numpy(float), g["test_error"].to_numpy(float)

    (runs, xs, err), (_, xl, err_l) = wide(m_small), wide(m_large)
    if not np.array_equal(err, err_l) or len(err) < 3:
        raise ValueError("need the same >= 3 runs at both m")

    def tau(x, y):
        t = kendalltau(x, y).statistic
        return math.nan if t is None else float(t)

    label = [clusters[r] for r in runs] if clusters is not None else list(range(len(runs)))
    groups = [np.flatnonzero([c == k for c in label]) for k in dict.fromkeys(label)]
    ts, tl = tau(xs, err), tau(xl, err)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(boot):
        i = np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))])
        d = tau(xs[i], err[i]) - tau(xl[i], err[i])
        if math.isfinite(d):
            diffs.append(d)
    # one cluster has no spread to resample: the SE is unknown (never 0, which would decide)
    se = float(np.std(diffs, ddof=1)) if len(diffs) > 1 and len(groups) > 1 else math.nan
    return ts, tl, ts - tl, se, len(groups)


def run_seeds(df) -> dict[str, int]:
    """{run directory: its seed} (config.json): Fig. 3's bootstrap clusters."""
    return {r: int(read_json(f"{r}/config.json")["config"]["seed"]) for r in df["run"].unique()}


def fig3_claims(df, note: str, profile: str) -> list[ClaimRow]:
    """One row per rho: Kendall's tau at the smallest m exceeds that at the largest (m = batch);
    gap = tau_small - tau_large, its SE from the bootstrap over seeds (``correlation_gap``),
    df = seeds - 1 (``TAU_GAP``)."""
    st = FIG3_SETTINGS[profile]
    m0, m1 = min(st["ms"]), max(st["ms"])
    seeds = run_seeds(df)
    rows = []
    for rho in st["rhos"]:
        ts, tl, g, se, k = correlation_gap(df, m0, m1, rho, boot=st["boot"], clusters=seeds)
        rows.append(
            ClaimRow(
                paper=FIG3_PAPER,
                claim=f"m-sharpness at small m (m={m0}) correlates better with "
                f"test error than at m = batch ({m1}) (rho {rho:g}, Kendall's tau)",
                paper_value="qualitative: the smallest m correlates best",
                ours=f"tau {ts:.2f} (m={m0}) vs {tl:.2f} (m={m1}), {df['run'].nunique()} runs",
                stat=gap(g, se=se, df=k - 1.0),
                test=TAU_GAP,
                figure=FIG3,
                note=f"{note}; worst-case L2 m-sharpness, {st['steps']} ascent steps, "
                f"{st['n_examples']} training examples drawn with seed 0 from each run's training "
                "split (the same draw for every run of a data seed), test error of the last "
                "weights (on every scored test example where the run has them); SE: bootstrap "
                f"over the {k} seeds (each drawn seed brings all its runs; {st['boot']} "
                f"resamples), df {k - 1}; paper: ResNets on CIFAR-10",
            )
        )
    return rows


def fig3_not_run(why: str) -> ClaimRow:
    return ClaimRow(
        paper=FIG3_PAPER,
        claim="m-sharpness at small m correlates better with test error than at m = batch",
        paper_value="qualitative: the smallest m correlates best",
        ours="not run",
        test=TAU_GAP,
        figure=FIG3,
        note=why,
    )


def fig4_claims(diag: list[dict]) -> list[ClaimRow]:
    """n-SAM vs GD: lambda_max and ||beta||_1 the same (null claims, ``SAME_AS_GD``); 1-SAM vs
    GD: lambda_max not smaller (null, ``SAME_AS_GD``), ||beta||_1 smaller (effect, ``SPARSER``).
    The runs are deterministic given the data seed, so the comparison is paired by seed on the
    log scale: gap = mean over seeds of log(GD / SAM), SE = std / sqrt(seeds), df = seeds - 1."""
    by = {(r["algo"], r["seed"]): r for r in diag}
    seeds = sorted({r["seed"] for r in diag})
    rows = []
    for a, key, what, test in (
        ("nsam", "lambda_max", "the same exact Hessian lambda_max as GD's", SAME_AS_GD),
        ("nsam", "l1", "the same ||beta||_1 as GD's", SAME_AS_GD),
        (
            "1sam",
            "lambda_max",
            "the same exact Hessian lambda_max as GD's (not flatter)",
            SAME_AS_GD,
        ),
        ("1sam", "l1", "a smaller ||beta||_1 than GD's (sparser)", SPARSER),
    ):
        gd = [by["gd", s][key] for s in seeds]
        sam = [by[a, s][key] for s in seeds]
        rows.append(
            ClaimRow(
                paper=DIAG_PAPER,
                claim=f"{DIAG_ALGOS[a]}'s solution has {what}",
                paper_value="qualitative: 1-SAM finds sparser solutions, n-SAM stays near GD",
                ours=f"GD {fmt_mean_std(gd)} vs {DIAG_ALGOS[a]} {fmt_mean_std(sam)}",
                stat=log_ratio_gap(gd, sam),
                test=test,
                figure=FIG4,
                note=f"notebook cell-3 setting: n {DIAG['n']}, d {DIAG['d']}, alpha "
                f"{DIAG['alpha']}, gamma 10/d, {DIAG['iters']} steps, rho {DIAG['rho']} "
                "(original convention), one data set per seed; gap: mean over seeds of "
                f"log(GD / {DIAG_ALGOS[a]}), paired by seed; "
                + (
                    "equivalence margin log(1.05) (TOST)"
                    if test.kind == "null"
                    else "smallest effect of interest log(1.05)"
                )
                + "; lambda_max of the dense float64 Hessian over (u, v) from sharpness.measures",
            )
        )
    return rows
