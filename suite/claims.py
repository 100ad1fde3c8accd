"""Claims tables and the one verdict function of the whole suite.

Every family writes ``results/<family>/claims.csv`` with the columns of ``CLAIM_COLUMNS`` and
judges every row with ``verdict``: a row is a ``ClaimRow`` whose statistic comes from ``gap`` (the
one place a row's gap and standard error are computed), so a row's verdict always means the same
thing:

- ``reproduced``:   the effect has the paper's sign and the gap exceeds ``THRESHOLD`` (= 2)
                    standard errors;
- ``within noise``: |gap| <= 2 standard errors (the run cannot tell the effect from noise);
- ``contradicted``: the opposite sign, beyond 2 standard errors;
- ``not run``:      the results are missing (or the stage failed).

The threshold is fixed here, before any result is seen; never loosen it to make a row pass. The
standard error of a gap between two methods combines the seed-to-seed spread (std / sqrt(seeds)
of each side) and, for error rates, the test set's sampling error (binomial
sqrt(p (1 - p) / n_test) of each side's mean), added in quadrature.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from suite.rundir import atomic_write_text

CLAIM_COLUMNS = (
    "family",  # deep_nets, diagonal_linear_nets, one_layer_relu_nets, core
    "paper",  # paper and figure/table, e.g. "Towards Understanding SAM, Fig. 1"
    "claim",  # the claim in one line
    "paper_value",  # the paper's number(s)
    "ours",  # our number(s): mean +- std (n seeds) where seeds exist
    "gap",  # the signed gap in the paper's direction (positive = the paper's sign)
    "se",  # its standard error
    "profile",  # quick / full / paper
    "verdict",  # one of VERDICTS, computed by ``verdict``
    "figure",  # the figure file that shows it
    "note",  # deviations from the paper's setting and why
)
# Words of the pre-registered verdicts (suite.stats.judge, whose docstring defines them):
# "equivalent": a null claim shown within its margin (TOST); "negligible": an effect shown smaller
# than the claim's smallest effect of interest; "not comparable": the profile's setting cannot test
# the claim (declared with the row, before results: e.g. a budget where training has not converged).
STATS_VERDICTS = ("equivalent", "negligible", "not comparable")
VERDICTS = ("reproduced", "within noise", "contradicted", "not run") + STATS_VERDICTS
THRESHOLD = 2.0  # standard errors; fixed before results are seen


def verdict(gap: float | None, se: float | None) -> str:
    """The suite's verdict for a gap measured in the paper's direction (positive = the paper's
    sign) with standard error ``se``. A missing or NaN gap is ``not run``; an unknown (NaN or
    infinite) standard error can never give ``reproduced`` or ``contradicted``."""
    if gap is None or se is None or math.isnan(gap):
        return "not run"
    if se < 0:
        raise ValueError(f"a standard error must be >= 0, got {se}")
    if math.isnan(se) or math.isinf(se):
        return "within noise"
    if gap > THRESHOLD * se:
        return "reproduced"
    if gap < -THRESHOLD * se:
        return "contradicted"
    return "within noise"


@dataclass(frozen=True)
class Gap:
    """A row's statistic: ``gap`` in the paper's direction (positive = the paper's sign), its
    standard error ``se`` and, for a comparison over seeds, each side's mean, std and count
    (``a`` = the baseline, ``b`` = the method). Made by ``gap``."""

    gap: float
    se: float
    mean_a: float = math.nan
    std_a: float = math.nan
    n_a: int = 0
    mean_b: float = math.nan
    std_b: float = math.nan
    n_b: int = 0

    @property
    def verdict(self) -> str:
        return verdict(self.gap, self.se)

    def scaled(self, k: float) -> Gap:
        """The same comparison in other units (``k = 100``: error rates in percentage points)."""
        return Gap(
            k * self.gap,
            k * self.se,
            k * self.mean_a,
            k * self.std_a,
            self.n_a,
            k * self.mean_b,
            k * self.std_b,
            self.n_b,
        )

    def describe(self, fmt: str = ".3g") -> str:
        return f"gap {self.gap:{fmt}} +- {self.se:{fmt}} (SE)"


@dataclass(frozen=True)
class ClaimRow:
    """One row of a claims table (``CLAIM_COLUMNS``). Its gap, standard error and verdict come
    from ``stat`` (a ``Gap`` made by ``gap``; None: not run), never from hand-written cells.
    ``family`` and ``profile`` are filled in by ``suite.stage.run_stage``; a row about another
    profile than the stage's (the paper-scale placeholder rows) names it."""

    paper: str
    claim: str
    paper_value: str
    ours: str
    stat: Gap | None = None
    figure: str = ""
    note: str = ""
    family: str = ""
    profile: str = ""

    @property
    def verdict(self) -> str:
        return "not run" if self.stat is None else self.stat.verdict

    def cells(self, family: str = "", profile: str = "") -> dict[str, Any]:
        """The row as ``write_claims`` writes it: {column: value} over ``CLAIM_COLUMNS``, with
        ``family`` / ``profile`` where the row leaves them empty."""
        g, s = ("", "") if self.stat is None else (self.stat.gap, self.stat.se)
        return {
            "family": self.family or family,
            "paper": self.paper,
            "claim": self.claim,
            "paper_value": self.paper_value,
            "ours": self.ours,
            "gap": g,
            "se": s,
            "profile": self.profile or profile,
            "verdict": self.verdict,
            "figure": self.figure,
            "note": self.note,
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
    """Gap between ``method`` and ``baseline`` (per-seed values), signed so that a positive gap
    means ``method`` is better (the direction the papers claim), and its standard error.

    se² = std_a²/n_a + std_b²/n_b (seed spread; NaN with one seed on a side, so the verdict can
    never be decided by a single seed) + Σ p(1-p)/n_test over both means when ``n_test`` is
    given (``baseline``/``method`` are then error rates in [0, 1])."""
    ma, sa, na = mean_std(baseline)
    mb, sb, nb = mean_std(method)
    if na == 0 or nb == 0:
        return Gap(math.nan, math.nan, ma, sa, na, mb, sb, nb)
    var = (sa**2 / na if na > 1 else math.nan) + (sb**2 / nb if nb > 1 else math.nan)
    if n_test is not None:
        if n_test <= 0:
            raise ValueError(f"n_test must be > 0, got {n_test}")
        for p in (ma, mb):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"with n_test the values must be error rates in [0, 1], got {p}")
            var += p * (1 - p) / n_test
    gap = (ma - mb) if lower_is_better else (mb - ma)
    return Gap(gap, math.sqrt(var), ma, sa, na, mb, sb, nb)


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, its standard error std / sqrt(n) (NaN for fewer than two values), n)."""
    m, s, n = mean_std(values)
    return m, (s / math.sqrt(n) if n > 1 else math.nan), n


def gap(
    method: Sequence[float] | float,
    baseline: Sequence[float] | float | None = None,
    *,
    se: float | None = None,
    lower_is_better: bool = True,
    paired: bool = False,
    n_test: int | None = None,
) -> Gap:
    """The gap of a claims row in the paper's direction and its standard error: the one place
    where every family computes them (``Gap.verdict`` then judges the row). Four forms:

    - two methods over seeds (``method`` and ``baseline`` sequences of per-seed values):
      ``compare_seeds`` (gap = mean(baseline) - mean(method) when lower is better; se² = the two
      seed spreads std²/n plus, with ``n_test``, the binomial p(1-p)/n_test of each mean);
    - ``paired=True``: the same seeds on both sides, aligned; d = baseline - method per seed
      (pairs with a NaN dropped), gap = mean(d), se = std(d) / sqrt(n);
    - ``baseline`` a number: a level fixed before the runs; gap = baseline - mean(method) when
      lower is better (mean(method) - baseline otherwise), se = std / sqrt(n), combined in
      quadrature with the binomial sqrt(m(1-m)/n_test) of the mean rate m when ``n_test`` is
      the number of examples each rate was measured on;
    - ``method`` a number: a gap computed elsewhere with its known ``se`` (0 for a deterministic
      comparison, or a bootstrap's).
    """
    if baseline is None:
        if se is None or not isinstance(method, (int, float)):
            raise ValueError("gap(value) needs a number and its se (0 for a deterministic gap)")
        return Gap(float(method), float(se))
    if isinstance(baseline, (int, float)):
        m, s, n = mean_std(method)
        err = s / math.sqrt(n) if n > 1 else math.nan
        if n_test is not None:
            err = math.hypot(err, math.sqrt(max(m * (1 - m), 0.0) / n_test))
        g = (baseline - m) if lower_is_better else (m - baseline)
        return Gap(g, err, mean_b=m, std_b=s, n_b=n)
    if paired:
        pairs = [(float(a), float(b)) for a, b in zip(baseline, method, strict=True)]
        d = [a - b for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
        m, err, n = mean_se(d)
        return Gap(m if lower_is_better else -m, err, n_a=n, n_b=n)
    return compare_seeds(baseline, method, lower_is_better=lower_is_better, n_test=n_test)


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
