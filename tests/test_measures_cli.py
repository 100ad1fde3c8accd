"""deep_nets/eval_sharpness.py on a real run directory (mnist1d, a tiny MLP), in process.

The run directory is written in the trainer's format (``suite.rundir.create_run_dir`` with a
``TrainConfig``, a checkpoint holding ``{"model": state_dict}``); the numbers the CLI writes are
checked against references computed here on the same examples.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep_nets import eval_sharpness as ES
from deep_nets.config import TrainConfig
from deep_nets.data import load_dataset
from deep_nets.models import build_model
from sharpness.measures import m_sharpness
from suite.rundir import atomic_torch_save, create_run_dir

CFG = dict(dataset="mnist1d", model="mlp", model_width=4, frac_train=0.05, seed=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only spins on a shared machine (measured: 13 s of
    CPU for these files with one thread, 58 s with two under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _make_run(path, seed: int, cfg: dict = CFG):
    splits = load_dataset("mnist1d", None, seed=cfg["seed"], frac_train=cfg["frac_train"])
    torch.manual_seed(seed)
    model = build_model(
        cfg["model"], in_channels=1, num_classes=10, width=cfg["model_width"], input_shape=(1, 40)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):  # a few full-batch steps: a model that is not at its initialization
        opt.zero_grad()
        F.cross_entropy(model(splits.train_x), splits.train_y).backward()
        opt.step()
    create_run_dir(path, TrainConfig(**cfg).to_dict())
    atomic_torch_save({"model": model.state_dict(), "state": {"epoch": 1}}, path / "checkpoint.pt")
    return model.eval(), splits


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a, splits = _make_run(root / "a", 0)
    b, _ = _make_run(root / "b", 1)
    return root, a, b, splits


def _result(path, name):
    return json.loads((path / "measures" / name / "result.json").read_text())


def _csv(path, name):
    import csv

    with open(path / "measures" / name / "result.csv") as f:
        return list(csv.DictReader(f))


def _hessian(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    ps = tuple(p.detach().double() for p in model.parameters())
    m64 = copy.deepcopy(model).double()

    def f(*qs):
        return F.cross_entropy(torch.func.functional_call(m64, dict(zip(names, qs)), (x,)), y)

    blocks = torch.autograd.functional.hessian(f, ps, vectorize=True)
    sz = [p.numel() for p in ps]
    return torch.cat(
        [
            torch.cat([blocks[i][j].reshape(sz[i], sz[j]) for j in range(len(ps))], 1)
            for i in range(len(ps))
        ],
        0,
    ).numpy()


def test_hessian_measure_matches_the_dense_hessian(runs):
    root, a, _, splits = runs
    ES.main(
        [
            "--model_path",
            str(root / "a" / "checkpoint.pt"),
            "--measure",
            "hessian",
            "--n_examples",
            "0",
            "--float64",
            "--top_k",
            "3",
            "--max_iter",
            "80",
            "--tol",
            "1e-10",
            "--trace_samples",
            "2",
            "--density_steps",
            "20",
        ]
    )
    res = _result(root / "a", "hessian")
    H = _hessian(a, splits.train_x.double(), splits.train_y)
    ev = np.linalg.eigvalsh(H)[::-1]
    np.testing.assert_allclose(res["result"]["eigenvalues"], ev[:3], rtol=1e-7, atol=1e-10)
    assert res["result"]["lambda_max_over_lambda_3"] == pytest.approx(ev[0] / ev[2], rel=1e-6)
    assert res["n_examples"] == splits.train_x.shape[0]
    assert res["run_config"]["model_width"] == 4
    rows = _csv(root / "a", "hessian")
    grid = np.array([float(r["eigenvalue"]) for r in rows])
    phi = np.array([float(r["density"]) for r in rows])
    assert np.trapezoid(phi, grid) == pytest.approx(1.0, abs=1e-3)
    # an existing result is never replaced silently
    with pytest.raises(SystemExit):
        ES.main(["--model_path", str(root / "a"), "--measure", "hessian"])


def test_msharpness_measure_rows_and_flags(runs):
    root, a, _, splits = runs
    ES.main(
        [
            "--model_path",
            str(root / "a"),
            "--measure",
            "msharpness",
            "--name",
            "ms",
            "--n_examples",
            "64",
            "--m",
            "8",
            "32",
            "--rho",
            "0.1",
            "0.2",
            "--steps",
            "2",
            "--adaptive",
            "--norm",
            "inf",
            "--seed",
            "4",
        ]
    )
    rows = _csv(root / "a", "ms")
    assert [(int(r["m"]), float(r["rho"])) for r in rows] == [
        (8, 0.1),
        (8, 0.2),
        (32, 0.1),
        (32, 0.2),
    ]
    assert all(r["adaptive"] == "True" and float(r["p"]) == math.inf for r in rows)
    # the same numbers from the library on the same seeded subset
    idx = torch.randperm(splits.train_x.shape[0], generator=torch.Generator().manual_seed(4))[:64]
    x, y = splits.train_x[idx], splits.train_y[idx]
    ref = m_sharpness(
        a, F.cross_entropy, x, y, m=32, rho=0.2, steps=2, adaptive=True, p=math.inf, seed=4
    )
    assert float(rows[3]["sharpness"]) == pytest.approx(ref["sharpness"], rel=1e-6)
    with torch.no_grad():
        assert float(rows[3]["loss"]) == pytest.approx(float(F.cross_entropy(a(x), y)), rel=1e-5)
    assert int(rows[0]["n_chunks"]) == 8


def test_landscape_and_interpolation(runs):
    root, a, b, splits = runs
    x, y = splits.test_x, splits.test_y
    ES.main(
        [
            "--model_path",
            str(root / "a"),
            "--measure",
            "landscape",
            "--split",
            "test",
            "--n_examples",
            "0",
            "--points",
            "5",
        ]
    )
    rows = _csv(root / "a", "landscape")
    assert [float(r["alpha"]) for r in rows] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    with torch.no_grad():
        la, lb = float(F.cross_entropy(a(x), y)), float(F.cross_entropy(b(x), y))
    assert float(rows[2]["loss"]) == pytest.approx(la, rel=1e-5)
    ES.main(
        [
            "--model_path",
            str(root / "a"),
            "--measure",
            "interpolate",
            "--split",
            "test",
            "--n_examples",
            "0",
            "--other_path",
            str(root / "b" / "checkpoint.pt"),
            "--points",
            "5",
        ]
    )
    rows = _csv(root / "a", "interpolate")
    assert [float(r["t"]) for r in rows] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert float(rows[1]["loss"]) == pytest.approx(la, rel=1e-5)
    assert float(rows[3]["loss"]) == pytest.approx(lb, rel=1e-5)
    one_d = {float(r["alpha"]): float(r["loss"]) for r in _csv(root / "a", "landscape")}
    ES.main(
        [
            "--model_path",
            str(root / "a"),
            "--measure",
            "landscape",
            "--dim",
            "2",
            "--name",
            "l2",
            "--split",
            "test",
            "--n_examples",
            "0",
            "--points",
            "3",
        ]
    )
    rows = {(float(r["alpha"]), float(r["beta"])): float(r["loss"]) for r in _csv(root / "a", "l2")}
    assert len(rows) == 9
    for a_ in (-1.0, 0.0, 1.0):  # the first direction is the 1-D slice's (same seed)
        assert rows[(a_, 0.0)] == pytest.approx(one_d[a_], rel=1e-6)
    assert rows[(0.0, 1.0)] != pytest.approx(rows[(1.0, 0.0)], rel=1e-4)  # a second direction


def test_bad_paths_and_flags_are_clear_errors(runs, tmp_path, capsys):
    root, *_ = runs
    (tmp_path / "empty").mkdir()
    (tmp_path / "noconf").mkdir()
    torch.save({"model": {}}, tmp_path / "noconf" / "checkpoint.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases = [
        (["--model_path", str(tmp_path / "missing.pt"), "--measure", "hessian"], "no such file"),
        (["--model_path", str(tmp_path / "empty"), "--measure", "hessian"], "checkpoint.pt"),
        (["--model_path", str(tmp_path / "noconf"), "--measure", "hessian"], "config.json"),
        (["--model_path", str(root / "a"), "--measure", "interpolate"], "--other_path"),
        (
            [
                "--model_path",
                str(root / "a"),
                "--measure",
                "interpolate",
                "--name",
                "x",
                "--other_path",
                str(tmp_path / "junk.pt"),
            ],
            "not a loadable",
        ),
        (["--model_path", str(root / "a"), "--measure", "msharpness", "--norm", "1"], "--norm"),
        (["--model_path", str(root / "a"), "--measure", "msharpness", "--rho", "nan"], "--rho"),
        (["--model_path", str(root / "a"), "--measure", "msharpness", "--m", "0"], "--m"),
        (
            [
                "--model_path",
                str(root / "a"),
                "--measure",
                "msharpness",
                "--name",
                "big",
                "--n_examples",
                "16",
                "--m",
                "32",
            ],
            "--m 32",
        ),
        (["--model_path", str(root / "a"), "--measure", "curvature"], "--measure"),
    ]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as e:
            ES.main(argv)
        assert e.value.code == 2
        assert msg in capsys.readouterr().err, argv
