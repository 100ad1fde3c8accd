"""The runs of the one_layer_relu_nets stage: where each comparison lies, its ``suite.launch.Run``,
and the run directories read back as data frames (``one_layer_relu_nets.engine.train`` writes
config.json, metrics.jsonl, summary.json, params.json, data.json)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.one_layer_relu_nets.profiles import FAMILY, MATCHED, experiment_configs
from one_layer_relu_nets.engine import (
    Config,
    load_params,
    make_dataset,
    matched_targets,
    targets_digest,
    train,
)
from one_layer_relu_nets.model import forward
from suite.launch import DEFAULT_IGNORE, Run, run_all
from suite.profiles import PROFILES as PROFILE_NAMES
from suite.rundir import load_run, read_json
from suite.stats import Outcome

ALG_LABEL = {"gd": "GD", "sgd": "SGD", "nsam": "n-SAM", "1sam": "1-SAM", "msam": "m-SAM"}


# ------------------------------------------------------------------------------------ running
def run_dir(results_dir: Path, profile: str, name: str) -> Path:
    return Path(results_dir) / FAMILY / f"{profile}_{name}"


def train_comparison(cfg: Config, resume: bool = False) -> None:
    """``Run.train`` of one comparison (module level, so that ``functools.partial`` of it pickles
    for submitit's worker processes). ``suite.launch`` clears the directory before a fresh start."""
    train(cfg, resume=resume, show_progress=False)


# ``match_losses_of`` names where the base run lies, not what the control computes (that is
# ``match_digest``): a results directory given as a relative or an absolute path is the same run.
MATCHED_IGNORE = (*DEFAULT_IGNORE, "match_losses_of")


def comparison_runs(
    profile: str, results_dir: Path, matched: bool, experiments: tuple[str, ...] | None = None
) -> list[Run]:
    """The ``suite.launch.Run`` of every comparison of ``profile`` (of ``experiments``: "exp1",
    "exp2", "exp3"; default all): the base comparisons (``matched=False``) or their loss-matched
    GD controls (``matched=True``; their bases must be complete: a control's config holds the
    digest of its base's final losses). ``Run.config`` is exactly what ``train`` stores in
    config.json (``dataclasses.asdict``)."""
    runs = []
    configs = experiment_configs(profile)
    for exp in (configs[e] for e in experiments or configs):
        for name, cfg in exp.items():
            if name.endswith(MATCHED) != matched:
                continue
            path = run_dir(results_dir, profile, name)
            cfg = dataclasses.replace(cfg, out_dir=str(path))
            ignore = DEFAULT_IGNORE
            if matched:
                base = run_dir(results_dir, profile, name[: -len(MATCHED)])
                digest = targets_digest(matched_targets(base))
                cfg = dataclasses.replace(cfg, match_losses_of=str(base), match_digest=digest)
                ignore = MATCHED_IGNORE
            fn = functools.partial(train_comparison, cfg)
            runs.append(Run(name, path, dataclasses.asdict(cfg), fn, ignore))
    return runs


def run_experiments(profile: str, results_dir: Path) -> dict[str, Path]:
    """Bring every comparison of ``profile`` to completion through ``suite.launch.run_all`` (it
    skips finished runs of the same config, resumes interrupted ones, retrains changed ones or
    all under ``--force``, and may run them in parallel or on SLURM). Two waves: the base
    comparisons, then the loss-matched controls, which read their bases' final losses.
    Returns {comparison name: run dir}."""
    out = {}
    for matched in (False, True):
        runs = comparison_runs(profile, results_dir, matched)
        run_all(runs, stage=FAMILY)
        out |= {r.name: Path(r.out_dir) for r in runs}
    return out


def detect_profile(results_dir: Path) -> str:
    """The most complete profile present under ``results_dir`` (paper, full, quick, test)."""
    for profile in reversed(PROFILE_NAMES):
        if (run_dir(results_dir, profile, "exp3_decaying") / "summary.json").exists():
            return profile
    raise FileNotFoundError(
        f"no complete {FAMILY} results under {results_dir}: run `make reproduce` (or "
        f"python -m analysis.reproduce --only {FAMILY}) first"
    )


# ------------------------------------------------------------------------------------ loading
def runs_frame(path: str | Path) -> pd.DataFrame:
    """One row per run of a comparison: the summary record, the comparison's directory name and
    ``original_loop`` (its config's ``lr_decay_sam_only``: the reference notebook's loop)."""
    run = load_run(path)
    df = pd.DataFrame(run["summary"]["runs"])
    df["comparison"] = Path(path).name
    df["original_loop"] = bool(run["config"]["config"].get("lr_decay_sam_only", False))
    return df


def history_frame(path: str | Path) -> pd.DataFrame:
    """One row per (run, logged step): run_id, algorithm, step, train_loss, test_loss, and in 1-D
    kinks and slope_tv."""
    run = load_run(path)
    rows = []
    for m in run["metrics"]:
        k = len(m["run_ids"])
        cols = {c: m.get(c) or [None] * k for c in ("test_loss", "kinks", "slope_tv")}
        for j, rid in enumerate(m["run_ids"]):
            rows.append(
                {
                    "run_id": rid,
                    "algorithm": m["algorithm"],
                    "step": m["step"],
                    "train_loss": m["train_loss"][j],
                }
                | {c: v[j] for c, v in cols.items()}
            )
    hist = pd.DataFrame(rows)
    meta = runs_frame(path)[["run_id", "rho", "seed", "normalize", "rho_schedule"]]
    return hist.merge(meta, on="run_id")


# {profile: {experiment: {comparison: Config}}}: one_layer_relu_nets.experiments per profile
ORIGINAL = " (notebook lr)"  # label suffix of the reference notebook's loop (paper profile)


def label(r: pd.Series) -> str:
    """'GD', 'n-SAM rho 0.3', or 'GD @ n-SAM rho 0.3 loss' (a loss-matched control); with the
    suffix ``ORIGINAL`` for a run of the notebook's loop (lr decayed for SAM only)."""
    tail = ORIGINAL if bool(r.get("original_loop", False)) else ""
    if r.get("matched_algorithm") is not None and not pd.isna(r.get("matched_algorithm")):
        return f"GD @ {ALG_LABEL[r['matched_algorithm']]} rho {r['matched_rho']:g} loss{tail}"
    if r["algorithm"] in ("gd", "sgd"):
        return ALG_LABEL[r["algorithm"]] + tail
    return f"{ALG_LABEL[r['algorithm']]} rho {r['rho']:g}{tail}"


EXP1 = ("exp1_main", "exp1_sweep", "exp1_original")  # the base comparisons of experiment 1


def exp1_frame(results_dir: Path, profile: str) -> pd.DataFrame:
    """Every run of experiment 1 (main, sweep, the notebook's loop and their loss-matched GD
    controls, those the profile has), labelled, with each run's ``max_residual``."""
    frames = []
    for name in (n + suffix for n in EXP1 for suffix in ("", MATCHED)):
        p = run_dir(results_dir, profile, name)
        if (p / "summary.json").exists():
            frames.append(runs_frame(p).merge(max_residuals(p), on="run_id"))
    df = pd.concat(frames, ignore_index=True)
    df["label"] = df.apply(label, axis=1)
    return df


def max_residuals(path: str | Path) -> pd.DataFrame:
    """run_id, max_residual: max_i |f(x_i) - y_i| of each run's final weights on its training
    points (the fit precondition of experiment 1 reads it)."""
    data = read_json(Path(path) / "data.json")
    X = torch.tensor(data["X"], dtype=torch.float64)
    y = torch.tensor(data["y"], dtype=torch.float64)
    rows = [
        {"run_id": rid, "max_residual": float((forward(p, X).out - y).abs().max())}
        for rid, p in load_params(path).items()
    ]
    return pd.DataFrame(rows)


def test_outcomes(path: str | Path, runs: pd.DataFrame) -> list[Outcome]:
    """The ``suite.stats.Outcome`` of each run in ``runs`` (rows of ``runs_frame(path)``): its
    per-example test loss 0.5 (f(x) - y)^2 on the comparison's test set (regenerated from the
    stored config: a deterministic function of ``data_seed``), with its seed and the SHA-256
    of the test examples (every run of a comparison is scored on the same ones: paired)."""
    cfg = Config(**{k: v for k, v in _cfg(path).items() if k in _FIELDS})
    data = make_dataset(cfg)
    X, y = data.X_test, data.y_test
    digest = hashlib.sha256(X.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
    params = load_params(path)
    return [
        Outcome(
            int(r["seed"]),
            digest,
            (0.5 * (forward(params[r["run_id"]], X).out - y) ** 2).numpy(),
        )
        for _, r in runs.iterrows()
    ]


_FIELDS = {f.name for f in dataclasses.fields(Config)}


def steps_to_tolerance(path: str | Path, tol: float) -> pd.DataFrame:
    """run_id, steps_to_tol (the first logged step whose training loss is <= ``tol``; NaN when
    no logged step reaches it), budget (the comparison's iterations). The logged steps are
    log-spaced (``n_logs``), so a step is known to within the spacing of that grid."""
    hist = history_frame(path)
    budget = int(_cfg(path)["iterations"])
    reached = hist[hist["train_loss"].astype(float) <= tol].groupby("run_id")["step"].min()
    ids = hist["run_id"].unique()
    return pd.DataFrame(
        {
            "run_id": ids,
            "steps_to_tol": [float(reached.get(i, np.nan)) for i in ids],
            "budget": budget,
        }
    )


def _cfg(path: Path) -> dict:
    return read_json(Path(path) / "config.json")["config"]


def _by_seed(df: pd.DataFrame, col: str) -> pd.Series:
    """One value per seed (float), indexed by seed."""
    return df.set_index("seed")[col].astype(float).sort_index()


def _has(results_dir: Path, profile: str, name: str) -> bool:
    return (run_dir(results_dir, profile, name) / "summary.json").exists()


def _seeds(cfg: dict) -> str:
    s = cfg["seeds"]
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 1 else str(s)
