"""The deep-net claims rows without training: per-example errors read from each run's wrong.npz
(paired by seed and by example), the family's pooled seed variance, t on the real df, the
pre-registered tests, and Fig. 1's rho protocol (rho chosen per seed on the validation set, the
boundary rule). Runs are written as the trainer writes them (config.json, summary.json with its
'scored' block, wrong.npz), with error patterns chosen so that the right answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.deep_nets import fig1
from analysis.deep_nets.profiles import PROFILES
from analysis.deep_nets.runs import (
    EFFECT,
    NULL,
    compare_contrasts,
    compare_rows,
    outcome_of,
    pooled_rows,
    run_path,
)
from deep_nets.evaluation import write_wrong
from suite.claims import gap
from suite.rundir import atomic_write_json
from suite.stats import Outcome as Scores
from suite.stats import paired_se

N_TEST, N_VAL = 20_000, 4_000
# one difficulty per example, shared by every run: runs that differ in error rate by d disagree
# on about d of the examples (a strongly paired design, like real runs of one seed)
U_TEST = np.random.default_rng(0).random(N_TEST)
U_VAL = np.random.default_rng(1).random(N_VAL)


def write_run(path: Path, seed: int, test: tuple[float, float], val: tuple[float, float]) -> dict:
    """A finished run at ``path``: (best, last) test and validation error rates, each example
    wrong when its difficulty is below the rate."""
    path.mkdir(parents=True, exist_ok=True)
    wrong = {}
    for split, u, (b, last) in (("test", U_TEST, test), ("val", U_VAL, val)):
        wrong[f"best_{split}"], wrong[f"last_{split}"] = u < b, u < last
    write_wrong(path / "wrong.npz", wrong)
    scored = {
        "file": "wrong.npz",
        "seed": seed,
        "n_val": N_VAL,
        "n_test": N_TEST,
        "val_sha256": "val-digest",
        "test_sha256": "test-digest",
        **{
            w: {
                "epoch": 3,
                "val_err": float(wrong[f"{w}_val"].mean()),
                "test_err": float(wrong[f"{w}_test"].mean()),
            }
            for w in ("best", "last")
        },
    }
    summary = {"status": "finished", "scored": scored}
    atomic_write_json(path / "summary.json", summary)
    atomic_write_json(path / "config.json", {"config": {}, "data": {"noise": {"noisy_val": True}}})
    return {"path": str(path), "summary": summary, "config": {}, "metrics": []}


def method_runs(tmp: Path, name: str, rates: dict[int, float]) -> list[dict]:
    """One run per seed with test and validation error ``rates[seed]`` at both epochs."""
    return [write_run(tmp / f"{name}{s}", s, (r, r), (r, r)) for s, r in rates.items()]


# ------------------------------------------------------------------------ paired rows, real df
def test_rows_are_paired_by_seed_and_example(tmp_path):
    base = outcome_of("ERM", [], method_runs(tmp_path, "erm", {0: 0.30, 1: 0.31}))
    meth = outcome_of("SAM", [], method_runs(tmp_path, "sam", {0: 0.28, 1: 0.285}))
    rows = compare_rows(base, meth, claim="c", paper="p", paper_value="v", figure="", note="")
    g = rows[1].stat
    assert g.design == "paired" and g.df == 1
    # the two-way paired SE of suite.stats on the same per-example differences, in points
    delta = np.stack([(U_TEST < b) * 1.0 - (U_TEST < m) for b, m in ((0.30, 0.28), (0.31, 0.285))])
    want_gap, want_se = (100 * float(v) for v in paired_se(delta)[:2])
    assert g.gap == pytest.approx(want_gap, abs=1e-9) and g.se == pytest.approx(want_se, rel=1e-9)
    # the same runs as if scored on other examples (other digests): unpaired, a larger SE
    alien = [Scores(o.seed, f"other-{o.seed}", o.values) for o in meth.scores("last")]
    unpaired = gap(alien, base.scores("last")).scaled(100)
    assert unpaired.design == "unpaired" and g.se < 0.6 * unpaired.se


def test_two_seeds_alone_are_judged_on_df_1_not_two_standard_errors(tmp_path):
    """A gap of ~5 SE with two seeds: t(0.975, 1) = 12.7, so one comparison cannot decide it (a
    2-SE rule would call it reproduced); pooled over a family of such gaps it is decided."""
    erm = {0: 0.300, 1: 0.310}
    base = outcome_of("ERM", [], method_runs(tmp_path, "erm", erm))
    meth = outcome_of("SAM", [], method_runs(tmp_path, "sam", {0: 0.285, 1: 0.2875}))
    alone = compare_rows(base, meth, claim="c", paper="p", paper_value="v", figure="", note="")
    s = alone[1].stat
    assert 3 < s.gap / s.se < 12.7 and s.df == 1
    assert alone[1].verdict == "within noise"
    # four more methods of the same family with the same interaction spread: pooled df 5
    cs = compare_contrasts(base, meth, claim="c", paper_value="v", pool="fam")
    for i, d in enumerate((0.010, 0.012, 0.011, 0.013)):
        other = {0: erm[0] - d, 1: erm[1] - d - 0.0075 * (-1) ** i}
        o = outcome_of(f"M{i}", [], method_runs(tmp_path, f"m{i}", other))
        cs += compare_contrasts(base, o, claim="o", paper_value="v", pool="fam")
    pooled = pooled_rows(cs, paper="p", figure="")
    first = next(r for r in pooled if r.claim == "c (at the last epoch)")
    assert first.stat.df == 5 and first.verdict == "reproduced"


def test_null_claims_are_equivalence_tests(tmp_path):
    base = outcome_of("ERM", [], method_runs(tmp_path, "erm", {0: 0.300, 1: 0.310}))
    same = outcome_of("rnd", [], method_runs(tmp_path, "rnd", {0: 0.3002, 1: 0.3101}))
    far = outcome_of("nsam", [], method_runs(tmp_path, "nsam", {0: 0.280, 1: 0.290}))
    cs = []
    for o in (same, far):
        cs += compare_contrasts(base, o, claim=o.label, paper_value="", test=NULL, pool="f")
    cs += compare_contrasts(base, far, claim="x", paper_value="", test=EFFECT, pool="f")
    rows = {r.claim: r for r in pooled_rows(cs, paper="p", figure="")}
    assert rows["rnd (at the last epoch)"].verdict == "equivalent"
    assert rows["nsam (at the last epoch)"].verdict == "contradicted"  # 2 points: not near ERM
    assert rows["x (at the last epoch)"].verdict == "reproduced"
    assert rows["x (at the last epoch)"].cells()["sesoi"] == 0.5


# ---------------------------------------------------------------------------- the rho protocol
def test_rho_is_chosen_on_the_validation_set_never_the_test_set(tmp_path):
    # validation prefers rho 0.05, the test set prefers 0.2
    runs = {
        0.05: write_run(tmp_path / "a", 0, (0.30, 0.30), (0.20, 0.20)),
        0.1: write_run(tmp_path / "b", 0, (0.29, 0.29), (0.22, 0.22)),
        0.2: write_run(tmp_path / "c", 0, (0.25, 0.25), (0.24, 0.24)),
    }
    assert fig1.choose_rho(runs, "best") == fig1.choose_rho(runs, "last") == 0.05
    assert fig1.SELECT_ON == "val"
    tie = {0.1: runs[0.1], 0.2: write_run(tmp_path / "d", 0, (0.1, 0.1), (0.22, 0.22))}
    assert fig1.choose_rho(tie, "last") == 0.1  # ties go to the smaller rho


def test_boundary_rule_extends_a_grid_end_one_step(tmp_path):
    assert fig1.step_beyond([0.02, 0.05, 0.1, 0.2, 0.5], up=True) == 1.25
    assert fig1.step_beyond([0.02, 0.05, 0.1, 0.2, 0.5], up=False) == 0.008
    assert fig1.step_beyond([0.1], up=True) == 0.2 and fig1.step_beyond([0.1], up=False) == 0.05

    def grid(vals):
        return {
            r: write_run(tmp_path / f"g{r}_{v}", 0, (0.3, 0.3), (v, v))
            for r, v in zip((0.05, 0.1, 0.2), vals, strict=True)
        }

    assert fig1.extensions(grid((0.25, 0.20, 0.22))) == []  # interior optimum: bracketed
    assert fig1.extensions(grid((0.25, 0.22, 0.20))) == [0.4]  # the upper end
    assert fig1.extensions(grid((0.20, 0.22, 0.25))) == [0.025]  # the lower end


def _profile() -> dict:
    P = dict(PROFILES["quick"])
    P.update(seeds=[0, 1], rhos=[0.05, 0.1, 0.2], rho=0.1)
    return P


def _fake_fig1(root: Path, P: dict, val_best: dict[str, float], ext: dict[str, float]) -> None:
    """Every Fig. 1 run as a finished run directory. Test error falls with rho for SAM and
    m-SAM (0.30 -> 0.27), n-SAM a little, random not at all; validation error is lowest at
    ``val_best[label]`` (the test set never says so); ``ext``: extension runs with their val."""
    for s in P["seeds"]:
        write_run(run_path(root, fig1.method(P, s)), s, (0.30 + 0.01 * s,) * 2, (0.3,) * 2)
        for rho in [*P["rhos"], *ext.values()]:
            for lab, fn in fig1.fig1_methods(P, rho).items():
                kind = lab.split(" ")[0]
                drop = {"SAM": 0.1, "m-SAM": 0.12, "n-SAM": 0.02, "random": 0.0}[kind]
                t = 0.30 + 0.01 * s - drop * rho + 0.0005 * s * (kind == "m-SAM")
                if kind == "random":
                    t = 0.30 + 0.01 * s + 0.0001 * (rho == 0.1)
                v = 0.19 if rho == ext.get(kind) else 0.20 if rho == val_best[kind] else 0.25
                write_run(run_path(root, fn(s)), s, (t, t), (v, v))


def test_fig1_rows_use_each_seeds_validation_choice(tmp_path):
    P = _profile()
    val_best = {"SAM": 0.1, "m-SAM": 0.2, "n-SAM": 0.05, "random": 0.1}
    # m-SAM picks the grid end 0.2 -> one step up (0.4), whose validation error is lower again:
    # not bracketed; n-SAM picks the lower end 0.05 -> 0.025, worse on validation: bracketed
    _fake_fig1(tmp_path, P, val_best, ext={"m-SAM": 0.4})
    assert sorted(fig1.extension_specs(P, tmp_path), key=str) == sorted(
        [
            fig1.fig1_methods(P, r)[lab](s)
            for lab, r in ((f"m-SAM (m={fig1.m_of(P, P['small_acc'])})", 0.4), ("n-SAM", 0.025))
            for s in (0, 1)
        ],
        key=str,
    )
    # n-SAM's extension 0.025 must exist to be read: write it (validation worse than 0.05)
    for s in (0, 1):
        fig1_spec = fig1.fig1_methods(P, 0.025)["n-SAM"](s)
        write_run(run_path(tmp_path, fig1_spec), s, (0.3, 0.3), (0.26, 0.26))
    sam = fig1.tune(P, tmp_path, f"SAM (m={fig1.m_of(P, 1)})")
    assert sam.chosen == {"best": [0.1, 0.1], "last": [0.1, 0.1]}  # the test set says 0.2
    assert sam.bracketed == {"best": True, "last": True}
    msam = fig1.tune(P, tmp_path, f"m-SAM (m={fig1.m_of(P, P['small_acc'])})")
    assert msam.chosen["last"] == [0.4, 0.4] and msam.bracketed["last"] is False
    nsam = fig1.tune(P, tmp_path, "n-SAM")
    assert nsam.chosen["last"] == [0.05, 0.05] and nsam.bracketed["last"] is True
    rows = {r.claim: r for r in fig1.report_rows(P, tmp_path, figure="f.png")}
    row = rows[
        "SAM with m = batch (the paper's 128-SAM) beats ERM, rho tuned on validation "
        "(at the last epoch)"
    ]
    assert row.stat.design == "paired" and row.stat.gap == pytest.approx(1.0, abs=0.15)
    assert row.stat.df > 1  # pooled over the family
    assert row.verdict == "reproduced"
    m_row = rows["m-SAM with a small m beats ERM, rho tuned on validation (at the last epoch)"]
    assert "optimum not bracketed" in m_row.note
    assert (
        rows[
            "random perturbations do not help, rho tuned on validation (at the last epoch)"
        ].verdict
        == "equivalent"
    )
    assert any("untuned" in c for c in rows)


def test_best_validation_rows_read_the_best_weights(tmp_path):
    runs = [write_run(tmp_path / f"r{s}", s, (0.25, 0.30), (0.2, 0.3)) for s in (0, 1)]
    o = outcome_of("SAM", [], runs)
    for when, rate in (("best", 0.25), ("last", 0.30)):
        got = [float(x.values.mean()) for x in o.scores(when)]
        assert got == pytest.approx([float((U_TEST < rate).mean())] * 2, abs=1e-12)
        assert o.at(when) == got  # the rows' "ours" and their gap read the same weights
