"""m-sharpness of a model on data: worst-case and average-case, plain or adaptive.

For chunks c of m consecutive examples (the last incomplete chunk is dropped), with L_c the mean
loss over chunk c and w the weights (Foret et al. 2021; Andriushchenko et al. 2023, "A modern look
at the relationship between sharpness and generalization"):

    worst-case    S_c = max_{||T^-1 delta||_p <= rho} L_c(w + delta) - L_c(w)
    average-case  S_c = E_{z ~ N(0, I)} L_c(w + rho T z) - L_c(w)

and the m-sharpness is the mean of S_c over chunks. T = identity (plain) or T = diag(|w| + eta)
(adaptive; with eta = 0 on every tensor the measure is invariant to the rescalings that leave a
ReLU network's function unchanged). The worst case is estimated from below by projected ascent,
the one definition of the SAM ascent in ``sharpness.functional``:

    delta_{s+1} = P_rho(delta_s + e(grad L_c(w + delta_s); rho * step_size_mult)),

from delta_0 = 0 and from ``restarts`` extra random points of the ball, taking the largest
L_c(w + delta_s), s >= 1, over all iterates. With steps = 1 and no restarts this is the one-step
estimate L_c(w + rho g / ||g||) - L_c(w) that trainers log. The perturbation that maximizes the
loss also gives the error sharpness E_c(w + delta) - E_c(w). Batch norm runs in eval mode (running
statistics) and the weights are never modified (``torch.func.functional_call``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sharpness import functional as SF
from sharpness.measures._common import (
    ErrorFn,
    LossFn,
    call_at,
    classification_error,
    eval_mode,
    trainable,
)

__all__ = ["m_sharpness", "random_ball_point"]

KINDS = ("worst", "average")


def random_ball_point(
    shapes: list[torch.Size],
    rho: float,
    p: float,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """A random point of {||u||_p <= rho} (CPU tensors): for p = inf uniform in the cube; else a
    Gaussian direction scaled to norm rho * U^(1/n) (uniform in the ball for p = 2)."""
    n = sum(math.prod(s) for s in shapes)
    if math.isinf(p):
        return [(torch.rand(s, generator=generator, dtype=dtype) * 2 - 1) * rho for s in shapes]
    z = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    norm = SF.lp_norm(z, p)
    r = rho * float(torch.rand((), generator=generator, dtype=torch.float64)) ** (1.0 / n)
    return [t * (r / norm) for t in z]


def m_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    m: int,
    rho: float,
    kind: str = "worst",
    p: float = 2.0,
    adaptive: bool = False,
    eta: float = 0.0,
    adaptive_weights_only: bool = False,
    steps: int = 20,
    step_size_mult: float = 1.0,
    restarts: int = 0,
    n_directions: int = 10,
    error_fn: ErrorFn | None = classification_error,
    seed: int = 0,
    eval_mode_: bool = True,
    vectorize: bool = False,
    max_batched_params: int = 2**24,
) -> dict:
    """m-sharpness of ``model`` on the examples ``(x, y)`` (module docstring for the math).

    Args:
        m: examples per perturbation (chunk size); ``len(x) // m`` chunks are used.
        rho: radius of the ball (worst) or standard deviation scale (average).
        kind: "worst" (projected ascent) or "average" (random Gaussian directions).
        p: the ball's norm for "worst", in (1, inf] (2 or inf in practice).
        adaptive: T = |w| + eta instead of the identity; ``adaptive_weights_only`` leaves
            biases and normalization parameters unscaled (the ASAM optimizer's convention).
        steps, step_size_mult, restarts: ascent iterations, step rho * step_size_mult, and the
            number of extra random starting points (worst case).
        n_directions: random directions per chunk (average case).
        error_fn: per-batch mean error of (output, target), or None to skip error sharpness.
        seed: seeds every random draw (CPU generator, so results do not depend on the device).
        eval_mode_: batch norm with running statistics, no dropout (the default).
        vectorize: evaluate many chunks at once (``torch.func.vmap`` over per-chunk weight
            copies, at most ``max_batched_params`` parameter values in one group): the same
            numbers as the loop (the same random draws, in the same order; float rounding
            apart), one batched forward/backward per ascent step instead of one per chunk.
            Needs a model that ``vmap`` can batch (no in-place parameter changes in forward).

    Returns a dict: ``sharpness`` (loss) and ``sharpness_error``, the clean and perturbed mean
    ``loss``/``error``, ``per_chunk`` sharpness values, ``n_chunks`` and the settings.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    n = x.shape[0]
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"m must be an integer in [1, {n}] (the number of examples), got {m}")
    if y.shape[0] != n:
        raise ValueError(f"x ({n}) and y ({y.shape[0]}) differ in the number of examples")
    if not (rho >= 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a finite number >= 0, got {rho}")
    if steps < 1 or restarts < 0 or n_directions < 1:
        raise ValueError(
            f"need steps >= 1, restarts >= 0, n_directions >= 1 (got {steps}, {restarts}, "
            f"{n_directions})"
        )
    SF.dual_exponent(p)  # validates p
    names, params = trainable(model)
    base = [q.detach() for q in params]
    device, dtype = base[0].device, base[0].dtype
    x, y = x.to(device), y.to(device)
    scale = SF.asam_scale(base, eta, adaptive_weights_only) if adaptive else None
    gen = torch.Generator().manual_seed(int(seed))
    step = rho * step_size_mult

    def at(delta: list[Tensor] | None, xc: Tensor, yc: Tensor, grad: bool):
        """(loss, error, grads) at w + delta."""
        qs = base if delta is None else [b + d for b, d in zip(base, delta)]
        if grad:
            qs = [q.clone().requires_grad_(True) for q in qs]
        with torch.set_grad_enabled(grad):
            out = call_at(model, dict(zip(names, qs)), xc)
            loss = loss_fn(out, yc)
            err = float(error_fn(out.detach(), yc)) if error_fn is not None else math.nan
            gs = None
            if grad:
                gs = torch.autograd.grad(loss, qs, allow_unused=True)
                gs = [torch.zeros_like(q) if g is None else g for q, g in zip(qs, gs)]
        return float(loss.detach()), err, gs

    def scaled(u: list[Tensor]) -> list[Tensor]:
        u = [t.to(device=device, dtype=dtype) for t in u]
        return u if scale is None else [t if s is None else t * s for t, s in zip(u, scale)]

    chunks = n // m
    if vectorize:
        with eval_mode(model, eval_mode_):
            clean_l, clean_e, pert_l, pert_e = _vectorized(
                model,
                loss_fn,
                error_fn,
                names,
                base,
                scale,
                x[: chunks * m],
                y[: chunks * m],
                chunks,
                kind=kind,
                rho=rho,
                p=p,
                steps=steps,
                step=step,
                restarts=restarts,
                n_directions=n_directions,
                gen=gen,
                max_params=max_batched_params,
            )
        per_chunk = [b - a for a, b in zip(clean_l, pert_l)]
        per_chunk_err = [b - a for a, b in zip(clean_e, pert_e)]
    else:
        per_chunk, per_chunk_err = [], []
        clean_l, clean_e, pert_l, pert_e = [], [], [], []
        with eval_mode(model, eval_mode_):
            for c in range(chunks):
                xc, yc = x[c * m : (c + 1) * m], y[c * m : (c + 1) * m]
                l0, e0, _ = at(None, xc, yc, grad=False)
                best_l, best_e = -math.inf, math.nan
                if kind == "average":
                    ls, es = [], []
                    for _ in range(n_directions):
                        z = [torch.randn(b.shape, generator=gen, dtype=dtype) * rho for b in base]
                        lo, er, _ = at(scaled(z), xc, yc, grad=False)
                        ls.append(lo)
                        es.append(er)
                    best_l, best_e = sum(ls) / len(ls), sum(es) / len(es)
                else:
                    for r in range(restarts + 1):
                        if r == 0:
                            delta = [torch.zeros_like(b) for b in base]
                        else:
                            u = random_ball_point([b.shape for b in base], rho, p, gen, dtype)
                            delta = scaled(u)
                        _, _, g = at(delta, xc, yc, grad=True)
                        for s in range(steps):
                            e = SF.perturbation(g, step, p, scale=scale)
                            delta = SF.project(
                                [d + a for d, a in zip(delta, e)], rho, p, scale=scale
                            )
                            lo, er, g = at(delta, xc, yc, grad=s < steps - 1)
                            if lo > best_l:
                                best_l, best_e = lo, er
                per_chunk.append(best_l - l0)
                per_chunk_err.append(best_e - e0)
                clean_l.append(l0)
                clean_e.append(e0)
                pert_l.append(best_l)
                pert_e.append(best_e)

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    has_err = error_fn is not None
    return {
        "sharpness": mean(per_chunk),
        "sharpness_error": mean(per_chunk_err) if has_err else None,
        "loss": mean(clean_l),
        "perturbed_loss": mean(pert_l),
        "error": mean(clean_e) if has_err else None,
        "perturbed_error": mean(pert_e) if has_err else None,
        "per_chunk": per_chunk,
        "n_chunks": len(per_chunk),
        "m": m,
        "rho": rho,
        "kind": kind,
        "p": p,
        "adaptive": adaptive,
        "eta": eta,
        "steps": steps if kind == "worst" else 0,
        "restarts": restarts if kind == "worst" else 0,
        "n_directions": n_directions if kind == "average" else 0,
        "seed": seed,
    }


def _vectorized(
    model: nn.Module,
    loss_fn: LossFn,
    error_fn: ErrorFn | None,
    names: list[str],
    base: list[Tensor],
    scale: list[Tensor | None] | None,
    x: Tensor,
    y: Tensor,
    chunks: int,
    *,
    kind: str,
    rho: float,
    p: float,
    steps: int,
    step: float,
    restarts: int,
    n_directions: int,
    gen: torch.Generator,
    max_params: int,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """``m_sharpness``'s loop over chunks with groups of chunks batched by ``torch.func.vmap``:
    each chunk c of a group has its own weights w + delta_c (a leading group dimension on every
    tensor), the ascent runs on all of them at once (``batch_dims=1``). The random draws are
    taken chunk by chunk in the loop's order from the same generator, so both paths measure the
    same thing. Returns per-chunk (clean loss, clean error, perturbed loss, perturbed error)."""
    device, dtype = base[0].device, base[0].dtype
    m = x.shape[0] // chunks
    xs, ys = x.reshape(chunks, m, *x.shape[1:]), y.reshape(chunks, m, *y.shape[1:])
    nan = torch.full((), math.nan, dtype=dtype, device=device)

    def f(params: dict, xc: Tensor, yc: Tensor) -> tuple[Tensor, Tensor]:
        out = call_at(model, params, xc)
        err = error_fn(out.detach(), yc).to(dtype) if error_fn is not None else nan
        return loss_fn(out, yc), err

    def f_aux(params: dict, xc: Tensor, yc: Tensor):
        loss, err = f(params, xc, yc)
        return loss, (loss.detach(), err)

    clean = torch.func.vmap(f, in_dims=(None, 0, 0))
    value = torch.func.vmap(f)
    grad_value = torch.func.vmap(torch.func.grad(f_aux, has_aux=True))

    def scaled(u: list[Tensor]) -> list[Tensor]:
        u = [t.to(device=device, dtype=dtype) for t in u]
        return u if scale is None else [t if s is None else t * s for t, s in zip(u, scale)]

    def stacked(per_chunk: list[list[Tensor]]) -> list[Tensor]:
        return [torch.stack([d[k] for d in per_chunk]) for k in range(len(base))]

    group = max(1, max_params // sum(b.numel() for b in base))
    out: tuple[list[float], ...] = ([], [], [], [])
    for c0 in range(0, chunks, group):
        xg, yg = xs[c0 : c0 + group], ys[c0 : c0 + group]
        G = xg.shape[0]

        def at(delta: list[Tensor]) -> dict:
            return {nm: b + d for nm, b, d in zip(names, base, delta)}

        with torch.no_grad():
            l0, e0 = clean(dict(zip(names, base)), xg, yg)
        # the loop's draws for these chunks, chunk by chunk: (chunk, draw) -> tensors
        draws = [
            [
                scaled([torch.randn(b.shape, generator=gen, dtype=dtype) * rho for b in base])
                if kind == "average"
                else scaled(random_ball_point([b.shape for b in base], rho, p, gen, dtype))
                for _ in range(n_directions if kind == "average" else restarts)
            ]
            for _ in range(G)
        ]
        if kind == "average":
            tot_l = torch.zeros(G, dtype=torch.float64, device=device)
            tot_e = torch.zeros(G, dtype=torch.float64, device=device)
            with torch.no_grad():
                for j in range(n_directions):
                    lo, er = value(at(stacked([d[j] for d in draws])), xg, yg)
                    tot_l += lo.double()
                    tot_e += er.double()
            best_l, best_e = tot_l / n_directions, tot_e / n_directions
        else:
            best_l = torch.full((G,), -math.inf, dtype=dtype, device=device)
            best_e = torch.full((G,), math.nan, dtype=dtype, device=device)
            for r in range(restarts + 1):
                if r == 0:
                    delta = [torch.zeros(G, *b.shape, dtype=dtype, device=device) for b in base]
                else:
                    delta = stacked([d[r - 1] for d in draws])
                gd = grad_value(at(delta), xg, yg)[0]
                g = [gd[nm] for nm in names]
                for s in range(steps):
                    e = SF.perturbation(g, step, p, scale=scale, batch_dims=1)
                    delta = SF.project(
                        [d + a for d, a in zip(delta, e)], rho, p, scale=scale, batch_dims=1
                    )
                    if s < steps - 1:
                        gd, (lo, er) = grad_value(at(delta), xg, yg)
                        g = [gd[nm] for nm in names]
                    else:
                        with torch.no_grad():
                            lo, er = value(at(delta), xg, yg)
                    better = lo > best_l
                    best_l = torch.where(better, lo, best_l)
                    best_e = torch.where(better, er, best_e)
        for acc, t in zip(out, (l0, e0, best_l, best_e)):
            acc.extend(float(v) for v in t.detach().double().cpu())
    return out
