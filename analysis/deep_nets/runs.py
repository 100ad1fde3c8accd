"""Run bookkeeping for the deep-net experiments: specs, training through the trainer's CLI, reuse.

A ``Spec`` is one training run: the trainer flags (``deep_nets/train.py`` names) and a seed. Its
directory is a pure function of the flags, ``<root>/<slug>_<hash>_seed<k>``, so two experiments
that need the same run (ERM in Fig. 1 and in the LookSAM table) share it: a finished run is
reused, an unfinished one is resumed (``--resume``), a new one is trained, all decided by
``suite.launch.run_all`` (so ``--force``, ``--jobs`` and the SLURM launcher of ``make reproduce``
reach these runs). Every run goes through ``deep_nets.train.config_from_argv`` +
``deep_nets.train.train``, the command a user would type; mnist1d is generated once per process
(the data module caches it).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from suite.claims import Claim, ClaimRow, Gap, fmt_mean_std, gap, pool
from suite.launch import DEFAULT_IGNORE, Run
from suite.rundir import config_hash, load_run
from suite.stats import Outcome as Scores

FAMILY = "deep_nets"
# Flags that do not change the results: left out of the run's identity.
_FREE = ("workers", "device", "out_dir", "resume", "stop_after_epoch", "seed")
# ... and of the launcher's comparison with a stored run (the seed is part of the config there)
_IGNORE = (*DEFAULT_IGNORE, "stop_after_epoch")


@dataclass(frozen=True)
class Spec:
    """One training run: ``flags`` (trainer flag -> value) and ``seed``."""

    flags: tuple[tuple[str, Any], ...]
    seed: int

    @staticmethod
    def make(flags: Mapping[str, Any], seed: int) -> Spec:
        """Flags equal to the trainer's defaults are dropped, so that the same run written two
        ways (``sam_rho=0`` or no ``sam_rho``) has one identity."""
        from deep_nets.config import TrainConfig

        d = TrainConfig().to_dict()
        keep = [(k, v) for k, v in flags.items() if k not in _FREE and (k not in d or d[k] != v)]
        return Spec(tuple(sorted(keep)), seed)

    @property
    def as_dict(self) -> dict[str, Any]:
        return dict(self.flags)

    def dirname(self) -> str:
        d = self.as_dict
        parts = ["erm" if not d.get("sam_rho") else d.get("sam_variant", "sam")]
        if d.get("sam_rho"):
            parts.append(f"r{d['sam_rho']:g}")
            parts.append(f"m{d.get('batch_size', 128) // d.get('acc_steps', 1)}")
        if d.get("sam_perturb_batch", "same") != "same":
            parts.append("other")
        if d.get("sam_use_prev_batch"):
            parts.append("prev")
        if d.get("add_weight_perturb_scale"):
            parts[0] = "gauss"
            parts.append(f"s{d['add_weight_perturb_scale']:.3g}")
        if d.get("sam_epoch_frac_start", 0.0) > 0:
            parts.append(f"from{d['sam_epoch_frac_start']:g}")
        if d.get("sam_epoch_frac_end", 1.0) < 1:
            parts.append(f"until{d['sam_epoch_frac_end']:g}")
        if d.get("sam_no_grad_norm"):
            parts.append("unnorm")
        if d.get("p_label_noise"):
            parts.append(f"noise{d['p_label_noise']:g}")
        return "-".join(parts) + f"_{config_hash(d)[:8]}_seed{self.seed}"


def to_argv(flags: Mapping[str, Any]) -> list[str]:
    """Trainer command-line arguments for ``flags`` (booleans as store_true switches)."""
    argv: list[str] = []
    for k, v in flags.items():
        if v is True:
            argv.append(f"--{k}")
        elif v is False or v is None:
            continue
        else:
            argv += [f"--{k}", str(v)]
    return argv


def run_path(root: Path, spec: Spec) -> Path:
    return Path(root) / "runs" / spec.dirname()


def is_finished(path: Path) -> bool:
    s = path / "summary.json"
    return s.exists() and (load_run(path)["summary"] or {}).get("status") == "finished"


def check_current(path: Path) -> None:
    """Refuse a run written by the trainer before issue 9 (its config.json has no data provenance
    with the validation-noise record): its flags name the same run, but the behaviour differed
    (clean validation labels, the old unnormalized step and switch count)."""
    conf = load_run(path)["config"]
    if "noisy_val" not in ((conf.get("data") or {}).get("noise") or {}):
        raise ValueError(
            f"{path}: written by an older trainer (no data provenance with the validation-noise "
            "record in config.json); its results do not follow the current flags' behaviour: "
            "delete this run directory (or use a fresh results folder) and run again"
        )


def train_argv(argv: Sequence[str], resume: bool) -> dict:
    """Train the run the trainer's command line ``argv`` describes (``--resume`` added when the
    launcher resumes it): the callable of a ``suite.launch.Run``, picklable for worker processes."""
    from deep_nets.train import config_from_argv, train

    return train(config_from_argv([*argv, *(["--resume"] if resume else [])]))


def make_run(spec: Spec, root: Path, runtime: Mapping[str, Any]) -> Run:
    """The ``suite.launch.Run`` of ``spec``: its directory, the full config the trainer stores in
    ``config.json`` (so the launcher recognizes a finished run of the same flags) and the trainer
    called with the flags a user would type."""
    from deep_nets.train import config_from_argv

    out = run_path(root, spec)
    flags = {**spec.as_dict, **runtime, "seed": spec.seed}
    # parsed without --out_dir: the trainer's parser refuses a directory that holds a run
    # (without --resume), and the launcher decides about that directory, not the parser
    config = {**config_from_argv(to_argv(flags)).to_dict(), "out_dir": str(out)}
    argv = tuple(to_argv({**flags, "out_dir": str(out)}))
    return Run(spec.dirname(), out, config, functools.partial(train_argv, argv), ignore=_IGNORE)


def runtime_flags(P: Mapping[str, Any]) -> dict[str, Any]:
    """The flags of a profile that do not change results (data-loader workers)."""
    return {"workers": P["workers"]} if P["workers"] else {}


def launch_runs(specs: Iterable[Spec], root: Path, runtime: Mapping[str, Any]) -> list[Run]:
    """The ``suite.launch.Run`` of each distinct spec; a finished run written by an older
    trainer is refused (``check_current``)."""
    runs = [make_run(s, root, runtime) for s in dict.fromkeys(specs)]  # dedupe, keep order
    for r in runs:
        if is_finished(r.out_dir):
            check_current(r.out_dir)
    return runs


@dataclass(frozen=True)
class SpecRuns:
    """``suite.stage.Experiment.runs`` of a deep-net experiment: the runs of ``specs(P)``."""

    specs: Callable[[dict[str, Any]], list[Spec]]

    def __call__(self, ctx: Any) -> list[Run]:
        return launch_runs(self.specs(ctx.P), ctx.root, runtime_flags(ctx.P))


def ensure_runs(specs: Iterable[Spec], root: Path, *, runtime: Mapping[str, Any]) -> dict:
    """Bring every spec to a finished run under ``root`` through ``suite.launch.run_all`` (the
    launcher, ``--force`` and parallel ``--jobs`` of ``make reproduce``): a finished run of the
    same config is skipped, an interrupted one resumed, others trained; ``runtime`` adds flags
    that do not change results (workers, device). Returns {"trained": n, "reused": n, "seconds":
    wall-clock of this call, "runs": {run directory name: {"action", "seconds", "cpu_seconds"}}}.
    """
    from suite.launch import run_all

    t0 = time.perf_counter()
    outcomes = run_all(launch_runs(specs, root, runtime), stage=FAMILY)
    per_run = {
        o.out_dir.name: {"action": o.action, "seconds": o.seconds, "cpu_seconds": o.cpu_seconds}
        for o in outcomes
    }
    trained = sum(o.action != "skipped" for o in outcomes)
    return {
        "trained": trained,
        "reused": len(outcomes) - trained,
        "seconds": time.perf_counter() - t0,
        "runs": per_run,
    }


def load(root: Path, spec: Spec) -> dict:
    """The finished run of ``spec`` (``suite.rundir.load_run``); a clear error if it is missing."""
    path = run_path(root, spec)
    if not is_finished(path):
        raise FileNotFoundError(
            f"{path}: no finished run for {spec.dirname()}; run the experiment first "
            "(python -m analysis.reproduce --only deep_nets, or the experiment's function)"
        )
    check_current(path)
    return load_run(path)


def epoch_rows(run: Mapping[str, Any]) -> list[dict]:
    """The end-of-epoch rows (``epoch_end`` true): epochs 1, 2, ...; neither the epoch-0 row
    (the starting point, logged before any step) nor the ``--eval_iter_freq`` rows."""
    return [r for r in run["metrics"] if r.get("epoch_end")]


def start_row(run: Mapping[str, Any]) -> dict | None:
    """The epoch-0 row (evaluated before any step: a fine-tuning run's starting error), or None
    for a run written before the trainer logged it."""
    return next((r for r in run["metrics"] if not r.get("epoch_end") and r.get("step") == 0), None)


def curve_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[dict]]:
    """Per run, the rows a curve draws: the epoch-0 row (when every run has one, so that the
    runs stay aligned) followed by the end-of-epoch rows."""
    starts = [start_row(r) for r in runs]
    with_start = all(s is not None for s in starts)
    return [([s] if with_start else []) + epoch_rows(r) for s, r in zip(starts, runs, strict=True)]


def scored(run: Mapping[str, Any]) -> dict:
    """``summary.json`` ``scored``: the best-validation and the last weights scored on every
    validation and test example (error rates, epochs, the examples' digests, the seed; the
    per-example errors in ``wrong.npz``); a clear error for a run written before the trainer
    scored its runs."""
    sc = (run.get("summary") or {}).get("scored")
    if not sc:
        raise ValueError(
            f"{run.get('path')}: summary.json has no 'scored' block (the per-example scoring of "
            "the best and the last weights); the run predates the trainer that writes it: "
            "delete the run directory and run the experiment again"
        )
    return sc


def n_test(run: Mapping[str, Any]) -> int:
    """Test examples each error rate of ``run`` was measured on: the scored set's size
    (``summary.json`` ``scored.n_test``: every test example, or the first ``--n_eval``); for a
    run without it, the test-set size of the data provenance (``summary.json`` "data", else
    ``config.json`` "data", ``sizes.test``), capped by the run's ``--n_eval``."""
    summary, conf = run.get("summary") or {}, run.get("config") or {}
    if (summary.get("scored") or {}).get("n_test"):
        return int(summary["scored"]["n_test"])
    data = summary.get("data") or conf.get("data") or {}
    size = (data.get("sizes") or {}).get("test")
    if not size:
        raise ValueError(
            f"{run.get('path')}: no test-set size in the data provenance of summary.json or "
            "config.json ('data' -> 'sizes' -> 'test'); the run predates the trainer that writes "
            "it: delete the run directory and run the experiment again"
        )
    n = int((conf.get("config") or {}).get("n_eval") or 0)
    return min(n, int(size)) if n > 0 else int(size)


# The pre-registered tests of the test-error rows (fixed before any result was seen; gaps in
# percentage points of test error): an effect smaller than half a point is of no interest at
# these error levels (ERM ~33% on mnist1d, the paper's 128-SAM effect ~0.75 of 5.1%); a null
# claim ("X stays near ERM") holds when the gap is shown within the same half point.
SESOI = 0.5
NULL_MARGIN = 0.5
EFFECT = Claim("effect", SESOI)
NULL = Claim("null", NULL_MARGIN)


def wrong_of(run: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The per-example errors of ``run`` (``wrong.npz``: ``best_val``, ``best_test``,
    ``last_val``, ``last_test``; bool arrays), read once per file version."""
    p = Path(run["path"]) / scored(run)["file"]
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: the run's per-example errors are missing; delete the run directory and run "
            "the experiment again"
        )
    return _read_wrong(str(p), p.stat().st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _read_wrong(path: str, mtime_ns: int) -> dict[str, np.ndarray]:
    from deep_nets.evaluation import read_wrong

    return read_wrong(path)


def scores(run: Mapping[str, Any], when: str, split: str = "test") -> Scores:
    """One run's per-example 0/1 errors at ``when`` ("best": the best-validation weights,
    "last") on ``split`` ("test", "val") as a ``suite.stats.Outcome``: the run's seed and the
    digest of the examples scored, from which ``suite.claims.gap`` decides the design (same seed
    and same examples: paired)."""
    sc = scored(run)
    w = "best" if when == "best" and "best" in sc else "last"
    return Scores(int(sc["seed"]), str(sc[f"{split}_sha256"]), wrong_of(run)[f"{w}_{split}"])


def error_rate(run: Mapping[str, Any], when: str, split: str = "test") -> float:
    """``scored`` error rate of ``run`` at ``when`` on ``split`` (every example scored)."""
    sc = scored(run)
    return float(sc.get(when, sc["last"])[f"{split}_err"])


@dataclass
class Outcome:
    """One method's runs, one per seed, with their test errors at the two epochs the claims
    compare (``best``: the best-validation epoch, ``last``) on the scored test set."""

    label: str
    specs: list[Spec]
    best: list[float] = field(default_factory=list)  # test error at the best-validation epoch
    last: list[float] = field(default_factory=list)  # test error at the last epoch
    runs: list[dict] = field(default_factory=list)

    def at(self, when: str) -> list[float]:
        return self.best if when == "best" else self.last

    def scores(self, when: str, split: str = "test") -> list[Scores]:
        """Per-example errors of every seed (``scores``), for ``suite.claims.gap``."""
        return [scores(r, when, split) for r in self.runs]


def outcome_of(label: str, specs: Sequence[Spec], runs: Sequence[dict]) -> Outcome:
    """An ``Outcome`` of loaded runs (``load``), one per spec."""
    o = Outcome(label, list(specs), runs=list(runs))
    for run in runs:
        o.best.append(error_rate(run, "best"))
        o.last.append(error_rate(run, "last"))
    return o


def outcome(root: Path, label: str, specs: Sequence[Spec]) -> Outcome:
    """Test error at the best-validation epoch and at the last epoch, per seed, on the scored
    test set (every test example: ``summary.json`` ``scored``, not the metrics rows' subset).

    The best-validation epoch is the trainer's choice among the end-of-epoch rows (the epoch-0
    row is not a candidate), made on the validation set alone. With label noise the validation
    labels are noisy like the training labels (the trainer's default, as the original): a
    realistic early stopping; ``--clean_val`` would make it an oracle.
    """
    return outcome_of(label, specs, [load(root, s) for s in specs])


def pct(values: Sequence[float]) -> str:
    """Error rates as "m +- s% (n seeds)"."""
    return fmt_mean_std([100 * v for v in values], ".2f", "%")


WHEN = {"best": "best-validation epoch", "last": "last epoch"}


def error_gap(method: Sequence[Scores], base: Sequence[Scores]) -> Gap:
    """base - method test error in percentage points (positive: ``method`` is better) with the
    standard error of the design the outcomes show (``suite.claims.gap``: paired by seed and by
    example for runs of the same seeds scored on the same examples)."""
    return gap(list(method), list(base)).scaled(100)


@dataclass(frozen=True)
class Contrast:
    """One pre-registered comparison, before the family's seed variance is pooled: the claims
    row's text, its ``Gap``, its test and the pool it belongs to (``pool_key``: gaps of one
    quantity, in one unit, at one epoch; "" = not pooled; ``row=False``: a gap that only
    informs the pool, e.g. m = 64 vs ERM in the m-sharpness family)."""

    claim: str
    paper_value: str
    ours: str
    stat: Gap
    test: Claim
    pool_key: str = ""
    note: str = ""
    paper_effect: float | None = None
    not_comparable: str = ""
    row: bool = True


def pooled_rows(contrasts: Sequence[Contrast], *, paper: str, figure: str) -> list[ClaimRow]:
    """The claims rows of ``contrasts`` with each pool's seed variance pooled
    (``suite.claims.pool``, Bartlett-checked: when the pool's variances disagree the gaps keep
    their own, df = k - 1), so that two seeds are not judged on df 1 alone."""
    stats = [c.stat for c in contrasts]
    for key in dict.fromkeys(c.pool_key for c in contrasts if c.pool_key):
        idx = [i for i, c in enumerate(contrasts) if c.pool_key == key]
        for i, g in zip(idx, pool([stats[i] for i in idx]), strict=True):
            stats[i] = g
    return [
        ClaimRow(
            paper=paper,
            claim=c.claim,
            paper_value=c.paper_value,
            ours=c.ours,
            stat=g,
            test=c.test,
            figure=figure,
            note=c.note,
            paper_effect=c.paper_effect,
            not_comparable=c.not_comparable,
        )
        for c, g in zip(contrasts, stats, strict=True)
        if c.row
    ]


def compare_contrasts(
    base: Outcome,
    method: Outcome,
    *,
    claim: str,
    paper_value: str,
    note: str = "",
    test: Claim = EFFECT,
    pool: str = "",
    paper_effect: float | None = None,
    row: bool = True,
) -> list[Contrast]:
    """Two contrasts (best-validation epoch, last epoch): ``method``'s test error below
    ``base``'s, in points, paired by seed and by example; ``pool`` names the family's pool (the
    epoch is appended: the best-validation and the last epoch are pooled apart)."""
    return [
        Contrast(
            claim=f"{claim} (at the {WHEN[when]})",
            paper_value=paper_value,
            ours=f"{base.label} {pct(base.at(when))} vs {method.label} {pct(method.at(when))}",
            stat=error_gap(method.scores(when), base.scores(when)),
            test=test,
            pool_key=f"{pool}/{when}" if pool else "",
            note=note,
            paper_effect=paper_effect,
            row=row,
        )
        for when in ("best", "last")
    ]


def compare_rows(
    base: Outcome,
    method: Outcome,
    *,
    claim: str,
    paper: str,
    paper_value: str,
    figure: str,
    note: str,
    n: int | None = None,
    test: Claim = EFFECT,
    paper_effect: float | None = None,
) -> list[ClaimRow]:
    """Two claims rows (best-validation epoch, last epoch): ``method`` has a lower test error
    than ``base``. gap = base - method mean test error in percentage points, paired by seed and
    by example (``error_gap``), judged on ``test``; not pooled (use ``compare_contrasts`` and
    ``pooled_rows`` for a family). ``n`` is accepted for old callers and ignored: the examples
    are the scored set's."""
    del n
    cs = compare_contrasts(
        base,
        method,
        claim=claim,
        paper_value=paper_value,
        note=note,
        test=test,
        paper_effect=paper_effect,
    )
    return pooled_rows(cs, paper=paper, figure=figure)


def mean_curve(runs: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, mean over runs of ``key`` per row of ``curve_rows``: the epoch-0 row, then the
    end-of-epoch rows); runs of unequal length are cut."""
    rows = curve_rows(runs)
    n = min(len(r) for r in rows)
    x = np.array([rows[0][i]["epoch"] for i in range(n)], dtype=float)
    vals = np.array(
        [[math.nan if r[i].get(key) is None else r[i][key] for i in range(n)] for r in rows],
        dtype=float,
    )
    return x, np.nanmean(vals, axis=0)
