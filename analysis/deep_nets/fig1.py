"""Fig. 1 of Towards Understanding SAM: test error vs rho for ERM, random perturbations, n-SAM,
SAM at m = batch and m-SAM at a small m, with a pre-registered rho protocol.

The protocol (fixed before any run; the review of issue 20, section 3):

- **Grid**: every perturbing method (random, n-SAM, SAM, m-SAM) runs the profile's rho grid
  ``P["rhos"]`` (quick and full: {0.02, 0.05, 0.1, 0.2, 0.5}, the paper's optimum 0.2 inside, a
  factor 10 below and 2.5 above it; paper: Fig. 1's own grid). ERM gets no tuning trials: the
  base config's learning rate and L2, the same best-validation-epoch rule as every method; the
  tuned rows therefore test "SAM with rho tuned on validation vs default ERM".
- **Selection**: per method and per seed, the rho with the lowest error on the *validation* set
  (``SELECT_ON``; every validation example scored) at the epoch the row compares (the
  best-validation or the last epoch); ties go to the smaller rho. The test set is never looked at.
- **Boundary rule**: a seed that picks a grid end extends the grid one step at that end
  (``step_beyond``: the grid's own spacing there; those runs are trained in wave 1, after the
  grid); if the extended end is picked again the row
  says "optimum not bracketed" (its verdict stands, as the gain at the best rho tried).
- **Primary contrasts**: test error at each seed's chosen rho minus ERM's, paired by seed and by
  example (``suite.claims.gap``), the family's seed variance pooled per epoch
  (``suite.claims.pool``); effects judged against ``runs.EFFECT`` (0.5 points), the null claims
  "n-SAM stays near ERM" and "random perturbations do not help" by equivalence (TOST) within
  ``runs.NULL`` (0.5 points).
- **Shape**: the SAM - n-SAM gap grows with rho: (n-SAM - SAM) at the grid's largest rho minus
  at its smallest, per seed and example.
- **Untuned**: the comparisons at the one rho ``P["rho"]`` fixed before the runs are transfer
  tests, labelled "at rho r, untuned".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.deep_nets import plots
from analysis.deep_nets.common import PAPER, Caption, m_of, method, per_seed, rel, setting
from analysis.deep_nets.runs import (
    EFFECT,
    NULL,
    WHEN,
    Contrast,
    Outcome,
    Scores,
    Spec,
    SpecRuns,
    compare_contrasts,
    error_rate,
    gap,
    is_finished,
    launch_runs,
    load,
    outcome_of,
    pct,
    pooled_rows,
    run_path,
    runtime_flags,
    scores,
)
from suite.claims import ClaimRow
from suite.stage import Experiment, StageContext

# Input shapes as deep_nets.data loads them (N, *shape), for counting a model's parameters.
INPUT_SHAPES = {
    "mnist1d": (1, 40),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
}
# The rho protocol (module docstring), fixed before any run.
SELECT_ON = "val"  # the split rho is chosen on; never "test"
EXTEND_STEPS = 1  # grid steps a seed that picks a grid end adds at that end
EXTEND_FACTOR = 2.0  # the step beyond a one-point grid
PAPER_EFFECT = 0.75  # 128-SAM vs ERM in Fig. 1 (5.1% -> ~4.35%), points


@functools.cache
def _n_params(model: str, width: int | None, dataset: str) -> int:
    from deep_nets.data import NUM_CLASSES
    from deep_nets.models import build_model, count_parameters

    shape = INPUT_SHAPES[dataset]
    net = build_model(
        model,
        in_channels=shape[0],
        num_classes=NUM_CLASSES[dataset],
        width=width,
        input_shape=shape,
    )
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
        f"SAM (m={m_of(P, 1)})": lambda s: method(P, s, rho=rho),
        f"m-SAM (m={m_of(P, small)})": lambda s: method(P, s, rho=rho, acc=small),
    }


def labels(P: dict[str, Any]) -> list[str]:
    return list(fig1_methods(P, P["rho"]))


def erm_specs(P: dict[str, Any]) -> list[Spec]:
    return per_seed(P, lambda s: method(P, s))


def specs(P: dict[str, Any]) -> list[Spec]:
    """ERM and the grid (trained first, in wave 0)."""
    out = erm_specs(P)
    for rho in P["rhos"]:
        for fn in fig1_methods(P, rho).values():
            out += per_seed(P, fn)
    return out


def step_beyond(grid: Sequence[float], up: bool) -> float:
    """One grid step beyond the grid's upper (``up``) or lower end, in the grid's own
    geometric spacing there (end * end / neighbour; ``EXTEND_FACTOR`` for a one-point grid),
    rounded to 3 significant digits: {0.02, ..., 0.2, 0.5} extends to 1.25 and 0.008."""
    g = sorted(grid)
    if up:
        ratio = g[-1] / g[-2] if len(g) > 1 else EXTEND_FACTOR
        return float(f"{g[-1] * ratio:.3g}")
    ratio = g[1] / g[0] if len(g) > 1 else EXTEND_FACTOR
    return float(f"{g[0] / ratio:.3g}")


def choose_rho(runs: Mapping[float, Mapping[str, Any]], when: str) -> float:
    """The rho whose run has the lowest ``SELECT_ON`` (validation) error at ``when``; ties go
    to the smaller rho. Never reads the test set."""
    return min(sorted(runs), key=lambda r: error_rate(runs[r], when, SELECT_ON))


def extensions(grid_runs: Mapping[float, Mapping[str, Any]]) -> list[float]:
    """The boundary rule: for each grid end that this seed's validation choice (at either
    epoch) picks, the rho values up to ``EXTEND_STEPS`` grid steps beyond it (``step_beyond``);
    empty when the optimum is inside the grid."""
    grid = sorted(grid_runs)
    out: set[float] = set()
    for when in WHEN:
        r = choose_rho(grid_runs, when)
        for end, up in ((grid[0], False), (grid[-1], True)):
            if r == end:
                g = list(grid)
                for _ in range(EXTEND_STEPS):
                    g.append(step_beyond(g, up))
                    g.sort()
                    out.add(g[-1] if up else g[0])
    return sorted(out)


@dataclass(frozen=True)
class Fig1Runs:
    """``Experiment.runs`` of Fig. 1 (wave 1): the grid (already trained in wave 0 by the
    ``fig1_grid`` experiment) plus the boundary rule's extensions, decided from the grid's
    validation errors."""

    def specs(self, P: dict[str, Any]) -> list[Spec]:
        return specs(P)

    def __call__(self, ctx: Any) -> list:
        return launch_runs(
            specs(ctx.P) + extension_specs(ctx.P, ctx.root), ctx.root, runtime_flags(ctx.P)
        )


def grid_runs_of(P: dict[str, Any], root: Any, lab: str, seed: int) -> dict[float, dict] | None:
    """{rho: the finished grid run of method ``lab`` and ``seed``}; None while one is missing."""
    out = {}
    for rho in P["rhos"]:
        path = run_path(root, fig1_methods(P, rho)[lab](seed))
        if not is_finished(path):
            return None
        out[rho] = load(root, fig1_methods(P, rho)[lab](seed))
    return out


def extension_specs(P: dict[str, Any], root: Any) -> list[Spec]:
    """The runs the boundary rule adds (``extensions``) for every method and seed whose grid
    runs are finished."""
    out = []
    for lab in labels(P):
        for seed in P["seeds"]:
            g = grid_runs_of(P, root, lab, seed)
            if g is not None:
                out += [fig1_methods(P, r)[lab](seed) for r in extensions(g)]
    return out


@dataclass
class Tuned:
    """One method at each seed's validation-chosen rho: per epoch (``WHEN``) the chosen rho per
    seed, the runs there (an ``Outcome`` per epoch) and whether the optimum was bracketed."""

    label: str
    chosen: dict[str, list[float]]
    at: dict[str, Outcome]
    bracketed: dict[str, bool]
    curve: dict[float, Outcome]  # every rho tried by all seeds (the grid and shared extensions)


def tune(P: dict[str, Any], root: Any, lab: str) -> Tuned:
    chosen: dict[str, list[float]] = {w: [] for w in WHEN}
    picked: dict[str, list[dict]] = {w: [] for w in WHEN}
    bracketed = dict.fromkeys(WHEN, True)
    tried: list[dict[float, dict]] = []
    for seed in P["seeds"]:
        g = {rho: load(root, fig1_methods(P, rho)[lab](seed)) for rho in P["rhos"]}
        cand = {**g, **{r: load(root, fig1_methods(P, r)[lab](seed)) for r in extensions(g)}}
        tried.append(cand)
        for when in WHEN:
            r = choose_rho(cand, when)
            chosen[when].append(r)
            picked[when].append(cand[r])
            if r in (min(cand), max(cand)):
                bracketed[when] = False
    seeds_specs = per_seed(P, lambda s: fig1_methods(P, P["rho"])[lab](s))
    at = {w: outcome_of(f"{lab} (tuned rho)", seeds_specs, picked[w]) for w in WHEN}
    common = sorted(set.intersection(*(set(c) for c in tried)))
    curve = {r: outcome_of(lab, seeds_specs, [c[r] for c in tried]) for r in common}
    return Tuned(lab, chosen, at, bracketed, curve)


def _tuned_note(t: Tuned, when: str) -> str:
    rhos = "/".join(f"{r:g}" for r in t.chosen[when])
    s = f"{t.label}: rho chosen per seed on the validation set = {rhos}"
    return s if t.bracketed[when] else s + " (optimum not bracketed: a grid end after extension)"


def shape_gap(sam: Tuned, nsam: Tuned, when: str, lo: float, hi: float) -> Any:
    """(n-SAM - SAM) test error at rho ``hi`` minus at rho ``lo``, per seed and example (paired):
    positive when the SAM - n-SAM gap grows with rho."""

    def diff(rho: float) -> list[Scores]:
        out = []
        for a, b in zip(nsam.curve[rho].runs, sam.curve[rho].runs, strict=True):
            sa, sb = scores(a, when), scores(b, when)
            out.append(Scores(sa.seed, sa.digest, sa.values - sb.values))
        return out

    return gap(diff(hi), diff(lo), lower_is_better=False).scaled(100)


def contrasts(P: dict[str, Any], root: Any) -> tuple[list[Contrast], dict[str, Any]]:
    """Every contrast of Fig. 1 (rows and their pools) and what the figure draws."""
    erm = outcome_of("ERM", erm_specs(P), [load(root, s) for s in erm_specs(P)])
    labs = labels(P)
    tuned = {lab: tune(P, root, lab) for lab in labs}
    rnd, nsam, sam, msam = (tuned[lab] for lab in labs)
    setting_note = (
        f"{setting(P)} instead of ResNet-18 / CIFAR-10 (CPU budget); n-SAM = ascent on the "
        "previous batch (--sam_use_prev_batch, the original's); random = the original's "
        "Gaussian weight perturbation (--add_weight_perturb_scale rho / sqrt(#params))"
    )
    erm_note = (
        "ERM untuned (the base config's lr and L2: no tuning trials; tuned SAM vs default ERM)"
    )
    out: list[Contrast] = []

    def tuned_pair(
        base: Outcome | Tuned, meth: Tuned, claim: str, value: str, test=EFFECT, eff=None
    ):
        for when in WHEN:
            b = base if isinstance(base, Outcome) else base.at[when]
            m = meth.at[when]
            notes = [_tuned_note(meth, when)]
            if isinstance(base, Tuned):
                notes.append(_tuned_note(base, when))
            else:
                notes.append(erm_note)
            out.append(
                Contrast(
                    claim=f"{claim}, rho tuned on validation (at the {WHEN[when]})",
                    paper_value=value,
                    ours=f"{b.label} {pct(b.at(when))} vs {m.label} {pct(m.at(when))}",
                    stat=gap(m.scores(when), b.scores(when)).scaled(100),
                    test=test,
                    pool_key=f"fig1/{when}",
                    note="; ".join([*notes, setting_note]),
                    paper_effect=eff,
                )
            )

    tuned_pair(
        erm,
        sam,
        "SAM with m = batch (the paper's 128-SAM) beats ERM",
        "ERM ~5.1%, 128-SAM ~4.35% (best rho 0.2)",
        eff=PAPER_EFFECT,
    )
    tuned_pair(erm, msam, "m-SAM with a small m beats ERM", "ERM ~5.1%, m-SAM below 128-SAM")
    tuned_pair(
        nsam, sam, "SAM (m = batch) beats n-SAM", "n-SAM ~5.1% vs 128-SAM ~4.35%", eff=PAPER_EFFECT
    )
    tuned_pair(erm, nsam, "n-SAM stays near ERM", "n-SAM ~5.1% (flat in rho), ERM ~5.1%", test=NULL)
    tuned_pair(
        rnd,
        sam,
        "SAM (m = batch) beats random perturbations",
        "random ~ERM (5.1%) vs 128-SAM ~4.35%",
        eff=PAPER_EFFECT,
    )
    tuned_pair(erm, rnd, "random perturbations do not help", "random ~ERM (5.1%)", test=NULL)
    lo, hi = min(P["rhos"]), max(P["rhos"])
    for when in WHEN:
        g = shape_gap(sam, nsam, when, lo, hi)
        out.append(
            Contrast(
                claim=f"the SAM - n-SAM gap grows with rho: (n-SAM - SAM) at rho {hi:g} minus "
                f"at rho {lo:g} (at the {WHEN[when]})",
                paper_value="n-SAM flat in rho while 128-SAM improves up to rho 0.2",
                ours=f"n-SAM - SAM: {_gap_pct(nsam.curve[lo], sam.curve[lo], when)} at {lo:g}, "
                f"{_gap_pct(nsam.curve[hi], sam.curve[hi], when)} at {hi:g}",
                stat=g,
                test=EFFECT,
                pool_key=f"fig1-shape/{when}",
                note="grid ends, fixed before the runs; " + setting_note,
            )
        )
    r = P["rho"]
    at_r = {lab: tuned[lab].curve[r] for lab in labs}
    untuned = f"at rho {r:g}, untuned"
    for base, meth, claim in (
        (erm, at_r[labs[2]], "SAM with m = batch beats ERM"),
        (erm, at_r[labs[3]], "m-SAM with a small m beats ERM"),
        (at_r[labs[1]], at_r[labs[2]], "SAM (m = batch) beats n-SAM"),
        (at_r[labs[0]], at_r[labs[2]], "SAM (m = batch) beats random perturbations"),
    ):
        out += compare_contrasts(
            base,
            meth,
            claim=f"{claim} ({untuned})",
            paper_value="ERM ~5.1%, 128-SAM ~4.35% at rho 0.1",
            note=f"rho {r:g} fixed before the runs, not tuned (a transfer test); " + setting_note,
            pool="fig1",
        )
    return out, {"erm": erm, "tuned": tuned}


def _gap_pct(a: Outcome, b: Outcome, when: str) -> str:
    d = [100 * (x - y) for x, y in zip(a.at(when), b.at(when), strict=True)]
    return f"{sum(d) / len(d):+.2f}"


_READING: dict[str, str] = {}


def report_rows(P: dict[str, Any], root: Any, *, figure: str) -> list[ClaimRow]:
    """Fig. 1's claims rows from the finished runs under ``root`` (no figure drawn)."""
    cs, _ = contrasts(P, root)
    return pooled_rows(cs, paper=f"{PAPER}, Fig. 1", figure=figure)


def report(ctx: StageContext) -> list[ClaimRow]:
    P, root = ctx.P, ctx.root
    cs, drawn = contrasts(P, root)
    tuned: dict[str, Tuned] = drawn["tuned"]
    fig = plots.error_vs_x(
        {lab: sorted(t.curve) for lab, t in tuned.items()},
        {lab: [t.curve[r] for r in sorted(t.curve)] for lab, t in tuned.items()},
        drawn["erm"],
        ctx.figure(FIGURE),
        xlabel="training rho",
        title=f"Fig. 1: test error vs rho ({setting(P)})",
        chosen={
            lab: {w: list(zip(t.chosen[w], t.at[w].at(w), strict=True)) for w in WHEN}
            for lab, t in tuned.items()
        },
    )
    rows = pooled_rows(cs, paper=f"{PAPER}, Fig. 1", figure=rel(fig))
    _READING[str(ctx.figure(FIGURE))] = reading_text(rows)
    return rows


def reading_text(rows: Sequence[ClaimRow]) -> str:
    """The figure's reading from the tuned last-epoch rows' verdicts (so that it says what the
    rows say)."""
    parts = []
    for r in rows:
        if "rho tuned on validation (at the last epoch)" in r.claim:
            c = r.cells()
            name = r.claim.split(", rho tuned")[0]
            parts.append(f"{name}: {c['verdict']} ({c['gap']:+.2f} +- {c['se']:.2f} points)")
    return (
        "At each seed's validation-chosen rho, last epoch: " + "; ".join(parts) + " (claims table)."
    )


def _reading(ctx: StageContext) -> str:
    return _READING.get(
        str(ctx.figure(FIGURE)),
        "Fig. 1's claims at the validation-chosen rho: see the claims table.",
    )


FIGURE = "deep_nets_fig1_rho.png"
# The grid (and ERM) in wave 0, so that the boundary rule can read their validation errors
# before Fig. 1's own runs (the extensions) are described in wave 1.
GRID = Experiment(
    "fig1_grid",
    "",
    SpecRuns(specs),
    lambda ctx: [],
    title="Fig. 1: the rho grid (trained before the boundary rule's extensions)",
)
EXPERIMENT = Experiment(
    "fig1",
    FIGURE,
    Fig1Runs(),
    report,
    wave=1,
    title="Fig. 1: test error vs rho",
    shows=Caption(
        "Test error (best-validation and last epoch; mean +- std over seeds, 100 000 test "
        "examples on mnist1d) vs training rho for ERM (band, untuned), random perturbation, "
        "n-SAM, SAM (m = batch) and m-SAM (small m); stars: each seed's rho chosen on the "
        "validation set; {setting}."
    ),
    reading=_reading,
)
