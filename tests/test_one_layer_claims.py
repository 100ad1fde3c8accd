"""The pre-registered rules of the one_layer_relu_nets claims: the fit precondition and the fit
rule that picks 1-SAM's rho, rho chosen per seed on validation (never test), time-to-tolerance
(a run that never reaches it counts at its budget), and the rows' declared tests."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis.one_layer_relu_nets import claims as C
from analysis.one_layer_relu_nets.runs import steps_to_tolerance
from one_layer_relu_nets.engine import Config, train
from suite.claims import gap


def _exp1(residuals: dict[float, list[float]]) -> pd.DataFrame:
    rows = [
        {"algorithm": "1sam", "rho": rho, "seed": s, "max_residual": r, "label": f"1-SAM {rho}"}
        for rho, rs in residuals.items()
        for s, r in enumerate(rs)
    ]
    rows.append(  # a loss-matched control never counts as the method's run
        {"algorithm": "1sam", "rho": 0.3, "seed": 0, "max_residual": 0.0, "label": "GD @ x"}
    )
    df = pd.DataFrame(rows)
    df["original_loop"] = False
    return df


def test_fit_precondition_and_the_fit_rule_for_rho():
    df = _exp1({0.03: [0.01, 0.02], 0.1: [0.3, 0.49], 0.3: [0.2, 1.9]})
    assert C.misfit(df[df["rho"] == 0.1]) == ""
    reason = C.misfit(df[(df["rho"] == 0.3) & (df["label"] == "1-SAM 0.3")])
    assert "1 of 2 runs" in reason and f"{C.FIT_TOL:g}" in reason and "1.90" in reason
    assert C.fit_rho(df, "1sam") == 0.1  # the largest rho at which every seed fits
    assert C.fit_rho(_exp1({0.03: [0.6], 0.1: [0.7], 0.3: [2.0]}), "1sam") is None
    row = C._row("c", "p", "o", gap(1.0, se=0.0), "f", "n", C.KINKS, not_comparable=reason)
    cells = row.cells("fam", "quick")
    assert cells["verdict"] == "not comparable" and cells["note"].startswith("not comparable")


def test_rho_is_chosen_per_seed_on_validation_never_on_test():
    t = pd.DataFrame(
        {
            "algorithm": ["nsam"] * 4 + ["gd"] * 2,
            "seed": [0, 0, 1, 1, 0, 1],
            "rho": [0.01, 0.1, 0.01, 0.1, 0.0, 0.0],
            "val_loss": [0.2, 0.1, 0.1, 0.2, 0.3, 0.3],
            "test_loss": [0.1, 0.2, 0.2, 0.1, 0.3, 0.3],  # test would pick the other rho
        }
    )
    chosen = C.val_chosen(t, "nsam")
    assert chosen["seed"].tolist() == [0, 1] and chosen["rho"].tolist() == [0.1, 0.01]


def test_declared_tests():
    assert C.TEACHER_NULL.kind == "null" and C.CONVERGES.kind == "null"
    assert C.TEACHER_EFFECT.kind == "effect" and C.KINKS.sesoi > 0
    assert C.TIME_TOL > 1e-20  # far above the float64 floor where a slope is round-off


def test_steps_to_tolerance_reads_the_first_logged_step_and_censors_at_the_budget(tmp_path):
    cfg = Config(
        task="teacher",
        d=2,
        teacher_width=2,
        n_train=6,
        n_test=10,
        width=8,
        init="standard",
        reduction="mean",
        lr=0.1,
        iterations=400,
        loss_threshold=0.0,
        algorithms=["gd"],
        seeds=[0, 1],
        n_logs=20,
        out_dir=str(tmp_path / "r"),
    )
    train(cfg, show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = {j: [(m["step"], m["train_loss"][j]) for m in rows if "run_ids" in m] for j in (0, 1)}
    tol = float(np.median([v for j in losses for _, v in losses[j]]))
    st = steps_to_tolerance(tmp_path / "r", tol).set_index("run_id")
    for j in (0, 1):
        first = min((s for s, v in losses[j] if v <= tol), default=math.nan)
        got = st.loc[j, "steps_to_tol"]
        assert got == first or (math.isnan(first) and math.isnan(got))
    never = steps_to_tolerance(tmp_path / "r", -1.0)
    assert never["steps_to_tol"].isna().all() and (never["budget"] == 400).all()
    never["seed"] = [0, 1]
    assert np.allclose(C._log_steps(never).to_numpy(), math.log10(400))
