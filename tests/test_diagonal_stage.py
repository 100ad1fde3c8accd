"""The diagonal-linear-nets stage goes through suite.launch: a second call trains nothing, an
interrupted run (and only it) resumes to the uninterrupted result, --force retrains, a changed
profile retrains only what changed, and each Run pickles for worker processes."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from analysis import diagonal_linear_nets as dln
from diagonal_linear_nets.train import train
from suite import launch
from suite.captions import read_captions
from suite.rundir import read_json

SCALE = 0.002  # 20 .. 2000 iterations per experiment


class Recorder:
    """A suite.launch reporter that keeps what run_all did with each run."""

    def __init__(self) -> None:
        self.actions: dict[str, str] = {}

    def runs_planned(self, stage, runs) -> None:
        self.actions = {}

    def run_started(self, run) -> None:
        pass

    def run_ended(self, outcome) -> None:
        self.actions[outcome.name] = outcome.action


@pytest.fixture
def recorder():
    rec = Recorder()
    old = launch.set_reporter(rec)
    yield rec
    launch.set_reporter(old)


def _files(path: Path) -> tuple[str, str]:
    return (path / "metrics.jsonl").read_text(), (path / "summary.json").read_text()


def test_stage_skips_resumes_and_forces(tmp_path, recorder):
    res, figs = tmp_path / "results", tmp_path / "figures"
    runs = dln.experiment_runs("quick", res, SCALE)
    names = [r.name for r in runs]
    dln.run_experiments("quick", res, SCALE)
    assert recorder.actions == {n: "trained" for n in names}
    for r in runs:
        # the identity the launcher compares is exactly what the trainer stored
        assert read_json(r.out_dir / "config.json")["config"] == r.config
        back = pickle.loads(pickle.dumps(r.train))  # worker processes receive it pickled
        assert back.func is dln.train_experiment and back.args == r.train.args
    before = {r.name: _files(r.out_dir) for r in runs}

    # a second full reproduce() trains nothing, and draws and captions every figure
    dln.reproduce("test", res, figs)
    assert recorder.actions == {n: "skipped" for n in names}
    caps = read_captions(res, dln.FAMILY)
    assert sorted(c["file"] for c in caps) == sorted(p.name for p in figs.glob("*.png"))
    assert len(caps) == 5 and sum(c["key"] for c in caps) == 1
    assert all(c["shows"] and c["reading"] for c in caps)

    # one run interrupted mid-way (the Ctrl-C path, stopped by the hook), one summary lost:
    # only those two run again, each to the result it had
    cfgs = dln.experiment_configs("quick", res / dln.FAMILY, SCALE)
    stopped = cfgs["switch_erm_sam"]
    train(dataclasses.replace(stopped, overwrite=True, stop_after_iter=stopped.iters // 3))
    assert read_json(Path(stopped.out_dir) / "summary.json")["status"] == "stopped"
    (Path(cfgs["curves"].out_dir) / "summary.json").unlink()
    created = {r.name: (r.out_dir / "config.json").stat().st_mtime_ns for r in runs}
    dln.run_experiments("quick", res, SCALE)
    assert recorder.actions == {
        n: "resumed" if n in ("switch_erm_sam", "curves") else "skipped" for n in names
    }
    assert {r.name: _files(r.out_dir) for r in runs} == before
    # continued in their directories, not replaced (a fresh run writes a new config.json)
    assert {r.name: (r.out_dir / "config.json").stat().st_mtime_ns for r in runs} == created

    # another profile: only the experiments whose config differs run (paper adds gamma 1/200)
    dln.run_experiments("paper", res, SCALE)
    assert recorder.actions == {n: "skipped" for n in names} | {"theory_g200": "trained"}

    # --force retrains every run
    with launch.configure(force=True):
        dln.run_experiments("quick", res, SCALE)
    assert recorder.actions == {n: "trained" for n in names}
    assert {r.name: _files(r.out_dir) for r in runs} == before


def test_profiles():
    root = Path("/r")
    q, p, f = (dln.experiment_configs(x, root) for x in ("quick", "paper", "full"))
    assert set(p) == set(f) == set(q) | {"theory_g200"}
    assert q["fig6"].seeds == p["fig6"].seeds == [0] and f["fig6"].seeds == [0, 1, 2, 3, 4]
    assert q["fig6"].iters == 1_000_000 and q["grid"].iters == 10_001  # the paper's, not cut
    assert p["theory_g200"].iters == 1_000_000
    for name in q:  # every other experiment is the same run in every profile
        if name != "fig6":
            assert q[name] == p[name] == f[name]
    with pytest.raises(ValueError, match="profile"):
        dln.experiment_configs("huge", root)
