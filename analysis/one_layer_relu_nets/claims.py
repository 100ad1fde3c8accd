"""The claims rows of the one_layer_relu_nets stage (``suite.claims.ClaimRow``), one function per
experiment; every verdict from ``suite.claims`` on a gap with its seed spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.one_layer_relu_nets.profiles import FAMILY
from analysis.one_layer_relu_nets.runs import (
    ALG_LABEL,
    ORIGINAL,
    _by_seed,
    _cfg,
    exp1_frame,
    run_dir,
    runs_frame,
)
from suite.claims import ClaimRow, Gap, fmt_mean_std, gap

PAPER = "Towards Understanding SAM (Andriushchenko & Flammarion 2022)"
LOWER = {
    "kinks": "fewer kinks",
    "slope_tv": "a lower slope TV",
    "lambda_max": "a lower Hessian lambda_max",
}


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
