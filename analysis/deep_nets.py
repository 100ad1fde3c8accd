"""Deep nets: ERM vs SAM vs m-SAM on a small CPU problem, figures and claims table.

Stage of ``make reproduce`` (``reproduce(profile, results_dir, figures_dir)``). The quick profile
trains a 2-hidden-layer MLP on mnist1d (generated offline) with ERM, SAM with m = batch and m-SAM
with a small m, all through ``deep_nets.train.train``, and compares test error and the logged
one-step m-sharpness with the claims of "Towards Understanding SAM" (REFERENCE.md §4.1). The
paper's numbers are for ResNets on CIFAR (GPU days); the claims table says which ones our CPU
scale can speak to and how well they reproduce.

Runs land in ``results/deep_nets/<profile>/<method>_seed<k>/`` (the run format of
``sharpness.runs``); a finished run is reused, an unfinished one is resumed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from suite.claims import write_claims  # noqa: E402
from suite.rundir import load_run  # noqa: E402

FAMILY = "deep_nets"

# method name -> trainer flags on top of the profile's base flags
METHODS: dict[str, dict[str, Any]] = {
    "ERM": {},
    "SAM (m=batch)": {"sam_rho": 0.1},
    "m-SAM (m=batch/8)": {"sam_rho": 0.1, "acc_steps": 8},
}

PROFILES: dict[str, dict[str, Any]] = {
    # ~2 minutes on 2 CPU cores (one thread: the machine is shared). Without augmentation the
    # MLP interpolates mnist1d (train error 0), the regime where SAM's implicit bias matters.
    "quick": dict(
        base=dict(
            dataset="mnist1d", model="mlp", model_width=128, batch_size=128, epochs=60,
            lr_max=0.1, lr_schedule="cosine", l2_reg=5e-4, no_data_augm=True,
            n_sharpness=512, sharpness_m=128, workers=1,
        ),
        seeds=[0, 1],
    ),
    # a few seconds: used by the tests and the notebook test
    "test": dict(
        base=dict(
            dataset="mnist1d", model="mlp", model_width=16, batch_size=32, epochs=2,
            frac_train=0.2, lr_max=0.05, n_eval=256, n_eval_train=256, n_sharpness=64,
            sharpness_m=32, workers=1,
        ),
        seeds=[0],
    ),
    # hours on a CPU: Fashion-MNIST, a small ResNet, three seeds
    "full": dict(  # the Fashion-MNIST config of deep_nets/configs/fmnist_resnet_tiny_msam.py
        base=dict(
            dataset="fashion_mnist", model="resnet_tiny_gn", batch_size=128, epochs=30,
            lr_max=0.05, lr_schedule="cosine", l2_reg=5e-4, n_sharpness=1024, sharpness_m=128,
        ),
        seeds=[0, 1, 2],
    ),
}  # fmt: skip

# Paper numbers (REFERENCE.md §4.1, Fig. 1, approx.): ResNet-18 on CIFAR-10, test error %.
PAPER = {
    "erm": 5.1,
    "msam_best": 4.25,  # 128-SAM at rho 0.2
    "nsam": 5.1,
}


def run_dir(results_dir: Path, profile: str, method: str, seed: int) -> Path:
    slug = method.split(" ")[0].lower().replace("-", "")
    return Path(results_dir) / FAMILY / profile / f"{slug}_seed{seed}"


def run_experiments(profile: str, results_dir: Path) -> list[Path]:
    """Train every (method, seed) of ``profile`` (reusing finished runs); return the run dirs."""
    from deep_nets.config import TrainConfig
    from deep_nets.train import train

    spec = PROFILES[profile]
    dirs = []
    for seed in spec["seeds"]:
        for method, flags in METHODS.items():
            out = run_dir(results_dir, profile, method, seed)
            dirs.append(out)
            summary = out / "summary.json"
            if summary.exists() and load_run(out)["summary"].get("status") == "finished":
                continue
            cfg = TrainConfig(
                **spec["base"], **flags, seed=seed, out_dir=str(out),
                resume=(out / "config.json").exists(),
            )  # fmt: skip
            print(f"[deep_nets] {profile}: {method}, seed {seed}", flush=True)
            train(cfg)
    return dirs


def _runs(results_dir: Path, profile: str, needs: str):
    """(method, seed, run) of the profile's runs whose directory holds the file ``needs``."""
    for seed in PROFILES[profile]["seeds"]:
        for method in METHODS:
            d = run_dir(results_dir, profile, method, seed)
            if (d / needs).exists():
                yield method, seed, load_run(d)


def load_metrics(results_dir: Path, profile: str = "quick") -> pd.DataFrame:
    """All metric rows of a profile's runs, with columns method and seed added."""
    frames = []
    for method, seed, run in _runs(results_dir, profile, "config.json"):
        df = pd.DataFrame(run["metrics"])
        df["method"], df["seed"] = method, seed
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"no deep_nets runs for profile {profile} under {results_dir}")
    return pd.concat(frames, ignore_index=True)


def summary_table(results_dir: Path, profile: str = "quick") -> pd.DataFrame:
    """Per method: mean and std over seeds of the final and best-validation test error (%),
    final train error (%) and final one-step m-sharpness."""
    recs = []
    for method, seed, run in _runs(results_dir, profile, "summary.json"):
        s = run["summary"]
        recs.append(
            dict(
                method=method,
                seed=seed,
                test_err_last=100 * s["test_err_last"],
                test_err_at_best_val=100 * s["test_err_at_best_val"],
                train_err_last=100 * s["train_err_last"],
                sharpness_last=s["sharpness_last"],
            )
        )
    df = pd.DataFrame(recs)
    if df.empty:
        raise FileNotFoundError(f"no finished deep_nets runs for profile {profile}")
    agg = df.groupby("method", sort=False).agg(["mean", "std", "count"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    return agg.drop(columns=[c for c in agg.columns if c.startswith("seed_")]).reset_index()


def plot_curves(metrics: pd.DataFrame, path: Path) -> Path:
    """Test error and one-step m-sharpness per epoch, one line per method (mean over seeds)."""
    rows = metrics[metrics["epoch_end"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for method, g in rows.groupby("method", sort=False):
        m = g.groupby("epoch")[["test_err", "train_err", "sharpness"]].mean()
        axes[0].plot(m.index, 100 * m["test_err"], label=method)
        axes[1].plot(m.index, 100 * m["train_err"], label=method)
        axes[2].plot(m.index, m["sharpness"], label=method)
    for ax, title in zip(
        axes, ["test error (%)", "train error (%)", "one-step m-sharpness"], strict=True
    ):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_final(table: pd.DataFrame, path: Path) -> Path:
    """Bar chart of the final test error per method (error bars: std over seeds)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    std = table["test_err_last_std"].fillna(0.0)
    ax.bar(table["method"], table["test_err_last_mean"], yerr=std, capsize=4, color="C0")
    lo = (table["test_err_last_mean"] - std).min()
    ax.set_ylim(max(0.0, lo - 3), None)
    ax.set_ylabel("final test error (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def claims(table: pd.DataFrame, profile: str) -> list[dict[str, str]]:
    """Claims rows: the paper's number next to ours, with an honest verdict."""
    t = table.set_index("method")
    erm, sam, msam = (t.loc[k] for k in METHODS)
    n = int(erm["test_err_last_count"])
    base = PROFILES[profile]["base"]
    bs = base["batch_size"]
    m_small = bs // METHODS["m-SAM (m=batch/8)"]["acc_steps"]
    setup = f"{base['dataset']} {base['model']}, {base['epochs']} epochs, {n} seed"
    setup += "s" if n > 1 else ""

    def fmt(row: pd.Series, col: str = "test_err_last") -> str:
        s = f"{row[col + '_mean']:.2f}%"
        if row[col + "_count"] > 1:
            s += f" +- {row[col + '_std']:.2f}"
        return s

    def verdict(worse: pd.Series, better: pd.Series, col: str, floor: float) -> str:
        """reproduced: ``better`` lower by more than the noise (the two seed stds combined, at
        least ``floor``); partly: lower, but within the noise; else not reproduced."""
        gap = worse[col + "_mean"] - better[col + "_mean"]
        noise = floor
        if n > 1:
            noise = max(floor, float(math.hypot(worse[col + "_std"], better[col + "_std"])))
        return "reproduced" if gap > noise else ("partly" if gap > 0 else "not reproduced")

    v1 = verdict(erm, msam, "test_err_last", 0.5)
    v2 = verdict(sam, msam, "test_err_last", 0.5)
    v_sam, v_msam = (verdict(erm, x, "sharpness_last", 0.0) for x in (sam, msam))
    v3 = v_sam if v_sam == v_msam else "partly"
    fig_c, fig_f = "figures/deep_nets_curves.png", "figures/deep_nets_final.png"
    return [
        dict(
            family=FAMILY,
            claim="m-SAM with small m generalizes better than ERM",
            paper=f"ResNet-18 CIFAR-10: ERM ~{PAPER['erm']}% vs 128-SAM ~{PAPER['msam_best']}%",
            ours=f"{setup}: ERM {fmt(erm)} vs m-SAM(m={m_small}) {fmt(msam)}",
            verdict=v1,
            figure=fig_f,
        ),
        dict(
            family=FAMILY,
            claim="smaller m is better: m-SAM beats SAM with m = batch",
            paper="Fig. 1: n-SAM ~ERM (5.1%), only small m helps",
            ours=f"{setup}: SAM(m={bs}) {fmt(sam)} vs m-SAM(m={m_small}) {fmt(msam)}",
            verdict=v2,
            figure=fig_f,
        ),
        dict(
            family=FAMILY,
            claim="SAM finds flatter solutions (lower one-step sharpness, same rho and m)",
            paper="SAM paper: lambda_max 24.2 (SGD) vs 1.0 (SAM), WRN CIFAR-10",
            ours=(
                f"{setup}: sharpness ERM {erm['sharpness_last_mean']:.4f}, "
                f"SAM {sam['sharpness_last_mean']:.4f}, m-SAM {msam['sharpness_last_mean']:.4f}"
            ),
            verdict=v3,
            figure=fig_c,
        ),
        dict(
            family=FAMILY,
            claim="Fig. 1/9/12 at paper scale (ResNet-18/34, CIFAR-10/100, 200-1000 epochs)",
            paper="see REFERENCE.md 4.1",
            ours="not run here (GPU days); configs in deep_nets/configs/",
            verdict="n/a",
            figure="",
        ),
    ]


def reproduce(profile: str, results_dir: Path, figures_dir: Path) -> None:
    """Train the profile's runs, draw ``deep_nets_curves.png`` and ``deep_nets_final.png``, and
    write ``results/deep_nets/claims.csv``."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: choose from {', '.join(PROFILES)}")
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    run_experiments(profile, results_dir)
    metrics = load_metrics(results_dir, profile)
    table = summary_table(results_dir, profile)
    plot_curves(metrics, figures_dir / "deep_nets_curves.png")
    plot_final(table, figures_dir / "deep_nets_final.png")
    write_claims(results_dir / FAMILY / "claims.csv", claims(table, profile))
    print(table.to_string(index=False), flush=True)
