"""Deep-net experiments without training: the paper configs against PAPERS.md#deep-nets-setup
(table-driven), the claims rows' verdicts on synthetic per-seed tables, run identity, the
interpolation measure and the small statistics the claims use."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from analysis.deep_nets import experiments as ex
from analysis.deep_nets import fig1, fig9, fig12
from analysis.deep_nets.interpolation import interpolate_losses
from analysis.deep_nets.profiles import PAPER_CONFIGS, PROFILES
from analysis.deep_nets.runs import (
    Spec,
    curve_rows,
    epoch_rows,
    mean_curve,
    n_test,
    to_argv,
)
from deep_nets.config import TrainConfig, check_config, load_named_config

# The original's settings for each paper figure (PAPERS.md#deep-nets-setup and the figures after
# it), written out by hand.
RESNET18_C10 = dict(
    dataset="cifar10",
    model="resnet18",
    batch_size=128,
    epochs=200,
    lr_max=0.1,
    lr_schedule="piecewise",
    l2_reg=5e-4,
)
PAPER_TABLE = {
    "fig1_resnet18_cifar10_msam": dict(RESNET18_C10, momentum=0.9),
    "fig1_resnet34gn_cifar100_msam": dict(RESNET18_C10, dataset="cifar100", model="resnet34_gn"),
    "msharpness_resnet18_cifar10": dict(RESNET18_C10, momentum=0.9),
    "fig9_erm_to_sam_cifar10": dict(RESNET18_C10, sam_epoch_frac_start=0.9, sam_epoch_frac_end=1.0),
    "fig9_sam_to_erm_cifar10": dict(RESNET18_C10, sam_epoch_frac_start=0.0, sam_epoch_frac_end=0.9),
    "fig12_noisy_labels_cifar10": dict(
        RESNET18_C10, epochs=1000, p_label_noise=0.6, noise_type="sym"
    ),
    "convergence_resnet18_cifar10": RESNET18_C10,
    "looksam_resnet18_cifar10": dict(
        RESNET18_C10, sam_variant="looksam", looksam_k=5, looksam_alpha=0.7
    ),
    "seminar_fmnist_cnn": dict(dataset="fashion_mnist", model="cnn", lr_schedule="cosine"),
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_paper_configs_match_reference(name):
    flags = load_named_config(name)
    for k, v in PAPER_TABLE[name].items():
        assert flags[k] == v, f"{name}: {k} = {flags[k]!r}, PAPERS.md#deep-nets says {v!r}"
    check_config(TrainConfig(**flags))
    doc = __import__(f"deep_nets.configs.{name}", fromlist=["x"]).__doc__
    for field in ("Claim:", "Paper number", "Command:", "Measured here"):
        assert field in doc, f"{name}: the header lacks {field!r}"


def test_every_paper_config_is_in_the_table():
    assert {c for cs in PAPER_CONFIGS.values() for c in cs} == set(PAPER_TABLE)


def test_paper_profile_sweeps_are_the_papers():
    P = PROFILES["paper"]
    assert P["rhos"] == [0.025, 0.05, 0.1, 0.2, 0.4]  # Fig. 1's grid
    assert sorted(128 // a for a in P["accs"]) == [4, 16, 64, 128]
    assert P["base"]["batch_size"] == 128 and P["noisy"]["epochs"] == 1000
    assert P["switch"] == 0.9 and P["seminar_rho"] == 0.05 and P["looksam_k"] == 5
    assert len(P["seeds"]) >= 3 and len(PROFILES["full"]["seeds"]) >= 3


def test_fig12_schedule_drops_at_500_and_750():
    from deep_nets.train import lr_at

    f = load_named_config("fig12_noisy_labels_cifar10")
    lr = [lr_at(f["lr_schedule"], 0.1, f["epochs"], t) for t in (499.9, 500.1, 749.9, 750.1)]
    assert lr == pytest.approx([0.1, 0.01, 0.01, 0.001])


@pytest.mark.parametrize("profile", ["quick", "full", "paper", "test"])
def test_every_run_of_every_profile_is_a_valid_config(profile):
    P = PROFILES[profile]
    specs = [s for e in ex.EXPERIMENTS.values() for s in e.runs.specs(P)]
    assert len({s.dirname() for s in specs}) == len(set(specs))  # distinct runs, distinct dirs
    for s in set(specs):
        check_config(TrainConfig(**s.as_dict))


# The verdicts of the rows on synthetic runs (paired, pooled, pre-registered): test_deep_claims.py
def _run(n_eval=0, *, summary_size=None, config_size=None):
    data = lambda n: {"sizes": {"train": 9, "val": 1, "test": n}}  # noqa: E731
    summary = {"status": "finished", **({"data": data(summary_size)} if summary_size else {})}
    conf = {"config": {"n_eval": n_eval}, **({"data": data(config_size)} if config_size else {})}
    return {"path": "runs/x", "config": conf, "summary": summary, "metrics": []}


def test_n_test_reads_the_scored_set_else_the_data_provenance_and_the_eval_cap():
    scored = _run(2000, summary_size=10_000)
    scored["summary"]["scored"] = {"n_test": 100_000}
    assert n_test(scored) == 100_000  # the scored set, whatever the metrics rows used
    assert n_test(_run(summary_size=10_000)) == 10_000
    assert n_test(_run(2000, summary_size=10_000)) == 2000
    assert n_test(_run(5000, summary_size=1000)) == 1000
    assert n_test(_run(config_size=777)) == 777  # config.json when summary.json lacks it
    assert n_test(_run(summary_size=500, config_size=777)) == 500
    with pytest.raises(ValueError, match="runs/x: no test-set size.*run the experiment again"):
        n_test(_run(100))
    assert fig12.train_size(_run(summary_size=10)) == 9  # the noisy-subset count uses it
    with pytest.raises(ValueError, match="runs/x: no training-set size"):
        fig12.train_size(_run(100))


def test_runs_of_the_trainer_before_issue_9_are_refused(tmp_path):
    from analysis.deep_nets.runs import ensure_runs, load, make_run, run_path
    from suite.rundir import atomic_write_json

    spec = Spec.make({"dataset": "mnist1d", "model": "mlp", "epochs": 1}, 0)
    path = run_path(tmp_path, spec)
    path.mkdir(parents=True)
    # the full config the trainer stores: the launcher takes the run as finished with these flags
    config = make_run(spec, tmp_path, {}).config
    old = {"config": config, "data": {"sizes": {"test": 1000}, "noise": {"p": 0.0}}}
    atomic_write_json(path / "config.json", old)
    atomic_write_json(path / "summary.json", {"status": "finished"})
    for call in (lambda: load(tmp_path, spec), lambda: ensure_runs([spec], tmp_path, runtime={})):
        with pytest.raises(ValueError, match="older trainer.*delete this run directory"):
            call()
    old["data"]["noise"]["noisy_val"] = False  # what the current trainer writes
    atomic_write_json(path / "config.json", old)
    assert load(tmp_path, spec)["summary"]["status"] == "finished"
    assert ensure_runs([spec], tmp_path, runtime={})["reused"] == 1


def test_metric_rows_tolerate_the_epoch_0_row():
    def row(epoch, step, end, err):
        return {"epoch": epoch, "step": step, "epoch_end": end, "test_err": err}

    a = {
        "metrics": [
            row(0.0, 0, False, 0.9),
            row(0.5, 5, False, 0.7),
            row(1.0, 10, True, 0.5),
            row(2.0, 20, True, 0.3),
        ]
    }
    b = {"metrics": [row(0.0, 0, False, 0.7), row(1.0, 10, True, 0.3), row(2.0, 20, True, 0.1)]}
    assert [r["epoch"] for r in epoch_rows(a)] == [1.0, 2.0]  # neither epoch 0 nor mid-epoch
    assert [[r["epoch"] for r in rs] for rs in curve_rows([a, b])] == [[0.0, 1.0, 2.0]] * 2
    x, y = mean_curve([a, b], "test_err")
    assert x.tolist() == [0.0, 1.0, 2.0] and y == pytest.approx([0.8, 0.4, 0.2])
    old = {"metrics": b["metrics"][1:]}  # a run from before the epoch-0 row: curves stay aligned
    x, y = mean_curve([a, old], "test_err")
    assert x.tolist() == [1.0, 2.0] and y == pytest.approx([0.4, 0.2])
    # the memorization epoch ignores the epoch-0 row
    assert fig12.first_epoch_below(a, "test_err", 0.95) == 1.0


def test_fig1_uses_the_originals_n_sam_and_random_baseline():
    P = PROFILES["quick"]
    m = fig1.fig1_methods(P, 0.1)
    nsam, rnd = m["n-SAM"](0).as_dict, m["random"](0).as_dict
    assert nsam["sam_use_prev_batch"] is True and nsam["sam_rho"] == 0.1
    assert "sam_perturb_batch" not in nsam  # the default, "same"
    assert "sam_rho" not in rnd and "sam_variant" not in rnd  # SAM off: weight noise only
    # s = rho / sqrt(d), d counted on the model the trainer builds (an MLP on mnist1d)
    from deep_nets.models import build_model, count_parameters

    net = build_model(
        P["base"]["model"],
        in_channels=1,
        num_classes=10,
        input_shape=(1, 40),
        width=P["base"].get("model_width"),
    )
    d = count_parameters(net)
    assert rnd["add_weight_perturb_scale"] == pytest.approx(0.1 / math.sqrt(d), rel=1e-5)
    assert m["random"](0).dirname().startswith("gauss-")
    assert m["n-SAM"](0).dirname().startswith("sam-r0.1-m128-prev_")


def test_switch_epoch_is_counted_as_the_original():

    P = PROFILES["quick"]
    e = fig9.switch_epoch(P)
    for flags in (
        fig9.ft_methods(P)["ERM -> SAM"](0).as_dict,
        fig9.ft_methods(P)["SAM -> ERM"](0).as_dict,
    ):
        cfg = TrainConfig(**flags)
        assert cfg.sam_radius(e - 1, 0.1) > 0  # the switch epoch (1-based e) is a SAM epoch in both
    assert e == 30  # 50% of 60 epochs


@pytest.mark.parametrize("profile", ["test", "quick", "full", "paper"])
def test_switch_runs_really_switch(profile):
    """Each switch run has ERM epochs and SAM epochs (the original's count includes both ends)."""

    P = PROFILES[profile]
    for label in ("ERM -> SAM", "SAM -> ERM"):
        cfg = TrainConfig(**fig9.ft_methods(P)[label](0).as_dict)
        on = [cfg.sam_radius(e, 0.1) > 0 for e in range(cfg.epochs)]
        assert any(on) and not all(on), f"{profile}: {label} is SAM in epochs {on}"


# ------------------------------------------------------------------------------- run identity
def test_spec_identity_ignores_defaults_and_runtime_flags():
    a = Spec.make({"dataset": "mnist1d", "sam_rho": 0.0, "acc_steps": 1, "workers": 1}, 0)
    b = Spec.make({"dataset": "mnist1d"}, 0)
    assert a == b and a.dirname() == b.dirname() and a.dirname().startswith("erm_")
    c = Spec.make({"dataset": "mnist1d", "sam_rho": 0.1, "acc_steps": 8}, 0)
    assert c.dirname().startswith("sam-r0.1-m16_") and c.dirname() != b.dirname()
    assert Spec.make({"dataset": "mnist1d"}, 1).dirname() != b.dirname()


def test_to_argv_round_trips_through_the_trainer_cli(tmp_path):
    from deep_nets.train import config_from_argv

    flags = {
        "dataset": "mnist1d",
        "model": "mlp",
        "no_data_augm": True,
        "half_prec": False,
        "sam_rho": 0.05,
        "acc_steps": 4,
        "model_width": None,
        "out_dir": str(tmp_path / "r"),
    }
    cfg = config_from_argv(to_argv(flags))
    assert cfg.no_data_augm and not cfg.half_prec and cfg.sam_rho == 0.05 and cfg.acc_steps == 4


# ------------------------------------------------------------------------------ interpolation
def test_interpolation_of_a_linear_model_is_the_loss_of_the_mixed_weights():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    net = nn.Linear(5, 3)
    a = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    b = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    ts = [-0.5, 0.0, 0.3, 1.0, 1.5]
    out = interpolate_losses(net, a, b, ts, {"train": (x, y)}, batch_size=16)
    for t, got in zip(ts, out["train"], strict=True):
        w = (1 - t) * a["weight"] + t * b["weight"]
        bias = (1 - t) * a["bias"] + t * b["bias"]
        ref = nn.functional.cross_entropy(x @ w.T + bias, y).item()
        assert got == pytest.approx(ref, rel=1e-5)


def test_interpolation_recomputes_batch_norm_statistics():
    torch.manual_seed(0)
    x, y = 3 + 2 * torch.randn(256, 4), torch.randint(0, 2, (256,))
    net = nn.Sequential(nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["0.running_mean"].fill_(100.0)  # stale statistics of a trained net must not survive
    sd["0.num_batches_tracked"].fill_(1000)
    out = interpolate_losses(net, sd, sd, [0.5], {"train": (x, y)}, batch_size=32)
    # reference: the same net with the statistics set by hand (momentum None: the running mean
    # and variance are the plain averages over the 8 batches of 32), evaluated in eval mode
    ref = nn.Sequential(nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    ref.load_state_dict(sd)
    batch_var = torch.stack([x[i : i + 32].var(0, unbiased=True) for i in range(0, 256, 32)])
    ref[0].running_mean.copy_(x.mean(0))
    ref[0].running_var.copy_(batch_var.mean(0))
    ref.eval()
    want = torch.nn.functional.cross_entropy(ref(x), y).item()
    assert out["train"][0] == pytest.approx(want, rel=1e-5)
    stale = nn.Sequential(nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    stale.load_state_dict(sd)
    stale.eval()
    assert torch.nn.functional.cross_entropy(stale(x), y).item() != pytest.approx(want, rel=1e-3)


def test_barrier_is_the_bump_above_the_worse_end():
    t = [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert fig9.barrier({"t": t, "train": [9.0, 0.1, 0.5, 0.2, 9.0]}) == pytest.approx(0.3)
    assert fig9.barrier({"t": t, "train": [9.0, 0.1, 0.1, 0.2, 9.0]}) == pytest.approx(0.0)


def test_first_epoch_below():
    rows = [
        {"epoch": e, "epoch_end": True, "train_err_noisy": v, "train_cpu_seconds": 2.0}
        for e, v in ((1, 0.9), (2, 0.6), (3, 0.4), (4, 0.1))
    ]
    run = {"metrics": rows}
    assert fig12.first_epoch_below(run, "train_err_noisy", 0.5) == 3
    assert fig12.first_epoch_below(run, "train_err_noisy", 0.05) == 5  # never: one past the end
