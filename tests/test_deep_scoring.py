"""What a deep-net run stores for paired statistics: mnist1d's generated validation and test sets,
and which examples the best-validation and the last weights get wrong (wrong.npz + summary.json
``scored``), read back into ``suite.stats`` as a paired design."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from deep_nets.data import MNIST1D_TEST_SEED, MNIST1D_VAL_SEED, load_dataset, mnist1d_signals
from deep_nets.evaluation import read_wrong, write_wrong
from deep_nets.models import build_model
from deep_nets.train import BEST, CHECKPOINT, TrainConfig, best_row, train
from suite.rundir import load_run
from suite.stats import Outcome, compare, design

SIZES = dict(mnist1d_n_val=2000, mnist1d_n_test=5000)


def tiny(out, **kw) -> TrainConfig:
    base = dict(
        dataset="mnist1d",
        model="mlp",
        model_width=16,
        epochs=3,
        batch_size=32,
        frac_train=0.2,
        lr_max=0.05,
        workers=1,
        n_eval_train=256,
        n_sharpness=64,
        n_test_rows=1000,
        out_dir=str(out),
        **SIZES,
    )
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- data


def test_mnist1d_trains_on_the_standard_set_and_tests_on_generated_ones():
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    a = load_dataset("mnist1d", None, seed=0, **SIZES)
    b = load_dataset("mnist1d", None, seed=1, **SIZES)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    assert a.train_x.shape == (4000, 1, 40) and a.val_x.shape == (2000, 1, 40)
    assert a.test_x.shape == (5000, 1, 40)
    # the package's standard training set: 4000 of its 5000 signals of seed 42
    import mnist1d.data as pkg

    d = pkg.make_dataset(pkg.get_dataset_args())
    assert a.train_y.tolist() == d["y"].tolist()
    assert torch.bincount(a.test_y).tolist() == [500] * 10  # n / 10 signals of each digit
    # one validation and one test set for every seed (paired designs share the examples)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.val_y, b.val_y)
    info = a.info
    assert info["val_frac"] is None and info["sizes"]["val"] == 2000
    assert info["generated"]["val_seed"] == MNIST1D_VAL_SEED
    assert info["generated"]["test_seed"] == MNIST1D_TEST_SEED
    assert info["generated"]["n_test"] == 5000 and str(MNIST1D_TEST_SEED) in info["source"]
    # on the training set's scale (standardized with the seed-42 set's constants)
    assert abs(a.test_x.mean().item()) < 0.02 and abs(a.test_x.std().item() - 1) < 0.02

    # fresh signals: none of them is a training signal, and the two sets differ
    def rows(x):
        return {r.tobytes() for r in x.numpy().reshape(len(x), -1)}

    assert not rows(a.train_x) & rows(a.test_x) and not rows(a.train_x) & rows(a.val_x)
    assert not rows(a.val_x) & rows(a.test_x)  # selection never sees a test signal
    with pytest.raises(ValueError, match="mnist1d_n_test"):
        load_dataset("mnist1d", None, seed=0, mnist1d_n_test=15)


def test_generator_is_the_packages_for_another_seed():
    """mnist1d_signals(seed, n) equals make_dataset(num_samples=n, seed=seed) before its final
    standardization (the package's own code, here on a small set of another seed)."""
    import mnist1d.data as pkg

    args = pkg.get_dataset_args()
    args.seed, args.num_samples = 7, 200
    state = np.random.get_state()
    d = pkg.make_dataset(args)
    np.random.set_state(state)
    x, y = mnist1d_signals(7, 200)
    z = (x - x.mean()) / x.std()
    assert np.abs(z[:160] - d["x"]).max() < 1e-9 and np.abs(z[160:] - d["x_test"]).max() < 1e-9
    assert y.tolist() == np.concatenate([d["y"], d["y_test"]]).tolist()


# -------------------------------------------------------------------------- wrong.npz


def test_wrong_arrays_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"best_val": rng.random(13) < 0.3, "last_test": rng.random(100_001) < 0.5}
    write_wrong(tmp_path / "w.npz", arrays)
    back = read_wrong(tmp_path / "w.npz")
    assert back.keys() == arrays.keys()
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
    assert (tmp_path / "w.npz").stat().st_size < 20_000  # packed bits, compressed
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temporary file left


def test_selection_is_on_validation_only():
    rows = [
        {"epoch": 1, "val_err": 0.30, "test_err": 0.10},
        {"epoch": 2, "val_err": 0.20, "test_err": 0.40},
        {"epoch": 3, "val_err": 0.20, "test_err": 0.05},
    ]
    assert best_row(rows)["epoch"] == 2  # the first lowest validation error, whatever the test
    assert best_row([{"epoch": 1, "val_err": None, "test_err": 0.1}])["epoch"] == 1


def _recompute(weights, x, y):
    model = build_model("mlp", in_channels=1, num_classes=10, width=16, input_shape=(1, 40))
    model.load_state_dict(weights)
    with torch.no_grad():
        return (model(x).argmax(1) != y).numpy()


def test_runs_store_which_examples_they_get_wrong_and_pair(tmp_path):
    s_erm = train(tiny(tmp_path / "erm"))
    s_sam = train(tiny(tmp_path / "sam", sam_rho=0.05))
    s_other = train(tiny(tmp_path / "erm1", seed=1))
    data = load_dataset("mnist1d", None, seed=0, frac_train=0.2, **SIZES)
    sc = s_erm["scored"]
    assert sc["n_val"] == 2000 and sc["n_test"] == 5000 and sc["seed"] == 0
    wrong = read_wrong(tmp_path / "erm" / sc["file"])
    assert {k: v.size for k, v in wrong.items()} == {
        "best_val": 2000,
        "best_test": 5000,
        "last_val": 2000,
        "last_test": 5000,
    }
    # the weights they claim to be, on every example (not the rows' 1000-example test subset)
    last = torch.load(tmp_path / "erm" / CHECKPOINT, weights_only=True)["model"]
    best = torch.load(tmp_path / "erm" / BEST, weights_only=True)
    assert np.array_equal(wrong["last_test"], _recompute(last, data.test_x, data.test_y))
    assert np.array_equal(wrong["last_val"], _recompute(last, data.val_x, data.val_y))
    assert np.array_equal(wrong["best_test"], _recompute(best["model"], data.test_x, data.test_y))
    assert sc["best"]["epoch"] == best["epoch"] == s_erm["best_epoch"]
    assert sc["best"]["val_err"] == pytest.approx(s_erm["best_val_err"], abs=0)  # all val rows
    assert sc["last"]["test_err"] == wrong["last_test"].mean()
    rows = [r for r in load_run(tmp_path / "erm")["metrics"] if r["epoch_end"]]
    assert rows[-1]["test_err"] == _recompute(last, data.test_x[:1000], data.test_y[:1000]).mean()

    # the records suite.stats reads: same seed and examples -> paired; another seed -> unpaired
    def outcome(s, run):
        w = read_wrong(tmp_path / run / "wrong.npz")["last_test"]
        return Outcome(s["scored"]["seed"], s["scored"]["test_sha256"], w)

    a, b, c = outcome(s_erm, "erm"), outcome(s_sam, "sam"), outcome(s_other, "erm1")
    assert s_erm["scored"]["test_sha256"] == s_other["scored"]["test_sha256"]
    assert design([a], [b]) == "paired" and design([a], [c]) == "unpaired"
    gap = s_erm["scored"]["last"]["test_err"] - s_sam["scored"]["last"]["test_err"]
    assert compare([a], [b]).gap == pytest.approx(gap)


def test_best_is_scored_with_the_best_validation_weights(tmp_path):
    """80 training signals at a constant lr of 0.5: validation error is lowest mid-run (epoch 4
    here, 0.80 against 0.90 at the end), so the best and the last weights differ."""
    cfg = tiny(
        tmp_path / "run",
        epochs=8,
        batch_size=16,
        frac_train=0.02,
        lr_max=0.5,
        lr_schedule="constant",
        model_width=64,
        no_data_augm=True,
    )
    s = train(cfg)
    assert s["best_epoch"] < s["epochs_done"]  # the premise of this test
    data = load_dataset("mnist1d", None, seed=0, frac_train=0.02, **SIZES)
    wrong = read_wrong(tmp_path / "run" / "wrong.npz")
    best = torch.load(tmp_path / "run" / BEST, weights_only=True)
    model = build_model("mlp", in_channels=1, num_classes=10, width=64, input_shape=(1, 40))
    model.load_state_dict(best["model"])
    with torch.no_grad():
        want = (model(data.val_x).argmax(1) != data.val_y).numpy()
    assert np.array_equal(wrong["best_val"], want)
    assert s["scored"]["best"]["val_err"] == s["best_val_err"] < s["scored"]["last"]["val_err"]
