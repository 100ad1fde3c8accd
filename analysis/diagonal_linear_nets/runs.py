"""The diagonal-net stage's runs: one ``suite.launch.Run`` per experiment of the profile, and
the readers of their run directories (``results/diagonal_linear_nets/<exp>/``) that the figures
and the claims use."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np

from analysis.diagonal_linear_nets.profiles import FAMILY, GRID, experiment_configs
from diagonal_linear_nets.simulator import make_problem
from diagonal_linear_nets.train import TrainConfig, initial_loss, stored_config, train
from suite.launch import Outcome, Run, run_all
from suite.rundir import load_run


def train_experiment(cfg: TrainConfig, resume: bool = False) -> Path:
    """``Run.train`` of one experiment: its grid, continued from its checkpoint with ``resume``
    (module-level with a dataclass argument, so a ``functools.partial`` of it pickles for
    worker processes and submitit jobs)."""
    return train(dataclasses.replace(cfg, resume=resume, overwrite=False))


def experiment_runs(profile: str, results_dir: Path, scale: float | None = None) -> list[Run]:
    """One ``suite.launch.Run`` per experiment; its config is what the trainer stores in
    config.json, so a finished run with the same settings is skipped on the next call."""
    root = Path(results_dir) / FAMILY
    return [
        Run(name, Path(cfg.out_dir), stored_config(cfg), functools.partial(train_experiment, cfg))
        for name, cfg in experiment_configs(profile, root, scale).items()
    ]


def run_experiments(profile: str, results_dir: Path, scale: float | None = None) -> list[Outcome]:
    """Bring every experiment's run directory to completion through ``suite.launch.run_all``
    (skipped when finished with the same config, resumed when interrupted, ``--force``
    retrains; the launcher and the progress display are ``make reproduce``'s)."""
    return run_all(experiment_runs(profile, results_dir, scale), stage=FAMILY)


def load_experiment(results_dir: Path, name: str) -> dict:
    """{"config", "summary", "series": {run index: {"iter", "train_loss", "test_loss", "l1"}}}."""
    path = Path(results_dir) / FAMILY / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"no {FAMILY} results at {path}: run `make reproduce` (or "
            f"`python -m analysis.reproduce --only {FAMILY}`) first"
        )
    run = load_run(path)
    series: dict[int, dict[str, list]] = {}
    for row in run["metrics"]:
        s = series.setdefault(row["run"], {"iter": [], "train_loss": [], "test_loss": [], "l1": []})
        for k in s:
            v = row[k]
            s[k].append(np.nan if v is None else v)
    return {"config": run["config"], "summary": run["summary"], "series": series}


def _runs(results_dir: Path, name: str) -> list[dict]:
    return load_experiment(results_dir, name)["summary"]["runs"]


def _loss(r: dict) -> float:
    """Final test loss; NaN for a diverged run."""
    v = r["final_test_loss"]
    return np.nan if v is None or r["status"] == "diverged" else v


def _at(results_dir: Path, name: str, run: int, t: int, key: str = "test_loss") -> float:
    s = load_experiment(results_dir, name)["series"][run]
    return float(s[key][s["iter"].index(t)])


def grid_table(results_dir: Path) -> dict:
    """The notebook's grid (Fig. 5): GD, n-SAM (at 10/d and at 15/d) and 1-SAM test losses."""
    g = _runs(results_dir, "grid")
    return {
        "rho_orig": GRID,
        "gd": next(r for r in g if r["algo"] == "gd"),
        "nsam": [r for r in g if r["algo"] == "nsam"],
        "1sam": [r for r in g if r["algo"] == "1sam"],
        "nsam_uniform": _runs(results_dir, "grid_uniform"),
    }


def interpolation(results_dir: Path, points: int = 100) -> dict:
    """The notebook's cell 7: losses along (u, v)(t) = (1 - t) (u, v)_{ERM->1-SAM} +
    t (u, v)_{ERM at N}, t in [-1, 2] (t = 0: the ERM -> 1-SAM endpoint, t = 1: ERM)."""
    a = next(r for r in _runs(results_dir, "switch_erm_sam") if r["algo"] == "1sam")
    b = _runs(results_dir, "erm_N")[0]
    P = make_problem(seed=0)
    X, y, Xt, yt = (t.numpy() for t in (P.X, P.y, P.X_test, P.y_test))
    ts = np.linspace(-1, 2, points)
    tr, te = [], []
    for t in ts:
        u = (1 - t) * np.asarray(a["u"]) + t * np.asarray(b["u"])
        v = (1 - t) * np.asarray(a["v"]) + t * np.asarray(b["v"])
        tr.append(0.5 * np.mean((X @ (u * v) - y) ** 2))
        te.append(0.5 * np.mean((Xt @ (u * v) - yt) ** 2))
    return {"t": ts.tolist(), "train_loss": tr, "test_loss": te, "loss0": initial_loss(y)}


def barrier(results_dir: Path) -> float:
    """max over t in [0, 1] of the train loss minus the larger endpoint's, divided by the
    initial loss ||y||^2 / (2n) (the problem's loss scale; ratios of ~1e-11 endpoint losses are
    ill-posed)."""
    ip = interpolation(results_dir, points=301)
    t = np.asarray(ip["t"])
    tr = np.asarray(ip["train_loss"])
    inside = tr[(t >= 0) & (t <= 1)]
    ends = max(inside[0], inside[-1])
    return float((inside.max() - ends) / ip["loss0"])


def theory_table(results_dir: Path) -> list[dict]:
    """Per gamma and algorithm: relative distance of the simulated solution to the flow
    prediction (only for runs that interpolated), alpha_inf's geometric mean."""
    out = []
    for p in sorted((Path(results_dir) / FAMILY).glob("theory_g*")):
        for r in _runs(results_dir, p.name):
            out.append(
                {
                    "gamma": r["gamma"],
                    "algo": r["algo"],
                    "status": r["status"],
                    "rel_dist": r.get("rel_dist_pred"),
                    "alpha_gm": float(np.exp(np.mean(np.log(r["alpha_inf_flow"])))),
                    "l1": r["final_l1"],
                    "l1_pred": r.get("l1_pred"),
                }
            )
    return out


# ------------------------------------------------------------------------ validation (rho choice)
# rho is chosen on a validation set, never on the test set: N_VAL examples drawn like the
# training data (X ~ N(0, I_d), y = X beta* with the data seed's beta*) from numpy seed
# VAL_SEED + the data seed (no seed any experiment trains or tests on).
N_VAL = 1000
VAL_SEED = 10_000


def validation_set(cfg: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(X_val, y_val) of data seed ``seed`` for an experiment's stored config ``cfg`` (its n, d,
    n_test, sparsity, noise): the rows are fresh draws, the planted beta* is the training data's."""
    # beta* is drawn after X and X_test: the training problem's own n_test gives its beta*
    P = make_problem(cfg["n"], cfg["d"], cfg["sparsity"], cfg["n_test"], cfg["noise"], seed)
    beta = P.beta_star
    rs = np.random.RandomState(VAL_SEED + seed)
    X = rs.multivariate_normal(np.zeros(cfg["d"]), np.eye(cfg["d"]), N_VAL)
    y = X @ beta.numpy()
    if cfg["noise"] > 0:  # labels noisy like the training labels
        y = y + cfg["noise"] * rs.randn(N_VAL)
    return X, y


NAMES = {"gd": "GD", "sgd": "SGD", "nsam": "n-SAM", "1sam": "1-SAM", "msam": "m-SAM"}


def rho_orig(r: dict) -> float:
    """A run's rho in the original code's convention, the one this stage's settings, figures and
    claims use (1-SAM's suite rho is twice it; the others' are the same)."""
    return r["rho"] / 2 if r["algo"] == "1sam" else r["rho"]


def run_label(r: dict) -> str:
    """A run's legend label with rho in the original convention (``rho_orig``)."""
    s = NAMES.get(r["algo"], r["algo"])
    if r["algo"] == "sgd":
        s += f" (b={r['batch_size']})"
    return s + (f" rho {rho_orig(r):g}" if r["rho"] else "")


def val_loss(run: dict, X: np.ndarray, y: np.ndarray) -> float:
    """A run's final validation loss ||X beta - y||^2 / (2 n_val) (NaN for a diverged run)."""
    if run["status"] == "diverged":
        return math.nan
    return float(0.5 * np.mean((X @ np.asarray(run["beta"]) - y) ** 2))


def chosen_on_validation(cfg: dict, runs: list[dict]) -> dict:
    """Of ``runs`` (one algorithm's rho grid of one data seed, from an experiment whose stored
    config is ``cfg``), the run with the lowest final validation loss (``validation_set``), with
    its "val_loss" and "grid_end" (the choice is the grid's smallest or largest rho: the optimum
    is then not bracketed by the grid). A diverged run is never chosen; the test loss is never
    read."""
    X, y = validation_set(cfg, runs[0]["seed"])
    losses = [val_loss(r, X, y) for r in runs]
    if all(math.isnan(v) for v in losses):
        raise ValueError("every run of the grid diverged: there is no rho to choose")
    best = runs[int(np.nanargmin(losses))]
    rhos = [r["rho"] for r in runs]
    return best | {
        "val_loss": float(np.nanmin(losses)),
        "grid_end": best["rho"] in (min(rhos), max(rhos)),
    }
