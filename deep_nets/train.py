"""Deep-network trainer with SAM, m-SAM, n-SAM, ASAM, LookSAM and random perturbations.

    python -m deep_nets.train --dataset=fashion_mnist --model=resnet_tiny_gn --epochs=10 \\
        --sam_rho=0.05 --acc_steps=8 --out_dir=runs/fmnist_msam16

Flag names and meanings follow the original code of "Towards Understanding Sharpness-Aware
Minimization" (PAPERS.md#deep-nets); deep_nets/README.md has the flag-by-flag parity table. The
pieces, each in one place: the flags and their checks (``deep_nets/config.py``), one step function
per SAM variant (``deep_nets/steps.py``), evaluation, the logged sharpness and SWA
(``deep_nets/evaluation.py``), and here the schedules, the run state with its checkpoint, and the
loop (``_loop``), which reads top to bottom.

The loss minimized is the original's L(w) = CE(w) + 0.5 * l2_reg * ||w||^2 + l1_reg * ||w||_1 over
every parameter (``--l2_scope weights``: conv/linear weights only); it is inside the ascent too.
A run directory holds ``config.json`` (flags, git, versions, and the data's provenance: files,
SHA-256, sizes, normalization, noise counts), ``metrics.jsonl`` (one JSON object per evaluation,
the first one before any step), ``summary.json``, ``checkpoint.pt`` (rewritten atomically after
every epoch and on Ctrl-C; ``--resume`` continues it, giving the same metrics as an uninterrupted
run on CPU), ``best.pt`` (the weights with the lowest validation error so far) and, at the end,
``wrong.npz`` (which validation and test examples the best and the last weights get wrong, scored
on every example; ``summary.json`` ``scored`` has their error rates and the examples' digest).
``torchrun --nproc_per_node=N -m deep_nets.train ...`` trains with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from deep_nets.config import (
    LR_SCHEDULES,
    RESUME_FREE_FIELDS,
    TrainConfig,
    build_parser,
    check_config,
    load_named_config,
)
from deep_nets.evaluation import evaluate, logged_sharpness, swa_bn_update, swa_update
from deep_nets.steps import STEPS, StepContext, bn_eval, build_optimizer, step_kind
from suite.cli import GracefulInterrupt, make_seeds, out_dir_error, select_device
from suite.rundir import (
    RunDir,
    RunDirError,
    atomic_torch_save,
    atomic_write_json,
    create_run_dir,
    load_error_reason,
    read_json,
    run_dir_lock,
    safe_torch_load,
)

__all__ = ["TrainConfig", "build_parser", "config_from_argv", "main", "train"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
WRONG = "wrong.npz"  # per-example correctness of the best and last weights (score_examples)
EXIT_INTERRUPTED = 130


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is left in place."""


# ------------------------------------------------------------------------------- schedules
def lr_at(schedule: str, lr_max: float, epochs: int, t: float) -> float:
    """Learning rate at fractional epoch t in [0, epochs], the original's formulas.

    piecewise: lr_max, lr_max/10 from t/epochs = 0.5, lr_max/100 from 0.75 (piecewise_0Xepochs:
    the first drop at 0.X instead of 0.5); cosine: lr_max (0.5 + 0.5 cos(pi t / epochs)); cyclic:
    linear 0 -> lr_max at epoch floor(2 epochs / 5) -> 0 at the end; constant: lr_max.
    """
    first = {"piecewise": 0.5, "piecewise_02epochs": 0.2}
    first.update(piecewise_03epochs=0.3, piecewise_04epochs=0.4)
    if schedule in first:
        if t / epochs < first[schedule]:
            return lr_max
        return lr_max / 10.0 if t / epochs < 0.75 else lr_max / 100.0
    if schedule == "cosine":
        return lr_max * (0.5 + 0.5 * math.cos(math.pi * t / epochs))
    if schedule == "cyclic":
        return float(np.interp([t], [0, epochs * 2 // 5, epochs], [0, lr_max, 0])[0])
    if schedule == "constant":
        return lr_max
    raise ValueError(f"--lr_schedule {schedule!r}: choose from {', '.join(LR_SCHEDULES)}")


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
    random directions and gradient noise]. Their states are saved in mid-epoch checkpoints."""
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
def reg_params(model: nn.Module, scope: str) -> list[Tensor]:
    """Tensors the L2 / L1 terms cover: every parameter (``all``, the original) or the conv and
    linear weights only (``weights``: dim >= 2, no biases or norm layers)."""
    ps = [p for p in model.parameters() if p.requires_grad]
    return ps if scope == "all" else [p for p in ps if p.dim() >= 2]


def make_loss(cfg: TrainConfig, net: nn.Module, model: nn.Module):
    """The training loss on a batch: mean cross-entropy + 0.5 l2_reg ||w||^2 + l1_reg ||w||_1.

    The regularized tensors are read from ``model`` at every call (by name), so that the
    vectorized m-SAM step, which replaces the module's tensors by per-chunk ones
    (``torch.func.functional_call``), regularizes the perturbed weights as the loop does."""
    chosen = {id(p) for p in reg_params(model, cfg.l2_scope)}
    names = [n for n, p in model.named_parameters() if id(p) in chosen]

    def wide(t: Tensor) -> Tensor:  # at least float32 (half-precision logits), float64 kept
        return t.to(torch.promote_types(t.dtype, torch.float32))

    def loss(x: Tensor, y: Tensor) -> Tensor:
        out = F.cross_entropy(wide(net(x)), y)
        if cfg.l2_reg > 0 or cfg.l1_reg > 0:
            now = dict(model.named_parameters())
            ws = [now[n] for n in names]
        if cfg.l2_reg > 0:
            out = out + 0.5 * cfg.l2_reg * sum((wide(w) ** 2).sum() for w in ws)
        if cfg.l1_reg > 0:
            out = out + cfg.l1_reg * sum(wide(w).abs().sum() for w in ws)
        return out

    return loss


def load_model_path(model: nn.Module, path: str, model_name: str | None = None) -> None:
    """Load ``--model_path``: our checkpoint.pt / best.pt (its "model" entry), the original
    code's checkpoint (``{'last': state dict, ...}`` with its module names, renamed by
    ``models.from_original_keys``) or a plain state dict, with or without DDP's "module."
    prefixes. Read with ``torch.load(weights_only=True)``: nothing is unpickled."""
    from deep_nets.models import from_original_keys

    what = (
        "expected one of our checkpoints (checkpoint.pt, best.pt: a dict with 'model'), the "
        "original code's .pth (a dict with 'last') or a plain state dict of tensors"
    )
    if not Path(path).is_file():
        raise ValueError(f"--model_path {path}: no such file ({what})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling or format error: say which flag, file and format
        raise ValueError(
            f"--model_path {path}: cannot be read as a checkpoint: {what} "
            f"({load_error_reason(e)}); the file is refused (only tensors are loaded)"
        ) from None
    original = isinstance(obj, dict) and isinstance(obj.get("last"), dict)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif original:
        obj = obj["last"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"--model_path {path}: {what}; got {type(obj).__name__}")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    if original and model_name is not None:
        sd = from_original_keys(model_name, sd)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"--model_path {path} does not match --model/--model_width: {e}") from e


# -------------------------------------------------------------------------------- run state
@dataclass
class RunState:
    """Everything the loop changes besides the model and optimizer (saved in checkpoints)."""

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
    best_val_err: float = math.inf
    best_swa_val_err: float = math.inf
    prev_x: Tensor | None = None  # the previous batch (--sam_use_prev_batch)
    prev_y: Tensor | None = None


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The model-selection rule: the first row with the lowest *validation* error (the test error
    never enters), or the last row when no row has a validation error."""
    valid = [r for r in rows if r.get("val_err") is not None]
    return min(valid, key=lambda r: r["val_err"]) if valid else rows[-1]


def _default_out_dir(cfg: TrainConfig) -> str:
    tag = "erm" if not cfg.sam_on else f"{cfg.sam_variant}_rho{cfg.sam_rho}_m{cfg.m}"
    return f"runs/deep_nets/{cfg.dataset}_{cfg.model}_{tag}_seed{cfg.seed}"


def _check_resume_config(path: Path, cfg: TrainConfig, old: dict | None = None) -> None:
    """--resume continues only a run of the same flags: those of ``path``'s config.json, or
    ``old`` (a checkpoint's own config)."""
    if old is None:
        old = read_json(path / "config.json", want_dict=True).get("config", {})
    new = cfg.to_dict()
    diff = [k for k in new if k not in RESUME_FREE_FIELDS and k in old and old[k] != new[k]]
    if diff:
        raise ValueError(
            f"--resume: the run in {path} was started with different flags: "
            + ", ".join(f"--{k} {old[k]!r} (now {new[k]!r})" for k in diff)
        )


def _data_digest(info: dict[str, Any]) -> list[str]:
    """The SHA-256 digests identifying a data set's content (its files, or the generated data)."""
    return sorted(f["sha256"] for f in info.get("files", [])) + [info.get("generated_sha256", "")]


def _check_data_dir(cfg: TrainConfig) -> None:
    if cfg.data_dir is None:
        return
    if cfg.dataset == "mnist1d":
        raise ValueError("--data_dir has no effect with --dataset mnist1d (generated offline)")
    if not Path(cfg.data_dir).is_dir():
        raise ValueError(
            f"--data_dir {cfg.data_dir}: no such folder (give the folder holding the "
            f"{cfg.dataset} files, or leave --data_dir out for the standard place)"
        )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run described by ``cfg``; returns the summary (also written to summary.json).

    ``summary["status"]`` is "finished", "stopped" (``stop_after_epoch``) or "interrupted"
    (Ctrl-C: a checkpoint was saved and ``--resume`` continues). A non-finite loss raises
    ``NonFiniteLossError`` after writing a "diverged" summary; the last good checkpoint stays.
    """
    dd, device = _setup_dist(cfg.device)
    try:
        check_config(cfg, dd.world)
        _check_data_dir(cfg)
        if cfg.workers > 0:
            torch.set_num_threads(cfg.workers)
        out = Path(cfg.out_dir or _default_out_dir(cfg))
        if problem := out_dir_error(out):
            raise RunDirError(problem)
        # one writer per run directory (rank 0 writes it), for the whole run
        with run_dir_lock(out) if dd.main else contextlib.nullcontext():
            return Trainer(cfg, dd, device, out).loop()
    finally:
        if dd.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """One run: its data, model, optimizer, run directory and state, and the loop over them."""

    def __init__(self, cfg: TrainConfig, dd: Dist, device: torch.device, out_dir: Path) -> None:
        from deep_nets.data import augment, load_dataset
        from deep_nets.models import build_model, count_parameters

        self.cfg, self.dd, self.device, self.out_dir = cfg, dd, device, out_dir
        self.is_cuda = device.type == "cuda"
        self.augment = augment
        seeds = make_seeds(cfg.seed)
        self.data_seed = int(seeds.data.initial_seed())
        # data (identical on every worker; the batches are sharded in `batch_at`)
        self.splits = sp = load_dataset(
            cfg.dataset,
            cfg.data_dir,
            seed=cfg.seed,
            val_frac=0.1,
            frac_train=cfg.frac_train,
            p_label_noise=cfg.p_label_noise,
            noise_type=cfg.noise_type,
            device=device,
            noisy_val=not cfg.clean_val,
            mnist1d_n_val=cfg.mnist1d_n_val,
            mnist1d_n_test=cfg.mnist1d_n_test,
        )
        self.n_train = sp.train_x.shape[0]
        self.per_worker = cfg.batch_size // dd.world
        if self.n_train < cfg.batch_size:
            raise ValueError(
                f"--batch_size {cfg.batch_size} exceeds the {self.n_train} training examples "
                f"(--frac_train {cfg.frac_train})"
            )
        self.iters = self.n_train // cfg.batch_size  # the last incomplete batch is dropped
        self.m = self.per_worker // max(cfg.acc_steps // dd.world, 1)
        # model (initialization from its own stream, independent of the data order)
        torch.manual_seed(int(seeds.init.initial_seed()))
        model = build_model(
            cfg.model,
            in_channels=sp.input_shape[0],
            num_classes=sp.num_classes,
            width=cfg.model_width,
            input_shape=tuple(sp.input_shape),
            droprate=cfg.droprate,
            activation=cfg.activation,
            init=cfg.init,
            scale_init=cfg.scale_init,
        ).to(device)
        self.n_params = count_parameters(model)
        ckpt = out_dir / CHECKPOINT
        if cfg.model_path and not (cfg.resume and ckpt.exists()):
            load_model_path(model, cfg.model_path, cfg.model)
            model.to(device)
        self.channels_last = self.is_cuda and len(sp.input_shape) == 3
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.swa = copy.deepcopy(model).eval()
        self.opt = build_optimizer(cfg, model)
        self.net: nn.Module = model
        if dd.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if self.is_cuda else None
            )
        fp16 = cfg.half_prec and cfg.half_prec_dtype == "float16"
        self.scaler = torch.amp.GradScaler(device.type) if fp16 else None
        self.loss = make_loss(cfg, self.net, model)
        self.noise = {"gen": None}  # the device generator of the current epoch
        if cfg.grad_gauss_std > 0:
            for p in model.parameters():
                p.register_hook(self._grad_noise)
        self.best: dict[str, Any] | None = None  # the contents of best.pt
        self.st = RunState(accum=torch.zeros(2, dtype=torch.float64, device=device))
        self._open_run_dir()
        self._eval_subsets()

    # ---- precision, noise
    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.cfg.half_prec:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.cfg.half_prec_dtype == "float16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _grad_noise(self, g: Tensor) -> Tensor:
        """--grad_gauss_std: g + std * N(0, I), on every backward (ascent passes included; not
        in evaluation, where the generator is unset)."""
        if self.noise["gen"] is None:
            return g
        n = torch.randn(g.shape, generator=self.noise["gen"], device=g.device, dtype=g.dtype)
        return g + self.cfg.grad_gauss_std * n

    # ---- run directory and checkpoints
    def _open_run_dir(self) -> None:
        cfg, dd, info = self.cfg, self.dd, self.splits.info
        self.run: RunDir | None = None
        ckpt = self.out_dir / CHECKPOINT
        ck = None
        if cfg.resume and ckpt.exists():  # read (and checked) before anything is written
            ck = safe_torch_load(ckpt, "a checkpoint of deep_nets/train.py", self.device)
            if not isinstance(ck, dict) or not isinstance(ck.get("config"), dict):
                raise RunDirError(f"{ckpt} is not a checkpoint of deep_nets/train.py")
            _check_resume_config(self.out_dir, cfg, ck["config"])  # a stray or swapped file
        if dd.main:
            self.run = create_run_dir(
                self.out_dir, cfg.to_dict(), device=self.device, resume=cfg.resume
            )
            conf = read_json(self.run.path / "config.json", want_dict=True)
            if cfg.resume:
                _check_resume_config(self.run.path, cfg)
                old = conf.get("data")
                if old is not None and _data_digest(old) != _data_digest(info):
                    raise ValueError(
                        f"--resume with --data_dir {cfg.data_dir}: the data files differ from the "
                        f"run's (SHA-256 in {self.run.path / 'config.json'}); use the same data"
                    )
            if "data" not in conf:
                conf["data"] = info
                atomic_write_json(self.run.path / "config.json", conf)
        if dd.world > 1:
            dist.barrier()
        if ck is not None:
            self._load_checkpoint(ckpt, ck)
        elif cfg.resume and self.run is not None:
            self.run.truncate_metrics(0)  # a run that never reached a checkpoint starts over

    def _load_checkpoint(self, path: Path, ck: dict[str, Any]) -> None:
        try:
            self._restore(ck)
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise RunDirError(
                f"{path} does not match this run ({type(e).__name__}: {str(e)[:200]}); the file "
                "is damaged or from another version: start over in a new --out_dir"
            ) from None
        st = self.st
        self.best = None
        if (self.out_dir / BEST).exists():
            self.best = safe_torch_load(self.out_dir / BEST, "the best weights (best.pt)")
        if self.run is not None:
            n = len(self.run.metrics())
            if n < st.n_rows:  # rows lost: a summary from the rest would be invented numbers
                raise RunDirError(
                    f"{self.run.metrics_path} has {n} rows, fewer than the {st.n_rows} its "
                    f"checkpoint {path} counts: the run directory was edited or damaged; "
                    "restore the file, or start the run over in a new --out_dir"
                )
            self.run.truncate_metrics(st.n_rows)
            print(
                f"resumed {self.out_dir} at epoch {st.epoch} step {st.step_in_epoch} "
                f"(global step {st.global_step})",
                flush=True,
            )

    def _restore(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.swa.load_state_dict(ck["swa"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(ck["scaler"])
        s, st = ck["state"], self.st
        for f in dataclasses.fields(RunState):
            if f.name not in ("gen_state", "accum", "prev_x", "prev_y"):
                setattr(st, f.name, type(getattr(st, f.name))(s[f.name]))
        st.accum = s["accum"].to(device=self.device, dtype=torch.float64)
        st.gen_state = s["gen_state"][self.dd.rank] if s["gen_state"] is not None else None
        st.prev_x, st.prev_y = s.get("prev_x"), s.get("prev_y")
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if self.is_cuda and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"].cpu(), self.device)

    def save_checkpoint(self, gen_state: list[Tensor] | None) -> None:
        gens, st, dd = None, self.st, self.dd
        if gen_state is not None:  # every worker's generator states, gathered on rank 0
            gens = [gen_state]
            if dd.world > 1:
                gens = [None] * dd.world
                dist.all_gather_object(gens, [t.cpu() for t in gen_state])
        if dd.main:
            state = {f.name: getattr(st, f.name) for f in dataclasses.fields(RunState)}
            state.update(accum=st.accum.cpu().clone(), gen_state=gens, data_seed=self.data_seed)
            ck = {
                "model": self.model.state_dict(),
                "swa": self.swa.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "scheduler": {"name": self.cfg.lr_schedule, "global_step": st.global_step},
                "state": state,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.is_cuda else None,
                },
                "config": self.cfg.to_dict(),
            }
            atomic_torch_save(ck, self.out_dir / CHECKPOINT)
        if dd.world > 1:
            dist.barrier()

    def _save_weights(self, name: str, **extra: Any) -> None:
        if self.dd.main:
            atomic_torch_save({"model": self.model.state_dict(), **extra}, self.out_dir / name)

    # ---- evaluation
    def _eval_subsets(self) -> None:
        cfg, sp, dd = self.cfg, self.splits, self.dd
        g_eval = torch.Generator().manual_seed(_derived_seed(self.data_seed, 2**31))
        sub = torch.randperm(self.n_train, generator=g_eval)[: cfg.n_eval_train].to(self.device)
        shard = slice(dd.rank, None, dd.world)

        def cap(t: Tensor) -> Tensor:
            return t[: cfg.n_eval] if cfg.n_eval > 0 else t

        self.ev_train = (sp.train_x[sub][shard], sp.train_y[sub][shard], sp.noisy[sub][shard])
        self.ev_val = (cap(sp.val_x)[shard], cap(sp.val_y)[shard])

        def rows(t: Tensor) -> Tensor:  # the curves' test subset (the scoring uses all)
            return cap(t)[: cfg.n_test_rows] if cfg.n_test_rows > 0 else cap(t)

        self.ev_test = (rows(sp.test_x)[shard], rows(sp.test_y)[shard])
        self.m_sharp = min(cfg.sharpness_m, max(1, cfg.n_sharpness))
        n_sh = (min(cfg.n_sharpness, sub.numel()) // self.m_sharp) * self.m_sharp
        sh_idx = sub[:n_sh]
        self.sh_x = sp.train_x[sh_idx].reshape(-1, self.m_sharp, *sp.input_shape)[shard]
        self.sh_y = sp.train_y[sh_idx].reshape(-1, self.m_sharp)[shard]

    def _errors(self, net: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        bs, ac, dd = self.cfg.batch_size_eval, self.autocast, self.dd
        tr = evaluate(net, *self.ev_train[:2], bs, noisy=self.ev_train[2], autocast=ac)
        va = evaluate(net, *self.ev_val, bs, autocast=ac)
        te = evaluate(net, *self.ev_test, bs, autocast=ac)
        return _all_sum(tr, dd), _all_sum(va, dd), _all_sum(te, dd)

    def log_row(self, epoch_float: float, lr: float, rho: float, epoch_end: bool) -> None:
        cfg, st, dd = self.cfg, self.st, self.dd
        if dd.world > 1:  # BN buffers may differ after the last local forward: use rank 0's
            for b in self.model.buffers():
                dist.broadcast(b, 0)
        t0 = time.perf_counter()
        gen, self.noise["gen"] = self.noise["gen"], None  # no gradient noise in evaluation
        tr, va, te = self._errors(self.model)
        sh = torch.zeros(2, dtype=torch.float64, device=self.device)
        for xc, yc in zip(self.sh_x, self.sh_y, strict=True):
            sh += logged_sharpness(
                self.model, xc, yc, m=self.m_sharp, rho=cfg.sharpness_rho, autocast=self.autocast
            )
        sh = _all_sum(sh, dd)
        swa_bn_update(self.swa, self.splits.train_x, cfg.batch_size_eval, self.autocast)
        str_, sva, ste = self._errors(self.swa)
        acc = _all_sum(st.accum.clone(), dd).cpu()
        self.noise["gen"] = gen

        def ratio(a: Tensor, i: int, n: int) -> float | None:
            return (a[i] / a[n]).item() if a[n] > 0 else None

        row = {
            "epoch": round(epoch_float, 6),
            "step": st.global_step,
            "epoch_end": epoch_end,
            "lr": lr,
            "rho": rho,
            "m": self.m,
            "train_loss": ratio(tr, 0, 2),
            "train_err": ratio(tr, 1, 2),
            "train_err_noisy": ratio(tr, 3, 4),
            "train_err_clean": ratio(tr, 5, 6),
            "train_loss_batch": (acc[0] / acc[1]).item() if acc[1] > 0 else None,
            "val_loss": ratio(va, 0, 2),
            "val_err": ratio(va, 1, 2),
            "test_loss": ratio(te, 0, 2),
            "test_err": ratio(te, 1, 2),
            "sharpness": ratio(sh, 0, 1),
            "sharpness_rho": cfg.sharpness_rho,
            "sharpness_m": self.m_sharp,
            "train_err_swa": ratio(str_, 1, 2),
            "val_err_swa": ratio(sva, 1, 2),
            "test_err_swa": ratio(ste, 1, 2),
            "seconds": round(st.seconds, 3),
            "eval_seconds": round(time.perf_counter() - t0, 3),
            "examples_per_s": round(st.since_row_examples / max(st.since_row_seconds, 1e-9), 1),
            "train_cpu_seconds": round(st.since_row_cpu, 4),
        }
        st.accum.zero_()
        st.since_row_examples, st.since_row_seconds, st.since_row_cpu = 0, 0.0, 0.0
        st.n_rows += 1
        self._keep_best(row)
        if self.run is not None:
            self.run.log(row)
            print(
                f"epoch {row['epoch']:.2f} step {row['step']}: train_err {row['train_err']:.4f} "
                f"val_err {row['val_err']} test_err {row['test_err']:.4f} "
                f"sharpness {row['sharpness']} ({row['examples_per_s']} ex/s)",
                flush=True,
            )

    def _keep_best(self, row: dict[str, Any]) -> None:
        """best.pt: the weights (and, separately, the SWA weights) of the lowest validation
        error so far, as the original's 'best' / 'swa_best'."""
        st, ve, vs = self.st, row["val_err"], row["val_err_swa"]
        better, better_swa = ve is not None and ve < st.best_val_err, False
        better_swa = vs is not None and vs < st.best_swa_val_err
        if not (better or better_swa):
            return
        best = self.best or {}
        if better:
            st.best_val_err = ve
            best.update(
                model=copy.deepcopy(self.model.state_dict()),
                val_err=ve,
                epoch=row["epoch"],
                step=row["step"],
            )
        if better_swa:
            st.best_swa_val_err = vs
            best.update(
                swa_model=copy.deepcopy(self.swa.state_dict()),
                swa_val_err=vs,
                swa_epoch=row["epoch"],
            )
        self.best = best
        if self.dd.main:
            atomic_torch_save(best, self.out_dir / BEST)

    def summary(self, status: str, message: str | None = None) -> dict[str, Any]:
        rows = [r for r in (self.run.metrics() if self.run else []) if r.get("epoch_end")]
        st = self.st
        s: dict[str, Any] = {
            "status": status,
            "epochs_done": st.epoch,
            "global_step": st.global_step,
            "n_params": self.n_params,
            "m": self.m,
            "world_size": self.dd.world,
            "seconds": round(st.seconds, 3),
            "data": self.splits.info,
        }
        if message:
            s["message"] = message
        if rows:
            best = best_row(rows)
            s.update(
                best_epoch=best["epoch"],
                best_val_err=best.get("val_err"),
                test_err_at_best_val=best["test_err"],
                test_err_last=rows[-1]["test_err"],
                val_err_last=rows[-1].get("val_err"),
                train_err_last=rows[-1]["train_err"],
                sharpness_last=rows[-1].get("sharpness"),
                test_err_swa_last=rows[-1].get("test_err_swa"),
            )
            if self.run is not None and status in ("finished", "stopped"):
                s["scored"] = self.score_examples(rows[-1]["epoch"])
        if self.run is not None:
            self.run.write_summary(s)
        return s

    def score_examples(self, last_epoch: float) -> dict[str, Any]:
        """Score the best-validation weights (best.pt) and the last weights on every validation
        and test example (the first --n_eval where that is set; --n_test_rows does not apply),
        save which ones each gets wrong (wrong.npz, atomically) and return
        summary.json's ``scored``: their error rates, epochs, the examples' SHA-256 and the
        seed, from which ``suite.stats`` tells a paired comparison (same seed, same examples)
        from an unpaired one. Run at the end of a run (or at --stop_after_epoch), when the
        current weights are those of the last metrics row."""
        from deep_nets.evaluation import write_wrong, wrong_examples

        t0 = time.perf_counter()
        sp, bs, cap = self.splits, self.cfg.batch_size_eval, self.cfg.n_eval
        scored = {
            k: (x[:cap], y[:cap]) if 0 < cap < len(y) else (x, y)
            for k, x, y in (("val", sp.val_x, sp.val_y), ("test", sp.test_x, sp.test_y))
        }
        digests = {
            k: sp.info["examples_sha256"][k]
            if len(y) == len(getattr(sp, f"{k}_y"))
            else hashlib.sha256(f"{sp.info['examples_sha256'][k]}[:{len(y)}]".encode()).hexdigest()
            for k, (_, y) in scored.items()
        }
        nets = {"last": (self.model, last_epoch)}
        if self.best is not None and "model" in self.best:
            best_net = copy.deepcopy(self.model)
            best_net.load_state_dict(self.best["model"])
            nets["best"] = (best_net, self.best["epoch"])
        wrong, out = {}, {}
        for name, (net, epoch) in nets.items():
            out[name] = {"epoch": epoch}
            for split, (x, y) in scored.items():
                w = wrong_examples(net, x, y, bs, autocast=self.autocast)
                wrong[f"{name}_{split}"] = w
                out[name][f"{split}_err"] = float(w.mean()) if w.size else None
        write_wrong(self.out_dir / WRONG, wrong)
        return {
            "file": WRONG,
            **out,
            "seed": self.cfg.seed,
            "n_val": len(scored["val"][1]),
            "n_test": len(scored["test"][1]),
            "val_sha256": digests["val"],
            "test_sha256": digests["test"],
            "seconds": round(time.perf_counter() - t0, 3),
        }

    # ---- batches
    def batch_at(self, perm: Tensor, it: int) -> tuple[Tensor, Tensor]:
        idx = perm[it * self.cfg.batch_size + self.dd.rank * self.per_worker :][: self.per_worker]
        return self.splits.train_x[idx], self.splits.train_y[idx]

    def prepare(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if not self.cfg.no_data_augm:
            x = self.augment(x, gen, pad=4, flip=bool(self.splits.augment_flip))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def other_batch(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """An independent batch of this worker's size drawn uniformly (with replacement)."""
        sp = self.splits
        idx = torch.randint(sp.train_x.shape[0], (self.per_worker,), generator=gen)
        idx = idx.to(sp.train_x.device)
        return self.prepare(sp.train_x[idx], gen), sp.train_y[idx]

    def _elapsed(self, t0: float) -> float:
        if self.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def _add_time(self, t0: float, cpu0: float) -> None:
        dt = self._elapsed(t0)
        self.st.seconds += dt
        self.st.since_row_seconds += dt
        self.st.since_row_cpu += time.process_time() - cpu0

    def _nonfinite(self, epoch: int, it: int, loss: Tensor, ploss: Tensor | None) -> None:
        msg = (
            f"non-finite loss at epoch {epoch + 1}, step {it + 1} of the epoch (global step "
            f"{self.st.global_step}): loss {float(loss)}, perturbed loss "
            f"{None if ploss is None else float(ploss)}"
            f"{' (first non-finite within the last 50 steps)' if self.is_cuda else ''}"
        )
        ckpt = self.out_dir / CHECKPOINT
        if ckpt.exists():  # none is written before the end of the first epoch
            msg += f"; the last good checkpoint is {ckpt} (end of epoch {epoch})"
        else:
            msg += "; no checkpoint was written yet (the loss diverged in the first epoch)"
        if self.dd.main:
            print(msg, file=sys.stderr, flush=True)
        self.summary("diverged", msg)
        raise NonFiniteLossError(msg)

    def _end_epoch(self, epoch: int, rho: float) -> bool:
        """Log the epoch's row, checkpoint; True when the run stops here (--stop_after_epoch)."""
        cfg, st = self.cfg, self.st
        self.log_row(
            epoch + 1, lr_at(cfg.lr_schedule, cfg.lr_max, cfg.epochs, epoch + 1), rho, True
        )
        st.epoch, st.step_in_epoch = epoch + 1, 0
        self.save_checkpoint(None)
        k, e = cfg.save_model_each_k_epochs, epoch + 1
        if k > 0 and (e % k == 0 or e <= 5):
            self._save_weights(f"epoch_{e}.pt", epoch=e)
        return bool(cfg.stop_after_epoch and e >= cfg.stop_after_epoch and e < cfg.epochs)

    # ---- the loop
    def loop(self) -> dict[str, Any]:
        cfg, st, dd = self.cfg, self.st, self.dd
        params = list(self.model.parameters())
        flags = torch.zeros(2, device=self.device)  # [stop requested, non-finite loss]
        status = "finished"
        self.opt.zero_grad(set_to_none=True)
        with GracefulInterrupt() as stop:
            if (
                st.global_step == 0 and st.n_rows == 0
            ):  # the starting point (fine-tuning: its error)
                self.log_row(0.0, lr_at(cfg.lr_schedule, cfg.lr_max, cfg.epochs, 0.0), 0.0, False)
            self.net.train()
            while st.epoch < cfg.epochs:
                epoch = st.epoch
                perm = epoch_permutation(self.data_seed, epoch, self.n_train).to(self.device)
                gen, noise_gen = epoch_generators(self.data_seed, epoch, dd.rank, self.device)
                if st.gen_state is not None:  # resuming mid-epoch
                    gen.set_state(st.gen_state[0])
                    noise_gen.set_state(st.gen_state[1])
                    st.gen_state = None
                self.noise["gen"] = noise_gen
                # SAM steps in this epoch: a radius at a positive lr (TrainConfig.sam_radius)
                active = cfg.sam_radius(epoch, 1.0) > 0
                ctx = StepContext(
                    cfg,
                    self.opt,
                    self.net,
                    self.loss,
                    self.m,
                    params,
                    noise_gen,
                    other_batch=lambda gen=gen: self.other_batch(gen),
                    autocast=self.autocast,
                    scaler=self.scaler,
                )
                step = STEPS[step_kind(cfg, active)]
                # (the radius of the epoch's last step, logged when a resume finds no step left)
                lr_end = lr_at(cfg.lr_schedule, cfg.lr_max, cfg.epochs, epoch + 1)
                rho = cfg.sam_radius(epoch, lr_end)
                t0, cpu0 = time.perf_counter(), time.process_time()
                interrupted = False
                for it in range(st.step_in_epoch, self.iters):
                    t = epoch + (it + 1) / self.iters  # the original's lr(epoch - 1 + (i+1)/n)
                    lr = lr_at(cfg.lr_schedule, cfg.lr_max, cfg.epochs, t)
                    rho = cfg.sam_radius(epoch, lr)
                    for grp in self.opt.param_groups:
                        grp["lr"] = lr
                        if active:  # the step's radius (constant, or tied to the lr)
                            grp["sam_rho"] = rho
                    x, y = self.batch_at(perm, it)
                    x = self.prepare(x, gen)
                    if st.prev_x is not None:
                        ctx.prev = (st.prev_x, st.prev_y)
                    with bn_eval(self.net) if cfg.freeze_bn_stats else contextlib.nullcontext():
                        loss, ploss = step(ctx, x, y)
                    self.opt.zero_grad(set_to_none=True)
                    swa_update(self.swa, self.model, cfg.swa_tau)
                    if cfg.sam_use_prev_batch:
                        st.prev_x, st.prev_y = x, y
                    st.step_in_epoch, st.global_step = it + 1, st.global_step + 1
                    st.since_row_examples += cfg.batch_size
                    st.accum[0] += loss.detach().double()
                    st.accum[1] += 1
                    bad = ~torch.isfinite(loss.detach())
                    if ploss is not None:
                        bad = bad | ~torch.isfinite(ploss.detach())
                    flags[1] = torch.maximum(flags[1], bad.float())
                    # On a GPU the checks below sync with the host: every 50 steps only.
                    due = not self.is_cuda or (it + 1) % 50 == 0 or it + 1 == self.iters
                    if due or stop.requested:
                        flags[0] = float(stop.requested)
                        if dd.world > 1:
                            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                        if flags[1] > 0:
                            st.seconds += self._elapsed(t0)
                            self._nonfinite(epoch, it, loss, ploss)
                        if flags[0] > 0:
                            interrupted = True
                            break
                    freq = cfg.eval_iter_freq
                    if freq and st.global_step % freq == 0 and it + 1 < self.iters:
                        self._add_time(t0, cpu0)
                        self.log_row(t, lr, rho, False)
                        t0, cpu0 = time.perf_counter(), time.process_time()
                self._add_time(t0, cpu0)
                if interrupted:
                    self.save_checkpoint([gen.get_state(), noise_gen.get_state()])
                    status = "interrupted"
                    if dd.main:
                        print(
                            f"interrupted at epoch {epoch + 1}, step {st.step_in_epoch}: "
                            f"checkpoint saved to {self.out_dir / CHECKPOINT}; continue with "
                            "--resume",
                            file=sys.stderr,
                            flush=True,
                        )
                    break
                if self._end_epoch(epoch, rho):
                    status = "stopped"
                    break
        return self.summary(status)


# ------------------------------------------------------------------------------------- CLI
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
        _check_data_dir(cfg)
    except ValueError as e:
        parser.error(str(e))
    out = Path(cfg.out_dir or _default_out_dir(cfg))
    if problem := out_dir_error(out):
        parser.error(problem)
    if (out / "config.json").exists() and not cfg.resume:
        parser.error(
            f"--out_dir {out} already holds a run: add --resume or choose another --out_dir"
        )
    if cfg.resume and (out / "config.json").exists():
        try:
            _check_resume_config(out, cfg)
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
        print(f"python -m deep_nets.train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, an unwritable file: the message names the file
        print(f"python -m deep_nets.train: error: {e}", file=sys.stderr)
        return 1
    except NonFiniteLossError as e:
        print(f"python -m deep_nets.train: stopped: {e}", file=sys.stderr)
        return 1
    if s["status"] == "interrupted":
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
