"""The deep-net trainer (deep_nets/train.py) end to end on tiny real runs (mnist1d, Fashion-MNIST).

mnist1d is generated offline once per process (the data module caches it); runs use tiny models,
few steps and one thread so that they are exactly reproducible.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deep_nets.config import TIMING_FIELDS, TrainConfig
from deep_nets.data import load_dataset
from deep_nets.models import build_model
from deep_nets.train import (
    NonFiniteLossError,
    build_parser,
    epoch_permutation,
    lr_at,
    main,
    train,
)
from suite.cli import make_seeds
from suite.rundir import load_run

FMNIST = Path("/usr/share/datasets/fashion-mnist")


# Smaller generated validation / test sets than the defaults (10k / 100k): every run scores its
# best and last weights on all of them, and these tests check the trainer, not the statistics.
SMALL_MNIST1D = dict(mnist1d_n_val=2000, mnist1d_n_test=5000)


def tiny(out: Path, **kw) -> TrainConfig:
    """A 2-epoch mnist1d MLP run of 25 steps per epoch (800 training examples, batch 32)."""
    base = dict(
        dataset="mnist1d",
        model="mlp",
        model_width=16,
        epochs=2,
        batch_size=32,
        frac_train=0.2,
        lr_max=0.05,
        workers=1,
        n_eval_train=256,
        n_eval=256,
        n_sharpness=64,
        out_dir=str(out),
    )
    base.update(kw)
    if base["dataset"] == "mnist1d":
        base = {**SMALL_MNIST1D, **base}
    return TrainConfig(**base)


def strip_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


# ------------------------------------------------------------------------------ schedules
def test_lr_schedules_match_the_original_definitions():
    assert lr_at("piecewise", 0.1, 200, 0.0) == 0.1
    assert lr_at("piecewise", 0.1, 200, 99.9) == 0.1
    assert lr_at("piecewise", 0.1, 200, 100.0) == pytest.approx(0.01)
    assert lr_at("piecewise", 0.1, 200, 150.0) == pytest.approx(0.001)
    assert lr_at("cosine", 0.2, 10, 5.0) == pytest.approx(0.1)
    assert lr_at("cosine", 0.2, 10, 10.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at("cyclic", 0.1, 10, 4.0) == pytest.approx(0.1)
    assert lr_at("cyclic", 0.1, 10, 2.0) == pytest.approx(0.05)
    assert lr_at("cyclic", 0.1, 10, 7.0) == pytest.approx(0.05)
    assert lr_at("constant", 0.3, 10, 7.0) == 0.3
    with pytest.raises(ValueError, match="--lr_schedule"):
        lr_at("step", 0.1, 10, 1.0)


def test_sam_is_active_only_inside_its_epoch_window():
    # The original's test on its 1-based epoch e: start <= e / epochs <= end (both included).
    cfg = TrainConfig(epochs=10, sam_rho=0.1, sam_epoch_frac_start=0.3, sam_epoch_frac_end=0.8)
    assert [cfg.sam_radius(e, 0.1) > 0 for e in range(10)] == [False] * 2 + [True] * 6 + [False] * 2
    # ERM -> SAM at 0.9 of 200 epochs: the original runs SAM in epochs 180..200, i.e. 21 epochs.
    late = TrainConfig(epochs=200, sam_rho=0.1, sam_epoch_frac_start=0.9)
    assert sum(late.sam_radius(e, 0.1) > 0 for e in range(200)) == 21
    assert not any(TrainConfig(epochs=4, sam_rho=0.0).sam_radius(e, 0.1) > 0 for e in range(4))


def test_sam_radius_is_the_rho_or_the_lr_tied_rho_inside_the_window():
    # TrainConfig.sam_radius: the one rule the trainer, the optimizer and the checks read
    cfg = TrainConfig(epochs=4, sam_rho=0.2, sam_epoch_frac_end=0.5)
    assert [cfg.sam_radius(e, 0.05) for e in range(4)] == [0.2, 0.2, 0.0, 0.0]
    assert cfg.sam_radius(None, 0.05) == 0.2 and cfg.sam_on
    tied = TrainConfig(epochs=4, sam_lr_mult=3.0, sam_epoch_frac_start=0.5)
    assert [tied.sam_radius(e, 0.01) for e in range(4)] == [0.0, 0.03, 0.03, 0.03]
    assert tied.sam_on and not TrainConfig(epochs=4).sam_on


def test_every_sam_step_runs_at_its_own_radius(tmp_path):
    # --sam_lr_mult with a cosine lr: the optimizer's radius follows lr * mult to the last step
    # (lr 0 there), not the flags' radius at lr_max that build_optimizer starts from
    cfg = tiny(tmp_path / "r", epochs=1, sam_lr_mult=0.5, lr_schedule="cosine")
    train(cfg)
    groups = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["optimizer"]
    rhos = [g.get("rho", g.get("sam_rho")) for g in groups["param_groups"]]
    assert rhos and all(abs(r) < 1e-12 for r in rhos)  # the start's was 0.05 * 0.5


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a, b = epoch_permutation(7, 3, 100), epoch_permutation(7, 3, 100)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_permutation(7, 4, 100))


# --------------------------------------------------------------------------------- CLI
BAD_FLAGS = [
    (["--acc_steps", "3"], "--acc_steps 3 does not divide --batch_size"),
    (["--sam_iters", "2"], "--sam_iters has no effect without --sam_rho"),
    (["--model", "resnet18"], "--model resnet18"),
    (["--dataset", "imagenet"], "--dataset: invalid choice: 'imagenet'"),
    (
        ["--sam_rho", "0.1", "--sam_epoch_frac_start", "0.8", "--sam_epoch_frac_end", "0.5"],
        "--sam_epoch_frac_start",
    ),
    (["--sam_rho", "0.1", "--sam_variant", "looksam", "--acc_steps", "2"], "--acc_steps > 1"),
    (["--sam_rho", "0.1", "--sam_perturb_batch", "other", "--sam_iters", "2"], "--sam_iters > 1"),
    (["--frac_train", "0"], "--frac_train"),
    (["--p_label_noise", "0.2", "--noise_type", "asym"], "--noise_type asym"),
    (["--model_path", "/nonexistent/model.pt"], "--model_path /nonexistent/model.pt"),
    (["--lr_schedule", "step"], "--lr_schedule"),
    (["--config", "no_such_config"], "--config: invalid choice: 'no_such_config'"),
]


@pytest.mark.parametrize("extra,message", BAD_FLAGS)
def test_bad_flag_combinations_exit_2_naming_the_flags(extra, message, capsys, tmp_path):
    argv = ["--dataset", "mnist1d", "--model", "mlp", "--batch_size", "32"]
    argv += ["--out_dir", str(tmp_path / "run"), *extra]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_existing_run_needs_resume(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "mnist1d", "--model", "mlp", "--out_dir", str(tmp_path)])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err


def test_help_documents_every_flag_with_its_default():
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest in ("help",):
            continue
        assert action.option_strings[0] in text
        assert "default" in (action.help or ""), action.dest
        if action.nargs != 0:  # every value flag has an explicit type
            assert action.type is not None, action.dest
    for flag in ("--acc_steps", "--sam_epoch_frac_start", "--model_path", "--eval_iter_freq"):
        assert flag in text


# ---------------------------------------------------------------------- runs of each variant
VARIANTS = {
    "erm": dict(),
    "sam": dict(sam_rho=0.05),
    "msam": dict(sam_rho=0.05, acc_steps=4),
    "msam_iters": dict(sam_rho=0.05, acc_steps=2, sam_iters=2, sam_step_size_mult=0.5),
    "unnormalized": dict(sam_rho=0.05, sam_no_grad_norm=True),
    "asam": dict(sam_rho=0.5, sam_variant="asam"),
    "looksam": dict(sam_rho=0.05, sam_variant="looksam", looksam_k=3),
    "random": dict(sam_rho=0.05, sam_variant="random"),
    "other_batch": dict(sam_rho=0.05, sam_perturb_batch="other"),
    "erm_to_sam_bf16": dict(
        sam_rho=0.05, sam_epoch_frac_start=0.75, half_prec=True, half_prec_dtype="bfloat16"
    ),
    "msam_fp16": dict(sam_rho=0.05, acc_steps=2, half_prec=True),
}
KEYS = {
    "epoch",
    "step",
    "lr",
    "rho",
    "train_loss",
    "train_err",
    "train_err_clean",
    "train_err_noisy",
    "val_err",
    "val_loss",
    "test_err",
    "test_loss",
    "sharpness",
    "seconds",
    "examples_per_s",
}


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    out = {}
    for name, kw in VARIANTS.items():
        cfg = tiny(root / name, p_label_noise=0.25, **kw)
        out[name] = (train(cfg), root / name)
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_writes_valid_metrics(variant_runs, name):
    summary, run_dir = variant_runs[name]
    run = load_run(run_dir)
    start, *rows = run["metrics"]
    assert start["epoch"] == 0 and start["step"] == 0  # evaluated before any step
    assert start["rho"] == 0.0 and start["train_loss_batch"] is None
    assert summary["status"] == "finished" and len(rows) == 2
    assert run["config"]["config"]["sam_variant"] == VARIANTS[name].get("sam_variant", "sam")
    assert "commit" in run["config"]["git"]
    for r in rows:
        assert KEYS <= set(r)
        for k in ("train_err", "train_err_clean", "train_err_noisy", "val_err", "test_err"):
            assert 0.0 <= r[k] <= 1.0, k
        for k in ("train_loss", "val_loss", "test_loss", "sharpness", "examples_per_s"):
            assert math.isfinite(r[k]), k
    # 25% noisy labels: the error against the training labels mixes both groups
    assert rows[-1]["train_err_noisy"] > rows[-1]["train_err_clean"]
    rho = VARIANTS[name].get("sam_rho", 0.0)
    expected_rho = [0.0, rho] if name == "erm_to_sam_bf16" else [rho, rho]
    assert [r["rho"] for r in rows] == expected_rho
    assert summary["test_err_at_best_val"] == min(rows, key=lambda r: r["val_err"])["test_err"]
    assert summary["test_err_last"] == rows[-1]["test_err"]


def test_variants_really_change_the_update(variant_runs):
    weights = {name: final_weights(run_dir) for name, (_, run_dir) in variant_runs.items()}
    names = list(weights)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)


# --------------------------------------------------------- m-SAM step against a hand-written one
def test_msam_steps_match_a_hand_written_reference(tmp_path):
    """Two steps of m-SAM (m = 4, L2 in the loss, momentum) recomputed here from the definition:
    for each chunk c, e_c = rho g_c/||g_c||, average grad L_c(w + e_c), SGD with momentum."""
    rho, l2, lr, mu, bs, m = 0.1, 0.01, 0.05, 0.9, 16, 4
    cfg = tiny(
        tmp_path / "run",
        epochs=1,
        batch_size=bs,
        frac_train=32 / 4000,
        sam_rho=rho,
        l2_reg=l2,
        acc_steps=bs // m,
        lr_schedule="constant",
        lr_max=lr,
        momentum=mu,
        no_data_augm=True,
        model_width=8,
    )
    train(cfg)
    data = load_dataset("mnist1d", None, seed=0, frac_train=32 / 4000)
    assert data.train_x.shape[0] == 32
    seeds = make_seeds(0)
    torch.manual_seed(int(seeds.init.initial_seed()))
    model = build_model(
        "mlp", in_channels=1, num_classes=10, width=8, input_shape=(1, 40), init="original"
    )
    params = list(model.parameters())
    perm = epoch_permutation(int(seeds.data.initial_seed()), 0, 32)
    bufs = [None] * len(params)
    for step in range(2):
        idx = perm[step * bs : (step + 1) * bs]
        x, y = data.train_x[idx], data.train_y[idx]
        total = [torch.zeros_like(p) for p in params]
        for c in range(bs // m):
            xc, yc = x[c * m : (c + 1) * m], y[c * m : (c + 1) * m]

            def loss_at(ws, xc=xc, yc=yc):
                out = torch.func.functional_call(
                    model,
                    {n: w for (n, _), w in zip(model.named_parameters(), ws, strict=True)},
                    (xc,),
                )
                reg = sum((w**2).sum() for w in ws)  # every parameter, as the original
                return F.cross_entropy(out, yc) + 0.5 * l2 * reg

            g = torch.autograd.grad(loss_at(params), params)
            norm = torch.sqrt(sum((t**2).sum() for t in g))
            moved = [p.detach() + rho * t / norm for p, t in zip(params, g, strict=True)]
            moved = [w.requires_grad_() for w in moved]
            gs = torch.autograd.grad(loss_at(moved), moved)
            total = [a + b / (bs // m) for a, b in zip(total, gs, strict=True)]
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, total, strict=True)):
                bufs[i] = g.clone() if bufs[i] is None else mu * bufs[i] + g
                p -= lr * bufs[i]
    trained = final_weights(tmp_path / "run")
    for name, p in model.named_parameters():
        torch.testing.assert_close(trained[name], p.detach(), atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------ resume
@pytest.mark.parametrize(
    "kw",
    [
        dict(sam_rho=0.05, sam_variant="looksam", looksam_k=3, eval_iter_freq=7),
        dict(sam_rho=0.05, sam_variant="random", lr_schedule="cosine", p_label_noise=0.2),
        dict(sam_rho=0.05, acc_steps=2, half_prec=True, eval_iter_freq=9),  # GradScaler state
        dict(sam_rho=0.05, sam_use_prev_batch=True, grad_gauss_std=0.01),  # previous batch
        dict(add_weight_perturb_scale=0.01, mul_weight_perturb_scale=0.1, swa_tau=0.9),
        dict(sam_rho=0.05, acc_steps=8, msam_impl="vectorized", p_label_noise=0.2),
    ],
    ids=["looksam", "random", "msam_fp16", "prev_batch_grad_noise", "weight_noise_swa", "vmap"],
)
def test_resume_gives_exactly_the_uninterrupted_metrics(tmp_path, kw):
    full = tiny(tmp_path / "full", epochs=3, **kw)
    train(full)
    part = tiny(tmp_path / "part", epochs=3, stop_after_epoch=1, **kw)
    assert train(part)["status"] == "stopped"
    assert len(load_run(tmp_path / "part")["metrics"]) < len(load_run(tmp_path / "full")["metrics"])
    part.resume, part.stop_after_epoch = True, 0
    assert train(part)["status"] == "finished"
    a, b = load_run(tmp_path / "full")["metrics"], load_run(tmp_path / "part")["metrics"]
    assert strip_timing(a) == strip_timing(b)
    assert all(r["test_err_swa"] is not None for r in a)  # the SWA weights are resumed too
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    for key in ("model", "swa"):
        assert all(torch.equal(ca[key][k], cb[key][k]) for k in ca[key])
    assert ca["scaler"] == cb["scaler"]
    if kw.get("half_prec"):
        assert ca["scaler"]["scale"] > 0  # float16 with a GradScaler (the original's --half_prec)


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the Debian package dataset-fashion-mnist")
def test_resume_with_batch_norm_and_augmentation_on_fashion_mnist(tmp_path):
    kw = dict(
        dataset="fashion_mnist",
        model="resnet_tiny",
        model_width=4,
        frac_train=0.004,
        batch_size=16,
        epochs=2,
        sam_rho=0.05,
        acc_steps=2,
        n_eval=200,
        n_eval_train=128,
    )
    train(tiny(tmp_path / "full", **kw))
    train(tiny(tmp_path / "part", stop_after_epoch=1, **kw))
    train(tiny(tmp_path / "part", resume=True, **kw))
    a, b = load_run(tmp_path / "full")["metrics"], load_run(tmp_path / "part")["metrics"]
    assert len(a) == 3 and strip_timing(a) == strip_timing(b)
    wa, wb = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    assert any("running_mean" in k for k in wa)  # batch-norm statistics are part of the state
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_changed_flags(tmp_path):
    train(tiny(tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match="--lr_max"):
        train(tiny(tmp_path / "run", epochs=1, lr_max=0.5, resume=True))


# --------------------------------------------------------------------- checkpoint contents
def test_logged_numbers_can_be_recomputed_from_the_checkpoint(tmp_path):
    cfg = tiny(tmp_path / "run", sam_rho=0.05, acc_steps=2, n_eval=0)
    summary = train(cfg)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "state"} <= set(ck)
    assert ck["state"]["epoch"] == 2 and ck["optimizer"]["state"]  # momentum buffers saved
    model = build_model("mlp", in_channels=1, num_classes=10, width=16, input_shape=(1, 40))
    model.load_state_dict(ck["model"])
    assert ck["swa"].keys() == ck["model"].keys()
    data = load_dataset("mnist1d", None, seed=0, frac_train=0.2, **SMALL_MNIST1D)
    with torch.no_grad():
        wrong = model(data.test_x).argmax(1) != data.test_y
    # the rows' test error: the first --n_test_rows examples; summary "scored": all of them
    assert wrong[: cfg.n_test_rows].double().mean().item() == summary["test_err_last"]
    assert wrong.double().mean().item() == summary["scored"]["last"]["test_err"]
    last = load_run(tmp_path / "run")["metrics"][-1]
    assert last["test_err"] == summary["test_err_last"]


# ------------------------------------------------------------------------- fine-tuning
def test_model_path_accepts_checkpoints_and_plain_state_dicts(tmp_path):
    train(tiny(tmp_path / "src", epochs=1))
    src = final_weights(tmp_path / "src")
    plain = tmp_path / "plain.pt"
    torch.save({"module." + k: v for k, v in src.items()}, plain)  # a DDP-style state dict
    frozen = dict(lr_max=0.0, momentum=0.0, l2_reg=0.0, epochs=1)  # training leaves w unchanged
    for i, path in enumerate([tmp_path / "src" / "checkpoint.pt", plain]):
        train(tiny(tmp_path / f"ft{i}", model_path=str(path), **frozen))
        got = final_weights(tmp_path / f"ft{i}")
        assert all(torch.equal(got[k], src[k]) for k in src)
    with pytest.raises(ValueError, match="--model_path"):
        train(tiny(tmp_path / "bad", model_path=str(plain), model_width=8))


# ------------------------------------------------------------------------ divergence
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # Epoch 1 is ERM; in epoch 2 an enormous unnormalized ascent makes the perturbed loss inf.
    cfg = tiny(tmp_path / "run", sam_rho=1e30, sam_no_grad_norm=True, sam_epoch_frac_start=0.75)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 1 of the epoch"):
        train(cfg)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "non-finite loss" in summary["message"]
