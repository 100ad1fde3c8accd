"""One training step per SAM variant, chosen from a table (``STEPS``).

Every step function has the signature ``step(ctx, x, y) -> (loss, perturbed loss or None)``: it
leaves the update gradient in ``p.grad`` and takes the base optimizer's step; the caller zeroes the
gradients. The SAM rules come from the core (``sharpness``): m-SAM through
``sharpness.modules.msam_backward``, ASAM / LookSAM / random directions through ``SAM`` /
``LookSAM``. ``OriginalAscentSAM`` only adapts the arguments of the core's ascent to the original
code's conventions (``--sam_no_grad_norm``, ``--sam_step_size_mult`` with one ascent step).

| kind | when | one step |
|---|---|---|
| erm | SAM off (rho 0 or outside the SAM epochs) | forward-backward at w, SGD step |
| msam | sam / asam, own batch | per chunk c of m: e_c from grad L_c(w), grad at w + e_c |
| other_batch | --sam_perturb_batch other | e from an independent random batch, grad at w + e |
| prev_batch | --sam_use_prev_batch | e from the previous batch (the original's n-SAM) |
| looksam | --sam_variant looksam | LookSAM: the second pass 1 step in k |
| random | --sam_variant random | grad at w + rho u / ||u||, u ~ N(0, I) |
| weight_noise | --add/--mul_weight_perturb_scale | grad at (1 + s_mul n) w + s_add n' |
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sharpness import functional as SF
from sharpness.modules import frozen_bn_stats, local_grads, msam_backward
from sharpness.optim import SAM, LookSAM

LossFn = Callable[[Tensor, Tensor], Tensor]
# --msam_impl -> msam_backward's vectorize (None: the fused path where it applies, else the loop)
MSAM_IMPL = {"auto": None, "vectorized": True, "loop": False}


class OriginalAscentSAM(SAM):
    """``SAM`` whose plain (non-adaptive) ascent follows the original's ``weight_ascent_step``.

    The original takes, per chunk, steps e <- P_rho(e + rho * mult * d(g)) from e = 0 with
    g = grad(L_chunk / acc_steps) (the L2 term included) and d(g) = g / ||g|| (or g itself with
    ``--sam_no_grad_norm``), P_rho the projection onto the rho-ball, *also after a single step*.
    The core's ``SAM.perturb`` takes the gradient of L_chunk and skips the projection for one
    step; this class rescales its arguments so that the core computes the original's e:

    - unnormalized: g is divided by acc_steps (and by the loss scale of a GradScaler); with one
      step, g is multiplied by min(mult, 1 / ||g||), so rho * g lands on P_rho(rho * mult * g);
    - normalized, one step: rho is multiplied by min(mult, 1) (a step longer than rho is projected
      back to rho; the norm of rho g / (||g|| + 1e-12) is below rho already).

    Several steps are the core's projected ascent (it projects after every step).
    """

    def __init__(self, *args: Any, acc_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acc_steps = acc_steps
        self.loss_scale = 1.0  # set by the trainer under a float16 GradScaler

    def perturb_is_core(self, iters: int, step_size_mult: float) -> bool:
        """Whether ``perturb(iters=iters, step_size_mult=...)`` is ``SAM.perturb`` unchanged
        (the normalized single step of radius rho), so m-SAM may batch it over the chunks."""
        return self.normalize and iters == 1 and step_size_mult == 1.0

    def perturb(
        self,
        grads: Sequence[Tensor | None] | None = None,
        *,
        grad_at: Callable[[], Sequence[Tensor | None]] | None = None,
        iters: int = 1,
        step_size_mult: float = 1.0,
        rho_scale: float = 1.0,
    ) -> None:
        if not self.normalize:
            if grads is None:
                grads = [p.grad for _, p in self._params()]
            k = 1.0 / (self.acc_steps * self.loss_scale)
            grads = [None if g is None else g * k for g in grads]
            if grad_at is not None:
                inner = grad_at

                def grad_at() -> list[Tensor | None]:
                    return [None if g is None else g * k for g in inner()]

            if iters == 1:
                norm = SF.lp_norm([g for g in grads if g is not None], 2.0)
                f = torch.clamp(1.0 / norm, max=step_size_mult)
                grads = [None if g is None else g * f for g in grads]
                step_size_mult = 1.0
        elif iters == 1 and step_size_mult != 1.0:
            rho_scale *= min(step_size_mult, 1.0)
            step_size_mult = 1.0
        super().perturb(
            grads, grad_at=grad_at, iters=iters, step_size_mult=step_size_mult, rho_scale=rho_scale
        )


def build_optimizer(cfg: Any, model: nn.Module) -> SAM:
    """SGD (momentum, no Nesterov) wrapped in the configured SAM variant (rho 0 = plain SGD).
    The radius given here is the flags' (``TrainConfig.sam_radius``); the trainer sets each
    SAM step's own radius in the param groups."""
    base = dict(lr=cfg.lr_max, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    if cfg.sam_variant == "looksam":
        return LookSAM(
            params,
            torch.optim.SGD,
            rho=cfg.sam_radius(None, cfg.lr_max),
            k=cfg.looksam_k,
            alpha=cfg.looksam_alpha,
            **base,
        )
    return OriginalAscentSAM(
        # named: the official ASAM rescales the parameters named *weight* (norm layers included)
        list(model.named_parameters()) if cfg.sam_variant == "asam" else params,
        torch.optim.SGD,
        rho=cfg.sam_radius(None, cfg.lr_max),
        adaptive=cfg.sam_variant == "asam",
        eta=cfg.asam_eta,
        normalize=not cfg.sam_no_grad_norm,
        acc_steps=cfg.acc_steps,
        **base,
    )


@contextlib.contextmanager
def bn_eval(model: nn.Module) -> Iterator[None]:
    """Batch norm layers in eval mode inside (``--freeze_bn_stats``: running statistics used,
    never updated), training mode restored after."""
    mods = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(mods, was, strict=True):
            m.train(w)


@dataclass
class StepContext:
    """What a step function needs (built once per run by the trainer)."""

    cfg: Any
    opt: SAM
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    loss: LossFn  # mean loss over the given examples (regularizers included)
    m: int  # examples per ascent chunk on this worker
    params: list[Tensor]
    noise_gen: torch.Generator  # random directions (device generator of the epoch)
    other_batch: Callable[[], tuple[Tensor, Tensor]]
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: Any = None  # a float16 GradScaler, or None
    prev: tuple[Tensor, Tensor] | None = None  # the previous batch (for prev_batch)

    def bn_perturbed(self) -> contextlib.AbstractContextManager:
        """Batch-norm policy for passes other than the first at w (``--sam_bn_update``)."""
        if self.cfg.sam_bn_update == "first":
            return frozen_bn_stats(self.net)
        return contextlib.nullcontext()

    def scaled(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def update(self) -> None:
        self.opt.update(self.scaler)
        if self.scaler is not None:
            self.scaler.update()


def erm_step(ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """Forward-backward at w, base step."""
    with ctx.autocast():
        loss = ctx.loss(x, y)
    ctx.scaled(loss).backward()
    ctx.update()
    return loss, None


def msam_step(ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """m-SAM over chunks of m consecutive examples (``msam_backward``), base step."""
    loss, s = ctx.loss, 1.0
    if ctx.scaler is not None:  # every pass's loss is scaled; the ascent undoes it (see above)
        s = float(ctx.scaler.get_scale())
        ctx.opt.loss_scale = s

        def loss(xc: Tensor, yc: Tensor) -> Tensor:
            return ctx.scaler.scale(ctx.loss(xc, yc))

    with ctx.autocast():
        lo, plo = msam_backward(
            ctx.opt,
            ctx.net,
            loss,
            x,
            y,
            ctx.m,
            sam_iters=ctx.cfg.sam_iters,
            step_size_mult=ctx.cfg.sam_step_size_mult,
            bn_first_pass_only=ctx.cfg.sam_bn_update == "first",
            vectorize=MSAM_IMPL[ctx.cfg.msam_impl],
            max_batched_params=ctx.cfg.msam_max_batched_params,
        )
    ctx.update()
    return (lo / s, plo / s) if s != 1.0 else (lo, plo)


def _two_batch_step(
    ctx: StepContext, x: Tensor, y: Tensor, xa: Tensor, ya: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Ascent direction from the batch (xa, ya) at w (its pass never syncs gradients), update
    gradient from (x, y) at w + e. Batch norm per ``--sam_bn_update``: ``first`` updates the
    running statistics in the pass at w only (on the ascent batch), never at w + e."""
    with local_grads(ctx.net), ctx.autocast():
        lo = ctx.loss(xa, ya)
        ctx.scaled(lo).backward()
    ctx.opt.first_step(zero_grad=True, scaler=ctx.scaler)
    with ctx.bn_perturbed(), ctx.autocast():
        ploss = ctx.loss(x, y)
    ctx.scaled(ploss).backward()
    ctx.opt.restore()
    ctx.update()
    return ploss, None


def other_batch_step(ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """Our n-SAM: the ascent on an independent random batch of the same size."""
    xo, yo = ctx.other_batch()
    return _two_batch_step(ctx, x, y, xo, yo)


def prev_batch_step(ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """The original's n-SAM (``--sam_use_prev_batch``): the ascent on the previous batch."""
    xa, ya = ctx.prev if ctx.prev is not None else (x, y)
    return _two_batch_step(ctx, x, y, xa, ya)


def looksam_step(ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """LookSAM: ``first_step`` decides whether the second pass is due (1 step in k).

    Under DDP every first backward stays local, as for SAM (per-worker ascent): each worker keeps
    its own g_v, and on the reuse steps ``LookSAM.second_step`` averages the per-worker
    g + alpha (||g|| / ||g_v||) g_v over the workers, so the replicas stay equal."""
    opt = ctx.opt
    assert isinstance(opt, LookSAM)
    with local_grads(ctx.net), ctx.autocast():
        loss = ctx.loss(x, y)
        ctx.scaled(loss).backward()
    ploss = None
    if opt.first_step(zero_grad=True, scaler=ctx.scaler):
        with frozen_bn_stats(ctx.net), ctx.autocast():
            ploss = ctx.loss(x, y)
        ctx.scaled(ploss).backward()
    opt.second_step(scaler=ctx.scaler)
    if ctx.scaler is not None:
        ctx.scaler.update()
    return loss, ploss


def random_step(ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """w + rho u / ||u||, u ~ N(0, I) (``SAM.perturb`` on Gaussian directions), one pass there."""
    noise = [
        torch.randn(p.shape, generator=ctx.noise_gen, device=p.device, dtype=p.dtype)
        for p in ctx.params
    ]
    ctx.opt.perturb(noise)
    with ctx.autocast():
        ploss = ctx.loss(x, y)
    ctx.scaled(ploss).backward()
    ctx.opt.restore()
    ctx.update()
    return ploss, None


def weight_noise_step(ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """The original's random weight perturbation, per coordinate: w' = (1 + s_mul n_mul) w +
    s_add n_add with n ~ N(0, 1) (gauss) or U(-0.5, 0.5) (uniform); gradient at w', w restored
    exactly, base step."""
    cfg, g = ctx.cfg, ctx.noise_gen
    trainable = [p for p in ctx.params if p.requires_grad]
    backup = [p.detach().clone() for p in trainable]

    def draw(p: Tensor) -> Tensor:
        if cfg.weight_perturb_distr == "gauss":
            return torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)
        return torch.rand(p.shape, generator=g, device=p.device, dtype=p.dtype) - 0.5

    with torch.no_grad():
        for p in trainable:
            add = cfg.add_weight_perturb_scale * draw(p)
            mul = 1 + cfg.mul_weight_perturb_scale * draw(p)
            p.copy_(mul * p + add)
    with ctx.autocast():
        ploss = ctx.loss(x, y)
    ctx.scaled(ploss).backward()
    with torch.no_grad():
        for p, b in zip(trainable, backup, strict=True):
            p.copy_(b)
    ctx.update()
    return ploss, None


STEPS: dict[str, Callable[[StepContext, Tensor, Tensor], tuple[Tensor, Tensor | None]]] = {
    "erm": erm_step,
    "msam": msam_step,
    "other_batch": other_batch_step,
    "prev_batch": prev_batch_step,
    "looksam": looksam_step,
    "random": random_step,
    "weight_noise": weight_noise_step,
}


def step_kind(cfg: Any, active: bool) -> str:
    """The entry of ``STEPS`` for this configuration and epoch (``active``: SAM on in the epoch,
    ``TrainConfig.sam_radius`` > 0)."""
    if cfg.add_weight_perturb_scale > 0 or cfg.mul_weight_perturb_scale > 0:
        return "weight_noise"
    if not active:
        return "erm"
    if cfg.sam_variant in ("random", "looksam"):
        return cfg.sam_variant
    if cfg.sam_use_prev_batch:
        return "prev_batch"
    if cfg.sam_perturb_batch == "other":
        return "other_batch"
    return "msam"
