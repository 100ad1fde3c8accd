"""Training loop of one_layer_relu_nets: batched == single, stopping, schedules, run format."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from one_layer_relu_nets.data import reference_1d
from one_layer_relu_nets.engine import Config, load_params, make_dataset, run_group, train
from one_layer_relu_nets.model import Params, forward, init_params

SMALL_TEACHER = dict(
    task="teacher",
    d=2,
    teacher_width=2,
    n_train=8,
    n_test=50,
    width=10,
    init="standard",
    reduction="mean",
    lr=0.2,
)


def _close(a: Params, b: Params, i: int | None = None) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x if i is None else x[i], y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alg", ["nsam", "1sam", "sgd"])
def test_batched_runs_equal_single_runs(alg):
    cfg = Config(
        **SMALL_TEACHER,
        algorithms=[alg],
        iterations=60,
        loss_threshold=0.0,
        batch_size=4 if alg == "sgd" else 0,
    )
    data = make_dataset(cfg)
    rhos, seeds = [0.05, 0.2, 0.05, 0.2], [0, 0, 1, 1]
    batched = run_group(cfg, data, alg, rhos, seeds)
    for i, (r, s) in enumerate(zip(rhos, seeds, strict=True)):
        single = run_group(cfg, data, alg, [r], [s])
        _close(batched.params, Params(*(t[0] for t in single.params)), i)
        assert batched.train_loss[i] == pytest.approx(single.train_loss[0], rel=1e-12)


def test_threshold_stops_runs_and_freezes_them_inside_the_batch():
    cfg = Config(**SMALL_TEACHER, algorithms=["gd"], iterations=400, loss_threshold=2e-3)
    data = make_dataset(cfg)
    res = run_group(cfg, data, "gd", [0.0] * 3, [0, 1, 2])
    assert any(res.stopped) and any(it < 400 for it in res.iterations)
    for i, s in enumerate([0, 1, 2]):
        single = run_group(cfg, data, "gd", [0.0], [s])
        assert single.iterations[0] == res.iterations[i]
        _close(res.params, Params(*(t[0] for t in single.params)), i)
        if res.stopped[i]:
            assert res.train_loss[i] <= 2e-3
            # stopped at the first iterate below the threshold: one step earlier it was above
            prev = run_group(
                Config(**SMALL_TEACHER, iterations=res.iterations[i] - 1, loss_threshold=0.0),
                data,
                "gd",
                [0.0],
                [s],
            )
            assert prev.train_loss[0] > 2e-3


def test_gd_and_nsam_rho_zero_are_the_same_and_reduce_the_loss():
    data = reference_1d()
    cfg = Config(algorithms=["gd"], iterations=200, lr=5e-5, lr_schedule="linear", seeds=[0])
    gd = run_group(cfg, data, "gd", [0.0], [0])
    ns = run_group(cfg, data, "nsam", [0.0], [0])
    _close(gd.params, ns.params)
    start = gd.history[0]["train_loss"][0]
    assert gd.train_loss[0] < 0.5 * start
    # the first logged loss is the loss at the reference init, 0.5 sum of squared errors
    p0 = init_params(100, 1, 0, "reference")
    r = forward(p0, data.X).out - data.y
    assert start == pytest.approx(0.5 * float((r * r).sum()), rel=1e-12)


def test_one_gd_step_by_hand():
    data = reference_1d()
    cfg = Config(algorithms=["gd"], iterations=1, lr=1e-4, seeds=[3], loss_threshold=0.0)
    res = run_group(cfg, data, "gd", [0.0], [3])
    W, b, a = (t.clone().requires_grad_(True) for t in init_params(100, 1, 3, "reference"))
    L = 0.5 * ((torch.relu(data.X @ W.T + b) @ a - data.y) ** 2).sum()
    gW, gb, ga = torch.autograd.grad(L, (W, b, a))
    expected = Params(W - 1e-4 * gW, b - 1e-4 * gb, a - 1e-4 * ga)
    _close(res.params, Params(*(t.detach() for t in expected)), 0)


def test_unnormalized_converges_normalized_stalls_judged_on_the_tail(tmp_path):
    """Normalized SAM with a constant rho oscillates (its last iterate is chaotic: the backends
    agree to 1e-15 for ~1000 steps, then part), so the stall is judged on the tail: the median
    training loss over the last 10% of the steps and its log-log slope."""
    common = dict(**SMALL_TEACHER, iterations=1500, loss_threshold=0.0, seeds=[0], n_logs=20)
    un = train(Config(**common, algorithms=["gd", "nsam"], rhos=[0.05], normalize=False))
    nz = train(Config(**common, algorithms=["nsam"], rhos=[0.01, 0.3]))
    gd, u = un["runs"][0], un["runs"][1]
    lo, hi = nz["runs"]
    assert u["tail_median"] < 10 * gd["tail_median"] + 1e-8
    assert lo["tail_median"] > 10 * gd["tail_median"] and hi["tail_median"] > lo["tail_median"]
    assert gd["tail_slope"] < -0.5 and abs(hi["tail_slope"]) < abs(gd["tail_slope"])


def test_tail_is_the_last_tenth_of_the_logged_curve():
    cfg = Config(**SMALL_TEACHER, iterations=1000, loss_threshold=0.0, n_logs=10, seeds=[0])
    res = run_group(cfg, make_dataset(cfg), "gd", [0.0], [0])
    tail = [r for r in res.history if r["step"] >= 900]
    assert [r["step"] for r in tail] == list(range(900, 1001, 10))
    summary = train(dataclasses.replace(cfg, algorithms=["gd"]))
    losses = [r["train_loss"][0] for r in tail]
    assert summary["runs"][0]["tail_median"] == pytest.approx(float(np.median(losses)), rel=1e-12)
    slope = np.polyfit(np.log10(range(900, 1001, 10)), np.log10(losses), 1)[0]
    assert summary["runs"][0]["tail_slope"] == pytest.approx(slope, rel=1e-9)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_summary_test_loss_is_recomputed_from_params_json(tmp_path, backend):
    cfg = Config(
        **SMALL_TEACHER,
        algorithms=["gd", "1sam"],
        rhos=[0.1],
        seeds=[0, 1],
        iterations=50,
        loss_threshold=0.0,
        n_val=7,
        backend=backend,
        out_dir=str(tmp_path / "r"),
    )
    summary = train(cfg)
    params = load_params(tmp_path / "r")
    data = make_dataset(cfg)
    for r in summary["runs"]:
        W, b, a = params[r["run_id"]]
        test = 0.5 * ((torch.relu(data.X_test @ W.T + b) @ a - data.y_test) ** 2).mean()
        train_l = 0.5 * ((torch.relu(data.X @ W.T + b) @ a - data.y) ** 2).mean()
        val = 0.5 * ((torch.relu(data.X_val @ W.T + b) @ a - data.y_val) ** 2).mean()
        assert r["test_loss"] == pytest.approx(float(test), rel=1e-12)
        assert r["train_loss"] == pytest.approx(float(train_l), rel=1e-12)
        assert r["val_loss"] == pytest.approx(float(val), rel=1e-12)
        assert abs(r["test_loss"] - r["train_loss"]) > 1e-6


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_divergence_is_flagged_not_crashing(backend):
    cfg = Config(
        **{**SMALL_TEACHER, "lr": 50.0}, iterations=200, loss_threshold=0.0, backend=backend
    )
    res = run_group(cfg, make_dataset(cfg), "gd", [0.0], [0])
    assert res.diverged == [True] and res.train_loss == [None] and res.iterations[0] < 200
    # the step it diverged at: one step earlier the loss was still finite
    prev = run_group(
        dataclasses.replace(cfg, iterations=res.iterations[0] - 1),
        make_dataset(cfg),
        "gd",
        [0.0],
        [0],
    )
    assert prev.diverged == [False] and prev.train_loss[0] is not None


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="^lr"):
        Config(lr=-1.0).validate()
    with pytest.raises(ValueError, match="^batch_size"):
        Config(algorithms=["sgd"]).validate(12)
    with pytest.raises(ValueError, match="^m"):
        Config(algorithms=["msam"], m=5).validate(12)
    with pytest.raises(ValueError, match="^algorithms"):
        Config(algorithms=["adam"]).validate()


def test_train_writes_the_run_format(tmp_path):
    out = tmp_path / "run"
    cfg = Config(
        algorithms=["gd", "msam"],
        m=3,
        rhos=[0.1, 0.3],
        seeds=[0, 1],
        iterations=30,
        width=20,
        n_logs=5,
        out_dir=str(out),
    )
    summary = train(cfg)
    for f in ("config.json", "metrics.jsonl", "summary.json", "params.json", "data.json"):
        assert (out / f).exists(), f
    conf = json.loads((out / "config.json").read_text())
    assert conf["config"]["algorithms"] == ["gd", "msam"] and "commit" in conf["git"]
    runs = summary["runs"]
    assert [(r["algorithm"], r["rho"], r["seed"]) for r in runs] == [
        ("gd", 0.0, 0),
        ("gd", 0.0, 1),
        ("msam", 0.1, 0),
        ("msam", 0.1, 1),
        ("msam", 0.3, 0),
        ("msam", 0.3, 1),
    ]
    assert all(r["m"] == (None if r["algorithm"] == "gd" else 3) for r in runs)
    assert all(isinstance(r["kinks"], int) and r["path_norm"] > 0 for r in runs)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} >= {0, 30}
    assert all(len(r["train_loss"]) == len(r["run_ids"]) for r in rows)
    last = [r for r in rows if r["algorithm"] == "msam" and r["step"] == 30][0]
    assert last["train_loss"] == pytest.approx([r["train_loss"] for r in runs[2:]], rel=1e-12)
    assert all(math.isfinite(x) for x in last["train_loss"])
    with pytest.raises(FileExistsError):
        train(cfg)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_threshold_is_checked_at_every_step_log_steps_included(backend):
    """GD with a small lr decreases its loss monotonically here: with the threshold set to the
    loss logged at step s, the run stops exactly at s (s is where the C backend's calls start)."""
    cfg = Config(**SMALL_TEACHER, iterations=300, loss_threshold=0.0, n_logs=12, backend=backend)
    data = make_dataset(cfg)
    free = run_group(cfg, data, "gd", [0.0], [0])
    losses = [r["train_loss"][0] for r in free.history]
    assert all(a > b for a, b in zip(losses, losses[1:]))  # monotone: the first crossing is s
    for row in [free.history[0], *free.history[3:8]]:  # step 0 too: an init below threshold
        res = run_group(cfg, data, "gd", [0.0], [0], thresholds=[row["train_loss"][0]])
        assert res.iterations == [row["step"]] and res.stopped == [True]


def test_a_loss_matched_control_refuses_a_base_whose_losses_changed(tmp_path):
    """``match_digest`` pins the base runs' final losses: the control trains against the base it
    was configured for, and refuses one whose losses changed since (not silently another)."""
    from one_layer_relu_nets.engine import matched_targets, targets_digest

    base = tmp_path / "base"
    train(
        Config(algorithms=["gd", "nsam"], iterations=40, seeds=[0, 1], width=20, out_dir=str(base))
    )
    digest = targets_digest(matched_targets(base))
    ctl = Config(
        algorithms=["gd"],
        iterations=40,
        seeds=[0, 1],
        width=20,
        match_losses_of=str(base),
        match_digest=digest,
        out_dir=str(tmp_path / "c"),
    )
    summary = train(ctl)
    nsam = [
        r
        for r in json.loads((base / "summary.json").read_text())["runs"]
        if r["algorithm"] == "nsam"
    ]
    assert [r["loss_threshold"] for r in summary["runs"]] == [r["train_loss"] for r in nsam]
    s = json.loads((base / "summary.json").read_text())
    s["wall_s"] += 1.0  # not a loss: the digest stays
    (base / "summary.json").write_text(json.dumps(s))
    assert targets_digest(matched_targets(base)) == digest
    s["runs"][-1]["train_loss"] *= 0.5
    (base / "summary.json").write_text(json.dumps(s))
    assert targets_digest(matched_targets(base)) != digest
    with pytest.raises(ValueError, match="match_digest"):
        train(dataclasses.replace(ctl, out_dir=str(tmp_path / "c2")))
