"""Training one-hidden-layer ReLU nets with GD, SGD, n-SAM, 1-SAM and m-SAM, batched over runs.

A comparison is a ``Config``: a task, a network, a list of algorithms, a list of rho values and a
list of seeds. Every algorithm gets one run per (rho, seed) (GD/SGD: one per seed) and every run
uses the *same* learning-rate schedule, so differences between algorithms are not schedule effects
(the reference notebook decayed the learning rate for SAM only). The runs of one algorithm are one
tensor program: parameters carry a leading runs axis and rho is a (runs, 1) tensor.

One step of algorithm A at iterate w_t with batch B_t (all n examples unless ``batch_size``), loss
weights omega (1 for reduction "sum", 1/|B| for "mean"), per-example loss l_i = 0.5 r_i^2:

    GD / SGD:  w_{t+1} = w_t - lr_t sum_{i in B_t} omega grad l_i(w_t)
    m-SAM:     split B_t into K = |B_t|/m consecutive chunks C_k; for every chunk
               g_k = sum_{i in C_k} omega_k grad l_i(w_t)     (omega_k = 1 or 1/m: the chunk loss)
               e_k = rho_t g_k / ||g_k||_2   (normalized)   or   rho_t g_k   (unnormalized)
               w_{t+1} = w_t - lr_t sum_k sum_{i in C_k} omega grad l_i(w_t + e_k)
    n-SAM is m = |B_t| (one chunk, the ascent of the batch loss), 1-SAM is m = 1.

The ascent e_k comes from ``sharpness.functional.perturbation`` (batch_dims=2: runs x chunks).
Schedules of step t = 0 .. T-1 (the original notebook counts its steps from 1, and its linear
decay lr (1 - n/T) at step n is ours at t = n - 1): lr_t = lr s((t + 1)/T) with s in {constant 1,
linear 1 - u, cosine (1 + cos(pi u))/2}; rho_t = rho s'(t) with s' in {constant 1,
linear 1 - t/T, inv_sqrt 1/sqrt(1 + t)}. ``lr_decay_sam_only`` reproduces the original's confound
(GD/SGD at the constant lr, SAM with the schedule).
A run stops at T iterations or as soon as its full training loss L(w_t) (the unperturbed loss over
all n examples) is <= its loss threshold; a run whose loss is not finite is marked diverged at
that step. Both freeze the run inside the batch, so a batched run equals the same run alone.

Backends: ``torch`` (batched tensor program above, any batch size and device) and ``c``
(``kernel.c`` via ``fast.py``: one fused loop per run, full batch, CPU float64 only, ~40x faster;
pinned against the torch path in the tests). ``auto`` picks ``c`` whenever it applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from one_layer_relu_nets import fast
from one_layer_relu_nets.data import TASKS, Dataset, reference_1d, teacher_student
from one_layer_relu_nets.measures import simplicity_1d
from one_layer_relu_nets.model import (
    INITS,
    Forward,
    Params,
    forward,
    grads_from_forward,
    init_params,
    loss_hessian,
    stack_params,
)
from sharpness.functional import perturbation
from suite.cli import finite_or_none, flag
from suite.rundir import create_run_dir

ALGORITHMS = ("gd", "sgd", "nsam", "1sam", "msam")
LR_SCHEDULES = ("constant", "linear", "cosine")
RHO_SCHEDULES = ("constant", "linear", "inv_sqrt")
REDUCTIONS = ("sum", "mean")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
BACKENDS = ("auto", "c", "torch")
DEFAULT_ITERATIONS = 30_000  # a first try: about 1 s per run with the C backend


class Interrupted(KeyboardInterrupt):
    """Raised by ``run_group`` when Ctrl-C was requested; the finished groups are saved. A
    KeyboardInterrupt, so that callers that go on after errors (``make reproduce``) stop too."""


# The argument groups of ``python -m one_layer_relu_nets.train --help``, in order.
GROUPS = ("task and network", "algorithms", "optimization", "runs and output")
_TASK, _ALGS, _OPT, _RUNS = GROUPS


@dataclass
class Config:
    """One comparison. Defaults are the reference notebook's 1-D setting (PAPERS.md#relu-nets).

    A field declared with ``suite.cli.flag`` is the flag ``--<field>`` of the CLI
    (``one_layer_relu_nets.train`` generates its parser from them); the plain fields are set
    from other flags: ``normalize`` from ``--unnormalized``, ``seeds`` from ``--seed`` and
    ``--num_seeds``, ``device`` and ``out_dir`` from the common parent parser."""

    task: str = flag(
        "reference1d",
        group=_TASK,
        choices=TASKS,
        help="reference1d: the 12-point 1-D data; teacher: teacher-student in --d dims",
    )
    d: int = flag(5, group=_TASK, help="teacher task: input dimension")
    teacher_width: int = flag(3, group=_TASK, help="teacher task: number of teacher ReLU neurons")
    n_train: int = flag(20, group=_TASK, help="teacher task: training points")
    n_test: int = flag(1000, group=_TASK, help="teacher task: test points")
    n_val: int = flag(
        0,
        group=_TASK,
        help="teacher task: validation points, drawn after the test points (summary: val_loss)",
    )
    data_seed: int = flag(
        0, group=_TASK, help="teacher task: seed of the data draw, shared by all runs"
    )
    width: int = flag(100, group=_TASK, help="hidden neurons")
    init: str = flag(
        "reference",
        group=_TASK,
        choices=INITS,
        help="reference: W = +-2.5, b ~ N(0, 2.5^2), a ~ N(0, 4^2) (the original's draws); "
        "standard: PyTorch nn.Linear default",
    )
    init_scale: float = flag(1.0, group=_TASK, help="multiplies every initial weight")
    algorithms: list[str] = flag(
        group=_ALGS,
        choices=ALGORITHMS,
        default_factory=lambda: ["gd", "nsam"],
        help="one or more of gd (full batch), sgd (--batch_size), nsam (ascent on the batch), "
        "1sam (one ascent per example), msam (per chunk of --m examples)",
    )
    rhos: list[float] = flag(
        group=_ALGS,
        default_factory=lambda: [0.3],
        help="SAM radii, one run per value and seed",
    )
    normalize: bool = True  # the flag is --unnormalized
    rho_schedule: str = flag(
        "constant",
        group=_ALGS,
        choices=RHO_SCHEDULES,
        help="rho_t = rho x (1 | 1 - t/T | 1/sqrt(1 + t))",
    )
    m: int = flag(1, group=_ALGS, help="msam: examples per chunk")
    batch_size: int = flag(
        0,
        group=_ALGS,
        help="examples per step, sampled without replacement; 0 = all (required "
        "0 < batch_size < n for sgd; gd always uses all)",
    )
    lr: float = flag(5e-5, group=_OPT, help="learning rate")
    lr_schedule: str = flag(
        "constant",
        group=_OPT,
        choices=LR_SCHEDULES,
        help="lr of step t = 0..T-1: lr x (1 | 1 - u | (1 + cos(pi u))/2), u = (t + 1)/T (the "
        "original's step count), the same for every algorithm",
    )
    lr_decay_sam_only: bool = flag(
        False,
        group=_OPT,
        default_text="off, every algorithm follows it",
        help="the original notebook's setting: GD/SGD keep the constant lr, only SAM follows "
        "--lr_schedule",
    )
    iterations: int = flag(
        DEFAULT_ITERATIONS,
        group=_OPT,
        default_text=f"{DEFAULT_ITERATIONS}, a first try: about a second per 1-D run; the "
        "original notebook ran 1000000, ~10 s per SAM run with the C backend",
        help="maximum iterations T",
    )
    loss_threshold: float = flag(
        1e-5,
        group=_OPT,
        help="a run stops once its full training loss is <= this; 0 = never",
    )
    reduction: str = flag(
        "sum",
        group=_OPT,
        choices=REDUCTIONS,
        help="training loss: sum = 0.5 sum_i r_i^2 (reference), mean = 0.5 mean_i r_i^2",
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # --seed, --num_seeds
    n_logs: int = flag(100, group=_RUNS, help="about this many log-spaced logged iterations")
    threads: int = flag(1, group=_RUNS, help="torch CPU threads while training")
    dtype: str = flag("float64", group=_RUNS, choices=tuple(DTYPES), help="floating point type")
    device: str = "cpu"  # --device of the common parent parser
    backend: str = flag(
        "auto",
        group=_RUNS,
        choices=BACKENDS,
        help="c: fused C loop per run (full batch, CPU, float64; compiled with cc on first use); "
        "torch: batched tensor program (any batch size or device); auto: c when it applies and "
        "a C compiler exists",
    )
    match_losses_of: str | None = flag(
        None,
        group=_OPT,
        help="a finished run directory: run GD once per SAM run in it, stopped at that run's "
        "final training loss (the loss-matched control; use with --algorithms gd)",
    )
    # targets_digest(matched_targets(match_losses_of)) when set: the control's identity is the
    # losses it matches, so a changed base run makes it a different run (retrained, not reused)
    match_digest: str | None = None
    out_dir: str | None = None  # --out_dir of the common parent parser

    def validate(self, n: int | None = None) -> None:
        """Raise ValueError naming the offending field (the CLI maps fields to flags)."""
        checks = [
            (self.task in TASKS, "task", f"must be one of {TASKS}"),
            (self.init in INITS, "init", f"must be one of {INITS}"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}"),
            (self.rho_schedule in RHO_SCHEDULES, "rho_schedule", f"one of {RHO_SCHEDULES}"),
            (self.reduction in REDUCTIONS, "reduction", f"must be one of {REDUCTIONS}"),
            (self.dtype in DTYPES, "dtype", f"must be one of {tuple(DTYPES)}"),
            (self.backend in BACKENDS, "backend", f"must be one of {BACKENDS}"),
            (len(self.algorithms) > 0, "algorithms", "needs at least one algorithm"),
            (all(a in ALGORITHMS for a in self.algorithms), "algorithms", f"in {ALGORITHMS}"),
            (len(set(self.algorithms)) == len(self.algorithms), "algorithms", "no duplicates"),
            (
                len(self.rhos) > 0 and all(math.isfinite(r) and r >= 0 for r in self.rhos),
                "rhos",
                "non-empty, finite and >= 0",
            ),
            (len(self.seeds) > 0 and all(s >= 0 for s in self.seeds), "seeds", "non-empty, >= 0"),
            (len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat"),
            (self.width >= 1, "width", "must be >= 1"),
            (self.d >= 1, "d", "must be >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "must be a finite number > 0"),
            (self.iterations >= 1, "iterations", "must be >= 1"),
            (
                self.loss_threshold >= 0 and math.isfinite(self.loss_threshold),
                "loss_threshold",
                "must be a finite number >= 0",
            ),
            (
                self.init_scale > 0 and math.isfinite(self.init_scale),
                "init_scale",
                "must be a finite number > 0",
            ),
            (self.m >= 1, "m", "must be >= 1"),
            (self.batch_size >= 0, "batch_size", "must be >= 0 (0 = full batch)"),
            (self.n_logs >= 2, "n_logs", "must be >= 2"),
            (self.threads >= 1, "threads", "must be >= 1"),
            (self.n_train >= 1, "n_train", "must be >= 1"),
            (self.n_test >= 1, "n_test", "must be >= 1"),
            (self.n_val >= 0, "n_val", "must be >= 0"),
            (self.teacher_width >= 1, "teacher_width", "must be >= 1"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise ValueError(f"{name}: {msg} (got {getattr(self, name)!r})")
        if n is None:
            return
        if "sgd" in self.algorithms and not 0 < self.batch_size < n:
            raise ValueError(
                f"batch_size: sgd needs 0 < batch_size < n = {n} (got {self.batch_size})"
            )
        if self.batch_size > n:
            raise ValueError(f"batch_size: at most n = {n} (got {self.batch_size})")
        if self.backend == "c" and (self.batch_size not in (0, n) or self.device != "cpu"):
            raise ValueError("backend: c needs full batches (--batch_size 0) and --device cpu")
        if self.backend == "c" and self.dtype != "float64":
            raise ValueError("backend: c computes in float64 (use --dtype float64)")
        if "msam" in self.algorithms:
            bs = self.batch_size or n
            if bs % self.m:
                raise ValueError(f"m: msam needs m to divide the batch size {bs} (got m={self.m})")


def make_dataset(cfg: Config) -> Dataset:
    dt = DTYPES[cfg.dtype]
    if cfg.task == "reference1d":
        return reference_1d(dt)
    return teacher_student(
        cfg.d, cfg.teacher_width, cfg.n_train, cfg.n_test, cfg.data_seed, dt, n_val=cfg.n_val
    )


def lr_factors(schedule: str, total: int) -> np.ndarray:
    """s((t + 1)/T) for the steps t = 0 .. T-1 (module docstring): the original's step n = t + 1."""
    u = np.arange(1, total + 1, dtype=np.float64) / total
    if schedule == "constant":
        return np.ones(total)
    if schedule == "linear":
        return 1.0 - u
    if schedule == "cosine":
        return 0.5 * (1.0 + np.cos(math.pi * u))
    raise ValueError(f"lr_schedule: unknown {schedule!r}")


def rho_factors(schedule: str, total: int) -> np.ndarray:
    """s'(t) for the steps t = 0 .. T-1 (module docstring)."""
    t = np.arange(total, dtype=np.float64)
    if schedule == "constant":
        return np.ones(total)
    if schedule == "linear":
        return 1.0 - t / total
    if schedule == "inv_sqrt":
        return 1.0 / np.sqrt(1.0 + t)
    raise ValueError(f"rho_schedule: unknown {schedule!r}")


def log_steps(total: int, n_logs: int) -> set[int]:
    """Iterations to log: 0, T, about ``n_logs`` log-spaced ones in between, and 11 evenly spaced
    ones over the last 10% (the tail that convergence is judged on)."""
    pts = np.unique(np.round(np.logspace(0, math.log10(max(total, 1)), n_logs)).astype(int))
    tail = np.unique(np.round(np.linspace(0.9 * total, total, 11)).astype(int))
    return {0, total, *pts.tolist(), *tail.tolist()}


def chunk_size(algorithm: str, batch: int, m: int) -> int | None:
    """Examples per SAM chunk (None: no ascent)."""
    return {"gd": None, "sgd": None, "nsam": batch, "1sam": 1, "msam": m}[algorithm]


def sam_gradient(
    params: Params,
    X: Tensor,
    y: Tensor,
    rho: Tensor | float,
    m: int,
    *,
    normalize: bool = True,
    reduction: str = "sum",
    fwd: Forward | None = None,
) -> tuple[Params, Params]:
    """The m-SAM gradient (module docstring) of a batch, for every run at once.

    params: (R, width, d) ...; X: (R or 1, B, d); y: (R or 1, B); rho: float or (R,) tensor; ``fwd``
    may hold forward(params, X) already computed. Returns (the summed SAM gradient (R, ...),
    the per-chunk SAM gradients (R, K, ...)).
    """
    R = params.W.shape[0]
    B, d = X.shape[-2], X.shape[-1]
    if B % m:
        raise ValueError(f"m={m} must divide the batch size {B}")
    K = B // m
    omega = 1.0 if reduction == "sum" else 1.0 / B
    omega_chunk = 1.0 if reduction == "sum" else 1.0 / m
    Xc = X.reshape(X.shape[0], K, m, d)
    yc = y.reshape(y.shape[0], K, m)
    p1 = Params(params.W.unsqueeze(1), params.b.unsqueeze(1), params.a.unsqueeze(1))
    if fwd is None:
        fwd = forward(params, X)
    width = params.W.shape[-2]
    fc = Forward(
        fwd.pre.reshape(R, K, m, width), fwd.act.reshape(R, K, m, width), fwd.out.reshape(R, K, m)
    )
    g = grads_from_forward(p1, Xc, fc, omega_chunk * (fc.out - yc))  # (R, K, ...)
    rho_b = rho.reshape(R, 1) if isinstance(rho, Tensor) else rho
    e = perturbation(list(g), rho_b, 2.0, normalize=normalize, batch_dims=2)
    pp = Params(*(p + ei for p, ei in zip(p1, e, strict=True)))
    fp = forward(pp, Xc)
    gk = grads_from_forward(pp, Xc, fp, omega * (fp.out - yc))
    return Params(*(t.sum(1) for t in gk)), gk


@dataclass
class GroupResult:
    """Runs of one algorithm: final params (R, ...), per-run stop iteration and flags, history."""

    algorithm: str
    rhos: list[float]
    seeds: list[int]
    params: Params
    iterations: list[int]
    stopped: list[bool]
    diverged: list[bool]
    train_loss: list[float | None]
    test_loss: list[float | None]
    history: list[dict]  # {"step", "train_loss": [R], "test_loss": [R] or None, "kinks", ...}
    thresholds: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["params"] = {k: t.detach().cpu().tolist() for k, t in self.params._asdict().items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> GroupResult:
        p = d.pop("params")
        return cls(
            params=Params(*(torch.tensor(p[k], dtype=torch.float64) for k in ("W", "b", "a"))),
            **d,
        )


def full_loss(params: Params, X: Tensor, y: Tensor, reduction: str) -> Tensor:
    r = forward(params, X).out - y
    w = 1.0 if reduction == "sum" else 1.0 / y.shape[-1]
    return (0.5 * w * r * r).sum(-1)


@contextlib.contextmanager
def torch_threads(n: int):
    """Use ``n`` intra-op threads inside the block. The tensors here are tiny: on a busy 2-core
    machine two threads made every elementwise op ~45x slower (measured) than one."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def use_c_backend(cfg: Config, data: Dataset, algorithm: str) -> bool:
    """Whether ``algorithm`` of ``cfg`` runs on the C kernel (``backend`` auto or c)."""
    if cfg.backend == "torch":
        return False
    ok = (
        algorithm != "sgd"
        and cfg.batch_size in (0, data.n)
        and cfg.device == "cpu"
        and cfg.dtype == "float64"
    )
    if cfg.backend == "c":
        if not ok:
            raise ValueError("backend: c needs full batches, --device cpu and float64")
        if not fast.available():
            fast._load()  # raises the compiler's message
        return True
    return ok and fast.available()


def _row_measures(P: Params, data: Dataset, Xt: Tensor | None, yt: Tensor | None) -> dict:
    """What a history row records besides the training loss: test loss and, in 1-D, the kinks
    and slope TV of every run (the simplicity measures over training)."""
    out: dict = {}
    out["test_loss"] = (
        [finite_or_none(v) for v in full_loss(P, Xt, yt, "mean").tolist()]
        if Xt is not None
        else None
    )
    if data.d == 1:
        ms = [
            simplicity_1d(Params(P.W[i].cpu(), P.b[i].cpu(), P.a[i].cpu()), data.X.cpu())
            if bool(torch.isfinite(P.W[i]).all() and torch.isfinite(P.a[i]).all())
            else {"kinks": None, "slope_tv": None}
            for i in range(P.W.shape[0])
        ]
        out["kinks"] = [m["kinks"] for m in ms]
        out["slope_tv"] = [m["slope_tv"] for m in ms]
    return out


def run_group(
    cfg: Config,
    data: Dataset,
    algorithm: str,
    rhos: list[float],
    seeds: list[int],
    thresholds: list[float] | None = None,
    bar=None,
    interrupt=None,
    max_steps: int | None = None,
) -> GroupResult:
    """Train len(rhos) runs of ``algorithm`` together; run i has rho rhos[i], seed seeds[i] and
    loss threshold thresholds[i] (default ``cfg.loss_threshold``). ``bar`` (a tqdm) is advanced by
    the steps done; when ``interrupt.requested`` turns true, ``Interrupted`` is raised.
    ``max_steps`` ends the runs after that many steps of the ``cfg.iterations``-step schedules
    (the first steps of a long run: tests and benchmarks)."""
    if len(rhos) != len(seeds):
        raise ValueError("rhos and seeds need one entry per run")
    thresholds = [cfg.loss_threshold] * len(seeds) if thresholds is None else list(thresholds)
    if len(thresholds) != len(seeds):
        raise ValueError("thresholds need one entry per run")
    T = cfg.iterations
    lr_f = lr_factors(
        "constant"
        if cfg.lr_decay_sam_only and chunk_size(algorithm, 1, 1) is None
        else cfg.lr_schedule,
        T,
    )
    rho_f = rho_factors(cfg.rho_schedule, T)
    if max_steps is not None:
        cfg = dataclasses.replace(cfg, iterations=min(T, max_steps))
    with torch_threads(cfg.threads):
        if use_c_backend(cfg, data, algorithm):
            res = _run_group_c(
                cfg, data, algorithm, rhos, seeds, thresholds, lr_f, rho_f, bar, interrupt
            )
        else:
            res = _run_group_torch(
                cfg, data, algorithm, rhos, seeds, thresholds, lr_f, rho_f, bar, interrupt
            )
    res.thresholds = thresholds
    return res


def _check_interrupt(interrupt) -> None:
    if interrupt is not None and interrupt.requested:
        raise Interrupted


def _run_group_torch(
    cfg: Config,
    data: Dataset,
    algorithm: str,
    rhos: list[float],
    seeds: list[int],
    thresholds: list[float],
    lr_f: np.ndarray,
    rho_f: np.ndarray,
    bar,
    interrupt,
) -> GroupResult:
    dev, dt = torch.device(cfg.device), DTYPES[cfg.dtype]
    R, n, T = len(seeds), data.n, cfg.iterations
    P = stack_params(
        [init_params(cfg.width, data.d, s, cfg.init, cfg.init_scale, dt) for s in seeds]
    )
    P = Params(*(t.to(dev) for t in P))
    X, y = data.X.to(dev, dt), data.y.to(dev, dt)
    Xt = data.X_test.to(dev, dt) if data.X_test is not None else None
    yt = data.y_test.to(dev, dt) if data.y_test is not None else None
    B = n if algorithm == "gd" or cfg.batch_size == 0 else cfg.batch_size
    m = chunk_size(algorithm, B, cfg.m)
    rho0 = torch.tensor(rhos, dtype=dt, device=dev)
    thr = torch.tensor(thresholds, dtype=dt, device=dev)
    # Data order of SGD: one generator per run (seeded by the run's seed), so a run's batches do
    # not depend on which other runs share its tensor program.
    gens = [torch.Generator().manual_seed(10_000 + int(s)) for s in seeds] if B < n else []
    omega = 1.0 if cfg.reduction == "sum" else 1.0 / B
    active = torch.ones(R, dtype=torch.bool, device=dev)
    iters = [T] * R
    stopped, diverged = [False] * R, [False] * R
    final_loss = torch.full((R,), float("nan"), dtype=dt, device=dev)
    logs = log_steps(T, cfg.n_logs)
    history: list[dict] = []

    for t in range(T + 1):
        fwd = forward(P, X)
        r = fwd.out - y
        loss = (0.5 * (1.0 if cfg.reduction == "sum" else 1.0 / n) * r * r).sum(-1)
        # Freeze runs that reached the threshold or diverged (their loss is kept as it is).
        done = active & ((loss <= thr) | ~torch.isfinite(loss) | (t == T))
        if done.any():
            for i in torch.nonzero(done).flatten().tolist():
                iters[i] = t
                stopped[i] = bool(loss[i] <= thr[i])
                diverged[i] = not math.isfinite(float(loss[i]))
            final_loss = torch.where(done, loss, final_loss)
            active = active & ~done
        if t in logs or not active.any():
            shown = torch.where(active, loss, final_loss)
            row = {"step": t, "train_loss": [finite_or_none(v) for v in shown.tolist()]}
            history.append(row | _row_measures(P, data, Xt, yt))
        if not active.any():
            break
        if t % 1000 == 0:
            _check_interrupt(interrupt)
            if bar is not None and t:
                bar.update(1000 * int(active.sum()))
        if B < n:
            idx = torch.stack([torch.randperm(n, generator=g)[:B] for g in gens]).to(dev)
            Xb, yb, fb = X[idx], y[idx], None
        else:
            Xb, yb, fb = X.unsqueeze(0), y.unsqueeze(0), fwd
        if m is None:
            fb = fb if fb is not None else forward(P, Xb)
            grad = grads_from_forward(P, Xb, fb, omega * (fb.out - yb))
        else:
            rho_t = rho0 * float(rho_f[t])
            grad, _ = sam_gradient(
                P, Xb, yb, rho_t, m, normalize=cfg.normalize, reduction=cfg.reduction, fwd=fb
            )
        lr_t = cfg.lr * float(lr_f[t])
        P = Params(
            *(
                torch.where(active.reshape(-1, *[1] * (p.dim() - 1)), p - lr_t * g, p)
                for p, g in zip(P, grad, strict=True)
            )
        )
    test = full_loss(P, Xt, yt, "mean").tolist() if Xt is not None else [None] * R
    return GroupResult(
        algorithm=algorithm,
        rhos=list(rhos),
        seeds=list(seeds),
        params=Params(*(t.detach().cpu().double() for t in P)),
        iterations=iters,
        stopped=stopped,
        diverged=diverged,
        train_loss=[finite_or_none(v) for v in final_loss.tolist()],
        test_loss=[finite_or_none(v) if v is not None else None for v in test],
        history=history,
    )


def _run_group_c(
    cfg: Config,
    data: Dataset,
    algorithm: str,
    rhos: list[float],
    seeds: list[int],
    thresholds: list[float],
    lr_f: np.ndarray,
    rho_f: np.ndarray,
    bar,
    interrupt,
) -> GroupResult:
    """The same runs as ``_run_group_torch`` (full batch), one after the other on the C kernel;
    the history rows are assembled to be those of the batched program."""
    R, n, T = len(seeds), data.n, cfg.iterations
    X, y = data.X.double().numpy(), data.y.double().numpy()
    m = chunk_size(algorithm, n, cfg.m) or 0
    omega = 1.0 if cfg.reduction == "sum" else 1.0 / n
    omega_chunk = 1.0 if cfg.reduction == "sum" else 1.0 / max(m, 1)
    logs = sorted(log_steps(T, cfg.n_logs))
    chunk = 50_000  # steps per kernel call at most: Ctrl-C and the progress bar stay responsive
    finals, per_run = [], []  # per_run[i]: {step: (loss, params)} at the log steps before its stop
    status = []
    for i, seed in enumerate(seeds):
        p = init_params(cfg.width, data.d, seed, cfg.init, cfg.init_scale, torch.float64)
        run = fast.Run(X, y, p.W.numpy(), p.b.numpy(), p.a.numpy())
        snaps: dict[int, tuple[float, tuple]] = {}
        t, t1 = 0, 0  # the first call only evaluates the loss at step 0
        while True:
            st, t_new, loss = run.advance(
                m,
                omega,
                omega_chunk,
                cfg.normalize,
                float(rhos[i]),
                1e-12,
                cfg.lr,
                lr_f[t:t1],
                rho_f[t:t1],
                float(thresholds[i]),
                t,
                t1,
                T,
            )
            if bar is not None:
                bar.update(t_new - t)
            t = t_new
            if st != "running":
                finals.append((t, loss, (run.W.copy(), run.b.copy(), run.a.copy())))
                status.append(st)
                break
            if t in logs:
                snaps[t] = (loss, (run.W.copy(), run.b.copy(), run.a.copy()))
            _check_interrupt(interrupt)
            t1 = min(next((s for s in logs if s > t), T), t + chunk)
        per_run.append(snaps)
    iters = [f[0] for f in finals]
    t_end = max(iters)
    history = []
    for step in sorted({s for s in logs if s <= t_end} | {t_end}):
        losses, ps = [], []
        for i in range(R):
            if step < iters[i]:
                loss, p = per_run[i][step]
            else:
                loss, p = finals[i][1], finals[i][2]
            losses.append(finite_or_none(loss))
            ps.append(Params(*(torch.from_numpy(v) for v in p)))
        P = stack_params(ps)
        Xt, yt = data.X_test, data.y_test
        row = {"step": step, "train_loss": losses}
        history.append(row | _row_measures(P, data, Xt, yt))
    P = stack_params([Params(*(torch.from_numpy(v) for v in f[2])) for f in finals])
    test = (
        full_loss(P, data.X_test.double(), data.y_test.double(), "mean").tolist()
        if data.X_test is not None
        else [None] * R
    )
    return GroupResult(
        algorithm=algorithm,
        rhos=list(rhos),
        seeds=list(seeds),
        params=P,
        iterations=iters,
        stopped=[s == "stopped" for s in status],
        diverged=[s == "diverged" for s in status],
        train_loss=[finite_or_none(f[1]) for f in finals],
        test_loss=[finite_or_none(v) if v is not None else None for v in test],
        history=history,
    )


def run_table(cfg: Config, matched: list[dict] | None = None) -> list[tuple[str, float, int]]:
    """(algorithm, rho, seed) of every run, in run-id order (GD/SGD runs get rho = 0). With
    ``matched`` (the runs of ``cfg.match_losses_of``), one GD run per matched run."""
    if matched is not None:
        return [("gd", 0.0, int(r["seed"])) for r in matched]
    rows = []
    for alg in cfg.algorithms:
        rhos = [0.0] if chunk_size(alg, 1, 1) is None else cfg.rhos
        rows += [(alg, float(r), int(s)) for r in rhos for s in cfg.seeds]
    return rows


def matched_targets(path: str | Path) -> list[dict]:
    """The SAM runs of the run directory ``path`` whose final training loss GD is stopped at:
    [{"run_id", "algorithm", "rho", "seed", "train_loss"}] (diverged runs left out)."""
    from suite.rundir import read_json

    summ = Path(path) / "summary.json"
    if not summ.exists():
        raise FileNotFoundError(
            f"match_losses_of: {path} has no summary.json (not a finished run directory)"
        )
    runs = read_json(summ)["runs"]
    keep = ("run_id", "algorithm", "rho", "seed", "train_loss")
    return [
        {k: r[k] for k in keep}
        for r in runs
        if r["algorithm"] not in ("gd", "sgd") and r["train_loss"] is not None
    ]


def targets_digest(targets: list[dict]) -> str:
    """A short hash of ``matched_targets``' list (run ids, algorithms, rho, seeds, final losses):
    what a loss-matched control depends on in its base run."""
    from suite.rundir import config_hash

    return config_hash({"targets": targets})


def lambda_max(params: Params, X: Tensor, y: Tensor, reduction: str) -> float:
    """The largest eigenvalue of the exact Hessian of the training loss at ``params`` (one run)
    over the flattened (W, b, a): ``model.loss_hessian`` (closed form, equal to autograd's) then
    eigvalsh."""
    w = 1.0 if reduction == "sum" else 1.0 / y.shape[-1]
    # one thread: LAPACK's threads spin on a busy machine (2.4 s instead of 0.03 s, measured)
    with torch_threads(1):
        H = loss_hessian(Params(*(t.double() for t in params)), X.double(), y.double(), w)
        return float(torch.linalg.eigvalsh(0.5 * (H + H.transpose(-1, -2)))[..., -1])


def _groups(cfg: Config, table: list) -> list[tuple[str, list[int]]]:
    """(group name, run ids): one group per algorithm (the unit that is saved and resumed)."""
    names = list(dict.fromkeys(row[0] for row in table))
    return [(a, [i for i, row in enumerate(table) if row[0] == a]) for a in names]


def train(
    cfg: Config, *, resume: bool = False, overwrite: bool = False, show_progress: bool | None = None
) -> dict:
    """Run the comparison ``cfg``; write the run directory when ``cfg.out_dir`` is set.

    Files: config.json (the resolved config), metrics.jsonl (one row per algorithm and logged
    step: {"step", "algorithm", "run_ids", "train_loss": [...], "test_loss": [...] or null, and in
    1-D "kinks", "slope_tv": [...]}), summary.json ({"runs": [per-run record], "wall_s"}),
    params.json (final W, b, a per run), groups/<algorithm>.json (a finished group, for resume).
    Ctrl-C (``suite.cli.GracefulInterrupt``) stops at the next safe point and raises
    ``Interrupted`` with the finished groups saved; ``resume=True`` continues such a run.
    Returns the summary.
    """
    from suite.cli import GracefulInterrupt, progress
    from suite.rundir import atomic_write_text, read_json, to_json

    data = make_dataset(cfg)
    cfg.validate(data.n)
    matched = matched_targets(cfg.match_losses_of) if cfg.match_losses_of else None
    if matched is not None and cfg.algorithms != ["gd"]:
        raise ValueError("match_losses_of: runs GD only (use --algorithms gd)")
    if matched is not None and cfg.match_digest not in (None, targets_digest(matched)):
        raise ValueError(
            f"match_digest: the runs of {cfg.match_losses_of} changed since this control was "
            f"configured (digest {targets_digest(matched)}, expected {cfg.match_digest})"
        )
    run_dir = None
    if cfg.out_dir is not None:
        cfg_path = Path(cfg.out_dir) / "config.json"
        if resume and cfg_path.exists():
            stored, now = read_json(cfg_path, want_dict=True)["config"], dataclasses.asdict(cfg)
            # where the run lies is not what it computes: the same directory may be named by a
            # relative or an absolute path (and a control's base by its digest)
            where = ("out_dir", "match_losses_of") if cfg.match_digest else ("out_dir",)
            diff = sorted(
                k for k in set(stored) | set(now) if k not in where and stored.get(k) != now.get(k)
            )
            if diff:
                raise ValueError(
                    f"resume: {cfg.out_dir} was started with other settings ({', '.join(diff)});"
                    " pass the same flags, or --overwrite to replace it"
                )
        if overwrite:
            shutil.rmtree(Path(cfg.out_dir) / "groups", ignore_errors=True)
            for name in ("params.json", "data.json"):
                (Path(cfg.out_dir) / name).unlink(missing_ok=True)
        run_dir = create_run_dir(
            cfg.out_dir,
            dataclasses.asdict(cfg),
            device=cfg.device,
            resume=resume,
            overwrite=overwrite,
        )
    table = run_table(cfg, matched)
    groups = _groups(cfg, table)
    results: dict[str, GroupResult] = {}
    gdir = Path(cfg.out_dir) / "groups" if run_dir is not None else None
    if resume and gdir is not None:
        for name, _ in groups:
            f = gdir / f"{name}.json"
            if f.exists():
                results[name] = GroupResult.from_json(read_json(f, want_dict=True))
        # metrics.jsonl holds exactly the finished groups' rows (a crash may have cut it short)
        atomic_write_text(
            run_dir.metrics_path,
            "".join(
                to_json({"algorithm": name, "run_ids": ids, **row}, None) + "\n"
                for name, ids in groups
                if name in results
                for row in results[name].history
            ),
        )
    t0 = time.time()
    todo = [(name, ids) for name, ids in groups if name not in results]
    total = sum(len(ids) for _, ids in todo) * cfg.iterations
    # progress() shows the bar only on a terminal, unless show_progress says otherwise
    shown = {} if show_progress is None else {"disable": not show_progress}
    bar = progress(total=total, unit="step", unit_scale=True, mininterval=1.0, **shown)
    try:
        with GracefulInterrupt() as interrupt:
            for name, ids in todo:
                bar.set_description(name)
                thr = [m["train_loss"] for m in matched] if matched is not None else None
                res = run_group(
                    cfg,
                    data,
                    name,
                    [table[i][1] for i in ids],
                    [table[i][2] for i in ids],
                    thr,
                    bar,
                    interrupt,
                )
                results[name] = res
                if run_dir is not None:
                    run_dir.write_json(f"groups/{name}.json", res.to_json())
                    for row in res.history:
                        run_dir.log({"algorithm": name, "run_ids": ids, **row})
    finally:
        bar.close()
    runs, params_out = [], []
    for name, ids in groups:
        res = results[name]
        for j, i in enumerate(ids):
            p = Params(*(t[j].detach().cpu().double() for t in res.params))
            rec = {
                "run_id": i,
                "algorithm": name,
                "rho": table[i][1],
                "seed": table[i][2],
                "normalize": cfg.normalize,
                "rho_schedule": cfg.rho_schedule,
                "m": chunk_size(name, data.n if cfg.batch_size == 0 else cfg.batch_size, cfg.m),
                "iterations": res.iterations[j],
                "stopped": res.stopped[j],
                "diverged": res.diverged[j],
                "diverged_at": res.iterations[j] if res.diverged[j] else None,
                "train_loss": res.train_loss[j],
                "test_loss": res.test_loss[j],
                "loss_threshold": res.thresholds[j],
            }
            rec.update(_tail_stats(res.history, j, cfg.iterations, res.iterations[j]))
            if matched is not None:
                rec["matched_run_id"] = matched[i]["run_id"]
                rec["matched_algorithm"] = matched[i]["algorithm"]
                rec["matched_rho"] = matched[i]["rho"]
            if data.X_val is not None and not res.diverged[j]:
                rec["val_loss"] = finite_or_none(
                    float(full_loss(p, data.X_val.double(), data.y_val.double(), "mean"))
                )
            if not res.diverged[j] and data.d == 1:  # next to the kinks (1-D only: cost)
                rec.update(simplicity_1d(p, data.X))
                rec["lambda_max"] = finite_or_none(lambda_max(p, data.X, data.y, cfg.reduction))
            runs.append(rec)
            params_out.append(
                {"run_id": i, "W": p.W.tolist(), "b": p.b.tolist(), "a": p.a.tolist()}
            )
    summary = {"runs": runs, "wall_s": time.time() - t0, "n_train": data.n, "d": data.d}
    if run_dir is not None:
        run_dir.write_json("params.json", {"runs": params_out})
        data_json = {"X": data.X.tolist(), "y": data.y.tolist(), "teacher": data.teacher}
        run_dir.write_json("data.json", data_json)
        run_dir.write_summary(summary)
    return summary


def _tail_stats(history: list[dict], j: int, total: int, iterations: int) -> dict:
    """Convergence judged on the tail: the median training loss over the logged steps in the last
    10% of the budget, and the slope of log10(loss) against log10(step) there (least squares;
    ~0 = stalled, negative = still decreasing). A run that stopped early has no tail (None)."""
    pts = [
        (r["step"], r["train_loss"][j])
        for r in history
        if r["step"] >= 0.9 * total and r["step"] > 0 and r["train_loss"][j] is not None
    ]
    if len(pts) < 3 or iterations < total:
        return {"tail_median": None, "tail_slope": None}
    steps = np.log10([p[0] for p in pts])
    losses = np.array([p[1] for p in pts])
    slope = float(np.polyfit(steps, np.log10(losses), 1)[0]) if np.all(losses > 0) else None
    return {"tail_median": float(np.median(losses)), "tail_slope": slope}


def load_params(run_path: str | Path) -> dict[int, Params]:
    """{run_id: Params} from a run directory's params.json (float64, CPU)."""
    from suite.rundir import read_json

    out = {}
    for r in read_json(Path(run_path) / "params.json")["runs"]:
        out[r["run_id"]] = Params(
            *(torch.tensor(r[k], dtype=torch.float64) for k in ("W", "b", "a"))
        )
    return out
