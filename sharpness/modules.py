"""Helpers for nn.Modules: batch-norm statistics, DDP per-worker gradients, and m-SAM.

m-sharpness (SAM paper; "Towards Understanding SAM" §4.1): the max is taken independently over
disjoint chunks of m examples and the SAM gradients are averaged,

    grad = (1/C) sum_c grad L_c(w + e_c),   e_c = e(grad L_c(w)),   C = batch / m,

where L_c is the mean loss over chunk c. m = batch is SAM; small m generalizes better.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sharpness.optim import SAM, LookSAM

__all__ = ["frozen_bn_stats", "local_grads", "msam_backward"]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Inside, batch norm layers in training mode normalize with the batch statistics as usual
    but do not update their running statistics (nor ``num_batches_tracked``).

    SAM's second forward pass runs at the perturbed weights w + e; its statistics would bias the
    running estimates used at test time, so only the first pass (at w) should update them.
    (The popular wrapper sets momentum to 0 instead, which still counts the batch.)
    """
    mods = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in mods:
        # With track_running_stats False in training mode, BN passes no running buffers to
        # F.batch_norm: batch statistics are used and nothing is updated.
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in mods:
            m.track_running_stats = True


def _unwrap_compiled(model: Any) -> Any:
    """The module under ``torch.compile`` wrappers (OptimizedModule keeps it in ``_orig_mod``)."""
    # A compiled module exists only if dynamo was imported: no import of it here (it is slow).
    compiled = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", ())
    while isinstance(model, compiled):
        model = model._orig_mod
    return model


def _has_no_sync(m: nn.Module) -> bool:
    return isinstance(m, nn.parallel.DistributedDataParallel) or callable(
        getattr(m, "no_sync", None)
    )


def local_grads(model: nn.Module) -> contextlib.AbstractContextManager:
    """``model.no_sync()`` for DistributedDataParallel (and any wrapper with the same
    ``no_sync()``, e.g. FSDP), a null context for a model that is not distributed.

    The paper's per-accelerator SAM: each worker's first backward (the ascent gradient) stays
    local, so each worker perturbs with its own batch shard; the second backward, outside this
    context, is all-reduced as usual, averaging the per-worker SAM gradients.

    ``torch.compile`` wrappers are looked through (``torch.compile(ddp_model)``). A model this
    function cannot make local raises instead of silently giving global SAM: ``DataParallel``
    (one process sums the replicas' gradients in backward), and a module that holds a
    DistributedDataParallel somewhere inside (pass the DDP module itself).
    """
    m = _unwrap_compiled(model)
    if not isinstance(m, nn.Module):
        raise TypeError(f"local_grads needs an nn.Module, got {type(model).__name__}")
    if isinstance(m, nn.DataParallel):
        raise ValueError(
            "local_grads: DataParallel sums the replicas' gradients inside backward, so the "
            "per-worker ascent is impossible; use DistributedDataParallel (one process per "
            "device), or call the two passes without local_grads for global SAM"
        )
    if _has_no_sync(m):
        return m.no_sync()
    inner = [type(s).__name__ for s in m.modules() if s is not m and _has_no_sync(s)]
    if inner:
        raise ValueError(
            f"local_grads({type(model).__name__}): the model wraps a {inner[0]} inside; its "
            "gradient all-reduce can only be switched off on that module: pass the "
            "DistributedDataParallel module itself"
        )
    return contextlib.nullcontext()


def msam_backward(
    optimizer: SAM,
    model: nn.Module,
    compute_loss: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    m: int,
    *,
    sam_iters: int = 1,
    step_size_mult: float = 1.0,
    bn_first_pass_only: bool = True,
) -> tuple[Tensor, Tensor]:
    """Accumulate the m-SAM gradient of one batch into ``p.grad``; the weights end unchanged.

    The batch is cut into C = batch/m chunks of m *consecutive* examples (the original
    ``--acc_steps`` semantics). For each chunk: g_c = grad of ``compute_loss(x_c, y_c)`` at w (under
    ``local_grads``: never all-reduced), w <- w + e(g_c) through ``optimizer.perturb`` with
    ``iters=sam_iters`` (so rho, p, ASAM and normalization are the optimizer's, and the ascent is
    the original's projected one: ``sam_iters`` steps of radius rho * ``step_size_mult``, each
    projected onto the rho-ball, as its ``weight_ascent_step``), then
    ``compute_loss(x_c, y_c) / C`` is back-propagated at w + e_c into p.grad and w is restored.
    Under DDP only the last chunk's backward is all-reduced (gradient accumulation), so the update
    averages every worker's every chunk.

    Zero the gradients before calling; afterwards call ``optimizer.update()`` (clip + base step).
    ``compute_loss`` must return the *mean* loss over its chunk (regularizers included).
    Returns the mean chunk losses at w and at the perturbed weights (detached).
    """
    if isinstance(optimizer, LookSAM) or not isinstance(optimizer, SAM):
        raise ValueError(
            f"msam_backward needs a sharpness.SAM optimizer, got {type(optimizer).__name__}: "
            "m-SAM takes a SAM gradient every step and LookSAM's reuse rule is not defined per "
            "chunk (LookSAM: use first_step/second_step)"
        )
    n = inputs.shape[0]
    if isinstance(m, bool) or not isinstance(m, int) or m < 1 or n % m:
        raise ValueError(
            f"m={m} must be a positive integer dividing the batch size {n} "
            "(m = batch_size / acc_steps)"
        )
    if targets.shape[0] != n:
        raise ValueError(f"inputs ({n}) and targets ({targets.shape[0]}) differ in batch size")
    chunks = n // m
    params = [p for g in optimizer.param_groups for p in g["params"]]
    trainable = [p for p in params if p.requires_grad]
    bn_ctx = (lambda: frozen_bn_stats(model)) if bn_first_pass_only else contextlib.nullcontext

    def grads_at_current(x: Tensor, y: Tensor) -> list[Tensor | None]:
        with local_grads(model):
            loss = compute_loss(x, y)
            gs = iter(torch.autograd.grad(loss, trainable, allow_unused=True))
        return [next(gs) if p.requires_grad else None for p in params], loss

    losses, plosses = [], []
    for c in range(chunks):
        x, y = inputs[c * m : (c + 1) * m], targets[c * m : (c + 1) * m]
        grads, loss = grads_at_current(x, y)

        def grad_at(x: Tensor = x, y: Tensor = y) -> list[Tensor | None]:
            with bn_ctx():
                return grads_at_current(x, y)[0]

        optimizer.perturb(grads, grad_at=grad_at, iters=sam_iters, step_size_mult=step_size_mult)
        last = c == chunks - 1
        with bn_ctx(), contextlib.nullcontext() if last else local_grads(model):
            ploss = compute_loss(x, y)
            (ploss / chunks).backward()
        optimizer.restore()
        losses.append(loss.detach())
        plosses.append(ploss.detach())
    return torch.stack(losses).mean(), torch.stack(plosses).mean()
