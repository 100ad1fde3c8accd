"""The measures stage's claims rows, computed from what ``analysis.measures.runs`` measured."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analysis.measures.figures import FIG1, FIG2, FIG3, FIG4
from analysis.measures.profiles import DIAG, FIG3_SETTINGS
from analysis.measures.runs import DIAG_ALGOS
from suite.claims import ClaimRow, fmt_mean_std, gap

SPECTRUM_PAPER = "SAM paper (Foret et al. 2021), Hessian spectrum figure"
FIG3_PAPER = "Towards Understanding SAM (Andriushchenko & Flammarion 2022), Fig. 3 / Sec. 3"
# Precondition of "flatter minima" (fixed before the runs): a model is at a minimum of its
# training loss when it fits its training set, train error <= FIT_TRAIN_ERR at the last epoch
# (the trainer's epoch row); otherwise the rows and captions say "flatter iterates".
FIT_TRAIN_ERR = 0.01


def at_minima(runs: dict[str, list[dict]]) -> bool:
    """Whether every spectrum run fits its training set (``FIT_TRAIN_ERR``)."""
    return all(r["final"]["train_err"] <= FIT_TRAIN_ERR for rs in runs.values() for r in rs)


def where(runs: dict[str, list[dict]]) -> str:
    """ "minima" or "iterates": what the spectrum and landscape rows measure."""
    return "minima" if at_minima(runs) else "iterates (not minima: a run misses the fit)"


def setup(runs: dict[str, list[dict]]) -> str:
    """The spectrum runs' setting in words (read from the first run's config)."""
    from suite.rundir import read_json

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
    """lambda_max and lambda_max / lambda_5 at the end, SGD vs SAM over seeds (lower = the
    paper's direction), and the paper-scale row (not run)."""
    note = (
        f"{setup(runs)}; paper: WRN-40-10 without BN on CIFAR-10 (GPU days); ours: a "
        "CPU-minutes MLP, so the magnitudes are not comparable, only the direction; measured "
        f"at {where(runs)}; Hessian of the training cross-entropy (no L2 term) on the measured "
        "examples"
    )
    rows = []
    for key, what, paper in (
        ("lambda_max", "SAM ends with a smaller top Hessian eigenvalue than SGD", "24.2 vs 1.0"),
        ("ratio", "SAM ends with a smaller lambda_max / lambda_5 than SGD", "11.4 vs 2.6"),
    ):
        a = [r["final"][key] for r in runs["sgd"]]
        b = [r["final"][key] for r in runs["sam"]]
        rows.append(
            ClaimRow(
                paper=SPECTRUM_PAPER,
                claim=what,
                paper_value=f"{paper} (SGD vs SAM)",
                ours=f"SGD {fmt_mean_std(a)} vs SAM {fmt_mean_std(b)}",
                stat=gap(b, a),
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
        note="deep_nets/eval_sharpness.py --measure hessian on a WRN run gives these numbers",
    )


def sharpness_1d(rows: list[dict], radius: float = 0.5) -> float:
    """Mean loss increase L(w + a d) - L(w) over |a| <= radius of a 1-D slice."""
    l0 = min(rows, key=lambda r: abs(r["alpha"]))["loss"]
    return float(np.mean([r["loss"] - l0 for r in rows if abs(r["alpha"]) <= radius + 1e-9]))


def landscape_rows(res: dict[str, Any], seeds: list[int]) -> list[ClaimRow]:
    """The mean train-loss rise along one random filter-normalized direction per seed."""
    land = res["landscapes"]
    a = [sharpness_1d(land[f"sgd_seed{s}"]["slice_1d"]) for s in seeds]
    b = [sharpness_1d(land[f"sam_seed{s}"]["slice_1d"]) for s in seeds]
    return [
        ClaimRow(
            paper="SAM seminar slides / Li et al. 2018, 1-D loss landscapes",
            claim="SAM's solution is flatter along random filter-normalized directions (mean "
            "train-loss rise for |alpha| <= 0.5)",
            paper_value="qualitative (pictures)",
            ours=f"SGD {fmt_mean_std(a)} vs SAM {fmt_mean_std(b)}, one direction per seed",
            stat=gap(b, a),
            figure=FIG2,
            note=f"{setup(res['runs'])}; measured at {where(res['runs'])}; {len(seeds)} seeds, "
            "one seeded random direction each",
        )
    ]


def correlation_gap(df, m_small: int, m_large: int, rho: float, *, boot: int, seed: int = 0):
    """Kendall's tau (sharpness vs test error over runs) at ``m_small`` minus that at
    ``m_large`` (rho fixed), and its bootstrap standard error: runs resampled with replacement
    ``boot`` times (the same resample for both m, so the SE is that of the paired difference).
    Returns (tau_small, tau_large, gap, se)."""
    from scipy.stats import kendalltau

    def wide(m):
        g = df[(df["m"] == m) & np.isclose(df["rho"], rho)].sort_values("run")
        return g["sharpness"].to_numpy(float), g["test_error"].to_numpy(float)

    (xs, err), (xl, err_l) = wide(m_small), wide(m_large)
    if not np.array_equal(err, err_l) or len(err) < 3:
        raise ValueError("need the same >= 3 runs at both m")

    def tau(x, y):
        t = kendalltau(x, y).statistic
        return math.nan if t is None else float(t)

    ts, tl = tau(xs, err), tau(xl, err)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(boot):
        i = rng.integers(0, len(err), len(err))
        d = tau(xs[i], err[i]) - tau(xl[i], err[i])
        if math.isfinite(d):
            diffs.append(d)
    se = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan
    return ts, tl, ts - tl, se


def fig3_claims(df, note: str, profile: str) -> list[ClaimRow]:
    """One row per rho: Kendall's tau at the smallest m exceeds that at the largest (m = batch);
    gap = tau_small - tau_large, its SE from the bootstrap over runs (``correlation_gap``)."""
    st = FIG3_SETTINGS[profile]
    m0, m1 = min(st["ms"]), max(st["ms"])
    rows = []
    for rho in st["rhos"]:
        ts, tl, g, se = correlation_gap(df, m0, m1, rho, boot=st["boot"])
        rows.append(
            ClaimRow(
                paper=FIG3_PAPER,
                claim=f"m-sharpness at small m (m={m0}) correlates better with "
                f"test error than at m = batch ({m1}) (rho {rho:g}, Kendall's tau)",
                paper_value="qualitative: the smallest m correlates best",
                ours=f"tau {ts:.2f} (m={m0}) vs {tl:.2f} (m={m1}), {df['run'].nunique()} runs",
                stat=gap(g, se=se, df=math.inf),  # a bootstrap SE: normal critical value
                figure=FIG3,
                note=f"{note}; worst-case L2 m-sharpness, {st['steps']} ascent steps, "
                f"{st['n_examples']} training examples drawn with seed 0 from each run's training "
                "split (the same draw for every run of a data seed), "
                "test error at the last epoch; "
                f"SE: bootstrap over runs ({st['boot']} resamples); paper: ResNets on CIFAR-10",
            )
        )
    return rows


def fig3_not_run(why: str) -> ClaimRow:
    return ClaimRow(
        paper=FIG3_PAPER,
        claim="m-sharpness at small m correlates better with test error than at m = batch",
        paper_value="qualitative: the smallest m correlates best",
        ours="not run",
        figure=FIG3,
        note=why,
    )


def fig4_claims(diag: list[dict]) -> list[ClaimRow]:
    """For n-SAM and 1-SAM and each measure (lambda_max, ||beta||_1): SAM's is smaller than GD's.
    The runs are deterministic given the data seed, so the comparison is paired by seed:
    gap = mean over seeds of (GD - SAM), SE = std of the differences / sqrt(seeds)."""
    by = {(r["algo"], r["seed"]): r for r in diag}
    seeds = sorted({r["seed"] for r in diag})
    rows = []
    for a in ("nsam", "1sam"):
        for key, what in (("lambda_max", "exact Hessian lambda_max"), ("l1", "||beta||_1")):
            gd = [by["gd", s][key] for s in seeds]
            sam = [by[a, s][key] for s in seeds]
            rows.append(
                ClaimRow(
                    paper="Towards Understanding SAM (Andriushchenko & Flammarion 2022), Sec. 4 "
                    "(diagonal linear nets)",
                    claim=f"{DIAG_ALGOS[a]}'s solution has a smaller {what} than GD's",
                    paper_value="qualitative: SAM finds sparser (smaller l1), flatter solutions",
                    ours=f"GD {fmt_mean_std(gd)} vs {DIAG_ALGOS[a]} {fmt_mean_std(sam)}",
                    stat=gap(sam, gd, paired=True),
                    figure=FIG4,
                    note=f"notebook cell-3 setting: n {DIAG['n']}, d {DIAG['d']}, alpha "
                    f"{DIAG['alpha']}, gamma 10/d, {DIAG['iters']} steps, rho {DIAG['rho']} "
                    "(original convention), one data set per seed; paired by seed (SE: std of the "
                    "per-seed differences / sqrt(seeds)); lambda_max of the dense float64 Hessian "
                    "over (u, v) from sharpness.measures; at this rho n-SAM's solution is also "
                    "slightly worse than GD's in the original notebook "
                    "(test loss 0.0167 vs 0.0157)",
                )
            )
    return rows
