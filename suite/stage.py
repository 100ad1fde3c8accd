"""One shape for every reproduction stage: a list of ``Experiment``s and ``run_stage``.

An ``Experiment`` is one claim's worth of work: the runs it needs, the report that reads them
(draws its figure, returns its claims rows; never trains) and the figure's two-line caption::

    Experiment("fig1", "deep_nets_fig1_rho.png", runs=fig1_runs, report=fig1_report,
               shows="Test error vs rho ...; {setting}.", reading="Fig. 1's claim: ...")

``run_stage(family, EXPERIMENTS, PROFILES, profile, results_dir, figures_dir)`` is the whole
stage: it launches every experiment's runs in one ``suite.launch.run_all`` call per wave (so
``--jobs``, ``--force`` and the SLURM launcher reach all of them; a run two experiments share is
trained once), then runs each report, records each caption (``suite.captions``), writes
``results/<family>/claims.csv`` and the wall-clock per experiment in ``<root>/timings.json``
(per run in ``<root>/run_seconds.json``).

Waves: an experiment whose runs can only be described once other runs finished (a control
matched to its base's final losses, a fine-tuning that starts from another run's weights) has
``wave=1``; its ``runs`` is called after every wave-0 run is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from suite.captions import caption_figure
from suite.claims import ClaimRow, write_claims
from suite.launch import Outcome, Run, run_all
from suite.profiles import settings
from suite.rundir import atomic_write_json, read_json


@dataclass(frozen=True)
class StageContext:
    """What an experiment's ``runs``, ``report`` and captions read: the profile's settings ``P``
    (the stage's table entry), where the stage's runs lie (``root``) and the figures go."""

    family: str
    profile: str
    P: Any
    results_dir: Path
    figures_dir: Path
    root: Path

    outcomes: Mapping[str, Outcome] = field(default_factory=dict)  # run dir name -> launch

    def figure(self, name: str) -> Path:
        return self.figures_dir / name

    def trained_now(self, runs: Sequence[Run]) -> bool:
        """Whether this call trained (or resumed) any of ``runs``: a report that caches what
        it measured on them (landscapes) measures again."""
        return any(
            self.outcomes.get(Path(r.out_dir).name, None) is None
            or self.outcomes[Path(r.out_dir).name].action != "skipped"
            for r in runs
        )


Text = str | Callable[[StageContext], str]


@dataclass(frozen=True)
class Experiment:
    """``runs(ctx)``: the ``suite.launch.Run``s it needs; ``report(ctx)``: reads them (never
    trains), draws ``figure`` (a file name in the figures directory, "" for none) and returns its
    claims rows; ``shows`` / ``reading``: the caption's two lines (text, or a function of the
    context when they state the profile's settings or numbers read from the runs); ``key``: the
    family's key figure; ``wave``: see the module docstring."""

    name: str
    figure: str
    runs: Callable[[StageContext], Sequence[Run]]
    report: Callable[[StageContext], list[ClaimRow]]
    shows: Text = ""
    reading: Text = ""
    key: bool = False
    wave: int = 0
    title: str = ""

    def caption(self, ctx: StageContext) -> tuple[str, str]:
        return tuple(t(ctx) if callable(t) else t for t in (self.shows, self.reading))  # type: ignore[return-value]


def no_runs(ctx: StageContext) -> list[Run]:
    """``Experiment.runs`` of an experiment that reads only other stages' results."""
    return []


def run_stage(
    family: str,
    experiments: Sequence[Experiment],
    profiles: Mapping[str, Any],
    profile: str,
    results_dir: str | Path,
    figures_dir: str | Path,
    *,
    root: str | Path | None = None,
    extra_rows: Callable[[StageContext], list[ClaimRow]] | None = None,
) -> list[dict[str, Any]]:
    """Run the stage (module docstring); returns the claims rows as written (column dicts).
    ``root``: where the stage's runs lie (default ``results/<family>``); ``extra_rows``: rows
    that belong to no experiment (a paper-scale placeholder)."""
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    ctx = StageContext(
        family,
        profile,
        settings(profiles, profile),
        results_dir,
        figures_dir,
        Path(root) if root is not None else results_dir / family,
    )
    t0 = time.perf_counter()
    figures_dir.mkdir(parents=True, exist_ok=True)
    dirs, outcomes = _launch(ctx, experiments)
    ctx = replace(ctx, outcomes=outcomes)
    per_run = _update_run_seconds(ctx.root, outcomes)
    path = ctx.root / "timings.json"
    timings = read_json(path) if path.exists() else {}
    rows: list[ClaimRow] = []
    for e in experiments:
        t1 = time.perf_counter()
        rows += e.report(ctx)
        if e.figure and ctx.figure(e.figure).exists():  # a figure the report did not draw
            shows, reading = e.caption(ctx)
            caption_figure(results_dir, family, e.figure, shows=shows, reading=reading, key=e.key)
        timings[e.name] = _timing(*dirs[e.name], outcomes, per_run, time.perf_counter() - t1)
        t = timings[e.name]
        print(
            f"[{family}] {e.name}: {t['runs']} runs ({t['trained']} trained now), "
            f"{t['run_seconds']:.1f} s of training ({t['run_cpu_seconds']:.1f} CPU s)",
            flush=True,
        )
    if extra_rows is not None:
        rows += extra_rows(ctx)
    timings["_stage"] = {
        "seconds": round(time.perf_counter() - t0, 2),
        "train_seconds": round(sum(o.seconds for o in outcomes.values()), 2),
        "experiments": [e.name for e in experiments],
    }
    atomic_write_json(path, timings)
    table = [r.cells(family, profile) for r in rows]
    write_claims(results_dir / family / "claims.csv", table)
    for r in table:
        print(f"  {r['verdict']:>13} | {r['claim']} | {r['ours']}", flush=True)
    return table


def _launch(
    ctx: StageContext, experiments: Sequence[Experiment]
) -> tuple[dict[str, tuple[list[str], list[str]]], dict[str, Outcome]]:
    """Every experiment's runs, one ``run_all`` per wave (a run two experiments need is launched
    once). Returns ({experiment: (the run directories it needs, those it counts: the ones no
    earlier experiment needs)}, {run directory name: its launch outcome})."""
    needs: dict[str, list[str]] = {}
    mine: dict[str, list[str]] = {}
    owner: dict[str, str] = {}  # a shared run is counted in the first experiment that needs it
    outcomes: dict[str, Outcome] = {}
    for wave in sorted({e.wave for e in experiments}):
        runs: dict[str, Run] = {}
        for e in (e for e in experiments if e.wave == wave):
            dirs = []
            for r in e.runs(ctx):
                d = Path(r.out_dir).name
                runs.setdefault(str(r.out_dir), r)
                dirs.append(d)
            needs[e.name] = list(dict.fromkeys(dirs))
            mine[e.name] = [d for d in needs[e.name] if owner.setdefault(d, e.name) == e.name]
        for o in run_all(list(runs.values()), stage=ctx.family):
            outcomes[o.out_dir.name] = o
    return {e.name: (needs[e.name], mine[e.name]) for e in experiments}, outcomes


def _update_run_seconds(root: Path, outcomes: Mapping[str, Outcome]) -> dict[str, dict]:
    """Record the wall-clock and CPU seconds of the runs trained now in ``run_seconds.json``
    (a reused run keeps the numbers of the call that trained it); returns every record."""
    path = Path(root) / "run_seconds.json"
    table = read_json(path) if path.exists() else {}
    for d, o in outcomes.items():
        if o.action == "skipped" and d in table:
            table[d]["trained_now"] = False
        else:
            table[d] = {
                "seconds": round(o.seconds, 2),
                "cpu_seconds": o.cpu_seconds,
                "trained_now": o.action != "skipped",
            }
    atomic_write_json(path, table)
    return table


def _timing(
    needs: list[str],
    mine: list[str],
    outcomes: Mapping[str, Outcome],
    per_run: Mapping[str, dict],
    seconds: float,
) -> dict[str, Any]:
    """One experiment's line of ``timings.json``: the runs it needs, those it counts (the first
    experiment that needs a run counts it), how many of those were trained now or reused, their
    training cost whenever they were trained (one process each), the seconds of its report."""
    skipped = [outcomes[d].action == "skipped" for d in mine if d in outcomes]
    return {
        "runs": len(needs),
        "runs_counted": len(mine),  # = trained + reused
        "trained": skipped.count(False),
        "reused": skipped.count(True),
        "run_seconds": round(sum(per_run.get(d, {}).get("seconds") or 0 for d in mine), 2),
        "run_cpu_seconds": round(sum(per_run.get(d, {}).get("cpu_seconds") or 0 for d in mine), 2),
        "report_seconds": round(seconds, 2),
    }
