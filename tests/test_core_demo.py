"""The core stage (``analysis.core``): every run a deep_nets/train.py run launched as the deep-net
experiments launch theirs, the measurements taken afterwards on the saved weights, and the claims
rows judged by their pre-registered tests."""

import csv
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.core import claims as C
from analysis.core import measure
from analysis.core.figures import FIGURE
from analysis.core.profiles import OPTIMIZERS, PROFILES
from analysis.core.runs import RUNS, spec
from analysis.deep_nets.runs import run_path
from suite import launch
from suite.captions import read_captions
from suite.claims import CLAIM_COLUMNS, VERDICTS, write_claims
from suite.launch import run_state
from suite.rundir import load_run
from suite.stage import StageContext
from suite.stats import Outcome
from tests.core_utils import LaunchRecorder


def _ctx(profile: str, results: Path) -> StageContext:
    return StageContext("core", profile, PROFILES[profile], results, results, results / "core")


def _no_seconds(d: dict) -> dict:
    """``d`` without its wall-clock fields, at any depth."""
    return {
        k: _no_seconds(v) if isinstance(v, dict) else v for k, v in d.items() if "seconds" not in k
    }


def test_stage_trains_through_deep_nets_reuses_resumes_and_writes_rows(tmp_path):
    """The test profile end to end: 8 deep_nets/train.py runs (their config.json is the
    trainer's, with its data provenance; the per-epoch weights kept), reused on a second call, a
    run without summary resumed by the trainer's --resume to the same summary; key caption and
    six rows with valid columns and verdicts."""
    from analysis.core import reproduce

    results, figures = tmp_path / "results", tmp_path / "figures"
    rec = LaunchRecorder()
    old = launch.set_reporter(rec)
    try:
        reproduce("test", results, figures)
        runs = RUNS(_ctx("test", results))
        assert len(runs) == 8 and set(rec.actions.values()) == {"trained"}
        assert all(run_state(r) == "done" for r in runs)
        for r in runs:
            conf = load_run(r.out_dir)["config"]
            assert conf["config"]["dataset"] == "mnist1d" and "data" in conf
            assert (r.out_dir / "checkpoint.pt").is_file()
            # SGD keeps every epoch's weights (the loss-matched row), the others only the last
            assert (r.out_dir / "epoch_1.pt").is_file() == r.out_dir.name.startswith("erm")
        first = load_run(runs[3].out_dir)["summary"]

        rec.actions.clear()
        (runs[3].out_dir / "summary.json").unlink()  # a run that did not finish
        reproduce("test", results, figures)
        assert rec.actions == {r.name: "resumed" if r is runs[3] else "skipped" for r in runs}
        again = load_run(runs[3].out_dir)["summary"]
        assert _no_seconds(again) == _no_seconds(first)
    finally:
        launch.set_reporter(old)
    for r in runs:  # Run.train goes to worker processes: it must pickle
        pickle.loads(pickle.dumps(r.train))
    (cap,) = read_captions(results, "core")
    assert cap["file"] == FIGURE and cap["key"] and (figures / FIGURE).stat().st_size > 5000
    assert "2 epochs" in cap["shows"] and "2 seeds" in cap["shows"] and "width 16" in cap["shows"]
    rows = list(csv.DictReader((results / "core" / "claims.csv").open()))
    assert len(rows) == 6 and all(r["profile"] == "test" for r in rows)
    assert all(r["verdict"] in VERDICTS for r in rows)


def test_measurements_of_the_saved_weights(tmp_path):
    """measure.lambda_max of a saved checkpoint against an independent reference: the full
    Hessian of the cross-entropy (torch.func, float64) of the weights in that very file on the
    run's training examples, its eigenvalue of largest magnitude. measure.test_outcome: its mean
    is the trainer's own last test error, and runs of two seeds name the same test examples (so
    that suite.stats pairs them by example)."""
    from deep_nets.data import load_dataset
    from deep_nets.models import build_model
    from sharpness.measures import hessian_top_eigenvalue
    from suite.launch import run_all

    P = PROFILES["test"]
    runs = [r for r in RUNS(_ctx("test", tmp_path)) if r.out_dir.name.startswith("erm")]
    run_all(runs, stage="core")
    outs = [measure.test_outcome(r.out_dir) for r in runs]
    for r, o in zip(runs, outs):
        summary = load_run(r.out_dir)["summary"]
        assert o.seed == summary["data"]["seed"]
        assert o.values.size == summary["data"]["sizes"]["test"]
        # the trainer's own error of the last weights on every test example
        err = (summary.get("scored") or {}).get("last", {}).get("test_err")
        err = summary["test_err_last"] if err is None else err
        assert math.isclose(o.values.mean(), err, abs_tol=1e-9)
    assert [o.seed for o in outs] == [0, 1] and outs[0].digest == outs[1].digest
    r = runs[0]
    data = load_dataset("mnist1d", None, seed=0, val_frac=0.1, frac_train=0.3)
    x, y = data.train_x[:64].double(), data.train_y[:64]
    for name in ("epoch_1.pt", "checkpoint.pt"):
        model = build_model("mlp", in_channels=1, num_classes=10, width=16, input_shape=(1, 40))
        model.load_state_dict(torch.load(r.out_dir / name, weights_only=True)["model"])
        model.double()
        names = [k for k, _ in model.named_parameters()]
        shapes = [p.shape for p in model.parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

        def loss(w, model=model, names=names, shapes=shapes):
            parts, i = {}, 0
            for k, sh in zip(names, shapes):
                parts[k] = w[i : i + sh.numel()].reshape(sh)
                i += sh.numel()
            out = torch.func.functional_call(model, parts, (x,))
            return torch.nn.functional.cross_entropy(out, y)

        hess = torch.autograd.functional.hessian(loss, flat, vectorize=True)
        radius = float(torch.linalg.eigvalsh(hess).abs().max())
        got = measure.lambda_max(r.out_dir, name, P["hessian_examples"], seed=0)
        # a Rayleigh quotient of the Hessian of these weights on these examples, near its
        # spectral radius (power iteration; two eigenvalues of close magnitude and opposite
        # sign, common this early in training, slow it down)
        assert 0.5 * radius <= abs(got) <= radius * (1 + 1e-4), (name, got, radius)
        # and exactly the power iteration on the weights and data loaded here (float32)
        model.float()
        xf = x.float()
        ref = hessian_top_eigenvalue(
            lambda model=model, xf=xf: torch.nn.functional.cross_entropy(model(xf), y),
            list(model.parameters()),
            iters=100,
            tol=1e-4,
            generator=torch.Generator().manual_seed(0),
        )
        assert math.isclose(got, ref, rel_tol=1e-5), (name, got, ref)


def test_matched_epoch_and_saved_epochs(tmp_path):
    assert measure.matched_epoch({1: 2.0, 5: 0.5, 10: 0.2, 40: 0.05}, 0.3) == 10
    assert measure.matched_epoch({1: 2.0, 5: 0.5}, 0.5) == 5  # at the target counts
    assert measure.matched_epoch({1: 2.0, 5: 0.5}, 0.1) == 5  # never reached: the last
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.json").write_text('{"config": {"epochs": 12}}')
    for e in (1, 2, 10):
        (d / f"epoch_{e}.pt").write_bytes(b"")
    assert measure.saved_epochs(d) == {
        1: "epoch_1.pt",
        2: "epoch_2.pt",
        10: "epoch_10.pt",
        12: "checkpoint.pt",
    }


def _measured(**over) -> C.Measured:
    """Three seeds; SAM flatter (also loss-matched), SAM and ASAM better by 3 points on 1000
    test examples, LookSAM not fitting; LookSAM 1.21x SGD per step."""
    seeds = [0, 1, 2]
    rng = np.random.default_rng(0)

    def test(err: float) -> list[Outcome]:
        return [Outcome(s, "test", (rng.random(1000) < err).astype(float)) for s in seeds]

    base = (rng.random((3, 1000)) < 0.30).astype(float)
    better = base * (rng.random((3, 1000)) > 0.1)  # 10% of SGD's errors fixed: -3 points
    sgd = [Outcome(s, "test", base[i]) for i, s in enumerate(seeds)]
    m = dict(
        lam={"sgd": [5.0, 5.5, 6.0], "sam": [2.0, 2.4, 2.2], "asam": [3.0, 3.1, 3.2]}
        | {"looksam": [1.5, 1.6, 1.7]},
        train_err={"sgd": [0.0, 0.0, 0.005], "sam": [0.01, 0.0, 0.0], "asam": [0.0, 0.0, 0.0]}
        | {"looksam": [0.15, 0.16, 0.14]},
        train_loss={"sgd": [0.03, 0.04, 0.05], "sam": [0.06, 0.07, 0.08]}
        | {"asam": [0.08] * 3, "looksam": [0.7] * 3},
        test={
            "sgd": sgd,
            "sam": [Outcome(s, "test", better[i]) for i, s in enumerate(seeds)],
            "asam": [Outcome(s, "test", better[i]) for i, s in enumerate(seeds)],
            "looksam": test(0.3),
        },
        matched=[(30, 4.0), (30, 4.4), (35, 4.2)],
        cost={
            "sgd": [1.0, 1.1, 0.9, 1.0] * 5,
            "sam": [2.0, 2.2, 1.8, 2.0] * 5,
            "looksam": [1.21, 1.33, 1.08, 1.2] * 5,
        },
    )
    return C.Measured(**(m | over))


def _rows(m: C.Measured) -> dict[str, dict]:
    P = PROFILES["quick"]
    rows = [r.cells("core", "quick") for r in C.claims_rows(P, m)]
    return {r["claim"]: r for r in rows}


def _row(rows: dict, start: str) -> dict:
    (r,) = [r for c, r in rows.items() if c.startswith(start)]
    return r


def test_claims_rows_follow_the_pre_registered_tests(tmp_path):
    m = _measured()
    rows = _rows(m)
    write_claims(tmp_path / "claims.csv", list(rows.values()))
    assert all(set(r) <= set(CLAIM_COLUMNS) and r["verdict"] in VERDICTS for r in rows.values())
    flat, matched = (r for c, r in rows.items() if "flatter" in c)
    # the gap is log(SGD) - log(SAM) per seed, paired by seed: positive = the paper's direction
    d = [math.log(a) - math.log(b) for a, b in zip(m.lam["sgd"], m.lam["sam"])]
    assert math.isclose(flat["gap"], np.mean(d), rel_tol=1e-9)
    assert math.isclose(flat["se"], np.std(d, ddof=1) / math.sqrt(3), rel_tol=1e-9)
    assert flat["verdict"] == "reproduced" and "not loss-matched" in flat["claim"]
    dm = [math.log(a[1]) - math.log(b) for a, b in zip(m.matched, m.lam["sam"])]
    assert math.isclose(matched["gap"], np.mean(dm), rel_tol=1e-9)
    assert "epochs 30, 30, 35" in matched["ours"]
    sam = _row(rows, "SAM lowers")
    err = {o: np.mean([x.values.mean() for x in m.test[o]]) for o in ("sgd", "sam")}
    assert math.isclose(sam["gap"], err["sgd"] - err["sam"], rel_tol=1e-9)
    assert sam["verdict"] == "reproduced"
    # LookSAM does not fit: its test-error row is not comparable, with the reason
    look = _row(rows, "LookSAM (k=5) lowers")
    assert look["verdict"] == "not comparable" and "does not fit" in look["note"]
    cost = _row(rows, "LookSAM (k=5) costs")
    # Yuen's 20% trimmed mean of the per-round ratios, recomputed from its definition
    ratio = np.sort(np.array(m.cost["looksam"]) / np.array(m.cost["sgd"]))
    g = 4  # floor(0.2 * 20) cut from each end
    w = np.concatenate([[ratio[g]] * g, ratio[g:-g], [ratio[-g - 1]] * g])
    assert math.isclose(cost["gap"], ratio[g:-g].mean() - C.LOOKSAM_PAPER_COST, rel_tol=1e-9)
    assert math.isclose(cost["se"], w.std(ddof=1) / (0.6 * math.sqrt(20)), rel_tol=1e-9)
    assert cost["df"] == 20 - 2 * g - 1 and cost["verdict"] == "equivalent"
    # one preempted round (100x slower) moves a plain mean, not the trimmed one
    slow = _measured(cost=m.cost | {"looksam": [100.0] + m.cost["looksam"][1:]})
    assert math.isclose(_row(_rows(slow), "LookSAM (k=5) costs")["gap"], cost["gap"], rel_tol=0.05)


def test_claims_rows_contradicted_and_not_comparable():
    """SAM sharper than SGD: contradicted; LookSAM at 1.8x SGD per step: contradicted (the
    margin is 0.1); SAM not fitting: its rows are not comparable; a negative lambda_max: not
    comparable."""
    m = _measured(
        lam={"sgd": [2.0, 2.4, 2.2], "sam": [5.0, 5.5, 6.0], "asam": [1.0] * 3}
        | {"looksam": [1.0] * 3},
        cost={"sgd": [1.0, 1.1, 0.9] * 4, "sam": [2.0] * 12, "looksam": [1.8, 2.0, 1.6] * 4},
    )
    rows = _rows(m)
    assert next(r for c, r in rows.items() if "flatter" in c)["verdict"] == "contradicted"
    assert _row(rows, "LookSAM (k=5) costs")["verdict"] == "contradicted"
    bad = _measured(train_err=_measured().train_err | {"sam": [0.1, 0.1, 0.1]})
    rows = _rows(bad)
    assert all(r["verdict"] == "not comparable" for c, r in rows.items() if c.startswith("SAM "))
    neg = _measured(lam=_measured().lam | {"sgd": [-0.5, 1.0, 1.0]})
    flat = next(r for c, r in _rows(neg).items() if "flatter" in c)
    assert flat["verdict"] == "not comparable"


def test_profiles():
    """quick: 40 epochs, seeds 0-2; full: 100 epochs, seeds 0-4; paper: full's runs (the demo
    has no paper-scale setting); anything else is refused, naming the profiles."""
    root = Path("r")

    def runs(p):
        return RUNS(_ctx(p, root)) if p in PROFILES else RUNS(_ctx("quick", root))

    quick, full, paper = (runs(p) for p in ("quick", "full", "paper"))
    assert {(r.config["epochs"], r.config["seed"]) for r in quick} == {(40, s) for s in (0, 1, 2)}
    assert {(r.config["epochs"], r.config["seed"]) for r in full} == {(100, s) for s in range(5)}
    assert len(full) == 4 * 5
    variants = {(r.config["sam_variant"], r.config["sam_rho"]) for r in quick}
    assert variants == {("sam", 0.0), ("sam", 0.05), ("asam", 0.5), ("looksam", 0.05)}
    assert [(r.out_dir, r.config) for r in paper] == [(r.out_dir, r.config) for r in full]
    for r in quick + full:  # SGD keeps every epoch's weights, the others the last
        assert r.config["save_model_each_k_epochs"] == (1 if r.config["sam_rho"] == 0 else 0)
    assert run_path(root / "core", spec(PROFILES["quick"], "sgd", 0)) == quick[0].out_dir
    with pytest.raises(ValueError, match="quick"):
        from suite.profiles import settings

        settings(PROFILES, "huge")
    with pytest.raises(ValueError, match="sgd, sam, asam, looksam"):
        spec(PROFILES["quick"], "adam", 0)
    assert set(OPTIMIZERS) == {"sgd", "sam", "asam", "looksam"}
