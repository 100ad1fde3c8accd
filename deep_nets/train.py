"""Deep-network trainer with SAM, m-SAM, ASAM, LookSAM and random perturbations.

    python deep_nets/train.py --dataset=fashion_mnist --model=resnet_tiny_gn --epochs=10 \\
        --sam_rho=0.05 --acc_steps=8 --out_dir=runs/fmnist_msam16

Flag names and meanings follow the original code of "Towards Understanding Sharpness-Aware
Minimization" (REFERENCE.md §4.1). Every SAM rule comes from the core (``sharpness``): m-SAM through
``sharpness.modules.msam_backward``, ASAM and LookSAM through ``SAM`` / ``LookSAM``, random
perturbations through ``SAM.perturb`` on Gaussian directions.

The loss minimized is the original's L(w) = CE(w) + 0.5 * l2_reg * ||w||^2 (conv/linear
weights; the L2 term is inside the loss, hence also inside the ascent); ``--weight_decay`` is
applied by the base optimizer at the update only (SGD adds weight_decay * w to the SAM gradient; it
never enters the ascent). One training step with SAM active, for each chunk c of m consecutive
examples:
e_c = rho g_c / ||g_c||, g_c = grad L_c(w); update with the average of grad L_c(w + e_c).

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per evaluation),
``summary.json`` and ``checkpoint.pt`` (rewritten atomically after every epoch and on Ctrl-C;
``--resume`` continues it, giving the same metrics as an uninterrupted run on CPU).
``torchrun --nproc_per_node=N deep_nets/train.py ...`` trains with DistributedDataParallel.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from deep_nets.config import (  # noqa: E402
    LR_SCHEDULES,
    NOISE_TYPES,
    PERTURB_BATCHES,
    RESUME_FREE_FIELDS,
    SAM_VARIANTS,
    TrainConfig,
    check_config,
    list_configs,
    load_named_config,
)
from sharpness import functional as SF  # noqa: E402
from sharpness.modules import frozen_bn_stats, local_grads, msam_backward  # noqa: E402
from sharpness.optim import SAM, LookSAM  # noqa: E402
from suite.cli import GracefulInterrupt, make_seeds, select_device  # noqa: E402
from suite.rundir import RunDir, atomic_torch_save, create_run_dir  # noqa: E402

CHECKPOINT = "checkpoint.pt"
EXIT_INTERRUPTED = 130


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is left in place."""


# ------------------------------------------------------------------------------- schedules
def lr_at(schedule: str, lr_max: float, epochs: int, t: float) -> float:
    """Learning rate at fractional epoch t in [0, epochs] (the original's schedules).

    piecewise: lr_max, lr_max/10 from 50% and lr_max/100 from 75% of the epochs; cosine:
    lr_max (1 + cos(pi t / epochs)) / 2; cyclic: linear 0 -> lr_max at 40% -> 0 at the end;
    constant: lr_max.
    """
    if schedule == "piecewise":
        if t < 0.5 * epochs:
            return lr_max
        return lr_max / 10 if t < 0.75 * epochs else lr_max / 100
    if schedule == "cosine":
        return lr_max * 0.5 * (1 + math.cos(math.pi * t / epochs))
    if schedule == "cyclic":
        return float(np.interp(t, [0, epochs * 2 / 5, epochs], [0, lr_max, 0]))
    if schedule == "constant":
        return lr_max
    raise ValueError(f"--lr_schedule {schedule!r}: choose from {', '.join(LR_SCHEDULES)}")


def sam_active(cfg: TrainConfig, epoch: int) -> bool:
    """SAM is on in epochs e with start * epochs <= e < end * epochs (whole epochs)."""
    return (
        cfg.sam_rho > 0
        and cfg.sam_epoch_frac_start * cfg.epochs <= epoch < cfg.sam_epoch_frac_end * cfg.epochs
    )


def _derived_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of the integer keys (independent streams)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def epoch_permutation(data_seed: int, epoch: int, n: int) -> Tensor:
    """The training order of one epoch: a function of (data seed, epoch) only, so a resumed run
    replays exactly the order of an uninterrupted one."""
    g = torch.Generator().manual_seed(_derived_seed(data_seed, epoch, 0))
    return torch.randperm(n, generator=g)


def epoch_generators(
    data_seed: int, epoch: int, rank: int, device: torch.device
) -> list[torch.Generator]:
    """One epoch's generators on one worker: [CPU: augmentation and 'other' batches, device:
    random directions]. Their states are saved in mid-epoch checkpoints."""
    cpu = torch.Generator().manual_seed(_derived_seed(data_seed, epoch, 1 + rank))
    dev = torch.Generator(device=device)
    dev.manual_seed(_derived_seed(data_seed, epoch, 10_000 + rank))
    return [cpu, dev]


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_dist(device_name: str | None) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), select_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        here = True
    return Dist(rank, world, local, here), device


def _all_sum(t: Tensor, d: Dist) -> Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ------------------------------------------------------------------------------------ model
def l2_weights(model: nn.Module) -> list[Tensor]:
    """Tensors the L2 term covers: conv and linear weights (dim >= 2), not biases or norms."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]


def load_model_path(model: nn.Module, path: str) -> None:
    """Load ``--model_path``: one of our checkpoints (its "model" entry) or a plain state dict,
    with or without DDP's "module." prefixes."""
    if not Path(path).is_file():
        raise ValueError(f"--model_path {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling error: say which flag and file
        raise ValueError(f"--model_path {path}: not a loadable state dict ({e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"--model_path {path}: expected a state dict, got {type(obj).__name__}")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"--model_path {path} does not match --model/--model_width: {e}") from e


def _build_optimizer(cfg: TrainConfig, model: nn.Module) -> SAM:
    base = dict(lr=cfg.lr_max, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    if cfg.sam_variant == "looksam":
        return LookSAM(
            params, torch.optim.SGD, rho=cfg.sam_rho, k=cfg.looksam_k, alpha=cfg.looksam_alpha,
            **base,
        )  # fmt: skip
    return SAM(
        params,
        torch.optim.SGD,
        rho=cfg.sam_rho,
        adaptive=cfg.sam_variant == "asam",
        eta=cfg.asam_eta,
        normalize=not cfg.sam_no_grad_norm,
        **base,
    )


# --------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    noisy: Tensor | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """Sums over (x, y) in eval mode: [CE loss sum, errors, n, errors on noisy, n noisy,
    errors on clean, n clean] as a float64 tensor (reduce across workers, then divide)."""
    was = net.training
    net.eval()
    out = torch.zeros(7, dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with autocast():
            logits = net(xb)
        logits = logits.float()
        wrong = (logits.argmax(1) != yb).double()
        out[0] += F.cross_entropy(logits, yb, reduction="sum").double()
        out[1] += wrong.sum()
        out[2] += xb.shape[0]
        if noisy is not None:
            nb = noisy[i : i + batch_size].double()
            out[3] += (wrong * nb).sum()
            out[4] += nb.sum()
            out[5] += (wrong * (1 - nb)).sum()
            out[6] += (1 - nb).sum()
    net.train(was)
    return out


def m_sharpness(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    m: int,
    rho: float,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """One-step m-sharpness: sum over chunks of m examples of L_c(w + e_c) - L_c(w) with
    e_c = rho g_c / ||g_c||_2 (``sharpness.functional.perturbation``), L_c the mean CE over the
    chunk, in eval mode. Returns [sum of differences, number of chunks] (float64). The weights are
    never modified (the perturbed loss is a ``functional_call``)."""
    was = net.training
    net.eval()
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = [p for p in net.parameters() if p.requires_grad]
    out = torch.zeros(2, dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0] - m + 1, m):
        xc, yc = x[i : i + m], y[i : i + m]
        with torch.enable_grad(), autocast():
            loss = F.cross_entropy(net(xc).float(), yc)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
        ]
        with torch.no_grad():
            es = SF.perturbation(grads, rho)
            moved = {n: p + e for n, p, e in zip(names, params, es, strict=True)}
            with autocast():
                ploss = F.cross_entropy(torch.func.functional_call(net, moved, (xc,)).float(), yc)
        out[0] += (ploss - loss.detach()).double()
        out[1] += 1
    net.train(was)
    return out


# ---------------------------------------------------------------------------------- trainer
@dataclass
class _State:
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # steps of `epoch` already taken
    global_step: int = 0
    seconds: float = 0.0  # training time so far (excludes evaluation)
    n_rows: int = 0  # metric rows written
    gen_state: list[Tensor] | None = None  # epoch generators' states when mid-epoch
    accum: Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))
    since_row_examples: int = 0
    since_row_seconds: float = 0.0
    since_row_cpu: float = 0.0  # process CPU time of the training steps since the last row


def _default_out_dir(cfg: TrainConfig) -> str:
    tag = "erm" if cfg.sam_rho == 0 else f"{cfg.sam_variant}_rho{cfg.sam_rho}_m{cfg.m}"
    return f"runs/deep_nets/{cfg.dataset}_{cfg.model}_{tag}_seed{cfg.seed}"


def _check_resume_config(run: RunDir, cfg: TrainConfig) -> None:
    old = run.config.get("config", {})
    new = cfg.to_dict()
    diff = [
        k for k in new if k not in RESUME_FREE_FIELDS and k in old and old[k] != new[k]
    ]  # fmt: skip
    if diff:
        raise ValueError(
            f"--resume: the run in {run.path} was started with different flags: "
            + ", ".join(f"--{k} {old[k]!r} (now {new[k]!r})" for k in diff)
        )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run described by ``cfg``; returns the summary (also written to summary.json).

    ``summary["status"]`` is "finished", "stopped" (``stop_after_epoch``) or "interrupted"
    (Ctrl-C: a checkpoint was saved and ``--resume`` continues). A non-finite loss raises
    ``NonFiniteLossError`` after writing a "diverged" summary; the last good checkpoint stays.
    """
    from deep_nets.data import augment, load_dataset
    from deep_nets.models import build_model, count_parameters

    dd, device = _setup_dist(cfg.device)
    try:
        check_config(cfg, dd.world)
        if cfg.workers > 0:
            torch.set_num_threads(cfg.workers)
        out_dir = Path(cfg.out_dir or _default_out_dir(cfg))
        return _train(
            cfg, dd, device, out_dir, load_dataset, augment, build_model, count_parameters
        )
    finally:
        if dd.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg, dd, device, out_dir, load_dataset, augment, build_model, count_parameters):
    is_cuda = device.type == "cuda"
    seeds = make_seeds(cfg.seed)
    data_seed = int(seeds.data.initial_seed())

    # ---- data (identical on every worker; the batches are sharded below)
    splits = load_dataset(
        cfg.dataset,
        cfg.data_dir,
        seed=cfg.seed,
        val_frac=0.1,
        frac_train=cfg.frac_train,
        p_label_noise=cfg.p_label_noise,
        noise_type=cfg.noise_type,
        device=device,
    )
    n_train = splits.train_x.shape[0]
    per_worker = cfg.batch_size // dd.world
    if n_train < cfg.batch_size:
        raise ValueError(
            f"--batch_size {cfg.batch_size} exceeds the {n_train} training examples "
            f"(--frac_train {cfg.frac_train})"
        )
    iters_per_epoch = n_train // cfg.batch_size  # the last incomplete batch is dropped
    chunks_per_worker = max(cfg.acc_steps // dd.world, 1)
    m_local = per_worker // chunks_per_worker

    # ---- model (initialization from its own stream, independent of the data order)
    torch.manual_seed(int(seeds.init.initial_seed()))
    model = build_model(
        cfg.model,
        in_channels=splits.input_shape[0],
        num_classes=splits.num_classes,
        width=cfg.model_width,
        input_shape=tuple(splits.input_shape),
    ).to(device)
    n_params = count_parameters(model)
    if cfg.model_path and not (cfg.resume and (out_dir / CHECKPOINT).exists()):
        load_model_path(model, cfg.model_path)
        model.to(device)
    channels_last = is_cuda and len(splits.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _build_optimizer(cfg, model)
    net: nn.Module = model
    if dd.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if is_cuda else None
        )

    def autocast() -> contextlib.AbstractContextManager:
        if not cfg.half_prec:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    l2_ws = l2_weights(model)

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(logits.float(), y)
        if cfg.l2_reg > 0:
            loss = loss + 0.5 * cfg.l2_reg * sum((w.float() ** 2).sum() for w in l2_ws)
        return loss

    def compute_loss(x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(net(x), y)

    # ---- run directory and checkpoint (rank 0 writes; every rank reads the checkpoint)
    run: RunDir | None = None
    if dd.main:
        run = create_run_dir(out_dir, cfg.to_dict(), device=device, resume=cfg.resume)
        if cfg.resume:
            _check_resume_config(run, cfg)
    if dd.world > 1:
        dist.barrier()
    st = _State(accum=torch.zeros(2, dtype=torch.float64, device=device))
    ckpt_path = out_dir / CHECKPOINT
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        s = ck["state"]
        st.epoch, st.step_in_epoch = int(s["epoch"]), int(s["step_in_epoch"])
        st.global_step, st.seconds, st.n_rows = (
            int(s["global_step"]),
            float(s["seconds"]),
            int(s["n_rows"]),
        )
        st.accum = s["accum"].to(device=device, dtype=torch.float64)
        st.since_row_examples = int(s["since_row_examples"])
        st.since_row_seconds = float(s["since_row_seconds"])
        st.since_row_cpu = float(s["since_row_cpu"])
        st.gen_state = s["gen_state"][dd.rank] if s["gen_state"] is not None else None
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if is_cuda and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"].cpu(), device)
        if run is not None:
            run.truncate_metrics(st.n_rows)
            print(
                f"resumed {out_dir} at epoch {st.epoch} step {st.step_in_epoch} "
                f"(global step {st.global_step})",
                flush=True,
            )
    elif cfg.resume and run is not None:
        run.truncate_metrics(0)  # a run that never reached a checkpoint starts over

    # ---- fixed evaluation subsets (a function of the seed; sharded across workers)
    g_eval = torch.Generator().manual_seed(_derived_seed(data_seed, 2**31))
    sub = torch.randperm(n_train, generator=g_eval)[: cfg.n_eval_train].to(device)
    shard = slice(dd.rank, None, dd.world)

    def cap(t: Tensor) -> Tensor:
        return t[: cfg.n_eval] if cfg.n_eval > 0 else t

    ev_train = (splits.train_x[sub][shard], splits.train_y[sub][shard], splits.noisy[sub][shard])
    ev_val = (cap(splits.val_x)[shard], cap(splits.val_y)[shard])
    ev_test = (cap(splits.test_x)[shard], cap(splits.test_y)[shard])
    m_sharp = min(cfg.sharpness_m or m_local, max(1, cfg.n_sharpness))
    n_sh = (min(cfg.n_sharpness, sub.numel()) // m_sharp) * m_sharp
    sh_idx = sub[:n_sh]
    sh_x = splits.train_x[sh_idx].reshape(-1, m_sharp, *splits.input_shape)[shard]
    sh_y = splits.train_y[sh_idx].reshape(-1, m_sharp)[shard]

    def log_row(epoch_float: float, lr: float, rho: float, epoch_end: bool) -> None:
        if dd.world > 1:  # BN buffers may differ after the last local forward: use rank 0's
            for b in model.buffers():
                dist.broadcast(b, 0)
        t0 = time.perf_counter()
        tr = _all_sum(evaluate(model, *ev_train[:2], cfg.batch_size_eval, noisy=ev_train[2],
                               autocast=autocast), dd)  # fmt: skip
        va = _all_sum(evaluate(model, *ev_val, cfg.batch_size_eval, autocast=autocast), dd)
        te = _all_sum(evaluate(model, *ev_test, cfg.batch_size_eval, autocast=autocast), dd)
        sh = torch.zeros(2, dtype=torch.float64, device=device)
        for xc, yc in zip(sh_x, sh_y, strict=True):
            sh += m_sharpness(model, xc, yc, m_sharp, cfg.sharpness_rho, autocast=autocast)
        sh = _all_sum(sh, dd)
        acc = _all_sum(st.accum.clone(), dd).cpu()
        eval_s = time.perf_counter() - t0
        row = {
            "epoch": round(epoch_float, 6),
            "step": st.global_step,
            "epoch_end": epoch_end,
            "lr": lr,
            "rho": rho,
            "m": m_local,
            "train_loss": (tr[0] / tr[2]).item(),
            "train_err": (tr[1] / tr[2]).item(),
            "train_err_noisy": (tr[3] / tr[4]).item() if tr[4] > 0 else None,
            "train_err_clean": (tr[5] / tr[6]).item() if tr[6] > 0 else None,
            "train_loss_batch": (acc[0] / acc[1]).item() if acc[1] > 0 else None,
            "val_loss": (va[0] / va[2]).item() if va[2] > 0 else None,
            "val_err": (va[1] / va[2]).item() if va[2] > 0 else None,
            "test_loss": (te[0] / te[2]).item(),
            "test_err": (te[1] / te[2]).item(),
            "sharpness": (sh[0] / sh[1]).item() if sh[1] > 0 else None,
            "sharpness_rho": cfg.sharpness_rho,
            "sharpness_m": m_sharp,
            "seconds": round(st.seconds, 3),
            "eval_seconds": round(eval_s, 3),
            "examples_per_s": round(st.since_row_examples / max(st.since_row_seconds, 1e-9), 1),
            "train_cpu_seconds": round(st.since_row_cpu, 4),
        }
        st.accum.zero_()
        st.since_row_examples, st.since_row_seconds, st.since_row_cpu = 0, 0.0, 0.0
        st.n_rows += 1
        if run is not None:
            run.log(row)
            print(
                f"epoch {row['epoch']:.2f} step {row['step']}: train_err {row['train_err']:.4f} "
                f"val_err {row['val_err']} test_err {row['test_err']:.4f} "
                f"sharpness {row['sharpness']} ({row['examples_per_s']} ex/s)",
                flush=True,
            )

    def save_checkpoint(gen_state: list[Tensor] | None) -> None:
        gens = None
        if gen_state is not None:  # every worker's generator states, gathered on rank 0
            gens = [gen_state]
            if dd.world > 1:
                gens = [None] * dd.world
                dist.all_gather_object(gens, [t.cpu() for t in gen_state])
        if dd.main:
            ck = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": {"name": cfg.lr_schedule, "global_step": st.global_step},
                "state": {
                    "epoch": st.epoch,
                    "step_in_epoch": st.step_in_epoch,
                    "global_step": st.global_step,
                    "seconds": st.seconds,
                    "n_rows": st.n_rows,
                    "accum": st.accum.cpu().clone(),
                    "since_row_examples": st.since_row_examples,
                    "since_row_seconds": st.since_row_seconds,
                    "since_row_cpu": st.since_row_cpu,
                    "gen_state": gens,
                    "data_seed": data_seed,
                },
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if is_cuda else None,
                },
                "config": cfg.to_dict(),
            }
            atomic_torch_save(ck, ckpt_path)
        if dd.world > 1:
            dist.barrier()

    def summary(status: str, message: str | None = None) -> dict[str, Any]:
        rows = [r for r in (run.metrics() if run is not None else []) if r.get("epoch_end")]
        s: dict[str, Any] = {
            "status": status,
            "epochs_done": st.epoch,
            "global_step": st.global_step,
            "n_params": n_params,
            "m": m_local,
            "world_size": dd.world,
            "seconds": round(st.seconds, 3),
        }
        if message:
            s["message"] = message
        if rows:
            valid = [r for r in rows if r.get("val_err") is not None]
            best = min(valid, key=lambda r: r["val_err"]) if valid else rows[-1]
            s.update(
                best_epoch=best["epoch"],
                best_val_err=best.get("val_err"),
                test_err_at_best_val=best["test_err"],
                test_err_last=rows[-1]["test_err"],
                val_err_last=rows[-1].get("val_err"),
                train_err_last=rows[-1]["train_err"],
                sharpness_last=rows[-1].get("sharpness"),
            )
        if run is not None:
            run.write_summary(s)
        return s

    # ---- the training loop
    def batch_at(perm: Tensor, it: int) -> tuple[Tensor, Tensor]:
        idx = perm[it * cfg.batch_size + dd.rank * per_worker :][:per_worker]
        return splits.train_x[idx], splits.train_y[idx]

    def prepare(x: Tensor, gen: torch.Generator) -> Tensor:
        if not cfg.no_data_augm:
            x = augment(x, gen, pad=4, flip=bool(splits.augment_flip))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    params = [p for p in model.parameters()]
    flags = torch.zeros(2, device=device)  # [stop requested, non-finite loss]
    status = "finished"
    net.train()
    opt.zero_grad(set_to_none=True)
    with GracefulInterrupt() as stop:
        while st.epoch < cfg.epochs:
            epoch = st.epoch
            perm = epoch_permutation(data_seed, epoch, n_train).to(device)
            gen, noise_gen = epoch_generators(data_seed, epoch, dd.rank, device)
            if st.gen_state is not None:
                gen.set_state(st.gen_state[0])
                noise_gen.set_state(st.gen_state[1])
                st.gen_state = None
            active = sam_active(cfg, epoch)
            rho = cfg.sam_rho if active else 0.0
            t_start, cpu_start = time.perf_counter(), time.process_time()
            interrupted = False
            for it in range(st.step_in_epoch, iters_per_epoch):
                lr = lr_at(
                    cfg.lr_schedule, cfg.lr_max, cfg.epochs, epoch + (it + 1) / iters_per_epoch
                )
                for grp in opt.param_groups:
                    grp["lr"] = lr
                x, y = batch_at(perm, it)
                x = prepare(x, gen)
                loss, ploss = _train_step(
                    cfg, opt, net, compute_loss, x, y, m_local, active, noise_gen, params,
                    other=functools.partial(_other_batch, splits, per_worker, gen, prepare),
                    autocast=autocast,
                )  # fmt: skip
                opt.zero_grad(set_to_none=True)
                st.step_in_epoch = it + 1
                st.global_step += 1
                st.since_row_examples += cfg.batch_size
                st.accum[0] += loss.detach().double()
                st.accum[1] += 1
                nonfinite = ~torch.isfinite(loss.detach())
                if ploss is not None:
                    nonfinite = nonfinite | ~torch.isfinite(ploss.detach())
                flags[1] = torch.maximum(flags[1], nonfinite.float())
                # On a GPU the checks below sync with the host, so they run every 50 steps only.
                due = not is_cuda or (it + 1) % 50 == 0 or it + 1 == iters_per_epoch
                if due or stop.requested:
                    flags[0] = float(stop.requested)
                    if dd.world > 1:
                        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                    if flags[1] > 0:
                        msg = (
                            f"non-finite loss at epoch {epoch + 1}, step {it + 1} of the epoch "
                            f"(global step {st.global_step}): loss {float(loss)}, perturbed loss "
                            f"{None if ploss is None else float(ploss)}"
                            f"{' (first non-finite within the last 50 steps)' if is_cuda else ''}"
                            f"; the last good checkpoint is {ckpt_path} (end of epoch {epoch})"
                        )
                        if dd.main:
                            print(msg, file=sys.stderr, flush=True)
                        st.seconds += _elapsed(t_start, is_cuda)
                        summary("diverged", msg)
                        raise NonFiniteLossError(msg)
                    if flags[0] > 0:
                        interrupted = True
                        break
                if (
                    cfg.eval_iter_freq
                    and st.global_step % cfg.eval_iter_freq == 0
                    and it + 1 < iters_per_epoch
                ):
                    dt = _elapsed(t_start, is_cuda)
                    st.seconds += dt
                    st.since_row_seconds += dt
                    st.since_row_cpu += time.process_time() - cpu_start
                    log_row(epoch + (it + 1) / iters_per_epoch, lr, rho, False)
                    t_start, cpu_start = time.perf_counter(), time.process_time()
            dt = _elapsed(t_start, is_cuda)
            st.seconds += dt
            st.since_row_seconds += dt
            st.since_row_cpu += time.process_time() - cpu_start
            if interrupted:
                save_checkpoint([gen.get_state(), noise_gen.get_state()])
                status = "interrupted"
                if dd.main:
                    print(
                        f"interrupted at epoch {epoch + 1}, step {st.step_in_epoch}: checkpoint "
                        f"saved to {ckpt_path}; continue with --resume",
                        file=sys.stderr,
                        flush=True,
                    )
                break
            log_row(epoch + 1, lr_at(cfg.lr_schedule, cfg.lr_max, cfg.epochs, epoch + 1), rho, True)
            st.epoch, st.step_in_epoch = epoch + 1, 0
            save_checkpoint(None)
            if cfg.stop_after_epoch and st.epoch >= cfg.stop_after_epoch and st.epoch < cfg.epochs:
                status = "stopped"
                break
    return summary(status)


def _elapsed(t0: float, is_cuda: bool) -> float:
    if is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _other_batch(
    splits: Any, n: int, gen: torch.Generator, prepare: Callable
) -> tuple[Tensor, Tensor]:
    """An independent batch of n training examples drawn uniformly (with replacement)."""
    idx = torch.randint(splits.train_x.shape[0], (n,), generator=gen).to(splits.train_x.device)
    return prepare(splits.train_x[idx], gen), splits.train_y[idx]


def _train_step(
    cfg: TrainConfig,
    opt: SAM,
    net: nn.Module,
    compute_loss: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    m: int,
    active: bool,
    gen: torch.Generator,
    params: list[Tensor],
    *,
    other: Callable[[], tuple[Tensor, Tensor]],
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[Tensor, Tensor | None]:
    """One optimizer step on the worker's batch (x, y); returns (loss at w or at the only point
    evaluated, loss at the perturbed weights or None). Gradients are left for the caller to zero.

    - ERM (SAM off): forward-backward, base step.
    - sam / asam, same batch: ``msam_backward`` over chunks of m (per-chunk ascent, sam_iters
      projected steps), then ``opt.update()``.
    - sam / asam, other batch (n-SAM approximation): ascent direction from an independent batch
      (its pass neither syncs gradients nor updates batch-norm statistics), update gradient from
      the actual batch at w + e.
    - looksam: ``LookSAM.first_step`` decides whether the second pass is needed (1 in k steps).
    - random: w + rho u/||u|| with u ~ N(0, I) (``SAM.perturb`` on Gaussian directions), one
      forward-backward there; the direction is drawn from this worker's generator.
    """
    if not active:
        with autocast():
            loss = compute_loss(x, y)
        loss.backward()
        opt.update()
        return loss, None
    if cfg.sam_variant == "random":
        noise = [
            torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in params
        ]
        opt.perturb(noise)
        with autocast():
            ploss = compute_loss(x, y)
        ploss.backward()
        opt.restore()
        opt.update()
        return ploss, None
    if cfg.sam_variant == "looksam":
        with local_grads(net) if opt.ascent_due else contextlib.nullcontext(), autocast():
            loss = compute_loss(x, y)
            loss.backward()
        ploss = None
        if opt.first_step(zero_grad=True):
            with frozen_bn_stats(net), autocast():
                ploss = compute_loss(x, y)
            ploss.backward()
        opt.second_step()
        return loss, ploss
    if cfg.sam_perturb_batch == "other":
        xo, yo = other()
        with local_grads(net), frozen_bn_stats(net), autocast():
            lo = compute_loss(xo, yo)
            lo.backward()
        opt.first_step(zero_grad=True)
        with autocast():
            ploss = compute_loss(x, y)
        ploss.backward()
        opt.second_step()
        return ploss, None
    with autocast():
        loss, ploss = msam_backward(
            opt, net, compute_loss, x, y, m,
            sam_iters=cfg.sam_iters, step_size_mult=cfg.sam_step_size_mult,
        )  # fmt: skip
    opt.update()
    return loss, ploss


# ------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from deep_nets.data import DATASETS
    from deep_nets.models import MODELS

    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="deep_nets/train.py",
        description=__doc__.split("\n\n")[0],
        epilog="Named configs (--config): " + ", ".join(list_configs()),
    )
    a = p.add_argument
    g = p.add_argument_group("data")
    a = g.add_argument
    a(
        "--dataset",
        type=str,
        choices=DATASETS,
        default=d.dataset,
        help="data set: fashion_mnist, mnist1d, cifar10, cifar100, svhn (default: %(default)s)",
    )
    a(
        "--data_dir",
        type=str,
        default=d.data_dir,
        help="folder with the data files (default: a per-data-set standard place; see README)",
    )
    a(
        "--frac_train",
        type=float,
        default=d.frac_train,
        help="fraction of the training set used, in (0, 1] (default: %(default)s)",
    )
    a(
        "--p_label_noise",
        type=float,
        default=d.p_label_noise,
        help="fraction of training labels replaced by noise, in [0, 1) (default: %(default)s)",
    )
    a(
        "--noise_type",
        type=str,
        choices=NOISE_TYPES,
        default=d.noise_type,
        help="sym: a uniformly drawn different class; asym: CIFAR-10 class flips "
        "(default: %(default)s)",
    )
    a(
        "--no_data_augm",
        action="store_true",
        help="disable random crop (padding 4) + horizontal flip (default: augmentation on)",
    )
    g = p.add_argument_group("model")
    a = g.add_argument
    a(
        "--model",
        type=str,
        choices=MODELS,
        default=d.model,
        help="architecture (default: %(default)s)",
    )
    a(
        "--model_width",
        type=int,
        default=d.model_width,
        help="width: channels of the first stage for ResNets, k for WRN (default: the model's own)",
    )
    a(
        "--model_path",
        type=str,
        default=d.model_path,
        help="start from these weights (our checkpoint.pt or a plain state dict): fine-tuning "
        "(default: none)",
    )
    g = p.add_argument_group("optimization")
    a = g.add_argument
    a(
        "--batch_size",
        type=int,
        default=d.batch_size,
        help="examples per step, summed over workers (default: %(default)s)",
    )
    a("--epochs", type=int, default=d.epochs, help="training epochs (default: %(default)s)")
    a("--lr_max", type=float, default=d.lr_max, help="peak learning rate (default: %(default)s)")
    a(
        "--lr_schedule",
        type=str,
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help="piecewise (/10 at 50%%, /100 at 75%% of the epochs), cosine, cyclic (up to 40%%, "
        "then down), constant; updated every step (default: %(default)s)",
    )
    a(
        "--momentum",
        type=float,
        default=d.momentum,
        help="SGD momentum, no Nesterov (default: %(default)s)",
    )
    a(
        "--l2_reg",
        type=float,
        default=d.l2_reg,
        help="L2 term 0.5 * l2_reg * ||w||^2 inside the loss (so inside the ascent too), on "
        "conv/linear weights (default: %(default)s)",
    )
    a(
        "--weight_decay",
        type=float,
        default=d.weight_decay,
        help="weight decay applied by SGD at the update only, outside the ascent "
        "(default: %(default)s)",
    )
    g = p.add_argument_group("SAM")
    a = g.add_argument
    a(
        "--sam_rho",
        type=float,
        default=d.sam_rho,
        help="radius rho of the ascent; 0 = plain SGD (ERM) (default: %(default)s)",
    )
    a(
        "--sam_variant",
        type=str,
        choices=SAM_VARIANTS,
        default=d.sam_variant,
        help="sam; asam (adaptive, T = |w| + asam_eta); looksam (SAM gradient every looksam_k "
        "steps); random (a random direction of norm rho: the Fig. 1 baseline) "
        "(default: %(default)s)",
    )
    a(
        "--sam_iters",
        type=int,
        default=d.sam_iters,
        help="ascent steps (step rho * sam_step_size_mult, projected on the rho-ball) "
        "(default: %(default)s)",
    )
    a(
        "--sam_step_size_mult",
        type=float,
        default=d.sam_step_size_mult,
        help="ascent step size as a multiple of rho when sam_iters > 1 (default: %(default)s)",
    )
    a(
        "--sam_no_grad_norm",
        action="store_true",
        help="unnormalized ascent e = rho * g (default: normalized, e = rho g / ||g||)",
    )
    a(
        "--sam_perturb_batch",
        type=str,
        choices=PERTURB_BATCHES,
        default=d.sam_perturb_batch,
        help="same: ascent on the update's own batch (m-SAM); other: ascent on an independent "
        "random batch of the same size, the n-SAM approximation of the paper (default: "
        "%(default)s)",
    )
    a(
        "--acc_steps",
        type=int,
        default=d.acc_steps,
        help="chunks per batch: m = batch_size / acc_steps examples per ascent (m-SAM) "
        "(default: %(default)s)",
    )
    a(
        "--sam_epoch_frac_start",
        type=float,
        default=d.sam_epoch_frac_start,
        help="SAM is on from this fraction of the epochs (ERM before) (default: %(default)s)",
    )
    a(
        "--sam_epoch_frac_end",
        type=float,
        default=d.sam_epoch_frac_end,
        help="SAM is off from this fraction of the epochs (ERM after) (default: %(default)s)",
    )
    a(
        "--asam_eta",
        type=float,
        default=d.asam_eta,
        help="ASAM offset eta in T = |w| + eta (default: %(default)s)",
    )
    a(
        "--looksam_k",
        type=int,
        default=d.looksam_k,
        help="LookSAM: SAM gradient every k steps (default: %(default)s)",
    )
    a(
        "--looksam_alpha",
        type=float,
        default=d.looksam_alpha,
        help="LookSAM: weight of the reused orthogonal direction (default: %(default)s)",
    )
    g = p.add_argument_group("evaluation")
    a = g.add_argument
    a(
        "--eval_iter_freq",
        type=int,
        default=d.eval_iter_freq,
        help="also evaluate every this many steps; 0 = once per epoch (default: %(default)s)",
    )
    a(
        "--batch_size_eval",
        type=int,
        default=d.batch_size_eval,
        help="examples per evaluation batch (default: %(default)s)",
    )
    a(
        "--n_eval_train",
        type=int,
        default=d.n_eval_train,
        help="size of the fixed training subset evaluated (examples) (default: %(default)s)",
    )
    a(
        "--n_eval",
        type=int,
        default=d.n_eval,
        help="evaluate at most this many validation/test examples; 0 = all (default: %(default)s)",
    )
    a(
        "--sharpness_rho",
        type=float,
        default=d.sharpness_rho,
        help="rho of the logged one-step m-sharpness estimate (default: %(default)s)",
    )
    a(
        "--sharpness_m",
        type=int,
        default=d.sharpness_m,
        help="examples per chunk of the sharpness estimate; 0 = the training m "
        "(default: %(default)s)",
    )
    a(
        "--n_sharpness",
        type=int,
        default=d.n_sharpness,
        help="training examples used by the sharpness estimate (default: %(default)s)",
    )
    g = p.add_argument_group("runtime")
    a = g.add_argument
    a(
        "--half_prec",
        action="store_true",
        help="bfloat16 autocast for forward passes (default: float32)",
    )
    a(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the split, label noise, init and data order (default: %(default)s)",
    )
    a(
        "--device",
        type=str,
        default=d.device,
        help="cpu, cuda, cuda:N (default: cuda if available, else cpu)",
    )
    a(
        "--workers",
        type=int,
        default=d.workers,
        help="CPU threads for torch (data live on the device, no loader processes); 0 = torch's "
        "default (default: %(default)s)",
    )
    a(
        "--out_dir",
        type=str,
        default=d.out_dir,
        help="run directory (default: runs/deep_nets/<dataset>_<model>_<variant>_...)",
    )
    a(
        "--resume",
        action="store_true",
        help="continue the run in --out_dir from its checkpoint (default: off)",
    )
    a(
        "--stop_after_epoch",
        type=int,
        default=d.stop_after_epoch,
        help="stop (resumably) after this many epochs, for time-limited jobs; 0 = never "
        "(default: %(default)s)",
    )
    a(
        "--config",
        type=str,
        choices=list_configs(),
        default=None,
        help="named config from deep_nets/configs/ supplying defaults; explicit flags override "
        "(default: none)",
    )
    return p


def config_from_argv(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a checked ``TrainConfig`` (exit 2 naming the bad flags)."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            parser.set_defaults(**load_named_config(pre.config), config=pre.config)
        except ValueError as e:
            parser.error(str(e))
    args = parser.parse_args(argv)
    cfg = TrainConfig.from_dict(vars(args))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        check_config(cfg, world)
    except ValueError as e:
        parser.error(str(e))
    out = Path(cfg.out_dir or _default_out_dir(cfg))
    if (out / "config.json").exists() and not cfg.resume:
        parser.error(
            f"--out_dir {out} already holds a run: add --resume or choose another --out_dir"
        )
    if cfg.resume and (out / "config.json").exists():
        try:
            _check_resume_config(RunDir(out), cfg)
        except ValueError as e:
            parser.error(str(e))
    try:
        select_device(cfg.device)
    except ValueError as e:
        parser.error(str(e))
    if cfg.model_path and not Path(cfg.model_path).is_file():
        parser.error(f"--model_path {cfg.model_path}: no such file")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_argv(argv)
    from deep_nets.data import DataError

    try:
        s = train(cfg)
    except (DataError, ValueError) as e:
        print(f"deep_nets/train.py: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"deep_nets/train.py: stopped: {e}", file=sys.stderr)
        return 1
    if s["status"] == "interrupted":
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
