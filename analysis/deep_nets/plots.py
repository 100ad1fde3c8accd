"""Figures of the deep-net experiments (matplotlib, Agg). Each function takes what it draws
(already aggregated per seed) and a path, and returns the path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.deep_nets.runs import Outcome, curve_rows, mean_curve  # noqa: E402

# by label prefix (the longest matching prefix wins)
COLORS = {
    "ERM": "C0",
    "SAM": "C3",
    "m-SAM": "C2",
    "n-SAM": "C1",
    "random": "C7",
    "LookSAM": "C4",
    "ERM -> SAM": "C1",
    "SAM -> ERM": "C9",
    "SAM unnormalized": "C8",
}


def _color(label: str) -> str:
    for key in sorted(COLORS, key=len, reverse=True):
        if label.startswith(key):
            return COLORS[key]
    return "C5"


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ms(values: Sequence[float]) -> tuple[float, float]:
    v = 100 * np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def error_vs_x(
    xs: Sequence[float] | Mapping[str, Sequence[float]],
    series: Mapping[str, Sequence[Outcome]],
    erm: Outcome,
    path: Path,
    *,
    xlabel: str,
    title: str,
    logx: bool = True,
    chosen: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]] | None = None,
) -> Path:
    """Test error (mean +- std over seeds) against x for each method, at the best-validation
    epoch (left) and the last epoch (right); ERM is the horizontal band. ``xs``: one list for
    every series, or one per series label. ``chosen``: per label and epoch ("best", "last"),
    (x, test error) of each seed's validation-chosen setting, drawn as stars."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    ticks: set[float] = set()
    for ax, when, name in zip(axes, ("best", "last"), ("best-validation epoch", "last epoch")):
        m, s = _ms(erm.at(when))
        ax.axhline(m, color=_color("ERM"), label="ERM")
        ax.axhspan(m - s, m + s, color=_color("ERM"), alpha=0.15)
        for label, outs in series.items():
            x = list(xs[label] if isinstance(xs, Mapping) else xs)
            ticks.update(x)
            ms = np.array([_ms(o.at(when)) for o in outs])
            ax.errorbar(
                x, ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3, label=label, color=_color(label)
            )
            for cx, cy in (chosen or {}).get(label, {}).get(when, []):
                ax.plot([cx], [100 * cy], "*", ms=11, color=_color(label), mec="k", mew=0.5)
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [f"{x:g}" for x in sorted(ticks)])
        ax.set_xlabel(xlabel)
        ax.set_title(f"test error at the {name}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test error (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def curves(
    outcomes: Sequence[Outcome],
    keys: Sequence[tuple[str, str]],
    path: Path,
    *,
    title: str,
    x: str = "epoch",
    logy: Sequence[bool] = (),
    mark_best: bool = False,
    marks: Sequence[tuple[float, str]] = (),
    extra: Any = None,
) -> Path:
    """One panel per (metric key, panel title), one line per method (mean over seeds, thin lines
    per seed), from the epoch-0 row (the starting point) on. ``mark_best``: a dotted vertical
    line at each method's best-validation epoch (mean over seeds) and a dot on the test-error
    curve there. ``extra(ax)`` draws one more
    panel. ``marks``: (x, text) gray dashed vertical lines, e.g. the learning-rate drops."""
    n = len(keys) + (extra is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.9))
    axes = np.atleast_1d(axes)
    for o in outcomes:
        c = _color(o.label)
        for ax, (key, _), ly in zip(axes, keys, list(logy) + [False] * len(keys)):
            for rows in curve_rows(o.runs):
                xs = [r[x] for r in rows]
                ax.plot(xs, [_pct(r.get(key), key) for r in rows], color=c, alpha=0.25, lw=0.7)
            ex, ey = mean_curve(o.runs, key)
            if x == "step":
                ex = np.array([r["step"] for r in curve_rows(o.runs)[0]][: len(ey)])
            ax.plot(ex, _pct(ey, key), color=c, lw=2, label=o.label)
            if ly:
                ax.set_yscale("log")
            if mark_best:
                best = float(np.mean([r["summary"]["best_epoch"] for r in o.runs]))
                ax.axvline(best, color=c, ls=":", lw=1.5)
                if key == "test_err":
                    i = int(np.argmin(np.abs(ex - best)))
                    ax.plot([ex[i]], [_pct(ey[i], key)], "o", color=c, ms=7)
    for ax, (_key, name) in zip(axes, keys):
        for xm, text in marks:
            ax.axvline(xm, color="0.5", ls="--", lw=0.8)
            ax.annotate(
                text,
                (xm, 1),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="0.4",
                ha="left",
                va="top",
                rotation=90,
            )
        ax.set_title(name)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if extra is not None:
        extra(axes[-1])
    fig.suptitle(title)
    return _save(fig, path)


def _pct(v: Any, key: str) -> Any:
    """Error rates in percent, losses as they are; None as NaN."""
    if v is None:
        return float("nan")
    return 100 * v if "err" in key else v


def bars(
    groups: Mapping[str, Mapping[str, tuple[float, float]]],
    path: Path,
    *,
    ylabels: Sequence[str],
    title: str,
) -> Path:
    """One panel per entry of ``groups`` (panel title -> {bar label: (mean, std)})."""
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (name, bars_), yl in zip(axes, groups.items(), ylabels):
        labels = list(bars_)
        ms = np.array([bars_[k] for k in labels])
        ax.bar(labels, ms[:, 0], yerr=ms[:, 1], capsize=4, color=[_color(k) for k in labels])
        lo = np.nanmin(ms[:, 0] - ms[:, 1])
        hi = np.nanmax(ms[:, 0] + ms[:, 1])
        pad = 0.5 * (hi - lo) + 1e-9
        ax.set_ylim(max(0.0, lo - pad), hi + 0.3 * pad)
        ax.set_title(name)
        ax.set_ylabel(yl)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
