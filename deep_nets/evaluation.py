"""Evaluation of the deep-net trainer: errors and losses, the logged sharpness estimate, SWA.

``logged_sharpness`` is the one place that defines the sharpness number in ``metrics.jsonl``; it
uses a fixed m and rho for every method (``--sharpness_m``, ``--sharpness_rho``), so ERM and m-SAM
runs log the same quantity. It is meant to be pointed at ``sharpness.measures`` once that module
offers the same estimate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharpness.measures import m_sharpness

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
        logits = _wide(logits)
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
    L_c(w + e_c) - L_c(w), with e_c = rho g_c / ||g_c||_2, g_c = grad L_c(w) and L_c the mean
    cross-entropy over the chunk (no regularizer), in eval mode (running batch-norm statistics).
    This is ``sharpness.measures.m_sharpness`` with one ascent step (the suite's one definition
    of m-sharpness), measured in full precision whatever ``autocast`` the training uses. Returns
    [sum of differences, number of chunks] in float64 (reduce across workers, then divide); a
    trailing partial chunk is ignored. The weights are never modified."""
    del autocast  # the measure runs in the parameters' precision: see docstring
    r = m_sharpness(net, _ce, x, y, m=m, rho=rho, steps=1, error_fn=None)
    return torch.tensor(
        [math.fsum(r["per_chunk"]), r["n_chunks"]], dtype=torch.float64, device=x.device
    )


def _wide(t: Tensor) -> Tensor:
    """At least float32 (half-precision logits widened; float64 kept)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(_wide(out), y)


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
