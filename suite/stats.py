"""Gaps between two methods with the standard error their design calls for, and pre-registered
verdicts on them.

A *gap* is mean(A) - mean(B) of a per-example score (0/1 errors, or losses) averaged over the
examples of a run and over seeds. Each run is an ``Outcome``: its seed, the SHA-256 of the
examples it was scored on, and its per-example scores (a scalar measurement is one "example").

Designs (``design`` decides from the outcomes, never from a caller's flag):

- ``"paired"`` (by seed and by example): both methods ran the same seeds, and every run was scored
  on the same examples (one digest). This is the deep-net design: runs with one seed share
  initialization, split and data order, and all are scored on one test set.
- ``"paired by seed"``: the same seeds, each seed's two runs on the same examples, but the examples
  differ between seeds (or each run is one number).
- ``"unpaired"``: anything else (other seeds, or other examples for one seed).

Paired standard error (derivation). Let delta_s(x) = a_s(x) - b_s(x) for seed s = 1..k and example
x = 1..n; it is +1 where A gets x wrong and B right, -1 for the reverse and 0 elsewhere, so only the
discordant examples enter. Model delta_s(x) = D + u_s + v(x) + e_s(x) with independent zero-mean
terms: u_s the seed's effect on the gap (training randomness, variance s_u^2), v(x) the example's
(test-set sampling, s_v^2), e_s(x) their interaction (s_e^2). The estimate is the grand mean
G = D + mean(u) + mean(v) + mean(e), so

    Var G = s_u^2 / k + s_v^2 / n + s_e^2 / (k n).

With d_s = mean_x delta_s(x) (the per-seed gaps), m(x) = mean_s delta_s(x) (the per-example gaps)
and the two-way residual r_s(x) = delta_s(x) - d_s - m(x) + G, the sample variances have
expectations E var_s(d) = s_u^2 + s_e^2 / n, E var_x(m) = s_v^2 + s_e^2 / k and
E mean_sq(r) = s_e^2 (divisor (k-1)(n-1)), hence the unbiased estimate

    SE^2 = var_s(d) / k  +  var_x(m) / n  -  mean_sq(r) / (k n)
           (seed term)      (example term)    (interaction, counted in both terms above)

i.e. the seed term and the per-example paired term in quadrature, less the interaction they
share. Neither term alone is enough: the seed term misses the test set's sampling error, which is
common to all seeds (on mnist1d's old 1000 examples it gave 0.30 where the truth was 0.96 points),
and the example term misses the training randomness. Each term is an unbiased lower bound of the
truth in expectation, so SE^2 is floored at the larger of the two.
Assumptions: seeds are independent and exchangeable; the examples are an iid sample of the target
distribution that no selection (epoch, rho, model) has looked at; the two methods' runs of one seed
share that seed's randomness only (pairing may be arbitrarily strong, it is never assumed).
For ``"paired by seed"`` the per-seed gaps d_s are iid (their test noise is independent across
seeds), so SE^2 = var_s(d) / k already contains both sources.

Unpaired (Welch): SE^2 = var(A) / k_A + var(B) / k_B over the per-run means, plus, when every run
of a side is scored on the same n examples, that side's test-sampling term var_x(mean_s a_s(x)) / n
(p (1 - p) / n for one run of 0/1 errors), since a fixed test set's luck is shared by the side's
seeds; it also holds the runs' own prediction noise, which the seed term counts too, so the form
is conservative (by 17% in variance in tests/test_stats.py).

Degrees of freedom. Paired: the seed count, df = k - 1. It is exact when the seed term dominates
and conservative when the (nearly exactly known, n - 1 df) example term does. Welch-Satterthwaite
over the three terms was tried and rejected: its df is estimated from the same small seed sample,
and a seed variance that is small by chance also buys a large df, so at k = 2 it rejected a true
null 10-13% of the time (in nulls simulated like those of tests/test_stats.py). Two seeds
therefore give t(0.975, 1) = 12.7, not 2: a 2-SE rule rejects a true null 29.5% of the time on
seed-level numbers, and 18.6% even with this (correct) paired SE in those simulations.
Unpaired: Welch-Satterthwaite over the two seed terms alone (the example terms are treated as
known to those df, which only lowers df). ``pooled_seed_variance`` pools the seed term over the
comparisons of a family (df = sum (k_i - 1)) after checking that their variances agree
(Bartlett's test).

Verdicts (``judge``) against a ``Claim`` declared before the results: its kind (an effect the
paper claims, or a null claim "X stays near Y"), smallest effect of interest / equivalence margin
``sesoi``, ``alpha`` and ``power``. The words are ``VERDICTS`` (see ``judge``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

# The verdict words of the whole suite (``judge`` defines them). "equivalent": a null claim
# shown within its margin (TOST); "negligible": an effect shown smaller than the claim's smallest
# effect of interest; "not comparable": a rule fixed before the results (a precondition such as
# "the method fits its training set", or a profile whose budget cannot test the claim) says the
# run cannot test the claim; "not run": the results are missing.
STATS_VERDICTS = ("equivalent", "negligible", "not comparable")
VERDICTS = ("reproduced", "within noise", "contradicted", "not run") + STATS_VERDICTS
DESIGNS = ("paired", "paired by seed", "unpaired")
CLAIM_KINDS = ("effect", "null")


@dataclass(frozen=True)
class Outcome:
    """One run's scores: ``values`` per example (1-D; 0/1 errors, losses; one value for a scalar
    measurement), the ``seed`` it ran with and the SHA-256 ``digest`` of the examples scored."""

    seed: int
    digest: str
    values: np.ndarray

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            raise ValueError(f"seed {self.seed}: an outcome needs at least one value")
        object.__setattr__(self, "values", v)


@dataclass(frozen=True)
class GapEstimate:
    """mean(A) - mean(B) (``gap``), its standard error and degrees of freedom, the design that
    decided the formula, the seeds ``k`` and examples ``n`` per run (n of side A when unpaired)
    and the variance terms (``seed_var``, ``example_var``: SE^2 contributions)."""

    gap: float
    se: float
    df: float
    design: str
    k: int
    n: int
    seed_var: float
    example_var: float

    def crit(self, alpha: float = 0.05) -> float:
        """Two-sided critical value t(1 - alpha/2, df)."""
        return t_crit(1 - alpha / 2, self.df)


@functools.lru_cache(maxsize=4096)
def t_crit(q: float, df: float) -> float:
    """Student's t quantile; df = inf gives the normal's; df < 1 or NaN gives inf (undecidable)."""
    if not df >= 1:  # NaN too
        return math.inf
    return float(sps.norm.ppf(q)) if math.isinf(df) else float(sps.t.ppf(q, df))


def satterthwaite(terms: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite df of a sum of variance terms [(c_i M_i, f_i)] (signed contributions
    and their degrees of freedom): (sum)^2 / sum (c_i M_i)^2 / f_i; inf when every term is 0."""
    total = sum(v for v, _ in terms)
    denom = sum(v * v / f for v, f in terms if f > 0 and math.isfinite(f) and v != 0)
    if denom == 0:
        return math.inf
    return total * total / denom


def design(a: Sequence[Outcome], b: Sequence[Outcome]) -> str:
    """``"paired"``, ``"paired by seed"`` or ``"unpaired"`` (module docstring), from the seeds and
    digests the runs recorded."""
    sa, sb = [o.seed for o in a], [o.seed for o in b]
    if len(set(sa)) != len(sa) or len(set(sb)) != len(sb) or set(sa) != set(sb):
        return "unpaired"
    bs = {o.seed: o for o in b}
    for o in a:
        if o.digest != bs[o.seed].digest or o.values.size != bs[o.seed].values.size:
            return "unpaired"
    if len({o.digest for o in a}) == 1 and a[0].values.size > 1:
        return "paired"
    return "paired by seed"


def compare(a: Sequence[Outcome], b: Sequence[Outcome]) -> GapEstimate:
    """mean(A) - mean(B) with the standard error of the design the outcomes show (``design``)."""
    if not a or not b:
        raise ValueError("compare needs at least one outcome on each side")
    d = design(a, b)
    if d == "unpaired":
        return _unpaired(a, b)
    bs = {o.seed: o for o in b}
    delta = np.stack([o.values - bs[o.seed].values for o in a])  # (k, n)
    if d == "paired":
        return _two_way(delta)
    per_seed = delta.mean(axis=1)
    k = per_seed.size
    var = per_seed.var(ddof=1) / k if k > 1 else math.nan
    return GapEstimate(
        float(per_seed.mean()), math.sqrt(var), k - 1.0, d, k, a[0].values.size, var, 0.0
    )


def _two_way(delta: np.ndarray) -> GapEstimate:
    """The paired SE of the module docstring for delta (k seeds, n examples)."""
    g, se, df, seed, example = (float(v) for v in paired_se(delta))
    k, n = delta.shape
    return GapEstimate(g, se, df, "paired", k, n, seed, example)


def paired_se(delta: np.ndarray) -> tuple[np.ndarray, ...]:
    """(gap, SE, df, seed term, example term) of the two-way paired estimate (module docstring)
    for per-example differences ``delta`` of shape (..., k seeds, n examples), batched over the
    leading axes; df = k - 1 (module docstring); k = 1 gives NaN SE and df."""
    delta = np.asarray(delta, dtype=np.float64)
    k, n = delta.shape[-2:]
    g = delta.mean(axis=(-2, -1))
    d, m = delta.mean(axis=-1), delta.mean(axis=-2)
    example = m.var(axis=-1, ddof=1) / n if n > 1 else np.zeros_like(g)
    if k < 2:
        nan = np.full_like(g, np.nan)
        return g, nan, nan, nan, example
    seed = d.var(axis=-1, ddof=1) / k
    r = delta - d[..., :, None] - m[..., None, :] + g[..., None, None]
    inter = (r * r).sum(axis=(-2, -1)) / ((k - 1) * max(n - 1, 1)) / (k * n)
    # A negative variance-component estimate is truncated at 0: SE^2 >= either term.
    var = np.maximum(seed + example - inter, np.maximum(seed, example))
    return g, np.sqrt(var), np.full_like(g, k - 1.0), seed, example


def _side(o: Sequence[Outcome]) -> tuple[float, float, float, float, float, int]:
    """(mean, seed-term var, its df, example-term var, its df, n) of one side."""
    means = np.array([x.values.mean() for x in o])
    k = means.size
    seed = means.var(ddof=1) / k if k > 1 else math.nan
    n = o[0].values.size
    example, f = 0.0, math.inf
    if n > 1 and len({x.digest for x in o}) == 1 and all(x.values.size == n for x in o):
        m = np.mean([x.values for x in o], axis=0)
        example, f = float(m.var(ddof=1)) / n, n - 1.0
    return float(means.mean()), seed, k - 1.0, example, f, n


def _unpaired(a: Sequence[Outcome], b: Sequence[Outcome]) -> GapEstimate:
    ma, sa, fa, ea, _, n = _side(a)
    mb, sb, fb, eb, _, _ = _side(b)
    var = sa + sb + ea + eb
    df = satterthwaite([(sa, fa), (sb, fb)])  # the example terms count as known
    return GapEstimate(
        ma - mb, math.sqrt(var), df, "unpaired", min(len(a), len(b)), n, sa + sb, ea + eb
    )


def pooled_seed_variance(
    estimates: Sequence[GapEstimate], *, alpha: float = 0.05
) -> tuple[float, float] | None:
    """Pool the per-seed variance of several paired comparisons of one family (the method x seed
    interaction): s_p^2 = sum (k_i - 1) s_i^2 / sum (k_i - 1) with s_i^2 = k_i seed_var_i, on
    sum (k_i - 1) df. Pooling assumes one interaction variance for all; Bartlett's test checks it
    and None is returned (do not pool) when it rejects at ``alpha`` or fewer than two comparisons
    have a seed term. Returns (s_p^2, df); a comparison's pooled SE^2 is then
    s_p^2 / k_i + its example term (``with_pooled_seed``)."""
    rows = [(e.k - 1, e.seed_var * e.k) for e in estimates if e.k > 1 and e.seed_var > 0]
    if len(rows) < 2:
        return None
    f = np.array([r[0] for r in rows], dtype=float)
    s2 = np.array([r[1] for r in rows])
    pooled = float((f * s2).sum() / f.sum())
    # Bartlett: ((N - g) ln s_p^2 - sum f_i ln s_i^2) / (1 + (sum 1/f_i - 1/sum f_i) / (3(g-1)))
    g = len(rows)
    stat = (f.sum() * math.log(pooled) - float((f * np.log(s2)).sum())) / (
        1 + (float((1 / f).sum()) - 1 / f.sum()) / (3 * (g - 1))
    )
    if sps.chi2.sf(stat, g - 1) < alpha:
        return None
    return pooled, float(f.sum())


def with_pooled_seed(e: GapEstimate, pooled: tuple[float, float]) -> GapEstimate:
    """``e`` with its seed term replaced by the pooled one (``pooled_seed_variance``)."""
    if e.design == "unpaired":
        raise ValueError("with_pooled_seed: the pooled interaction variance is for paired gaps")
    s2, f = pooled
    seed = s2 / e.k
    var = max(e.se**2 - e.seed_var + seed, seed, e.example_var)
    return GapEstimate(e.gap, math.sqrt(var), f, e.design, e.k, e.n, seed, e.example_var)


def mde(se: float, df: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimal detectable effect: the true gap that a two-sided level-``alpha`` test on (se, df)
    declares significant with probability ``power``: (t(1 - alpha/2) + t(power)) se. With
    power 0.5 it is the critical value x SE, the smallest gap that can be declared at all."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha}, {power}")
    return (t_crit(1 - alpha / 2, df) + t_crit(power, df)) * se if se > 0 else 0.0


def tost(gap: float, se: float, df: float, margin: float, *, alpha: float = 0.05) -> bool:
    """Two one-sided tests: True when both H0: gap <= -margin and H0: gap >= margin are rejected
    at level ``alpha``, i.e. the (1 - 2 alpha) interval gap +- t(1 - alpha) se lies inside
    (-margin, margin): the gap is shown to be smaller than the margin."""
    if margin <= 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    h = t_crit(1 - alpha, df) * se
    return math.isfinite(h) and -margin < gap - h and gap + h < margin


@dataclass(frozen=True)
class Claim:
    """A claim's test, declared before any result is seen (frozen: never loosened afterwards).

    kind: ``"effect"`` (the paper claims a gap in its direction) or ``"null"`` (the paper claims
    no gap, e.g. "n-SAM stays near ERM"). sesoi: for an effect, the smallest effect of interest
    (a smaller true gap would not support the claim; 0 = any gap); for a null claim, the
    equivalence margin (> 0). Both are in the gap's units. alpha: the level of each test.
    power: the power at which ``mde`` is quoted and a row is called underpowered.
    """

    kind: str
    sesoi: float
    alpha: float = 0.05
    power: float = 0.8

    def __post_init__(self) -> None:
        if self.kind not in CLAIM_KINDS:
            raise ValueError(f"Claim kind must be one of {CLAIM_KINDS}, got {self.kind!r}")
        if not (self.sesoi > 0 if self.kind == "null" else self.sesoi >= 0):
            raise ValueError(f"Claim sesoi must be {'> 0' if self.kind == 'null' else '>= 0'}")
        if not 0 < self.alpha < 0.5 or not 0 < self.power < 1:
            raise ValueError("Claim alpha must lie in (0, 0.5) and power in (0, 1)")


@dataclass(frozen=True)
class Judgement:
    """``verdict`` (one of ``VERDICTS``), the ``mde`` at the claim's power, and
    ``underpowered`` (the paper's effect, when given, is below the MDE)."""

    verdict: str
    mde: float
    underpowered: bool | None


def judge(
    claim: Claim,
    gap: float | None,
    se: float | None,
    df: float | None,
    *,
    paper_effect: float | None = None,
) -> Judgement:
    """The verdict on a gap measured in the paper's direction (positive = the paper's sign).

    significant: |gap| > t(1 - alpha/2, df) se (two-sided level alpha);
    negligible:  the gap is shown smaller than sesoi (``tost`` at alpha; never for sesoi 0).

    effect claims:
    - ``reproduced``: significant in the paper's direction and not negligible;
    - ``contradicted``: significant in the opposite direction and not negligible;
    - ``negligible``: shown smaller than the smallest effect of interest (significant or not):
      the run rules out an effect that would matter;
    - ``within noise``: none of these: the run cannot decide (see ``mde``).
    null claims (the paper says no gap; sesoi is the margin):
    - ``equivalent``: shown within the margin (TOST) - the null claim is supported;
    - ``contradicted``: the gap is shown beyond the margin (|gap| - t(1 - alpha/2) se > sesoi):
      a gap the claim denies; a significant gap whose size may still lie inside the margin is
      not a contradiction (``within noise``);
    - ``within noise``: neither.
    both: ``not run`` when the gap is missing; a NaN/inf SE or df < 1 never decides.
    """
    if gap is None or se is None or df is None or math.isnan(gap):
        return Judgement("not run", math.nan, None)
    if se < 0:
        raise ValueError(f"a standard error must be >= 0, got {se}")
    decidable = math.isfinite(se) and (df >= 1 or se == 0)
    if not decidable:
        return Judgement("within noise", math.inf, None if paper_effect is None else True)
    dfe = df if df >= 1 else math.inf
    detect = mde(se, dfe, alpha=claim.alpha, power=claim.power)
    under = None if paper_effect is None else bool(abs(paper_effect) < detect)
    h = t_crit(1 - claim.alpha / 2, dfe) * se
    significant = abs(gap) > h
    small = claim.sesoi > 0 and tost(gap, se, dfe, claim.sesoi, alpha=claim.alpha)
    if claim.kind == "null":
        beyond = abs(gap) - h > claim.sesoi
        v = "equivalent" if small else ("contradicted" if beyond else "within noise")
    elif small:
        v = "negligible"
    elif significant:
        v = "reproduced" if gap > 0 else "contradicted"
    else:
        v = "within noise"
    assert v in VERDICTS
    return Judgement(v, detect, under)
