"""The core demo's figure: test accuracy and training loss per epoch, lambda_max at the end."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from analysis.core.profiles import LABELS
from analysis.core.runs import curve

FIGURE = "core_sgd_sam_asam_looksam.png"


def plot(
    runs: Mapping[str, Sequence[dict]],
    lam: Mapping[str, Sequence[float]],
    fits: Mapping[str, bool],
    out: Path,
) -> Path:
    """Three panels: test accuracy (mean, +- std band) and training loss (mean) per epoch of
    each optimizer, and lambda_max of the last weights (mean +- std), each bar labelled with
    the optimizer's final training loss; an optimizer that does not fit its training set
    (``fits[opt]`` False: the fit precondition of ``analysis.core.claims``) gets a hatched bar
    marked "does not fit", since its low lambda_max is that of a model far from a minimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    final_loss = {}
    for o, rs in runs.items():
        acc = 1.0 - np.array([curve(r, "test_err") for r in rs])
        loss = np.array([curve(r, "train_loss") for r in rs])
        final_loss[o] = float(loss[:, -1].mean())
        ep = np.arange(1, acc.shape[1] + 1)
        axes[0].plot(ep, acc.mean(0), label=LABELS[o])
        axes[0].fill_between(ep, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), alpha=0.2)
        axes[1].semilogy(ep, loss.mean(0), label=LABELS[o])
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="MNIST-1D, MLP (mean +- std)")
    axes[1].set(xlabel="epoch", ylabel="training loss (cross-entropy)")
    names = list(runs)
    vals = [np.asarray(lam[o], dtype=float) for o in names]
    bars = axes[2].bar(
        [LABELS[o] for o in names], [v.mean() for v in vals], yerr=[v.std() for v in vals]
    )
    for o, b in zip(names, bars, strict=True):
        text = f"train loss\n{final_loss[o]:.2f}"
        if not fits[o]:
            b.set_hatch("//")
            b.set_alpha(0.5)
            text += "\ndoes not fit"
        axes[2].annotate(
            text,
            (b.get_x() + b.get_width() / 2, b.get_height()),
            xytext=(0, 14),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    axes[2].margins(y=0.35)
    axes[2].set(
        ylabel="top Hessian eigenvalue (training loss)",
        title="sharpness of the last weights",
    )
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
