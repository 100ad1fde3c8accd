"""Claims tables and the one verdict rule of the whole suite.

Every family writes ``results/<family>/claims.csv`` with the columns of ``CLAIM_COLUMNS``. A row is
a ``ClaimRow``: its statistic is a ``Gap`` made by ``gap`` (the one place a row's gap, standard
error and degrees of freedom are computed) and its test is a ``suite.stats.Claim`` declared with
the row before any result is seen (an effect with its smallest effect of interest, or a null claim
with its equivalence margin). The verdict is ``suite.stats.judge`` of the two, so a verdict always
means the same thing (``suite.stats.VERDICTS``):

- ``reproduced``:     the gap has the paper's sign beyond t(1 - alpha/2, df) standard errors and
                      is not shown smaller than the smallest effect of interest;
- ``within noise``:   the run cannot decide (the ``mde`` column says what it could detect);
- ``contradicted``:   significant in the opposite direction (for a null claim: a gap the claim
                      denies, beyond its margin);
- ``equivalent``:     a null claim ("n-SAM stays near ERM") shown within its margin (TOST);
- ``negligible``:     an effect shown smaller than the claim's smallest effect of interest;
- ``not comparable``: a rule fixed before the results (a precondition such as "the method fits
                      its training set", or a profile whose budget cannot test the claim) says
                      the run cannot test the claim; the note says which rule;
- ``not run``:        the results are missing (or the stage failed).

The standard error follows the design of the runs (``suite.stats``: paired by seed and by example
where both methods ran the same seeds and were scored on the same examples, decided from the runs'
recorded seeds and data digests), and the critical value is Student's t on its degrees of freedom:
two seeds give df 1 (t = 12.7), unless the family pools its seed variance (``pool``). The test,
alpha and the margins are fixed in code before results are seen; never loosen them to make a row
pass.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from suite.rundir import atomic_write_text
from suite.stats import (
    STATS_VERDICTS,
    VERDICTS,
    Claim,
    GapEstimate,
    Judgement,
    Outcome,
    compare,
    judge,
    pooled_seed_variance,
    satterthwaite,
    with_pooled_seed,
)

__all__ = [
    "CLAIM_COLUMNS",
    "VERDICTS",
    "STATS_VERDICTS",
    "ANY_EFFECT",
    "Claim",
    "ClaimRow",
    "Gap",
    "Outcome",
    "gap",
    "pool",
    "verdict",
    "write_claims",
    "mean_std",
    "fmt_mean_std",
    "mean_se",
    "compare_to_paper",
]

CLAIM_COLUMNS = (
    "family",  # deep_nets, diagonal_linear_nets, one_layer_relu_nets, core, measures
    "paper",  # paper and figure/table, e.g. "Towards Understanding SAM, Fig. 1"
    "claim",  # the claim in one line
    "paper_value",  # the paper's number(s)
    "ours",  # our number(s): mean +- std (n seeds) where seeds exist
    "gap",  # the signed gap in the paper's direction (positive = the paper's sign)
    "se",  # its standard error
    "df",  # its degrees of freedom (inf: a deterministic or normal-theory comparison)
    "kind",  # the pre-registered test: effect (the paper claims a gap) or null (no gap)
    "sesoi",  # smallest effect of interest (effect) or equivalence margin (null), gap units
    "mde",  # minimal detectable effect at 80% power: (t(1 - alpha/2) + t(0.8)) x SE
    "profile",  # test / quick / full / paper
    "verdict",  # one of VERDICTS, computed by suite.stats.judge
    "figure",  # the figure file that shows it
    "note",  # deviations from the paper's setting and why
)
# The test of a row that declares none: any effect in the paper's direction. Rows should declare
# their own ``Claim`` (with a smallest effect of interest); this default exists so that an old
# row stays judged by the t rule rather than by nothing.
ANY_EFFECT = Claim("effect", 0.0)


def verdict(gap: float | None, se: float | None, df: float | None, test: Claim = ANY_EFFECT) -> str:
    """The suite's verdict for a gap in the paper's direction with standard error ``se`` on
    ``df`` degrees of freedom under the pre-registered ``test`` (``suite.stats.judge``). A missing
    or NaN gap is ``not run``; a NaN/infinite SE or df < 1 (with se > 0) never decides."""
    return judge(test, gap, se, df).verdict


@dataclass(frozen=True)
class Gap:
    """A row's statistic: ``gap`` in the paper's direction (positive = the paper's sign), its
    standard error ``se`` on ``df`` degrees of freedom (NaN: unknown, which never decides unless
    se == 0), the ``design`` that chose the formula (``suite.stats.DESIGNS``, or "" for a number
    computed elsewhere), each side's mean, std and count (``a`` = the baseline, ``b`` = the
    method) and, for a paired comparison, the SE^2 terms (``seed_var``, ``example_var``) with the
    seed count ``k`` that ``pool`` needs. Made by ``gap``."""

    gap: float
    se: float
    df: float = math.nan
    design: str = ""
    mean_a: float = math.nan
    std_a: float = math.nan
    n_a: int = 0
    mean_b: float = math.nan
    std_b: float = math.nan
    n_b: int = 0
    seed_var: float = math.nan
    example_var: float = math.nan
    k: int = 0

    @property
    def verdict(self) -> str:
        return verdict(self.gap, self.se, self.df)

    def scaled(self, c: float) -> Gap:
        """The same comparison in other units (``c = 100``: error rates in percentage points)."""
        c2 = c * c
        return replace(
            self,
            gap=c * self.gap,
            se=c * self.se,
            mean_a=c * self.mean_a,
            std_a=c * self.std_a,
            mean_b=c * self.mean_b,
            std_b=c * self.std_b,
            seed_var=c2 * self.seed_var,
            example_var=c2 * self.example_var,
        )

    def describe(self, fmt: str = ".3g") -> str:
        return f"gap {self.gap:{fmt}} +- {self.se:{fmt}} (SE, df {self.df:g})"


@dataclass(frozen=True)
class ClaimRow:
    """One row of a claims table (``CLAIM_COLUMNS``). Its gap, standard error and df come from
    ``stat`` (a ``Gap`` made by ``gap``; None: not run), its test from ``test`` (a ``Claim``
    declared before the results; None = ``ANY_EFFECT``), never from hand-written cells.

    ``paper_effect``: the paper's effect in the gap's units, when it has one: the row's note then
    says "underpowered" when the design cannot detect it (below the MDE). ``not_comparable``: the
    reason a rule fixed before the results says this run cannot test the claim (a precondition
    such as "fits its training set" that failed, or a profile's budget); it makes the verdict
    ``not comparable`` whatever the gap. ``family`` and ``profile`` are filled in by
    ``suite.stage.run_stage``; a row about another profile (the paper-scale placeholder rows)
    names it."""

    paper: str
    claim: str
    paper_value: str
    ours: str
    stat: Gap | None = None
    figure: str = ""
    note: str = ""
    family: str = ""
    profile: str = ""
    test: Claim | None = None
    paper_effect: float | None = None
    not_comparable: str = ""

    @property
    def judgement(self) -> Judgement:
        test = self.test or ANY_EFFECT
        if self.stat is None:
            j = Judgement("not run", math.nan, None)
        else:
            s = self.stat
            j = judge(test, s.gap, s.se, s.df, paper_effect=self.paper_effect)
        if self.not_comparable:
            return Judgement("not comparable", j.mde, j.underpowered)
        return j

    @property
    def verdict(self) -> str:
        return self.judgement.verdict

    def cells(self, family: str = "", profile: str = "") -> dict[str, Any]:
        """The row as ``write_claims`` writes it: {column: value} over ``CLAIM_COLUMNS``, with
        ``family`` / ``profile`` where the row leaves them empty."""
        test, j = self.test or ANY_EFFECT, self.judgement
        g, s, f = ("", "", "") if self.stat is None else (self.stat.gap, self.stat.se, self.stat.df)
        notes = [self.note] if self.note else []
        if self.not_comparable:
            notes.insert(0, f"not comparable: {self.not_comparable}")
        if j.underpowered:
            notes.append(
                f"underpowered: the paper's effect {self.paper_effect:.3g} is below the MDE "
                f"{j.mde:.3g}"
            )
        return {
            "family": self.family or family,
            "paper": self.paper,
            "claim": self.claim,
            "paper_value": self.paper_value,
            "ours": self.ours,
            "gap": g,
            "se": s,
            "df": f,
            "kind": test.kind,
            "sesoi": test.sesoi,
            "mde": j.mde,
            "profile": self.profile or profile,
            "verdict": j.verdict,
            "figure": self.figure,
            "note": "; ".join(notes),
        }


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof 1 (NaN for one value), n)."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(v) / n
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1)) if n > 1 else math.nan
    return m, s, n


def fmt_mean_std(values: Sequence[float], fmt: str = ".3g", unit: str = "") -> str:
    """ "m +- s (n seeds)" for a table cell; one value prints as itself."""
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    if n == 1:
        return f"{m:{fmt}}{unit} (1 seed)"
    return f"{m:{fmt}}{unit} +- {s:{fmt}}{unit} ({n} seeds)"


def compare_seeds(
    baseline: Sequence[float],
    method: Sequence[float],
    *,
    lower_is_better: bool = True,
    n_test: int | None = None,
) -> Gap:
    """Gap between ``method`` and ``baseline`` (per-seed values of *independent* runs: other
    seeds or other examples on each side), signed so that a positive gap means ``method`` is
    better (the direction the papers claim), and its unpaired (Welch) standard error.

    se^2 = std_a^2/n_a + std_b^2/n_b (seed spread; NaN with one seed on a side, so the verdict can
    never be decided by a single seed) + sum p(1-p)/n_test over both means when ``n_test`` is
    given (``baseline``/``method`` are then error rates in [0, 1] each measured on a fixed test set
    of n_test examples, whose luck every seed of a side shares); df = Welch-Satterthwaite over the
    two seed terms. Runs that share seeds and examples are paired: pass ``Outcome``s to ``gap``."""
    ma, sa, na = mean_std(baseline)
    mb, sb, nb = mean_std(method)
    if na == 0 or nb == 0:
        return Gap(math.nan, math.nan, mean_a=ma, std_a=sa, n_a=na, mean_b=mb, std_b=sb, n_b=nb)
    va = sa**2 / na if na > 1 else math.nan
    vb = sb**2 / nb if nb > 1 else math.nan
    var = va + vb
    df = satterthwaite([(va, na - 1.0), (vb, nb - 1.0)]) if na > 1 and nb > 1 else math.nan
    if n_test is not None:
        if n_test <= 0:
            raise ValueError(f"n_test must be > 0, got {n_test}")
        for p in (ma, mb):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"with n_test the values must be error rates in [0, 1], got {p}")
            var += p * (1 - p) / n_test
    g = (ma - mb) if lower_is_better else (mb - ma)
    return Gap(
        g, math.sqrt(var), df, "unpaired", ma, sa, na, mb, sb, nb, seed_var=va + vb, k=min(na, nb)
    )


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, its standard error std / sqrt(n) (NaN for fewer than two values), n)."""
    m, s, n = mean_std(values)
    return m, (s / math.sqrt(n) if n > 1 else math.nan), n


def _is_outcomes(x: Any) -> bool:
    return isinstance(x, Sequence) and len(x) > 0 and all(isinstance(o, Outcome) for o in x)


def gap(
    method: Sequence[Outcome] | Sequence[float] | float,
    baseline: Sequence[Outcome] | Sequence[float] | float | None = None,
    *,
    se: float | None = None,
    df: float | None = None,
    lower_is_better: bool = True,
    paired: bool = False,
    n_test: int | None = None,
) -> Gap:
    """The gap of a claims row in the paper's direction, its standard error and degrees of
    freedom: the one place where every family computes them (``ClaimRow`` then judges the row).

    - ``Outcome``s on both sides (each run's per-example scores with its seed and the digest of
      the examples): ``suite.stats.compare`` decides the design from the seeds and digests (never
      from a caller's flag): paired by seed and by example (SE = seed term + per-example term -
      their interaction, df = k - 1), paired by seed, or unpaired (Welch). gap = mean(baseline) -
      mean(method) when lower is better. This is the form for every comparison of runs.
    - per-seed numbers on both sides: ``paired=True`` for the same seeds aligned (one number per
      run, e.g. a sharpness): d = baseline - method per seed (pairs with a NaN dropped), gap =
      mean(d), se = std(d) / sqrt(n), df = n - 1; otherwise ``compare_seeds`` (unpaired).
    - ``baseline`` a number: a level fixed before the runs; gap = baseline - mean(method) when
      lower is better (mean(method) - baseline otherwise), se = std / sqrt(n), combined in
      quadrature with the binomial sqrt(m(1-m)/n_test) of the mean rate m when ``n_test`` is
      the number of examples each rate was measured on; df = n - 1.
    - ``method`` a number: a gap computed elsewhere with its known ``se`` and ``df`` (se 0: a
      deterministic comparison, df inf; a bootstrap's SE: df inf, say so in the note).
    """
    if baseline is None:
        if se is None or not isinstance(method, (int, float)):
            raise ValueError("gap(value) needs a number and its se (0 for a deterministic gap)")
        if df is None:
            if se != 0 and not math.isnan(se):
                raise ValueError("gap(value, se=...) with se > 0 needs its degrees of freedom df")
            df = math.inf if se == 0 else math.nan
        return Gap(float(method), float(se), float(df))
    if _is_outcomes(method) or _is_outcomes(baseline):
        if not (_is_outcomes(method) and _is_outcomes(baseline)):
            raise ValueError("gap: give Outcomes on both sides (or numbers on both)")
        e = compare(list(baseline), list(method))  # mean(baseline) - mean(method)
        ma = [float(o.values.mean()) for o in baseline]
        mb = [float(o.values.mean()) for o in method]
        (a, sa, na), (b, sb, nb) = mean_std(ma), mean_std(mb)
        return Gap(
            e.gap if lower_is_better else -e.gap,
            e.se,
            e.df,
            e.design,
            a,
            sa,
            na,
            b,
            sb,
            nb,
            seed_var=e.seed_var,
            example_var=e.example_var,
            k=e.k,
        )
    if isinstance(baseline, (int, float)):
        m, s, n = mean_std(method)
        err = s / math.sqrt(n) if n > 1 else math.nan
        if n_test is not None:
            err = math.hypot(err, math.sqrt(max(m * (1 - m), 0.0) / n_test))
        g = (baseline - m) if lower_is_better else (m - baseline)
        return Gap(g, err, n - 1.0 if n > 1 else math.nan, "level", mean_b=m, std_b=s, n_b=n)
    if paired:
        pairs = [(float(a), float(b)) for a, b in zip(baseline, method, strict=True)]
        d = [a - b for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
        m, err, n = mean_se(d)
        return Gap(
            m if lower_is_better else -m,
            err,
            n - 1.0 if n > 1 else math.nan,
            "paired by seed",
            n_a=n,
            n_b=n,
            seed_var=err * err,
            example_var=0.0,
            k=n,
        )
    return compare_seeds(baseline, method, lower_is_better=lower_is_better, n_test=n_test)


def pool(gaps: Sequence[Gap], *, alpha: float = 0.05) -> list[Gap]:
    """``gaps`` with the family's pooled seed variance (``suite.stats.pooled_seed_variance``):
    the method x seed interaction variance is estimated from all the paired comparisons of one
    quantity in one unit at once (df = sum (k_i - 1) instead of k_i - 1 each), which is what lets
    a two-seed profile decide. Pooling assumes one interaction variance for all; Bartlett's test
    checks it at ``alpha`` and, when it rejects (or fewer than two paired gaps have a seed term),
    the gaps come back unchanged. Unpaired or deterministic gaps are never changed."""
    paired = [i for i, g in enumerate(gaps) if g.design in ("paired", "paired by seed") and g.k > 1]
    est = {
        i: GapEstimate(
            gaps[i].gap,
            gaps[i].se,
            gaps[i].df,
            gaps[i].design,
            gaps[i].k,
            0,
            gaps[i].seed_var,
            gaps[i].example_var,
        )
        for i in paired
    }
    pooled = pooled_seed_variance(list(est.values()), alpha=alpha)
    if pooled is None:
        return list(gaps)
    out = list(gaps)
    for i, e in est.items():
        p = with_pooled_seed(e, pooled)
        out[i] = replace(gaps[i], se=p.se, df=p.df, seed_var=p.seed_var)
    return out


def compare_to_paper(ours: float | None, paper: float, *, rel_tol: float) -> tuple[float, float]:
    """For a deterministic number compared against the paper's with a stated relative tolerance:
    returns (gap, se) for ``verdict`` with gap = rel_tol - |ours/paper - 1| and se = 0, so that
    within the tolerance is ``reproduced`` and outside it ``contradicted``. NaN/None ours is
    ``not run``; state the tolerance in the claims row."""
    if rel_tol <= 0:
        raise ValueError(f"rel_tol must be > 0, got {rel_tol}")
    if ours is None or not math.isfinite(ours):
        return math.nan, math.nan
    return rel_tol - abs(ours / paper - 1.0), 0.0


def write_claims(path: str | os.PathLike, rows: Iterable[ClaimRow | Mapping[str, Any]]) -> None:
    """Write a claims table (CSV with ``CLAIM_COLUMNS``) of ``ClaimRow``s (or column dicts);
    verdicts must be one of ``VERDICTS`` and a row may not carry a column the table does not
    have."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CLAIM_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        if isinstance(r, ClaimRow):
            r = r.cells()
        if r.get("verdict") not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {r.get('verdict')!r}")
        extra = set(r) - set(CLAIM_COLUMNS)
        if extra:
            raise ValueError(f"claims row has unknown columns {sorted(extra)}")
        w.writerow({k: _cell(r.get(k, "")) for k in CLAIM_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.4g}"
    return str(x)
