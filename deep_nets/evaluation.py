"""Evaluation of the deep-net trainer: errors and losses, which examples are wrong (``wrong.npz``),
the logged sharpness estimate, SWA.

``logged_sharpness`` is the one place that defines the sharpness number in ``metrics.jsonl``; it
uses a fixed m and rho for every method (``--sharpness_m``, ``--sharpness_rho``), so ERM and m-SAM
runs log the same quantity. It is meant to be pointed at ``sharpness.measures`` once that module
offers the same estimate.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharpness.measures import m_sharpness
from suite.rundir import atomic_write_bytes

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


@torch.no_grad()
def wrong_examples(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    autocast: Autocast = contextlib.nullcontext,
) -> np.ndarray:
    """Bool array (N,): argmax_k net(x_i)_k != y_i, in eval mode, in the batches of ``evaluate``
    (so its mean is ``evaluate``'s error rate on the same examples)."""
    was = net.training
    net.eval()
    out = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        with autocast():
            logits = net(x[i : i + batch_size])
        out[i : i + batch_size] = logits.float().argmax(1) != y[i : i + batch_size]
    net.train(was)
    return out.cpu().numpy()


def write_wrong(path: str | os.PathLike, wrong: Mapping[str, np.ndarray]) -> None:
    """Save named bool arrays compactly and atomically: a numpy ``.npz`` holding, per name,
    ``np.packbits(a, bitorder="little")`` and its length as ``n_<name>`` (100 000 examples take
    12.5 kB). Read back with ``read_wrong``."""
    arrays: dict[str, np.ndarray] = {}
    for k, a in wrong.items():
        a = np.asarray(a, dtype=bool)
        if a.ndim != 1:
            raise ValueError(f"write_wrong: {k!r} must be 1-D, got shape {a.shape}")
        arrays[k] = np.packbits(a, bitorder="little")
        arrays[f"n_{k}"] = np.array(a.size, dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_wrong(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The bool arrays ``write_wrong`` saved (``allow_pickle=False``: never unpickles)."""
    with np.load(path, allow_pickle=False) as z:
        names = [k for k in z.files if not k.startswith("n_")]
        return {
            k: np.unpackbits(z[k], count=int(z[f"n_{k}"]), bitorder="little").astype(bool)
            for k in names
        }


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
