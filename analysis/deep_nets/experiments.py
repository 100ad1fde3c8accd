"""The seven deep-net experiments: which runs each needs, its figure and its claims rows.

Each experiment is an ``Experiment(name, specs, report)``: ``specs(P)`` lists the training runs of
profile ``P`` (``analysis.deep_nets.profiles``), ``report(root, profile, figures_dir)`` reads the
finished runs under ``root`` (never trains; a missing run is a ``FileNotFoundError`` naming it),
draws the figure and returns claims rows judged by ``suite.claims``. Runs are shared between
experiments when their flags are equal (ERM, SAM at the fixed rho, m-SAM at the small m).

Claims compare test error at the best-validation epoch and at the last epoch (two rows); the gap is
in percentage points, positive in the paper's direction, with the standard error of
``suite.claims.compare_seeds`` (seeds + binomial test-set error).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.deep_nets import plots
from analysis.deep_nets.profiles import PAPER_CONFIGS, PROFILES
from analysis.deep_nets.runs import (
    FAMILY,
    Outcome,
    Spec,
    compare_rows,
    epoch_rows,
    load,
    n_test,
    outcome,
    pct,
)
from suite.claims import compare_seeds, compare_to_paper, fmt_mean_std, mean_std, verdict
from suite.rundir import atomic_write_json, read_json

PAPER = "Towards Understanding SAM"


def method(
    P: dict[str, Any],
    seed: int,
    *,
    base: str = "base",
    rho: float = 0.0,
    acc: int = 1,
    variant: str = "sam",
    prev: bool = False,
    unnorm: bool = False,
    start: float = 0.0,
    end: float = 1.0,
    gauss: float = 0.0,
) -> Spec:
    """The run of one method on the profile's ``base`` config (SAM flags set explicitly so that
    a paper base config's own SAM settings never leak into the ERM run). ``prev``: the original's
    n-SAM (``--sam_use_prev_batch``); ``gauss``: the original's random baseline
    (``--add_weight_perturb_scale``, Gaussian per coordinate, SAM off)."""
    flags = {**P[base], "sam_rho": rho, "acc_steps": acc, "sam_variant": variant,
             "sam_perturb_batch": "same", "sam_use_prev_batch": prev, "sam_no_grad_norm": unnorm,
             "sam_epoch_frac_start": start, "sam_epoch_frac_end": end,
             "add_weight_perturb_scale": gauss, "mul_weight_perturb_scale": 0.0}  # fmt: skip
    if variant == "looksam":
        flags["looksam_k"] = P["looksam_k"]
    return Spec.make(flags, seed)


def _m(P: dict[str, Any], acc: int, base: str = "base") -> int:
    return P[base].get("batch_size", 128) // acc


def _setting(P: dict[str, Any], base: str = "base") -> str:
    b = P[base]
    frac = b.get("frac_train", 1.0)
    data = b["dataset"] + (f" ({frac:.0%} of train)" if frac < 1 else "")
    return f"{b['model']} on {data}, {b['epochs']} epochs, {len(P['seeds'])} seed(s)"


def _many(P: dict[str, Any], fn: Callable[[int], Spec]) -> list[Spec]:
    return [fn(s) for s in P["seeds"]]


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    figure: str
    specs: Callable[[dict[str, Any]], list[Spec]]
    report: Callable[[Path, str, Path], list[dict[str, Any]]]
    # the figure's two-line caption in REPORT.md: what is plotted ({setting}: the profile's
    # model, data, epochs, seeds), and the claim to read from it
    shows: str = ""
    reading: str = ""

    def caption(self, P: dict[str, Any]) -> dict[str, str]:
        base = "noisy" if self.name == "noisy" else "seminar" if self.name == "seminar" else "base"
        return {"shows": self.shows.format(setting=_setting(P, base), **P),
                "reading": self.reading.format(**P)}  # fmt: skip


# ------------------------------------------------------------------------- 1. Fig. 1: rho sweep
# Input shapes as deep_nets.data loads them (N, *shape), for counting a model's parameters.
INPUT_SHAPES = {"mnist1d": (1, 40), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                "cifar100": (3, 32, 32), "svhn": (3, 32, 32)}  # fmt: skip


@functools.cache
def _n_params(model: str, width: int | None, dataset: str) -> int:
    from deep_nets.data import NUM_CLASSES
    from deep_nets.models import build_model, count_parameters

    shape = INPUT_SHAPES[dataset]
    net = build_model(model, in_channels=shape[0], num_classes=NUM_CLASSES[dataset], width=width,
                      input_shape=shape)  # fmt: skip
    return count_parameters(net)


def gauss_scale(P: dict[str, Any], rho: float, base: str = "base") -> float:
    """Per-coordinate std s of the random baseline at radius rho: s = rho / sqrt(d) (d = the
    model's parameter count), so that the Gaussian perturbation's norm is ~ rho (E||s n||^2 =
    s^2 d = rho^2), the same radius as SAM's ascent."""
    b = P[base]
    d = _n_params(b.get("model", "resnet18"), b.get("model_width"), b.get("dataset", "cifar10"))
    return float(f"{rho / math.sqrt(d):.6g}")  # rounded: a stable run identity


def fig1_methods(P: dict[str, Any], rho: float) -> dict[str, Callable[[int], Spec]]:
    small = P["small_acc"]
    return {
        # the original's random baseline: the gradient at w + s n, n ~ N(0, I) per coordinate
        # (--add_weight_perturb_scale s), s = rho / sqrt(d); our exact-norm variant
        # (--sam_variant random) is not run
        "random": lambda s: method(P, s, gauss=gauss_scale(P, rho)),
        # the original's n-SAM: the ascent on the previous batch (--sam_use_prev_batch)
        "n-SAM": lambda s: method(P, s, rho=rho, prev=True),
        f"SAM (m={_m(P, 1)})": lambda s: method(P, s, rho=rho),
        f"m-SAM (m={_m(P, small)})": lambda s: method(P, s, rho=rho, acc=small),
    }


def fig1_specs(P: dict[str, Any]) -> list[Spec]:
    specs = _many(P, lambda s: method(P, s))
    for rho in P["rhos"]:
        for fn in fig1_methods(P, rho).values():
            specs += _many(P, fn)
    return specs


def fig1_report(root: Path, profile: str, figures: Path) -> list[dict[str, Any]]:
    P = PROFILES[profile]
    erm = outcome(root, "ERM", _many(P, lambda s: method(P, s)))
    labels = list(fig1_methods(P, P["rho"]))
    series = {
        lab: [outcome(root, lab, _many(P, fig1_methods(P, r)[lab])) for r in P["rhos"]]
        for lab in labels
    }
    fig = plots.error_vs_x(
        P["rhos"], series, erm, figures / "deep_nets_fig1_rho.png", xlabel="training rho",
        title=f"Fig. 1: test error vs rho ({_setting(P)})",
    )  # fmt: skip
    at = {lab: series[lab][P["rhos"].index(P["rho"])] for lab in labels}
    n = n_test(erm.runs[0])
    rnd, nsam, sam, msam = (at[lab] for lab in labels)
    common = dict(paper=f"{PAPER}, Fig. 1", profile=profile, figure=_rel(fig), n=n)
    note = (f"rho = {P['rho']} fixed before the runs; {_setting(P)} instead of ResNet-18 / "
            "CIFAR-10 (CPU budget). n-SAM = ascent on the previous batch (--sam_use_prev_batch, "
            "the original's); random = the original's Gaussian weight perturbation "
            "(--add_weight_perturb_scale rho / sqrt(#params): norm ~ rho; the paper does not "
            "state its scale)")  # fmt: skip
    return [
        *compare_rows(erm, sam, claim="SAM with m = batch (the paper's 128-SAM) beats ERM",
                      paper_value="ERM ~5.1%, 128-SAM ~4.35% at rho 0.1", note=note, **common),
        *compare_rows(erm, msam, claim="m-SAM with a small m beats ERM",
                      paper_value="ERM ~5.1%, 128-SAM 4.25-4.75%", note=note, **common),
        *compare_rows(nsam, sam, claim="SAM (m = batch) beats n-SAM (n-SAM stays near ERM)",
                      paper_value="n-SAM ~5.1% (flat in rho) vs 128-SAM ~4.35%", note=note,
                      **common),
        *compare_rows(rnd, sam,
                      claim="SAM (m = batch) beats random perturbations (which do not help)",
                      paper_value="random ~ERM (5.1%) vs 128-SAM ~4.35%", note=note, **common),
    ]  # fmt: skip


# ------------------------------------------------------------------------- 2. m-sharpness
def msharp_specs(P: dict[str, Any]) -> list[Spec]:
    specs = _many(P, lambda s: method(P, s))
    for acc in P["accs"]:
        specs += _many(P, lambda s, a=acc: method(P, s, rho=P["rho"], acc=a))
    return specs


def msharp_report(root: Path, profile: str, figures: Path) -> list[dict[str, Any]]:
    P = PROFILES[profile]
    erm = outcome(root, "ERM", _many(P, lambda s: method(P, s)))
    accs = sorted(P["accs"])  # ascending acc_steps = descending m
    outs = [
        outcome(
            root,
            f"m-SAM (m={_m(P, a)})",
            _many(P, lambda s, a=a: method(P, s, rho=P["rho"], acc=a)),
        )
        for a in accs
    ]
    ms = [_m(P, a) for a in accs]
    fig = plots.error_vs_x(
        ms, {f"SAM, rho {P['rho']}": outs}, erm, figures / "deep_nets_msharpness.png",
        xlabel="m (examples per ascent)", title=f"m-sharpness: test error vs m ({_setting(P)})",
    )  # fmt: skip
    big, small = outs[0], outs[-1]
    n = n_test(erm.runs[0])
    note = f"rho = {P['rho']}, m in {ms}; {_setting(P)} (CPU budget)"
    rows = compare_rows(
        big, small, claim=f"smaller m generalizes better (m = {ms[-1]} vs m = {ms[0]})",
        paper=f"{PAPER}, Fig. 1 / Foret et al. m-sharpness", profile=profile, figure=_rel(fig),
        paper_value="error falls as m shrinks (m = 256 -> 1, small ResNet CIFAR-10)", note=note,
        n=n,
    )  # fmt: skip
    # ported from the former quick stage: the final one-step m-sharpness (same rho and m for every
    # method: --sharpness_rho / --sharpness_m of the base config)
    sh = {o.label: [r["summary"]["sharpness_last"] for r in o.runs] for o in (erm, small)}
    g = compare_seeds(sh["ERM"], sh[small.label], lower_is_better=True)
    rows.append(dict(
        family=FAMILY, paper="Foret et al. 2021 (Hessian spectrum); the former quick stage",
        claim=f"{small.label} ends flatter than ERM (lower one-step m-sharpness, same rho and m)",
        paper_value="lambda_max 24.2 (SGD) vs 1.0 (SAM), WRN CIFAR-10",
        ours=f"ERM {fmt_mean_std(sh['ERM'], '.4f')} vs {small.label} "
             f"{fmt_mean_std(sh[small.label], '.4f')}",
        gap=g.gap, se=g.se, profile=profile, verdict=g.verdict, figure=_rel(fig),
        note="one-step m-sharpness L(w+e)-L(w), not lambda_max; " + note,
    ))  # fmt: skip
    return rows


# ------------------------------------------------------------------------- 3. Fig. 9: switches
def ft_methods(P: dict[str, Any]) -> dict[str, Callable[[int], Spec]]:
    rho, sw = P["rho"], P["switch"]
    return {
        "ERM": lambda s: method(P, s),
        "ERM -> SAM": lambda s: method(P, s, rho=rho, start=sw),
        "SAM -> ERM": lambda s: method(P, s, rho=rho, end=sw),
        "SAM": lambda s: method(P, s, rho=rho),
    }


def ft_specs(P: dict[str, Any]) -> list[Spec]:
    return [sp for fn in ft_methods(P).values() for sp in _many(P, fn)]


def _train_size(run: dict[str, Any]) -> int:
    """Training-set size the run trained on (its data provenance; a clear error if absent)."""
    data = (run.get("summary") or {}).get("data") or run["config"].get("data") or {}
    size = (data.get("sizes") or {}).get("train")
    if not size:
        raise ValueError(f"{run['path']}: no training-set size in the data provenance of "
                         "summary.json or config.json; run the experiment again")  # fmt: skip
    return int(size)


def _switch_epoch(P: dict[str, Any]) -> int:
    """The 1-based epoch where the switch lands: the first e with e / epochs >= switch."""
    return math.ceil(P["switch"] * P["base"]["epochs"] - 1e-9)


INTERP_T = [round(-0.5 + 0.1 * i, 2) for i in range(21)]  # -0.5 .. 1.5
BARRIER_TOL = 0.05  # nats of train loss above the worse end point: fixed before the runs


def interpolation(root: Path, erm: Outcome, ft: Outcome) -> list[dict[str, list[float]]]:
    """Per seed: train/test loss along (1 - t) w_ERM + t w_(ERM->SAM), cached in root."""
    from analysis.deep_nets.interpolation import interpolate_runs
    from suite.rundir import config_hash

    out = []
    for a, b in zip(erm.runs, ft.runs, strict=True):
        key = config_hash({"a": a["path"], "b": b["path"], "t": INTERP_T, "ca": a["config"],
                           "cb": b["config"]})  # fmt: skip
        path = root / "interpolation" / f"{key}.json"
        if path.exists():
            out.append(read_json(path))
            continue
        res = interpolate_runs(a, b, INTERP_T)
        atomic_write_json(path, res)
        out.append(res)
    return out


def barrier(curve: dict[str, list[float]]) -> float:
    """max over t in [0, 1] of the train loss minus the larger of its two end values."""
    t, loss = np.array(curve["t"]), np.array(curve["train"])
    inside = (t >= -1e-9) & (t <= 1 + 1e-9)
    ends = max(loss[np.argmin(np.abs(t))], loss[np.argmin(np.abs(t - 1))])
    return float(loss[inside].max() - ends)


def ft_report(root: Path, profile: str, figures: Path) -> list[dict[str, Any]]:
    P = PROFILES[profile]
    o = {lab: outcome(root, lab, _many(P, fn)) for lab, fn in ft_methods(P).items()}
    curves = interpolation(root, o["ERM"], o["ERM -> SAM"])

    def interp_panel(ax: Any) -> None:
        t = curves[0]["t"]
        for name, c in (("train", "C0"), ("test", "C3")):
            ax.plot(t, np.mean([cv[name] for cv in curves], axis=0), color=c, marker=".",
                    label=f"{name} loss")  # fmt: skip
        ax.axvline(0, color="k", lw=0.5)
        ax.axvline(1, color="k", lw=0.5)
        ax.set_xlabel("t: (1-t) w_ERM + t w_(ERM->SAM)")
        ax.set_title("linear interpolation")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    fig = plots.curves(
        list(o.values()), [("test_err", "test error (%)")], figures / "deep_nets_fig9_finetune.png",
        title=f"Fig. 9: ERM <-> SAM switches at {P['switch']:.0%} of training ({_setting(P)})",
        extra=interp_panel,
    )  # fmt: skip
    n = n_test(o["ERM"].runs[0])
    note = (f"switch at {P['switch']:.0%} of the epochs, rho {P['rho']}, m = batch; "
            f"{_setting(P)} (CPU budget). The switch as the original counts it: SAM on in the "
            "1-based epochs e with e / epochs >= switch (ERM -> SAM) or <= switch (SAM -> ERM), "
            f"so epoch {_switch_epoch(P)} is a SAM epoch in both; curves start at the epoch-0 "
            "evaluation")  # fmt: skip
    common = dict(paper=f"{PAPER}, Fig. 9", profile=profile, figure=_rel(fig), n=n, note=note)
    rows = [
        *compare_rows(o["ERM"], o["ERM -> SAM"], claim="switching ERM -> SAM late improves",
                      paper_value="CIFAR-10 ~4.65% -> ~4.2%", **common),
        *compare_rows(o["ERM"], o["SAM -> ERM"], claim="SAM -> ERM keeps SAM's gain over ERM",
                      paper_value="CIFAR-10 ERM ~4.65%, SAM -> ERM ~3.95%", **common),
    ]  # fmt: skip
    b = [barrier(c) for c in curves]
    mb, sb, nb = mean_std(b)
    se = sb / math.sqrt(nb) if nb > 1 else math.nan
    rows.append(dict(
        family=FAMILY, paper=f"{PAPER}, Fig. 9 (interpolation)",
        claim=f"ERM -> SAM stays in the ERM basin: train-loss barrier on the segment < "
              f"{BARRIER_TOL} nats",
        paper_value="no barrier between the ERM and ERM -> SAM solutions",
        ours=f"barrier {fmt_mean_std(b, '.4f')} nats", gap=BARRIER_TOL - mb, se=se,
        profile=profile, verdict=verdict(BARRIER_TOL - mb, se), figure=_rel(fig),
        note="gap = tolerance - mean barrier; batch-norm statistics recomputed at every t. "
             + note,
    ))  # fmt: skip
    return rows


# ------------------------------------------------------------------------- 4. Fig. 12: noise
def noisy_methods(P: dict[str, Any]) -> dict[str, Callable[[int], Spec]]:
    # the validation labels are noisy like the training labels (the trainer's default, as the
    # original): the best-validation epoch is a realistic early stopping, not an oracle
    acc = P["noisy_acc"]
    return {
        "ERM": lambda s: method(P, s, base="noisy"),
        f"SAM (m={_m(P, 1, 'noisy')})": lambda s: method(P, s, base="noisy", rho=P["rho"]),
        f"m-SAM (m={_m(P, acc, 'noisy')})": lambda s: method(P, s, base="noisy", rho=P["rho"],
                                                             acc=acc),
    }  # fmt: skip


def noisy_specs(P: dict[str, Any]) -> list[Spec]:
    return [sp for fn in noisy_methods(P).values() for sp in _many(P, fn)]


MEMORIZED = 0.10  # train error on the noisy examples counted as memorized (fixed before runs)
HALF = 0.5  # the "memorization epoch": first epoch with train error on noisy examples < 50%


def first_epoch_below(run: dict[str, Any], key: str, level: float) -> float:
    for r in epoch_rows(run):
        if r.get(key) is not None and r[key] < level:
            return float(r["epoch"])
    return float(epoch_rows(run)[-1]["epoch"]) + 1  # not reached: one past the end


def _lr_drops(flags: dict[str, Any]) -> list[tuple[float, str]]:
    """The piecewise schedule's drops (/10 at 50%, /100 at 75% of the epochs) as figure marks."""
    if flags.get("lr_schedule") != "piecewise":
        return []
    e = flags["epochs"]
    return [(0.5 * e, " lr / 10"), (0.75 * e, " lr / 100")]


def noisy_report(root: Path, profile: str, figures: Path) -> list[dict[str, Any]]:
    P = PROFILES[profile]
    o = {lab: outcome(root, lab, _many(P, fn)) for lab, fn in noisy_methods(P).items()}
    b = P["noisy"]
    p = b["p_label_noise"]
    fig = plots.curves(
        list(o.values()),
        [("test_err", "test error (%) - dot: best-validation epoch"),
         ("train_err_noisy", "train error on the NOISY examples (%)\n(vs their noisy labels; "
                             "0 = memorized)"),
         ("train_err_clean", "train error on the CLEAN examples (%)")],
        figures / "deep_nets_fig12_noisy_labels.png", mark_best=True, marks=_lr_drops(b),
        title=f"Fig. 12: {p:.0%} symmetric label noise - {_setting(P, 'noisy')} "
              "(dotted: best-validation epoch)",
    )  # fmt: skip
    erm, sam, msam = o.values()
    n = n_test(erm.runs[0])
    note = (
        f"{_setting(P, 'noisy')}, rho {P['rho']} (CPU budget; the paper: ResNet / CIFAR-10, "
        "1000 epochs). Best-validation epoch on the noisy validation labels (the original's "
        "realistic early stopping; --clean_val would be an oracle)"
    )
    common = dict(paper=f"{PAPER}, Fig. 12", profile=profile, figure=_rel(fig), n=n, note=note)
    rows = [
        *compare_rows(erm, sam, claim="with 60% label noise SAM's test error is below ERM's",
                      paper_value="best: ERM ~20-30% vs SAM ~10%; last: ERM ~49% vs SAM ~43%",
                      **common),
        *compare_rows(erm, msam, claim="with 60% label noise m-SAM's test error is below ERM's",
                      paper_value="best: ERM ~20-30% vs SAM ~10%; last: ERM ~49% vs SAM ~43%",
                      **common),
    ]  # fmt: skip
    # early stopping matters: the best-validation epoch beats the last epoch (per method)
    for out in (erm, sam):
        g = compare_seeds(out.last, out.best, lower_is_better=True, n_test=n)
        rows.append(dict(
            family=FAMILY, paper=f"{PAPER}, Fig. 12",
            claim=f"early stopping matters: {out.label}'s best-validation epoch beats its last",
            paper_value="ERM best ~20-30% vs last ~49%; SAM best ~10% vs last ~43%",
            ours=f"last {pct(out.last)} vs best {pct(out.best)}", gap=100 * g.gap,
            se=100 * g.se, profile=profile, verdict=g.verdict, figure=_rel(fig), note=note,
        ))  # fmt: skip
    # memorization: ERM fits the noisy labels; SAM does so later
    noisy_end = [epoch_rows(r)[-1]["train_err_noisy"] for r in erm.runs]
    m_, s_, k_ = mean_std(noisy_end)
    # noisy examples in the evaluated training subset: p * min(--n_eval_train, training set size
    # from the data provenance)
    n_sub = min(b.get("n_eval_train", 10000), _train_size(erm.runs[0]))
    n_noisy = max(1, round(p * n_sub))
    se = math.hypot(s_ / math.sqrt(k_) if k_ > 1 else math.nan,
                    math.sqrt(max(m_ * (1 - m_), 0.0) / n_noisy))  # fmt: skip
    rows.append(dict(
        family=FAMILY, paper=f"{PAPER}, Fig. 12",
        claim=f"ERM memorizes the noisy labels (final train error on them < {MEMORIZED:.0%})",
        paper_value="train error on noisy examples -> 0 (ERM and SAM, 1000 epochs)",
        ours=f"ERM {pct(noisy_end)}", gap=100 * (MEMORIZED - m_), se=100 * se, profile=profile,
        verdict=verdict(MEMORIZED - m_, se), figure=_rel(fig), note=note,
    ))  # fmt: skip
    for out in (sam, msam):
        ep = {x.label: [first_epoch_below(r, "train_err_noisy", HALF) for r in x.runs]
              for x in (erm, out)}  # fmt: skip
        g = compare_seeds(ep["ERM"], ep[out.label], lower_is_better=False)
        rows.append(dict(
            family=FAMILY, paper=f"{PAPER}, Fig. 12",
            claim=f"{out.label} memorizes later: first epoch with train error on the noisy "
                  f"examples < {HALF:.0%}",
            paper_value="SAM memorizes much later than ERM",
            ours=f"ERM epoch {fmt_mean_std(ep['ERM'], '.1f')} vs {out.label} "
                 f"{fmt_mean_std(ep[out.label], '.1f')}",
            gap=g.gap, se=g.se, profile=profile, verdict=g.verdict, figure=_rel(fig),
            note="never reached counts as epochs + 1; " + note,
        ))  # fmt: skip
    return rows


# ------------------------------------------------------------------------- 5. convergence
def conv_methods(P: dict[str, Any]) -> dict[str, Callable[[int], Spec]]:
    # --sam_no_grad_norm is the original's unnormalized ascent: e = P_rho(rho grad(L_chunk /
    # acc_steps)), the step rho * g projected onto the rho-ball (so = rho g / ||g|| once ||g|| > 1)
    rho, small = P["rho"], P["small_acc"]
    return {
        "ERM": lambda s: method(P, s),
        f"SAM (m={_m(P, 1)})": lambda s: method(P, s, rho=rho),
        f"m-SAM (m={_m(P, small)})": lambda s: method(P, s, rho=rho, acc=small),
        f"SAM unnormalized (rho {P['rho_unnorm']})": lambda s: method(
            P, s, rho=P["rho_unnorm"], unnorm=True
        ),
    }


def conv_specs(P: dict[str, Any]) -> list[Spec]:
    return [sp for fn in conv_methods(P).values() for sp in _many(P, fn)]


NEAR_ZERO = 0.05  # final training cross-entropy counted as "near zero" (fixed before the runs)


def conv_report(root: Path, profile: str, figures: Path) -> list[dict[str, Any]]:
    P = PROFILES[profile]
    o = {lab: outcome(root, lab, _many(P, fn)) for lab, fn in conv_methods(P).items()}
    fig = plots.curves(
        list(o.values()),
        [("train_loss", "training loss (cross-entropy, fixed subset)"),
         ("train_err", "training error (%)")],
        figures / "deep_nets_convergence.png", x="step", logy=(True, False),
        title=f"Convergence ({_setting(P)})",
    )  # fmt: skip
    rows = []
    for lab in list(o)[2:]:
        final = [epoch_rows(r)[-1]["train_loss"] for r in o[lab].runs]
        erm_final = [epoch_rows(r)[-1]["train_loss"] for r in o["ERM"].runs]
        m_, s_, k_ = mean_std(final)
        se = s_ / math.sqrt(k_) if k_ > 1 else math.nan
        rows.append(dict(
            family=FAMILY, paper=f"{PAPER}, convergence (Sec. 4.2)",
            claim=f"{lab} drives the training loss to near zero (< {NEAR_ZERO} nats at the end)",
            paper_value="m-SAM / 1-SAM reach near-zero training loss; unnormalized SAM with "
                        "constant rho converges",
            ours=f"final train loss {fmt_mean_std(final, '.4f')} "
                 f"(ERM {fmt_mean_std(erm_final, '.4f')})",
            gap=NEAR_ZERO - m_, se=se, profile=profile, verdict=verdict(NEAR_ZERO - m_, se),
            figure=_rel(fig),
            note=f"gap = tolerance - mean final loss; {_setting(P)}. Unnormalized SAM = the "
                 "original's --sam_no_grad_norm: e = P_rho(rho * grad(L/acc_steps)), the step "
                 "projected onto the rho-ball (normalized SAM whenever ||grad|| > 1)",
        ))  # fmt: skip
    return rows


# ------------------------------------------------------------------------- 6. LookSAM
def look_methods(P: dict[str, Any]) -> dict[str, Callable[[int], Spec]]:
    return {
        "ERM": lambda s: method(P, s),
        f"SAM (m={_m(P, 1)})": lambda s: method(P, s, rho=P["rho"]),
        f"LookSAM (k={P['looksam_k']})": lambda s: method(P, s, rho=P["rho"], variant="looksam"),
    }


def look_specs(P: dict[str, Any]) -> list[Spec]:
    return [sp for fn in look_methods(P).values() for sp in _many(P, fn)]


COST_FRACTION = 0.5  # LookSAM's extra cost as a fraction of SAM's: "a fraction" means < 0.5


def cpu_per_epoch(run: dict[str, Any]) -> float:
    """Process CPU seconds of the training steps per epoch (robust on a shared machine)."""
    rows = run["metrics"]
    return sum(r.get("train_cpu_seconds", 0.0) for r in rows) / max(1, len(epoch_rows(run)))


def look_report(root: Path, profile: str, figures: Path) -> list[dict[str, Any]]:
    P = PROFILES[profile]
    o = {lab: outcome(root, lab, _many(P, fn)) for lab, fn in look_methods(P).items()}
    erm, sam, look = o.values()
    cpu = {lab: [cpu_per_epoch(r) for r in x.runs] for lab, x in o.items()}
    fig = plots.bars(
        {"test error at the last epoch": {k: _mean_sd([100 * v for v in x.last])
                                          for k, x in o.items()},
         "training CPU seconds per epoch": {k: _mean_sd(v) for k, v in cpu.items()}},
        figures / "deep_nets_looksam.png", ylabels=["test error (%)", "CPU s / epoch"],
        title=f"LookSAM vs SAM vs ERM, rho {P['rho']} ({_setting(P)})",
    )  # fmt: skip
    n = n_test(erm.runs[0])
    rows = compare_rows(
        erm, look, claim=f"{look.label} keeps SAM's gain: beats ERM", n=n, profile=profile,
        paper="Liu et al. 2022 (LookSAM), Table 1", figure=_rel(fig),
        paper_value="ViT-S/32 ImageNet acc.: AdamW 68.1%, SAM 68.9%, LookSAM 68.8%",
        note=f"SAM: {pct(sam.last)} (last epoch); {_setting(P)}, SGD instead of AdamW",
    )  # fmt: skip
    triples = zip(cpu["ERM"], cpu[sam.label], cpu[look.label], strict=True)
    frac = [(c_l - c_e) / (c_s - c_e) if c_s > c_e else math.nan for c_e, c_s, c_l in triples]
    m_, s_, k_ = mean_std(frac)
    se = s_ / math.sqrt(k_) if k_ > 1 else math.nan
    rows.append(dict(
        family=FAMILY, paper="Liu et al. 2022 (LookSAM), Table 1",
        claim=f"{look.label}'s extra cost over ERM is < {COST_FRACTION} of SAM's extra cost",
        paper_value="img/s AdamW 5154, SAM 2566, LookSAM 4273: fraction 0.20",
        ours=f"fraction {fmt_mean_std(frac, '.2f')}; CPU s/epoch ERM "
             f"{fmt_mean_std(cpu['ERM'], '.3f')}, SAM {fmt_mean_std(cpu[sam.label], '.3f')}, "
             f"LookSAM {fmt_mean_std(cpu[look.label], '.3f')}",
        gap=COST_FRACTION - m_, se=se, profile=profile, verdict=verdict(COST_FRACTION - m_, se),
        figure=_rel(fig),
        note="process CPU time of the training steps (the machine is shared: wall-clock is "
             "noisier); tiny models are dominated by per-step overheads",
    ))  # fmt: skip
    return rows


def _mean_sd(v: list[float]) -> tuple[float, float]:
    m_, s_, _ = mean_std(v)
    return m_, 0.0 if math.isnan(s_) else s_


# ------------------------------------------------------------------------- 7. the seminar table
SEMINAR = {"SGD": 0.8730, "SAM": 0.8751}  # the deck's accuracies
SEMINAR_PAPER = "Seminar deck (PAPERS.md#seminar-deck)"
SEMINAR_TOL = 0.01  # relative tolerance on the accuracy when the deck's setting is run


def sem_methods(P: dict[str, Any]) -> dict[str, Callable[[int], Spec]]:
    return {
        "SGD": lambda s: method(P, s, base="seminar"),
        "SAM": lambda s: method(P, s, base="seminar", rho=P["seminar_rho"]),
    }


def sem_specs(P: dict[str, Any]) -> list[Spec]:
    return [sp for fn in sem_methods(P).values() for sp in _many(P, fn)]


def sem_report(root: Path, profile: str, figures: Path) -> list[dict[str, Any]]:
    P = PROFILES[profile]
    sgd, sam = (outcome(root, lab, _many(P, fn)) for lab, fn in sem_methods(P).items())
    acc = {x.label: [1 - v for v in x.last] for x in (sgd, sam)}
    fig = plots.bars(
        {"accuracy: the seminar's vs ours (last epoch)": {
            "SGD (seminar)": (SEMINAR["SGD"], 0.0), "SAM (seminar)": (SEMINAR["SAM"], 0.0),
            "SGD (ours)": _mean_sd(acc["SGD"]), "SAM (ours)": _mean_sd(acc["SAM"])}},
        figures / "deep_nets_seminar.png", ylabels=["test accuracy"],
        title=f"The seminar's table: {_setting(P, 'seminar')}, rho {P['seminar_rho']}",
    )  # fmt: skip
    n = n_test(sgd.runs[0])
    full = profile in ("full", "paper")
    note = (f"{_setting(P, 'seminar')}; the deck does not state epochs / batch / lr / "
            "architecture" + ("" if full else "; quick subsamples, so the accuracies are "
                              "not compared with the deck's"))  # fmt: skip
    rows = compare_rows(
        sgd, sam, claim="SAM beats SGD (Fashion-MNIST ConvNet, cosine lr, rho 0.05)", n=n,
        paper=SEMINAR_PAPER, paper_value="accuracy SGD 0.8730 vs SAM 0.8751",
        profile=profile, figure=_rel(fig), note=note,
    )  # fmt: skip
    for lab in ("SGD", "SAM"):
        m_ = mean_std(acc[lab])[0]
        gap, se = compare_to_paper(m_ if full else None, SEMINAR[lab], rel_tol=SEMINAR_TOL)
        rows.append(dict(
            family=FAMILY, paper=SEMINAR_PAPER,
            claim=f"our {lab} accuracy matches the deck's within {SEMINAR_TOL:.0%} (relative)",
            paper_value=f"{SEMINAR[lab]:.4f}", ours=fmt_mean_std(acc[lab], ".4f"), gap=gap, se=se,
            profile=profile, verdict=verdict(gap, se), figure=_rel(fig), note=note,
        ))  # fmt: skip
    return rows


def paper_scale_row(profile: str) -> dict[str, Any]:
    names = ", ".join(c for cs in PAPER_CONFIGS.values() for c in cs)
    return dict(
        family=FAMILY,
        paper=f"{PAPER}, Figs. 1 / 9 / 12; LookSAM; SAM m-sharpness",
        claim="the experiments at paper scale (ResNet-18/34, CIFAR-10/100, 200-1000 epochs)",
        paper_value="see PAPERS.md#deep-nets",
        ours="not run here (GPU-days)",
        gap="",
        se="",
        profile="paper",
        verdict=verdict(None, None),
        figure="",
        note=f"named configs: {names}; make reproduce PROFILE=paper on a GPU with the data",
    )


def _rel(path: Path) -> str:
    return f"figures/{Path(path).name}"


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("fig1", "Fig. 1: test error vs rho", "deep_nets_fig1_rho.png",
                   fig1_specs, fig1_report,
                   "Test error (best-validation and last epoch) vs training rho for ERM, random "
                   "perturbation, n-SAM, SAM (m = batch) and m-SAM (small m); {setting}.",
                   "Fig. 1's claim: only m-SAM with small m clearly beats ERM; n-SAM and random "
                   "stay near ERM (verdicts in the claims table)."),
        Experiment("m_sharpness", "m-sharpness: test error vs m", "deep_nets_msharpness.png",
                   msharp_specs, msharp_report,
                   "Test error vs the m of m-SAM at fixed rho {rho}, ERM as a line; {setting}.",
                   "The claim: a smaller m generalizes better (the error falls as m shrinks)."),
        Experiment("finetune", "Fig. 9: ERM <-> SAM switches and interpolation",
                   "deep_nets_fig9_finetune.png", ft_specs, ft_report,
                   "Test error per epoch of ERM, ERM -> SAM, SAM -> ERM and SAM (switch at "
                   "{switch:.0%} of training), and the train/test loss on the line between the "
                   "ERM and ERM -> SAM solutions (t from -0.5 to 1.5); {setting}.",
                   "Fig. 9's claims: switching to SAM late improves on ERM, and the two "
                   "solutions lie in one basin (no loss barrier between t = 0 and t = 1)."),
        Experiment("noisy", "Fig. 12: noisy labels", "deep_nets_fig12_noisy_labels.png",
                   noisy_specs, noisy_report,
                   "Per epoch, with 60% symmetric label noise: test error, train error on the "
                   "noisy-label and on the clean examples, for ERM, SAM and m-SAM (mean over "
                   "seeds; best-validation epoch marked); {setting}.",
                   "Fig. 12's claims: SAM's best test error is below ERM's; both memorize the "
                   "noisy labels in the end, SAM later; stopping at the best epoch matters."),
        Experiment("convergence", "Convergence of ERM / SAM / m-SAM / unnormalized SAM",
                   "deep_nets_convergence.png", conv_specs, conv_report,
                   "Training loss per step (log scale) and test error for ERM, SAM (constant "
                   "rho), m-SAM and unnormalized SAM; {setting}.",
                   "The claim: m-SAM (and unnormalized SAM) still drive the training loss to "
                   "near zero, as the convergence analysis says."),
        Experiment("looksam", "LookSAM vs SAM vs ERM", "deep_nets_looksam.png",
                   look_specs, look_report,
                   "Test error per epoch and CPU seconds per epoch of ERM, SAM and LookSAM "
                   "(k = {looksam_k}); {setting}.",
                   "LookSAM's claim: it keeps most of SAM's gain over ERM at a fraction of "
                   "SAM's extra cost."),
        Experiment("seminar", "The seminar's table", "deep_nets_seminar.png",
                   sem_specs, sem_report,
                   "Test accuracy per epoch of SGD and SAM (rho {seminar_rho}), the seminar's "
                   "Fashion-MNIST ConvNet with a cosine schedule; {setting}.",
                   "The seminar's table: SAM slightly above SGD (0.8751 vs 0.8730); compare "
                   "the final accuracies with the claims table."),
    )
}  # fmt: skip


def timings_path(root: Path) -> Path:
    return root / "timings.json"


def write_timings(root: Path, timings: dict[str, Any]) -> None:
    atomic_write_json(timings_path(root), timings)


def read_timings(root: Path) -> dict[str, Any]:
    p = timings_path(root)
    return json.loads(p.read_text()) if p.exists() else {}


__all__ = ["EXPERIMENTS", "Experiment", "load", "paper_scale_row"]
