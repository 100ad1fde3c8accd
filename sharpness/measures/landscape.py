"""Loss-landscape slices (Li et al. 2018, "Visualizing the loss landscape of neural nets").

- ``filter_normalized_direction``: d ~ N(0, I) per parameter tensor, then every filter d_i (a
  slice along the first dimension: a conv output channel, a linear layer's row) is rescaled to
  the norm of the matching weight filter, d_i <- d_i ||w_i|| / ||d_i||. Tensors of dimension
  <= 1 (biases, normalization parameters) get d = 0 (Li et al.'s ``ignore='biasbn'``), and
  buffers (batch-norm statistics) are not moved.
- ``slice_1d`` / ``slice_2d``: L(w + a d1) and L(w + a d1 + b d2) on a grid.
- ``interpolate``: L((1 - t) w_a + t w_b) between two weight vectors (t from -0.5 to 1.5 in the
  usual plot); floating buffers (batch-norm running statistics) are interpolated the same way,
  integer ones (``num_batches_tracked``) taken from w_a.
- ``bn_data``: at every point, batch-norm running statistics are recomputed on these batches
  (cumulative averages in train mode) before evaluating, instead of moved or interpolated ones.

Every point is evaluated in eval mode; the model passed in is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sharpness.measures._common import (
    Data,
    ErrorFn,
    LossFn,
    classification_error,
    eval_mode,
    evaluate,
    iter_batches,
)

__all__ = [
    "filter_normalized_direction",
    "recompute_bn_stats",
    "slice_1d",
    "slice_2d",
    "interpolate",
]


def filter_normalized_direction(
    model: nn.Module, seed: int | torch.Generator = 0, *, eps: float = 1e-10
) -> dict[str, Tensor]:
    """A random filter-normalized direction {name: tensor} over the trainable parameters (module
    docstring). Drawn on the CPU from ``seed`` (device-independent), returned on the weights'
    device and dtype."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    out = {}
    for name, w in model.named_parameters():
        if not w.requires_grad:
            continue
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device)
        wn = w.detach().flatten(1).norm(dim=1)
        dn = d.flatten(1).norm(dim=1)
        out[name] = d * (wn / (dn + eps)).reshape(-1, *([1] * (w.dim() - 1)))
    return out


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, bn_data: Data) -> None:
    """Replace every batch-norm layer's running mean/var by the exact average of the batch
    statistics over ``bn_data`` (momentum None = cumulative average), in place; the model ends in
    its previous train/eval mode."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was = model.training
    p = next(model.parameters())
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for x, _ in iter_batches(bn_data, p.device, p.dtype):
            model(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was)


class _Evaluator:
    """Evaluates the loss at a full state {name: tensor} (parameters and buffers)."""

    def __init__(self, model, loss_fn, data, error_fn, bn_data) -> None:
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.error_fn, self.bn_data = error_fn, bn_data
        self.work = copy.deepcopy(model) if bn_data is not None else None

    def __call__(self, state: Mapping[str, Tensor]) -> dict[str, float]:
        if self.work is None:
            with eval_mode(self.model):
                return evaluate(
                    self.model, self.loss_fn, self.data, params=state, error_fn=self.error_fn
                )
        self.work.load_state_dict(state, strict=False)
        recompute_bn_stats(self.work, self.bn_data)
        with eval_mode(self.work):
            return evaluate(self.work, self.loss_fn, self.data, error_fn=self.error_fn)


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _check_direction(model: nn.Module, d: Mapping[str, Tensor], name: str) -> None:
    ps = dict(model.named_parameters())
    for k, v in d.items():
        if k not in ps or ps[k].shape != v.shape:
            raise ValueError(f"{name}: entry {k!r} does not match a parameter of the model")


def slice_1d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    direction: Mapping[str, Tensor],
    alphas: Sequence[float],
    *,
    error_fn: ErrorFn | None = classification_error,
    bn_data: Data | None = None,
) -> list[dict[str, float]]:
    """[{alpha, loss, error}] at w + alpha d for every alpha (``bn_data``: module docstring)."""
    _check_direction(model, direction, "direction")
    ev = _Evaluator(model, loss_fn, data, error_fn, bn_data)
    w = _params(model)
    rows = []
    for a in alphas:
        pt = {k: v + a * direction[k] if k in direction else v for k, v in w.items()}
        rows.append({"alpha": float(a), **ev(pt)})
    return rows


def slice_2d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    d1: Mapping[str, Tensor],
    d2: Mapping[str, Tensor],
    alphas: Sequence[float],
    betas: Sequence[float],
    *,
    error_fn: ErrorFn | None = classification_error,
    bn_data: Data | None = None,
    progress: Iterable | None = None,
) -> list[dict[str, float]]:
    """[{alpha, beta, loss, error}] at w + alpha d1 + beta d2 on the grid alphas x betas."""
    _check_direction(model, d1, "d1")
    _check_direction(model, d2, "d2")
    ev = _Evaluator(model, loss_fn, data, error_fn, bn_data)
    w = _params(model)
    rows = []
    for a in alphas:
        for b in betas:
            pt = {
                k: v + a * d1.get(k, torch.zeros_like(v)) + b * d2.get(k, torch.zeros_like(v))
                for k, v in w.items()
            }
            rows.append({"alpha": float(a), "beta": float(b), **ev(pt)})
    return rows


def interpolate(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    ts: Sequence[float],
    loss_fn: LossFn,
    data: Data,
    *,
    error_fn: ErrorFn | None = classification_error,
    bn_data: Data | None = None,
) -> list[dict[str, float]]:
    """[{t, loss, error}] at (1 - t) w_a + t w_b for every t, ``model`` giving the architecture
    (its own weights are not used). ``state_a`` / ``state_b`` are state dicts of ``model``."""
    ref = model.state_dict()
    for nm, st in (("state_a", state_a), ("state_b", state_b)):
        missing = set(ref) - set(st)
        if missing or any(st[k].shape != ref[k].shape for k in ref):
            raise ValueError(f"{nm} is not a state dict of this model (missing {sorted(missing)})")
    dev = next(model.parameters()).device
    a = {k: state_a[k].to(dev) for k in ref}
    b = {k: state_b[k].to(dev) for k in ref}
    ev = _Evaluator(model, loss_fn, data, error_fn, bn_data)
    rows = []
    for t in ts:
        pt = {k: (1 - t) * a[k] + t * b[k] if a[k].is_floating_point() else a[k] for k in ref}
        rows.append({"t": float(t), **ev(pt)})
    return rows
