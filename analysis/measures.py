"""Sharpness measurements: the SAM paper's Hessian-spectrum figure and loss-landscape pictures.

Stage function ``reproduce(profile, results_dir, figures_dir)`` (not yet in analysis/reproduce.py):

- Figure 1 (``measures_hessian_spectrum.png``): SGD vs SAM, the Hessian's eigenvalue density
  (stochastic Lanczos quadrature) at the end of training, and lambda_max and lambda_max /
  lambda_5 (Lanczos) over training. SAM paper (WRN-40-10 without BN, CIFAR-10): at the end,
  lambda_max 24.2 (SGD) vs 1.0 (SAM), lambda_max / lambda_5 11.4 vs 2.6.
- Figure 2 (``measures_landscapes.png``): 1-D and 2-D slices along random filter-normalized
  directions around the SGD and SAM solutions (Li et al. 2018; the seminar's pictures), and the
  linear interpolation between an ERM solution and the ERM -> SAM fine-tuned one (t in
  [-0.5, 1.5]; "Towards Understanding SAM", Fig. 9: ERM -> SAM stays in the ERM basin).

Quick profile (CPU, about a minute on an idle core): a no-norm MLP (40-64-64-10) on MNIST-1D
(generated offline), 30 epochs, 3 seeds; the Hessian of the training cross-entropy on 1024 fixed
training examples. Full profile: the same with a wider MLP, 100 epochs, 5 seeds. The paper
profile (WRN without BN on CIFAR-10, GPU days) is not run here.

Measured (quick, 2026-11-22, shared 2-core CPU: 70 s wall, 22 s CPU): final lambda_max SGD
7.85 +- 0.22 vs SAM 4.53 +- 0.09 (3 seeds; reproduced), lambda_max / lambda_5 1.56 +- 0.05 vs
1.54 +- 0.03 (within noise: this small MLP's top eigenvalues are not separated like a WRN's), mean
1-D loss rise for |alpha| <= 0.5 0.32 +- 0.08 vs 0.17 +- 0.03 (reproduced).

Helpers for the figures that need other families' runs: ``msharpness_vs_error`` +
``rank_correlation`` (Fig. 3, deep-net run directories) and ``exact_spectrum`` (Fig. 4, the ReLU
and diagonal families' small models).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharpness import SAM
from sharpness import measures as M
from suite.claims import compare_seeds, fmt_mean_std, write_claims
from suite.cli import make_seeds
from suite.rundir import atomic_write_json, create_run_dir, load_run, read_json

FAMILY = "measures"
OPTS = ("sgd", "sam")
FIG1 = "measures_hessian_spectrum.png"
FIG2 = "measures_landscapes.png"


@dataclass
class SpectrumConfig:
    """One training run of the spectrum experiment."""

    optimizer: str = "sgd"
    seed: int = 0
    epochs: int = 30
    width: int = 64
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    rho: float = 0.1
    hessian_examples: int = 1024
    eval_epochs: tuple[int, ...] = (0, 5, 10, 20, 30)
    lanczos_iter: int = 60
    density_steps: int = 80
    start_from: str | None = None  # a state-dict file (ERM -> SAM fine-tuning)
    start_epoch: int = 0
    save_epoch: int = -1  # also save the weights at the start of this epoch (model_epoch<k>.pt)


PROFILES: dict[str, dict[str, Any]] = {
    "quick": dict(seeds=[0, 1, 2], cfg=dict(epochs=30), finetune_from=20),
    "test": dict(
        seeds=[0, 1], finetune_from=1,
        cfg=dict(epochs=2, width=8, hessian_examples=64, eval_epochs=(0, 2), lanczos_iter=15,
                 density_steps=10),
    ),
    "full": dict(
        seeds=[0, 1, 2, 3, 4], finetune_from=70,
        cfg=dict(epochs=100, width=256, eval_epochs=(0, 5, 10, 20, 40, 60, 80, 100)),
    ),
}  # fmt: skip


def _model(width: int, data) -> nn.Module:
    from deep_nets.models import build_model

    return build_model(
        "mlp", in_channels=1, num_classes=data.num_classes, width=width,
        input_shape=tuple(data.input_shape),
    )  # fmt: skip


def _lr(cfg: SpectrumConfig, t: float) -> float:
    """Cosine schedule over the run's epochs, t the fractional epoch."""
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t / cfg.epochs))


def train_spectrum_run(cfg: SpectrumConfig, out_dir: Path) -> dict:
    """Train one MLP on MNIST-1D with SGD or SAM, measuring the Hessian at ``eval_epochs``;
    writes a run directory (metrics: one row per measurement) and the final state dict."""
    from deep_nets.data import load_dataset

    torch.set_num_threads(1)  # a shared machine: one core per run
    seeds = make_seeds(cfg.seed)
    data = load_dataset("mnist1d", None, seed=cfg.seed)
    torch.manual_seed(int(seeds.init.initial_seed()))
    model = _model(cfg.width, data)
    if cfg.start_from:
        model.load_state_dict(torch.load(cfg.start_from, weights_only=True))
    base = dict(lr=cfg.lr, momentum=cfg.momentum)
    opt = (
        SAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, **base)
        if cfg.optimizer == "sam"
        else torch.optim.SGD(model.parameters(), **base)
    )
    run = create_run_dir(out_dir, asdict(cfg), overwrite=True)
    hx, hy = data.train_x[: cfg.hessian_examples], data.train_y[: cfg.hessian_examples]
    n = data.train_x.shape[0]
    steps = n // cfg.batch_size

    def measure(epoch: int) -> dict:
        s = M.spectrum(model, F.cross_entropy, (hx, hy), k=5, max_iter=cfg.lanczos_iter,
                       tol=1e-3, seed=cfg.seed)  # fmt: skip
        model.eval()
        with torch.no_grad():
            tr = M.evaluate(model, F.cross_entropy, (data.train_x, data.train_y))
            te = M.evaluate(model, F.cross_entropy, (data.test_x, data.test_y))
        row = {"epoch": epoch, "lambda_max": s["lambda_max"],
               "ratio": s["lambda_max_over_lambda_5"], "eigenvalues": s["eigenvalues"],
               "train_loss": tr["loss"], "train_err": tr["error"],
               "test_err": te["error"]}  # fmt: skip
        run.log(row)
        return row

    row = None
    for epoch in range(cfg.start_epoch, cfg.epochs):
        if epoch in cfg.eval_epochs:
            row = measure(epoch)
        if epoch == cfg.save_epoch:
            torch.save(model.state_dict(), out_dir / f"model_epoch{epoch}.pt")
        model.train()
        perm = torch.randperm(n, generator=seeds.data)
        for i in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, epoch + i / steps)
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x, y = data.train_x[idx], data.train_y[idx]

            def closure(x=x, y=y):
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.zero_grad()
            closure()
            if isinstance(opt, SAM):
                opt.step(closure)
            else:
                opt.step()
    row = measure(cfg.epochs)
    op = M.HessianOperator(model, F.cross_entropy, (hx, hy))
    dens = M.slq_density(op, n_vectors=1, steps=cfg.density_steps, seed=cfg.seed)
    torch.save(model.state_dict(), out_dir / "model.pt")
    summary = {**row, "density_nodes": dens.nodes, "density_weights": dens.weights}
    run.write_summary(summary)
    return summary


def _landscapes(model: nn.Module, data, n: int, seed: int, points_1d: int, points_2d: int):
    x, y = data.train_x[:n], data.train_y[:n]
    d1 = M.filter_normalized_direction(model, seed)
    d2 = M.filter_normalized_direction(model, seed + 10**6)
    a1 = np.linspace(-1, 1, points_1d).tolist()
    a2 = np.linspace(-1, 1, points_2d).tolist()
    return {
        "slice_1d": M.slice_1d(model, F.cross_entropy, (x, y), d1, a1),
        "slice_2d": M.slice_2d(model, F.cross_entropy, (x, y), d1, d2, a2, a2),
    }


def run_experiments(profile: str, results_dir: Path) -> Path:
    """Train (or reuse) the profile's SGD and SAM runs and the ERM -> SAM fine-tuning of seed 0,
    then measure the landscapes; returns the profile's results folder."""
    from deep_nets.data import load_dataset

    prof = PROFILES[profile]
    root = Path(results_dir) / FAMILY / profile
    k = prof["finetune_from"]
    for opt in OPTS:
        for s in prof["seeds"]:
            d = root / f"{opt}_seed{s}"
            if (d / "summary.json").exists() and (d / "model.pt").exists():
                continue
            if d.exists():  # unfinished: start over (a run takes seconds)
                shutil.rmtree(d)
            cfg = SpectrumConfig(optimizer=opt, seed=s, **prof["cfg"])
            if opt == "sgd" and s == 0:
                cfg.save_epoch = k
            train_spectrum_run(cfg, d)
            print(f"  measures: {opt} seed {s} done", flush=True)
    # ERM -> SAM: seed 0's ERM weights at epoch k, then SAM for the remaining epochs (same
    # cosine schedule): "Towards Understanding SAM" Fig. 9's fine-tuning, at our scale
    ft = root / "erm_to_sam_seed0"
    if not (ft / "summary.json").exists():
        if ft.exists():
            shutil.rmtree(ft)
        cfg = SpectrumConfig(optimizer="sam", seed=0, **prof["cfg"])
        cfg.start_from, cfg.start_epoch = str(root / "sgd_seed0" / f"model_epoch{k}.pt"), k
        cfg.eval_epochs = ()
        train_spectrum_run(cfg, ft)
    land = root / "landscapes.json"
    if not land.exists():
        data = load_dataset("mnist1d", None, seed=0)
        cfg = SpectrumConfig(**prof["cfg"])
        out: dict[str, Any] = {}
        for name in [f"{o}_seed{s}" for o in OPTS for s in prof["seeds"]]:
            model = _model(cfg.width, data)
            model.load_state_dict(torch.load(root / name / "model.pt", weights_only=True))
            model.eval()
            pts = (41, 15) if name.endswith("seed0") else (41, 3)
            out[name] = _landscapes(model, data, cfg.hessian_examples, 0, *pts)
        a, b = (torch.load(root / n / "model.pt", weights_only=True)
                for n in ("sgd_seed0", "erm_to_sam_seed0"))  # fmt: skip
        n = cfg.hessian_examples
        ts = np.linspace(-0.5, 1.5, 21).tolist()
        out["interpolation"] = {
            split: M.interpolate(model, a, b, ts, F.cross_entropy, (x[:n], y[:n]))
            for split, (x, y) in (("train", (data.train_x, data.train_y)),
                                  ("test", (data.test_x, data.test_y)))
        }  # fmt: skip
        atomic_write_json(land, out)
    return root


# ----------------------------------------------------------------------------------- loading
def load_results(profile: str, results_dir: Path) -> dict[str, Any]:
    """{"runs": {opt: [load_run(...) per seed]}, "landscapes": {...}} of a profile."""
    root = Path(results_dir) / FAMILY / profile
    if not (root / "landscapes.json").exists():
        raise FileNotFoundError(
            f"no {FAMILY} results of profile {profile} under {root}: run `make reproduce` (or "
            f"`python -m analysis.reproduce --only {FAMILY}`) first"
        )
    runs = {o: [load_run(root / f"{o}_seed{s}") for s in PROFILES[profile]["seeds"]] for o in OPTS}
    return {"runs": runs, "landscapes": read_json(root / "landscapes.json"), "root": root}


def _sharpness_1d(rows: list[dict], radius: float = 0.5) -> float:
    """Mean loss increase L(w + a d) - L(w) over |a| <= radius of a 1-D slice."""
    l0 = min(rows, key=lambda r: abs(r["alpha"]))["loss"]
    return float(np.mean([r["loss"] - l0 for r in rows if abs(r["alpha"]) <= radius + 1e-9]))


# ----------------------------------------------------------------------------------- figures
COLORS = {"sgd": "tab:blue", "sam": "tab:red"}


def plot_spectrum(res: dict[str, Any], path: Path) -> None:
    """Figure 1: density at the end (seed 0), lambda_max and lambda_max / lambda_5 over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for o in OPTS:
        s = res["runs"][o][0]["summary"]
        d = M.Density(s["density_nodes"], s["density_weights"])
        nodes = np.concatenate([np.asarray(n) for n in d.nodes])
        lo, hi = nodes.min(), nodes.max()
        sigma = 0.01 * max(hi - lo, 1e-6)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 2000)
        ax[0].semilogy(grid, d.smooth(grid, sigma) + 1e-8, color=COLORS[o], label=o.upper())
        for key, a in (("lambda_max", ax[1]), ("ratio", ax[2])):
            runs = res["runs"][o]
            ep = [r["epoch"] for r in runs[0]["metrics"]]
            v = np.array([[r[key] for r in run["metrics"]] for run in runs])
            a.plot(ep, v.mean(0), "o-", color=COLORS[o], label=o.upper())
            a.fill_between(ep, v.mean(0) - v.std(0), v.mean(0) + v.std(0), color=COLORS[o],
                           alpha=0.2)  # fmt: skip
    ax[0].set(xlabel="eigenvalue", ylabel="density (SLQ, smoothed)",
              title="Hessian spectrum at the end (seed 0)")  # fmt: skip
    ax[1].set(xlabel="epoch", ylabel="lambda_max", title="top eigenvalue (mean +- std)")
    ax[2].set(xlabel="epoch", ylabel="lambda_max / lambda_5", title="spectral ratio")
    for a in ax:
        a.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_landscapes(res: dict[str, Any], path: Path) -> None:
    """Figure 2: 1-D slices, 2-D contours of SGD and SAM (seed 0), ERM -> ERM->SAM interpolation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    land = res["landscapes"]
    fig, ax = plt.subplots(1, 4, figsize=(19, 4))
    for o in OPTS:
        rows = land[f"{o}_seed0"]["slice_1d"]
        ax[0].plot([r["alpha"] for r in rows], [r["loss"] for r in rows], color=COLORS[o],
                   label=o.upper())  # fmt: skip
    ax[0].set(xlabel="alpha (filter-normalized direction)", ylabel="train loss", yscale="log",
              title="1-D slices")  # fmt: skip
    ax[0].legend()
    vmax = max(r["loss"] for o in OPTS for r in land[f"{o}_seed0"]["slice_2d"])
    levels = np.geomspace(
        min(r["loss"] for o in OPTS for r in land[f"{o}_seed0"]["slice_2d"]), vmax, 15
    )
    for o, a in zip(OPTS, ax[1:3]):
        rows = land[f"{o}_seed0"]["slice_2d"]
        al = sorted({r["alpha"] for r in rows})
        be = sorted({r["beta"] for r in rows})
        z = np.array([[r["loss"] for r in rows if r["alpha"] == x] for x in al])
        cs = a.contour(be, al, z, levels=levels, cmap="viridis")
        a.clabel(cs, fontsize=6, fmt="%.2g")
        a.set(xlabel="beta", ylabel="alpha", title=f"2-D slice, {o.upper()}")
    for split, style in (("train", "-"), ("test", "--")):
        rows = land["interpolation"][split]
        ax[3].plot([r["t"] for r in rows], [r["loss"] for r in rows], style, label=split)
    ax[3].axvline(0, color="gray", lw=0.5)
    ax[3].axvline(1, color="gray", lw=0.5)
    ax[3].set(xlabel="t (0: ERM, 1: ERM -> SAM)", ylabel="loss", title="linear interpolation")
    ax[3].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ claims
def claims(res: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    """Claims rows (suite.claims verdicts over seeds, lower = the paper's direction)."""
    runs = res["runs"]
    n = len(runs["sgd"])
    c = runs["sgd"][0]["config"]["config"]
    setup = (f"MNIST-1D, MLP 40-{c['width']}x2-10 (no norm), {c['epochs']} epochs, "
             f"Hessian on {c['hessian_examples']} train ex.")  # fmt: skip
    note = ("paper: WRN-40-10 without BN on CIFAR-10 (GPU days); ours: a CPU-minutes MLP, "
            "so the magnitudes are not comparable, only the direction of the effect")  # fmt: skip
    rows = []
    for key, what, paper in (
        ("lambda_max", "SAM ends with a smaller top Hessian eigenvalue than SGD",
         "24.2 (SGD) vs 1.0 (SAM)"),
        ("ratio", "SAM ends with a smaller lambda_max / lambda_5 than SGD",
         "11.4 (SGD) vs 2.6 (SAM)"),
    ):  # fmt: skip
        a = [r["summary"][key] for r in runs["sgd"]]
        b = [r["summary"][key] for r in runs["sam"]]
        g = compare_seeds(a, b, lower_is_better=True)
        rows.append(dict(
            family=FAMILY, paper="SAM paper (Foret et al. 2021), Hessian spectrum figure",
            claim=what, paper_value=paper,
            ours=f"{setup}: SGD {fmt_mean_std(a)} vs SAM {fmt_mean_std(b)}",
            gap=g.gap, se=g.se, profile=profile, verdict=g.verdict, figure=FIG1, note=note,
        ))  # fmt: skip
    land = res["landscapes"]
    seeds = PROFILES[profile]["seeds"]
    a = [_sharpness_1d(land[f"sgd_seed{s}"]["slice_1d"]) for s in seeds]
    b = [_sharpness_1d(land[f"sam_seed{s}"]["slice_1d"]) for s in seeds]
    g = compare_seeds(a, b, lower_is_better=True)
    rows.append(dict(
        family=FAMILY, paper="SAM seminar slides / Li et al. 2018, 1-D loss landscapes",
        claim="SAM's minimum is flatter along random filter-normalized directions "
              "(mean train-loss rise for |alpha| <= 0.5)",
        paper_value="qualitative (pictures)",
        ours=f"SGD {fmt_mean_std(a)} vs SAM {fmt_mean_std(b)}, one direction per seed",
        gap=g.gap, se=g.se, profile=profile, verdict=g.verdict, figure=FIG2,
        note=f"{setup}; {n} seeds, one seeded random direction each",
    ))  # fmt: skip
    rows.append(dict(
        family=FAMILY, paper="SAM paper, Hessian spectrum figure (paper profile)",
        claim="the same at the paper's scale (WRN-40-10 without BN, CIFAR-10)",
        paper_value="24.2 vs 1.0; 11.4 vs 2.6", ours="not run (GPU days)", gap="", se="",
        profile="paper", verdict="not run", figure="",
        note="deep_nets/eval_sharpness.py --measure hessian on a WRN run gives these numbers",
    ))  # fmt: skip
    return rows


def reproduce(profile: str, results_dir: Path, figures_dir: Path) -> None:
    """Run the profile, draw Figures 1 and 2, write results/measures/claims.csv."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: choose from {', '.join(PROFILES)}")
    run_experiments(profile, Path(results_dir))
    res = load_results(profile, Path(results_dir))
    plot_spectrum(res, Path(figures_dir) / FIG1)
    plot_landscapes(res, Path(figures_dir) / FIG2)
    write_claims(Path(results_dir) / FAMILY / "claims.csv", claims(res, profile))


# ------------------------------------------------------- helpers for Figures 3 and 4 (others' runs)
def msharpness_vs_error(
    run_dirs: Sequence[str | Path],
    ms: Sequence[int] = (16, 128),
    rhos: Sequence[float] = (0.05, 0.1),
    *,
    kind: str = "worst",
    adaptive: bool = False,
    n_examples: int = 1024,
    steps: int = 20,
    seed: int = 0,
    error_key: str = "test_err_last",
    device: str = "cpu",
):
    """Figure 3's table: one row per (run, m, rho) with the run's m-sharpness on ``n_examples``
    seeded training examples and its test error (``summary.json[error_key]``), for deep_nets
    run directories (``deep_nets/eval_sharpness.load_run``). Returns a pandas DataFrame."""
    import pandas as pd

    from deep_nets.eval_sharpness import _examples
    from deep_nets.eval_sharpness import load_run as load_deep_run

    rows = []
    for d in run_dirs:
        run = load_deep_run(str(d), torch.device(device))
        summary = read_json(Path(run.run_dir) / "summary.json")
        x, y = _examples(run, "train", n_examples, seed)
        for m in ms:
            for rho in rhos:
                r = M.m_sharpness(run.model, F.cross_entropy, x, y, m=m, rho=rho, kind=kind,
                                  adaptive=adaptive, steps=steps, seed=seed)  # fmt: skip
                rows.append({"run": str(d), "m": m, "rho": rho, "sharpness": r["sharpness"],
                             "test_error": summary.get(error_key)})  # fmt: skip
    return pd.DataFrame(rows)


def rank_correlation(df, x: str = "sharpness", y: str = "test_error", by=("m", "rho")):
    """Kendall's tau between ``x`` and ``y`` within each group of ``by`` (the paper's claim:
    m-sharpness with small m correlates best with test error). Returns a DataFrame."""
    import pandas as pd

    out = []
    for key, g in df.groupby(list(by)):
        tau = g[x].corr(g[y], method="kendall") if len(g) > 1 else math.nan
        out.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "kendall_tau": tau,
                    "n_runs": len(g)})  # fmt: skip
    return pd.DataFrame(out)


def exact_spectrum(model: nn.Module, loss_fn, data, *, dtype=torch.float64) -> np.ndarray:
    """All eigenvalues (descending) of the exact Hessian (Figure 4: the ReLU family's ~300
    parameter networks, the diagonal nets): ``HessianOperator.dense`` + numpy ``eigvalsh``."""
    H = M.HessianOperator(model, loss_fn, data, dtype=dtype).dense().cpu().numpy()
    return np.linalg.eigvalsh((H + H.T) / 2)[::-1]
