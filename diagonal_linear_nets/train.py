"""Train diagonal linear networks with GD, SGD, n-SAM, 1-SAM, m-SAM: one batched grid per call.

    python -m diagonal_linear_nets.train --algo gd nsam 1sam --rho 0.01 0.1 --out_dir runs/demo
    python -m diagonal_linear_nets.train --algo gd nsam 1sam --gamma 0.5 nsam=0.333 \\
        --rho 0.1 --rho_convention original --iters 10001 --out_dir runs/notebook_grid

Every combination of (--algo x --rho x --alpha x --seeds) is one run; GD and SGD ignore --rho (one
run each per alpha and seed; sgd=RHO makes SGD mini-batch SAM). ALGO=VALUE in --rho or --gamma
gives one algorithm its own values. rho uses the suite's convention (``simulator`` docstring): it
multiplies the gradient of ||X_c beta - y_c||^2 / (2m); the original notebook's 1-SAM rho is half
of ours. Writes the common run format: config.json, metrics.jsonl (one row per run and logged
iteration: train_loss, test_loss, l1), summary.json (status "finished"; per run: final beta,
divergence, alpha_inf, theory prediction with --theory).

Checkpoints and Ctrl-C: the whole grid's state (u, v of every run, iteration, SGD streams,
divergence, the metrics so far) is saved to checkpoint.npz every --checkpoint_every seconds
(atomically; numpy arrays only, read back without pickle). Ctrl-C saves it at the end of the
current chunk of steps (< 1 s) and writes summary.json with status "interrupted" (exit 130);
--stop_after_iter N does the same at the first chunk end >= N with status "stopped".
--resume continues from the checkpoint with the same flags, bit for bit as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from diagonal_linear_nets.simulator import (
    ALGOS,
    ENGINES,
    PARAMS,
    SWITCHES,
    RunSpec,
    SimConfig,
    log_schedule,
    make_problem,
    simulate,
)
from diagonal_linear_nets.theory import predict_interpolator, relative_distance
from suite.cli import (
    GracefulInterrupt,
    available_memory,
    common_parser,
    finite_float,
    finite_or_none,
    run_dir_flags_error,
)
from suite.rundir import (
    RunDirError,
    atomic_write_bytes,
    config_hash,
    create_run_dir,
    read_json,
    run_dir_lock,
    to_json,
)

CHECKPOINT = "checkpoint.npz"
EXIT_INTERRUPTED = 130
# TrainConfig fields that say how or where to run, not what is computed: left out of config.json's
# "config" (the run's identity, compared by --resume and by suite.launch). out_dir among them: the
# same run reached by another spelling of its path (or a copied results tree) is the same run.
RUNTIME_FIELDS = ("out_dir", "overwrite", "resume", "checkpoint_every", "stop_after_iter")


@dataclass
class TrainConfig:
    """Everything ``train`` needs (the CLI only builds this). ``rho_per_algo`` / ``gamma_per_algo``
    override ``rho`` / ``gamma`` for one algorithm (the original notebook runs n-SAM at another
    step size than GD and 1-SAM in its grid); ``rho_convention="original"`` reads 1-SAM's rho in
    the original code's convention (half of ours, ``simulator`` docstring)."""

    out_dir: str
    algo: list[str] = field(default_factory=lambda: ["gd", "nsam", "1sam"])
    rho: list[float] = field(default_factory=lambda: [0.1])
    rho_per_algo: dict[str, list[float]] = field(default_factory=dict)
    rho_convention: str = "suite"
    alpha: list[float] = field(default_factory=lambda: [0.1])
    gamma: float = 0.167
    gamma_per_algo: dict[str, float] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    sgd_seed: int | None = None
    sgd_skip: int = 0
    m: int | None = None
    batch_size: int = 1
    n: int = 20
    d: int = 30
    sparsity: int = 3
    n_test: int = 1000
    noise: float = 0.0
    param: str = "uv"
    normalize: bool = False
    iters: int = 10_000
    log_points: int = 200
    switch: str = "none"
    switch_at: int = 0
    wd: float = 0.0
    balancedness: float = 0.0
    normalized_gd: bool = False
    thresholds: list[int] = field(default_factory=list)
    loss_derivative_only: bool = False
    theory: bool = False
    engine: str = "auto"
    # how to run (RUNTIME_FIELDS), not part of the experiment:
    overwrite: bool = False  # replace a run already in out_dir
    resume: bool = False  # continue the run in out_dir from its checkpoint
    checkpoint_every: float = 30.0  # seconds between checkpoints (0: after every chunk)
    stop_after_iter: int | None = None  # stop with a checkpoint at the first chunk end >= this

    def rhos(self, algo: str) -> list[float]:
        """The suite-convention rho values of ``algo`` (GD: none; SGD: none unless given)."""
        if algo == "gd" or (algo == "sgd" and "sgd" not in self.rho_per_algo):
            return [0.0]
        vals = self.rho_per_algo.get(algo, self.rho)
        k = 2.0 if (self.rho_convention == "original" and algo == "1sam") else 1.0
        return [k * r for r in vals]

    def runs(self) -> list[RunSpec]:
        out = []
        for algo, alpha, seed in itertools.product(self.algo, self.alpha, self.seeds):
            for rho in self.rhos(algo):
                out.append(
                    RunSpec(
                        algo=algo,
                        rho=rho,
                        alpha=alpha,
                        gamma=self.gamma_per_algo.get(algo, self.gamma),
                        seed=seed,
                        m=self.m if algo in ("msam", "sgd") else None,
                        batch_size=self.batch_size,
                        switch=self.switch if rho else "none",
                        switch_at=self.switch_at,
                        sgd_seed=self.sgd_seed,
                        sgd_skip=self.sgd_skip,
                        wd=self.wd,
                        balancedness=self.balancedness,
                        normalized_gd=self.normalized_gd and algo == "gd",
                        thresholds=tuple(self.thresholds),
                        loss_derivative_only=self.loss_derivative_only and rho > 0,
                    )
                )
        return out

    def sim_config(self) -> SimConfig:
        """The grid-wide settings: this config's fields that SimConfig also has."""
        return SimConfig(
            **{f.name: getattr(self, f.name) for f in fields(SimConfig) if hasattr(self, f.name)}
        )


INTERPOLATED = 1e-8  # a run "interpolates" when its final train loss <= this x its initial loss


def stored_config(config: TrainConfig) -> dict:
    """The flags that identify the run: what config.json stores under "config" (JSON values)."""
    flags = {k: v for k, v in asdict(config).items() if k not in RUNTIME_FIELDS}
    return json.loads(to_json(flags))


def changed_flags(stored: dict, config: TrainConfig) -> list[str]:
    """ "--flag OLD (now NEW)" for every flag of ``config`` that differs from the stored run's."""
    new = stored_config(config)
    keys = sorted(set(stored) | set(new))
    return [
        f"--{k} {stored.get(k)!r} (now {new.get(k)!r})" for k in keys if stored.get(k) != new.get(k)
    ]


def save_checkpoint(path: Path, snapshot: dict[str, np.ndarray], identity: str) -> None:
    """The simulator's snapshot as an .npz (arrays only), written atomically."""
    buf = io.BytesIO()
    np.savez(buf, config_hash=np.array(identity), **snapshot)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, identity: str) -> dict[str, np.ndarray]:
    """Read a checkpoint without unpickling anything; refuse one of another config."""
    try:
        with np.load(path, allow_pickle=False) as z:
            snap = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - not an .npz of plain arrays (or torn): name it
        raise RunDirError(
            f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:200]}); it is "
            "refused: delete it (the run restarts) or pass --overwrite"
        ) from None
    if str(snap.pop("config_hash", "")) != identity:
        raise ValueError(
            f"{path} belongs to another config than {path.parent / 'config.json'}: delete it "
            "(the run restarts) or pass --overwrite"
        )
    return snap


def _finished(summary_path: Path) -> bool:
    """Whether the run's summary says it finished; an unreadable summary does not (the run is
    resumed or retrained, and the summary rewritten)."""
    if not summary_path.exists():
        return False
    try:
        return read_json(summary_path, want_dict=True).get("status", "finished") == "finished"
    except (OSError, ValueError):
        return False


def data_bytes(config: TrainConfig) -> int:
    """About the peak memory of a grid in bytes: float64 n x d and n_test x d per seed, times
    2.5 (the sampling's temporaries, the tensor copies) plus one per run of the seed (its
    per-example buffers). Measured at n = 10^6, d = 30: GD alone 2.3x, GD + n-SAM + 1-SAM 4.5x."""
    seeds = len(set(config.seeds))
    per_seed = len(config.runs()) / seeds
    return int(8 * config.d * (config.n + config.n_test) * seeds * (2.5 + per_seed))


def train(config: TrainConfig) -> Path:
    """Run the grid of ``config`` and write its run directory; returns its path.

    ``config.resume``: continue the run in ``out_dir`` from its checkpoint (a ValueError names
    the flags that differ from the stored run's; a finished run is left as it is; a run without
    a checkpoint starts over). summary.json's "status" is "finished", "interrupted" (Ctrl-C) or
    "stopped" (``stop_after_iter``); the last two leave checkpoint.npz for ``resume``.
    The run directory's lock (``suite.rundir.run_dir_lock``) is held throughout: another live
    writer is a ``RunDirBusyError`` naming its PID."""
    with run_dir_lock(config.out_dir):
        return _train(config)


def _train(config: TrainConfig) -> Path:
    runs = config.runs()
    cfg = config.sim_config()
    for r in runs:
        r.validate(cfg.n)
    cfg.validate()
    flags = stored_config(config)
    identity = config_hash(flags)
    out = Path(config.out_dir)
    ckpt = out / CHECKPOINT
    resume_from = None
    if config.resume and (out / "config.json").exists():
        stored = read_json(out / "config.json", want_dict=True).get("config", {})
        diff = changed_flags({k: v for k, v in stored.items() if k not in RUNTIME_FIELDS}, config)
        if diff:
            raise ValueError(
                f"--resume: the run in {out} was started with different flags: {', '.join(diff)}"
                "; pass the same flags, or --overwrite to replace it"
            )
        if _finished(out / "summary.json"):
            print(f"{out} is already finished: nothing to resume", file=sys.stderr)
            return out
        if ckpt.exists():
            resume_from = load_checkpoint(ckpt, identity)
    rd = create_run_dir(out, flags, resume=config.resume, overwrite=config.overwrite)
    if config.overwrite:
        ckpt.unlink(missing_ok=True)
    if config.resume:
        # metrics.jsonl keeps exactly the rows logged up to the checkpoint (a crash or a second
        # Ctrl-C may have logged more, a run without a checkpoint starts over)
        keep = int(resume_from["j"]) * len(runs) if resume_from is not None else 0
        if len(rd.metrics()) < keep:
            raise ValueError(
                f"{rd.metrics_path} has fewer rows than its checkpoint ({keep}): the run "
                "directory was edited; rerun with --overwrite"
            )
        rd.truncate_metrics(keep)
        (out / "summary.json").unlink(missing_ok=True)
        if resume_from is not None:
            print(f"resuming {out} at iteration {int(resume_from['t'])}", file=sys.stderr)
    logs = log_schedule(config.iters, config.log_points)
    if config.switch != "none":  # the state at the switch is part of the experiment
        logs = np.union1d(logs, [config.switch_at])

    # Metric rows are appended in batches, synced to disk before each checkpoint and at the end
    # (one fsync per batch, not per row: a grid logs runs x log points rows); a crash loses
    # only rows after the last checkpoint, which a resume recomputes anyway.
    pending: list[dict] = []

    def stream(t, row):
        for i, r in enumerate(runs):
            pending.append(
                {
                    "iter": int(t),
                    "run": i,
                    "label": r.label(),
                    "algo": r.algo,
                    "rho": r.rho,
                    "alpha": r.alpha,
                    "seed": r.seed,
                    "train_loss": finite_or_none(float(row["train_loss"][i])),
                    "test_loss": finite_or_none(float(row["test_loss"][i])),
                    "l1": finite_or_none(float(row["l1"][i])),
                }
            )

    last_save = time.monotonic()

    def on_chunk(t: int, snapshot) -> bool:
        """Save a checkpoint when one is due or a stop is asked for; True: stop here."""
        nonlocal last_save
        if t >= config.iters:
            return False
        stop = intr.requested or (
            config.stop_after_iter is not None and t >= config.stop_after_iter
        )
        if stop or time.monotonic() - last_save >= config.checkpoint_every:
            rd.log_many(pending)  # the checkpoint's metrics are on disk before it
            pending.clear()
            save_checkpoint(ckpt, snapshot(), identity)
            last_save = time.monotonic()
        return stop

    with GracefulInterrupt() as intr:
        res = simulate(
            runs,
            cfg,
            logs,
            track_alpha=config.theory,
            callback=stream,
            on_chunk=on_chunk,
            resume_from=resume_from,
        )
    rd.log_many(pending)
    if res.stopped_at is not None:
        status = "interrupted" if intr.requested else "stopped"
        rd.write_summary(
            {
                "status": status,
                "iter": res.stopped_at,
                "iters": config.iters,
                "checkpoint": CHECKPOINT,
                "message": f"{status} at iteration {res.stopped_at} of {config.iters}; "
                "continue with the same flags and --resume",
            }
        )
        print(
            f"{status} at iteration {res.stopped_at} of {config.iters}: checkpoint saved to "
            f"{ckpt}; continue with the same flags and --resume",
            file=sys.stderr,
        )
        return rd.path
    problems = {}
    per_run = []
    for i, r in enumerate(runs):
        if r.seed not in problems:
            problems[r.seed] = make_problem(
                cfg.n, cfg.d, cfg.sparsity, cfg.n_test, cfg.noise, r.seed
            )
        P = problems[r.seed]
        te = res.test_loss[i]
        loss0 = initial_loss(P.y.numpy())
        status = run_status(res.diverged_at[i], float(res.train_loss[i, -1]), loss0)
        entry = asdict(r) | {
            "label": r.label(),
            "status": status,
            "diverged_at": res.diverged_at[i],
            "state_at": res.state_at[i],
            "initial_train_loss": loss0,
            "final_train_loss": finite_or_none(float(res.train_loss[i, -1])),
            "final_test_loss": finite_or_none(float(te[-1])),
            "best_test_loss": finite_or_none(float(np.nanmin(te)))
            if np.isfinite(te).any()
            else None,
            "final_l1": finite_or_none(float(res.l1[i, -1])),
            # a diverged run: its last finite state (the iteration is diverged_at)
            "beta": res.beta[i].tolist(),
            "u": res.u[i].tolist(),
            "v": res.v[i].tolist(),
            # sqrt(u^2 - v^2) of the final state: a conserved-quantity diagnostic, not a
            # prediction (predicting from it would be circular)
            "alpha_inf_exact": res.alpha_inf_exact[i].tolist(),
        }
        if config.theory:
            entry["alpha_inf_flow"] = res.alpha_inf_flow[i].tolist()
        # The prediction is the limit of an interpolating run: never compare to a run that did
        # not interpolate (diverged or no convergence).
        if config.theory and status == "interpolated":
            try:
                pred = predict_interpolator(P.X.numpy(), P.y.numpy(), res.alpha_inf_flow[i])
            except (ValueError, RuntimeError) as err:
                entry["theory_error"] = str(err)
            else:
                entry["rel_dist_pred"] = relative_distance(res.beta[i], pred)
                entry["beta_pred"] = pred.tolist()
                entry["l1_pred"] = float(np.abs(pred).sum())
        per_run.append(entry)
    rd.write_summary(
        {
            "status": "finished",
            "param": cfg.param,
            "normalize": cfg.normalize,
            "engine": res.engine,
            "runs": per_run,
        }
    )
    ckpt.unlink(missing_ok=True)  # the summary holds the final state
    return rd.path


def initial_loss(y: np.ndarray) -> float:
    """The training loss at initialization (beta_0 = 0 in both parametrizations): ||y||^2/(2n)."""
    return float(0.5 * np.mean(np.asarray(y) ** 2))


def run_status(diverged_at: int | None, final_train_loss: float, loss0: float) -> str:
    """ "diverged" (stopped: loss above the threshold or not finite), "interpolated" (final train
    loss <= INTERPOLATED x the initial loss) or "no convergence" (finite, not interpolating)."""
    if diverged_at is not None or not np.isfinite(final_train_loss):
        return "diverged"
    return "interpolated" if final_train_loss <= INTERPOLATED * loss0 else "no convergence"


def _per_algo(tokens: list[str], flag: str) -> tuple[list[float], dict[str, list[float]]]:
    """Split ``--rho 0.1 0.3 1sam=0.2 1sam=0.6`` into the shared values and per-algorithm ones."""
    shared: list[float] = []
    own: dict[str, list[float]] = {}
    for tok in tokens:
        algo, sep, val = tok.rpartition("=")
        if sep and algo not in ALGOS:
            raise argparse.ArgumentTypeError(
                f"{flag}: {tok!r}: the part before '=' must be one of {ALGOS}"
            )
        try:
            x = finite_float(val)
        except argparse.ArgumentTypeError as e:  # parsed outside argparse: name the flag here
            raise argparse.ArgumentTypeError(f"{flag}: {e}") from None
        (own.setdefault(algo, []) if sep else shared).append(x)
    return shared, own


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diagonal_linear_nets.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parser()],
    )
    a = p.add_argument
    a(
        "--algo",
        type=str,
        nargs="+",
        choices=ALGOS,
        default=["gd", "nsam", "1sam"],
        help="algorithms (default: gd nsam 1sam); msam needs --m, sgd uses --batch_size",
    )
    a(
        "--rho",
        type=str,
        nargs="+",
        default=["0.1"],
        help="SAM radii >= 0, shared by the SAM algorithms; ALGO=VALUE gives one algorithm its "
        "own list, e.g. --rho 0.1 1sam=0.2 1sam=0.6; sgd=VALUE makes SGD mini-batch SAM "
        "(default: 0.1)",
    )
    a(
        "--rho_convention",
        choices=("suite", "original"),
        default="suite",
        help="suite: rho multiplies the gradient of the chunk's loss; original: 1-SAM's rho as "
        "in the original code (x2 here) (default: suite)",
    )
    a(
        "--alpha",
        type=finite_float,
        nargs="+",
        default=[0.1],
        help="initialization scales alpha (u0 = alpha, v0 = 0); > 0 (default: 0.1)",
    )
    a(
        "--gamma",
        type=str,
        nargs="+",
        default=["0.167"],
        help="step size > 0; ALGO=VALUE for one algorithm, e.g. --gamma 0.5 nsam=0.333 "
        "(default: 0.167)",
    )
    a(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="data seeds, one data set each (default: --seed)",
    )
    a(
        "--sgd_seed",
        type=int,
        default=None,
        help="seed of SGD's example draws (default: continue the data seed's numpy stream, as "
        "the original notebook's global np.random)",
    )
    a(
        "--sgd_skip",
        type=int,
        default=0,
        help="discard this many draws of the SGD stream first (default: 0)",
    )
    a("--m", type=int, default=None, help="m-SAM chunk size, must divide --n (default: none)")
    a("--batch_size", type=int, default=1, help="SGD batch size in [1, n] (default: 1)")
    a("--n", type=int, default=20, help="training examples (default: 20)")
    a("--d", type=int, default=30, help="dimension (default: 30)")
    a("--sparsity", type=int, default=3, help="nonzeros of beta*, in [1, d] (default: 3)")
    a("--n_test", type=int, default=1000, help="test examples (default: 1000)")
    a(
        "--noise",
        type=finite_float,
        default=0.0,
        help="label noise std sigma >= 0 (default: 0)",
    )
    a(
        "--param",
        type=str,
        choices=PARAMS,
        default="uv",
        help="uv: beta = u*v (u0=alpha, v0=0); u2v2: beta = u^2 - v^2 (u0=v0=alpha) (default: uv)",
    )
    a(
        "--normalize",
        action="store_true",
        help="normalized ascent rho g/||g|| (default: unnormalized rho g, as in the original)",
    )
    a("--iters", type=int, default=10_000, help="iterations (steps) (default: 10000)")
    a(
        "--log_points",
        type=int,
        default=200,
        help="log-spaced logging points after the first 100 steps (default: 200)",
    )
    a(
        "--switch",
        type=str,
        choices=SWITCHES,
        default="none",
        help="erm_to_sam: rho = 0 before --switch_at; sam_to_erm: rho = 0 from it (default: none)",
    )
    a("--switch_at", type=int, default=0, help="iteration of the switch (default: 0)")
    a(
        "--wd",
        type=finite_float,
        default=0.0,
        help="weight decay >= 0 as in the original GD: w -= wd*w each step (default: 0)",
    )
    a(
        "--balancedness",
        type=finite_float,
        default=0.0,
        help="the original GD's balancedness term (default: 0)",
    )
    a(
        "--normalized_gd",
        action="store_true",
        help="GD runs divide grad_u and grad_v by their norms, as the original (default: off)",
    )
    a(
        "--thresholds",
        type=int,
        nargs="+",
        default=[],
        help="halve gamma after these 0-based steps, as the original (default: none)",
    )
    a(
        "--loss_derivative_only",
        action="store_true",
        help="SAM runs use the original's 1-SAM 'loss derivative only' variant (default: off)",
    )
    a(
        "--theory",
        action="store_true",
        help="track alpha_inf and solve the hyperbolic-entropy prediction (default: off)",
    )
    a(
        "--resume",
        action="store_true",
        help="continue the run in --out_dir from its checkpoint (same flags; a finished run is "
        "left as it is) (default: off)",
    )
    a(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out_dir (default: refuse)",
    )
    a(
        "--checkpoint_every",
        type=finite_float,
        default=30.0,
        help="seconds between checkpoints of the grid's state; 0: after every chunk of steps "
        "(default: 30)",
    )
    a(
        "--stop_after_iter",
        type=int,
        default=None,
        help="stop with a checkpoint (status 'stopped') at the first chunk end >= this "
        "iteration, as a Ctrl-C does; continue with --resume (default: run to --iters)",
    )
    a(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="c: fused C kernel (compiled once, ~0.4 s); torch: reference PyTorch steps (slow); "
        "auto: c when a C compiler exists (default: auto)",
    )
    return p


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        rho, rho_own = _per_algo(args.rho, "--rho")
        gam, gam_own = _per_algo(args.gamma, "--gamma")
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if any(len(v) != 1 for v in gam_own.values()) or len(gam) > 1:
        p.error("--gamma takes one shared value and at most one ALGO=VALUE per algorithm")
    if not rho and not all(a in rho_own for a in args.algo if a not in ("gd", "sgd")):
        p.error("--rho: give shared values or ALGO=VALUE for every SAM algorithm")
    if any(r < 0 for r in rho + [x for v in rho_own.values() for x in v]):
        p.error("--rho must be >= 0 (the ascent radius); e.g. --rho 0.01 0.1")
    if any(g <= 0 for g in gam + [v[0] for v in gam_own.values()]):
        p.error("--gamma must be > 0 (the step size)")
    if any(a <= 0 for a in args.alpha):
        p.error("--alpha must be > 0 (the initialization scale)")
    if min(args.n, args.d, args.n_test) < 1:
        p.error("--n, --d and --n_test must be >= 1")
    if not (1 <= args.sparsity <= args.d):
        p.error(f"--sparsity must be in [1, --d={args.d}] (got {args.sparsity})")
    if "msam" in args.algo and (args.m is None or args.m < 1 or args.n % args.m):
        p.error(f"--m must divide --n={args.n} for --algo msam (got --m {args.m})")
    if "sgd" in args.algo and not (1 <= args.batch_size <= args.n):
        p.error(f"--batch_size must be in [1, --n={args.n}] (got {args.batch_size})")
    if args.sgd_skip < 0:
        p.error("--sgd_skip must be >= 0")
    seeds = {"--seed": [args.seed], "--seeds": args.seeds or [], "--sgd_seed": [args.sgd_seed]}
    for flag, vals in seeds.items():
        if any(v is not None and not 0 <= v < 2**32 for v in vals):
            p.error(f"{flag} must be in [0, 2**32 - 1] (numpy RandomState seeds)")
    if args.wd < 0:
        p.error(f"--wd must be >= 0 (the original GD's w -= wd * w; got {args.wd})")
    if args.noise < 0:
        p.error("--noise must be >= 0")
    if args.iters < 1:
        p.error("--iters must be >= 1")
    if args.log_points < 2:
        p.error("--log_points must be >= 2")
    if args.switch != "none" and not (0 <= args.switch_at <= args.iters):
        p.error(f"--switch_at must be in [0, --iters={args.iters}]")
    if args.device not in (None, "cpu"):
        p.error("--device: the simulator runs on cpu only (float64 on tiny tensors)")
    if args.normalized_gd and "gd" not in args.algo:
        p.error("--normalized_gd applies to --algo gd (the original's GD option)")
    if args.checkpoint_every < 0:
        p.error("--checkpoint_every must be >= 0 (seconds)")
    if args.stop_after_iter is not None and args.stop_after_iter < 1:
        p.error("--stop_after_iter must be >= 1")
    out = args.out_dir or f"runs/diag_{'_'.join(args.algo)}_seed{args.seed}"
    if problem := run_dir_flags_error(out, args.resume, args.overwrite):
        p.error(problem)
    config = TrainConfig(
        out_dir=out,
        algo=args.algo,
        rho=rho,
        rho_per_algo=rho_own,
        rho_convention=args.rho_convention,
        alpha=args.alpha,
        gamma=gam[0] if gam else 0.167,
        gamma_per_algo={k: v[0] for k, v in gam_own.items()},
        seeds=args.seeds if args.seeds is not None else [args.seed],
        sgd_seed=args.sgd_seed,
        sgd_skip=args.sgd_skip,
        m=args.m,
        batch_size=args.batch_size,
        n=args.n,
        d=args.d,
        sparsity=args.sparsity,
        n_test=args.n_test,
        noise=args.noise,
        param=args.param,
        normalize=args.normalize,
        iters=args.iters,
        log_points=args.log_points,
        switch=args.switch,
        switch_at=args.switch_at,
        wd=args.wd,
        balancedness=args.balancedness,
        normalized_gd=args.normalized_gd,
        thresholds=args.thresholds,
        loss_derivative_only=args.loss_derivative_only,
        theory=args.theory,
        engine=args.engine,
        overwrite=args.overwrite,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        stop_after_iter=args.stop_after_iter,
    )
    need, have = data_bytes(config), available_memory()
    if have is not None and need > have:  # refused before allocating (else the OOM killer)
        fit = int(args.n * have / need) - 1
        p.error(
            f"--n {args.n} --d {args.d} --n_test {args.n_test} ({len(config.runs())} runs): the "
            f"grid needs about {need / 2**30:.1f} GiB of memory and {have / 2**30:.1f} GiB is "
            f"available; with these flags at most about --n {max(fit, 0)} fits"
        )
    return config


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    try:
        path = train(config)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint stays
        print(
            f"interrupted: {config.out_dir} keeps its last checkpoint; continue with the same "
            "flags and --resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except ValueError as e:  # e.g. --resume with other flags than the stored run's
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. --engine c without a C compiler
        print(f"error: --engine: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, an unwritable file: the message names the file
        print(f"error: {e}", file=sys.stderr)
        return 1
    status = read_json(path / "summary.json", want_dict=True).get("status")
    if status == "interrupted":
        return EXIT_INTERRUPTED
    print(f"wrote {path}" + (f" ({status})" if status != "finished" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
