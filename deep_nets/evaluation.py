"""Evaluation of the deep-net trainer: errors and losses, the logged sharpness estimate, SWA.

``logged_sharpness`` is the one place that defines the sharpness number in ``metrics.jsonl``; it
uses a fixed m and rho for every method (``--sharpness_m``, ``--sharpness_rho``), so ERM and m-SAM
runs log the same quantity. It is meant to be pointed at ``sharpness.measures`` once that module
offers the same estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharpness import functional as SF

Autocast = Callable[[], contextlib.AbstractContextManager]


@torch.no_grad()
def evaluate(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    noisy: Tensor | None = None,
    autocast: Autocast = contextlib.nullcontext,
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


def logged_sharpness(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    m: int,
    rho: float,
    autocast: Autocast = contextlib.nullcontext,
) -> Tensor:
    """One-step m-sharpness of (x, y): the sum over consecutive chunks c of m examples of
    L_c(w + e_c) - L_c(w), with e_c = rho g_c / (||g_c||_2 + 1e-12), g_c = grad L_c(w) and L_c the
    mean cross-entropy over the chunk (no regularizer), in eval mode (running batch-norm
    statistics). Returns [sum of differences, number of chunks] in float64 (reduce across
    workers, then divide); a trailing partial chunk is ignored. The weights are never modified
    (the perturbed loss is a ``functional_call``)."""
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


@torch.no_grad()
def swa_update(swa: nn.Module, model: nn.Module, tau: float) -> None:
    """The original's moving average after every step: w_swa <- tau w_swa + (1 - tau) w over the
    parameters (buffers are recomputed by ``swa_bn_update`` before evaluation)."""
    a = list(swa.parameters())
    b = [p.detach() for p in model.parameters()]
    if len(a) != len(b):
        raise ValueError("swa_update: the two models have different parameters")
    torch._foreach_mul_(a, tau)  # one kernel per step, not one per tensor (every step)
    torch._foreach_add_(a, b, alpha=1 - tau)


@torch.no_grad()
def swa_bn_update(swa: nn.Module, x: Tensor, batch_size: int, autocast: Autocast) -> None:
    """Batch-norm running statistics of the averaged weights: the cumulative average over one
    pass of ``x`` in batches (the original's ``bn_update``; here without augmentation). Runs under
    a forked RNG so that dropout in this pass does not move the training's random stream."""
    bns = [m for m in swa.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    devices = [x.device] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        swa.train()
        for i in range(0, x.shape[0], batch_size):
            with autocast():
                swa(x[i : i + batch_size])
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    swa.eval()
