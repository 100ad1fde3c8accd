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
    cli_fields,
    common_parser,
    dataclass_parser,
    field_errors,
    finite_float,
    finite_or_none,
    flag,
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

    out_dir: str  # --out_dir of suite.cli.common_parser (default: runs/diag_<algos>_seed<seed>)
    algo: list[str] = flag(
        help="algorithms; msam needs --m, sgd uses --batch_size",
        choices=ALGOS,
        default_factory=lambda: ["gd", "nsam", "1sam"],
    )
    rho: list[float] = flag(
        help="SAM radii >= 0, shared by the SAM algorithms; ALGO=VALUE gives one algorithm its "
        "own list, e.g. --rho 0.1 1sam=0.2 1sam=0.6; sgd=VALUE makes SGD mini-batch SAM",
        parse=str,
        cli_default=["0.1"],
        default_factory=lambda: [0.1],
    )
    rho_per_algo: dict[str, list[float]] = field(default_factory=dict)  # from --rho ALGO=VALUE
    rho_convention: str = flag(
        "suite",
        help="suite: rho multiplies the gradient of the chunk's loss; original: 1-SAM's rho as "
        "in the original code (x2 here)",
        choices=("suite", "original"),
    )
    alpha: list[float] = flag(
        help="initialization scales alpha (u0 = alpha, v0 = 0); > 0",
        gt=0,
        why="the initialization scale",
        default_factory=lambda: [0.1],
    )
    gamma: float = flag(
        0.167,
        help="step size > 0; ALGO=VALUE for one algorithm, e.g. --gamma 0.5 nsam=0.333",
        parse=str,
        nargs="+",
        cli_default=["0.167"],
        gt=0,
        why="the step size",
    )
    gamma_per_algo: dict[str, float] = field(default_factory=dict)  # from --gamma ALGO=VALUE
    seeds: list[int] = flag(
        help="data seeds, one data set each",
        cli_default=None,
        default_text="--seed",
        ge=0,
        lt=2**32,
        why="numpy RandomState seeds",
        default_factory=lambda: [0],
    )
    sgd_seed: int | None = flag(
        None,
        help="seed of SGD's example draws",
        default_text="continue the data seed's numpy stream, as the original notebook's global "
        "np.random",
        ge=0,
        lt=2**32,
        why="numpy RandomState seeds",
    )
    sgd_skip: int = flag(0, help="discard this many draws of the SGD stream first", ge=0)
    m: int | None = flag(None, help="m-SAM chunk size, must divide --n")
    batch_size: int = flag(1, help="SGD batch size in [1, n]")
    n: int = flag(20, help="training examples", ge=1)
    d: int = flag(30, help="dimension", ge=1)
    sparsity: int = flag(3, help="nonzeros of beta*, in [1, d]")
    n_test: int = flag(1000, help="test examples", ge=1)
    noise: float = flag(0.0, help="label noise std sigma >= 0", ge=0)
    param: str = flag(
        "uv",
        help="uv: beta = u*v (u0=alpha, v0=0); u2v2: beta = u^2 - v^2 (u0=v0=alpha)",
        choices=PARAMS,
    )
    normalize: bool = flag(
        False,
        help="normalized ascent rho g/||g||",
        default_text="unnormalized rho g, as in the original",
    )
    iters: int = flag(10_000, help="iterations (steps)", ge=1)
    log_points: int = flag(200, help="log-spaced logging points after the first 100 steps", ge=2)
    switch: str = flag(
        "none",
        help="erm_to_sam: rho = 0 before --switch_at; sam_to_erm: rho = 0 from it",
        choices=SWITCHES,
    )
    switch_at: int = flag(0, help="iteration of the switch")
    wd: float = flag(
        0.0,
        help="weight decay >= 0 as in the original GD: w -= wd*w each step",
        ge=0,
        why="the original GD's w -= wd * w",
    )
    balancedness: float = flag(0.0, help="the original GD's balancedness term")
    normalized_gd: bool = flag(
        False, help="GD runs divide grad_u and grad_v by their norms, as the original"
    )
    thresholds: list[int] = flag(
        help="halve gamma after these 0-based steps, as the original", default_factory=list
    )
    loss_derivative_only: bool = flag(
        False, help="SAM runs use the original's 1-SAM 'loss derivative only' variant"
    )
    theory: bool = flag(False, help="track alpha_inf and solve the hyperbolic-entropy prediction")
    engine: str = flag(
        "auto",
        help="c: fused C kernel (compiled once, ~0.4 s); torch: reference PyTorch steps (slow); "
        "auto: c when a C compiler exists",
        choices=ENGINES,
    )
    # how to run (RUNTIME_FIELDS), not part of the experiment:
    overwrite: bool = flag(
        False, help="replace the run already in --out_dir", default_text="refuse"
    )
    resume: bool = flag(
        False,
        help="continue the run in --out_dir from its checkpoint (same flags; a finished run is "
        "left as it is)",
    )
    checkpoint_every: float = flag(
        30.0,
        help="seconds between checkpoints of the grid's state; 0: after every chunk of steps",
        ge=0,
        why="seconds",
    )
    stop_after_iter: int | None = flag(
        None,
        help="stop with a checkpoint (status 'stopped') at the first chunk end >= this "
        "iteration, as a Ctrl-C does; continue with --resume",
        default_text="run to --iters",
        ge=1,
    )

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
    """The command line, generated from ``TrainConfig``'s :func:`suite.cli.flag` fields, plus
    ``--seed``, ``--device`` and ``--out_dir`` of ``suite.cli.common_parser``."""
    return dataclass_parser(
        TrainConfig,
        prog="python -m diagonal_linear_nets.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parser()],
    )


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``argv`` into a checked ``TrainConfig``; bad input exits 2 with a message naming the
    flag (argparse's ``parser.error``). The per-field rules (finite, bounds, choices) are the
    fields' own (``suite.cli.field_errors``); the ones between flags are checked here."""
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
    if any(v[0] <= 0 for v in gam_own.values()):
        p.error("--gamma must be > 0 (the step size)")
    if not 0 <= args.seed < 2**32:
        p.error("--seed must be in [0, 2**32 - 1] (numpy RandomState seeds)")
    if args.device not in (None, "cpu"):
        p.error("--device: the simulator runs on cpu only (float64 on tiny tensors)")
    flags = {f.name: getattr(args, f.name) for f in cli_fields(TrainConfig)}
    config = TrainConfig(
        **flags
        | dict(
            out_dir=args.out_dir or f"runs/diag_{'_'.join(args.algo)}_seed{args.seed}",
            rho=rho,
            rho_per_algo=rho_own,
            gamma=gam[0] if gam else TrainConfig.gamma,
            gamma_per_algo={k: v[0] for k, v in gam_own.items()},
            seeds=args.seeds if args.seeds is not None else [args.seed],
        )
    )
    if problem := field_errors(config) or flags_error(config):
        p.error(problem)
    need, have = data_bytes(config), available_memory()
    if have is not None and need > have:  # refused before allocating (else the OOM killer)
        fit = int(config.n * have / need) - 1
        p.error(
            f"--n {config.n} --d {config.d} --n_test {config.n_test} ({len(config.runs())} runs): "
            f"the grid needs about {need / 2**30:.1f} GiB of memory and {have / 2**30:.1f} GiB "
            f"is available; with these flags at most about --n {max(fit, 0)} fits"
        )
    return config


def flags_error(c: TrainConfig) -> str | None:
    """What is wrong between the flags of ``c`` (None: nothing), after each flag's own rules."""
    if not (1 <= c.sparsity <= c.d):
        return f"--sparsity must be in [1, --d={c.d}] (got {c.sparsity})"
    if "msam" in c.algo and (c.m is None or c.m < 1 or c.n % c.m):
        return f"--m must divide --n={c.n} for --algo msam (got --m {c.m})"
    if "sgd" in c.algo and not (1 <= c.batch_size <= c.n):
        return f"--batch_size must be in [1, --n={c.n}] (got {c.batch_size})"
    if c.switch != "none" and not (0 <= c.switch_at <= c.iters):
        return f"--switch_at must be in [0, --iters={c.iters}]"
    if c.normalized_gd and "gd" not in c.algo:
        return "--normalized_gd applies to --algo gd (the original's GD option)"
    return run_dir_flags_error(c.out_dir, c.resume, c.overwrite)


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
