"""SAM and LookSAM as ``torch.optim.Optimizer`` wrappers around a base optimizer.

SAM (Foret et al. 2021) minimizes max_{||e||_p <= rho} L(w + e) with the first-order ascent
e(w) of ``sharpness.functional.perturbation`` and the update w <- base_step(w, grad L(w + e(w))).
The calling convention is the one researchers know from the popular wrapper (davda54/sam):

```python
import torch
from torch import nn
from sharpness import SAM

model, loss_fn = nn.Linear(4, 2), nn.functional.cross_entropy
x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
loss_fn(model(x), y).backward()  # gradient at w
opt.first_step(zero_grad=True)  # w <- w + e(w)
loss_fn(model(x), y).backward()  # gradient at w + e
opt.second_step(zero_grad=True)  # w restored, base optimizer steps
```

or ``opt.step(closure)`` after the first backward, with a closure that runs the second
forward-backward. Differences from that wrapper, each a reported defect there:
``state_dict()`` carries the base optimizer's state (momentum), so a resumed run continues exactly;
``rho=0`` reproduces the base optimizer bit for bit (LookSAM too); the weights are restored by
copying from one preallocated buffer; gradient clipping (``max_grad_norm``) applies only to the
gradient used for the update (clipping the ascent gradient is meaningless: the ascent is
normalized); one
``torch._foreach_*`` path and a per-tensor loop path (the ground truth in tests).

Keywords. Every keyword the base optimizer accepts goes to it unchanged
(``SAM(params, torch.optim.Adam, lr=1e-3, eps=1e-6)`` sets Adam's eps). The wrappers' own options
have names no ``torch.optim`` optimizer uses (``sam_rho``, ``p``, ``adaptive``, ``eta``,
``adaptive_weights_only``, ``normalize``, ``layerwise``, ``max_grad_norm``, ``sam_eps``,
``sam_foreach``; LookSAM: ``k``, ``looksam_alpha``, ``looksam_sync``), with two familiar aliases:
``rho`` is SAM's radius and LookSAM's ``alpha`` its reuse weight, unless the base optimizer has an
option of the same name (Adadelta's ``rho``; RMSprop's and ASGD's ``alpha``): then the short name
is ambiguous and refused, and ``sam_rho=`` / ``looksam_alpha=`` set the wrapper's value while
``rho=`` / ``alpha=`` go to the base optimizer. For backward compatibility ``eps=`` and
``foreach=`` still set ``sam_eps`` / ``sam_foreach`` (with a FutureWarning) when the base
optimizer has no such option (SGD has no eps). In the param groups the radius is
``group["rho"]``, as in davda54's wrapper (``group["sam_rho"]`` with Adadelta).

Also different from davda54's: ``adaptive=True`` needs ``eta=`` (two ASAMs go by that name, see
``SAM``); a GradScaler goes to ``first_step/second_step(scaler=)`` or ``step(closure,
scaler=)``; ``maximize=True`` base optimizers, sparse gradients (SAM), DDP with LookSAM and
``torch.compile(opt.second_step)`` work; davda54 / pytorch-optimizer checkpoints load.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from sharpness import functional as F
from sharpness._options import (
    LOOKSAM_GLOBAL_OPTIONS,
    SAM_GLOBAL_OPTIONS,
    base_keywords,
    check_bool,
    check_number,
    legacy_option,
    optimizer_name,
    resolve_alias,
)

__all__ = ["SAM", "LookSAM"]


class _StepState:
    """The wrappers' between-call bookkeeping (perturbed tensors, LookSAM's counter and g_v).

    It lives in this plain object, not in attributes of the optimizer: ``torch.compile`` of a
    bound method (``torch.compile(opt.second_step)``) drops attribute assignments on an
    Optimizer instance but keeps those on other objects, and losing them would desynchronize
    first_step / second_step."""


def _kept(name: str, doc: str) -> property:
    """An attribute of the optimizer stored in its ``_StepState`` (see there why)."""
    return property(
        lambda self: getattr(self._s, name), lambda self, v: setattr(self._s, name, v), doc=doc
    )


def _drop_autocast_casts() -> None:
    """Forget autocast's cached low-precision copies of the weights after an in-place change.

    Inside an autocast region each leaf weight is cast once, at its first use, and the copy is
    reused until the outermost region exits: a forward at w + e in the same region as the one at
    w would silently compute with w (SAM becomes ERM). The cache is empty outside autocast."""
    if torch.is_autocast_cache_enabled():
        torch.clear_autocast_cache()


class SAM(Optimizer):
    """Sharpness-Aware Minimization around ``base_optimizer`` (a class, built with ``**kwargs``).

    Args:
        params: parameters, ``model.named_parameters()`` (needed by the official ASAM rule, see
            ``adaptive_weights_only``) or parameter groups (groups may set their own ``rho`` (or
            ``sam_rho``), ``adaptive``, ``eta``, ``adaptive_weights_only`` next to the base
            optimizer's options).
        base_optimizer: the optimizer class that takes the update step, e.g. ``torch.optim.SGD``.
        rho: radius of the ascent (per group), the familiar alias of ``sam_rho``; refused as
            ambiguous when the base optimizer has its own rho (Adadelta): then use ``sam_rho=``
            for the radius and ``rho=`` for Adadelta's. ``rho=0`` is exactly the base optimizer.
        p: the ball's norm, in (1, inf]; ``float('inf')`` gives e = rho sign(g). Global over groups.
        adaptive: ASAM, e = T * ascent(T g) with T = |w| + eta (p=2: rho T^2 g / ||T g||).
            Two ASAMs go by this name, so ``adaptive=True`` needs ``eta=`` too (refused without):
            the official code's (SamsungLabs/ASAM) is ``SAM(model.named_parameters(), ...,
            adaptive=True, eta=0.01)``; davda54's ``adaptive=True`` (T = |w| on every tensor) is
            ``adaptive=True, eta=0, adaptive_weights_only=False``.
        eta: ASAM's offset (0.01 in the official code; 0 in davda54's). No default.
        adaptive_weights_only: True (the official ASAM): T rescales exactly the parameters whose
            name contains ``"weight"`` (linear/conv kernels, embeddings, BatchNorm / LayerNorm /
            GroupNorm weights); the others (biases, or any parameter not named ``*weight*``) get
            T = 1, i.e. plain SAM. The names come from ``model.named_parameters()`` passed as
            ``params`` (torch's named parameter groups); without names this option is refused.
            False: T rescales every tensor.
        normalize: False gives the theory's unnormalized ascent e = rho g.
        layerwise: per-tensor norms with a trust ratio, e_l = rho ||w_l|| g_l / ||g_l|| (the
            Look-LayerSAM perturbation of LookSAM's paper).
        max_grad_norm: clip the *update* gradient (at w + e) to this global 2-norm.
        sam_rho: the radius, unambiguous with any base optimizer (default 0.05). The groups keep
            it under ``"rho"`` as davda54's wrapper does (``opt.param_groups[0]["rho"]``), or
            under ``"sam_rho"`` when the base optimizer has a ``rho`` of its own (Adadelta).
        sam_eps: added to norms in denominators (``functional``'s eps rule; default 1e-12).
        sam_foreach: use ``torch._foreach_*`` kernels (default: when all parameters share a
            device).
        **kwargs: the base optimizer's options (lr, momentum, weight_decay, eps, foreach, ...),
            passed to it unchanged.
    """

    _perturbed = _kept("perturbed", "The tensors perturb() moved to w + e (restore() empties it).")
    _first_done = _kept("first_done", "first_step ran and second_step (or restore) not yet.")
    _opt_called = _kept("opt_called", "Read by torch's LR schedulers: a step was taken.")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        base_optimizer: Callable[..., Optimizer],
        rho: float | None = None,
        p: float = 2.0,
        adaptive: bool = False,
        eta: float | None = None,
        adaptive_weights_only: bool = True,
        normalize: bool = True,
        layerwise: bool = False,
        max_grad_norm: float | None = None,
        *,
        sam_rho: float | None = None,
        sam_eps: float | None = None,
        sam_foreach: bool | None = None,
        **kwargs: Any,
    ) -> None:
        wrapper = type(self).__name__
        self._s = _StepState()
        self._perturbed, self._first_done = [], False
        if isinstance(base_optimizer, Optimizer) or not callable(base_optimizer):
            raise ValueError(
                "base_optimizer must be an optimizer class such as torch.optim.SGD (its options go "
                f"in **kwargs), got {type(base_optimizer).__name__}"
            )
        base_kw, base_var_kw = base_keywords(base_optimizer)
        bname = optimizer_name(base_optimizer)
        route = (base_kw, bname, kwargs)
        rho = resolve_alias(wrapper, "rho", "sam_rho", rho, sam_rho, 0.05, *route)
        legacy = (base_kw, base_var_kw, bname, kwargs)
        sam_eps = legacy_option(wrapper, "eps", "sam_eps", sam_eps, *legacy)
        sam_foreach = legacy_option(wrapper, "foreach", "sam_foreach", sam_foreach, *legacy)
        sam_eps = 1e-12 if sam_eps is None else sam_eps
        check_number("rho", rho)
        if eta is not None:
            check_number("eta", eta)
        check_number("sam_eps", sam_eps)
        if isinstance(p, bool):  # davda54's positional SAM(params, SGD, 0.05, True)
            raise ValueError(
                f"p={p!r}: the 4th positional argument of {wrapper} is p (the ball's norm), not "
                f"adaptive. davda54's SAM(params, SGD, 0.05, True) is {wrapper}(params, SGD, "
                "rho=0.05, adaptive=True, eta=0, adaptive_weights_only=False); the official ASAM "
                f"is {wrapper}(model.named_parameters(), SGD, rho=0.5, adaptive=True, eta=0.01)"
            )
        if not isinstance(p, (int, float)) or not p > 1:
            raise ValueError(f"p must be a number in (1, inf] (got {p!r})")
        if max_grad_norm is not None:
            check_number("max_grad_norm", max_grad_norm, positive=True)
        for flag, value in (
            ("adaptive", adaptive),
            ("adaptive_weights_only", adaptive_weights_only),
            ("normalize", normalize),
            ("layerwise", layerwise),
        ):
            check_bool(flag, value)
        if layerwise and not normalize:
            raise ValueError("layerwise=True needs normalize=True (trust-ratio radii of g/||g||)")
        if sam_foreach is not None:
            check_bool("sam_foreach", sam_foreach)
        self._base_kw = base_kw
        # davda54's group key when it is free; Adadelta's rho keeps its own meaning.
        self._rho_key = "sam_rho" if "rho" in base_kw else "rho"
        self._sam_defaults = {
            self._rho_key: float(rho),
            "adaptive": adaptive,
            "eta": None if eta is None else float(eta),
            "adaptive_weights_only": adaptive_weights_only,
        }
        super().__init__(params, {**self._sam_defaults, **kwargs})
        base = base_optimizer(self.param_groups, **kwargs)
        if not isinstance(base, Optimizer):
            raise ValueError(
                f"base_optimizer(...) returned {type(base).__name__}, not an Optimizer"
            )
        self.base_optimizer = base
        # One list of group dicts and one state dict for both: schedulers attached to either
        # object change the same lr, and the base's momentum lives in the state we save.
        self.param_groups = base.param_groups
        self.state = base.state
        self.defaults.update(base.defaults)
        self.p = float(p)
        self.normalize = normalize
        self.layerwise = layerwise
        self.max_grad_norm = max_grad_norm
        self.eps = float(sam_eps)
        self.foreach = sam_foreach
        self._backup: dict[Tensor, Tensor] = {}  # scratch: w while perturbed; not in state_dict
        self._buffer_cache: tuple[tuple, list[Tensor]] = ((), [])
        self._foreach_cache: dict[tuple, bool] = {}

    # ------------------------------------------------------------------------------ param groups
    def _global_group_keys(self) -> set[str]:
        return set(SAM_GLOBAL_OPTIONS)

    def _sam_group(self, param_group: dict[str, Any]) -> dict[str, Any]:
        """The group with the wrapper's per-group options filled in and validated."""
        group = dict(param_group)
        wrapper = type(self).__name__
        bad = sorted(set(group) & self._global_group_keys())
        if bad:
            raise ValueError(
                f"{bad} apply to all parameter groups at once: set them in {wrapper}(...), not in "
                "a param group"
            )
        if self._rho_key == "rho" and "sam_rho" in group:  # the base has no rho: both are ours
            if "rho" in group:
                raise ValueError("a param group sets both rho and sam_rho")
            group["rho"] = group.pop("sam_rho")
        for k, v in self._sam_defaults.items():
            group.setdefault(k, v)
        check_number(f"rho ({self._rho_key} of a param group)", group[self._rho_key])
        check_bool("adaptive (of a param group)", group["adaptive"])
        check_bool("adaptive_weights_only (of a param group)", group["adaptive_weights_only"])
        if group["eta"] is not None:
            check_number("eta (of a param group)", group["eta"])
        if group["adaptive"]:
            self._check_asam_group(group)
        return group

    def _check_asam_group(self, group: dict[str, Any]) -> None:
        """adaptive=True must say which ASAM (eta), and the official rule needs names."""
        wrapper = type(self).__name__
        params = group["params"]
        if not isinstance(params, (Tensor, set)):
            group["params"] = params = list(params)  # a generator would be consumed below
        if group["eta"] is None:
            raise ValueError(
                f"{wrapper}(adaptive=True) needs eta=: two ASAMs go by this name. The official "
                f"ASAM (T = |w| + 0.01 on parameters named *weight*, norm layers included): "
                f"{wrapper}(model.named_parameters(), ..., adaptive=True, eta=0.01). davda54's "
                f"adaptive=True (T = |w| on every tensor): {wrapper}(params, ..., adaptive=True, "
                "eta=0, adaptive_weights_only=False)"
            )
        if group["adaptive_weights_only"]:
            names = group.get("param_names")
            if names is None and isinstance(params, list):  # (name, tensor) pairs, not yet split
                names = [q[0] for q in params if isinstance(q, tuple) and len(q) == 2]
            if names is None or isinstance(params, (Tensor, set)) or len(names) != len(params):
                raise ValueError(
                    f"{wrapper}(adaptive=True, adaptive_weights_only=True) rescales the "
                    "parameters whose name contains 'weight' (the official ASAM rule: kernels and "
                    "norm-layer weights, not biases), so it needs their names: pass "
                    "model.named_parameters() as params (torch >= 2.6), or set "
                    "adaptive_weights_only=False to rescale every tensor"
                )

    def _group_rho(self, group: dict[str, Any]) -> float:
        """The group's radius. Writing ``group["rho"] = ...`` during training is how SAM loops
        schedule rho (davda54-style code does it); when the base optimizer has no ``rho`` of its
        own that key is the radius, and a write of ``group["sam_rho"]`` (older code of ours) is
        moved into it here (never silently ignored)."""
        if self._rho_key == "rho" and "sam_rho" in group:
            group["rho"] = group.pop("sam_rho")
        rho = group[self._rho_key]
        check_number(f"rho ({self._rho_key} of a param group)", rho)
        return rho

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to both this wrapper and its base optimizer (they share the list), with
        the wrapper's per-group options validated like the constructor's."""
        group = self._sam_group(param_group)
        base = self.__dict__.get("base_optimizer")
        if base is None:  # inside __init__: the base optimizer does not exist yet
            super().add_param_group(group)
        else:
            base.add_param_group(group)

    # ------------------------------------------------------------------------------ internals
    def _params(self) -> list[tuple[dict, Tensor]]:
        return [(g, p) for g in self.param_groups for p in g["params"]]

    def _use_foreach(self, tensors: Sequence[Tensor]) -> bool:
        if self.foreach is not None:
            return self.foreach
        key = tuple(map(id, tensors))  # the same few lists every step: decide once per list
        use = self._foreach_cache.get(key)
        if use is None:
            if len(self._foreach_cache) > 16:
                self._foreach_cache.clear()
            use = self._foreach_cache[key] = len({t.device for t in tensors}) <= 1
        return use

    def _buffers(self, params: list[Tensor]) -> list[Tensor]:
        """The preallocated backup buffers of ``params`` (made once, reused every step)."""
        key = tuple(map(id, params))
        if self._buffer_cache[0] != key:
            bufs = []
            for p in params:
                b = self._backup.get(p)
                if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                    b = self._backup[p] = torch.empty_like(p, memory_format=torch.preserve_format)
                bufs.append(b)
            self._buffer_cache = (key, bufs)
        return self._buffer_cache[1]

    def _copy(self, dst: list[Tensor], src: list[Tensor]) -> None:
        if self._use_foreach(dst):
            torch._foreach_copy_(dst, src)
        else:
            for d, s in zip(dst, src):
                d.copy_(s)

    def _add(self, dst: list[Tensor], src: list[Tensor]) -> None:
        if self._use_foreach(dst):
            torch._foreach_add_(dst, src)
        else:
            for d, s in zip(dst, src):
                d.add_(s)

    def _asam_scaled(self) -> set[int]:
        """ids of the tensors ASAM's T rescales: in groups with ``adaptive`` and
        ``adaptive_weights_only=False`` all of them; with ``adaptive_weights_only=True`` (the
        official code's ``if 'weight' in name``) those whose parameter name contains "weight"."""
        ids: set[int] = set()
        for g in self.param_groups:
            if not g["adaptive"]:
                continue
            self._check_asam_group(g)  # a loaded checkpoint or a later write may have changed it
            if not g["adaptive_weights_only"]:
                ids.update(id(p) for p in g["params"])
            else:
                ids.update(id(p) for p, n in zip(g["params"], g["param_names"]) if "weight" in n)
        return ids

    def _ascent_sign(self, groups: Iterable[dict[str, Any]]) -> float:
        """-1 when the base optimizer maximizes (``maximize=True``: the update ascends L, so the
        perturbation must descend it), else +1; one objective, so all groups must agree."""
        flags = {bool(g.get("maximize", False)) for g in groups}
        if len(flags) > 1:
            raise ValueError(
                f"{type(self).__name__}: some param groups have maximize=True and others not; "
                "SAM's ascent is over one objective: set maximize the same in every group"
            )
        return -1.0 if flags == {True} else 1.0

    # ------------------------------------------------------------------------------ two-step API
    @torch.no_grad()
    def perturb(
        self,
        grads: Sequence[Tensor | None] | None = None,
        *,
        grad_at: Callable[[], Sequence[Tensor | None]] | None = None,
        iters: int | None = None,
        step_size_mult: float = 1.0,
        rho_scale: float = 1.0,
    ) -> None:
        """w <- w + e(g), saving w. ``grads`` (one entry per parameter, in param-group order)
        default to ``p.grad``; parameters without a gradient are not perturbed.

        ``iters=None`` (``first_step``): the single ascent e(g) of radius rho, no projection
        (for ``normalize=False`` the theory's e = rho g, which may leave the rho-ball).

        ``iters=k >= 1`` (m-SAM's ``--sam_iters``): the original's projected ascent,
        ``functional.multi_step_perturbation``: k steps of radius rho * ``step_size_mult``, each
        followed by the projection onto the rho-ball, so ``iters=1, step_size_mult=2`` gives
        ||e|| = rho and the unnormalized ascent is clipped to the ball. ``grad_at()`` must return
        the gradients at the current (perturbed) weights when k > 1. When the projection cannot
        act (one normalized step with step_size_mult <= 1 stays inside the ball) it is skipped.

        ``rho_scale`` multiplies every group's rho (used to undo a GradScaler's loss scale for the
        unnormalized ascent; single ascent only).
        """
        if self._perturbed:
            raise RuntimeError("SAM.perturb called twice without restore(): call second_step first")
        projected = iters is not None
        if projected:
            if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
                raise ValueError(f"sam_iters must be an integer >= 1 (got {iters!r})")
            check_number("step_size_mult", step_size_mult, positive=True)
            if iters > 1 and grad_at is None:
                raise ValueError("multi-step ascent (iters > 1) needs grad_at")
        needs_projection = projected and (iters > 1 or step_size_mult > 1 or not self.normalize)
        entries = self._params()
        if grads is None:
            grads = [p.grad for _, p in entries]
        elif len(grads) != len(entries):
            raise ValueError(f"grads has {len(grads)} entries, the optimizer {len(entries)} params")
        sel = [(g, p, gr) for (g, p), gr in zip(entries, grads) if gr is not None]
        if not sel:
            return
        rhos = [self._group_rho(grp) * rho_scale for grp, _, _ in sel]
        rho: float | list[float] = rhos[0] if len(set(rhos)) == 1 else rhos
        if needs_projection:
            if self.layerwise:
                raise ValueError(
                    "projected ascent (sam_iters > 1, step_size_mult > 1 or normalize=False) has "
                    "one rho-ball; layerwise=True has per-tensor radii"
                )
            if isinstance(rho, list):
                raise ValueError(
                    "projected ascent (m-SAM's sam_iters) needs one rho for all groups"
                )
            if rho_scale != 1.0:
                raise ValueError("rho_scale applies to the single ascent only (iters=None)")
        params = [p for _, p, _ in sel]
        # A sparse gradient enters the ascent as its dense equivalent: e(g) is the same function
        # of the values (zero rows stay zero for p = 2 and ASAM), and w + e is dense anyway.
        gs = [gr.to_dense() if gr.is_sparse else gr for _, _, gr in sel]
        sign = self._ascent_sign(grp for grp, _, _ in sel)
        if sign < 0:  # the base optimizer maximizes: the adversary of -L descends L
            gs = [-g for g in gs]
            if grad_at is not None:
                inner = grad_at

                def grad_at() -> list[Tensor | None]:  # type: ignore[misc]
                    return [None if g is None else -g for g in inner()]

        backup = self._buffers(params)
        self._copy(backup, params)
        scale = None
        if any(grp["adaptive"] for grp, _, _ in sel):
            scaled = self._asam_scaled()
            scale = [
                F.asam_scale([w], grp["eta"], weights_only=False)[0] if id(p) in scaled else None
                for (grp, p, _), w in zip(sel, backup)
            ]
        kw = dict(normalize=self.normalize, scale=scale, eps=self.eps)
        foreach = self._use_foreach(params)
        self._perturbed = params
        if not needs_projection:
            if projected and step_size_mult != 1.0:  # one step of radius rho * mult <= rho
                m = step_size_mult
                rho = [r * m for r in rho] if isinstance(rho, list) else rho * m
            lw = backup if self.layerwise else None
            # params now hold e
            F.perturbation(gs, rho, self.p, out=params, layerwise_weights=lw, foreach=foreach, **kw)
        else:
            index = {id(p): i for i, (_, p) in enumerate(entries)}

            def grad_at_e(e: list[Tensor]) -> list[Tensor]:
                self._copy(params, backup)
                self._add(params, e)
                _drop_autocast_casts()
                with torch.enable_grad():
                    new = grad_at()  # type: ignore[misc]
                out = [new[index[id(p)]] for p in params]
                return [
                    torch.zeros_like(p) if g is None else g.to_dense() if g.is_sparse else g
                    for p, g in zip(params, out)
                ]

            e = F.multi_step_perturbation(
                grad_at_e, gs, rho, iters, step_size_mult, self.p, foreach=foreach, **kw
            )
            self._copy(params, e)
        self._add(params, backup)
        _drop_autocast_casts()

    @torch.no_grad()
    def restore(self) -> None:
        """w <- the weights saved by ``perturb`` (an exact copy, not w + e - e)."""
        self._first_done = False
        if self._perturbed:
            self._copy(self._perturbed, self._buffers(self._perturbed))
            self._perturbed = []
            _drop_autocast_casts()

    @torch.no_grad()
    def update(self, scaler: Any = None) -> None:
        """Clip the update gradient (if ``max_grad_norm``) and take the base optimizer's step.

        With an ``torch.amp.GradScaler`` the gradients are unscaled first and the step is skipped
        on inf/NaN, as ``scaler.step`` does; call ``scaler.update()`` afterwards yourself.
        """
        if scaler is not None and self.max_grad_norm is not None:
            scaler.unscale_(self.base_optimizer)
        if self.max_grad_norm is not None:
            ps = [p for _, p in self._params() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(ps, self.max_grad_norm, foreach=self._use_foreach(ps))
        if scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        self._opt_called = True  # an LR scheduler attached to this object checks it

    def first_step(self, zero_grad: bool = False, scaler: Any = None) -> bool:
        """w <- w + e(grad L(w)). Returns True (an ascent was taken; LookSAM may return False).

        With a GradScaler pass it here too: the normalized ascent is invariant to the loss scale,
        the unnormalized one is divided by it.
        """
        if self._first_done:
            raise RuntimeError(
                f"{type(self).__name__}.first_step called twice: call second_step() after the "
                "second backward"
            )
        rho_scale = 1.0
        if scaler is not None and not self.normalize and scaler.is_enabled():
            rho_scale = 1.0 / float(scaler.get_scale())
        self.perturb(rho_scale=rho_scale)
        self._first_done = True
        if zero_grad:
            self.zero_grad()
        return True

    def _check_first_done(self) -> None:
        if not self._first_done:
            raise RuntimeError(
                f"{type(self).__name__}.second_step called without first_step: the order is "
                "backward, first_step, backward at w + e, second_step (or step(closure) after "
                "the first backward)"
            )

    def second_step(self, zero_grad: bool = False, scaler: Any = None) -> None:
        """Restore w, then step the base optimizer with the gradient taken at w + e (RuntimeError
        without a ``first_step`` before it)."""
        self._check_first_done()
        self.restore()
        self.update(scaler)
        if zero_grad:
            self.zero_grad()

    # ``scaler.step(opt, closure)`` would unscale only the first gradient and step with the
    # still-scaled second one; with this flag torch's GradScaler calls ``step`` directly (setting
    # ``grad_scale`` / ``found_inf`` on us), where it is refused with the spelling that works.
    _step_supports_amp_scaling = True

    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, scaler: Any = None
    ) -> Any:
        """first_step, closure() (the forward-backward at w + e, run with grad enabled),
        second_step. The caller must already have run the first forward-backward. Returns the
        closure's loss. With a GradScaler: ``opt.step(closure, scaler=scaler)``, then
        ``scaler.update()`` (``scaler.step(opt, closure)`` is refused: it cannot unscale the
        second pass's gradient)."""
        self._refuse_scaler_step()
        if closure is None:
            raise ValueError(
                f"{type(self).__name__}.step needs a closure that runs forward and backward (the "
                "second pass); or call first_step() and second_step() yourself"
            )
        self.first_step(zero_grad=True, scaler=scaler)
        with torch.enable_grad():
            loss = closure()
        self.second_step(scaler=scaler)
        return loss

    def _refuse_scaler_step(self) -> None:
        if "grad_scale" in self.__dict__ or "found_inf" in self.__dict__:
            self.__dict__.pop("grad_scale", None)  # the scaler deletes them only on success
            self.__dict__.pop("found_inf", None)
            raise RuntimeError(
                f"scaler.step({type(self).__name__.lower()}, ...) cannot work: the scaler unscales "
                "the first gradient only and the closure's gradient (at w + e) would step still "
                "scaled. Write opt.step(closure, scaler=scaler) then scaler.update(); or "
                "first_step(scaler=scaler), backward, second_step(scaler=scaler)"
            )

    # ------------------------------------------------------------------------------ state
    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict (its ``param_groups`` include rho etc.) plus, under
        ``"sam"``, this wrapper's own state. Tensors and plain types only (weights_only-loadable).
        """
        sd = self.base_optimizer.state_dict()
        sd["sam"] = self._extra_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load a ``state_dict()`` of this wrapper, of an older version of it, of davda54's SAM
        or of pytorch-optimizer's SAM (both keep the radius under ``"rho"`` and the ASAM flag
        under ``"adaptive"`` in the groups).

        - The radius is moved to this wrapper's key (``"rho"``, or ``"sam_rho"`` with a base
          optimizer that has its own rho); older checkpoints of ours have ``"sam_rho"``.
        - Group options a peer does not store are filled in: a peer's ``adaptive=True`` means
          T = |w| on every tensor, i.e. ``eta=0, adaptive_weights_only=False`` (a UserWarning
          says so when this wrapper was built with other values); the rest from the constructor.
        - The peers' per-parameter ``"old_p"`` weight copies are dropped (the weights are in the
          model; keeping them would carry a copy of the model in every later checkpoint).
        - Under ``"sam"``, this wrapper's own state (LookSAM's counter and g_v).
        """
        sd = dict(state_dict)
        extra = sd.pop("sam", {})
        groups = []
        for g in sd.get("param_groups", []):
            g = dict(g)
            if self._rho_key == "rho" and "sam_rho" in g:
                g["rho"] = g.pop("sam_rho")
            if "eta" not in g:  # a peer's group (davda54 / pytorch-optimizer): their ASAM
                if g.get("adaptive") is True:
                    peer = {"eta": 0.0, "adaptive_weights_only": False}
                    mine = {k: self._sam_defaults[k] for k in peer}
                    if mine != peer:
                        warnings.warn(
                            f"{type(self).__name__}.load_state_dict: the checkpoint's "
                            "adaptive=True has no eta (davda54 / pytorch-optimizer): it is loaded "
                            f"as their ASAM, eta=0, adaptive_weights_only=False (not {mine})",
                            UserWarning,
                            stacklevel=2,
                        )
                    g.update(peer)
                for k, v in self._sam_defaults.items():
                    g.setdefault(k, v)
            groups.append(g)
        if "param_groups" in sd:
            sd["param_groups"] = groups
        if "state" in sd:  # the peers' weight copies ("old_p") are scratch, not optimizer state
            sd["state"] = {
                i: {k: v for k, v in st.items() if k != "old_p"} for i, st in sd["state"].items()
            }
            sd["state"] = {i: st for i, st in sd["state"].items() if st}
        self.base_optimizer.load_state_dict(sd)
        # Optimizer.load_state_dict rebuilds the group dicts and the state: share them again.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._load_extra_state(extra)

    # torch's Optimizer pickles only defaults/state/param_groups; copy and pickle all of it
    # (base optimizer, buffers, LookSAM's state), keeping the shared groups shared.
    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base={type(self.base_optimizer).__name__}, "
            f"rho={self._group_rho(self.param_groups[0])}, p={self.p}, "
            f"normalize={self.normalize}, adaptive={self.param_groups[0]['adaptive']})"
        )


class LookSAM(SAM):
    """LookSAM (Liu et al. 2022): the SAM gradient only every k-th step, a cheap proxy between.

    On ascent steps (t mod k == 0): g = grad L(w), g_s = grad L(w + e(g)); the part of g_s
    orthogonal to g, g_v = g_s - (<g, g_s>/||g||^2) g, is stored; the update uses g_s.
    On the other steps only one forward-backward is run, and the update uses
    g + alpha (||g|| / ||g_v||) g_v. Norms and inner products are global (the paper's vector form),
    or per tensor with ``layerwise=True``, which also switches the ascent to the trust-ratio
    (Look-LayerSAM) perturbation e_l = rho ||w_l|| g_l / ||g_l||. ``sam_eps`` enters every
    denominator as in ``functional`` (added to the norms).

    The skipped steps really skip the second pass: ``first_step`` returns False, and
    ``step(closure)`` does not call the closure. Both loops are correct:

    - LookSAM-aware: ``if opt.first_step(zero_grad=True): <second backward>``, then
      ``second_step``;
    - the familiar SAM loop with an unconditional second backward: on a skipped step,
      ``first_step`` keeps the first pass's gradients aside (and clears ``p.grad`` with
      ``zero_grad=True``), and ``second_step`` puts them back, ignoring what the extra backward
      (a second gradient at the same w) accumulated.

    ``rho=0`` is the base optimizer bit for bit (no direction is stored). With a GradScaler, an
    ascent step whose gradients overflow stores no direction and does not count: the next step
    is an ascent step again (the scaler skips the update and lowers the scale, as with SAM).

    DistributedDataParallel, per-worker ascent (``sharpness.local_grads`` around every first
    backward, as for SAM): on an ascent step each worker perturbs with its own g and keeps its own
    g_v, and the second backward averages the SAM gradients; on the other steps each worker forms
    g + alpha (||g|| / ||g_v||) g_v from its own g and g_v, and ``second_step`` averages these
    over the workers (one all-reduce), so every replica takes the same update: the average of the
    per-worker LookSAM gradients, as SAM's update is the average of the per-worker SAM gradients.
    ``looksam_sync=None`` does this whenever ``torch.distributed`` is initialized with more than
    one process; False never (independent models per process).

    Sparse gradients are refused (the reuse step adds the dense g_v to g): use SAM, or dense ones.

    Args (besides SAM's):
        k: the period (an ascent every k steps); ``k=1`` is SAM.
        alpha: the reuse weight, a finite number >= 0 (the paper uses 0.7), the familiar alias of
            ``looksam_alpha``; refused as ambiguous when the base optimizer has its own alpha
            (RMSprop, ASGD): then ``looksam_alpha=`` is LookSAM's and ``alpha=`` the base's.
        looksam_sync: average the reuse steps' gradients over the ``torch.distributed`` default
            group (None: when it is initialized with world size > 1; True: required; False: never).
    """

    looksam_step = _kept("looksam_step", "Steps taken so far (an ascent when it is 0 mod k).")
    _gv = _kept("gv", "Per parameter: g during an ascent step, then g_v.")
    _ascent_params = _kept("ascent_params", "The parameters of the current ascent step.")
    _ascending = _kept("ascending", "Between first_step and second_step of an ascent step.")
    _stash = _kept("stash", "A skipped step's first-pass gradients, for second_step.")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        base_optimizer: Callable[..., Optimizer],
        rho: float | None = None,
        k: int = 5,
        alpha: float | None = None,
        layerwise: bool = False,
        *,
        looksam_alpha: float | None = None,
        looksam_sync: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if looksam_sync is not None:
            check_bool("looksam_sync", looksam_sync)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1 (got {k!r})")
        if isinstance(base_optimizer, Optimizer) or not callable(base_optimizer):
            alpha = 0.7  # SAM.__init__ reports the bad base_optimizer
        else:
            base_kw, _ = base_keywords(base_optimizer)
            route = (base_kw, optimizer_name(base_optimizer), kwargs)
            alpha = resolve_alias(
                "LookSAM", "alpha", "looksam_alpha", alpha, looksam_alpha, 0.7, *route
            )
        check_number("alpha", alpha)
        super().__init__(params, base_optimizer, rho=rho, layerwise=layerwise, **kwargs)
        self.k = k
        self.alpha = float(alpha)  # type: ignore[arg-type]
        self.looksam_step = 0
        self._gv, self._ascent_params, self._ascending, self._stash = {}, [], False, None
        self.sync = looksam_sync

    def _global_group_keys(self) -> set[str]:
        keys = super()._global_group_keys() | set(LOOKSAM_GLOBAL_OPTIONS)
        if "alpha" not in self._base_kw:
            keys.add("alpha")  # LookSAM's alpha is one value for all groups
        return keys

    @property
    def ascent_due(self) -> bool:
        """Whether the next step computes the SAM gradient (needs the second forward-backward)."""
        return self.looksam_step % self.k == 0

    def _rho_is_zero(self) -> bool:
        return all(self._group_rho(g) == 0 for g in self.param_groups)

    def _world(self) -> int:
        """The number of processes to average the reuse gradients over (1: no averaging)."""
        dist = torch.distributed
        on = dist.is_available() and dist.is_initialized()
        if self.sync is True and not on:
            raise RuntimeError("LookSAM(looksam_sync=True) needs torch.distributed initialized")
        if self.sync is False or not on:
            return 1
        return dist.get_world_size()

    def _check_dense(self) -> None:
        if self._rho_is_zero():
            return
        for gi, g in enumerate(self.param_groups):
            names = g.get("param_names")
            for i, p in enumerate(g["params"]):
                if p.grad is not None and p.grad.is_sparse:
                    what = repr(names[i]) if names else f"{i} of param group {gi}"
                    raise ValueError(
                        f"LookSAM: parameter {what} (shape {tuple(p.shape)}) has a sparse "
                        "gradient; the reuse step adds the dense direction g_v to it. Use SAM "
                        "(sparse gradients work there) or a dense gradient (e.g. nn.Embedding("
                        "..., sparse=False))"
                    )

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, scaler: Any = None) -> bool:
        """On an ascent step: keep g, then SAM's first step (returns True). On the other steps:
        keep the gradients aside for ``second_step`` (clearing ``p.grad`` with ``zero_grad``) and
        return False: no second backward is needed, and one run anyway is ignored."""
        self._check_dense()
        if not self.ascent_due:
            if self._first_done:
                raise RuntimeError(
                    "LookSAM.first_step called twice: call second_step() after the backward"
                )
            self._stash = [(p, p.grad) for _, p in self._params()]
            self._first_done = True
            if zero_grad:
                self.zero_grad()
            return False
        ps = [p for _, p in self._params() if p.grad is not None]
        if self._rho_is_zero():  # no direction at rho = 0 (g_s = g): the base optimizer's steps
            self._gv = {}
        else:  # keep g: its buffer becomes g_v in second_step
            bufs = []
            for p in ps:
                buf = self._gv.get(p)
                if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
                    buf = torch.empty_like(p)
                bufs.append(buf)
            self._copy(bufs, [p.grad for p in ps])
            self._gv = dict(zip(ps, bufs))
        self._ascent_params = ps
        self._ascending = True
        return super().first_step(zero_grad, scaler)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: Any = None) -> None:
        """Take the update after ``first_step`` (RuntimeError without one). On an ascent step:
        restore w, store g_v = g_s - (<g, g_s> / ||g||^2) g, step with g_s. On the other steps:
        put back the first pass's gradients g (ignoring any second backward), step with
        g + alpha (||g|| / ||g_v||) g_v, averaged over the workers under torch.distributed (see
        the class docstring)."""
        self._check_first_done()
        advance = True
        if self._ascending:
            self._ascending = False
            self.restore()
            ps = [p for p in self._ascent_params if p.grad is not None and p in self._gv]
            if not ps:  # rho = 0 (first_step kept no g) or no gradient
                self._gv = {}
            else:
                gv = [self._gv[p] for p in ps]
                foreach = self._use_foreach(ps)
                F.looksam_orthogonal(
                    gv,
                    [p.grad for p in ps],
                    per_tensor=self.layerwise,
                    eps=self.eps,
                    out=gv,
                    foreach=foreach,
                )
                self._gv = dict(zip(ps, gv))
                if scaler is not None and scaler.is_enabled():
                    # An overflow in either pass makes g_v non-finite: keep no direction and
                    # retry the ascent next step (the scaler skips this update). Workers decide
                    # together (one worker's local first pass may overflow alone).
                    bad = (~torch.isfinite(F.lp_norm(gv, math.inf, foreach=foreach))).float()
                    if self._world() > 1:
                        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
                    if bad.item():
                        self._gv = {}
                        advance = False
        else:
            self._first_done = False
            if self._stash is not None:  # the first pass's gradients, whatever came since
                for p, g in self._stash:
                    p.grad = g
                self._stash = None
            ps = [p for _, p in self._params() if p.grad is not None and p in self._gv]
            if ps:
                gs = [p.grad for p in ps]
                F.looksam_reuse(
                    gs,
                    [self._gv[p] for p in ps],
                    self.alpha,
                    per_tensor=self.layerwise,
                    eps=self.eps,
                    out=gs,
                    foreach=self._use_foreach(ps),
                )
            self._average_grads()
        self.update(scaler)
        if advance:
            self.looksam_step += 1
        if zero_grad:
            self.zero_grad()

    def _average_grads(self) -> None:
        """p.grad <- the mean of p.grad over the workers (a reuse step under torch.distributed).
        Each worker's gradient there is its own g + alpha (||g|| / ||g_v||) g_v (g_v differs per
        worker), so without this the replicas would take different updates and drift apart."""
        world = self._world()
        if world == 1:
            return
        grads = [p.grad for _, p in self._params() if p.grad is not None]
        works = [torch.distributed.all_reduce(g, async_op=True) for g in grads]
        for w in works:
            w.wait()
        for g in grads:
            g.div_(world)

    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, scaler: Any = None
    ) -> Any:
        """Like SAM.step, but the closure runs only on ascent steps (1 in k); returns its loss
        or None on the other steps."""
        self._refuse_scaler_step()
        if closure is None:
            raise ValueError("LookSAM.step needs a closure that runs the second forward-backward")
        loss = None
        if self.first_step(zero_grad=True, scaler=scaler):
            with torch.enable_grad():
                loss = closure()
        self.second_step(scaler=scaler)
        return loss

    def _extra_state(self) -> dict:
        index = {id(p): i for i, (_, p) in enumerate(self._params())}
        return {
            "looksam_step": self.looksam_step,
            "g_v": {index[id(p)]: v.clone() for p, v in self._gv.items() if id(p) in index},
        }

    def _load_extra_state(self, extra: dict) -> None:
        params = [p for _, p in self._params()]
        self.looksam_step = int(extra.get("looksam_step", 0))
        self._gv = {}
        for i, v in extra.get("g_v", {}).items():
            p = params[int(i)]
            self._gv[p] = v.to(device=p.device, dtype=p.dtype).clone()
