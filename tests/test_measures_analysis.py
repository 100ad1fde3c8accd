"""analysis/measures/: the test profile end to end (seconds), and the Figure 3/4 helpers."""

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
from suite.claims import VERDICTS, verdict
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
    results, figures = tmp_path / "results", tmp_path / "figures"
    AM.reproduce("test", results, figures)
    for fig in (AM.FIG1, AM.FIG2):
        assert (figures / fig).stat().st_size > 10_000
    with open(results / "measures" / "claims.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(r["verdict"] in VERDICTS for r in rows)
    res = AM.load_results("test", results)
    P = AM.PROFILES["test"]
    # the lambda_max row: log(SGD / SAM) of the runs' final Hessians paired by seed (df 1); two
    # epochs do not fit the training set, so the pre-registered precondition makes it (and the
    # landscape row) "not comparable"
    sgd = [r["final"]["lambda_max"] for r in res["runs"]["sgd"]]
    sam = [r["final"]["lambda_max"] for r in res["runs"]["sam"]]
    d = np.log(np.array(sgd) / np.array(sam))
    assert float(rows[0]["gap"]) == pytest.approx(d.mean(), 1e-3)
    assert float(rows[0]["se"]) == pytest.approx(d.std(ddof=1) / math.sqrt(2), 1e-3)
    assert float(rows[0]["df"]) == 1 and rows[0]["kind"] == "effect"
    fig12 = [r for r in rows if r["figure"] in (AM.FIG1, AM.FIG2)]
    assert len(fig12) == 3 and all(r["verdict"] == "not comparable" for r in fig12)
    assert all("fit their training set" in r["note"] for r in fig12)

    # the same runs as if they fitted: the lambda_max row is judged; the ratio row only when the
    # baseline has a separated top eigenvalue (SGD lambda_max / lambda_5 >= 3)
    def final(o, **kw):
        return [{**r, "final": {**r["final"], **kw}} for r in res["runs"][o]]

    fit = {o: final(o, train_err=0.0, ratio=1.6 if o == "sgd" else 1.5) for o in ("sgd", "sam")}
    lam, ratio = (r.cells() for r in AM.spectrum_rows(fit))
    assert lam["verdict"] != "not comparable" and "measured at minima" in lam["note"]
    assert ratio["verdict"] == "not comparable" and "separated top eigenvalue" in ratio["note"]
    outlier = {o: final(o, train_err=0.0, ratio=6.0 if o == "sgd" else 2.0) for o in fit}
    ratio = AM.spectrum_rows(outlier)[1].cells()
    assert ratio["verdict"] != "not comparable" and ratio["gap"] == pytest.approx(math.log(3))
    # each lambda_max is the top eigenvalue (an SLQ node at the end is never above it)
    s = res["runs"]["sgd"][0]["final"]
    assert max(s["density_nodes"][0]) <= s["lambda_max"] * (1 + 1e-3)
    assert sum(s["density_weights"][0]) == pytest.approx(1.0, abs=1e-6)
    assert s["ratio"] == pytest.approx(s["lambda_max"] / s["eigenvalues"][4]) and s["ratio"] >= 1
    land = res["landscapes"]
    interp = land["interpolation"]["train"]
    assert [r["t"] for r in interp][0] == -0.5 and interp[-1]["t"] == 1.5
    # t = 0 of the interpolation is the ERM model itself: its loss is the 1-D slice at alpha 0
    at0 = next(r for r in interp if r["t"] == 0.0)["loss"]
    mid = next(r for r in land["sgd_seed0"]["slice_1d"] if r["alpha"] == 0.0)["loss"]
    assert at0 == pytest.approx(mid, rel=1e-6)
    # ... and t = 1 is the ERM -> SAM model: its loss differs (SAM trained its last epoch)
    at1 = next(r for r in interp if r["t"] == 1.0)["loss"]
    assert at1 != pytest.approx(at0, rel=1e-6)
    _check_trainer_runs(res, P)
    # without deep-net runs Figure 3's row is "not run" and names the command that makes them
    fig3 = [r for r in rows if r["figure"] == AM.FIG3]
    assert len(fig3) == 1 and fig3[0]["verdict"] == "not run"
    assert "python -m analysis.reproduce --only deep_nets" in fig3[0]["note"]
    assert not (figures / AM.FIG3).exists()
    # every figure drawn has a caption; Figure 1 is the key figure
    caps = {c["file"]: c for c in read_captions(results, "measures")}
    assert set(caps) == {AM.FIG1, AM.FIG2, AM.FIG4}
    assert caps[AM.FIG1]["key"] and not caps[AM.FIG4]["key"]
    # two epochs do not fit the training set: the captions say what was measured
    assert "not minima" in caps[AM.FIG1]["shows"] and "not minima" in caps[AM.FIG2]["shows"]
    assert (figures / AM.FIG4).stat().st_size > 10_000
    assert {r["figure"] for r in rows if r["verdict"] != "not run"} >= {AM.FIG1, AM.FIG4}
    # a second call reuses the finished runs and their measurements
    run0 = Path(res["runs"]["sgd"][0]["path"])
    hess = run0 / "measures" / "hessian_epoch1" / "result.json"
    stamps = [(run0 / "summary.json").stat().st_mtime_ns, hess.stat().st_mtime_ns]
    AM.reproduce("test", results, figures)
    assert stamps == [(run0 / "summary.json").stat().st_mtime_ns, hess.stat().st_mtime_ns]
    # a measurement of another checkpoint file (its SHA-256) is measured again
    stored = json.loads(hess.read_text())
    hess.write_text(json.dumps({**stored, "checkpoint_sha256": "0" * 64}))
    AM.load_results("test", results, measure=True)
    assert json.loads(hess.read_text())["checkpoint_sha256"] == stored["checkpoint_sha256"]
    # without measuring (the notebook), a missing measurement names the stage's command
    hess.unlink()
    with pytest.raises(FileNotFoundError, match="analysis.reproduce --only measures"):
        AM.load_results("test", results)
    # the runs go through suite.launch: --force retrains them
    from suite import launch

    with launch.configure(force=True):
        AM.reproduce("test", results, figures)
    assert (run0 / "summary.json").stat().st_mtime_ns != stamps[0]


def _check_trainer_runs(res, P):
    """The spectrum runs are deep_nets/train.py runs with the profile's flags, measured from the
    checkpoints of the measured epochs: one lambda_max recomputed here from epoch 1's weights; the
    curve's errors are the trainer's epoch rows; the ERM -> SAM run replays the ERM run until the
    switch, then trains with SAM."""
    from deep_nets.eval_sharpness import _examples
    from deep_nets.eval_sharpness import load_run as load_deep_run
    from suite.rundir import load_run

    sam0 = Path(res["runs"]["sam"][0]["path"])
    conf = json.loads((sam0 / "config.json").read_text())["config"]
    assert conf["sam_rho"] == P["rho"] and conf["model"] == "mlp" and conf["dataset"] == "mnist1d"
    assert [r["epoch"] for r in res["runs"]["sam"][0]["curve"]] == list(P["eval_epochs"])
    run = load_deep_run(str(sam0 / "epoch_1.pt"), torch.device("cpu"))
    x, y = _examples(run, "train", P["hessian"]["n_examples"], 0)
    op = M.HessianOperator(run.model, F.cross_entropy, (x, y), dtype=torch.float64)
    top = float(np.linalg.eigvalsh(op.dense().numpy())[-1])
    assert res["runs"]["sam"][0]["curve"][0]["lambda_max"] == pytest.approx(top, rel=1e-3)
    rows = [r for r in load_run(sam0)["metrics"] if r.get("epoch_end")]
    assert res["runs"]["sam"][0]["curve"][0]["train_err"] == rows[0]["train_err"]
    ft = load_run(sam0.parent / next(p.name for p in sam0.parent.iterdir() if "from" in p.name))
    erm = load_run(Path(res["runs"]["sgd"][0]["path"]))
    ft_rows, erm_rows = ([r for r in x["metrics"] if r.get("epoch_end")] for x in (ft, erm))
    assert ft_rows[0]["train_loss"] == erm_rows[0]["train_loss"] and ft_rows[0]["rho"] == 0
    assert (
        ft_rows[-1]["rho"] == P["rho"] and ft_rows[-1]["train_loss"] != erm_rows[-1]["train_loss"]
    )


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
    # the bootstrap resamples seeds: these five runs share seed 0, so nothing decides (df 0)
    assert rows[0]["df"] == 0 and math.isnan(rows[0]["se"])
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
    ts, tl, gap, se, k = AM.correlation_gap(df, 4, 128, 0.1, boot=300, seed=5)
    assert k == 8  # without clusters every run is its own
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
    assert AM.correlation_gap(same, 4, 128, 0.1, boot=50)[2:] == (0.0, 0.0, 8)
    # seed clusters: a draw takes whole seeds (every run of the seed), as resampled here
    seed_of = {r: i % 3 for i, r in enumerate(runs)}  # three seeds of 3, 3 and 2 runs
    *_, se_c, k = AM.correlation_gap(df, 4, 128, 0.1, boot=300, seed=5, clusters=seed_of)
    assert k == 3
    groups = [np.array([i for i in range(8) if i % 3 == c]) for c in range(3)]
    rng = np.random.default_rng(5)
    d = []
    for _ in range(300):
        i = np.concatenate([groups[j] for j in rng.integers(0, 3, 3)])
        d.append(kendalltau(a[i], e[i]).statistic - kendalltau(b[i], e[i]).statistic)
    d = [x for x in d if math.isfinite(x)]
    assert se_c == pytest.approx(np.std(d, ddof=1), rel=1e-12)
    # one seed has no spread to resample: the SE is unknown, not 0 (which would decide)
    one = AM.correlation_gap(df, 4, 128, 0.1, boot=50, clusters=dict.fromkeys(runs, 0))
    assert math.isnan(one[3]) and one[4] == 1


def test_figure3_test_error_is_the_scored_one():
    """Fig. 3's test error of a run: the last weights' error on every scored test example
    (summary.json "scored", e.g. mnist1d's generated test set) when the run has it, else the
    metrics rows' test_err_last."""
    from analysis.measures.runs import test_error

    scored = {"test_err_last": 0.30, "scored": {"last": {"test_err": 0.25}, "n_test": 100_000}}
    assert test_error(scored) == 0.25 and test_error({"test_err_last": 0.30}) == 0.30
    assert test_error(scored, "test_err_at_best_val") is None


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
    d = np.log([by["gd", s]["l1"] / by["1sam", s]["l1"] for s in seeds])
    row = next(r for r in rows if r["claim"].startswith("1-SAM") and "beta" in r["claim"])
    assert row["gap"] == pytest.approx(d.mean()) and row["se"] == pytest.approx(
        d.std(ddof=1) / math.sqrt(len(d))
    )
    assert row["df"] == len(seeds) - 1 and row["kind"] == "effect"
    assert row["verdict"] == verdict(
        row["gap"], row["se"], row["df"], Claim(row["kind"], row["sesoi"])
    )
    # n-SAM's and 1-SAM's lambda_max rows are the papers' null claims, tested by equivalence
    nulls = [r for r in rows if r["kind"] == "null"]
    assert len(nulls) == 3 and all(r["sesoi"] == pytest.approx(math.log(1.05)) for r in nulls)
    for r in sol:
        P = make_problem(seed=r["seed"])
        u, v = np.array(r["u"]), np.array(r["v"])
        H = AM.diagonal_hessian_closed_form(P.X.numpy(), P.y.numpy(), u, v)
        assert r["lambda_max"] == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-9)
        assert r["l1"] == pytest.approx(np.abs(u * v).sum(), rel=1e-12)
