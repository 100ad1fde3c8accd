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

    per_chunk, per_chunk_err = [], []
    clean_l, clean_e, pert_l, pert_e = [], [], [], []
    with eval_mode(model, eval_mode_):
        for c in range(n // m):
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
                        delta = SF.project([d + a for d, a in zip(delta, e)], rho, p, scale=scale)
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
