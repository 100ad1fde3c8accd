"""The measures stage's runs and measurements: every number it reports is measured here.

Figures 1 and 2. The spectrum runs are ``deep_nets/train.py`` runs (``analysis.deep_nets.runs``
``Spec``s: the deep-net stage's launcher, run directories, reuse and ``--resume``), under
``results/measures/<profile>/runs/``; the trainer keeps the weights of the measured epochs
(``--save_model_each_k_epochs``). Everything is measured afterwards from those checkpoints with
``python -m deep_nets.eval_sharpness`` (``measured``: its ``result.json`` in
``RUN_DIR/measures/<name>/``, measured again only when the checkpoint's SHA-256 or the arguments
changed):

- the Hessian of the training cross-entropy (without the L2 term) on ``hessian["n_examples"]``
  seeded training examples at each of ``eval_epochs``: top-5 eigenvalues (Lanczos), and the SLQ
  eigenvalue density at the last epoch;
- 1-D slices along a seeded filter-normalized direction around each run's final weights (seed 0:
  also a 2-D slice), and the linear interpolation from seed 0's ERM run to the ERM -> SAM run
  (t in [-0.5, 1.5]) on training and test examples.

The train loss / error and test error at each measured epoch are the trainer's own epoch rows.

Figure 3: m-sharpness of the deep_nets stage's runs against their test error (``fig3_table``).
Figure 4: the diagonal linear nets simulated by their family's simulator, measured exactly
(``diagonal_solutions``), and the ReLU family's stored runs (``relu_lambda_max``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.deep_nets.runs import Spec, epoch_rows, is_finished, run_path
from analysis.measures.profiles import DIAG, DIAG_SEEDS, FAMILY, FIG3_SETTINGS, PROFILES
from sharpness import measures as M
from suite.rundir import atomic_write_json, atomic_write_text, file_sha256, load_run, read_json

OPTS = ("sgd", "sam")  # ERM (SGD with momentum) and SAM
CHECKPOINT = "checkpoint.pt"  # the trainer's last-epoch checkpoint
STAGE_CMD = f"python -m analysis.reproduce --only {FAMILY}"


# ------------------------------------------------------------------ Figures 1 and 2: the runs
def spectrum_spec(P: dict[str, Any], opt: str, seed: int) -> Spec:
    """The ERM ("sgd") or SAM run of ``seed``: the profile's trainer flags, SAM at ``rho``."""
    flags = {**P["base"], **({"sam_rho": P["rho"]} if opt == "sam" else {})}
    return Spec.make(flags, seed)


def finetune_spec(P: dict[str, Any]) -> Spec:
    """ERM -> SAM ("Towards Understanding SAM", Fig. 9, at our scale): seed 0's ERM run, SAM on
    from the ``switch`` fraction of the epochs on (the same cosine schedule, the same data order:
    its ERM epochs are the ERM run's)."""
    return Spec.make({**P["base"], "sam_rho": P["rho"], "sam_epoch_frac_start": P["switch"]}, 0)


def spectrum_specs(P: dict[str, Any]) -> list[Spec]:
    return [spectrum_spec(P, o, s) for o in OPTS for s in P["seeds"]]


def finetune_specs(P: dict[str, Any]) -> list[Spec]:
    return [finetune_spec(P)]


# --------------------------------------------------------- measuring a checkpoint, cached
def _stored_args(args: Any) -> dict[str, Any]:
    """``deep_nets.eval_sharpness``'s arguments as its result.json stores them (no --overwrite)."""
    d = {k: str(v) if isinstance(v, float) and math.isinf(v) else v for k, v in vars(args).items()}
    d.pop("overwrite", None)
    return json.loads(json.dumps(d))


def measured(ckpt: Path, name: str, argv: Sequence[Any], *, measure: bool = True) -> dict:
    """The ``result`` of ``python -m deep_nets.eval_sharpness --model_path ckpt --name name
    *argv`` (``RUN_DIR/measures/<name>/result.json``). A stored result is reused when it was
    measured on this checkpoint file (SHA-256) with these arguments; otherwise it is measured now
    (``measure``) or a FileNotFoundError names the command that measures it."""
    from deep_nets import eval_sharpness as ES

    argv = ["--model_path", str(ckpt), "--name", name, *map(str, argv)]
    path = Path(ckpt).parent / "measures" / name / "result.json"
    want = _stored_args(ES.build_parser().parse_args(argv))
    if path.exists():
        old = read_json(path)
        old_args = {k: v for k, v in old.get("args", {}).items() if k != "overwrite"}
        if old.get("checkpoint_sha256") == file_sha256(ckpt) and old_args == want:
            return old["result"]
    if not measure:
        raise FileNotFoundError(
            f"no current measurement {path} (of {ckpt}): run `{STAGE_CMD}` first"
        )
    try:
        ES.main([*argv, "--overwrite"])
    except SystemExit as e:  # the CLI's parser.error: a message, not an exit of the stage
        cmd = " ".join(argv)
        raise RuntimeError(f"deep_nets.eval_sharpness {cmd} failed (exit {e.code})") from None
    return read_json(path)["result"]


def spectrum_record(run_dir: Path, P: dict[str, Any], *, measure: bool = True) -> dict[str, Any]:
    """One spectrum run: {"path", "summary" (the trainer's), "curve": one row per measured
    epoch {epoch, lambda_max, ratio (lambda_max / lambda_5), eigenvalues, train_loss, train_err,
    test_err}, "final": the last row with the SLQ density (density_nodes, density_weights)}."""
    run = load_run(run_dir)
    rows = {round(r["epoch"]): r for r in epoch_rows(run)}
    h, last = P["hessian"], P["base"]["epochs"]
    curve = []
    for e in P["eval_epochs"]:
        res = measured(
            Path(run_dir) / f"epoch_{e}.pt",
            f"hessian_epoch{e}",
            ["--measure", "hessian", "--n_examples", h["n_examples"], "--top_k", h["top_k"]]
            + ["--max_iter", h["max_iter"], "--tol", h["tol"], "--seed", 0]
            + ["--density_vectors", int(e == last), "--density_steps", h["density_steps"]],
            measure=measure,
        )
        ev = res["eigenvalues"]
        row = {
            "epoch": e,
            "lambda_max": res["lambda_max"],
            "ratio": ev[0] / ev[-1],
            "eigenvalues": ev,
            **{k: rows[e][k] for k in ("train_loss", "train_err", "test_err")},
        }
        if e == last:
            row.update(density_nodes=res["density_nodes"], density_weights=res["density_weights"])
        curve.append(row)
    return {"path": str(run_dir), "summary": run["summary"], "curve": curve, "final": curve[-1]}


def landscapes(root: Path, P: dict[str, Any], *, measure: bool = True) -> dict[str, Any]:
    """{"<opt>_seed<s>": {"slice_1d": rows (, "slice_2d": rows for the first seed)},
    "interpolation": {"train": rows, "test": rows}}: ``deep_nets.eval_sharpness`` landscape and
    interpolate measures of the final weights on ``hessian["n_examples"]`` seeded examples."""
    n, (p1, p2), s0 = P["hessian"]["n_examples"], P["slice_points"], P["seeds"][0]
    out: dict[str, Any] = {}
    for o in OPTS:
        for s in P["seeds"]:
            ck = run_path(root, spectrum_spec(P, o, s)) / CHECKPOINT
            dims = ((1, p1), (2, p2)) if s == s0 else ((1, p1),)
            out[f"{o}_seed{s}"] = {
                f"slice_{dim}d": measured(
                    ck,
                    f"slice_{dim}d",
                    ["--measure", "landscape", "--dim", dim, "--points", p, "--n_examples", n],
                    measure=measure,
                )["rows"]
                for dim, p in dims
            }
    erm = run_path(root, spectrum_spec(P, "sgd", s0)) / CHECKPOINT
    ft = run_path(root, finetune_spec(P)) / CHECKPOINT
    out["interpolation"] = {
        split: measured(
            erm,
            f"interpolate_{split}",
            ["--measure", "interpolate", "--other_path", ft, "--points", 21, "--split", split]
            + ["--n_examples", n],
            measure=measure,
        )["rows"]
        for split in ("train", "test")
    }
    return out


def load_results(profile: str, results_dir: Path, *, measure: bool = False) -> dict[str, Any]:
    """{"runs": {opt: [spectrum_record per seed]}, "landscapes": landscapes(...), "root"} of a
    profile; without ``measure`` (the notebook) nothing is trained or measured: a missing run or
    measurement raises FileNotFoundError naming the stage's command."""
    P = PROFILES[profile]
    root = Path(results_dir) / FAMILY / profile
    for spec in spectrum_specs(P) + finetune_specs(P):
        if not is_finished(run_path(root, spec)):
            raise FileNotFoundError(
                f"no finished {FAMILY} run {run_path(root, spec)} (profile {profile}): run "
                f"`{STAGE_CMD}` (with --profile {profile} if not quick) first"
            )
    runs = {
        o: [
            spectrum_record(run_path(root, spectrum_spec(P, o, s)), P, measure=measure)
            for s in P["seeds"]
        ]
        for o in OPTS
    }
    return {"runs": runs, "landscapes": landscapes(root, P, measure=measure), "root": root}


# --------------------------------------------- Figure 3: m-sharpness of the deep-net runs
FIG3_TABLE = "msharpness_vs_error.csv"
DEEP_NETS_CMD = "python -m analysis.reproduce --only deep_nets"


def msharpness_vs_error(
    run_dirs: Sequence[str | Path],
    ms: Sequence[int] = (16, 128),
    rhos: Sequence[float] = (0.05, 0.1),
    *,
    kind: str = "worst",
    adaptive: bool = False,
    n_examples: int = 1024,
    steps: int = 20,
    seed: int = 0,
    error_key: str = "test_err_last",
    device: str = "cpu",
    vectorize: bool = False,
):
    """Figure 3's table: one row per (run, m, rho) with the run's m-sharpness on ``n_examples``
    seeded training examples and its test error (``test_error(summary, error_key)``), for deep_nets
    run directories (``deep_nets/eval_sharpness.load_run``). Returns a pandas DataFrame."""
    import pandas as pd

    from deep_nets.eval_sharpness import _examples
    from deep_nets.eval_sharpness import load_run as load_deep_run

    rows = []
    for d in run_dirs:
        run = load_deep_run(str(d), torch.device(device))
        summary = read_json(Path(run.run_dir) / "summary.json")
        x, y = _examples(run, "train", n_examples, seed)
        for m in ms:
            for rho in rhos:
                r = M.m_sharpness(
                    run.model,
                    F.cross_entropy,
                    x,
                    y,
                    m=m,
                    rho=rho,
                    kind=kind,
                    adaptive=adaptive,
                    steps=steps,
                    seed=seed,
                    error_fn=None,
                    vectorize=vectorize,
                )
                rows.append(
                    {
                        "run": str(d),
                        "m": m,
                        "rho": rho,
                        "sharpness": r["sharpness"],
                        "test_error": test_error(summary, error_key),
                    }
                )
    return pd.DataFrame(rows)


def test_error(summary: dict[str, Any], key: str = "test_err_last") -> float | None:
    """A run's test error: for the last weights (``test_err_last``) the rate on every scored
    test example (``summary["scored"]["last"]["test_err"]``, written by trainers that score the
    whole test set, e.g. mnist1d's 100 000 generated examples) when the run has it, else the
    summary's ``key`` (the metrics rows' test set)."""
    scored = (summary.get("scored") or {}).get("last") or {}
    if key == "test_err_last" and scored.get("test_err") is not None:
        return float(scored["test_err"])
    return summary.get(key)


def rank_correlation(df, x: str = "sharpness", y: str = "test_error", by=("m", "rho")):
    """Kendall's tau (tau-b) and Spearman's rank correlation between ``x`` and ``y`` within
    each group of ``by`` (the paper's claim: m-sharpness with small m correlates best with test
    error). Returns a DataFrame."""
    import pandas as pd

    out = []
    for key, g in df.groupby(list(by)):
        tau = g[x].corr(g[y], method="kendall") if len(g) > 1 else math.nan
        rs = g[x].corr(g[y], method="spearman") if len(g) > 1 else math.nan
        out.append(
            {
                **dict(zip(by, key if isinstance(key, tuple) else (key,))),
                "kendall_tau": tau,
                "spearman": rs,
                "n_runs": len(g),
            }
        )
    return pd.DataFrame(out)


def exact_spectrum(model: nn.Module, loss_fn, data, *, dtype=torch.float64) -> np.ndarray:
    """All eigenvalues (descending) of the exact Hessian (Figure 4: the ReLU family's ~300
    parameter networks, the diagonal nets): ``HessianOperator.dense`` + numpy ``eigvalsh``."""
    H = M.HessianOperator(model, loss_fn, data, dtype=dtype).dense().cpu().numpy()
    return np.linalg.eigvalsh((H + H.T) / 2)[::-1]


def deep_net_pool(results_dir: Path, profile: str) -> tuple[list[Path], str]:
    """The deep-net runs Figure 3 correlates: every finished run of the deep_nets stage's
    ``profile`` except those with label noise (another task), restricted to the most common
    task (data set, model, width, training fraction; the seminar's CNN is another task).
    Returns (run directories, a sentence stating the selection). Raises FileNotFoundError
    naming the command that makes the runs when there are none."""
    root = Path(results_dir) / "deep_nets" / profile / "runs"
    runs = [d for d in sorted(root.iterdir()) if is_finished(d)] if root.is_dir() else []
    if not runs:
        raise FileNotFoundError(
            f"Figure 3 needs the deep-net runs of profile {profile}: none finished under {root}; "
            f"run `{DEEP_NETS_CMD}` (with --profile {profile} if not quick) first"
        )
    tasks: dict[tuple, list[Path]] = {}
    noisy = 0
    for d in runs:
        c = read_json(d / "config.json")["config"]
        if float(c.get("p_label_noise") or 0) > 0:
            noisy += 1
            continue
        key = (c["dataset"], c["model"], c.get("model_width"), c.get("frac_train", 1.0))
        tasks.setdefault(key, []).append(d)
    if not tasks:
        raise FileNotFoundError(f"only label-noise runs under {root}: run `{DEEP_NETS_CMD}`")
    key, pool = max(tasks.items(), key=lambda kv: len(kv[1]))
    other = len(runs) - noisy - len(pool)
    note = (
        f"pool: {len(pool)} finished runs of the deep_nets {profile} profile on {key[0]} "
        f"({key[1]}, width {key[2]}, train fraction {key[3]}); left out: {noisy} with label "
        f"noise (another task), {other} of other tasks"
    )
    return pool, note


def fig3_table(results_dir: Path, profile: str) -> tuple[Any, str]:
    """Figure 3's table (one row per run, m, rho; ``msharpness_vs_error``), computed once per
    pool and settings and kept in ``results/measures/<profile>/msharpness_vs_error.csv``."""
    import pandas as pd

    st = FIG3_SETTINGS[profile]
    pool, note = deep_net_pool(results_dir, profile)
    path = Path(results_dir) / FAMILY / profile / FIG3_TABLE
    meta = {
        "runs": [str(p) for p in pool],
        "error": "scored last test_err, else test_err_last",  # the source of ``test_error``
        **{k: v for k, v in st.items() if k != "boot"},
    }
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and read_json(meta_path) == json_safe(meta):
        return pd.read_csv(path), note
    torch.set_num_threads(1)  # a shared machine: tiny models, one core
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the paper pool: ResNets
    df = msharpness_vs_error(
        pool,
        st["ms"],
        st["rhos"],
        n_examples=st["n_examples"],
        steps=st["steps"],
        vectorize=True,
        device=device,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, df.to_csv(index=False))
    atomic_write_json(meta_path, json_safe(meta))
    return df, note


def json_safe(d: dict) -> dict:
    """Tuples as lists (what a JSON round trip gives), for comparing stored settings."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_fig3_table(results_dir: Path, profile: str):
    """The stored Figure 3 table (no measuring: the notebook's entry point); FileNotFoundError
    naming the commands when the stage has not measured it."""
    import pandas as pd

    path = Path(results_dir) / FAMILY / profile / FIG3_TABLE
    if not path.exists():
        raise FileNotFoundError(
            f"no Figure 3 table at {path}: run `{DEEP_NETS_CMD}` and then `python -m "
            f"analysis.reproduce --only {FAMILY}` (profile {profile})"
        )
    return pd.read_csv(path)


def load_small_nets(results_dir: Path, profile: str) -> list[dict[str, Any]]:
    """The stored Figure 4 measurements of the diagonal nets (``figure4``)."""
    path = Path(results_dir) / FAMILY / profile / "small_nets.json"
    if not path.exists():
        raise FileNotFoundError(
            f"no Figure 4 results at {path}: run `python -m analysis.reproduce --only {FAMILY}`"
        )
    return read_json(path)["diagonal"]


# ---------------------------------------- Figure 4: exact lambda_max of small nets (GD vs SAM)
DIAG_ALGOS = {"gd": "GD", "nsam": "n-SAM", "1sam": "1-SAM"}
RELU_CMD = "python -m analysis.reproduce --only one_layer_relu_nets"


class DiagonalNet(nn.Module):
    """beta = u (.) v, prediction X beta: the diagonal linear network as a module, so that
    ``sharpness.measures`` measures it like any model."""

    def __init__(self, u: np.ndarray, v: np.ndarray) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.as_tensor(u, dtype=torch.float64).clone())
        self.v = nn.Parameter(torch.as_tensor(v, dtype=torch.float64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.u * self.v)


def half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The family's loss ||X beta - y||^2 / (2 n)."""
    return 0.5 * ((out - y) ** 2).mean()


def diagonal_hessian_closed_form(X: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray):
    """The Hessian of L(u, v) = ||X (u (.) v) - y||^2 / (2n) over w = (u, v), written out:
    with A = X^T X / n and g = X^T r / n (r = X beta - y),
    H = [[D_v A D_v, D_v A D_u + diag(g)], [D_u A D_v + diag(g), D_u A D_u]]."""
    n = X.shape[0]
    A, g = X.T @ X / n, X.T @ (X @ (u * v) - y) / n
    Dv, Du = np.diag(v), np.diag(u)
    off = Dv @ A @ Du + np.diag(g)
    return np.block([[Dv @ A @ Dv, off], [off.T, Du @ A @ Du]])


def diagonal_solutions(profile: str) -> list[dict[str, Any]]:
    """Simulate GD, n-SAM and 1-SAM (``DIAG``) for each seed with the family's simulator and
    measure each final (u, v): exact lambda_max (``exact_spectrum``: the dense Hessian over
    (u, v) from Hessian-vector products, float64), ||beta||_1, train and test loss."""
    from diagonal_linear_nets.simulator import RunSpec, SimConfig, make_problem, simulate

    seeds = DIAG_SEEDS[profile]
    rho_suite = {"gd": 0.0, "nsam": DIAG["rho"], "1sam": 2 * DIAG["rho"]}
    runs = [
        RunSpec(a, rho=rho_suite[a], alpha=DIAG["alpha"], gamma=DIAG["gamma"], seed=s)
        for s in seeds
        for a in DIAG_ALGOS
    ]
    cfg = SimConfig(n=DIAG["n"], d=DIAG["d"], iters=DIAG["iters"])
    res = simulate(runs, cfg, [DIAG["iters"]])
    out = []
    for i, r in enumerate(runs):
        P = make_problem(cfg.n, cfg.d, cfg.sparsity, cfg.n_test, cfg.noise, r.seed)
        net = DiagonalNet(res.u[i], res.v[i])
        ev = exact_spectrum(net, half_mse, (P.X, P.y))
        out.append(
            {
                "algo": r.algo,
                "seed": r.seed,
                "rho_suite": r.rho,
                "lambda_max": float(ev[0]),
                "l1": float(np.abs(res.beta[i]).sum()),
                "train_loss": float(res.train_loss[i, -1]),
                "test_loss": float(res.test_loss[i, -1]),
                "diverged": res.diverged_at[i] is not None,
                "u": res.u[i].tolist(),
                "v": res.v[i].tolist(),
            }
        )
    return out


def relu_lambda_max(results_dir: Path, profile: str):
    """The ReLU family's exp 1 runs (``analysis.one_layer_relu_nets.exp1_frame``: kinks and the
    exact lambda_max it already stores per run), or None when its stage has not run."""
    from analysis import one_layer_relu_nets as relu

    if not (relu.run_dir(results_dir, profile, "exp1_main") / "summary.json").exists():
        return None
    return relu.exp1_frame(Path(results_dir), profile)


def small_nets(results_dir: Path, profile: str) -> list[dict[str, Any]]:
    """``diagonal_solutions(profile)``, kept in ``results/measures/<profile>/small_nets.json``
    with its settings (simulated again when ``DIAG`` or the seeds change)."""
    path = Path(results_dir) / FAMILY / profile / "small_nets.json"
    key = {"setting": DIAG, "seeds": DIAG_SEEDS[profile]}
    stored = read_json(path) if path.exists() else None
    if stored is None or stored.get("key") != json.loads(json.dumps(key)):
        stored = {"key": key, "diagonal": diagonal_solutions(profile)}
        atomic_write_json(path, stored)
    return stored["diagonal"]
