"""Helpers for nn.Modules: batch-norm statistics, DDP per-worker gradients, and m-SAM.

m-sharpness (SAM paper; "Towards Understanding SAM" §4.1): the max is taken independently over
disjoint chunks of m examples and the SAM gradients are averaged,

    grad = (1/C) sum_c grad L_c(w + e_c),   e_c = e(grad L_c(w)),   C = batch / m,

where L_c is the mean loss over chunk c. m = batch is SAM; small m generalizes better.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sharpness import functional as F
from sharpness.optim import SAM, LookSAM

__all__ = [
    "MSAM_MAX_BATCHED_PARAMS",
    "batched_grad",
    "frozen_bn_stats",
    "local_grads",
    "msam_backward",
    "msam_fused_reason",
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
    vectorize: bool | str | None = None,
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

    ``vectorize``: None (default, "auto") takes the fused path where it applies (from 2 chunks
    on), the loop otherwise; True requires a batched path (the fused one, else the vmap one;
    ValueError with the reason where neither applies); "fused" or "vmap" requires that path;
    False is the loop, the reference.

    The fused path (benchmarks/README.md: 3.4x SGD instead of 12x at m = 4 on an overhead-bound
    MLP) runs each group of G chunks through the model once, with every layer computing chunk
    c's rows with chunk c's weights (``torch.bmm`` over G stacked weights): the G gradients at w
    are one backward to the stacks (w expanded, no copy), the perturbations are
    ``optimizer.perturb``'s (batched: ``sharpness.functional.perturbation`` over the chunks,
    where the optimizer's ascent is the core's single normalized one; chunk by chunk through
    ``optimizer.perturb`` otherwise: ``sam_iters``, ASAM, unnormalized, subclasses), and the
    descent sum_c grad L_c(w + e_c) is one backward through stacks w + e_c (e_c detached) into
    p.grad. It applies when every trainable parameter belongs to a layer with a per-chunk forward
    (``nn.Linear``), no batch norm is in training mode, ``msam_vectorize_reason`` is None, and
    the loss (checked on the first group, before any change) reaches the parameters only through
    the layers (an L2 term over the parameters does not: the vmap path covers it) and draws no
    random numbers. It assumes what per-sample-gradient code assumes: the model treats the
    examples of a batch independently (batch norm aside, which is refused) and its Linear
    inputs are batch-first; ``compute_loss`` is the mean over its examples, so on G chunks it is
    the mean of the G chunk losses. Memory: G parameter-sized gradients and G perturbed weights.

    The vmap path (``vectorize=True`` where the fused one does not apply) computes the same numbers
    in two ``vmap(grad)`` passes: the C gradients at w over the chunks, the C perturbations by
    ``optimizer.perturb`` (its ``sam_iters > 1`` inner gradients one chunk at a time), the C
    gradients at w + e_c over per-chunk weights. It covers batch norm and L2 terms but on a CPU is
    slower than the loop on a compute-bound ResNet (1.2x at 16 chunks), hence not automatic.
    Batch norm normalizes each chunk with its own statistics as in the loop, and the running
    statistics get the loop's sequential momentum updates r <- (1 - a_j) r + a_j s_j over the
    loop's order of passes (s_j the j-th pass's statistics; only the passes at w unless
    ``bn_first_pass_only=False``) in closed form,

        r_U = prod_j (1 - a_j) r_0 + sum_j a_j prod_{i > j} (1 - a_i) s_j,

    a_j = momentum, or 1 / (num_batches_tracked + j) for ``momentum=None``. It holds two stacks
    of G parameter-sized tensors (G chunk gradients and G perturbed weights). Where it does not
    apply (``msam_vectorize_reason``: DDP, torch.compile, dropout, gradient hooks; a
    ``compute_loss`` that reads parameter tensors it captured instead of the module's, e.g. an
    L2 term over a list made before the call; a model ``vmap`` cannot batch) it refuses.
    Both batched paths take G chunks at once with G * n_params <= ``max_batched_params`` (larger
    batches run in groups of G chunks).

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
    if not any(vectorize is v for v in (None, True, False)) and vectorize not in ("fused", "vmap"):
        raise ValueError(
            f"vectorize must be None (auto), True, False, 'fused' or 'vmap', got {vectorize!r}"
        )
    if isinstance(max_batched_params, bool) or not isinstance(max_batched_params, int):
        raise ValueError(f"max_batched_params must be a positive integer, not {max_batched_params}")
    if max_batched_params < 1:
        raise ValueError(f"max_batched_params must be a positive integer, not {max_batched_params}")
    args = (optimizer, model, compute_loss, inputs, targets, m, sam_iters, step_size_mult)
    reason = msam_vectorize_reason(model)
    if vectorize in (None, True, "fused") and (vectorize is not None or n // m >= 2):
        try:
            if reason is not None:
                raise _Unbatchable(reason)
            return _msam_fused(*args, max_batched_params)
        except _Unbatchable as e:
            why = str(e)
        if vectorize == "fused":
            raise ValueError(f"msam_backward(vectorize='fused') does not apply: {why}")
    if vectorize is True or vectorize == "vmap":
        try:
            if reason is not None:
                raise _Unbatchable(reason)
            return _msam_vectorized(*args, bn_first_pass_only, max_batched_params)
        except _Unbatchable as e:
            raise ValueError(
                f"msam_backward(vectorize={vectorize!r}) does not apply: {e}; use vectorize=None "
                "(the loop where the batched paths do not apply) or vectorize=False"
            ) from None
    return _msam_loop(*args, bn_first_pass_only)


# ------------------------------------------------------------------ m-SAM: the per-chunk forward
# The fused path runs the whole batch (a group of G chunks) through the model once, with every
# supported layer computing chunk c's rows with chunk c's weights (G stacked weight tensors):
# the ascent gradients g_c are the gradients w.r.t. those stacks (one backward), the descent
# gradient sum_c grad L_c(w + e_c) one backward to w (the stacks are w + detached e_c).


def _chunked_linear(mod: nn.Linear, ws: dict[str, Tensor], g: int, x: Tensor) -> Tensor:
    """nn.Linear with weight ws["weight"][c] (and bias) for the rows of chunk c of g."""
    if x.dim() < 2 or x.shape[0] % g:
        raise _Unbatchable(f"a Linear input of shape {tuple(x.shape)} is not batch-first")
    xr = x.reshape(g, -1, x.shape[-1])  # chunk c: rows c*m .. (c+1)*m - 1 (and their extra dims)
    wt = ws["weight"].transpose(1, 2)
    b = ws.get("bias")
    y = torch.bmm(xr, wt) if b is None else torch.baddbmm(b.unsqueeze(1), xr, wt)
    return y.reshape(*x.shape[:-1], wt.shape[-1])


_CHUNKED_FORWARD: dict[type, Callable[..., Tensor]] = {nn.Linear: _chunked_linear}


def _fused_owners(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """id(parameter) -> (module, attribute) for every parameter of the model, when each one that
    requires a gradient belongs to a layer with a per-chunk forward (else ``_Unbatchable``)."""
    owners: dict[int, tuple[nn.Module, str]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, _BatchNorm) and mod.training:
            raise _Unbatchable(
                f"{name or type(mod).__name__}: batch norm in training mode normalizes over the "
                "batch (the per-chunk statistics need the vmap path)"
            )
        own = [(a, p) for a, p in mod.named_parameters(recurse=False) if p is not None]
        if not own:
            continue
        fwd = _CHUNKED_FORWARD.get(type(mod))
        if fwd is None or "forward" in mod.__dict__ or mod._forward_pre_hooks:
            if any(p.requires_grad for _, p in own):
                raise _Unbatchable(
                    f"{name} ({type(mod).__name__}) has no per-chunk forward (supported: "
                    + ", ".join(t.__name__ for t in _CHUNKED_FORWARD)
                    + ")"
                )
            continue
        for a, p in own:
            owners[id(p)] = (mod, a)
    return owners


@contextlib.contextmanager
def _per_chunk_weights(stacks: dict[nn.Module, dict[str, Tensor]], g: int) -> Iterator[None]:
    """Inside, each module of ``stacks`` computes chunk c of its batch-first input with the
    tensors stacks[module][attr][c] (an instance ``forward``: hooks still run)."""
    try:
        for mod, ws in stacks.items():  # (the instance dict: nn.Module.__setattr__ is slow)
            mod.__dict__["forward"] = functools.partial(_CHUNKED_FORWARD[type(mod)], mod, ws, g)
        yield
    finally:
        for mod in stacks:
            mod.__dict__.pop("forward", None)


def _leaves(loss: Tensor) -> dict[int, Tensor]:
    """The tensors requiring gradients that ``loss`` was computed from (its autograd leaves)."""
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
    return reached


def _batched_ascent(
    optimizer: SAM, params: list[Tensor], gstack: list[Tensor], iters: int, step_size_mult: float
) -> list[Tensor] | None:
    """The G perturbed weights w + e(g_c) at once, where ``optimizer.perturb`` is the core's
    single normalized ascent: ``sharpness.functional.perturbation`` (the rule ``SAM.perturb``
    applies) with the chunk as a batch dimension. None where the optimizer's perturb is
    another rule (a subclass that does not declare ``perturb_is_core(iters, step_size_mult)``),
    or the ascent is projected (``sam_iters`` > 1, ``step_size_mult`` != 1, unnormalized),
    adaptive, layerwise, for a maximizing base optimizer, or with per-group radii: the caller
    then perturbs chunk by chunk through ``optimizer.perturb``."""
    core = type(optimizer).perturb is SAM.perturb
    if not core:
        declared = getattr(optimizer, "perturb_is_core", None)
        core = callable(declared) and declared(iters, step_size_mult)
    groups = optimizer.param_groups
    if not (core and iters == 1 and step_size_mult == 1.0 and optimizer.normalize):
        return None
    if optimizer.layerwise or any(grp["adaptive"] for grp in groups):
        return None
    if optimizer._ascent_sign(groups) < 0 or len({optimizer._group_rho(g) for g in groups}) > 1:
        return None
    if any(t.is_sparse for t in gstack):
        return None
    rho = optimizer._group_rho(groups[0])
    with torch.no_grad():
        # one (G, n_values) row per chunk: the norm over all tensors is the row's norm, and
        # the rule runs as a few kernels instead of a few per tensor
        flat = torch.cat([t.reshape(t.shape[0], -1) for t in gstack], 1)
        e = F.perturbation(flat, rho, optimizer.p, eps=optimizer.eps, batch_dims=1)
        e += torch.cat([p.detach().reshape(1, -1) for p in params], 1)  # e + w, as SAM.perturb
        sizes = [p.numel() for p in params]
        return [v.view(t.shape) for v, t in zip(e.split(sizes, 1), gstack)]


def _rng_states(device: torch.device) -> list[Tensor]:
    """The global generators a loss on ``device`` may draw from (CPU, and that CUDA device)."""
    out = [torch.get_rng_state()]
    if device.type == "cuda":
        out.append(torch.cuda.get_rng_state(device))
    return out


def _same_rng(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _set_rng_states(states: list[Tensor]) -> None:
    torch.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state(states[1])


def msam_fused_reason(model: Any) -> str | None:
    """Why ``msam_backward``'s fused path cannot run ``model`` (None: it can, as far as the
    model's structure tells; the loss is checked at the call: it must reach the parameters only
    through the layers and draw no random numbers)."""
    reason = msam_vectorize_reason(model)
    if reason is not None:
        return reason
    try:
        _fused_owners(model)
    except _Unbatchable as e:
        return str(e)
    return None


def _msam_fused(
    optimizer: SAM,
    model: nn.Module,
    compute_loss: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    m: int,
    sam_iters: int,
    step_size_mult: float,
    max_batched_params: int,
) -> tuple[Tensor, Tensor]:
    """``msam_backward``'s fused path (its docstring). Raises ``_Unbatchable`` before any change
    of state when it does not apply."""
    chunks = inputs.shape[0] // m
    owners = _fused_owners(model)
    entries = [p for grp in optimizer.param_groups for p in grp["params"]]
    for p in entries:
        if p.requires_grad and id(p) not in owners:
            raise _Unbatchable("an optimizer parameter is not a parameter of the model")
    trainable = [p for p in entries if p.requires_grad]
    mods: dict[nn.Module, list[tuple[str, Tensor]]] = {}
    for mod, a in owners.values():
        mods.setdefault(mod, []).append((a, getattr(mod, a)))
    in_opt = {id(p) for p in trainable}
    n_values = sum(p.numel() for p in trainable)
    group = chunk_groups(chunks, n_values, max_batched_params)
    lsum = psum = None
    for c0 in range(0, chunks, group):
        g = min(group, chunks - c0)
        xg, yg = inputs[c0 * m : (c0 + g) * m], targets[c0 * m : (c0 + g) * m]
        # ascent: a zero-copy stack of w per chunk for each optimizer parameter; its gradient
        # is the G per-chunk gradients (the loss is the mean over the G chunks: times G)
        zs = {
            id(p): p.detach().expand(g, *p.shape).requires_grad_(id(p) in in_opt)
            for ps in mods.values()
            for _, p in ps
        }
        stacks = {mod: {a: zs[id(p)] for a, p in ps} for mod, ps in mods.items()}
        rng = _rng_states(inputs.device) if c0 == 0 else None
        try:
            with _per_chunk_weights(stacks, g), torch.enable_grad():
                loss = compute_loss(xg, yg)
            if rng is not None and not _same_rng(rng, _rng_states(inputs.device)):
                _set_rng_states(rng)  # the loop draws from where the call started
                raise _Unbatchable(
                    "compute_loss draws random numbers (e.g. dropout): one draw for the whole "
                    "batch is not the loop's draw per chunk"
                )
        except _Unbatchable:
            if c0 == 0:
                raise
            raise RuntimeError(
                "msam_backward: the fused path failed after its first group"
            ) from None
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("compute_loss must return a scalar (the mean loss of the chunk)")
        # the parameters themselves must not be in the graph: the loss would read w where
        # the loop reads w + e_c (e.g. an L2 term over the parameters: the vmap path covers it)
        zl = [zs[id(p)] for p in trainable]
        direct = [p for p in model.parameters() if p.requires_grad] if c0 == 0 else []
        gz = torch.autograd.grad(loss * g, zl + direct, allow_unused=True)
        if any(t is not None for t in gz[len(zl) :]):  # (the first group: nothing changed yet)
            raise _Unbatchable(
                "compute_loss reads the parameters other than through the model's layers (e.g. "
                "an L2 term over the parameters: the vmap path covers it)"
            )
        grads_of = dict(zip(map(id, trainable), gz))
        sel = [p for p in trainable if grads_of[id(p)] is not None]
        stacked = None
        if len(sel) == len(trainable):  # (the loop perturbs only parameters with a gradient)
            stacked = _batched_ascent(
                optimizer, sel, [grads_of[id(p)] for p in sel], sam_iters, step_size_mult
            )
        if stacked is not None:
            pert = dict(zip(map(id, sel), stacked))
        else:
            pert = {
                id(p): torch.empty((g, *p.shape), dtype=p.dtype, device=p.device) for p in trainable
            }
            for c in range(g):
                xc, yc = xg[c * m : (c + 1) * m], yg[c * m : (c + 1) * m]

                def grad_at(xc: Tensor = xc, yc: Tensor = yc) -> list[Tensor | None]:
                    lo = compute_loss(xc, yc)
                    gs = iter(torch.autograd.grad(lo, trainable, allow_unused=True))
                    return [next(gs) if p.requires_grad else None for p in entries]

                grads = [
                    None if grads_of.get(id(p)) is None else grads_of[id(p)][c] for p in entries
                ]
                optimizer.perturb(
                    grads, grad_at=grad_at, iters=sam_iters, step_size_mult=step_size_mult
                )
                try:
                    with torch.no_grad():
                        torch._foreach_copy_([pert[id(p)][c] for p in trainable], trainable)
                finally:
                    optimizer.restore()
        del gz, grads_of
        # descent: chunk c's weights are the perturbed values exactly, with gradient 1 to w
        # (p - p.detach() is a zero that carries the graph), so one backward gives sum_c
        ws = {}
        for ps in mods.values():
            for _, p in ps:
                if id(p) in in_opt:
                    ws[id(p)] = pert[id(p)] + (p - p.detach())
                else:
                    ws[id(p)] = p.expand(g, *p.shape)
        stacks = {mod: {a: ws[id(p)] for a, p in ps} for mod, ps in mods.items()}
        with _per_chunk_weights(stacks, g):
            ploss = compute_loss(xg, yg)
        (ploss * (g / chunks)).backward()
        del pert, ws, stacks
        part, ppart = loss.detach() * g, ploss.detach() * g
        lsum = part if lsum is None else lsum + part
        psum = ppart if psum is None else psum + ppart
    return lsum / chunks, psum / chunks


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
    reached = _leaves(loss)
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
