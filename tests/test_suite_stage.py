"""suite.stage.run_stage on a small real stage: runs launched once per wave (a shared run once),
a wave-1 experiment built after wave 0 finished, reports, captions, claims.csv and timings."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest

from suite import launch
from suite.captions import read_captions
from suite.claims import ClaimRow, gap
from suite.launch import Run
from suite.rundir import create_run_dir, read_json
from suite.stage import Experiment, StageContext, run_stage
from tests.core_utils import LaunchRecorder

PROFILES = {"test": {"seeds": [0, 1], "value": 1.0}, "quick": {"seeds": [0, 1, 2], "value": 2.0}}


def train(cfg: dict, out: str, resume: bool) -> None:
    run = create_run_dir(out, cfg, resume=resume)
    run.log({"step": 0, "loss": cfg["value"] + cfg["seed"]})
    run.write_summary({"status": "finished", "loss": cfg["value"] + cfg["seed"]})


def _run(ctx: StageContext, name: str, **cfg) -> Run:
    out = ctx.root / name
    return Run(name, out, cfg, functools.partial(train, cfg, str(out)))


def base_runs(ctx: StageContext) -> list[Run]:
    return [_run(ctx, f"base{s}", seed=s, value=ctx.P["value"]) for s in ctx.P["seeds"]]


def shifted_runs(ctx: StageContext) -> list[Run]:
    return [_run(ctx, "base0", seed=0, value=ctx.P["value"]), _run(ctx, "shift", seed=5, value=0)]


def after_runs(ctx: StageContext) -> list[Run]:
    # described from wave 0's results: the base runs must be finished when this is called
    loss = read_json(ctx.root / "base0" / "summary.json")["loss"]
    return [_run(ctx, "after", seed=0, value=loss)]


def loss(ctx: StageContext, name: str) -> float:
    return read_json(ctx.root / name / "summary.json")["loss"]


def report_a(ctx: StageContext) -> list[ClaimRow]:
    ctx.figure("a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    losses = [loss(ctx, f"base{s}") for s in ctx.P["seeds"]]
    ours = f"{losses}, trained now: {ctx.trained_now(base_runs(ctx))}"
    return [ClaimRow("P", "losses below 10", "<10", ours, stat=gap(losses, 10.0), figure="a.png")]


def report_b(ctx: StageContext) -> list[ClaimRow]:  # draws nothing: no caption
    return [ClaimRow("P", "after = base0", "=", "", stat=gap(loss(ctx, "after") - 1, se=0.0))]


EXPERIMENTS = [
    Experiment(
        "a",
        "a.png",
        base_runs,
        report_a,
        shows=lambda c: f"{len(c.P['seeds'])} seeds.",
        reading="Lower is better.",
        key=True,
    ),
    Experiment("shared", "", shifted_runs, lambda ctx: []),
    Experiment("b", "b.png", after_runs, report_b, shows="never shown", reading="-", wave=1),
]


def test_run_stage_launches_reports_captions_and_writes_claims(tmp_path):
    res, figs = tmp_path / "results", tmp_path / "figures"
    rec = LaunchRecorder()
    old = launch.set_reporter(rec)
    try:
        rows = run_stage("fam", EXPERIMENTS, PROFILES, "test", res, figs)
        # one run_all per wave; base0, needed by two experiments, launched once
        assert rec.planned == [["base0", "base1", "shift"], ["after"]]
        assert rec.actions == {n: "trained" for n in ("base0", "base1", "shift", "after")}
        with open(res / "fam" / "claims.csv") as f:
            written = list(csv.DictReader(f))
        assert [r["claim"] for r in written] == ["losses below 10", "after = base0"]
        assert [r["verdict"] for r in written] == ["reproduced", "within noise"]
        assert {(r["family"], r["profile"]) for r in written} == {("fam", "test")}
        assert [r["claim"] for r in rows] == [r["claim"] for r in written]
        assert written[0]["ours"] == "[1.0, 2.0], trained now: True"  # the launch outcomes
        caps = read_captions(res, "fam")  # only the figure the report drew
        assert caps == [
            {"file": "a.png", "shows": "2 seeds.", "reading": "Lower is better.", "key": True}
        ]
        t = read_json(res / "fam" / "timings.json")
        assert (t["a"]["runs"], t["a"]["runs_counted"], t["a"]["trained"]) == (2, 2, 2)
        assert (t["shared"]["runs"], t["shared"]["runs_counted"]) == (2, 1)  # base0 is a's
        assert t["_stage"]["experiments"] == ["a", "shared", "b"]
        assert set(read_json(res / "fam" / "run_seconds.json")) == {
            "base0",
            "base1",
            "shift",
            "after",
        }
        # a second call reuses every run
        rec.actions.clear()
        rows = run_stage("fam", EXPERIMENTS, PROFILES, "test", res, figs)
        assert set(rec.actions.values()) == {"skipped"}
        assert rows[0]["ours"].endswith("trained now: False")
        assert read_json(res / "fam" / "timings.json")["a"]["reused"] == 2
    finally:
        launch.set_reporter(old)
    with pytest.raises(ValueError, match="choose from test, quick, full, paper"):
        run_stage("fam", EXPERIMENTS, PROFILES, "tiny", res, figs)


def test_claims_rows_of_another_profile_keep_it(tmp_path):
    rows = run_stage(
        "fam",
        [Experiment("x", "", lambda ctx: [], lambda ctx: [])],
        PROFILES,
        "quick",
        tmp_path,
        tmp_path / "f",
        extra_rows=lambda ctx: [ClaimRow("P", "at paper scale", "x", "not run", profile="paper")],
    )
    assert [(r["profile"], r["verdict"]) for r in rows] == [("paper", "not run")]
    assert Path(tmp_path / "fam" / "claims.csv").exists()
