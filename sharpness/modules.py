"""Helpers for nn.Modules: batch-norm statistics, DDP per-worker gradients, and m-SAM.

m-sharpness (SAM paper; "Towards Understanding SAM" §4.1): the max is taken independently over
disjoint chunks of m examples and the SAM gradients are averaged,

    grad = (1/C) sum_c grad L_c(w + e_c),   e_c = e(grad L_c(w)),   C = batch / m,

where L_c is the mean loss over chunk c. m = batch is SAM; small m generalizes better.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sharpness.optim import SAM, LookSAM

__all__ = [
    "MSAM_MAX_BATCHED_PARAMS",
    "batched_grad",
    "frozen_bn_stats",
    "local_grads",
    "msam_backward",
    "msam_vectorize_reason",
]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Inside, batch norm layers in training mode normalize with the batch statistics as usual
    but do not update their running statistics (nor ``num_batches_tracked``).

    SAM's second forward pass runs at the perturbed weights w + e; its statistics would bias the
    running estimates used at test time, so only the first pass (at w) should update them.
    (The popular wrapper sets momentum to 0 instead, which still counts the batch.)
    """
    mods = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in mods:
        # With track_running_stats False in training mode, BN passes no running buffers to
        # F.batch_norm: batch statistics are used and nothing is updated.
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in mods:
            m.track_running_stats = True


def _unwrap_compiled(model: Any) -> Any:
    """The module under ``torch.compile`` wrappers (OptimizedModule keeps it in ``_orig_mod``)."""
    # A compiled module exists only if dynamo was imported: no import of it here (it is slow).
    compiled = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", ())
    while isinstance(model, compiled):
        model = model._orig_mod
    return model


def _has_no_sync(m: nn.Module) -> bool:
    return isinstance(m, nn.parallel.DistributedDataParallel) or callable(
        getattr(m, "no_sync", None)
    )


def local_grads(model: nn.Module) -> contextlib.AbstractContextManager:
    """``model.no_sync()`` for DistributedDataParallel (and any wrapper with the same
    ``no_sync()``, e.g. FSDP), a null context for a model that is not distributed.

    The paper's per-accelerator SAM: each worker's first backward (the ascent gradient) stays
    local, so each worker perturbs with its own batch shard; the second backward, outside this
    context, is all-reduced as usual, averaging the per-worker SAM gradients.

    ``torch.compile`` wrappers are looked through (``torch.compile(ddp_model)``). A model this
    function cannot make local raises instead of silently giving global SAM: ``DataParallel``
    (one process sums the replicas' gradients in backward), and a module that holds a
    DistributedDataParallel somewhere inside (pass the DDP module itself).
    """
    m = _unwrap_compiled(model)
    if not isinstance(m, nn.Module):
        raise TypeError(f"local_grads needs an nn.Module, got {type(model).__name__}")
    if isinstance(m, nn.DataParallel):
        raise ValueError(
            "local_grads: DataParallel sums the replicas' gradients inside backward, so the "
            "per-worker ascent is impossible; use DistributedDataParallel (one process per "
            "device), or call the two passes without local_grads for global SAM"
        )
    if _has_no_sync(m):
        return m.no_sync()
    inner = [type(s).__name__ for s in m.modules() if s is not m and _has_no_sync(s)]
    if inner:
        raise ValueError(
            f"local_grads({type(model).__name__}): the model wraps a {inner[0]} inside; its "
            "gradient all-reduce can only be switched off on that module: pass the "
            "DistributedDataParallel module itself"
        )
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------- m-SAM
# At most this many parameter values per stack of per-chunk tensors in the vectorized m-SAM path
# (2^27 = 512 MiB in float32); a batch needing more is processed in groups of chunks.
MSAM_MAX_BATCHED_PARAMS = 2**27
# vectorize=None takes the vectorized path from this many chunks on: on a CPU (benchmarks/README)
# it took 0.64x the loop's time at 8 chunks and 0.29x at 32 on an overhead-bound model, but 1.7x
# at 2 chunks (the batched passes' fixed cost), and 1.2x at 8 on a compute-bound ResNet.
MSAM_VECTORIZE_MIN_CHUNKS = 8


def batched_grad(f: Callable[..., Any], in_dims: Any = 0) -> Callable[..., Any]:
    """``vmap(grad(f, has_aux=True), in_dims)``: for f(params, *rest) -> (value, aux), the
    gradient of value w.r.t. the dict ``params`` and aux, for every slice c of the batched
    arguments at once: d value(params_c, rest_c) / d params_c (params unbatched, in_dims None:
    the gradient at shared weights, one per slice). The vectorized m-SAM step and the vectorized
    m-sharpness share it."""
    return torch.func.vmap(torch.func.grad(f, has_aux=True), in_dims=in_dims)


def chunk_groups(chunks: int, n_values: int, max_values: int) -> int:
    """Chunks per group when each chunk needs ``n_values`` batched values and a group may hold
    ``max_values`` (at least 1, at most ``chunks``)."""
    return max(1, min(chunks, max_values // max(n_values, 1)))


class _LossCall(nn.Module):
    """``compute_loss(x, y)`` as the forward of a module holding ``model``, so that
    ``functional_call`` replaces the model's tensors for the whole loss (a regularizer that reads
    the module's parameters sees the replaced ones too)."""

    def __init__(self, model: nn.Module, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.fn(x, y)


def msam_vectorize_reason(model: Any) -> str | None:
    """Why ``msam_backward`` cannot take the vectorized path for ``model`` (None: it can, as far
    as the model's structure tells; ``compute_loss`` is checked at the call).

    The vectorized passes run the model through ``torch.func`` (``functional_call`` with weights
    stacked per chunk, ``vmap(grad)``), which bypasses what the loop relies on: DDP's gradient
    all-reduce and buffer broadcast, ``torch.compile`` wrappers, gradient hooks on the parameters
    (``--grad_gauss_std``) and module backward hooks; random draws in forward (dropout) cannot be
    made equal to the loop's, one draw per chunk pass from the global generator."""
    compiled = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", ())
    if isinstance(model, compiled):
        return "a torch.compile'd model (compile the loss instead, or the model inside)"
    if not isinstance(model, nn.Module):
        return f"not an nn.Module ({type(model).__name__})"
    for mod in model.modules():
        if isinstance(mod, nn.DataParallel) or _has_no_sync(mod):
            return (
                f"{type(mod).__name__}: its forward and backward synchronize the workers "
                "(the loop's per-worker ascent and all-reduce)"
            )
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.training and mod.p > 0:
            return f"{type(mod).__name__} in training mode draws random numbers in every pass"
        if mod._backward_hooks or mod._backward_pre_hooks:
            return f"{type(mod).__name__} has backward hooks (torch.func.grad does not run them)"
    for name, p in model.named_parameters():
        if p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None):
            return f"parameter {name} has gradient hooks (torch.func.grad does not run them)"
    return None


class _Unbatchable(Exception):
    """The vectorized path does not apply to this call (the reason is the message)."""


def msam_backward(
    optimizer: SAM,
    model: nn.Module,
    compute_loss: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    m: int,
    *,
    sam_iters: int = 1,
    step_size_mult: float = 1.0,
    bn_first_pass_only: bool = True,
    vectorize: bool | None = None,
    max_batched_params: int = MSAM_MAX_BATCHED_PARAMS,
) -> tuple[Tensor, Tensor]:
    """Accumulate the m-SAM gradient of one batch into ``p.grad``; the weights end unchanged.

    The batch is cut into C = batch/m chunks of m *consecutive* examples (the original
    ``--acc_steps`` semantics). For each chunk: g_c = grad of ``compute_loss(x_c, y_c)`` at w (under
    ``local_grads``: never all-reduced), w <- w + e(g_c) through ``optimizer.perturb`` with
    ``iters=sam_iters`` (so rho, p, ASAM and normalization are the optimizer's, and the ascent is
    the original's projected one: ``sam_iters`` steps of radius rho * ``step_size_mult``, each
    projected onto the rho-ball, as its ``weight_ascent_step``), then
    ``compute_loss(x_c, y_c) / C`` is back-propagated at w + e_c into p.grad and w is restored.
    Under DDP only the last chunk's backward is all-reduced (gradient accumulation), so the update
    averages every worker's every chunk.

    ``vectorize``: None (default) takes the vectorized path where it applies and there are at
    least ``MSAM_VECTORIZE_MIN_CHUNKS`` (8) chunks, the loop otherwise; True requires it
    (ValueError with the reason); False is the loop, the reference.
    The vectorized path computes the same numbers (float rounding apart) in two batched passes:
    the C gradients at w in one ``vmap(grad)`` over the chunks, the C perturbations by
    ``optimizer.perturb`` (the one ascent rule; its ``sam_iters > 1`` inner gradients one chunk
    at a time), the C gradients at w + e_c in a second ``vmap(grad)`` over per-chunk weights.
    Batch norm normalizes each chunk with its own statistics as in the loop, and the running
    statistics get the loop's sequential momentum updates r <- (1 - a_j) r + a_j s_j over the
    loop's order of passes (s_j the j-th pass's statistics; only the passes at w unless
    ``bn_first_pass_only=False``) in closed form,

        r_U = prod_j (1 - a_j) r_0 + sum_j a_j prod_{i > j} (1 - a_i) s_j,

    a_j = momentum, or 1 / (num_batches_tracked + j) for ``momentum=None``. It holds two stacks
    of G parameter-sized tensors (G chunk gradients and G perturbed weights, G chunks at once,
    G * n_params <= ``max_batched_params``; larger batches run in groups of G chunks). Where it
    does not apply (``msam_vectorize_reason``: DDP, torch.compile, dropout, gradient hooks; a
    ``compute_loss`` that reads parameter tensors it captured instead of the module's, e.g. an
    L2 term over a list made before the call; a model ``vmap`` cannot batch) the loop runs.

    Zero the gradients before calling; afterwards call ``optimizer.update()`` (clip + base step).
    ``compute_loss`` must return the *mean* loss over its chunk (regularizers included).
    Returns the mean chunk losses at w and at the perturbed weights (detached).
    """
    if isinstance(optimizer, LookSAM) or not isinstance(optimizer, SAM):
        raise ValueError(
            f"msam_backward needs a sharpness.SAM optimizer, got {type(optimizer).__name__}: "
            "m-SAM takes a SAM gradient every step and LookSAM's reuse rule is not defined per "
            "chunk (LookSAM: use first_step/second_step)"
        )
    n = inputs.shape[0]
    if isinstance(m, bool) or not isinstance(m, int) or m < 1 or n % m:
        raise ValueError(
            f"m={m} must be a positive integer dividing the batch size {n} "
            "(m = batch_size / acc_steps)"
        )
    if targets.shape[0] != n:
        raise ValueError(f"inputs ({n}) and targets ({targets.shape[0]}) differ in batch size")
    if vectorize not in (None, True, False):
        raise ValueError(f"vectorize must be None (auto), True or False, got {vectorize!r}")
    if isinstance(max_batched_params, bool) or not isinstance(max_batched_params, int):
        raise ValueError(f"max_batched_params must be a positive integer, not {max_batched_params}")
    if max_batched_params < 1:
        raise ValueError(f"max_batched_params must be a positive integer, not {max_batched_params}")
    args = (optimizer, model, compute_loss, inputs, targets, m, sam_iters, step_size_mult)
    if vectorize or (vectorize is None and n // m >= MSAM_VECTORIZE_MIN_CHUNKS):
        try:
            reason = msam_vectorize_reason(model)
            if reason is not None:
                raise _Unbatchable(reason)
            return _msam_vectorized(*args, bn_first_pass_only, max_batched_params)
        except _Unbatchable as e:
            if vectorize:
                raise ValueError(
                    f"msam_backward(vectorize=True) does not apply: {e}; use vectorize=None "
                    "(the loop where the vectorized path does not apply) or vectorize=False"
                ) from None
    return _msam_loop(*args, bn_first_pass_only)


def _msam_loop(
    optimizer: SAM,
    model: nn.Module,
    compute_loss: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    m: int,
    sam_iters: int,
    step_size_mult: float,
    bn_first_pass_only: bool,
) -> tuple[Tensor, Tensor]:
    """``msam_backward``'s reference path: one chunk after the other."""
    chunks = inputs.shape[0] // m
    params = [p for g in optimizer.param_groups for p in g["params"]]
    trainable = [p for p in params if p.requires_grad]
    bn_ctx = (lambda: frozen_bn_stats(model)) if bn_first_pass_only else contextlib.nullcontext

    def grads_at_current(x: Tensor, y: Tensor) -> list[Tensor | None]:
        with local_grads(model):
            loss = compute_loss(x, y)
            gs = iter(torch.autograd.grad(loss, trainable, allow_unused=True))
        return [next(gs) if p.requires_grad else None for p in params], loss

    losses, plosses = [], []
    for c in range(chunks):
        x, y = inputs[c * m : (c + 1) * m], targets[c * m : (c + 1) * m]
        grads, loss = grads_at_current(x, y)

        def grad_at(x: Tensor = x, y: Tensor = y) -> list[Tensor | None]:
            with bn_ctx():
                return grads_at_current(x, y)[0]

        # perturb and restore drop autocast's cached low-precision weights (see SAM.perturb)
        optimizer.perturb(grads, grad_at=grad_at, iters=sam_iters, step_size_mult=step_size_mult)
        last = c == chunks - 1
        with bn_ctx(), contextlib.nullcontext() if last else local_grads(model):
            ploss = compute_loss(x, y)
            (ploss / chunks).backward()
        optimizer.restore()
        losses.append(loss.detach())
        plosses.append(ploss.detach())
    return torch.stack(losses).mean(), torch.stack(plosses).mean()


@contextlib.contextmanager
def _all_eval(model: nn.Module) -> Iterator[None]:
    mods = list(model.modules())
    was = [mod.training for mod in mods]
    model.eval()
    try:
        yield
    finally:
        for mod, w in zip(mods, was):
            mod.training = w


def _loss_leaves(holder: _LossCall, named: dict[str, Tensor], x: Tensor, y: Tensor) -> set[str]:
    """Names of the parameters ``compute_loss`` reaches, from one forward on the first chunk in
    eval mode (no batch-norm update, no random draw). Raises ``_Unbatchable`` when the loss also
    reaches tensors that require gradients other than the module's (captured parameters)."""
    leaves = {n: p.detach().requires_grad_() for n, p in named.items()}
    cuda = [t.device for t in leaves.values() if t.device.type == "cuda"][:1]
    try:
        # fork_rng: a random op the loss runs even in eval mode must not shift the loop's draws
        with torch.random.fork_rng(devices=cuda), _all_eval(holder.model), torch.enable_grad():
            state = {"model." + n: t for n, t in leaves.items()}
            loss = torch.func.functional_call(holder, state, (x, y), strict=False)
    except (RuntimeError, ValueError) as e:  # the loop will raise it again if it is real
        raise _Unbatchable(f"a functional call of the loss failed ({e})") from None
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("compute_loss must return a scalar (the mean loss of the chunk)")
    reached: dict[int, Tensor] = {}
    stack, seen = [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            reached[id(var)] = var
        stack.extend(nxt for nxt, _ in fn.next_functions)
    ours = {id(t): n for n, t in leaves.items()}
    if any(k not in ours for k in reached):
        raise _Unbatchable(
            "compute_loss reads tensors that require gradients other than the module's own "
            "(e.g. a regularizer over a list of parameters made before the call: read them "
            "from the module at call time, module.named_parameters())"
        )
    return {ours[k] for k in reached}


@contextlib.contextmanager
def _momentum_one(bns: list[tuple[str, _BatchNorm]]) -> Iterator[None]:
    """Batch norm with momentum 1 inside: a pass writes its batch statistics into zero-filled
    running buffers exactly (1 * s + 0 * 0), so the vectorized path can read them per chunk."""
    was = [mod.momentum for _, mod in bns]
    for _, mod in bns:
        mod.momentum = 1.0
    try:
        yield
    finally:
        for (_, mod), mom in zip(bns, was):
            mod.momentum = mom


def _apply_running_stats(mod: _BatchNorm, means: list[Tensor], variances: list[Tensor]) -> None:
    """The loop's U sequential running-statistics updates in closed form (``msam_backward``)."""
    u = len(means)
    if u == 0:
        return
    if mod.momentum is None:  # cumulative average: a_j = 1 / (count before + j)
        n0 = int(mod.num_batches_tracked)
        a = [1.0 / (n0 + j + 1) for j in range(u)]
    else:
        a = [float(mod.momentum)] * u
    coef, keep = [0.0] * u, 1.0
    for j in reversed(range(u)):
        coef[j] = a[j] * keep
        keep *= 1.0 - a[j]
    with torch.no_grad():
        for buf, seq in ((mod.running_mean, means), (mod.running_var, variances)):
            s = torch.stack(seq).to(torch.float64)
            w = torch.tensor(coef, dtype=torch.float64, device=s.device)
            buf.copy_(keep * buf.to(torch.float64) + torch.tensordot(w, s, dims=1))
        mod.num_batches_tracked.add_(u)


def _msam_vectorized(
    optimizer: SAM,
    model: nn.Module,
    compute_loss: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    m: int,
    sam_iters: int,
    step_size_mult: float,
    bn_first_pass_only: bool,
    max_batched_params: int,
) -> tuple[Tensor, Tensor]:
    """``msam_backward``'s vectorized path (its docstring). Raises ``_Unbatchable`` before any
    change of state when it does not apply."""
    chunks = inputs.shape[0] // m
    entries = [p for g in optimizer.param_groups for p in g["params"]]
    name_of = {id(p): n for n, p in model.named_parameters()}
    holder = _LossCall(model, compute_loss)
    wanted = {name_of[id(p)]: p for p in entries if p.requires_grad and id(p) in name_of}
    used = _loss_leaves(holder, wanted, inputs[:m], targets[:m])
    # an optimizer entry's name, None where the loop's gradient is None (frozen, not in the
    # model, or not reached by the loss: such a parameter is neither perturbed nor updated)
    names = [name_of.get(id(p)) if p.requires_grad else None for p in entries]
    names = [n if n in used else None for n in names]
    live = {n: wanted[n] for n in names if n is not None}
    if not live:
        raise _Unbatchable("the loss reaches none of the optimizer's parameters")
    bns = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, _BatchNorm) and mod.training and mod.track_running_stats
    ]
    every = not bn_first_pass_only

    def fresh(g: int | None) -> dict[str, Tensor]:
        """Zero running buffers for the BN layers (batched over g chunks, or one chunk)."""
        lead = () if g is None else (g,)
        out = {}
        for name, mod in bns:
            pre = name + "." if name else ""
            for b in ("running_mean", "running_var"):
                t = getattr(mod, b)
                out[pre + b] = torch.zeros(lead + t.shape, dtype=t.dtype, device=t.device)
            nbt = mod.num_batches_tracked
            out[pre + "num_batches_tracked"] = torch.zeros(lead, dtype=nbt.dtype, device=nbt.device)
        return out

    def make_f(div: float) -> Callable[..., Any]:
        def f(params: dict, bufs: dict, x: Tensor, y: Tensor):
            state = {"model." + k: v for k, v in params.items()}
            state.update(("model." + k, v) for k, v in bufs.items())
            loss = torch.func.functional_call(holder, state, (x, y), strict=False)
            return (loss / div if div != 1 else loss), (loss.detach(), bufs)

        return f

    first = batched_grad(make_f(1.0), in_dims=(None, 0, 0, 0))
    second = batched_grad(make_f(float(chunks)), in_dims=(0, 0, 0, 0))
    one_chunk = torch.func.grad(make_f(1.0), has_aux=True)
    xs = inputs.reshape(chunks, m, *inputs.shape[1:])
    ys = targets.reshape(chunks, m, *targets.shape[1:])
    n_values = sum(p.numel() for p in live.values())
    group = chunk_groups(chunks, n_values, max_batched_params)
    # per BN layer, the statistics of every updating pass in the loop's order
    seq: dict[str, list[Tensor]] = {}
    losses, plosses = [], []
    acc: dict[str, Tensor] = {}
    perturbed_bn = (
        (lambda: frozen_bn_stats(model)) if bn_first_pass_only else contextlib.nullcontext
    )

    def record(stats: dict[str, Tensor], c: int | None = None) -> None:
        for k, v in stats.items():
            if not k.endswith("num_batches_tracked"):
                seq.setdefault(k, []).append(v if c is None else v[c])

    for c0 in range(0, chunks, group):
        xg, yg = xs[c0 : c0 + group], ys[c0 : c0 + group]
        g = xg.shape[0]
        w = {n: p.detach() for n, p in live.items()}
        with _momentum_one(bns):
            try:
                g1, (lo, st1) = first(w, fresh(g), xg, yg)
            except RuntimeError as e:
                if c0 == 0:  # nothing changed yet: the loop can run instead
                    raise _Unbatchable(f"vmap cannot batch the model ({e})") from None
                raise
        pert = {
            n: torch.empty((g, *p.shape), dtype=p.dtype, device=p.device) for n, p in live.items()
        }
        inner: list[list[dict[str, Tensor]]] = [[] for _ in range(g)]
        for c in range(g):
            xc, yc = xg[c], yg[c]

            def grad_at(
                xc: Tensor = xc, yc: Tensor = yc, mine: list = inner[c]
            ) -> list[Tensor | None]:
                now = {n: p.detach() for n, p in live.items()}
                with perturbed_bn(), _momentum_one(bns):
                    gr, (_, st) = one_chunk(now, fresh(None) if every else {}, xc, yc)
                if every:
                    mine.append(st)
                return [None if n is None else gr[n] for n in names]

            grads = [None if n is None else g1[n][c] for n in names]
            optimizer.perturb(
                grads, grad_at=grad_at, iters=sam_iters, step_size_mult=step_size_mult
            )
            try:
                with torch.no_grad():
                    for n, p in live.items():
                        pert[n][c].copy_(p)
            finally:
                optimizer.restore()
        del g1
        with perturbed_bn(), _momentum_one(bns):
            g2, (plo, st2) = second(pert, fresh(g) if every else {}, xg, yg)
        del pert
        for n in live:
            s = g2[n].sum(0)
            acc[n] = s if n not in acc else acc[n].add_(s)
        del g2
        for c in range(g):
            record(st1, c)
            for st in inner[c]:
                record(st)
            if every:
                record(st2, c)
        losses.append(lo)
        plosses.append(plo)
    for name, mod in bns:
        pre = name + "." if name else ""
        _apply_running_stats(
            mod, seq.get(pre + "running_mean", []), seq.get(pre + "running_var", [])
        )
    with torch.no_grad():
        for n, p in live.items():
            if p.grad is None:
                p.grad = acc[n].to(memory_format=torch.preserve_format)
            else:
                p.grad.add_(acc[n])
    return torch.cat(losses).mean(), torch.cat(plosses).mean()
