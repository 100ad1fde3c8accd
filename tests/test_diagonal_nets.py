"""Tests of the diagonal-linear-network simulator, theory and CLI (CPU, float64, small)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diagonal_linear_nets.simulator import (
    DTYPE,
    RunSpec,
    SimConfig,
    make_problem,
    sam_step,
    simulate,
)
from diagonal_linear_nets.theory import hyperbolic_entropy, predict_interpolator
from diagonal_linear_nets.train import TrainConfig, config_from_args, main, train

ORIG_GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.9]


def _autograd_sam_step(u, v, X, y, rho, gamma, m, param):
    """One m-SAM step written plainly with autograd: loop over chunks, perturb, re-evaluate."""
    n = X.shape[0]

    def beta(a, b):
        return a * b if param == "uv" else a * a - b * b

    gu_tot, gv_tot = torch.zeros_like(u), torch.zeros_like(v)
    for c in range(n // m):
        Xc, yc = X[c * m : (c + 1) * m], y[c * m : (c + 1) * m]
        a, b = u.clone().requires_grad_(), v.clone().requires_grad_()
        loss = ((Xc @ beta(a, b) - yc) ** 2).sum() / (2 * m)
        ga, gb = torch.autograd.grad(loss, (a, b))
        a2 = (u + rho * ga).requires_grad_()
        b2 = (v + rho * gb).requires_grad_()
        loss2 = ((Xc @ beta(a2, b2) - yc) ** 2).sum() / (2 * m)
        ha, hb = torch.autograd.grad(loss2, (a2, b2))
        gu_tot += ha / (n // m)
        gv_tot += hb / (n // m)
    return u - gamma * gu_tot, v - gamma * gv_tot


@pytest.mark.parametrize("param", ["uv", "u2v2"])
@pytest.mark.parametrize("m", [1, 4, 20])
def test_closed_form_step_equals_autograd(param, m):
    P = make_problem(20, 30, 3, 50, 0.0, seed=1)
    g = torch.Generator().manual_seed(0)
    u = 0.3 + 0.1 * torch.randn(30, generator=g, dtype=DTYPE)
    v = 0.1 * torch.randn(30, generator=g, dtype=DTYPE)
    rho, gamma = 0.3, 0.1
    A = torch.zeros(1, 20, 20, dtype=DTYPE)
    for c in range(20 // m):
        A[0, c * m : (c + 1) * m, c * m : (c + 1) * m] = 1.0 / m
    nu, nv = sam_step(
        u[None],
        v[None],
        P.X[None],
        P.y[None],
        A,
        torch.full((1, 20), 1 / 20, dtype=DTYPE),
        torch.tensor([[rho]], dtype=DTYPE),
        torch.tensor([[gamma]], dtype=DTYPE),
        param=param,
        normalize=False,
    )
    ru, rv = _autograd_sam_step(u, v, P.X, P.y, rho, gamma, m, param)
    torch.testing.assert_close(nu[0], ru, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(nv[0], rv, rtol=1e-12, atol=1e-14)


def test_msam_limits_and_rho_zero():
    cfg = SimConfig(iters=300)
    runs = [
        RunSpec("msam", rho=0.2, m=20),
        RunSpec("nsam", rho=0.2),
        RunSpec("msam", rho=0.2, m=1),
        RunSpec("1sam", rho=0.2),
        RunSpec("nsam", rho=0.0),
        RunSpec("1sam", rho=0.0),
        RunSpec("gd"),
    ]
    res = simulate(runs, cfg, [0, 150, 300])
    np.testing.assert_array_equal(res.beta[0], res.beta[1])
    np.testing.assert_array_equal(res.beta[2], res.beta[3])
    np.testing.assert_array_equal(res.beta[4], res.beta[6])
    np.testing.assert_array_equal(res.beta[5], res.beta[6])
    assert not np.array_equal(res.beta[1], res.beta[3])  # the algorithms do differ


def test_batched_grid_equals_single_runs_bitwise():
    cfg = SimConfig(iters=200, param="uv")
    runs = [
        RunSpec("gd", alpha=0.05),
        RunSpec("nsam", rho=0.1),
        RunSpec("1sam", rho=0.3, seed=1),
        RunSpec("msam", rho=0.2, m=5),
        RunSpec("sgd", batch_size=2, seed=2),
        RunSpec("1sam", rho=0.2, switch="erm_to_sam", switch_at=50),
    ]
    logs = [0, 7, 100, 200]
    batched = simulate(runs, cfg, logs)
    for i, r in enumerate(runs):
        one = simulate([r], cfg, logs)
        np.testing.assert_array_equal(one.beta[0], batched.beta[i])
        np.testing.assert_array_equal(one.test_loss[0], batched.test_loss[i])


def test_divergence_is_isolated():
    cfg = SimConfig(iters=400)
    good = RunSpec("1sam", rho=0.2)
    bad = RunSpec("gd", gamma=50.0)
    res = simulate([good, bad], cfg, [0, 100, 400])
    alone = simulate([good], cfg, [0, 100, 400])
    assert res.diverged_at[1] is not None and res.diverged_at[0] is None
    np.testing.assert_array_equal(res.beta[0], alone.beta[0])
    assert np.isnan(res.test_loss[1, -1])


def test_theory_matches_simulation_rho_01():
    cfg = SimConfig(iters=20_000)
    runs = [RunSpec("gd"), RunSpec("nsam", rho=0.1), RunSpec("1sam", rho=0.1)]
    res = simulate(runs, cfg, [20_000], track_alpha=True)
    P = make_problem()
    for i in range(3):
        pred = predict_interpolator(P.X.numpy(), P.y.numpy(), res.alpha_inf_flow[i])
        rel = np.linalg.norm(res.beta[i] - pred) / np.linalg.norm(pred)
        assert rel <= 0.01, (runs[i].label(), rel)
    # 1-SAM's effective initialization is smaller than n-SAM's, which is smaller than GD's.
    gm = [np.exp(np.log(res.alpha_inf_flow[i]).mean()) for i in range(3)]
    assert gm[2] < gm[1] < gm[0] == pytest.approx(0.1)


def test_dual_solver_against_primal_slsqp():
    from scipy.optimize import minimize

    rs = np.random.RandomState(3)
    X, a = rs.randn(4, 7), 0.3 + rs.rand(7)
    y = X @ np.r_[1.0, -0.5, np.zeros(5)]
    dual = predict_interpolator(X, y, a)
    prim = minimize(
        lambda b: hyperbolic_entropy(b, a),
        np.linalg.pinv(X) @ y,
        method="SLSQP",
        constraints={"type": "eq", "fun": lambda b: X @ b - y},
        options={"ftol": 1e-14, "maxiter": 500},
    )
    np.testing.assert_allclose(dual, prim.x, atol=1e-5)
    # KKT: grad phi_a(beta) = arcsinh(2 beta / a^2) lies in the row space of X.
    z = np.arcsinh(2 * dual / a**2)
    coef = np.linalg.lstsq(X.T, z, rcond=None)[0]
    assert np.linalg.norm(X.T @ coef - z) < 1e-8
    np.testing.assert_allclose(X @ dual, y, atol=1e-10)


def test_reference_grid_1sam_beats_gd_nsam_does_not():
    cfg = SimConfig(iters=10_000)
    runs = [RunSpec("gd")] + [RunSpec("nsam", rho=r) for r in ORIG_GRID]
    runs += [RunSpec("1sam", rho=2 * r) for r in ORIG_GRID]
    res = simulate(runs, cfg, [10_000])
    final = res.test_loss[:, -1]
    gd, ns, os_ = final[0], final[1:8], final[8:]
    assert gd / np.nanmin(os_) >= 10
    assert np.nanmin(ns) <= 1.5 * gd and np.nanmin(ns) >= gd / 1.5
    assert gd == pytest.approx(0.015057, rel=1e-3)  # the original notebook prints 0.015056


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--rho", "-0.1"], "--rho"),
        (["--algo", "msam", "--m", "3"], "--m"),
        (["--sparsity", "31"], "--sparsity"),
        (["--algo", "gd", "--param", "x"], "--param"),
        (["--rho", "nan"], "--rho"),
        (["--rho", "1sam=inf"], "--rho"),
        (["--gamma", "inf"], "--gamma"),
        (["--gamma", "nan"], "--gamma"),
        (["--gamma", "0.1", "nsam=-1"], "--gamma"),
        (["--gamma", "adam=0.1"], "--gamma"),
        (["--alpha", "nan"], "--alpha"),
        (["--noise", "inf"], "--noise"),
        (["--wd", "nan"], "--wd"),
        (["--sgd_skip", "-1"], "--sgd_skip"),
        (["--seed", "-1"], "--seed must"),
        (["--seeds", "0", "-1"], "--seeds"),
        (["--sgd_seed", str(2**32)], "--sgd_seed"),
        (["--n", "0"], "--n"),
        (["--log_points", "1"], "--log_points"),
        (["--gamma", "0"], "--gamma"),
        (["--alpha", "0.1", "0"], "--alpha"),
        (["--algo", "gd", "adam"], "--algo"),
    ],
)
def test_bad_flags_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        config_from_args(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_train_writes_run_format(tmp_path):
    cfg = TrainConfig(
        out_dir=str(tmp_path / "r"),
        algo=["gd", "1sam"],
        rho=[0.1],
        iters=50,
        log_points=5,
        theory=True,
    )
    path = train(cfg)
    conf = json.loads((path / "config.json").read_text())
    assert conf["config"]["algo"] == ["gd", "1sam"]
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert {r["run"] for r in rows} == {0, 1} and rows[-1]["iter"] == 50
    summ = json.loads((path / "summary.json").read_text())
    assert len(summ["runs"][1]["beta"]) == 30 and "alpha_inf_flow" in summ["runs"][1]
    with pytest.raises(FileExistsError):
        train(cfg)
    with pytest.raises(SystemExit) as e:  # refused, naming the flags that would allow it
        main(["--algo", "gd", "--iters", "5", "--out_dir", str(path)])
    assert e.value.code == 2
    assert main(["--algo", "gd", "--iters", "7", "--out_dir", str(path), "--overwrite"]) == 0
    conf = json.loads((path / "config.json").read_text())
    assert conf["config"]["algo"] == ["gd"] and conf["config"]["iters"] == 7
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert {r["run"] for r in rows} == {0} and rows[-1]["iter"] == 7  # old metrics gone


def test_per_algorithm_rho_and_gamma_and_original_convention():
    cfg = config_from_args(
        ["--algo", "gd", "nsam", "1sam", "--gamma", "0.5", "nsam=0.25", "--rho", "0.1", "1sam=0.3"]
        + ["--rho_convention", "original"]
    )
    runs = {r.algo: r for r in cfg.runs()}
    assert runs["gd"].gamma == 0.5 and runs["1sam"].gamma == 0.5 and runs["nsam"].gamma == 0.25
    assert runs["nsam"].rho == 0.1 and runs["1sam"].rho == pytest.approx(0.6)  # x2: original
    assert runs["gd"].rho == 0.0 and len(cfg.runs()) == 3


def test_cli_defaults_are_the_config_defaults(tmp_path, monkeypatch):
    """The parser is generated from TrainConfig: no flags gives TrainConfig's defaults (the
    data seed from --seed, the run directory named after the algorithms and the seed)."""
    monkeypatch.chdir(tmp_path)  # the default run directory is relative: none there yet
    cfg = config_from_args([])
    assert cfg == TrainConfig(out_dir="runs/diag_gd_nsam_1sam_seed0")
    cfg = config_from_args(["--seed", "3", "--algo", "gd", "--out_dir", str(tmp_path / "r")])
    assert cfg.seeds == [3] and cfg.algo == ["gd"] and cfg.out_dir == str(tmp_path / "r")
    assert config_from_args(["--seed", "3", "--seeds", "1", "2"]).seeds == [1, 2]


def test_help_example_renders_as_two_lines(capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--help"])
    out = capsys.readouterr().out
    assert "--gamma 0.5 nsam=0.333 \\\n        --rho 0.1" in out
    assert "--iters 10001 --out_dir runs/notebook_grid\n" in out


def test_status_diverged_vs_no_convergence(tmp_path):
    cfg = TrainConfig(
        out_dir=str(tmp_path / "r"),
        algo=["gd", "1sam"],
        rho=[0.9],
        rho_convention="original",
        gamma=0.5,
        iters=300,
        log_points=5,
        theory=True,
    )
    summ = json.loads((train(cfg) / "summary.json").read_text())
    gd, one = summ["runs"]
    assert one["status"] == "diverged" and one["diverged_at"] is not None
    assert one["final_test_loss"] is None and all(np.isfinite(one["u"]))  # last finite state
    assert gd["status"] == "no convergence" and gd["diverged_at"] is None  # 300 steps: finite
    assert "rel_dist_pred" not in gd and "rel_dist_pred" not in one  # never for these


def test_fig6_search_scores_every_setting():
    from analysis.diagonal_linear_nets import PAPER_FIG6, fig6_search

    out = fig6_search(alphas=(0.03, 0.1), gammas=(5 / 30,), rhos=(0.07,), iters=200)
    assert len(out) == 2 and out[0]["score"] <= out[1]["score"]
    for o in out:
        want = sum(abs(np.log10(o["test"][a] / PAPER_FIG6[a])) for a in ("gd", "nsam", "1sam"))
        assert o["score"] == pytest.approx(want)
        # the search's runs are the simulator's runs at that setting
        one = simulate(
            [RunSpec("1sam", rho=0.14, alpha=o["alpha"], gamma=5 / 30)], SimConfig(iters=200)
        )
        assert o["test"]["1sam"] == one.test_loss[0, -1]
