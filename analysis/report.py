"""The claims report: every family's ``results/<family>/claims.csv`` in one Markdown table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from suite.claims import CLAIM_COLUMNS
from suite.rundir import atomic_write_text


def collect_claims(results_dir: str | Path) -> pd.DataFrame:
    """All claims tables under ``results_dir`` (one row per claim), in family order."""
    frames = [
        pd.read_csv(p, dtype=str, keep_default_na=False)
        for p in sorted(Path(results_dir).glob("*/claims.csv"))
    ]
    if not frames:
        return pd.DataFrame(columns=list(CLAIM_COLUMNS))
    df = pd.concat(frames, ignore_index=True)
    missing = set(CLAIM_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"claims tables under {results_dir} lack columns {sorted(missing)}")
    return df[list(CLAIM_COLUMNS)]


def to_markdown(df: pd.DataFrame) -> str:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(CLAIM_COLUMNS) + " |", "|" + "---|" * len(CLAIM_COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in CLAIM_COLUMNS) + " |" for _, r in df.iterrows()]
    return "\n".join(lines) + "\n"


def write_report(results_dir: str | Path) -> Path:
    """Write ``results_dir/claims.md`` and ``claims.csv`` (all families) and return the .md path."""
    results_dir = Path(results_dir)
    df = collect_claims(results_dir)
    counts = df["verdict"].value_counts().to_dict() if len(df) else {}
    head = "# Claims: paper vs this suite\n\n" + (
        ", ".join(f"{v}: {n}" for v, n in counts.items()) + "\n\n"
        if counts
        else "No claims yet.\n\n"
    )
    out = results_dir / "claims.md"
    atomic_write_text(out, head + to_markdown(df))
    atomic_write_text(results_dir / "claims.csv", df.to_csv(index=False))
    return out
