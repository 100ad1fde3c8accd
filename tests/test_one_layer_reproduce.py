"""The one_layer_relu_nets stage through suite.launch: the profiles' settings against the reference
notebook's (PAPERS.md#relu-nets, written out here), and run_all's skip / resume / retrain decisions
on the test profile (a second call trains nothing; a missing summary resumes that run only; a
changed base run retrains its loss-matched control; --force retrains all)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from analysis.one_layer_relu_nets import comparison_runs, run_dir, run_experiments
from analysis.one_layer_relu_nets.profiles import MATCHED, experiment_configs
from suite import launch
from suite.launch import run_state
from tests.core_utils import LaunchRecorder

# the reference notebook's 1-D setting (PAPERS.md#relu-nets)
NOTEBOOK = dict(
    task="reference1d",
    width=100,
    init="reference",
    reduction="sum",
    lr=5e-5,
    lr_schedule="linear",
    iterations=1_000_000,
    loss_threshold=1e-5,
    seeds=[0, 1, 2, 3, 4],
    normalize=True,
    rho_schedule="constant",
    batch_size=0,
)


def _flat(profile: str) -> dict:
    return {n: c for exp in experiment_configs(profile).values() for n, c in exp.items()}


def test_profiles_follow_the_notebook():
    quick, full, paper = _flat("quick"), _flat("full"), _flat("paper")
    assert set(quick) == {
        "exp1_main",
        "exp1_main" + MATCHED,
        "exp1_sweep",
        "exp1_sweep" + MATCHED,
        "exp2_teacher",
        "exp3_unnormalized",
        "exp3_normalized",
        "exp3_decaying",
    }
    assert set(full) == set(quick)
    # 1-SAM's rho grid in every profile (its claim's rho is chosen on the training fit)
    assert quick["exp1_sweep"].algorithms == ["1sam"] and quick["exp1_sweep"].rhos == [0.03, 0.1]
    assert full["exp1_sweep"].algorithms == ["nsam", "1sam", "msam"]
    # the teacher grid extends one step below 0.01, where validation picked the grid's end
    assert quick["exp2_teacher"].rhos == [0.003, 0.01, 0.03, 0.1, 0.3]
    assert set(paper) == set(full) | {"exp1_original", "exp1_original" + MATCHED}
    assert all(paper[n] == full[n] for n in full)  # paper = full + the notebook's loop
    for prof in (quick, full, paper):
        for name, cfg in prof.items():
            if name.startswith("exp1"):  # every experiment-1 run at the notebook's setting
                assert {k: getattr(cfg, k) for k in NOTEBOOK} == NOTEBOOK, name
    # ours: the same lr schedule for every algorithm; the notebook's: decayed for SAM only
    assert not any(c.lr_decay_sam_only for n, c in full.items())
    orig = paper["exp1_original"]
    assert orig.lr_decay_sam_only and orig.algorithms == ["gd", "nsam"] and orig.rhos == [0.3]
    assert paper["exp1_original" + MATCHED].lr_decay_sam_only
    assert paper["exp1_original" + MATCHED].algorithms == ["gd"]
    assert quick["exp1_main"].algorithms == ["gd", "nsam", "1sam"]
    assert full["exp1_main"].algorithms == ["gd", "nsam", "1sam", "msam"]
    assert full["exp1_main"].m == 4 and full["exp1_sweep"].rhos == [0.03, 0.1]


def test_run_all_skips_resumes_and_retrains_the_right_runs(tmp_path, monkeypatch):
    rec = LaunchRecorder()
    old = launch.set_reporter(rec)
    try:
        # first call with a relative results dir, the next ones with its absolute path: the
        # controls' match_losses_of (where the base lies) is not part of their identity
        monkeypatch.chdir(tmp_path)
        run_experiments("test", Path("."))
        bases = [n for n in _flat("test") if not n.endswith(MATCHED)]
        controls = [n for n in _flat("test") if n.endswith(MATCHED)]
        # two waves: every base comparison before any loss-matched control
        assert rec.planned == [bases, controls]
        assert rec.actions == {n: "trained" for n in bases + controls}
        runs = comparison_runs("test", tmp_path, False) + comparison_runs("test", tmp_path, True)
        assert all(run_state(r) == "done" for r in runs)  # Run.config == the stored config
        for r in runs:  # Run.train goes to worker processes: it must pickle
            pickle.loads(pickle.dumps(r.train))

        rec.actions.clear()
        run_experiments("test", tmp_path)
        assert set(rec.actions.values()) == {"skipped"} and len(rec.actions) == len(runs)

        teacher = run_dir(tmp_path, "test", "exp2_teacher")
        before = json.loads((teacher / "summary.json").read_text())
        (teacher / "summary.json").unlink()
        rec.actions.clear()
        run_experiments("test", tmp_path)
        assert {n for n, a in rec.actions.items() if a != "skipped"} == {"exp2_teacher"}
        assert rec.actions["exp2_teacher"] == "resumed"
        after = json.loads((teacher / "summary.json").read_text())
        assert after["runs"] == before["runs"]  # resumed from the saved groups

        # the base's final losses change: its control is another run now (retrained), the
        # base itself is kept
        main = run_dir(tmp_path, "test", "exp1_main") / "summary.json"
        s = json.loads(main.read_text())
        sam = next(r for r in s["runs"] if r["algorithm"] == "nsam")
        sam["train_loss"] *= 0.5
        main.write_text(json.dumps(s))
        rec.actions.clear()
        run_experiments("test", tmp_path)
        assert {n for n, a in rec.actions.items() if a != "skipped"} == {"exp1_main" + MATCHED}
        assert rec.actions["exp1_main" + MATCHED] == "trained"
        assert "match_digest" in rec.notes["exp1_main" + MATCHED]
        control = json.loads(
            (run_dir(tmp_path, "test", "exp1_main" + MATCHED) / "summary.json").read_text()
        )
        assert sam["train_loss"] in [r["loss_threshold"] for r in control["runs"]]

        rec.actions.clear()
        with launch.configure(force=True):
            run_experiments("test", tmp_path)
        assert set(rec.actions.values()) == {"trained"} and len(rec.actions) == len(runs)
    finally:
        launch.set_reporter(old)
