"""Sharpness measures: the top Hessian eigenvalue (power iteration on Hessian-vector products)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def hessian_vector_product(
    loss_fn: Callable[[], Tensor], params: Sequence[Tensor], vec: Sequence[Tensor]
) -> list[Tensor]:
    """H v = d/dw <grad L(w), v> by double back-propagation (exact, no finite differences)."""
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vec))
        return [h.detach() for h in torch.autograd.grad(dot, params)]


def hessian_top_eigenvalue(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    iters: int = 50,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> float:
    """lambda_max of the Hessian of ``loss_fn()`` w.r.t. ``params`` by power iteration.

    v <- H v / ||H v|| from a random unit v; the Rayleigh quotient v^T H v is returned once it
    changes by less than ``tol`` (relative) or after ``iters`` products. Power iteration finds the
    eigenvalue of largest magnitude; at (near) minima that is the largest positive one.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1 (got {iters})")
    params = [p for p in params if p.requires_grad]
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = torch.sqrt(sum((x**2).sum() for x in v))
    v = [x / norm for x in v]
    eig = None
    for _ in range(iters):
        hv = hessian_vector_product(loss_fn, params, v)
        new = float(sum((a * b).sum() for a, b in zip(hv, v)))
        norm = torch.sqrt(sum((x**2).sum() for x in hv))
        if float(norm) == 0.0:
            return 0.0
        v = [x / norm for x in hv]
        if eig is not None and abs(new - eig) <= tol * max(abs(eig), 1e-12):
            return new
        eig = new
    return eig
