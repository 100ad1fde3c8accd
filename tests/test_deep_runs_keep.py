"""What a deep-net run keeps for the analysis (issue 9): noisy validation labels by default, the
best-validation weights, the starting point's evaluation, the data's provenance, a sharpness
logged at the same m and rho for every method; and the command-line errors that stop a run from
silently doing something else than asked."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from deep_nets.config import TrainConfig
from deep_nets.data import load_dataset
from deep_nets.evaluation import evaluate
from deep_nets.models import build_model
from deep_nets.train import main, train
from suite.rundir import load_run

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="needs dataset-fashion-mnist")
MLP = dict(
    dataset="mnist1d",
    model="mlp",
    model_width=16,
    batch_size=32,
    frac_train=0.1,
    lr_max=0.05,
    workers=1,
    n_eval_train=128,
    n_eval=128,
    n_sharpness=128,
    device="cpu",
)


def test_validation_labels_are_noisy_by_default_and_clean_with_clean_val():
    clean = load_dataset("mnist1d", None, seed=0, frac_train=0.1)
    noisy = load_dataset("mnist1d", None, seed=0, frac_train=0.1, p_label_noise=0.3, noisy_val=True)
    n_val = clean.val_y.numel()
    changed = int((noisy.val_y != clean.val_y).sum())
    assert changed == round(0.3 * n_val)  # exactly round(p n) labels, each to another class
    assert noisy.info["noise"]["n_noisy_val"] == changed
    oracle = load_dataset("mnist1d", None, seed=0, frac_train=0.1, p_label_noise=0.3)
    assert torch.equal(oracle.val_y, clean.val_y)
    assert TrainConfig().clean_val is False  # the trainer's default is the original's


def test_best_weights_epoch_zero_row_and_provenance(tmp_path):
    summary = train(TrainConfig(**MLP, epochs=3, p_label_noise=0.2, out_dir=str(tmp_path / "a")))
    run = load_run(tmp_path / "a")
    rows = run["metrics"]
    assert rows[0]["epoch"] == 0 and rows[0]["step"] == 0 and len(rows) == 4
    best_row = min(rows, key=lambda r: r["val_err"])  # the first minimum, as saved
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    assert best["epoch"] == best_row["epoch"] and best["val_err"] == best_row["val_err"]
    model = build_model("mlp", in_channels=1, num_classes=10, width=16, input_shape=(1, 40))
    model.load_state_dict(best["model"])
    data = load_dataset("mnist1d", None, seed=0, frac_train=0.1, p_label_noise=0.2, noisy_val=True)
    ev = evaluate(model, data.val_x[:128], data.val_y[:128], 512)
    assert (ev[1] / ev[2]).item() == best_row["val_err"]
    assert "swa_model" in best and rows[-1]["test_err_swa"] is not None
    # provenance: the generated data's digest, sizes, normalization, noise counts
    info = run["config"]["data"]
    assert info == summary["data"] and info["generated_sha256"]
    assert info["sizes"]["train"] == data.train_x.shape[0]
    assert info["noise"]["n_noisy"] == int(data.noisy.sum()) and info["noise"]["noisy_val"]
    assert len(info["normalization"]["mean"]) == 1
    # fine-tuning from the last weights: its epoch-0 row is the source's final evaluation
    ft = TrainConfig(
        **MLP,
        epochs=1,
        p_label_noise=0.2,
        model_path=str(tmp_path / "a" / "checkpoint.pt"),
        out_dir=str(tmp_path / "ft"),
    )
    train(ft)
    start = load_run(tmp_path / "ft")["metrics"][0]
    for k in ("train_err", "val_err", "test_err", "test_loss"):
        assert start[k] == rows[-1][k], k


def test_logged_sharpness_uses_the_same_m_and_rho_for_every_method(tmp_path):
    rows = {}
    for name, kw in {"erm": {}, "msam": dict(sam_rho=0.1, acc_steps=8)}.items():
        train(TrainConfig(**MLP, epochs=1, out_dir=str(tmp_path / name), **kw))
        rows[name] = load_run(tmp_path / name)["metrics"]
    for a, b in zip(rows["erm"], rows["msam"], strict=True):
        assert a["sharpness_m"] == b["sharpness_m"] == 128 and a["sharpness_rho"] == 0.05
    # the same weights before any step: the same number, whatever the training m
    assert rows["erm"][0]["sharpness"] == rows["msam"][0]["sharpness"]


@needs_fmnist
def test_data_dir_must_exist_and_resume_refuses_other_data(tmp_path):
    def same(d: Path) -> Path:
        d.mkdir()
        for f in FMNIST.iterdir():
            (d / f.name).symlink_to(f)
        return d

    a, b = same(tmp_path / "a"), same(tmp_path / "b")
    c = tmp_path / "c"
    shutil.copytree(a, c, symlinks=True)
    (c / "t10k-labels-idx1-ubyte.gz").unlink()
    raw = bytearray(gzip.decompress((FMNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # one test label differs
    (c / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    kw = dict(
        dataset="fashion_mnist",
        model="mlp",
        model_width=8,
        frac_train=0.005,
        batch_size=32,
        epochs=2,
        n_eval=64,
        n_eval_train=64,
        n_sharpness=32,
        sharpness_m=32,
        workers=1,
        device="cpu",
    )
    out = tmp_path / "run"
    train(TrainConfig(**kw, data_dir=str(a), stop_after_epoch=1, out_dir=str(out)))
    digest = hashlib.sha256((FMNIST / "train-labels-idx1-ubyte.gz").read_bytes()).hexdigest()
    files = load_run(out)["config"]["data"]["files"]
    assert digest in [f["sha256"] for f in files]
    with pytest.raises(ValueError, match="--data_dir .*differ"):
        train(TrainConfig(**kw, data_dir=str(c), resume=True, out_dir=str(out)))
    assert train(TrainConfig(**kw, data_dir=str(b), resume=True, out_dir=str(out)))["status"] == (
        "finished"
    )


BAD = [
    (["--data_dir", "/nonexistent"], "--data_dir has no effect with --dataset mnist1d"),
    (["--asam_eta", "0.1", "--sam_rho", "0.1"], "--asam_eta has no effect without --sam_variant"),
    (["--looksam_k", "3", "--sam_rho", "0.1"], "--looksam_k has no effect"),
    (["--looksam_alpha", "0.5", "--sam_rho", "0.1"], "--looksam_alpha has no effect"),
    (["--sam_epoch_frac_start", "0.5"], "--sam_epoch_frac_start has no effect without --sam_rho"),
    (["--sam_no_grad_norm"], "--sam_no_grad_norm has no effect without --sam_rho"),
    (["--sam_rho", "inf"], "--sam_rho: must be a finite number"),
    (["--sam_rho", "nan"], "--sam_rho: must be a finite number"),
    (["--clean_val"], "--clean_val has no effect without --p_label_noise"),
    (["--half_prec_dtype", "bfloat16"], "--half_prec_dtype has no effect without --half_prec"),
    (["--sam_rho", "0.1", "--sam_lr_mult", "1"], "--sam_rho and --sam_lr_mult are exclusive"),
    (["--add_weight_perturb_scale", "0.1", "--sam_rho", "0.1"], "cannot be combined"),
    (["--sam_rho", "0.1", "--sam_use_prev_batch", "--acc_steps", "2"], "--acc_steps > 1"),
    (["--activation", "softplus2"], "--activation is implemented for the PreAct ResNets only"),
    (["--droprate", "0.1"], "--droprate is implemented for the PreAct ResNets and WRNs"),
    (["--scale_init", "1"], "--scale_init has no effect without --model linear"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_flags_without_effect_are_errors(extra, message, capsys, tmp_path):
    argv = ["--dataset", "mnist1d", "--model", "mlp", "--batch_size", "32"]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out_dir", str(tmp_path / "run"), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@needs_fmnist
def test_missing_data_dir_is_an_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(
            [
                "--dataset",
                "fashion_mnist",
                "--model",
                "mlp",
                "--data_dir",
                "/nonexistent",
                "--out_dir",
                str(tmp_path / "run"),
            ]
        )
    assert (
        e.value.code == 2 and "--data_dir /nonexistent: no such folder" in capsys.readouterr().err
    )


def test_model_path_not_a_checkpoint_on_the_command_line(tmp_path):
    bad = tmp_path / "weights.txt"
    bad.write_text("hello")
    cfg = TrainConfig(**MLP, epochs=1, model_path=str(bad), out_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="--model_path .*weights.txt: cannot be read"):
        train(cfg)


def test_loop_wiring_of_the_originals_flags(tmp_path):
    """--sam_lr_mult sets rho = lr * mult at every step (a constant lr: the run equals --sam_rho
    lr * mult); --save_model_each_k_epochs keeps epochs 1-5 and every k-th; --grad_gauss_std
    changes the update."""
    base = dict(MLP, epochs=3, lr_schedule="constant", lr_max=0.05)
    runs = {
        "mult": dict(sam_lr_mult=0.5, save_model_each_k_epochs=2),
        "rho": dict(sam_rho=0.025),
        "noise": dict(sam_rho=0.025, grad_gauss_std=0.01),
    }
    w = {}
    for name, kw in runs.items():
        train(TrainConfig(**base, **kw, out_dir=str(tmp_path / name)))
        w[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(w["mult"][k], w["rho"][k]) for k in w["rho"])
    assert not all(torch.equal(w["noise"][k], w["rho"][k]) for k in w["rho"])
    rows = load_run(tmp_path / "mult")["metrics"]
    assert [r["rho"] for r in rows[1:]] == [0.025] * 3
    assert sorted(p.name for p in (tmp_path / "mult").glob("epoch_*.pt")) == [
        "epoch_1.pt",
        "epoch_2.pt",
        "epoch_3.pt",
    ]


@needs_fmnist
def test_freeze_bn_stats_in_a_run(tmp_path):
    kw = dict(
        dataset="fashion_mnist",
        model="resnet_tiny",
        model_width=4,
        frac_train=0.003,
        batch_size=32,
        epochs=1,
        n_eval=64,
        n_eval_train=64,
        n_sharpness=32,
        sharpness_m=32,
        workers=1,
        device="cpu",
        sam_rho=0.05,
    )
    train(TrainConfig(**kw, freeze_bn_stats=True, out_dir=str(tmp_path / "frozen")))
    sd = torch.load(tmp_path / "frozen" / "checkpoint.pt", weights_only=True)["model"]
    means = [v for k, v in sd.items() if k.endswith("running_mean")]
    assert means and all(torch.equal(v, torch.zeros_like(v)) for v in means)
    assert all(int(v) == 0 for k, v in sd.items() if k.endswith("num_batches_tracked"))
