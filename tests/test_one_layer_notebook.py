"""The stage pipeline on the test profile, then the notebook executed for real with nbclient."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient

from analysis.one_layer_relu_nets import FAMILY, reproduce
from suite.captions import read_captions
from suite.claims import CLAIM_COLUMNS, VERDICTS

ROOT = Path(__file__).resolve().parents[1]


def test_test_profile_reproduce_then_notebook(tmp_path, monkeypatch):
    results, figures = tmp_path / "results", tmp_path / "figures"
    reproduce("test", results, figures)
    reader = csv.DictReader((results / FAMILY / "claims.csv").open())
    assert tuple(reader.fieldnames) == CLAIM_COLUMNS
    rows = list(reader)
    # exp 1: 3 measures + their matched rows for n-SAM 0.3, kinks + matched for 1-SAM and m-SAM
    # at 0.3 and for the 6 sweep settings, 3 measures + matched for the notebook's loop (n-SAM
    # 0.3, lr decayed for SAM only); exp 2: 3; exp 3: time-to-tolerance for 2 algorithms x 2
    # rhos + 3 per algorithm
    assert len(rows) == 6 + 2 * 2 + 2 * 6 + 6 + 3 + 4 + 6
    notebook = [r for r in rows if "(notebook lr)" in r["claim"]]
    assert len(notebook) == 6 and all("for SAM only" in r["note"] for r in notebook)
    assert not any("for SAM only" in r["note"] for r in rows if r not in notebook)
    assert all(r["verdict"] in VERDICTS and r["family"] == FAMILY and r["ours"] for r in rows)
    assert all(r["profile"] == "test" and r["gap"] and r["se"] for r in rows)
    # every row pre-registered: its kind and sesoi from the stage's Claim constants
    assert all(r["kind"] in ("effect", "null") and float(r["sesoi"]) > 0 for r in rows)
    teacher = [r for r in rows if r["claim"].startswith("teacher-student")]
    assert [r["kind"] for r in teacher] == ["effect", "null", "effect"]
    assert all(float(r["df"]) == 1.0 for r in teacher)  # 2 seeds: t on 1 df, paired by example
    # at 300 iterations GD does not reach the tolerance: convergence cannot be timed here
    timed = [r for r in rows if "reaches the training loss" in r["claim"]]
    assert len(timed) == 4 and {r["verdict"] for r in timed} == {"not comparable"}
    assert "suite's extension" in teacher[0]["note"]
    # the per-example test losses are the stored test losses (the pairing is on those examples)
    from analysis.one_layer_relu_nets.runs import runs_frame, test_outcomes

    t = results / FAMILY / "test_exp2_teacher"
    df = runs_frame(t)
    got = [o.values.mean() for o in test_outcomes(t, df)]
    assert np.allclose(got, df["test_loss"].astype(float), rtol=1e-12)
    names = ("fits", "simplicity", "over_training", "teacher", "convergence")
    for name in names:
        assert (figures / f"{FAMILY}_{name}.png").stat().st_size > 5000
    captions = {c["file"]: c for c in read_captions(results, FAMILY)}
    assert set(captions) == {f"{FAMILY}_{n}.png" for n in names}
    assert [f for f, c in captions.items() if c["key"]] == [f"{FAMILY}_simplicity.png"]
    assert "T = 3e+02, seeds 0-1" in captions[f"{FAMILY}_fits.png"]["shows"]
    assert "notebook lr" in captions[f"{FAMILY}_simplicity.png"]["shows"]
    # a second call reuses the complete runs (same config) instead of failing or retraining
    before = (results / FAMILY / "test_exp2_teacher" / "summary.json").stat().st_mtime_ns
    reproduce("test", results, figures)
    assert (results / FAMILY / "test_exp2_teacher" / "summary.json").stat().st_mtime_ns == before

    nb_figures = tmp_path / "nb_figures"
    monkeypatch.setenv("SHARPNESS_RESULTS", str(results))
    monkeypatch.setenv("SHARPNESS_FIGURES", str(nb_figures))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(ROOT / "notebooks" / f"{FAMILY}.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    assert (nb_figures / f"{FAMILY}_teacher.png").exists()
    text = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "profile: test" in text and "verdict" in text
