"""The report: every family's claims, figures and the job's environment in one REPORT.md.

Reads only what the stages wrote: ``results/<family>/claims.csv`` (``suite.claims``),
``results/<family>/figures.json`` (``suite.captions``), the figures under ``figures/`` and the job
record ``results/reproduce.json`` (``analysis.reproduce``). Never edit REPORT.md by hand:
``make reproduce`` (or ``python -c "from analysis.report import write_report;
write_report('results', 'figures', 'REPORT.md')"``) regenerates it.

The notebooks use the same functions: ``claims_table``, ``key_figures``, ``missing_results``.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import stages
from analysis.stages import JOB_RECORD
from suite.captions import read_captions
from suite.claims import CLAIM_COLUMNS, VERDICTS
from suite.rundir import atomic_write_text, read_json
from suite.stats import CLAIM_KINDS, Claim, judge

IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")
MAKE_CMD = "make reproduce"


def stage_families() -> list[str]:
    """The families ``make reproduce`` runs, in its order."""
    return [f for f, _ in stages.STAGES]


def rerun_command(family: str) -> str:
    return f"python -m analysis.reproduce --only {family}"


def results_from_env() -> tuple[Path, Path]:
    """(results dir, figures dir) from SHARPNESS_RESULTS / SHARPNESS_FIGURES (the notebooks')."""
    return (
        Path(os.environ.get("SHARPNESS_RESULTS", "results")),
        Path(os.environ.get("SHARPNESS_FIGURES", "figures")),
    )


# ------------------------------------------------------------------------------------ reading
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
        raise ValueError(
            f"claims tables under {results_dir} lack columns {sorted(missing)} (written by an "
            f"older version of the suite): rerun `{MAKE_CMD}` to rewrite them"
        )
    return df[list(CLAIM_COLUMNS)]


def load_job(results_dir: str | Path) -> dict[str, Any]:
    """The job record of the last ``make reproduce`` ({} when there is none)."""
    path = Path(results_dir) / JOB_RECORD
    if not path.exists():
        return {}
    return read_json(path)


def _stages(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in job.get("stages", []) if "name" in s}


def _float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _check_verdict(row: pd.Series) -> str:
    """A note when a row's verdict is not what ``suite.stats.judge`` gives for its gap, SE, df
    and pre-registered test (kind, sesoi), or a "not comparable" row does not say why."""
    v = row["verdict"]
    if v not in VERDICTS:
        return f"verdict {v!r} is not one of the suite's ({', '.join(VERDICTS)})"
    if v == "not comparable":
        ok = str(row["note"]).startswith("not comparable:")
        return "" if ok else "verdict 'not comparable' without its reason in the note"
    gap, se, dof, sesoi = (_float(row[c]) for c in ("gap", "se", "df", "sesoi"))
    kind = str(row["kind"]).strip()
    if gap is None or se is None or se < 0 or kind not in CLAIM_KINDS or sesoi is None:
        return ""
    try:
        expect = judge(Claim(kind, sesoi), gap, se, math.nan if dof is None else dof).verdict
    except ValueError as e:
        return f"invalid pre-registered test: {e}"
    if expect != v:
        return f"verdict inconsistent with gap/SE/df/test: suite.stats.judge gives {expect!r}"
    return ""


def claims_table(results_dir: str | Path, families: list[str] | None = None) -> pd.DataFrame:
    """Every claim, plus a ``not run`` row for each family without a claims table (saying why
    and which command makes it); a ``check`` column flags verdicts that the suite's verdict
    function would not give and rows left from an earlier job whose stage crashed now."""
    results_dir = Path(results_dir)
    families = families if families is not None else stage_families()
    df = collect_claims(results_dir)
    job = load_job(results_dir)
    stages = _stages(job)
    df["check"] = [_check_verdict(r) for _, r in df.iterrows()] if len(df) else []
    rows = []
    on_disk = set(df["family"]) if len(df) else set()
    for fam in families + sorted(on_disk - set(families)):
        st = stages.get(fam, {})
        claims_csv = results_dir / fam / "claims.csv"
        if fam in on_disk:
            part = df[df["family"] == fam].copy()
            if st.get("status") in ("crashed", "interrupted") and not st.get("from_earlier_job"):
                stale = _mtime(claims_csv) < _parse_time(st.get("started"))
                if stale:
                    part["check"] = (
                        f"from an earlier job: this job's stage {st['status']} "
                        f"({st.get('error', '')})"
                    )
            rows.append(part)
            continue
        if st.get("status") in ("crashed", "interrupted"):
            why = f"stage {st['status']}: {st.get('error', '')}; fix, then `{rerun_command(fam)}`"
        else:
            why = f"results missing: run `{MAKE_CMD}` (or `{rerun_command(fam)}`)"
        rows.append(
            pd.DataFrame(
                [
                    {
                        **{c: "" for c in CLAIM_COLUMNS},
                        "family": fam,
                        "claim": "(no claims table)",
                        "verdict": "not run",
                        "profile": job.get("profile", ""),
                        "note": why,
                        "check": "",
                    }
                ]
            )
        )
    if not rows:
        return pd.DataFrame(columns=[*CLAIM_COLUMNS, "check"])
    return pd.concat(rows, ignore_index=True)


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def _parse_time(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def figure_entries(
    results_dir: str | Path, figures_dir: str | Path, families: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every figure: the stages' caption entries (``suite.captions``) in family order, then the
    image files under ``figures_dir`` that no stage captioned. Each entry: family, file, path,
    shows, reading, key, exists."""
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    families = families if families is not None else stage_families()
    on_disk = sorted(p.parent.name for p in results_dir.glob(f"*/{'figures.json'}"))
    out, seen = [], set()
    for fam in families + [f for f in on_disk if f not in families]:
        for e in read_captions(results_dir, fam):
            path = figures_dir / e["file"]
            out.append(
                {**e, "family": fam, "path": path, "exists": path.exists(), "key": e.get("key")}
            )
            seen.add(e["file"])
    files = sorted(p for p in figures_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for p in files:
        if p.name in seen:
            continue
        fam = next((f for f in families if p.name.startswith(f)), "other")
        out.append(
            {
                "family": fam,
                "file": p.name,
                "path": p,
                "exists": True,
                "key": False,
                "shows": f"{p.name} (its stage recorded no caption).",
                "reading": "Record one with suite.captions.caption_figure in the family's stage.",
            }
        )
    return out


def key_figures(
    results_dir: str | Path, figures_dir: str | Path, families: list[str] | None = None
) -> list[dict[str, Any]]:
    """One figure per family that has any: the one captioned ``key=True``, else its first."""
    best: dict[str, dict[str, Any]] = {}
    for e in figure_entries(results_dir, figures_dir, families):
        if not e["exists"]:
            continue
        if e["family"] not in best or (e.get("key") and not best[e["family"]].get("key")):
            best[e["family"]] = e
    return list(best.values())


def missing_results(results_dir: str | Path, family: str | None = None) -> str | None:
    """None when ``results_dir`` holds claims (of ``family``, if given); else a sentence naming
    the command that makes them (what a notebook prints instead of failing)."""
    results_dir = Path(results_dir)
    if family is None:
        if any(results_dir.glob("*/claims.csv")):
            return None
        return f"No results under {results_dir}/: run `{MAKE_CMD}` first (CPU, ~20 minutes)."
    if (results_dir / family / "claims.csv").exists():
        return None
    return (
        f"No results of {family} under {results_dir}/: run `{MAKE_CMD}` or "
        f"`{rerun_command(family)}` first."
    )


# ------------------------------------------------------------------------------------ writing
def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ").strip()


def to_markdown(df: pd.DataFrame, columns: tuple[str, ...] = CLAIM_COLUMNS) -> str:
    """A Markdown table of ``columns`` (pipes in cells escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for _, r in df.iterrows()]
    return "\n".join(lines) + "\n"


def _gap_se(row: pd.Series) -> str:
    gap, se = str(row["gap"]).strip(), str(row["se"]).strip()
    if not gap:
        return ""
    return f"{gap} ± {se}" if se else gap


def _test(row: pd.Series) -> str:
    """The pre-registered test as a cell: "effect > 0.5" or "null ±0.5"."""
    kind, sesoi = str(row["kind"]).strip(), str(row["sesoi"]).strip()
    if not kind:
        return ""
    return f"null ±{sesoi}" if kind == "null" else f"effect > {sesoi or 0}"


def _verdict_counts(df: pd.DataFrame) -> str:
    counts = df["verdict"].value_counts().to_dict() if len(df) else {}
    order = list(VERDICTS) + sorted(set(counts) - set(VERDICTS))
    return ", ".join(f"{v}: {counts[v]}" for v in order if v in counts)


def render_report(results_dir: str | Path, figures_dir: str | Path, report_path: str | Path) -> str:
    """The text of REPORT.md (figure links relative to ``report_path``'s folder)."""
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    base = Path(report_path).resolve().parent
    job = load_job(results_dir)
    families = stage_families()
    claims = claims_table(results_dir, families)
    figs = figure_entries(results_dir, figures_dir, families)
    stages = job.get("stages", [])
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")

    out = ["# Reproduction report: the SAM papers' claims, checked", ""]
    out += [
        f"Generated by `analysis/report.py` on {now} from `{results_dir}/` (profile "
        f"**{job.get('profile', 'unknown')}**). Do not edit: `{MAKE_CMD}` regenerates it.",
        "",
        "## Summary",
        "",
        f"- {len(claims)} claims: {_verdict_counts(claims) or 'none'}.",
        "- How a row is judged (`suite.claims`, `suite.stats.judge`): each row declares its test "
        "before any result is seen: an *effect* the paper claims, with its smallest effect of "
        'interest (*sesoi*), or a *null* claim ("n-SAM stays near ERM") with its equivalence '
        "margin. Its gap's standard error follows the design of the runs (paired by seed and by "
        "test example where both methods ran the same seeds on the same examples) and the "
        "critical value is Student's t on the gap's degrees of freedom (*df*), at level 5%. "
        "*reproduced* = significant in the paper's direction and not shown smaller than the "
        "sesoi; *contradicted* = significant against it (for a null claim: a gap beyond its "
        "margin); *equivalent* = a null claim shown within its margin (two one-sided tests); "
        "*negligible* = an effect shown smaller than its sesoi; *within noise* = the runs cannot "
        'decide (*mde*: the gap they would detect with 80% power; "underpowered" in the note '
        "when the paper's own effect is below it); *not comparable* = a rule fixed before the "
        'results (a precondition such as "the method fits its training set", or a profile '
        "whose budget cannot test the claim) says the run cannot test the claim, and the note "
        "says which; *not run* = the results are missing.",
    ]
    bad = [s for s in stages if s.get("status") != "ok"]
    if stages:
        out.append(
            f"- {len(stages) - len(bad)} of {len(stages)} stages ran to the end"
            + (
                "; "
                + "; ".join(f"**{s['name']}** {s.get('status')}: {s.get('error', '')}" for s in bad)
                if bad
                else "."
            )
        )
    else:
        out.append(f"- No job record ({results_dir / JOB_RECORD}): run `{MAKE_CMD}`.")
    contra = claims[claims["verdict"] == "contradicted"] if len(claims) else claims
    for _, r in contra.iterrows():
        out.append(f"- Contradicted: {r['family']}: {r['claim']} ({r['paper']}).")
    flagged = claims[claims["check"] != ""] if len(claims) else claims
    if len(flagged):
        out.append(f"- {len(flagged)} row(s) flagged in the check column: read them first.")

    out += ["", "## Claims", ""]
    show = claims.copy()
    if len(show):
        show["gap ± SE"] = [_gap_se(r) for _, r in show.iterrows()]
        show["test"] = [_test(r) for _, r in show.iterrows()]
        files = {e["file"] for e in figs}
        show["our figure"] = [  # stages write "x.png" or "figures/x.png": match the file name
            f"[{Path(f).name}](#{_anchor(Path(f).name)})" if f and Path(f).name in files else f
            for f in show["figure"]
        ]
    cols = (
        "family",
        "paper",
        "claim",
        "paper_value",
        "ours",
        "gap ± SE",
        "df",
        "test",
        "mde",
        "profile",
        "verdict",
        "our figure",
        "note",
        "check",
    )
    out.append(to_markdown(show, cols) if len(show) else "No claims.\n")
    out += [
        "Columns: *paper* = paper and figure/table; *paper_value* = the paper's number; *ours* = "
        "mean ± std (n seeds); *gap* = signed gap in the paper's direction (positive = the "
        "paper's sign) ± its standard error; *df* = its degrees of freedom; *test* = the "
        "pre-registered test (effect > smallest effect of interest, or null ± equivalence "
        "margin), in the gap's units; *mde* = the minimal detectable effect at 80% power; "
        "*note* = how our setting differs and why; *check* = problems the report found with "
        "the row.",
        "",
        "## Figures",
        "",
    ]
    if not figs:
        out += [f"No figures under {figures_dir}/.", ""]
    for fam in dict.fromkeys(e["family"] for e in figs):
        out += [f"### {fam}", ""]
        for e in (e for e in figs if e["family"] == fam):
            rel = os.path.relpath(Path(e["path"]).resolve(), base)
            out.append(f'<a id="{_anchor(e["file"])}"></a>')
            if e["exists"]:
                out.append(f"![{e['file']}]({Path(rel).as_posix()})")
            else:
                out.append(f"*{e['file']} is missing: its stage captioned it but did not draw it.*")
            out += ["", f"**{e['file']}.** {e['shows']}  ", f"{e['reading']}", ""]

    out += ["## Stages", ""]
    if stages:
        out += ["| stage | status | wall-clock | runs | why |", "|---|---|---|---|---|"]
        for s in stages:
            runs = ", ".join(f"{v} {k}" for k, v in (s.get("runs") or {}).items())
            when = " (earlier job)" if s.get("from_earlier_job") else ""
            out.append(
                f"| {s['name']} | {s.get('status')}{when} | {s.get('seconds', 0):.0f} s | "
                f"{_cell(runs)} | {_cell(s.get('error', ''))} |"
            )
        for s in stages:
            if s.get("traceback"):
                out += ["", f"Traceback of {s['name']} (last lines):", "", "```"]
                out += [*s["traceback"], "```"]
    else:
        out.append("No job record.")
    out += ["", "## Environment", ""]
    env = job.get("environment", {})
    if env:
        git = env.get("git", {})
        dirty = " (uncommitted changes)" if git.get("dirty") else ""
        versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
        out += [
            f"- Command: `{job.get('command', '')}` (launcher {job.get('launcher', 'local')})",
            f"- Started {job.get('started', '?')}, finished {job.get('finished', '?')}, "
            f"wall-clock {job.get('seconds', 0):.0f} s"
            + (" (interrupted)" if job.get("interrupted") else ""),
            f"- Git commit: {git.get('commit') or 'unknown'}{dirty}",
            f"- Device: {env.get('device', '?')}; host {env.get('host', '?')}, "
            f"{env.get('cpus', '?')} CPUs, {env.get('platform', '?')}",
            f"- Versions: {versions}",
        ]
    else:
        out.append("No job record.")
    return "\n".join(out) + "\n"


def _anchor(file: str) -> str:
    return "fig-" + "".join(c if c.isalnum() else "-" for c in Path(file).stem.lower())


def write_report(
    results_dir: str | Path,
    figures_dir: str | Path | None = None,
    report_path: str | Path | None = None,
) -> Path:
    """Write ``results_dir/claims.md`` and ``claims.csv`` (all families) and, when
    ``report_path`` is given, REPORT.md there; returns the report's path (else claims.md's)."""
    results_dir = Path(results_dir)
    df = collect_claims(results_dir)
    counts = _verdict_counts(df)
    head = "# Claims: paper vs this suite\n\n" + (
        f"{counts}\n\n" if counts else "No claims yet.\n\n"
    )
    out = results_dir / "claims.md"
    atomic_write_text(out, head + to_markdown(df))
    atomic_write_text(results_dir / "claims.csv", df.to_csv(index=False))
    if report_path is None:
        return out
    figures_dir = Path(figures_dir) if figures_dir is not None else Path("figures")
    atomic_write_text(report_path, render_report(results_dir, figures_dir, report_path))
    return Path(report_path)
