"""The deep-net trainer's configuration: one dataclass, its validation, and named configs.

``TrainConfig`` holds every option of ``deep_nets/train.py`` under the original flag names
(REFERENCE.md §4.1). ``check_config`` rejects combinations that make no sense *before* any data is
loaded, with a message naming the flags; the CLI turns those messages into ``parser.error``.

m-SAM bookkeeping. The batch of ``batch_size`` examples (global, summed over workers) is cut into
``acc_steps`` chunks of m = batch_size / acc_steps consecutive examples; each chunk gets its own
ascent. Under DistributedDataParallel with W workers each worker holds batch_size / W examples and
perturbs with its own shard (the SAM paper's per-accelerator m-sharpness), so the effective
m = batch_size / max(acc_steps, W); each worker then runs max(acc_steps / W, 1) chunks.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

LR_SCHEDULES = ("piecewise", "cosine", "cyclic", "constant")
SAM_VARIANTS = ("sam", "asam", "looksam", "random")
PERTURB_BATCHES = ("same", "other")
NOISE_TYPES = ("sym", "asym")

# Input shapes (channels, *spatial) of the data sets, to check a model before loading any data.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "fashion_mnist": (1, 28, 28),
    "mnist1d": (1, 40),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
}

# Fields that may differ between a run and its ``--resume`` (they do not change the results).
RESUME_FREE_FIELDS = ("resume", "device", "workers", "stop_after_epoch", "out_dir", "data_dir")
# Metric fields that measure time; everything else in a metrics row is reproducible bit for bit.
TIMING_FIELDS = ("seconds", "eval_seconds", "examples_per_s", "train_cpu_seconds")


@dataclass
class TrainConfig:
    """Every option of the trainer (see ``deep_nets/train.py --help`` for units and meaning)."""

    # data
    dataset: str = "cifar10"
    data_dir: str | None = None
    frac_train: float = 1.0
    p_label_noise: float = 0.0
    noise_type: str = "sym"
    no_data_augm: bool = False
    # model
    model: str = "resnet18"
    model_width: int | None = None
    model_path: str | None = None
    # optimization
    batch_size: int = 128
    epochs: int = 200
    lr_max: float = 0.1
    lr_schedule: str = "piecewise"
    momentum: float = 0.9
    l2_reg: float = 5e-4
    weight_decay: float = 0.0
    # SAM
    sam_rho: float = 0.0
    sam_variant: str = "sam"
    sam_iters: int = 1
    sam_step_size_mult: float = 1.0
    sam_no_grad_norm: bool = False
    sam_perturb_batch: str = "same"
    acc_steps: int = 1
    sam_epoch_frac_start: float = 0.0
    sam_epoch_frac_end: float = 1.0
    asam_eta: float = 0.01
    looksam_k: int = 5
    looksam_alpha: float = 0.7
    # evaluation and logging
    eval_iter_freq: int = 0
    batch_size_eval: int = 512
    n_eval_train: int = 10000
    n_eval: int = 0
    sharpness_rho: float = 0.05
    sharpness_m: int = 0
    n_sharpness: int = 1024
    # runtime
    half_prec: bool = False
    seed: int = 0
    device: str | None = None
    workers: int = 0
    out_dir: str | None = None
    resume: bool = False
    stop_after_epoch: int = 0
    config: str | None = None

    @property
    def m(self) -> int:
        """Examples per ascent chunk on one worker (m of m-SAM), before the DDP split."""
        return self.batch_size // max(self.acc_steps, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


def check_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise ``ValueError`` naming the flags of the first nonsensical combination found.

    Checks the model against the data set's input shape by building it (no data is loaded).
    """
    from deep_nets import data, models

    def bad(msg: str) -> None:
        raise ValueError(msg)

    if cfg.dataset not in data.DATASETS:
        bad(f"--dataset {cfg.dataset!r}: unknown; choose from {', '.join(sorted(data.DATASETS))}")
    if cfg.model not in models.MODELS:
        bad(f"--model {cfg.model!r}: unknown; choose from {', '.join(sorted(models.MODELS))}")
    for name in ("batch_size", "epochs", "acc_steps", "sam_iters", "batch_size_eval", "looksam_k"):
        if getattr(cfg, name) < 1:
            bad(f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    for name in (
        "eval_iter_freq", "n_eval", "stop_after_epoch", "workers", "n_sharpness", "seed",
        "sharpness_m",
    ):  # fmt: skip
        if getattr(cfg, name) < 0:
            bad(f"--{name} must be >= 0 (got {getattr(cfg, name)})")
    if cfg.n_eval_train < 1:
        bad(f"--n_eval_train must be >= 1 (got {cfg.n_eval_train})")
    for name in ("lr_max", "momentum", "l2_reg", "weight_decay", "sam_rho", "asam_eta"):
        if not getattr(cfg, name) >= 0:
            bad(f"--{name} must be >= 0 (got {getattr(cfg, name)})")
    if not cfg.sharpness_rho > 0:
        bad(f"--sharpness_rho must be > 0 (got {cfg.sharpness_rho})")
    if not cfg.sam_step_size_mult > 0:
        bad(f"--sam_step_size_mult must be > 0 (got {cfg.sam_step_size_mult})")
    if not 0 < cfg.frac_train <= 1:
        bad(f"--frac_train must be in (0, 1] (got {cfg.frac_train})")
    if not 0 <= cfg.p_label_noise < 1:
        bad(f"--p_label_noise must be in [0, 1) (got {cfg.p_label_noise})")
    if cfg.lr_schedule not in LR_SCHEDULES:
        bad(f"--lr_schedule {cfg.lr_schedule!r}: choose from {', '.join(LR_SCHEDULES)}")
    if cfg.noise_type not in NOISE_TYPES:
        bad(f"--noise_type {cfg.noise_type!r}: choose from {', '.join(NOISE_TYPES)}")
    if cfg.noise_type == "asym" and cfg.p_label_noise > 0 and cfg.dataset != "cifar10":
        bad(f"--noise_type asym is defined for --dataset cifar10 only (not {cfg.dataset})")
    if cfg.sam_variant not in SAM_VARIANTS:
        bad(f"--sam_variant {cfg.sam_variant!r}: choose from {', '.join(SAM_VARIANTS)}")
    if cfg.sam_perturb_batch not in PERTURB_BATCHES:
        bad(f"--sam_perturb_batch {cfg.sam_perturb_batch!r}: choose from same, other")
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
    if not 0 <= cfg.sam_epoch_frac_start < cfg.sam_epoch_frac_end <= 1:
        bad(
            "--sam_epoch_frac_start and --sam_epoch_frac_end must satisfy "
            f"0 <= start < end <= 1 (got {cfg.sam_epoch_frac_start}, {cfg.sam_epoch_frac_end})"
        )
    sam = cfg.sam_rho > 0
    if not sam:
        for name, default in (
            ("sam_iters", 1),
            ("sam_step_size_mult", 1.0),
            ("sam_no_grad_norm", False),
            ("sam_perturb_batch", "same"),
        ):
            if getattr(cfg, name) != default:
                bad(f"--{name} has no effect without --sam_rho > 0 (set --sam_rho)")
        if cfg.sam_variant != "sam":
            bad(f"--sam_variant {cfg.sam_variant} has no effect without --sam_rho > 0")
    if cfg.sam_variant in ("looksam", "random") or cfg.sam_perturb_batch == "other":
        what = (
            f"--sam_variant {cfg.sam_variant}"
            if cfg.sam_variant in ("looksam", "random")
            else "--sam_perturb_batch other"
        )
        if cfg.acc_steps != 1:
            bad(f"{what} works on whole batches: it cannot be combined with --acc_steps > 1")
        if cfg.sam_iters != 1:
            bad(f"{what} takes a single ascent step: it cannot be combined with --sam_iters > 1")
    if cfg.sam_variant in ("looksam", "random") and cfg.sam_no_grad_norm:
        bad(f"--sam_variant {cfg.sam_variant} cannot be combined with --sam_no_grad_norm")
    if cfg.sam_variant in ("looksam", "random") and cfg.sam_perturb_batch == "other":
        bad(f"--sam_variant {cfg.sam_variant} cannot be combined with --sam_perturb_batch other")
    shape, classes = INPUT_SHAPES[cfg.dataset], data.NUM_CLASSES[cfg.dataset]
    try:
        models.build_model(
            cfg.model,
            in_channels=shape[0],
            num_classes=classes,
            width=cfg.model_width,
            input_shape=tuple(shape),
        )
    except ValueError as e:
        raise ValueError(
            f"--model {cfg.model} (--model_width {cfg.model_width}) does not fit "
            f"--dataset {cfg.dataset} (input shape {tuple(shape)}): {e}"
        ) from e


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
