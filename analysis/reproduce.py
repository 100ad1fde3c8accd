"""`make reproduce`: every family's reproduction stage for a profile, then REPORT.md.

    python -m analysis.reproduce                       # quick profile, CPU, ~13 minutes on 2 cores
    python -m analysis.reproduce --profile full        # CPU, hours
    python -m analysis.reproduce --profile paper       # GPU + data on disk (checked first)
    python -m analysis.reproduce --profile paper --launcher slurm --partition gpu
    python -m analysis.reproduce --only deep_nets --force

Each stage is ``reproduce(profile, results_dir, figures_dir)`` of a module in
``analysis.stages.STAGES``: it runs
its runs (through ``suite.launch.run_all``: finished runs with the same config are skipped,
interrupted ones resumed), writes ``results/<family>/claims.csv``, its figures under ``figures/``
and their captions (``suite.captions``). A stage that crashes is recorded (which, and why) and the
others still run; the command then exits 1. Ctrl-C stops the job after the current run saved its
checkpoint; the next call resumes it.

The screen shows one progress line for the whole job (stage, run, ETA) on a terminal, or a few
lines per stage otherwise; everything the stages print (per-epoch lines, warnings) goes to
``results/reproduce.log``. ``results/reproduce.json`` records the job (stages, their status and
wall-clock, the environment); ``analysis.report`` turns it and the claims into REPORT.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from analysis import stages as stage_list
from analysis.stages import JOB_RECORD, STAGE_COST, preflight
from suite import launch
from suite.cli import out_dir_error
from suite.profiles import PROFILES

LOG = "reproduce.log"


# ----------------------------------------------------------------------------- output
class Display:
    """The screen during the job: a tqdm bar on a terminal, else a few plain lines per stage.

    Progress is measured in stage weights (``analysis.stages.STAGE_COST``): a stage with k of n
    runs finished counts weight * k / n, so tqdm's ETA follows the expected cost of what is left."""

    def __init__(self, term: TextIO, log: TextIO, total: float, use_bar: bool) -> None:
        self.term, self.log, self.total = term, log, total
        self.bar: Any = None
        if use_bar:
            from tqdm import tqdm

            try:  # some pseudo-terminals report 0 columns: tqdm would then draw nothing
                cols = os.get_terminal_size(term.fileno()).columns
            except OSError:
                cols = 0
            self.bar = tqdm(
                total=total,
                file=term,
                dynamic_ncols=cols > 0,
                ncols=None if cols > 0 else 100,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}",
            )
        self.stage, self.index, self.n_stages, self.weight = "", 0, 0, 1.0
        self.runs, self.runs_done, self._done_weight = 0, 0, 0.0
        self.counts: dict[str, int] = {}
        self.launched = 0  # runs that went through suite.launch.run_all (the whole job)

    def line(self, text: str) -> None:
        """A line for the person watching (and the log)."""
        stamp = datetime.now().strftime("%H:%M:%S")
        print(f"[{stamp}] {text}", file=self.log, flush=True)
        if self.bar is not None:
            self.bar.write(text, file=self.term)
        else:
            print(text, file=self.term, flush=True)

    def _advance(self, amount: float) -> None:
        if self.bar is not None:
            self.bar.update(amount)
            self.bar.set_description_str(f"[{self.index}/{self.n_stages}] {self.stage}")

    def stage_started(self, index: int, n: int, name: str, weight: float) -> None:
        self.stage, self.index, self.n_stages, self.weight = name, index, n, weight
        self.runs, self.runs_done, self.counts = 0, 0, {}
        self._done_weight = 0.0
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
        self._advance(0)
        if self.bar is None:
            self.line(f"[{index}/{n}] {name}: started")

    def stage_ended(self, status: str, seconds: float, error: str | None) -> None:
        self._advance(self.weight - self._done_weight)
        runs = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        text = f"[{self.index}/{self.n_stages}] {self.stage}: {status} in {seconds:.0f} s"
        text += f" ({runs})" if runs else ""
        if error:
            text += f"\n    {error}"
        self.line(text)

    # suite.launch reporter protocol
    def runs_planned(self, stage: str, runs: list) -> None:
        self.runs += len(runs)
        self.launched += len(runs)
        self._advance(0)

    def run_started(self, run: Any) -> None:
        print(f"--- run {run.name} -> {run.out_dir}", file=self.log, flush=True)
        if self.bar is not None:
            where = f"run {self.runs_done + 1}/{self.runs}: {str(run.name)[:40]}"
            self.bar.set_postfix_str(where, refresh=True)

    def run_ended(self, outcome: Any) -> None:
        self.runs_done += 1
        self.counts[outcome.action] = self.counts.get(outcome.action, 0) + 1
        extra = "".join(f"; {x}" for x in (outcome.error, outcome.note) if x)
        print(
            f"--- run {outcome.name}: {outcome.action} in {outcome.seconds:.1f} s{extra}",
            file=self.log,
            flush=True,
        )
        if self.runs:
            step = self.weight / max(self.runs, 1)
            step = min(step, self.weight - self._done_weight)
            self._done_weight += step
            self._advance(step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def to_log(log_path: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """Send file descriptors 1 and 2 (prints, warnings, subprocesses) to ``log_path``; yield
    (the terminal's stderr, the log) for the display. Restored on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    term = os.fdopen(os.dup(2), "w", buffering=1)
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        # Python-level streams too: they may not be fds 1 and 2 (pytest, IDEs, notebooks)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield term, log
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        term.close()
        log.close()


# ----------------------------------------------------------------------------- the job
def environment(device_hint: str | None = None) -> dict[str, Any]:
    """Versions, device, git commit and host of this job (for REPORT.md)."""
    import platform

    import torch

    from suite.rundir import device_description, git_info, library_versions

    for name in ("pandas", "matplotlib", "scipy", "submitit"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    versions = library_versions()
    with contextlib.suppress(ImportError):
        import submitit

        versions["submitit"] = submitit.__version__
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "versions": versions,
        "device": device_hint or device_description(dev),
        "git": git_info(),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def _load_record(path: Path) -> dict[str, Any]:
    from suite.rundir import read_json

    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def run_stages(
    stages: list[tuple[str, str]],
    profile: str,
    results_dir: Path,
    figures_dir: Path,
    display: Display,
) -> tuple[list[dict[str, Any]], bool]:
    """Run each stage with crash isolation; returns (stage records, interrupted)."""
    records = []
    for i, (family, module) in enumerate(stages, 1):
        display.stage_started(i, len(stages), family, STAGE_COST.get(family, 1.0))
        print(f"\n===== stage {family} ({module}), profile {profile}", flush=True)
        t0 = time.time()
        rec: dict[str, Any] = {"name": family, "module": module, "started": _now()}
        try:
            importlib.import_module(module).reproduce(profile, results_dir, figures_dir)
            rec["status"] = "ok"
        except KeyboardInterrupt as e:
            rec.update(status="interrupted", error=f"Ctrl-C: {e}" if str(e) else "Ctrl-C")
        except Exception as e:  # noqa: BLE001 - one crashed stage must not stop the others
            tb = traceback.format_exc()
            print(tb, flush=True)
            last = str(e).strip().splitlines()
            rec.update(
                status="crashed",
                error=f"{type(e).__name__}: {last[0] if last else ''}"[:500],
                traceback=tb.strip().splitlines()[-12:],
            )
        rec["seconds"] = round(time.time() - t0, 1)
        rec["runs"] = dict(display.counts)
        records.append(rec)
        shown = rec.get("error")
        if rec["status"] == "crashed":
            shown = f"{shown} (traceback in {results_dir / LOG})"
        display.stage_ended(rec["status"], rec["seconds"], shown)
        if rec["status"] == "interrupted":
            return records, True
    return records, False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--profile",
        choices=PROFILES,
        default="quick",
        help="quick: CPU, ~13 min on 2 cores; full: CPU, hours; paper: the papers' settings, "
        "GPU + data; test: seconds, toy budgets (the tests)",
    )
    ap.add_argument("--results_dir", type=Path, default=Path("results"))
    ap.add_argument("--figures_dir", type=Path, default=Path("figures"))
    ap.add_argument("--report", type=Path, default=Path("REPORT.md"), help="the report to write")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="FAMILY",
        help="stages to run (default: all): " + ", ".join(f for f, _ in stage_list.STAGES),
    )
    ap.add_argument("--force", action="store_true", help="retrain every run, even finished ones")
    ap.add_argument(
        "--launcher",
        choices=launch.LAUNCHERS,
        default="local",
        help="local: runs in this process (default); slurm: one SLURM job per run (submitit); "
        "submitit-local: one subprocess job per run on this machine",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="local launcher: runs trained at once in worker processes (default: one per CPU "
        "core for the CPU profiles quick/full, 1 for paper: one GPU)",
    )
    g = ap.add_argument_group("slurm (with --launcher slurm)")
    g.add_argument("--partition", type=str, default=None, help="SLURM partition")
    g.add_argument("--timeout_min", type=int, default=240, help="time limit per job (minutes)")
    g.add_argument("--gpus_per_node", type=int, default=1, help="GPUs per job")
    g.add_argument("--cpus_per_task", type=int, default=8, help="CPU cores per job")
    g.add_argument("--mem_gb", type=int, default=32, help="memory per job (GB)")
    g.add_argument(
        "--slurm_extra",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more sbatch options, e.g. account=myproj qos=high constraint=a100",
    )
    ap.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    return ap


def slurm_params(args: argparse.Namespace) -> dict[str, Any]:
    """submitit executor parameters from the command line."""
    p: dict[str, Any] = {
        "timeout_min": args.timeout_min,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
    }
    if args.launcher == "slurm":
        p["slurm_partition"] = args.partition
        extra = {}
        for kv in args.slurm_extra:
            key, sep, value = kv.partition("=")
            if not sep or not key:
                raise ValueError(f"--slurm_extra {kv!r}: write KEY=VALUE, e.g. account=myproj")
            extra[key] = value
        if extra:
            p["slurm_additional_parameters"] = extra
    else:  # local subprocess jobs: GPUs only when asked for on a machine that has them
        p.pop("gpus_per_node")
        p.pop("mem_gb")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    names = [f for f, _ in stage_list.STAGES]
    for f in args.only or []:
        if f not in names:
            ap.error(f"--only {f}: unknown family; choose from {', '.join(names)}")
    if args.launcher == "slurm" and not args.partition:
        ap.error("--launcher slurm needs --partition (the SLURM partition to submit to)")
    if args.jobs is not None and args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: give the number of runs to train at once (>= 1)")
    for flag in ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb"):
        v = getattr(args, flag)
        if v < (0 if flag == "gpus_per_node" else 1):
            ap.error(f"--{flag} {v}: must be {'>= 0' if flag == 'gpus_per_node' else '>= 1'}")
    # Where the job writes, checked before any stage trains (a typo must not cost a run).
    for flag, path in (
        ("results_dir", args.results_dir),
        ("figures_dir", args.figures_dir),
        ("report", args.report.parent if str(args.report.parent) else Path(".")),
    ):
        if problem := out_dir_error(path):
            ap.error(problem.replace("--out_dir", f"--{flag}", 1))
    if args.report.is_dir():
        ap.error(f"--report {args.report} is a folder: give the file to write, e.g. REPORT.md")
    jobs = args.jobs or (1 if args.profile == "paper" else launch.cpu_count())
    try:
        params = slurm_params(args)
    except ValueError as e:
        ap.error(str(e))
    problems = preflight(args.profile, args.launcher, args.only)
    if problems:
        print(f"profile {args.profile} cannot start on this machine:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2

    stages = [s for s in stage_list.STAGES if not args.only or s[0] in args.only]
    results_dir, figures_dir = args.results_dir, args.figures_dir
    record_path = results_dir / JOB_RECORD
    previous = _load_record(record_path)
    record: dict[str, Any] = {
        "profile": args.profile,
        "started": _now(),
        "command": " ".join(["python -m analysis.reproduce", *(argv or sys.argv[1:])]),
        "launcher": args.launcher,
        "jobs": jobs,
        "environment": environment(),
    }
    total = sum(STAGE_COST.get(f, 1.0) for f, _ in stages)
    use_bar = sys.stderr.isatty() and not args.plain
    t0 = time.time()
    with to_log(results_dir / LOG) as (term, log):
        display = Display(term, log, total, use_bar)
        display.line(
            f"make reproduce: profile {args.profile}, {len(stages)} stages, launcher "
            f"{args.launcher}"
            + (f" ({jobs} parallel runs)" if args.launcher == "local" else "")
            + f"; details in {results_dir / LOG}"
        )
        old = launch.set_reporter(display)
        try:
            with launch.configure(
                launcher=args.launcher,
                force=args.force,
                folder=results_dir / ".submitit",
                slurm=params,
                jobs=jobs,
            ):
                stage_records, interrupted = run_stages(
                    stages, args.profile, results_dir, figures_dir, display
                )
            if (args.force or args.launcher != "local") and display.launched == 0:
                # a stage that keeps its own reuse logic never sees these options: say so
                display.line(
                    f"note: no stage sent its runs through suite.launch, so --force / --launcher "
                    f"{args.launcher} applied to none of them (the stages reused or resumed their "
                    "runs themselves); delete results/<family>/ to retrain a family"
                )
        finally:
            launch.set_reporter(old)
            display.close()
        # stages not run this time keep their last record (their results are still on disk)
        ran = {r["name"] for r in stage_records}
        kept = [r for r in previous.get("stages", []) if r.get("name") not in ran]
        order = {f: i for i, f in enumerate(names)}
        record["stages"] = sorted(
            stage_records + [{**r, "from_earlier_job": True} for r in kept],
            key=lambda r: order.get(r.get("name"), len(order)),
        )
        record["finished"] = _now()
        record["seconds"] = round(time.time() - t0, 1)
        record["interrupted"] = interrupted
        from analysis.report import write_report  # pandas: only once the stages are done
        from suite.rundir import atomic_write_json

        atomic_write_json(record_path, record)
        report = write_report(results_dir, figures_dir, args.report)
        crashed = [r["name"] for r in stage_records if r["status"] == "crashed"]
        summary = f"report: {report} ({time.time() - t0:.0f} s)"
        if crashed:
            summary += f"; crashed stages: {', '.join(crashed)} (see {results_dir / LOG})"
        if interrupted:
            summary += "; interrupted: run the same command again to resume"
        display.line(summary)
    if interrupted:
        return 130
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
