"""analysis/measures.py: the test profile end to end (seconds), and the Figure 3/4 helpers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import measures as AM
from sharpness import measures as M
from suite.captions import read_captions
from suite.claims import VERDICTS, compare_seeds, verdict
from suite.stats import Claim


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only spins on a shared machine (measured: 13 s of
    CPU for these files with one thread, 58 s with two under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_reproduce_test_profile(tmp_path):
    AM.reproduce("test", tmp_path / "results", tmp_path / "figures")
    for fig in (AM.FIG1, AM.FIG2):
        assert (tmp_path / "figures" / fig).stat().st_size > 10_000
    with open(tmp_path / "results" / "measures" / "claims.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(r["verdict"] in VERDICTS for r in rows)
    res = AM.load_results("test", tmp_path / "results")
    # the lambda_max row is the one verdict function applied to the runs' final Hessians
    sgd = [r["summary"]["lambda_max"] for r in res["runs"]["sgd"]]
    sam = [r["summary"]["lambda_max"] for r in res["runs"]["sam"]]
    g = compare_seeds(sgd, sam, lower_is_better=True)
    assert rows[0]["verdict"] == g.verdict and float(rows[0]["gap"]) == pytest.approx(g.gap, 1e-3)
    # each logged lambda_max is the top eigenvalue (an SLQ node at the end is never above it)
    s = res["runs"]["sgd"][0]["summary"]
    assert max(s["density_nodes"][0]) <= s["lambda_max"] * (1 + 1e-3)
    assert sum(s["density_weights"][0]) == pytest.approx(1.0, abs=1e-6)
    land = res["landscapes"]
    interp = land["interpolation"]["train"]
    assert [r["t"] for r in interp][0] == -0.5 and interp[-1]["t"] == 1.5
    # t = 0 of the interpolation is the ERM model itself: its loss is the 1-D slice at alpha 0
    at0 = next(r for r in interp if r["t"] == 0.0)["loss"]
    mid = next(r for r in land["sgd_seed0"]["slice_1d"] if r["alpha"] == 0.0)["loss"]
    assert at0 == pytest.approx(mid, rel=1e-6)
    # without deep-net runs Figure 3's row is "not run" and names the command that makes them
    fig3 = [r for r in rows if r["figure"] == AM.FIG3]
    assert len(fig3) == 1 and fig3[0]["verdict"] == "not run"
    assert "python -m analysis.reproduce --only deep_nets" in fig3[0]["note"]
    assert not (tmp_path / "figures" / AM.FIG3).exists()
    # every figure drawn has a caption; Figure 1 is the key figure
    caps = {c["file"]: c for c in read_captions(tmp_path / "results", "measures")}
    assert set(caps) == {AM.FIG1, AM.FIG2, AM.FIG4}
    assert caps[AM.FIG1]["key"] and not caps[AM.FIG4]["key"]
    assert (tmp_path / "figures" / AM.FIG4).stat().st_size > 10_000
    assert {r["figure"] for r in rows if r["verdict"] != "not run"} >= {AM.FIG1, AM.FIG4}
    # a second call reuses the finished runs
    before = (tmp_path / "results" / "measures" / "test" / "sgd_seed0" / "summary.json").stat()
    AM.reproduce("test", tmp_path / "results", tmp_path / "figures")
    after = (tmp_path / "results" / "measures" / "test" / "sgd_seed0" / "summary.json").stat()
    assert before.st_mtime_ns == after.st_mtime_ns
    # the runs go through suite.launch: --force retrains them (and re-measures the landscapes)
    from suite import launch

    land = tmp_path / "results" / "measures" / "test" / "landscapes.json"
    land_before = land.stat().st_mtime_ns
    with launch.configure(force=True):
        AM.reproduce("test", tmp_path / "results", tmp_path / "figures")
    forced = (tmp_path / "results" / "measures" / "test" / "sgd_seed0" / "summary.json").stat()
    assert forced.st_mtime_ns != after.st_mtime_ns and land.stat().st_mtime_ns != land_before


def test_rank_correlation_is_kendalls_tau():
    df = pd.DataFrame(
        {
            "m": [16] * 4 + [128] * 4,
            "rho": [0.1] * 8,
            "sharpness": [1, 2, 3, 4, 1, 2, 3, 4],
            "test_error": [0.1, 0.2, 0.4, 0.3, 0.4, 0.3, 0.2, 0.1],
        }
    )
    out = AM.rank_correlation(df).set_index("m")
    # pairs concordant - discordant over 6 pairs: (5 - 1) / 6 and (0 - 6) / 6
    assert out.loc[16, "kendall_tau"] == pytest.approx(4 / 6)
    assert out.loc[128, "kendall_tau"] == pytest.approx(-1.0)
    assert (out["n_runs"] == 4).all()


def test_exact_spectrum_of_least_squares():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 5, generator=g), torch.randn(30, generator=g)
    model = nn.Linear(5, 1, bias=False)

    def loss(out, t):
        return 0.5 * ((out.squeeze(-1) - t) ** 2).mean()

    ev = AM.exact_spectrum(model, loss, (X, y))
    ref = np.linalg.eigvalsh((X.double().T @ X.double() / 30).numpy())[::-1]
    np.testing.assert_allclose(ev, ref, rtol=1e-10)


# ------------------------------------------------------------- Figure 3 (deep-net runs, end to end)
def _deep_runs(results):
    """Five 1-epoch runs of the trainer (``analysis.deep_nets.runs.ensure_runs``, the deep_nets
    test profile's base): ERM, SAM at m = batch and m = 8, SAM with another rho, and one with
    label noise (which the pool must leave out)."""
    from analysis.deep_nets.profiles import PROFILES
    from analysis.deep_nets.runs import Spec, ensure_runs

    base = {**PROFILES["test"]["base"], "epochs": 1}
    variants = [
        {},
        {"sam_rho": 0.1},
        {"sam_rho": 0.1, "acc_steps": 4},
        {"sam_rho": 0.3},
        {"p_label_noise": 0.4},
    ]
    specs = [Spec.make({**base, **v}, 0) for v in variants]
    ensure_runs(specs, results / "deep_nets" / "test", runtime={"workers": 0, "device": "cpu"})
    return specs


def test_figure3_end_to_end(tmp_path):
    from scipy.stats import kendalltau

    from deep_nets.eval_sharpness import _examples
    from deep_nets.eval_sharpness import load_run as load_deep_run
    from sharpness.measures import m_sharpness

    results, figures = tmp_path / "results", tmp_path / "figures"
    with pytest.raises(FileNotFoundError, match="analysis.reproduce --only deep_nets"):
        AM.figure3(results, figures, "test")
    specs = _deep_runs(results)
    rows = [r.cells() for r in AM.figure3(results, figures, "test")]
    assert (figures / AM.FIG3).stat().st_size > 10_000
    df = pd.read_csv(results / "measures" / "test" / AM.FIG3_TABLE)
    st = AM.FIG3_SETTINGS["test"]
    # the pool: the four clean runs, not the label-noise one
    assert df["run"].nunique() == 4 and not df["run"].str.contains("noise").any()
    assert "1 with label noise" in rows[0]["note"]
    assert len(df) == 4 * len(st["ms"]) * len(st["rhos"])
    # one table entry recomputed by the loop path of m_sharpness on the same examples
    r0 = df.iloc[0]
    run = load_deep_run(r0["run"], torch.device("cpu"))
    x, y = _examples(run, "train", st["n_examples"], 0)
    ref = m_sharpness(
        run.model,
        F.cross_entropy,
        x,
        y,
        m=int(r0["m"]),
        rho=float(r0["rho"]),
        steps=st["steps"],
        error_fn=None,
    )
    assert r0["sharpness"] == pytest.approx(ref["sharpness"], rel=1e-5)
    summary = json.loads((Path(r0["run"]) / "summary.json").read_text())
    assert r0["test_error"] == summary["test_err_last"]
    # the row's gap is Kendall's tau at the smallest m minus at m = batch (scipy, by hand)
    m0, m1 = min(st["ms"]), max(st["ms"])

    def tau(m):
        g = df[df["m"] == m].sort_values("run")
        return kendalltau(g["sharpness"], g["test_error"]).statistic

    assert float(rows[0]["gap"]) == pytest.approx(tau(m0) - tau(m1), abs=1e-12)
    r0 = rows[0]
    assert r0["verdict"] == verdict(r0["gap"], r0["se"], r0["df"], Claim(r0["kind"], r0["sesoi"]))
    assert len(specs) == 5
    # the whole stage on these results, then notebooks/measures.ipynb on them (nbclient)
    AM.reproduce("test", results, figures)
    with open(results / "measures" / "claims.csv") as f:
        fig3 = [r for r in csv.DictReader(f) if r["figure"] == AM.FIG3]
    assert len(fig3) == len(st["rhos"]) and all(r["verdict"] != "not run" for r in fig3)
    caps = {c["file"]: c for c in read_captions(results, "measures")}
    assert "4 runs" in caps[AM.FIG3]["shows"]
    for f in figures.glob("*.png"):
        f.unlink()
    text = _run_notebook(results, figures)
    assert "kendall_tau" in text and "lambda_max" in text
    for fig in (AM.FIG1, AM.FIG2, AM.FIG3, AM.FIG4):
        assert (figures / fig).stat().st_size > 10_000


def _run_notebook(results: Path, figures: Path) -> str:
    """Execute notebooks/measures.ipynb in a real kernel on ``results`` (profile test); its text
    output."""
    import os

    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "SHARPNESS_RESULTS": str(results),
        "SHARPNESS_FIGURES": str(figures),
        "SHARPNESS_PROFILE": "test",
        "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    nb = nbformat.read(root / "notebooks" / "measures.ipynb", as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(root)}}
    )
    client.execute(env=env)
    return "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )


def test_correlations_against_scipy():
    """A hand-made table with ties: Kendall's tau-b and Spearman per (m, rho) equal scipy's; the
    gap is tau(small m) - tau(m = batch); the bootstrap SE equals an independent resampling
    written here (the same runs resampled for both m); identical columns give gap = SE = 0."""
    from scipy.stats import kendalltau, spearmanr

    err = [0.30, 0.32, 0.32, 0.35, 0.31, 0.40, 0.38, 0.33]
    s4 = [1.0, 2.0, 2.0, 4.0, 1.5, 7.0, 6.0, 3.0]  # nearly monotone in the error
    s128 = [5.0, 1.0, 3.0, 2.0, 4.0, 2.5, 1.0, 6.0]
    runs = [f"r{i}" for i in range(8)]
    df = pd.DataFrame(
        [
            {"run": r, "m": 4, "rho": 0.1, "sharpness": a, "test_error": e}
            for r, a, e in zip(runs, s4, err)
        ]
        + [
            {"run": r, "m": 128, "rho": 0.1, "sharpness": b, "test_error": e}
            for r, b, e in zip(runs, s128, err)
        ]
    )
    out = AM.rank_correlation(df).set_index("m")
    for m, col in ((4, s4), (128, s128)):
        assert out.loc[m, "kendall_tau"] == pytest.approx(kendalltau(col, err).statistic, 1e-12)
        assert out.loc[m, "spearman"] == pytest.approx(spearmanr(col, err).statistic, 1e-12)
    ts, tl, gap, se = AM.correlation_gap(df, 4, 128, 0.1, boot=300, seed=5)
    assert ts == pytest.approx(kendalltau(s4, err).statistic)
    assert gap == pytest.approx(kendalltau(s4, err).statistic - kendalltau(s128, err).statistic)
    rng = np.random.default_rng(5)
    a, b, e = np.array(s4), np.array(s128), np.array(err)
    d = []
    for _ in range(300):
        i = rng.integers(0, 8, 8)
        d.append(kendalltau(a[i], e[i]).statistic - kendalltau(b[i], e[i]).statistic)
    d = [x for x in d if math.isfinite(x)]
    assert se == pytest.approx(np.std(d, ddof=1), rel=1e-12)
    same = df.assign(sharpness=s4 + s4)
    assert AM.correlation_gap(same, 4, 128, 0.1, boot=50)[2:] == (0.0, 0.0)


# ------------------------------------------------------------- Figure 4 (diagonal linear nets)
def test_diagonal_net_hessian_equals_the_closed_form():
    """Away from a solution (the residual term diag(g) matters) the dense Hessian over (u, v)
    from sharpness.measures equals the written-out block matrix, and so do its eigenvalues."""
    g = np.random.default_rng(0)
    X, y = g.standard_normal((20, 6)), g.standard_normal(20)
    u, v = g.standard_normal(6), g.standard_normal(6)
    net = AM.DiagonalNet(u, v)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    H = M.HessianOperator(net, AM.half_mse, (Xt, yt)).dense().numpy()
    ref = AM.diagonal_hessian_closed_form(X, y, u, v)
    np.testing.assert_allclose(H, ref, rtol=1e-10, atol=1e-12)
    assert np.abs(X.T @ (X @ (u * v) - y) / 20).max() > 0.1  # far from a stationary point
    ev = AM.exact_spectrum(net, AM.half_mse, (Xt, yt))
    np.testing.assert_allclose(ev, np.linalg.eigvalsh(ref)[::-1], rtol=1e-9, atol=1e-12)


def test_diagonal_solutions_and_claims():
    """Seed 0 is the original notebook's data: GD and 1-SAM (rho 0.1, original convention) at
    its cell-3 setting end at its printed test losses (PAPERS.md#diagonal-notebook); lambda_max is
    the top eigenvalue of the closed-form Hessian at the final (u, v); the claims rows are paired by
    seed."""
    from diagonal_linear_nets.simulator import make_problem

    sol = AM.diagonal_solutions("test")
    by = {(r["algo"], r["seed"]): r for r in sol}
    assert by["gd", 0]["test_loss"] == pytest.approx(0.015747762611708224, rel=1e-6)
    assert by["1sam", 0]["test_loss"] == pytest.approx(0.0015235412218010903, rel=1e-6)
    assert by["nsam", 0]["test_loss"] == pytest.approx(0.016695513663723727, rel=1e-6)
    assert not any(r["diverged"] for r in sol)
    rows = [r.cells() for r in AM.fig4_claims(sol)]
    assert len(rows) == 4 and all(r["verdict"] in VERDICTS for r in rows)
    seeds = AM.DIAG_SEEDS["test"]
    d = np.array([by["gd", s]["l1"] - by["1sam", s]["l1"] for s in seeds])
    row = next(r for r in rows if r["claim"].startswith("1-SAM") and "beta" in r["claim"])
    assert row["gap"] == pytest.approx(d.mean()) and row["se"] == pytest.approx(
        d.std(ddof=1) / math.sqrt(len(d))
    )
    assert row["verdict"] == verdict(
        row["gap"], row["se"], row["df"], Claim(row["kind"], row["sesoi"])
    )
    for r in sol:
        P = make_problem(seed=r["seed"])
        u, v = np.array(r["u"]), np.array(r["v"])
        H = AM.diagonal_hessian_closed_form(P.X.numpy(), P.y.numpy(), u, v)
        assert r["lambda_max"] == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-9)
        assert r["l1"] == pytest.approx(np.abs(u * v).sum(), rel=1e-12)
