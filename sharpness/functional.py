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
e = rho g (adaptive: rho T^2 g).

The eps convention (every function, every path): ``eps`` >= 0 is added to a *norm* before any power
of it is taken, so a denominator ||x|| becomes ||x|| + eps, ||x||^2 becomes (||x|| + eps)^2 and
||g||_q^(q-1) becomes (||g||_q + eps)^(q-1):

    e   = rho sign(g) |g|^(q-1) / (||g||_q + eps)^(q-1)           (p = 2: rho g / (||g||_2 + eps))
    g_v = g_s - <g, g_s> / (||g|| + eps)^2 g                      (LookSAM, ``looksam_orthogonal``)
    g'  = g + alpha ||g|| / (||g_v|| + eps) g_v                   (LookSAM, ``looksam_reuse``)

A zero vector in a denominator gives a zero term for every eps >= 0 (eps = 0 included), never NaN.

Numerical range. p = 2 and p = inf are computed directly (float32: ||g||_2 between ~1e-19 and
~1e19, where its square is a normal float32). Every other p in (1, inf) is computed on
u = g / max|g| (the rule is invariant to that scaling), so |u|^(q-1) and ||u||_q never overflow or
underflow as a whole: any p in (1, inf) and any finite nonzero g work in float32, including p close
to 1 (q large: the ascent concentrates on the largest |g_i|) and large p (q close to 1).

Devices: a list of tensors may live on several devices (model parallelism); norms are reduced on
the first tensor's device and every coefficient is moved to the tensor it multiplies. The
``foreach`` kernels are used only for tensors on one device.
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


def _check_eps(eps: float) -> None:
    if not (eps >= 0) or math.isinf(eps):
        raise ValueError(f"eps must be a finite number >= 0 (got {eps})")


def _one_device(xs: Sequence[Tensor]) -> bool:
    d = xs[0].device
    return all(x.device == d for x in xs)


def _default_foreach(xs: Sequence[Tensor]) -> bool:
    """The foreach kernels by default on CUDA, and only when every tensor is on one device."""
    return xs[0].is_cuda and _one_device(xs)


def _to(c: Tensor | float, t: Tensor) -> Tensor | float:
    """``c`` on ``t``'s device (a Python number or a tensor already there is returned as is)."""
    if isinstance(c, Tensor) and c.device != t.device:
        return c.to(t.device)
    return c


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


def _tensor_amax(t: Tensor, batch_dims: int) -> Tensor:
    dims = tuple(range(batch_dims, t.dim()))
    return t.abs() if not dims else t.abs().amax(dim=dims)


def _gather(parts: list[Tensor]) -> Tensor:
    """Stack per-tensor reductions on the first one's device (model-parallel parameters)."""
    dev = parts[0].device
    return torch.stack([x if x.device == dev else x.to(dev) for x in parts])


def lp_norm(
    tensors: Tensors,
    p: float = 2.0,
    batch_dims: int = 0,
    per_tensor: bool = False,
    foreach: bool | None = None,
) -> Tensor | list[Tensor]:
    """||x||_p of the vector formed by all ``tensors`` (trailing dims), one value per batch entry.

    Returns a tensor of the batch shape (on the first tensor's device), or with
    ``per_tensor=True`` a list of one norm per tensor. ``foreach`` uses ``torch._foreach_norm``
    (only for ``batch_dims == 0`` and tensors on one device); the loop is the ground truth it is
    tested against.
    """
    xs, _ = _as_list(tensors)
    if not xs:
        raise ValueError("lp_norm needs at least one tensor")
    if per_tensor:
        return [_tensor_norm(t, p, batch_dims) for t in xs]
    if foreach is None:
        foreach = _default_foreach(xs)
    if foreach and batch_dims == 0:
        norms = list(torch._foreach_norm(xs, p))
        if len(norms) == 1:
            return norms[0]
        return torch.linalg.vector_norm(torch.stack(norms), ord=p, dim=0)
    norms = [_tensor_norm(t, p, batch_dims) for t in xs]
    if len(norms) == 1:
        return norms[0]
    # ||(||a||_p, ||b||_p)||_p = ||(a, b)||_p: combine the per-tensor norms.
    return torch.linalg.vector_norm(_gather(norms), ord=p, dim=0)


def asam_scale(
    weights: Sequence[Tensor], eta: float = 0.01, weights_only: bool = True
) -> list[Tensor | None]:
    """The ASAM operator T_w = |w| + eta, one tensor per weight (None means T = identity).

    With ``weights_only`` tensors of dimension <= 1 (biases, but also normalization weights) get
    None, i.e. plain SAM: a structural rule for callers without parameter names. The official
    ASAM code selects by name instead (every parameter named ``*weight*``, BatchNorm/LayerNorm
    weights included); ``sharpness.SAM`` applies that rule (``adaptive_weights_only=True`` with
    ``model.named_parameters()``). ``weights_only=False, eta=0`` is davda54's variant, which
    rescales every tensor by |w|.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (got {eta})")
    return [None if (weights_only and w.dim() <= 1) else w.abs().add_(eta) for w in weights]


def _safe_ratio(num: Tensor | float, den: Tensor, guard: Tensor) -> Tensor:
    """num / den where ``guard`` (a norm) is > 0, else 0: a zero vector gives a zero term."""
    return torch.where(guard > 0, num / den, torch.zeros((), dtype=den.dtype, device=den.device))


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
    """The SAM ascent e(w) for gradients g (module docstring for the math and the eps rule).

    Args:
        grads: g, a tensor or list of tensors of shape (*batch, *param_shape).
        rho: radius; a float, a tensor broadcastable to the batch shape (one rho per run), or a
            sequence with one such value per tensor (per-parameter-group rho in the optimizers).
        p: the norm of the ball, in (1, inf].
        normalize: False gives the theory's unnormalized ascent e = rho g (rho T^2 g if adaptive).
        scale: ASAM's T per tensor (``asam_scale``; None entries mean identity).
        layerwise_weights: Look-LayerSAM: norms are taken per tensor and each tensor's radius is
            scaled by its weight norm (trust ratio), e_l = rho ||w_l|| g_l / (||g_l||_2 + eps)
            for p = 2 (needs ``normalize``).
        batch_dims: number of leading batch dimensions excluded from the norms.
        eps: added to the norm in the denominator (module docstring).
        out: tensors to write e into (no allocation for the common p = 2 / inf paths).
        foreach: use ``torch._foreach_*`` kernels (batch_dims == 0, one device only); default:
            when on one CUDA device.
    """
    gs, single = _as_list(grads)
    q = dual_exponent(p)
    _check_eps(eps)
    n = len(gs)
    outs = _as_list(out)[0] if out is not None else [None] * n
    if len(outs) != n:
        raise ValueError("out must have one tensor per gradient tensor")
    scales = list(scale) if scale is not None else [None] * n
    rhos = list(rho) if isinstance(rho, (list, tuple)) else [rho] * n
    if len(scales) != n or len(rhos) != n:
        raise ValueError("scale and a per-tensor rho need one entry per gradient tensor")
    for r in rhos:
        if not isinstance(r, Tensor) and not r >= 0:
            raise ValueError(f"rho must be >= 0 (got {r})")
    if layerwise_weights is not None and not normalize:
        raise ValueError("layerwise (trust-ratio) radii need the normalized ascent, normalize=True")
    if foreach is None:
        foreach = _default_foreach(gs)
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
            coef = r / (norm + eps) if eps > 0 else _safe_ratio(r, norm, norm)
            torch._foreach_mul_(res, coef)
        else:
            torch._foreach_mul_(res, r)
        return _unwrap(res, single)

    # Reference loop: g~ = T g; e = T * coeff * num(g~).
    tg = [g if s is None else g * s for g, s in zip(gs, scales)]
    per = layerwise_weights is not None
    res = [t.clone() if o is None else o.copy_(t) for t, o in zip(tg, outs)]
    if not normalize:
        coeffs: list = list(rhos)
    elif q == 1.0:  # p = inf: e = rho sign(g~), no denominator
        for e in res:
            e.sign_()
        coeffs = list(rhos)
    elif q == 2.0:
        den = lp_norm(tg, 2.0, batch_dims, per_tensor=per, foreach=False)
        dens = den if per else [den] * n
        coeffs = [_safe_ratio(r, d + eps, d) for r, d in zip(rhos, dens)]
    else:
        coeffs = _general_q(tg, res, rhos, q, per, batch_dims, eps)
    if per:
        wn = lp_norm(list(layerwise_weights), 2.0, batch_dims, per_tensor=True)
        coeffs = [c * w for c, w in zip(coeffs, wn)]
    for e, c, s in zip(res, coeffs, scales):
        e.mul_(_bcast(_to(c, e), e, batch_dims))
        if s is not None:
            e.mul_(s)
    return _unwrap(res, single)


def _general_q(
    tg: list[Tensor],
    res: list[Tensor],
    rhos: list,
    q: float,
    per: bool,
    batch_dims: int,
    eps: float,
) -> list[Tensor]:
    """1 < p < inf, p != 2: writes sign(u)|u|^(q-1) into ``res`` (which holds g~) with
    u = g~ / m, m = max|g~| (per tensor with ``per``), and returns the coefficients
    rho / (||u||_q + eps/m)^(q-1) (equal to the module docstring's rule: both the numerator and
    the denominator scale by m^(q-1)). Zero gradients give zero coefficients."""
    n = len(tg)
    amax = [_tensor_amax(t, batch_dims) for t in tg]
    ms = amax if per else [_gather(amax).amax(0)] * n
    safe = [torch.where(m > 0, m, torch.ones((), dtype=m.dtype, device=m.device)) for m in ms]
    for e, m in zip(res, safe):
        e.div_(_bcast(_to(m, e), e, batch_dims))
    norms = lp_norm(res, q, batch_dims, per_tensor=per, foreach=False)
    norms = norms if per else [norms] * n
    coeffs = [
        _safe_ratio(r, (u + eps / m) ** (q - 1.0), mm) for r, u, m, mm in zip(rhos, norms, safe, ms)
    ]
    for e in res:
        e.copy_(e.sign() * e.abs().pow_(q - 1.0))
    return coeffs


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
            r = _bcast(_to(rho, e), e, batch_dims)
            if s is None and not isinstance(r, Tensor):
                res.append(e.clamp(-r, r))
                continue
            bound = (r if s is None else r * s).to(e.dtype)
            res.append(torch.maximum(torch.minimum(e, bound), -bound))
        return _unwrap(res, single)
    unscaled = [
        e if s is None else e / s.clamp_min(torch.finfo(e.dtype).tiny) for e, s in zip(es, scales)
    ]
    # ||e||_p as m ||e / m||_p with m = max|e|: no overflow of |e|^p for huge e (float32
    # squares overflow at 1e19, and an infinite norm would project e to 0).
    m = _gather([_tensor_amax(u, batch_dims) for u in unscaled]).amax(0)
    m = m.clamp_min(torch.finfo(m.dtype).tiny)
    shrunk = [u / _bcast(_to(m, u), u, batch_dims) for u in unscaled]
    norm = m * lp_norm(shrunk, p, batch_dims, foreach=False)
    factor = torch.clamp(rho / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)
    return _unwrap([e * _bcast(_to(factor, e), e, batch_dims) for e in es], single)


def multi_step_perturbation(
    grad_at: Callable[[Tensors], Tensors],
    grads: Tensors,
    rho: float | Tensor,
    iters: int = 1,
    step_size_mult: float = 1.0,
    p: float = 2.0,
    **kwargs,
) -> Tensors:
    """Projected ascent, the original ``--sam_iters`` / ``--sam_step_size_mult``
    (``weight_ascent_step`` of "Towards Understanding SAM"):

        e_0 = 0;  e_{k+1} = P_rho(e_k + ascent(g_k; rho * step_size_mult)),  k = 0 .. iters-1,

    with g_k = grad L(w + e_k): ``grad_at(e)`` returns grad L(w + e) and ``grads`` is g_0. Every
    step, the first included, ends with the projection P_rho onto the rho-ball (``project``), so
    ``iters=1, step_size_mult=2`` gives ||e|| = rho, and the unnormalized ascent
    (``normalize=False``: e = rho * mult * g) is clipped to the ball as in the original.
    ``kwargs`` go to ``perturbation`` (``layerwise_weights`` is not supported: its radii are
    per tensor, not one ball).
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"sam_iters must be an integer >= 1 (got {iters!r})")
    if not step_size_mult > 0 or math.isinf(step_size_mult):
        raise ValueError(f"step_size_mult must be a finite number > 0 (got {step_size_mult})")
    if kwargs.get("layerwise_weights") is not None:
        raise ValueError("multi-step projected ascent has one rho-ball; layerwise radii differ")
    step = rho * step_size_mult
    ball = dict(scale=kwargs.get("scale"), batch_dims=kwargs.get("batch_dims", 0))
    e = project(perturbation(grads, step, p, **kwargs), rho, p, **ball)
    for _ in range(iters - 1):
        es, single = _as_list(e)
        ds, _ = _as_list(perturbation(grad_at(e), step, p, **kwargs))
        e = project(_unwrap([a + b for a, b in zip(es, ds)], single), rho, p, **ball)
    return e


def _dot(a: list[Tensor], b: list[Tensor], batch_dims: int, per_tensor: bool):
    def one(x: Tensor, y: Tensor) -> Tensor:
        dims = tuple(range(batch_dims, x.dim()))
        return (x * y).sum(dim=dims) if dims else x * y

    parts = [one(x, y) for x, y in zip(a, b)]
    return parts if per_tensor else _gather(parts).sum(0)


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

        g_v = g_s - (<g, g_s> / (||g|| + eps)^2) g,

    with global inner products and norms (the paper's vector form) or per tensor; g = 0 gives
    g_v = g_s. ``out`` may alias ``grads`` (the optimizer keeps g in the buffer that then
    receives g_v).
    """
    gs, single = _as_list(grads)
    ss, _ = _as_list(sam_grads)
    _check_eps(eps)
    outs = _as_list(out)[0] if out is not None else [torch.empty_like(g) for g in gs]
    if foreach is None:
        foreach = _default_foreach(gs)
    if foreach and not per_tensor and batch_dims == 0:
        # Two dot products over the concatenated vectors instead of 2 x len(gs) small reductions.
        fg = torch.cat([g.reshape(-1) for g in gs])
        fs = torch.cat([s.reshape(-1) for s in ss])
        gn = torch.dot(fg, fg).sqrt()
        c = _safe_ratio(torch.dot(fg, fs), (gn + eps) ** 2, gn)
        del fg, fs
        if any(o is not g for o, g in zip(outs, gs)):
            torch._foreach_copy_(outs, gs)
        torch._foreach_mul_(outs, -c)
        torch._foreach_add_(outs, ss)
        return _unwrap(outs, single)
    dots = _dot(gs, ss, batch_dims, per_tensor)
    sq = _dot(gs, gs, batch_dims, per_tensor)
    if per_tensor:
        coeffs = [_safe_ratio(d, (s.sqrt() + eps) ** 2, s) for d, s in zip(dots, sq)]
    else:
        coeffs = [_safe_ratio(dots, (sq.sqrt() + eps) ** 2, sq)] * len(gs)
    res = []
    for g, s, o, c in zip(gs, ss, outs, coeffs):
        if o is not g:
            o.copy_(g)
        res.append(o.mul_(-_bcast(_to(c, o), o, batch_dims)).add_(s))
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
    """LookSAM's gradient on the steps between ascents: g + alpha ||g|| / (||g_v|| + eps) g_v
    (g_v = 0 adds nothing).

    ``out`` may alias ``grads`` (the optimizer rewrites p.grad in place).
    """
    gs, single = _as_list(grads)
    vs, _ = _as_list(orthogonal)
    _check_eps(eps)
    outs = _as_list(out)[0] if out is not None else [g.clone() for g in gs]
    if foreach is None:
        foreach = _default_foreach(gs)
    if foreach and not per_tensor and batch_dims == 0:
        vn = lp_norm(vs, 2.0, foreach=True)
        c = _safe_ratio(alpha * lp_norm(gs, 2.0, foreach=True), vn + eps, vn)
        if any(o is not g for o, g in zip(outs, gs)):
            torch._foreach_copy_(outs, gs)
        torch._foreach_add_(outs, torch._foreach_mul(vs, c))
        return _unwrap(outs, single)
    gn = lp_norm(gs, 2.0, batch_dims, per_tensor=per_tensor, foreach=False)
    vn = lp_norm(vs, 2.0, batch_dims, per_tensor=per_tensor, foreach=False)
    if per_tensor:
        coeffs = [_safe_ratio(alpha * a, b + eps, b) for a, b in zip(gn, vn)]
    else:
        coeffs = [_safe_ratio(alpha * gn, vn + eps, vn)] * len(gs)
    res = []
    for g, v, o, c in zip(gs, vs, outs, coeffs):
        if o is not g:
            o.copy_(g)
        res.append(o.add_(v * _bcast(_to(c, v), v, batch_dims)))
    return _unwrap(res, single)
