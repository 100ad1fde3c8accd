"""Pure tensor math of the SAM family: the one definition of every ascent rule in the suite.

Every function takes *gradients* (a tensor, or a list of tensors that together form one vector) and
returns *perturbations* of the same structure. Tensors may carry ``batch_dims`` leading dimensions
(runs, chunks, examples): norms then reduce only over the trailing dimensions, so one call perturbs
many runs or many examples at once, each with its own norm. A list of tensors with the same batch
shape is one vector per batch entry (e.g. the ``u`` and ``v`` of a diagonal network).

Notation: g is the gradient at w, rho the radius, 1/p + 1/q = 1. The first-order solution of
max_{||e||_p <= rho} <g, e> (SAM paper, eq. 2) is

    e = rho * sign(g) |g|^(q-1) / ||g||_q^(q-1)            ||e||_p = rho

with the exact special cases p = 2: e = rho g / ||g||_2 and p = inf: e = rho sign(g).
ASAM (adaptive) solves the same problem in the rescaled space T^-1 w with T = |w| + eta, giving
e = T * ascent(T g); for p = 2, e = rho T^2 g / ||T g||_2. The theory's *unnormalized* SAM uses
e = rho g (adaptive: rho T^2 g). ``eps`` is added to every norm in a denominator, so a zero
gradient gives a zero perturbation instead of NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Tensors = Tensor | Sequence[Tensor]
Rho = float | Tensor | Sequence[float | Tensor]

__all__ = [
    "lp_norm",
    "dual_exponent",
    "asam_scale",
    "perturbation",
    "project",
    "multi_step_perturbation",
    "looksam_orthogonal",
    "looksam_reuse",
]


def _as_list(x: Tensors) -> tuple[list[Tensor], bool]:
    if isinstance(x, Tensor):
        return [x], True
    return list(x), False


def _unwrap(xs: list[Tensor], single: bool) -> Tensors:
    return xs[0] if single else xs


def _check_p(p: float) -> None:
    if not (p > 1):
        raise ValueError(f"p must be in (1, inf] (got p={p}); p=1 has no first-order solution")


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (q = 1 for p = inf, q = 2 for p = 2)."""
    _check_p(p)
    return 1.0 if math.isinf(p) else p / (p - 1.0)


def _bcast(s: Tensor | float, t: Tensor, batch_dims: int) -> Tensor | float:
    """Reshape a batch-shaped tensor s so that it broadcasts against t of shape (*batch, *rest)."""
    if not isinstance(s, Tensor) or s.dim() == 0:
        return s
    if s.dim() > batch_dims:
        raise ValueError(
            f"a tensor rho/scale of shape {tuple(s.shape)} has more dims than batch_dims"
        )
    pad = t.dim() - batch_dims
    return s.reshape(*s.shape, *([1] * pad))


def _tensor_norm(t: Tensor, p: float, batch_dims: int) -> Tensor:
    dims = tuple(range(batch_dims, t.dim()))
    if not dims:  # a scalar parameter: its norm is its absolute value
        return t.abs()
    return torch.linalg.vector_norm(t, ord=p, dim=dims)


def lp_norm(
    tensors: Tensors,
    p: float = 2.0,
    batch_dims: int = 0,
    per_tensor: bool = False,
    foreach: bool | None = None,
) -> Tensor | list[Tensor]:
    """||x||_p of the vector formed by all ``tensors`` (trailing dims), one value per batch entry.

    Returns a tensor of the batch shape, or with ``per_tensor=True`` a list of one norm per tensor.
    ``foreach`` uses ``torch._foreach_norm`` (only for ``batch_dims == 0``); the loop is the ground
    truth it is tested against.
    """
    xs, _ = _as_list(tensors)
    if not xs:
        raise ValueError("lp_norm needs at least one tensor")
    if per_tensor:
        return [_tensor_norm(t, p, batch_dims) for t in xs]
    if foreach and batch_dims == 0:
        norms = torch._foreach_norm(xs, p)
    else:
        norms = [_tensor_norm(t, p, batch_dims) for t in xs]
    if len(norms) == 1:
        return norms[0]
    # ||(||a||_p, ||b||_p)||_p = ||(a, b)||_p: combine the per-tensor norms.
    return torch.linalg.vector_norm(torch.stack(norms), ord=p, dim=0)


def asam_scale(
    weights: Sequence[Tensor], eta: float = 0.01, weights_only: bool = True
) -> list[Tensor | None]:
    """The ASAM operator T_w = |w| + eta, one tensor per weight (None means T = identity).

    With ``weights_only`` tensors of dimension <= 1 (biases, normalization parameters) get None,
    i.e. plain SAM, as in the official ASAM code; ``weights_only=False, eta=0`` is the popular
    variant that rescales every tensor by |w|.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (got {eta})")
    return [None if (weights_only and w.dim() <= 1) else w.abs().add_(eta) for w in weights]


def _numerator(g: Tensor, q: float, out: Tensor | None) -> Tensor:
    """sign(g)|g|^(q-1), written into ``out`` when given."""
    o = g.clone() if out is None else out.copy_(g)
    if q == 2.0:
        return o
    if q == 1.0:
        return o.sign_()
    return o.abs_().pow_(q - 1.0).mul_(g.sign())


def perturbation(
    grads: Tensors,
    rho: Rho,
    p: float = 2.0,
    *,
    normalize: bool = True,
    scale: Sequence[Tensor | None] | None = None,
    layerwise_weights: Sequence[Tensor] | None = None,
    batch_dims: int = 0,
    eps: float = 1e-12,
    out: Tensors | None = None,
    foreach: bool | None = None,
) -> Tensors:
    """The SAM ascent e(w) for gradients g (module docstring for the math).

    Args:
        grads: g, a tensor or list of tensors of shape (*batch, *param_shape).
        rho: radius; a float, a tensor broadcastable to the batch shape (one rho per run), or a
            sequence with one such value per tensor (per-parameter-group rho in the optimizers).
        p: the norm of the ball, in (1, inf].
        normalize: False gives the theory's unnormalized ascent e = rho g (rho T^2 g if adaptive).
        scale: ASAM's T per tensor (``asam_scale``; None entries mean identity).
        layerwise_weights: Look-LayerSAM: norms are taken per tensor and each tensor's radius is
            scaled by its weight norm (trust ratio), e_l = rho ||w_l|| g_l / ||g_l||_2 for p = 2.
        batch_dims: number of leading batch dimensions excluded from the norms.
        eps: added to the norm in the denominator.
        out: tensors to write e into (no allocation for the common p = 2 / inf paths).
        foreach: use ``torch._foreach_*`` kernels (batch_dims == 0 only); default: when on CUDA.
    """
    gs, single = _as_list(grads)
    q = dual_exponent(p)
    n = len(gs)
    outs = _as_list(out)[0] if out is not None else [None] * n
    if len(outs) != n:
        raise ValueError("out must have one tensor per gradient tensor")
    scales = list(scale) if scale is not None else [None] * n
    rhos = list(rho) if isinstance(rho, (list, tuple)) else [rho] * n
    if len(scales) != n or len(rhos) != n:
        raise ValueError("scale and a per-tensor rho need one entry per gradient tensor")
    for r in rhos:
        if not isinstance(r, Tensor) and r < 0:
            raise ValueError(f"rho must be >= 0 (got {r})")
    if foreach is None:
        foreach = gs[0].is_cuda
    plain = all(s is None for s in scales) and layerwise_weights is None

    # Fast path: the optimizers' common case, every step, on possibly hundreds of tensors.
    one_rho = not isinstance(rho, (list, tuple))
    if foreach and plain and batch_dims == 0 and q in (1.0, 2.0) and one_rho:
        r = rhos[0]
        res = [o if o is not None else torch.empty_like(g) for o, g in zip(outs, gs)]
        torch._foreach_copy_(res, gs)
        if q == 1.0 and normalize:
            torch._foreach_sign_(res)
            torch._foreach_mul_(res, r)
        elif normalize:
            norm = lp_norm(gs, 2.0, foreach=True)
            torch._foreach_mul_(res, r / (norm + eps))
        else:
            torch._foreach_mul_(res, r)
        return _unwrap(res, single)

    # Reference loop: g~ = T g; e = T * rho * num(g~) / den(g~).
    tg = [g if s is None else g * s for g, s in zip(gs, scales)]
    if not normalize:
        res = [_numerator(t, 2.0, o) for t, o in zip(tg, outs)]
        coeffs: list = [r for r in rhos]
    elif layerwise_weights is not None:
        dens = lp_norm(tg, q, batch_dims, per_tensor=True) if q != 1.0 else [1.0] * n
        wn = lp_norm(list(layerwise_weights), 2.0, batch_dims, per_tensor=True)
        res = [_numerator(t, q, o) for t, o in zip(tg, outs)]
        coeffs = [r * w / (d ** (q - 1.0) + eps) for r, w, d in zip(rhos, wn, dens)]
    else:
        den = 1.0 if q == 1.0 else lp_norm(tg, q, batch_dims) ** (q - 1.0) + eps
        res = [_numerator(t, q, o) for t, o in zip(tg, outs)]
        coeffs = [r / den for r in rhos]
    for e, c, s in zip(res, coeffs, scales):
        e.mul_(_bcast(c, e, batch_dims))
        if s is not None:
            e.mul_(s)
    return _unwrap(res, single)


def project(
    perturb: Tensors,
    rho: float | Tensor,
    p: float = 2.0,
    *,
    scale: Sequence[Tensor | None] | None = None,
    batch_dims: int = 0,
) -> Tensors:
    """Projection onto the rho-ball {e : ||T^-1 e||_p <= rho} (T = identity without ``scale``).

    Exact for p = 2 (radial rescaling) and p = inf (elementwise clamp); for other p the radial
    rescaling is used (a feasible point, not the Euclidean projection).
    """
    es, single = _as_list(perturb)
    _check_p(p)
    scales = list(scale) if scale is not None else [None] * len(es)
    if math.isinf(p):
        res = []
        for e, s in zip(es, scales):
            r = _bcast(rho, e, batch_dims)
            bound = torch.as_tensor(r if s is None else r * s, dtype=e.dtype, device=e.device)
            res.append(torch.maximum(torch.minimum(e, bound), -bound))
        return _unwrap(res, single)
    unscaled = [
        e if s is None else e / s.clamp_min(torch.finfo(e.dtype).tiny) for e, s in zip(es, scales)
    ]
    norm = lp_norm(unscaled, p, batch_dims)
    factor = torch.clamp(rho / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)
    return _unwrap([e * _bcast(factor, e, batch_dims) for e in es], single)


def multi_step_perturbation(
    grad_at: Callable[[Tensors], Tensors],
    grads: Tensors,
    rho: float | Tensor,
    iters: int = 1,
    step_size_mult: float = 1.0,
    p: float = 2.0,
    **kwargs,
) -> Tensors:
    """Multi-step projected ascent (the original ``--sam_iters``).

    e_0 = 0; e_{k+1} = P_rho(e_k + ascent(g_k; rho * step_size_mult)), g_k = grad L(w + e_k), where
    ``grad_at(e)`` returns grad L(w + e) and ``grads`` is g_0. The projection P_rho is applied only
    when iters > 1, so iters = 1 is exactly ``perturbation`` (also for the unnormalized ascent,
    whose single step may leave the ball by design). ``kwargs`` go to ``perturbation``.
    """
    if iters < 1:
        raise ValueError(f"sam_iters must be >= 1 (got {iters})")
    if step_size_mult <= 0:
        raise ValueError(f"step_size_mult must be > 0 (got {step_size_mult})")
    step = rho * step_size_mult
    ball = dict(scale=kwargs.get("scale"), batch_dims=kwargs.get("batch_dims", 0))
    e = perturbation(grads, step, p, **kwargs)
    for _ in range(iters - 1):
        e = project(e, rho, p, **ball)
        es, single = _as_list(e)
        ds, _ = _as_list(perturbation(grad_at(e), step, p, **kwargs))
        e = _unwrap([a + b for a, b in zip(es, ds)], single)
    if iters > 1:
        e = project(e, rho, p, **ball)
    return e


def _dot(a: list[Tensor], b: list[Tensor], batch_dims: int, per_tensor: bool):
    def one(x: Tensor, y: Tensor) -> Tensor:
        dims = tuple(range(batch_dims, x.dim()))
        return (x * y).sum(dim=dims) if dims else x * y

    parts = [one(x, y) for x, y in zip(a, b)]
    return parts if per_tensor else torch.stack(parts).sum(0)


def looksam_orthogonal(
    grads: Tensors,
    sam_grads: Tensors,
    *,
    per_tensor: bool = False,
    batch_dims: int = 0,
    eps: float = 1e-12,
    out: Tensors | None = None,
    foreach: bool | None = None,
) -> Tensors:
    """LookSAM's stored direction: the part of g_s orthogonal to g,

        g_v = g_s - (<g, g_s> / ||g||^2) g,

    with global inner products and norms (the paper's vector form) or per tensor. ``out`` may alias
    ``grads`` (the optimizer keeps g in the buffer that then receives g_v).
    """
    gs, single = _as_list(grads)
    ss, _ = _as_list(sam_grads)
    outs = _as_list(out)[0] if out is not None else [torch.empty_like(g) for g in gs]
    if foreach is None:
        foreach = gs[0].is_cuda
    if foreach and not per_tensor and batch_dims == 0:
        # Two dot products over the concatenated vectors instead of 2 x len(gs) small reductions.
        fg = torch.cat([g.reshape(-1) for g in gs])
        fs = torch.cat([s.reshape(-1) for s in ss])
        c = torch.dot(fg, fs) / (torch.dot(fg, fg) + eps)
        del fg, fs
        if any(o is not g for o, g in zip(outs, gs)):
            torch._foreach_copy_(outs, gs)
        torch._foreach_mul_(outs, -c)
        torch._foreach_add_(outs, ss)
        return _unwrap(outs, single)
    dots = _dot(gs, ss, batch_dims, per_tensor)
    sq = _dot(gs, gs, batch_dims, per_tensor)
    if per_tensor:
        coeffs = [d / (s + eps) for d, s in zip(dots, sq)]
    else:
        coeffs = [dots / (sq + eps)] * len(gs)
    res = []
    for g, s, o, c in zip(gs, ss, outs, coeffs):
        if o is not g:
            o.copy_(g)
        res.append(o.mul_(-_bcast(c, o, batch_dims)).add_(s))
    return _unwrap(res, single)


def looksam_reuse(
    grads: Tensors,
    orthogonal: Tensors,
    alpha: float = 0.7,
    *,
    per_tensor: bool = False,
    batch_dims: int = 0,
    eps: float = 1e-12,
    out: Tensors | None = None,
    foreach: bool | None = None,
) -> Tensors:
    """LookSAM's gradient on the steps between ascents: g + alpha (||g|| / ||g_v||) g_v.

    ``out`` may alias ``grads`` (the optimizer rewrites p.grad in place).
    """
    gs, single = _as_list(grads)
    vs, _ = _as_list(orthogonal)
    outs = _as_list(out)[0] if out is not None else [g.clone() for g in gs]
    if foreach is None:
        foreach = gs[0].is_cuda
    if foreach and not per_tensor and batch_dims == 0:
        c = alpha * lp_norm(gs, 2.0, foreach=True) / (lp_norm(vs, 2.0, foreach=True) + eps)
        if any(o is not g for o, g in zip(outs, gs)):
            torch._foreach_copy_(outs, gs)
        torch._foreach_add_(outs, torch._foreach_mul(vs, c))
        return _unwrap(outs, single)
    gn = lp_norm(gs, 2.0, batch_dims, per_tensor=per_tensor)
    vn = lp_norm(vs, 2.0, batch_dims, per_tensor=per_tensor)
    if per_tensor:
        coeffs = [alpha * a / (b + eps) for a, b in zip(gn, vn)]
    else:
        coeffs = [alpha * gn / (vn + eps)] * len(gs)
    res = []
    for g, v, o, c in zip(gs, vs, outs, coeffs):
        if o is not g:
            o.copy_(g)
        res.append(o.add_(v * _bcast(c, v, batch_dims)))
    return _unwrap(res, single)
