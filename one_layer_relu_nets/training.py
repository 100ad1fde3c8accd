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
Schedules: lr_t = lr s(t), rho_t = rho s'(t) with s in {constant 1, linear 1 - t/T,
cosine (1 + cos(pi t/T))/2} and s' in {constant, linear, inv_sqrt 1/sqrt(1 + t)}.
A run stops at T iterations or as soon as its full training loss L(w_t) (the unperturbed loss over
all n examples) is <= ``loss_threshold``; a run whose loss is not finite is marked diverged. Both
freeze the run inside the batch, so a batched run equals the same run alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from one_layer_relu_nets.data import TASKS, Dataset, reference_1d, teacher_student
from one_layer_relu_nets.measures import simplicity_1d
from one_layer_relu_nets.model import (
    INITS,
    Forward,
    Params,
    forward,
    grads_from_forward,
    init_params,
    stack_params,
)
from sharpness.functional import perturbation
from suite.cli import finite_or_none
from suite.rundir import create_run_dir

ALGORITHMS = ("gd", "sgd", "nsam", "1sam", "msam")
LR_SCHEDULES = ("constant", "linear", "cosine")
RHO_SCHEDULES = ("constant", "linear", "inv_sqrt")
REDUCTIONS = ("sum", "mean")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class Config:
    """One comparison. Defaults are the reference notebook's 1-D setting (REFERENCE.md 4.3)."""

    task: str = "reference1d"
    d: int = 5  # teacher task: input dimension
    teacher_width: int = 3
    n_train: int = 20
    n_test: int = 1000
    data_seed: int = 0
    width: int = 100
    init: str = "reference"
    init_scale: float = 1.0
    algorithms: list[str] = field(default_factory=lambda: ["gd", "nsam"])
    rhos: list[float] = field(default_factory=lambda: [0.3])
    normalize: bool = True
    rho_schedule: str = "constant"
    m: int = 1  # chunk size of msam
    batch_size: int = 0  # 0: full batch (required for gd; sgd needs 0 < batch_size < n)
    lr: float = 5e-5
    lr_schedule: str = "constant"
    iterations: int = 1_000_000
    loss_threshold: float = 1e-5
    reduction: str = "sum"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    n_logs: int = 100
    threads: int = 1  # torch intra-op threads while training (restored afterwards)
    dtype: str = "float64"
    device: str = "cpu"
    out_dir: str | None = None

    def validate(self, n: int | None = None) -> None:
        """Raise ValueError naming the offending field (the CLI maps fields to flags)."""
        checks = [
            (self.task in TASKS, "task", f"must be one of {TASKS}"),
            (self.init in INITS, "init", f"must be one of {INITS}"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}"),
            (self.rho_schedule in RHO_SCHEDULES, "rho_schedule", f"one of {RHO_SCHEDULES}"),
            (self.reduction in REDUCTIONS, "reduction", f"must be one of {REDUCTIONS}"),
            (self.dtype in DTYPES, "dtype", f"must be one of {tuple(DTYPES)}"),
            (len(self.algorithms) > 0, "algorithms", "needs at least one algorithm"),
            (all(a in ALGORITHMS for a in self.algorithms), "algorithms", f"in {ALGORITHMS}"),
            (len(set(self.algorithms)) == len(self.algorithms), "algorithms", "no duplicates"),
            (len(self.rhos) > 0 and all(r >= 0 for r in self.rhos), "rhos", "non-empty, >= 0"),
            (len(self.seeds) > 0 and all(s >= 0 for s in self.seeds), "seeds", "non-empty, >= 0"),
            (len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat"),
            (self.width >= 1, "width", "must be >= 1"),
            (self.d >= 1, "d", "must be >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "must be a finite number > 0"),
            (self.iterations >= 1, "iterations", "must be >= 1"),
            (self.loss_threshold >= 0, "loss_threshold", "must be >= 0"),
            (self.init_scale > 0, "init_scale", "must be > 0"),
            (self.m >= 1, "m", "must be >= 1"),
            (self.batch_size >= 0, "batch_size", "must be >= 0 (0 = full batch)"),
            (self.n_logs >= 2, "n_logs", "must be >= 2"),
            (self.threads >= 1, "threads", "must be >= 1"),
            (self.n_train >= 1 and self.n_test >= 1, "n_train", "n_train, n_test must be >= 1"),
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
        if "msam" in self.algorithms:
            bs = self.batch_size or n
            if bs % self.m:
                raise ValueError(f"m: msam needs m to divide the batch size {bs} (got m={self.m})")


def make_dataset(cfg: Config) -> Dataset:
    dt = DTYPES[cfg.dtype]
    if cfg.task == "reference1d":
        return reference_1d(dt)
    return teacher_student(cfg.d, cfg.teacher_width, cfg.n_train, cfg.n_test, cfg.data_seed, dt)


def lr_factor(schedule: str, t: int, total: int) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - t / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t / total))
    raise ValueError(f"lr_schedule: unknown {schedule!r}")


def rho_factor(schedule: str, t: int, total: int) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - t / total
    if schedule == "inv_sqrt":
        return 1.0 / math.sqrt(1.0 + t)
    raise ValueError(f"rho_schedule: unknown {schedule!r}")


def log_steps(total: int, n_logs: int) -> set[int]:
    """Iterations to log: 0, T and about ``n_logs`` log-spaced ones in between."""
    pts = np.unique(np.round(np.logspace(0, math.log10(max(total, 1)), n_logs)).astype(int))
    return {0, total, *pts.tolist()}


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
    train_loss: list[float]
    test_loss: list[float | None]
    history: list[dict]  # {"step", "train_loss": [R], "test_loss": [R] or None}


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


def run_group(
    cfg: Config, data: Dataset, algorithm: str, rhos: list[float], seeds: list[int]
) -> GroupResult:
    """Train len(rhos) runs of ``algorithm`` together; run i has rho rhos[i] and seed seeds[i]."""
    if len(rhos) != len(seeds):
        raise ValueError("rhos and seeds need one entry per run")
    with torch_threads(cfg.threads):
        return _run_group(cfg, data, algorithm, rhos, seeds)


def _run_group(
    cfg: Config, data: Dataset, algorithm: str, rhos: list[float], seeds: list[int]
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

    def record(t: int, loss: Tensor) -> None:
        row = {"step": t, "train_loss": [finite_or_none(v) for v in loss.tolist()]}
        row["test_loss"] = (
            [finite_or_none(v) for v in full_loss(P, Xt, yt, "mean").tolist()]
            if Xt is not None
            else None
        )
        history.append(row)

    for t in range(T + 1):
        fwd = forward(P, X)
        r = fwd.out - y
        loss = (0.5 * (1.0 if cfg.reduction == "sum" else 1.0 / n) * r * r).sum(-1)
        # Freeze runs that reached the threshold or diverged (their loss is kept as it is).
        done = active & ((loss <= cfg.loss_threshold) | ~torch.isfinite(loss) | (t == T))
        if done.any():
            for i in torch.nonzero(done).flatten().tolist():
                iters[i] = t
                stopped[i] = bool(loss[i] <= cfg.loss_threshold)
                diverged[i] = not math.isfinite(float(loss[i]))
            final_loss = torch.where(done, loss, final_loss)
            active = active & ~done
        if t in logs or not active.any():
            record(t, loss)
        if not active.any():
            break
        if B < n:
            idx = torch.stack([torch.randperm(n, generator=g)[:B] for g in gens]).to(dev)
            Xb, yb, fb = X[idx], y[idx], None
        else:
            Xb, yb, fb = X.unsqueeze(0), y.unsqueeze(0), fwd
        if m is None:
            fb = fb if fb is not None else forward(P, Xb)
            grad = grads_from_forward(P, Xb, fb, omega * (fb.out - yb))
        else:
            rho_t = rho0 * rho_factor(cfg.rho_schedule, t, T)
            grad, _ = sam_gradient(
                P, Xb, yb, rho_t, m, normalize=cfg.normalize, reduction=cfg.reduction, fwd=fb
            )
        lr_t = cfg.lr * lr_factor(cfg.lr_schedule, t, T)
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
        params=P,
        iterations=iters,
        stopped=stopped,
        diverged=diverged,
        train_loss=[finite_or_none(v) for v in final_loss.tolist()],
        test_loss=[finite_or_none(v) if v is not None else None for v in test],
        history=history,
    )


def run_table(cfg: Config) -> list[tuple[str, float, int]]:
    """(algorithm, rho, seed) of every run, in run-id order (GD/SGD runs get rho = 0)."""
    rows = []
    for alg in cfg.algorithms:
        rhos = [0.0] if chunk_size(alg, 1, 1) is None else cfg.rhos
        rows += [(alg, float(r), int(s)) for r in rhos for s in cfg.seeds]
    return rows


def train(cfg: Config) -> dict:
    """Run the comparison ``cfg``; write the run directory when ``cfg.out_dir`` is set.

    Files: config.json (the resolved config), metrics.jsonl (one row per algorithm and logged
    step: {"step", "algorithm", "run_ids", "train_loss": [...], "test_loss": [...] or null}),
    summary.json ({"runs": [per-run record], "wall_s"}), params.json (final W, b, a per run).
    Returns the summary.
    """
    data = make_dataset(cfg)
    cfg.validate(data.n)
    run_dir = None
    if cfg.out_dir is not None:
        run_dir = create_run_dir(cfg.out_dir, dataclasses.asdict(cfg), device=cfg.device)
    table = run_table(cfg)
    runs, params_out = [], []
    t0 = time.time()
    for alg in cfg.algorithms:
        ids = [i for i, row in enumerate(table) if row[0] == alg]
        res = run_group(cfg, data, alg, [table[i][1] for i in ids], [table[i][2] for i in ids])
        if run_dir is not None:
            for row in res.history:
                run_dir.log({"algorithm": alg, "run_ids": ids, **row})
        for j, i in enumerate(ids):
            p = Params(*(t[j].detach().cpu() for t in res.params))
            rec = {
                "run_id": i,
                "algorithm": alg,
                "rho": table[i][1],
                "seed": table[i][2],
                "normalize": cfg.normalize,
                "rho_schedule": cfg.rho_schedule,
                "m": chunk_size(alg, data.n if cfg.batch_size == 0 else cfg.batch_size, cfg.m),
                "iterations": res.iterations[j],
                "stopped": res.stopped[j],
                "diverged": res.diverged[j],
                "train_loss": res.train_loss[j],
                "test_loss": res.test_loss[j],
            }
            if data.d == 1 and not res.diverged[j]:
                rec.update(simplicity_1d(p, data.X))
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


def load_params(run_path: str | Path) -> dict[int, Params]:
    """{run_id: Params} from a run directory's params.json (float64, CPU)."""
    from suite.rundir import read_json

    out = {}
    for r in read_json(Path(run_path) / "params.json")["runs"]:
        out[r["run_id"]] = Params(
            *(torch.tensor(r[k], dtype=torch.float64) for k in ("W", "b", "a"))
        )
    return out
