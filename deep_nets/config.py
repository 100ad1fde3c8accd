"""The deep-net trainer's configuration: one dataclass whose fields carry their own help text.

``TrainConfig`` holds every option of ``deep_nets/train.py`` under the original code's flag names
(PAPERS.md#deep-nets-setup; the parity table in deep_nets/README.md says, flag by flag, where we
match the original and where we differ). Each field's metadata holds its ``--help`` text (with the
unit), its group and its choices: ``build_parser`` generates the command line from it, so a flag is
declared in exactly one place. ``check_config`` rejects combinations that make no sense *before*
any data is loaded, with a message naming the flags; the CLI turns those messages into
``parser.error``.

m-SAM bookkeeping. The batch of ``batch_size`` examples (global, summed over workers) is cut into
``acc_steps`` chunks of m = batch_size / acc_steps consecutive examples; each chunk gets its own
ascent. Under DistributedDataParallel with W workers each worker holds batch_size / W examples and
perturbs with its own shard (the SAM paper's per-accelerator m-sharpness), so the effective
m = batch_size / max(acc_steps, W); each worker then runs max(acc_steps / W, 1) chunks.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import pkgutil
from dataclasses import dataclass
from typing import Any

from suite.cli import dataclass_parser

# The original's schedules (utils_train.get_lr_schedule) that the SAM papers use.
LR_SCHEDULES = (
    "piecewise",
    "cosine",
    "cyclic",
    "constant",
    "piecewise_02epochs",
    "piecewise_03epochs",
    "piecewise_04epochs",
)
SAM_VARIANTS = ("sam", "asam", "looksam", "random")
MSAM_IMPLS = ("auto", "vectorized", "loop")
PERTURB_BATCHES = ("same", "other")
NOISE_TYPES = ("sym", "asym")
L2_SCOPES = ("all", "weights")
BN_UPDATES = ("first", "every")
INITS = ("original", "pytorch")
HALF_DTYPES = ("float16", "bfloat16")
PERTURB_DISTRS = ("gauss", "uniform")
GROUPS = ("data", "model", "optimization", "SAM", "evaluation", "runtime")

# Input shapes (channels, *spatial) of the data sets, to check a model before loading any data.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "fashion_mnist": (1, 28, 28),
    "mnist1d": (1, 40),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
}

# Fields that may differ between a run and its ``--resume`` (they do not change the results;
# a changed data_dir is accepted only when the data files' SHA-256 are equal, checked in train).
RESUME_FREE_FIELDS = ("resume", "device", "workers", "stop_after_epoch", "out_dir", "data_dir")
# Metric fields that measure time; everything else in a metrics row is reproducible bit for bit.
TIMING_FIELDS = ("seconds", "eval_seconds", "examples_per_s", "train_cpu_seconds")


def _f(default: Any, group: str, help: str, choices: tuple | None = None, **meta: Any) -> Any:
    """A dataclass field with its command-line metadata (help text with unit, group, choices)."""
    return dataclasses.field(
        default=default, metadata=dict(group=group, help=help, choices=choices, **meta)
    )


@dataclass
class TrainConfig:
    """Every option of the trainer; ``python -m deep_nets.train --help`` prints the metadata."""

    # ---- data
    dataset: str = _f("cifar10", "data", "data set", choices=("<DATASETS>",))
    data_dir: str | None = _f(
        None,
        "data",
        "folder with the data files; must exist (default: the data set's standard "
        "place, see deep_nets/README.md)",
    )
    frac_train: float = _f(1.0, "data", "fraction of the training set used, in (0, 1]")
    p_label_noise: float = _f(
        0.0,
        "data",
        "fraction of training (and, unless --clean_val, validation) labels replaced "
        "by noise, in [0, 1)",
    )
    noise_type: str = _f(
        "sym",
        "data",
        "sym: a uniformly drawn different class; asym: CIFAR-10 class flips",
        choices=NOISE_TYPES,
    )
    clean_val: bool = _f(
        False,
        "data",
        "keep the validation labels clean (an oracle for early stopping); by "
        "default they are noisy like the training labels, as in the original",
    )
    mnist1d_n_val: int = _f(
        10000,
        "data",
        "mnist1d: signals in the generated validation set (a multiple of 10; selection uses "
        "it alone)",
    )
    mnist1d_n_test: int = _f(
        100000,
        "data",
        "mnist1d: signals in the generated test set (a multiple of 10)",
    )
    no_data_augm: bool = _f(
        False,
        "data",
        "disable random crop (padding 4) + horizontal flip (augmentation is on by default)",
    )
    # ---- model
    model: str = _f("resnet18", "model", "architecture", choices=("<MODELS>",))
    model_width: int | None = _f(
        None,
        "model",
        "width: channels of the first stage for ResNets/VGG, k for WRN, hidden "
        "units for MLPs (default: the model's own, the original's for its models)",
    )
    model_path: str | None = _f(
        None,
        "model",
        "start from these weights (fine-tuning): our checkpoint.pt / best.pt, the "
        "original's .pth ({'last': state dict}, its key names) or a plain state dict",
    )
    droprate: float = _f(
        0.0, "model", "dropout rate inside the residual blocks (PreAct ResNets, WRN), in [0, 1)"
    )
    activation: str = _f(
        "relu", "model", "PreAct ResNets: relu or softplusB (softplus with beta B, e.g. softplus10)"
    )
    init: str = _f(
        "original",
        "model",
        "original: conv weights Kaiming-normal (fan_out, relu), norm layers "
        "weight 1 bias 0, linear biases 0 (the original's init_weights); pytorch: PyTorch's "
        "defaults",
        choices=INITS,
    )
    scale_init: float = _f(
        0.0,
        "model",
        "--model linear: Frobenius norm of the random initial weight (0 = zero "
        "init, the original's default)",
    )
    # ---- optimization
    batch_size: int = _f(128, "optimization", "examples per step, summed over workers")
    epochs: int = _f(
        200,
        "optimization",
        "training epochs (the original's default is 100; the SAM papers' CIFAR runs use 200)",
    )
    lr_max: float = _f(0.1, "optimization", "peak learning rate")
    lr_schedule: str = _f(
        "piecewise",
        "optimization",
        "piecewise (/10 at 50%%, /100 at 75%% of the epochs), "
        "piecewise_0Xepochs (first drop at X0%%), cosine, cyclic (0 -> lr_max at epoch "
        "floor(2 epochs / 5) -> 0), constant; updated every step",
        choices=LR_SCHEDULES,
    )
    momentum: float = _f(0.9, "optimization", "SGD momentum, no Nesterov")
    l2_reg: float = _f(
        5e-4,
        "optimization",
        "L2 term 0.5 * l2_reg * ||w||^2 inside the loss (so inside the ascent "
        "too) (the original's default is 0; the SAM papers use 5e-4)",
    )
    l2_scope: str = _f(
        "all",
        "optimization",
        "parameters the L2 (and L1) term covers: all (every parameter, "
        "biases and norm layers included: the original) or weights (conv/linear weights only)",
        choices=L2_SCOPES,
    )
    l1_reg: float = _f(0.0, "optimization", "L1 term l1_reg * ||w||_1 inside the loss")
    weight_decay: float = _f(
        0.0,
        "optimization",
        "weight decay applied by SGD at the update only, outside the ascent (not in the original)",
    )
    grad_gauss_std: float = _f(
        0.0,
        "optimization",
        "std of Gaussian noise added to every gradient of every backward pass "
        "(ascent passes included, as the original's gradient hooks)",
    )
    freeze_bn_stats: bool = _f(
        False,
        "optimization",
        "batch norm in eval mode in every training pass (running "
        "statistics used and never updated)",
    )
    # ---- SAM
    sam_rho: float = _f(0.0, "SAM", "radius rho of the ascent; 0 = plain SGD (ERM)")
    sam_lr_mult: float = _f(
        0.0,
        "SAM",
        "rho tied to the learning rate: rho = lr * sam_lr_mult (instead of --sam_rho; 0 = off)",
    )
    sam_variant: str = _f(
        "sam",
        "SAM",
        "sam; asam (the official ASAM: T = |w| + asam_eta on parameters named *weight*, "
        "norm-layer weights included, T = 1 on biases); looksam (SAM gradient every "
        "looksam_k steps); random (a random direction of norm exactly rho)",
        choices=SAM_VARIANTS,
    )
    sam_iters: int = _f(
        1,
        "SAM",
        "ascent steps, each of size rho * sam_step_size_mult followed by a projection "
        "onto the rho-ball (the original's weight_ascent_step)",
    )
    sam_step_size_mult: float = _f(
        1.0,
        "SAM",
        "ascent step size as a multiple of rho (before the projection onto the "
        "rho-ball, also with --sam_iters 1)",
    )
    sam_no_grad_norm: bool = _f(
        False,
        "SAM",
        "unnormalized ascent as the original: e = P_rho(rho * mult * grad(L_chunk / "
        "acc_steps)), projected onto the rho-ball (default: e = rho g / ||g||)",
    )
    sam_use_prev_batch: bool = _f(
        False,
        "SAM",
        "the original's n-SAM: the ascent direction from the previous batch, the "
        "update gradient from the current one (the first step uses its own batch)",
    )
    sam_perturb_batch: str = _f(
        "same",
        "SAM",
        "same: ascent on the update's own batch (m-SAM); other: on an independent "
        "random batch of the same size (our n-SAM variant)",
        choices=PERTURB_BATCHES,
    )
    acc_steps: int = _f(
        1, "SAM", "chunks per batch: m = batch_size / acc_steps examples per ascent (m-SAM)"
    )
    sam_epoch_frac_start: float = _f(
        0.0,
        "SAM",
        "SAM is on in 1-based epochs e with start <= e / epochs <= end (as the "
        "original counts: ERM->SAM switch)",
    )
    sam_epoch_frac_end: float = _f(1.0, "SAM", "see --sam_epoch_frac_start (SAM->ERM switch)")
    sam_bn_update: str = _f(
        "first",
        "SAM",
        "batch-norm running statistics: first = updated by the pass at w only "
        "(ours); every = by every training pass, ascent and perturbed passes too (the original)",
        choices=BN_UPDATES,
    )
    msam_impl: str = _f(
        "auto",
        "SAM",
        "how the m-SAM chunks are computed (the same numbers, float rounding apart): "
        "auto (default) = the fused path where it applies (all chunks in one forward with "
        "per-chunk weights: models of Linear layers whose loss reaches the weights only through "
        "the layers, no batch norm, dropout, --l2_reg, DDP or --grad_gauss_std; from "
        "--acc_steps 2), else the loop; loop = one chunk after the other (the reference); "
        "vectorized = the fused path, else torch.func.vmap over the chunks (also batch norm and "
        "--l2_reg; slower than the loop on a CPU ResNet), see benchmarks/README.md",
        choices=MSAM_IMPLS,
    )
    msam_max_batched_params: int = _f(
        2**27,
        "SAM",
        "batched m-SAM: at most this many parameter values in one stack of per-chunk "
        "tensors (two stacks, gradients and perturbed weights: 2 x this x 4 bytes in "
        "float32); more chunks than fit run in groups",
    )
    asam_eta: float = _f(0.01, "SAM", "ASAM offset eta in T = |w| + eta (--sam_variant asam)")
    looksam_k: int = _f(5, "SAM", "LookSAM: SAM gradient every k steps (--sam_variant looksam)")
    looksam_alpha: float = _f(
        0.7, "SAM", "LookSAM: weight of the reused orthogonal direction (--sam_variant looksam)"
    )
    add_weight_perturb_scale: float = _f(
        0.0,
        "SAM",
        "random perturbation of the original: w + s * n per coordinate, n ~ "
        "--weight_perturb_distr (a baseline; not combinable with SAM)",
    )
    mul_weight_perturb_scale: float = _f(
        0.0, "SAM", "random perturbation of the original: w * (1 + s * n) per coordinate"
    )
    weight_perturb_distr: str = _f(
        "gauss",
        "SAM",
        "n of the random perturbations: gauss N(0, 1) or uniform U(-0.5, 0.5)",
        choices=PERTURB_DISTRS,
    )
    # ---- evaluation and logging
    eval_iter_freq: int = _f(
        0,
        "evaluation",
        "also evaluate every this many steps; 0 = once per epoch (the original "
        "evaluates every 5 epochs by default)",
    )
    batch_size_eval: int = _f(512, "evaluation", "examples per evaluation batch")
    n_eval_train: int = _f(
        10000, "evaluation", "size of the fixed training subset evaluated (examples)"
    )
    n_eval: int = _f(
        0,
        "evaluation",
        "evaluate (and score at the end) at most this many validation/test examples; 0 = all",
    )
    n_test_rows: int = _f(
        10000,
        "evaluation",
        "test examples in each metrics row (the curves); 0 = all. The best-validation and "
        "the last weights are always scored on every validation and test example "
        "(summary.json 'scored', wrong.npz)",
    )
    sharpness_rho: float = _f(
        0.05,
        "evaluation",
        "rho of the logged one-step m-sharpness estimate (the same for every method)",
    )
    sharpness_m: int = _f(
        128,
        "evaluation",
        "examples per chunk of the logged sharpness estimate (the same for "
        "every method; at most --n_sharpness)",
    )
    n_sharpness: int = _f(1024, "evaluation", "training examples used by the sharpness estimate")
    swa_tau: float = _f(
        0.999,
        "evaluation",
        "weight averaging w_swa <- tau w_swa + (1 - tau) w after every step "
        "(the original's SWA); the averaged model is evaluated (batch-norm statistics "
        "recomputed on the training set) and saved",
    )
    save_model_each_k_epochs: int = _f(
        0,
        "evaluation",
        "also keep the weights of epochs 1-5 and every k-th epoch "
        "(epoch_<e>.pt); 0 = only the last and best",
    )
    # ---- runtime
    half_prec: bool = _f(
        False, "runtime", "mixed precision: autocast to --half_prec_dtype for forward passes"
    )
    half_prec_dtype: str = _f(
        "float16",
        "runtime",
        "float16 with a GradScaler (the original) or bfloat16 (no loss scaling needed)",
        choices=HALF_DTYPES,
    )
    seed: int = _f(0, "runtime", "seed of the split, label noise, init and data order")
    device: str | None = _f(None, "runtime", "cpu, cuda, cuda:N (default: cuda if available)")
    workers: int = _f(
        0,
        "runtime",
        "CPU threads for torch (data live on the device, no loader processes); 0 = torch's default",
    )
    out_dir: str | None = _f(
        None, "runtime", "run directory (default: runs/deep_nets/<dataset>_<model>_<variant>_...)"
    )
    resume: bool = _f(False, "runtime", "continue the run in --out_dir from its checkpoint")
    stop_after_epoch: int = _f(
        0, "runtime", "stop (resumably) after this many epochs, for time-limited jobs; 0 = never"
    )
    config: str | None = _f(
        None,
        "runtime",
        "named config from deep_nets/configs/ supplying defaults; explicit flags override",
        choices=("<CONFIGS>",),
    )

    @property
    def m(self) -> int:
        """Examples per ascent chunk on one worker (m of m-SAM), before the DDP split."""
        return self.batch_size // max(self.acc_steps, 1)

    def sam_radius(self, epoch: int | None, lr: float) -> float:
        """The SAM radius of a step in 0-based epoch ``epoch`` at learning rate ``lr``, 0 where SAM
        is off (an ERM step): the suite's one rule for "is SAM on, with which rho".

            rho = --sam_rho, or lr * --sam_lr_mult (exclusive flags),
            0 outside the SAM epochs: the original's test start <= e / epochs <= end on the
            1-based epoch e = epoch + 1, both ends included (--sam_epoch_frac_start / _end).

        ``epoch=None`` ignores the SAM epochs (the radius the flags configure)."""
        rho = lr * self.sam_lr_mult if self.sam_lr_mult > 0 else self.sam_rho
        if epoch is None:
            return rho
        e = epoch + 1
        inside = self.sam_epoch_frac_start <= e / self.epochs <= self.sam_epoch_frac_end
        return rho if inside else 0.0

    @property
    def sam_on(self) -> bool:
        """Whether SAM is on in some step (``sam_radius`` at a positive lr, any epoch)."""
        return self.sam_radius(None, 1.0) > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


def _choices(f: dataclasses.Field) -> tuple | None:
    ch = f.metadata.get("choices")
    if ch == ("<DATASETS>",):
        from deep_nets.data import DATASETS

        return DATASETS
    if ch == ("<MODELS>",):
        from deep_nets.models import MODELS

        return MODELS
    if ch == ("<CONFIGS>",):
        return tuple(list_configs())
    return ch


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from ``TrainConfig``'s field metadata (one flag per field)."""
    return dataclass_parser(
        TrainConfig,
        prog="python -m deep_nets.train",
        description="Deep-network trainer with SAM, m-SAM, n-SAM, ASAM, LookSAM and random "
        "perturbations; flags named as in the original code of 'Towards Understanding SAM'.",
        epilog="Named configs (--config): " + ", ".join(list_configs()),
        groups=GROUPS,
        resolve_choices=_choices,
    )


def check_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise ``ValueError`` naming the flags of the first nonsensical combination found.

    Checks the model against the data set's input shape by building it (no data is loaded).
    """
    from deep_nets import data, models

    def bad(msg: str) -> None:
        raise ValueError(msg)

    d = TrainConfig()
    f32_max = 3.4028234663852886e38  # the largest float32
    for f in dataclasses.fields(TrainConfig):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            bad(f"--{f.name} must be a finite number (got {v})")
        # every float flag multiplies float32 (or half) tensors: beyond float32's range it
        # cannot even be applied (torch raises an overflow deep inside the step)
        if isinstance(v, float) and abs(v) > f32_max:
            bad(f"--{f.name} {v:g} is too large: the weights are float32 (|x| <= {f32_max:.3g})")
        ch = _choices(f)
        if ch is not None and v is not None and v not in ch:
            bad(f"--{f.name} {v!r}: unknown; choose from {', '.join(map(str, ch))}")
    for name in ("batch_size", "epochs", "acc_steps", "sam_iters", "batch_size_eval", "looksam_k"):
        if getattr(cfg, name) < 1:
            bad(f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    for name in (
        "eval_iter_freq",
        "n_eval",
        "n_test_rows",
        "stop_after_epoch",
        "workers",
        "n_sharpness",
        "seed",
        "save_model_each_k_epochs",
    ):
        if getattr(cfg, name) < 0:
            bad(f"--{name} must be >= 0 (got {getattr(cfg, name)})")
    for name in ("n_eval_train", "sharpness_m", "msam_max_batched_params"):
        if getattr(cfg, name) < 1:
            bad(f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    for name in (
        "lr_max",
        "momentum",
        "l2_reg",
        "l1_reg",
        "weight_decay",
        "sam_rho",
        "asam_eta",
        "sam_lr_mult",
        "grad_gauss_std",
        "add_weight_perturb_scale",
        "mul_weight_perturb_scale",
        "scale_init",
    ):
        if not getattr(cfg, name) >= 0:
            bad(f"--{name} must be >= 0 (got {getattr(cfg, name)})")
    if not cfg.sharpness_rho > 0:
        bad(f"--sharpness_rho must be > 0 (got {cfg.sharpness_rho})")
    if not cfg.sam_step_size_mult > 0:
        bad(f"--sam_step_size_mult must be > 0 (got {cfg.sam_step_size_mult})")
    if not cfg.momentum < 1:  # beta >= 1: the velocity never forgets, the step grows without end
        bad(f"--momentum must be in [0, 1) (got {cfg.momentum})")
    if not 0 < cfg.frac_train <= 1:
        bad(f"--frac_train must be in (0, 1] (got {cfg.frac_train})")
    if not 0 <= cfg.p_label_noise < 1:
        bad(f"--p_label_noise must be in [0, 1) (got {cfg.p_label_noise})")
    if not 0 <= cfg.droprate < 1:
        bad(f"--droprate must be in [0, 1) (got {cfg.droprate})")
    if not 0 <= cfg.swa_tau <= 1:
        bad(f"--swa_tau must be in [0, 1] (got {cfg.swa_tau})")
    models.parse_activation(cfg.activation)
    if cfg.noise_type == "asym" and cfg.p_label_noise > 0 and cfg.dataset != "cifar10":
        bad(f"--noise_type asym is defined for --dataset cifar10 only (not {cfg.dataset})")
    for name in ("mnist1d_n_val", "mnist1d_n_test"):
        v = getattr(cfg, name)
        if cfg.dataset != "mnist1d" and v != TrainConfig.__dataclass_fields__[name].default:
            bad(f"--{name} has no effect without --dataset mnist1d")
        if v < 10 or v % 10:
            bad(f"--{name} must be a positive multiple of 10 (got {v})")
    if cfg.clean_val and cfg.p_label_noise == 0:
        bad("--clean_val has no effect without --p_label_noise > 0")
    if cfg.batch_size % cfg.acc_steps:
        bad(
            f"--acc_steps {cfg.acc_steps} does not divide --batch_size {cfg.batch_size}: "
            "m = batch_size / acc_steps must be an integer"
        )
    if cfg.batch_size % world_size:
        bad(f"--batch_size {cfg.batch_size} is not divisible by the {world_size} workers")
    if world_size > 1 and cfg.acc_steps > world_size and cfg.acc_steps % world_size:
        bad(
            f"--acc_steps {cfg.acc_steps} must be a multiple of the {world_size} workers "
            "(each worker takes acc_steps / workers chunks of its shard)"
        )
    if cfg.msam_impl == "vectorized" and (world_size > 1 or cfg.grad_gauss_std > 0):
        bad(
            "--msam_impl vectorized does not apply "
            + ("under DDP (several workers)" if world_size > 1 else "with --grad_gauss_std")
            + ": use --msam_impl auto or loop"
        )
    if not 0 <= cfg.sam_epoch_frac_start <= cfg.sam_epoch_frac_end <= 1:
        bad(
            "--sam_epoch_frac_start and --sam_epoch_frac_end must satisfy "
            f"0 <= start <= end <= 1 (got {cfg.sam_epoch_frac_start}, {cfg.sam_epoch_frac_end})"
        )
    if cfg.sam_rho > 0 and cfg.sam_lr_mult > 0:
        bad("--sam_rho and --sam_lr_mult are exclusive (rho = lr * sam_lr_mult): set only one")
    _check_no_effect(cfg, d, bad)
    shape, classes = INPUT_SHAPES[cfg.dataset], data.NUM_CLASSES[cfg.dataset]
    try:
        models.build_model(
            cfg.model,
            in_channels=shape[0],
            num_classes=classes,
            width=cfg.model_width,
            input_shape=tuple(shape),
            droprate=cfg.droprate,
            activation=cfg.activation,
        )
    except ValueError as e:
        raise ValueError(
            f"--model {cfg.model} (--model_width {cfg.model_width}) does not fit "
            f"--dataset {cfg.dataset} (input shape {tuple(shape)}): {e}"
        ) from e
    except (RuntimeError, MemoryError) as e:  # the allocation of the weights failed
        raise ValueError(
            f"--model_width {cfg.model_width}: the {cfg.model} model does not fit in memory "
            f"({type(e).__name__}); choose a smaller --model_width"
        ) from None


def _check_no_effect(cfg: TrainConfig, d: TrainConfig, bad) -> None:
    """Flags that would be silently ignored in the given combination are errors naming them."""

    def changed(name: str) -> bool:
        return getattr(cfg, name) != getattr(d, name)

    sam_flags = (
        "sam_iters",
        "sam_step_size_mult",
        "sam_no_grad_norm",
        "sam_perturb_batch",
        "sam_use_prev_batch",
        "sam_variant",
        "sam_epoch_frac_start",
        "sam_epoch_frac_end",
        "sam_bn_update",
        "msam_impl",
        "msam_max_batched_params",
    )
    if not cfg.sam_on:
        for name in sam_flags:
            if changed(name):
                bad(f"--{name} has no effect without --sam_rho > 0 (or --sam_lr_mult > 0)")
    if changed("asam_eta") and cfg.sam_variant != "asam":
        bad("--asam_eta has no effect without --sam_variant asam")
    for name in ("looksam_k", "looksam_alpha"):
        if changed(name) and cfg.sam_variant != "looksam":
            bad(f"--{name} has no effect without --sam_variant looksam")
    if changed("scale_init") and cfg.model != "linear":
        bad("--scale_init has no effect without --model linear")
    if changed("scale_init") and cfg.init != "original":
        bad("--scale_init is part of --init original")
    if changed("half_prec_dtype") and not cfg.half_prec:
        bad("--half_prec_dtype has no effect without --half_prec")
    if changed("l2_scope") and cfg.l2_reg == 0 and cfg.l1_reg == 0:
        bad("--l2_scope has no effect without --l2_reg > 0 or --l1_reg > 0")
    if changed("weight_perturb_distr") and not (
        cfg.add_weight_perturb_scale > 0 or cfg.mul_weight_perturb_scale > 0
    ):
        bad("--weight_perturb_distr has no effect without --add/--mul_weight_perturb_scale > 0")
    if changed("activation") and not cfg.model.startswith("resnet"):
        bad(f"--activation is implemented for the PreAct ResNets only (not --model {cfg.model})")
    if (cfg.add_weight_perturb_scale > 0 or cfg.mul_weight_perturb_scale > 0) and cfg.sam_on:
        bad(
            "--add/--mul_weight_perturb_scale is a baseline on its own: it cannot be combined "
            "with --sam_rho / --sam_lr_mult (the original would drift the weights)"
        )
    variant = f"--sam_variant {cfg.sam_variant}"
    if cfg.sam_use_prev_batch and cfg.sam_perturb_batch == "other":
        bad("--sam_use_prev_batch and --sam_perturb_batch other are two n-SAM variants: pick one")
    one_batch = cfg.sam_variant in ("looksam", "random")
    other = cfg.sam_perturb_batch == "other" or cfg.sam_use_prev_batch
    if one_batch or other:
        what = (
            variant
            if one_batch
            else ("--sam_use_prev_batch" if cfg.sam_use_prev_batch else "--sam_perturb_batch other")
        )
        if cfg.acc_steps != 1:
            bad(f"{what} works on whole batches: it cannot be combined with --acc_steps > 1")
        if cfg.sam_iters != 1:
            bad(f"{what} takes a single ascent step: it cannot be combined with --sam_iters > 1")
        if changed("sam_step_size_mult"):
            bad(f"{what} cannot be combined with --sam_step_size_mult")
    if one_batch and cfg.sam_no_grad_norm:
        bad(f"{variant} cannot be combined with --sam_no_grad_norm")
    if one_batch and other:
        bad(f"{variant} cannot be combined with another batch for the ascent")
    if cfg.sam_variant == "asam" and (cfg.sam_no_grad_norm or changed("sam_step_size_mult")):
        bad(
            "--sam_variant asam: --sam_no_grad_norm / --sam_step_size_mult follow the original's "
            "plain SAM ascent and are not defined for ASAM"
        )
    if cfg.sam_variant in ("looksam", "random") and changed("sam_bn_update"):
        bad(f"--sam_bn_update has no effect with {variant}")


# ----------------------------------------------------------------------------- named configs
def list_configs() -> list[str]:
    """Names of the experiment configs in ``deep_nets/configs/`` (``--config NAME``)."""
    from deep_nets import configs

    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__) if not m.name[0] == "_")


def load_named_config(name: str) -> dict[str, Any]:
    """The ``FLAGS`` dict of ``deep_nets/configs/<name>.py`` (flag name -> value)."""
    names = list_configs()
    if name not in names:
        raise ValueError(f"--config {name!r}: unknown; choose from {', '.join(names)}")
    mod = importlib.import_module(f"deep_nets.configs.{name}")
    flags = dict(mod.FLAGS)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(flags) - fields
    if unknown:
        raise ValueError(f"deep_nets/configs/{name}.py sets unknown flags {sorted(unknown)}")
    return flags
