"""Execute notebooks/diagonal_linear_nets.ipynb for real on a small results dir."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from analysis.diagonal_linear_nets import reproduce
from suite.rundir import read_json

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_runs_on_small_results(tmp_path, monkeypatch):
    results, figures = tmp_path / "results", tmp_path / "figures"
    reproduce("quick", results, figures, scale=0.005)  # tiny: ~50-500 iterations per experiment
    assert (results / "diagonal_linear_nets" / "claims.csv").exists()
    assert read_json(results / "diagonal_linear_nets" / "profile.json")["scale"] == 0.005
    for f in list(figures.glob("*.png")):
        f.unlink()
    monkeypatch.setenv("SHARPNESS_RESULTS", str(results))
    monkeypatch.setenv("SHARPNESS_FIGURES", str(figures))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(ROOT / "notebooks" / "diagonal_linear_nets.ipynb", as_version=4)
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    names = sorted(p.name for p in figures.glob("*.png"))
    assert names == sorted(
        f"diagonal_linear_nets_{w}.png" for w in ["curves", "rho_grid", "switch", "fig6", "theory"]
    )
    assert any("claim" in str(c.get("outputs")) for c in nb.cells if c.cell_type == "code")
