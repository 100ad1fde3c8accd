"""One-hidden-layer ReLU networks, batched over runs, with closed-form (per-chunk) gradients.

The network (bias on the hidden layer only, as in the reference notebook):

    f(x) = sum_j a_j relu(w_j . x + b_j),      W in R^{width x d}, b in R^width, a in R^width.

Parameters are a ``Params`` triple (W, b, a) whose tensors carry leading batch dimensions: shape
(*batch, width, d), (*batch, width), (*batch, width). ``batch`` is (runs,) for the training state
and (runs, chunks) for SAM-perturbed copies; inputs X of shape (*batch, n, d) broadcast against it.

Loss of a set of examples with weights omega_i (omega = 1 for a sum, 1/n for a mean):

    L(w) = sum_i omega_i * 0.5 * r_i^2,     r_i = f(x_i) - y_i,

with the closed-form gradient (h_ij = w_j . x_i + b_j, s_i = omega_i r_i, D_ij = 1[h_ij > 0]):

    dL/da_j = sum_i s_i relu(h_ij)
    dL/db_j = sum_i s_i a_j D_ij
    dL/dW_j = sum_i s_i a_j D_ij x_i

(the ReLU derivative at 0 is taken as 0, like autograd). Reducing over the example axis only
inside each chunk gives the per-chunk gradients that m-SAM needs in one batched call.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

INITS = ("reference", "standard")


class Params(NamedTuple):
    """(W, b, a) of shapes (*batch, width, d), (*batch, width), (*batch, width)."""

    W: Tensor
    b: Tensor
    a: Tensor


class Forward(NamedTuple):
    pre: Tensor  # h, (*batch, n, width)
    act: Tensor  # relu(h)
    out: Tensor  # f(x), (*batch, n)


def forward(params: Params, X: Tensor) -> Forward:
    """f(X) for X of shape (*batch, n, d); batch dims of X and params broadcast."""
    W, b, a = params
    pre = _xw(X, W) + b.unsqueeze(-2)
    act = torch.relu(pre)
    # Broadcast-and-sum instead of matmul: the shapes are tiny and batched float64 matmul is
    # orders of magnitude slower on CPU for them (measured: 15 ms vs 5 us for d = 1).
    out = (act * a.unsqueeze(-2)).sum(-1)
    return Forward(pre, act, out)


def _xw(X: Tensor, W: Tensor) -> Tensor:
    """(..., n, d) x (..., width, d) -> (..., n, width): x_i . w_j."""
    if X.shape[-1] == 1:
        return X * W.squeeze(-1).unsqueeze(-2)
    if X.shape[-2] * W.shape[-2] * X.shape[-1] > 2_000_000:  # large test sets: matmul
        return X @ W.transpose(-1, -2)
    return (X.unsqueeze(-2) * W.unsqueeze(-3)).sum(-1)


def grads_from_forward(params: Params, X: Tensor, fwd: Forward, s: Tensor) -> Params:
    """Gradient of sum_i s_i f(x_i) (with s_i = omega_i r_i: the loss gradient), summed over the
    example axis (the second-to-last of X) separately for every batch entry."""
    a = params.a
    g_a = (fwd.act * s.unsqueeze(-1)).sum(-2)
    delta = (fwd.pre > 0).to(s.dtype) * s.unsqueeze(-1) * a.unsqueeze(-2)  # (*batch, n, width)
    g_b = delta.sum(-2)
    if X.shape[-1] == 1:
        g_W = (delta * X).sum(-2).unsqueeze(-1)
    else:
        g_W = (delta.unsqueeze(-1) * X.unsqueeze(-2)).sum(-3)
    return Params(g_W, g_b, g_a)


def loss_and_grads(
    params: Params, X: Tensor, y: Tensor, weights: Tensor | float = 1.0
) -> tuple[Tensor, Params, Tensor]:
    """(L, dL/dparams, residuals) for L = sum_i weights_i 0.5 (f(x_i) - y_i)^2 over the example
    axis; L has the batch shape."""
    fwd = forward(params, X)
    r = fwd.out - y
    loss = (0.5 * weights * r * r).sum(-1)
    return loss, grads_from_forward(params, X, fwd, weights * r), r


def per_example_grads(params: Params, X: Tensor, y: Tensor) -> Params:
    """Gradients of l_i = 0.5 (f(x_i) - y_i)^2 for every example: shapes (*batch, n, *param).

    Computed by treating each example as its own chunk of one (a batch dim of size n)."""
    p1 = Params(*(t.unsqueeze(-3 if t is params.W else -2) for t in params))
    Xc, yc = X.unsqueeze(-2), y.unsqueeze(-1)  # (*batch, n, 1, d), (*batch, n, 1)
    _, g, _ = loss_and_grads(p1, Xc, yc)
    return g


def init_params(
    width: int,
    d: int,
    seed: int,
    init: str = "reference",
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> Params:
    """Initial (W, b, a) of one run (no batch dim), a deterministic function of ``seed``.

    reference: the original notebook's draws, bit for bit: after seeding a generator with
        ``seed`` it consumed (in float32) the nn.Linear(d, width) default init of weight and bias,
        then W = 2.5 (2 round(U[0,1)) - 1) (random signs), b = 2.5 N(0, 1), then the default init
        of nn.Linear(width, 1, bias=False), then a = 4 N(0, 1); every tensor times ``scale``.
        We draw the discarded tensors too so that the kept ones equal the original's.
    standard: PyTorch's nn.Linear default, W, b ~ U(-1/sqrt(d), 1/sqrt(d)),
        a ~ U(-1/sqrt(width), 1/sqrt(width)), times ``scale``.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS} (got {init!r})")
    if width < 1 or d < 1:
        raise ValueError(f"width and d must be >= 1 (got width={width}, d={d})")
    g = torch.Generator().manual_seed(int(seed))
    f32 = torch.float32
    if init == "reference":
        torch.empty(width, d, dtype=f32).uniform_(generator=g)  # nn.Linear weight (discarded)
        torch.empty(width, dtype=f32).uniform_(generator=g)  # nn.Linear bias (discarded)
        W = 2.5 * (-1 + 2 * torch.round(torch.rand(width, d, dtype=f32, generator=g)))
        b = 2.5 * torch.randn(width, dtype=f32, generator=g)
        torch.empty(1, width, dtype=f32).uniform_(generator=g)  # output nn.Linear (discarded)
        a = 4.0 * torch.randn(1, width, dtype=f32, generator=g)[0]
        # The original multiplies in float32 (2.5 * W * init_scale): keep that rounding.
        W, b, a = (t * scale if scale != 1.0 else t for t in (W, b, a))
    else:
        bw, ba = 1.0 / math.sqrt(d), 1.0 / math.sqrt(width)
        W = torch.empty(width, d, dtype=f32).uniform_(-bw, bw, generator=g) * scale
        b = torch.empty(width, dtype=f32).uniform_(-bw, bw, generator=g) * scale
        a = torch.empty(width, dtype=f32).uniform_(-ba, ba, generator=g) * scale
    return Params(W.to(dtype), b.to(dtype), a.to(dtype))


def stack_params(ps: list[Params]) -> Params:
    """Stack single-run params along a new leading runs axis."""
    return Params(*(torch.stack(ts) for ts in zip(*ps, strict=True)))


def loss_hessian(params: Params, X: Tensor, y: Tensor, weights: Tensor | float = 1.0) -> Tensor:
    """The exact Hessian of L = sum_i weights_i 0.5 r_i^2 over the flattened (W, b, a) (W row by
    row), shape (*batch, P, P) with P = width (d + 2), wherever no pre-activation is exactly 0:

        H = sum_i omega_i (J_i J_i^T + r_i grad^2 f(x_i)),
        J_i = (a_j D_ij x_i | a_j D_ij | relu(h_ij))_j,
        grad^2 f(x_i): only d^2 f / da_j dw_j = D_ij x_i and d^2 f / da_j db_j = D_ij are non-zero
        (relu'' = 0 almost everywhere).

    Closed form because autograd's Hessian of ~300 parameters costs ~0.3 s per network (checked
    against torch.autograd.functional.hessian in tests/test_one_layer_model.py)."""
    fwd = forward(params, X)
    r = fwd.out - y
    D = (fwd.pre > 0).to(X.dtype)  # (*batch, n, width)
    aD = D * params.a.unsqueeze(-2)
    width, d = params.W.shape[-2], params.W.shape[-1]
    JW = (aD.unsqueeze(-1) * X.unsqueeze(-2)).flatten(-2)  # (*batch, n, width * d)
    J = torch.cat([JW, aD, fwd.act], -1)  # (*batch, n, P)
    w = torch.as_tensor(weights, dtype=X.dtype, device=X.device)
    w = w.expand(r.shape) if w.dim() else w * torch.ones_like(r)
    H = (J * w.unsqueeze(-1)).transpose(-1, -2) @ J
    s = (w * r).unsqueeze(-1) * D  # (*batch, n, width): omega_i r_i D_ij
    cW = (s.unsqueeze(-1) * X.unsqueeze(-2)).sum(-3)  # (*batch, width, d)
    cb = s.sum(-2)  # (*batch, width)
    ia = width * (d + 1) + torch.arange(width, device=X.device)  # index of a_j
    iW = (torch.arange(width, device=X.device) * d).unsqueeze(-1) + torch.arange(d)  # of W_jk
    ib = width * d + torch.arange(width, device=X.device)  # of b_j
    C = torch.zeros_like(H)
    C[..., iW.reshape(-1), ia.repeat_interleave(d)] = cW.reshape(*cW.shape[:-2], -1)
    C[..., ib, ia] = cb
    return H + C + C.transpose(-1, -2)
