"""analysis/measures.py: the test profile end to end (seconds), and the Figure 3/4 helpers."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis import measures as AM
from suite.claims import VERDICTS, compare_seeds


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
    # a second call reuses the finished runs
    before = (tmp_path / "results" / "measures" / "test" / "sgd_seed0" / "summary.json").stat()
    AM.reproduce("test", tmp_path / "results", tmp_path / "figures")
    after = (tmp_path / "results" / "measures" / "test" / "sgd_seed0" / "summary.json").stat()
    assert before.st_mtime_ns == after.st_mtime_ns


def test_rank_correlation_is_kendalls_tau():
    df = pd.DataFrame({
        "m": [16] * 4 + [128] * 4, "rho": [0.1] * 8,
        "sharpness": [1, 2, 3, 4, 1, 2, 3, 4], "test_error": [.1, .2, .4, .3, .4, .3, .2, .1],
    })  # fmt: skip
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
