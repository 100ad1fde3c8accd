"""The deep-nets reproduction stage (analysis/deep_nets/) on its tiny "test" profile: every
experiment end to end (runs, figure, claims rows with suite verdicts), run reuse, clear errors on
missing results, and the notebook executed for real on the results it wrote."""

from __future__ import annotations

import csv
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from analysis import deep_nets as dn
from analysis.deep_nets.common import method
from analysis.deep_nets.experiments import EXPERIMENTS
from analysis.deep_nets.profiles import PROFILES
from analysis.deep_nets.runs import run_path
from analysis.stages import STAGES
from suite.claims import CLAIM_COLUMNS, VERDICTS
from suite.rundir import load_run, read_json

ROOT = Path(__file__).resolve().parent.parent
P = PROFILES["test"]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep_nets_stage")
    results, figures = root / "results", root / "figures"
    dn.reproduce("test", results, figures)
    with open(results / "deep_nets" / "claims.csv") as f:
        rows = list(csv.DictReader(f))
    return results, figures, rows


def _summary(results: Path, spec) -> dict:
    return load_run(run_path(results / "deep_nets" / "test", spec))["summary"]


def test_stage_is_registered():
    assert ("deep_nets", "analysis.deep_nets") in STAGES


@pytest.mark.parametrize("name", [n for n, e in EXPERIMENTS.items() if e.figure])
def test_each_experiment_draws_its_figure(stage, name):
    _, figures, _ = stage
    assert (figures / EXPERIMENTS[name].figure).stat().st_size > 5000


def test_every_figure_is_captioned_and_the_noisy_curves_are_key(stage):
    from suite.captions import read_captions

    results, figures, _ = stage
    caps = {c["file"]: c for c in read_captions(results, "deep_nets")}
    assert set(caps) == {e.figure for e in EXPERIMENTS.values() if e.figure}
    assert [f for f, c in caps.items() if c["key"]] == ["deep_nets_fig12_noisy_labels.png"]
    # the profile's setting is filled in (no format fields left), one line each
    assert "mlp on mnist1d" in caps["deep_nets_fig1_rho.png"]["shows"]
    assert "cnn on fashion_mnist" in caps["deep_nets_seminar.png"]["shows"]
    assert all("{" not in c["shows"] + c["reading"] for c in caps.values())


def test_claims_use_the_suite_columns_and_verdicts(stage):
    results, _, rows = stage
    with open(results / "deep_nets" / "claims.csv") as f:
        assert tuple(next(csv.reader(f))) == CLAIM_COLUMNS
    assert all(r["verdict"] in VERDICTS for r in rows)  # no legacy verdicts any more
    assert all(r["family"] == "deep_nets" and r["claim"] and r["ours"] for r in rows)
    figures = {r["figure"] for r in rows if r["figure"]}
    assert figures == {f"figures/{e.figure}" for e in EXPERIMENTS.values() if e.figure}
    # a best-validation row always has its last-epoch twin (Fig. 9 and the seminar keep the
    # last epoch only: their best epochs would repeat other rows)
    best = [r for r in rows if r["claim"].endswith("(at the best-validation epoch)")]
    last = {r["claim"] for r in rows if r["claim"].endswith("(at the last epoch)")}
    assert len(best) >= 8 and len(last) > len(best)
    assert all(r["claim"].replace("best-validation", "last") in last for r in best)
    # one seed: the seed spread is unknown, so no seed-based row can be decided either way (the
    # LookSAM cost row's repetitions are timing blocks, not seeds)
    seeded = [r for r in rows if r["profile"] == "test" and "time per step" not in r["claim"]]
    assert {r["verdict"] for r in seeded} <= {"within noise", "not run", "not comparable"}


def test_fig1_rows_carry_the_measured_numbers(stage):
    """The untuned Fig. 1 row: ERM vs SAM (m = batch) at the fixed rho, recomputed from the runs'
    scored sets (summary.json 'scored': the best and the last weights on every test example)."""
    results, _, rows = stage
    erm = _summary(results, method(P, 0))["scored"]
    sam = _summary(results, method(P, 0, rho=P["rho"]))["scored"]
    untuned = f"SAM with m = batch beats ERM (at rho {P['rho']:g}, untuned)"
    row = next(r for r in rows if r["claim"] == f"{untuned} (at the last epoch)")
    assert f"{100 * erm['last']['test_err']:.2f}%" in row["ours"]
    assert f"{100 * sam['last']['test_err']:.2f}%" in row["ours"]
    assert float(row["gap"]) == pytest.approx(
        100 * (erm["last"]["test_err"] - sam["last"]["test_err"]), abs=1e-3
    )
    row_b = next(r for r in rows if r["claim"] == f"{untuned} (at the best-validation epoch)")
    assert f"{100 * erm['best']['test_err']:.2f}%" in row_b["ours"]


def test_noisy_runs_log_the_three_curves(stage):
    results, _, _ = stage
    for spec in EXPERIMENTS["noisy"].runs.specs(P):  # ERM, SAM and m-SAM all on the noisy data
        run = load_run(run_path(results / "deep_nets" / "test", spec))
        assert run["config"]["config"]["p_label_noise"] == 0.6
        for r in run["metrics"]:
            assert r["train_err_noisy"] is not None and r["train_err_clean"] is not None


def test_runs_are_shared_and_reused(stage):
    results, _, _ = stage
    # ERM appears in five experiments but is trained once: one run directory per seed
    runs = sorted(p.name for p in (results / "deep_nets" / "test" / "runs").iterdir())
    assert sum(n.startswith("erm_") for n in runs) == 2  # the mnist1d base and the seminar base
    before = load_run(run_path(results / "deep_nets" / "test", method(P, 0)))["metrics"]
    info = dn.run_experiment("fig1", "test", results)
    assert info["trained"] == 0 and info["reused"] > 0
    assert load_run(run_path(results / "deep_nets" / "test", method(P, 0)))["metrics"] == before
    timings = dn.read_timings(results / "deep_nets" / "test")
    assert set(timings) == {*EXPERIMENTS, "_stage"}
    seconds = read_json(results / "deep_nets" / "test" / "run_seconds.json")
    assert set(seconds) == set(runs) and all(v["cpu_seconds"] > 0 for v in seconds.values())


@pytest.mark.parametrize("name", [n for n, e in EXPERIMENTS.items() if e.figure])
def test_reports_fail_clearly_without_results(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        dn.report(name, tmp_path / "results", "test", tmp_path / "figures")


def test_unknown_profile_and_experiment_are_named(tmp_path):
    with pytest.raises(ValueError, match="profile 'nope'"):
        dn.reproduce("nope", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="experiment 'nope'"):
        dn.reproduce("test", tmp_path, tmp_path, only=["nope"])


def test_notebook_runs_on_the_stage_results(stage, tmp_path, monkeypatch):
    results, _, _ = stage
    figures = tmp_path / "figs"
    monkeypatch.setenv("SHARPNESS_RESULTS", str(results))
    monkeypatch.setenv("SHARPNESS_FIGURES", str(figures))
    monkeypatch.setenv("SHARPNESS_PROFILE", "test")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    src = nbformat.read(ROOT / "notebooks" / "deep_nets.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in src.cells if c.cell_type == "code")  # committed clean
    NotebookClient(
        src, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    for e in EXPERIMENTS.values():
        assert (figures / e.figure).exists()
    assert not any(o.get("output_type") == "error" for c in src.cells for o in c.get("outputs", []))
    outputs = "".join(
        str(o.get("data", {}).get("text/plain", "")) + o.get("text", "")
        for c in src.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "within noise" in outputs and "fig1" in outputs


def test_notebook_without_results_stops_at_once_naming_the_command(tmp_path, monkeypatch):
    """On an empty results folder the notebook stops in its setup cell with
    ``analysis.report.missing_results``'s sentence (not later, on the first missing run)."""
    from nbclient.exceptions import CellExecutionError

    from analysis.report import missing_results

    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setenv("SHARPNESS_RESULTS", str(results))
    monkeypatch.setenv("SHARPNESS_FIGURES", str(tmp_path / "figs"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    src = nbformat.read(ROOT / "notebooks" / "deep_nets.ipynb", as_version=4)
    client = NotebookClient(
        src, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    with pytest.raises(CellExecutionError):
        client.execute()
    errors = [
        (i, o)
        for i, c in enumerate(src.cells)
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert len(errors) == 1
    i, err = errors[0]
    assert i == 1 and err["ename"] == "FileNotFoundError"  # the setup cell
    assert err["evalue"] == missing_results(results, "deep_nets")
    assert "python -m analysis.reproduce --only deep_nets" in err["evalue"]
