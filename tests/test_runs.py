"""The run format: atomic writes, run directories, seeds, devices, claims report."""

import json
import os

import pytest
import torch

from analysis.report import collect_claims, write_report
from sharpness import runs


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    f = tmp_path / "a.json"
    runs.atomic_write_json(f, {"x": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        runs.atomic_write_json(f, {"x": 2})
    assert json.loads(f.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_run_dir_records_provenance_and_refuses_overwrite(tmp_path):
    rd = runs.create_run_dir(tmp_path / "r", {"rho": 0.05, "seed": 1}, device="cpu")
    cfg = rd.config
    assert cfg["config"] == {"rho": 0.05, "seed": 1}
    assert set(cfg["git"]) == {"commit", "dirty"}
    assert cfg["versions"]["torch"] == torch.__version__
    assert cfg["device"].startswith("cpu")
    rd.log({"step": 1, "loss": 0.5})
    rd.log({"step": 2, "loss": float("nan")})
    rd.write_summary({"final": 0.1})
    with pytest.raises(FileExistsError, match="--resume"):
        runs.create_run_dir(tmp_path / "r", {"rho": 0.1})
    again = runs.create_run_dir(tmp_path / "r", {"rho": 0.1}, resume=True)
    assert again.config["config"]["rho"] == 0.05  # resume keeps the stored config
    run = runs.load_run(tmp_path / "r")
    assert run["metrics"][0] == {"step": 1, "loss": 0.5}
    assert run["summary"] == {"final": 0.1}
    rd.truncate_metrics(1)
    assert len(rd.metrics()) == 1


def test_torn_last_metrics_line_is_ignored(tmp_path):
    rd = runs.create_run_dir(tmp_path / "r", {})
    rd.log({"step": 1})
    with open(rd.metrics_path, "a") as f:
        f.write('{"step": 2, "lo')  # crash mid-write
    assert rd.metrics() == [{"step": 1}]


def test_seeds_give_independent_reproducible_streams():
    a, b = runs.make_seeds(3), runs.make_seeds(3)
    assert torch.equal(torch.rand(5, generator=a.init), torch.rand(5, generator=b.init))
    c = runs.make_seeds(3)
    assert not torch.equal(torch.rand(5, generator=c.init), torch.rand(5, generator=c.data))
    with pytest.raises(ValueError, match="seed"):
        runs.make_seeds(-1)


def test_select_device():
    assert runs.select_device("cpu") == torch.device("cpu")
    assert runs.select_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="--device"):
        runs.select_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runs.select_device("cuda")


def test_claims_tables_and_report(tmp_path):
    runs.write_claims(
        tmp_path / "fam" / "claims.csv",
        [
            {"family": "fam", "claim": "a | b", "paper": "1", "ours": "2", "verdict": "partly"},
            {"family": "fam", "claim": "c", "paper": "NA", "ours": "", "verdict": "n/a"},
        ],
    )
    with pytest.raises(ValueError, match="verdict"):
        runs.write_claims(tmp_path / "x.csv", [{"verdict": "maybe"}])
    df = collect_claims(tmp_path)
    assert list(df["verdict"]) == ["partly", "n/a"]  # "n/a" and "NA" are text, not missing
    assert list(df["paper"]) == ["1", "NA"]
    md = write_report(tmp_path).read_text()
    assert "a \\| b" in md and "partly: 1, n/a: 1" in md


def test_progress_bar_turns_off_without_a_terminal():
    # pytest captures stderr, so it is not a terminal here: the bar must be disabled
    bar = runs.progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]
    assert not runs.progress(range(3), disable=False).disable  # the caller may force it on
