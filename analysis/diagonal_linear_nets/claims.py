"""The diagonal-net stage's claims rows, computed from the run directories only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from analysis.diagonal_linear_nets.profiles import (
    FAMILY,
    PAPER,
    PAPER_FIG6,
    PAPER_FIG6_TRAIN,
    THEORY_TIME,
)
from analysis.diagonal_linear_nets.runs import (
    _at,
    _loss,
    _runs,
    barrier,
    grid_table,
    load_experiment,
    theory_table,
)
from suite.claims import ClaimRow, compare_to_paper, fmt_mean_std, gap

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


FIG6_TOL = 0.25  # relative, for numbers read off a log-scale plot


FIG6_TRAIN_DECADES = 2.0  # |log10(ours / paper)| for train losses read off a 30-decade axis


THEORY_TOL = 1e-3  # the paper: "within 0.1%"


BARRIER_TOL = 1e-2  # a barrier below 1% of the initial loss counts as "no barrier"


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
