"""Shared plumbing of the measures: data as batches, flat vectors, evaluation at moved weights.

``data`` everywhere is either one batch ``(x, y)`` (two tensors) or an iterable of such batches
(a ``DataLoader``, a list). Losses over several batches are example-weighted means,
L = sum_b n_b L_b / sum_b n_b, where ``loss_fn(model(x_b), y_b)`` returns the *mean* loss L_b of
batch b; the Hessian, gradients and errors are weighted the same way, so the result does not
depend on how the examples are cut into batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
Data = Batch | Iterable[Batch]
LossFn = Callable[[Tensor, Tensor], Tensor]
ErrorFn = Callable[[Tensor, Tensor], Tensor]


def is_single_batch(data: Data) -> bool:
    """True when ``data`` is one ``(x, y)`` pair rather than an iterable of pairs."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], Tensor)
        and isinstance(data[1], Tensor)
    )


def iter_batches(
    data: Data, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Iterator[Batch]:
    """Yield ``(x, y)`` batches moved to ``device``; floating inputs cast to ``dtype`` if given
    (integer class labels are never cast)."""
    batches = [data] if is_single_batch(data) else data
    n = 0
    for b in batches:
        if not (isinstance(b, (tuple, list)) and len(b) >= 2):
            raise ValueError("data must be an (x, y) pair or an iterable of (x, y) batches")
        x, y = b[0], b[1]
        if device is not None:
            x, y = x.to(device), y.to(device)
        if dtype is not None:
            if x.is_floating_point():
                x = x.to(dtype)
            if y.is_floating_point():
                y = y.to(dtype)
        n += 1
        yield x, y
    if n == 0:
        raise ValueError("data holds no batches")


def classification_error(output: Tensor, target: Tensor) -> Tensor:
    """Mean 0-1 error of logits ``output`` (N, K) against class indices ``target`` (N,)."""
    return (output.argmax(dim=1) != target).to(output.dtype).mean()


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Batch norm with running statistics and no dropout inside; the previous mode after."""
    was = model.training
    if enabled:
        model.eval()
    try:
        yield
    finally:
        model.train(was)


def trainable(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    """Names and tensors of the parameters that require gradients (the measured ones)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameters that require gradients")
    return [n for n, _ in named], [p for _, p in named]


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def call_at(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``model(x)`` with the named parameters replaced by ``params`` (the module is untouched)."""
    return torch.func.functional_call(model, dict(params), (x,), strict=False)


def moved(names: Sequence[str], params: Sequence[Tensor], delta: Sequence[Tensor]) -> dict:
    return {n: p + d for n, p, d in zip(names, params, delta)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    params: Mapping[str, Tensor] | None = None,
    error_fn: ErrorFn | None = classification_error,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Example-weighted mean ``loss`` (and ``error`` when ``error_fn``) over ``data``, at the
    model's own weights or at ``params`` (names as in ``named_parameters``). The model's mode is
    left to the caller (use ``eval_mode``)."""
    device = next(model.parameters()).device
    tot_loss, tot_err, n = 0.0, 0.0, 0
    for x, y in iter_batches(data, device, dtype):
        out = model(x) if params is None else call_at(model, params, x)
        b = x.shape[0]
        tot_loss += float(loss_fn(out, y)) * b
        if error_fn is not None:
            tot_err += float(error_fn(out, y)) * b
        n += b
    res = {"loss": tot_loss / n}
    if error_fn is not None:
        res["error"] = tot_err / n
    return res
