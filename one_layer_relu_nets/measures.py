"""Simplicity of a fitted 1-D network f(x) = sum_j a_j relu(w_j x + b_j).

f is piecewise linear. Neuron j (w_j != 0) switches at its breakpoint t_j = -b_j / w_j, where the
slope f' jumps by a_j |w_j| (for w_j > 0 the slope goes from 0 to a_j w_j when x crosses t_j from
the left; for w_j < 0 from a_j w_j to 0: the same jump a_j |w_j|). Neurons whose breakpoints lie
within ``merge_tol`` of each other act as one kink: their jumps are summed (they may cancel).

Measured on the data range [min x_i, max x_i]:
- kinks: the number of (merged) breakpoints whose total slope jump exceeds ``threshold`` in
  absolute value;
- slope_tv: the total variation of f' on the range, sum over merged breakpoints of |jump|;
- active_neurons: neurons with relu(w_j x_i + b_j) > 0 for at least one training input;
- path_norm: sum_j |a_j| ||w_j||_2 (any input dimension).
"""

from __future__ import annotations

import torch
from torch import Tensor

from one_layer_relu_nets.model import Params

KINK_THRESHOLD = 1.0  # slope units (y per x); the data's slopes between points are O(1-10)
MERGE_TOL = 1e-2  # x units; the data points are 0.25 apart


def path_norm(params: Params) -> Tensor:
    """sum_j |a_j| ||w_j||_2, one value per batch entry."""
    return (params.a.abs() * torch.linalg.vector_norm(params.W, dim=-1)).sum(-1)


def active_neurons(params: Params, X: Tensor) -> Tensor:
    """Number of neurons that fire on at least one row of X (X: (n, d)), per batch entry."""
    pre = X @ params.W.transpose(-1, -2) + params.b.unsqueeze(-2)
    return (pre > 0).any(-2).sum(-1)


def merged_breakpoints(
    w: Tensor, b: Tensor, a: Tensor, lo: float, hi: float, merge_tol: float = MERGE_TOL
) -> list[tuple[float, float]]:
    """[(location, total slope jump)] of one 1-D network's breakpoints inside [lo, hi], sorted,
    with breakpoints closer than ``merge_tol`` to the previous one merged (jumps summed)."""
    w, b, a = (t.detach().double().reshape(-1).cpu() for t in (w, b, a))
    nz = w != 0
    t = -b[nz] / w[nz]
    jump = a[nz] * w[nz].abs()
    keep = (t >= lo) & (t <= hi)
    t, jump = t[keep], jump[keep]
    order = torch.argsort(t)
    out: list[tuple[float, float]] = []
    prev = None
    for tj, jj in zip(t[order].tolist(), jump[order].tolist(), strict=True):
        if prev is not None and tj - prev <= merge_tol:
            loc, tot = out[-1]
            out[-1] = (loc, tot + jj)
        else:
            out.append((tj, jj))
        prev = tj
    return out


def simplicity_1d(
    params: Params,
    x: Tensor,
    threshold: float = KINK_THRESHOLD,
    merge_tol: float = MERGE_TOL,
) -> dict:
    """kinks, slope_tv, active_neurons, path_norm of one run's 1-D network (module docstring);
    ``x`` holds the training inputs (n,) or (n, 1), which set the data range."""
    if params.W.dim() != 2 or params.W.shape[-1] != 1:
        raise ValueError(
            f"simplicity_1d needs one run of a 1-D network, got W {tuple(params.W.shape)}"
        )
    x = x.reshape(-1)
    lo, hi = float(x.min()), float(x.max())
    bps = merged_breakpoints(params.W[:, 0], params.b, params.a, lo, hi, merge_tol)
    return {
        "kinks": int(sum(abs(j) > threshold for _, j in bps)),
        "slope_tv": float(sum(abs(j) for _, j in bps)),
        "active_neurons": int(active_neurons(params, x.reshape(-1, 1).to(params.W.dtype))),
        "path_norm": float(path_norm(params)),
    }
