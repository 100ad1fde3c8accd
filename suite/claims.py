"""Claims tables and the one verdict function of the whole suite.

Every family writes ``results/<family>/claims.csv`` with the columns of ``CLAIM_COLUMNS`` and
judges every row with ``verdict`` (or its helpers ``compare_seeds`` / ``compare_to_paper``), so a
row's verdict always means the same thing:

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
    """A comparison of two methods over seeds: ``gap`` in the paper's direction and its ``se``."""

    gap: float
    se: float
    mean_a: float
    std_a: float
    n_a: int
    mean_b: float
    std_b: float
    n_b: int

    @property
    def verdict(self) -> str:
        return verdict(self.gap, self.se)

    def describe(self, fmt: str = ".3g") -> str:
        return f"gap {self.gap:{fmt}} +- {self.se:{fmt}} (SE)"


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


def write_claims(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a claims table (CSV with ``CLAIM_COLUMNS``); verdicts must be one of ``VERDICTS``
    and a row may not carry a column the table does not have."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CLAIM_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
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
