"""SAM and LookSAM as ``torch.optim.Optimizer`` wrappers around a base optimizer.

SAM (Foret et al. 2021) minimizes max_{||e||_p <= rho} L(w + e) with the first-order ascent
e(w) of ``sharpness.functional.perturbation`` and the update w <- base_step(w, grad L(w + e(w))).
The calling convention is the one researchers know from the popular wrapper:

    loss_fn(model(x), y).backward()          # gradient at w
    opt.first_step(zero_grad=True)           # w <- w + e(w)
    loss_fn(model(x), y).backward()          # gradient at w + e
    opt.second_step(zero_grad=True)          # w restored, base optimizer steps

or ``opt.step(closure)`` after the first backward, with a closure that runs the second
forward-backward. Differences from that wrapper, each a reported defect there:
``state_dict()`` carries the base optimizer's state (momentum), so a resumed run continues exactly;
``rho=0`` reproduces the base optimizer bit for bit; the weights are restored by copying from one
preallocated buffer; gradient clipping (``max_grad_norm``) applies only to the gradient used for
the update (clipping the ascent gradient is meaningless: the ascent is normalized); one
``torch._foreach_*`` path and a per-tensor loop path (the ground truth in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from sharpness import functional as F

__all__ = ["SAM", "LookSAM"]


def _check_nonneg_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0 (got {value!r})")


class SAM(Optimizer):
    """Sharpness-Aware Minimization around ``base_optimizer`` (a class, built with ``**kwargs``).

    Args:
        params: parameters or parameter groups (groups may set their own ``rho``, ``adaptive``,
            ``eta``, ``adaptive_weights_only`` next to the base optimizer's options).
        base_optimizer: the optimizer class that takes the update step, e.g. ``torch.optim.SGD``.
        rho: radius of the ascent (per group). ``rho=0`` is exactly the base optimizer.
        p: the ball's norm, in (1, inf]; ``float('inf')`` gives e = rho sign(g). Global over groups.
        adaptive: ASAM, e = T * ascent(T g) with T = |w| + eta (p=2: rho T^2 g / ||T g||).
        eta: ASAM's offset (0.01 as in the official code; 0 as in the popular port).
        adaptive_weights_only: apply T only to tensors of dimension >= 2 (biases and normalization
            parameters get plain SAM), as the official ASAM does; False rescales every tensor.
        normalize: False gives the theory's unnormalized ascent e = rho g.
        layerwise: per-tensor norms with a trust ratio, e_l = rho ||w_l|| g_l / ||g_l|| (the
            Look-LayerSAM perturbation of LookSAM's paper).
        max_grad_norm: clip the *update* gradient (at w + e) to this global 2-norm.
        eps: added to norms in denominators (a zero gradient gives a zero perturbation).
        foreach: use ``torch._foreach_*`` kernels (default: when all parameters share a device).
        **kwargs: the base optimizer's options (lr, momentum, weight_decay, ...).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        p: float = 2.0,
        adaptive: bool = False,
        eta: float = 0.01,
        adaptive_weights_only: bool = True,
        normalize: bool = True,
        layerwise: bool = False,
        max_grad_norm: float | None = None,
        eps: float = 1e-12,
        foreach: bool | None = None,
        **kwargs: Any,
    ) -> None:
        _check_nonneg_number("rho", rho)
        _check_nonneg_number("eta", eta)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 1:
            raise ValueError(f"p must be a number in (1, inf] (got {p!r})")
        if max_grad_norm is not None:
            _check_nonneg_number("max_grad_norm", max_grad_norm)
            if max_grad_norm == 0:
                raise ValueError("max_grad_norm must be > 0 (or None for no clipping)")
        _check_nonneg_number("eps", eps)
        if isinstance(base_optimizer, Optimizer) or not callable(base_optimizer):
            raise ValueError(
                "base_optimizer must be an optimizer class such as torch.optim.SGD (its options go "
                f"in **kwargs), got {type(base_optimizer).__name__}"
            )
        defaults = dict(
            rho=float(rho),
            adaptive=bool(adaptive),
            eta=float(eta),
            adaptive_weights_only=bool(adaptive_weights_only),
            **kwargs,
        )
        super().__init__(params, defaults)
        for g in self.param_groups:
            _check_nonneg_number("rho (param group)", g["rho"])
            _check_nonneg_number("eta (param group)", g["eta"])
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
        self.normalize = bool(normalize)
        self.layerwise = bool(layerwise)
        self.max_grad_norm = max_grad_norm
        self.eps = float(eps)
        self.foreach = foreach
        self._backup: dict[Tensor, Tensor] = {}  # scratch: w while perturbed; not in state_dict
        self._buffer_cache: tuple[tuple, list[Tensor]] = ((), [])
        self._foreach_cache: dict[tuple, bool] = {}
        self._perturbed: list[Tensor] = []

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

    # ------------------------------------------------------------------------------ two-step API
    @torch.no_grad()
    def perturb(
        self,
        grads: Sequence[Tensor | None] | None = None,
        *,
        grad_at: Callable[[], Sequence[Tensor | None]] | None = None,
        iters: int = 1,
        step_size_mult: float = 1.0,
        rho_scale: float = 1.0,
    ) -> None:
        """w <- w + e(g), saving w. ``grads`` (one entry per parameter, in param-group order)
        default to ``p.grad``; parameters without a gradient are not perturbed.

        ``iters > 1`` is multi-step projected ascent (``functional.multi_step_perturbation``):
        ``grad_at()`` must return the gradients at the current (perturbed) weights.
        ``rho_scale`` multiplies every group's rho (used to undo a GradScaler's loss scale for the
        unnormalized ascent).
        """
        if self._perturbed:
            raise RuntimeError("SAM.perturb called twice without restore(): call second_step first")
        entries = self._params()
        if grads is None:
            grads = [p.grad for _, p in entries]
        elif len(grads) != len(entries):
            raise ValueError(f"grads has {len(grads)} entries, the optimizer {len(entries)} params")
        sel = [(g, p, gr) for (g, p), gr in zip(entries, grads) if gr is not None]
        if not sel:
            return
        params = [p for _, p, _ in sel]
        gs = [gr for _, _, gr in sel]
        backup = self._buffers(params)
        self._copy(backup, params)
        rhos = [grp["rho"] * rho_scale for grp, _, _ in sel]
        rho: float | list[float] = rhos[0] if len(set(rhos)) == 1 else rhos
        scale = None
        if any(grp["adaptive"] for grp, _, _ in sel):
            scale = [
                F.asam_scale([w], grp["eta"], grp["adaptive_weights_only"])[0]
                if grp["adaptive"]
                else None
                for (grp, _, _), w in zip(sel, backup)
            ]
        kw = dict(
            normalize=self.normalize,
            scale=scale,
            layerwise_weights=backup if self.layerwise else None,
            eps=self.eps,
            foreach=self._use_foreach(params),
        )
        self._perturbed = params
        if iters == 1:
            F.perturbation(gs, rho, self.p, out=params, **kw)  # params now hold e
        else:
            if isinstance(rho, list):
                raise ValueError("multi-step ascent (sam_iters > 1) needs one rho for all groups")
            index = {id(p): i for i, (_, p) in enumerate(entries)}

            def grad_at_e(e: list[Tensor]) -> list[Tensor]:
                self._copy(params, backup)
                self._add(params, e)
                with torch.enable_grad():
                    new = grad_at()
                return [
                    torch.zeros_like(p) if new[index[id(p)]] is None else new[index[id(p)]]
                    for p in params
                ]

            e = F.multi_step_perturbation(grad_at_e, gs, rho, iters, step_size_mult, self.p, **kw)
            self._copy(params, e)
        self._add(params, backup)

    @torch.no_grad()
    def restore(self) -> None:
        """w <- the weights saved by ``perturb`` (an exact copy, not w + e - e)."""
        if self._perturbed:
            self._copy(self._perturbed, self._buffers(self._perturbed))
            self._perturbed = []

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
        rho_scale = 1.0
        if scaler is not None and not self.normalize and scaler.is_enabled():
            rho_scale = 1.0 / float(scaler.get_scale())
        self.perturb(rho_scale=rho_scale)
        if zero_grad:
            self.zero_grad()
        return True

    def second_step(self, zero_grad: bool = False, scaler: Any = None) -> None:
        """Restore w, then step the base optimizer with the gradient taken at w + e."""
        self.restore()
        self.update(scaler)
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """first_step, closure() (the forward-backward at w + e, run with grad enabled),
        second_step. The caller must already have run the first forward-backward. Returns the
        closure's loss."""
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure that runs forward and backward (the second pass); "
                "or call first_step() and second_step() yourself"
            )
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

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
        sd = dict(state_dict)
        extra = sd.pop("sam", {})
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
            f"rho={self.param_groups[0]['rho']}, p={self.p}, normalize={self.normalize}, "
            f"adaptive={self.param_groups[0]['adaptive']})"
        )


class LookSAM(SAM):
    """LookSAM (Liu et al. 2022): the SAM gradient only every k-th step, a cheap proxy between.

    On ascent steps (t mod k == 0): g = grad L(w), g_s = grad L(w + e(g)); the part of g_s
    orthogonal to g, g_v = g_s - (<g, g_s>/||g||^2) g, is stored; the update uses g_s.
    On the other steps only one forward-backward is run, and the update uses
    g + alpha (||g|| / ||g_v||) g_v. Norms and inner products are global (the paper's vector form),
    or per tensor with ``layerwise=True``, which also switches the ascent to the trust-ratio
    (Look-LayerSAM) perturbation e_l = rho ||w_l|| g_l / ||g_l||.

    The skipped steps really skip the second pass: ``first_step`` returns False and leaves the
    gradients untouched (``zero_grad`` is ignored then), and ``step(closure)`` does not call the
    closure. ``k=1`` is SAM.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        k: int = 5,
        alpha: float = 0.7,
        layerwise: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1 (got {k!r})")
        _check_nonneg_number("alpha", alpha)
        super().__init__(params, base_optimizer, rho=rho, layerwise=layerwise, **kwargs)
        self.k = k
        self.alpha = float(alpha)
        self.looksam_step = 0
        self._gv: dict[Tensor, Tensor] = {}  # g during an ascent step, then g_v
        self._ascent_params: list[Tensor] = []

    @property
    def ascent_due(self) -> bool:
        """Whether the next step computes the SAM gradient (needs the second forward-backward)."""
        return self.looksam_step % self.k == 0

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, scaler: Any = None) -> bool:
        if not self.ascent_due:
            return False
        ps = [p for _, p in self._params() if p.grad is not None]
        for p in ps:  # keep g: the buffer becomes g_v in second_step
            buf = self._gv.get(p)
            if buf is None or buf.shape != p.shape:
                buf = self._gv[p] = torch.empty_like(p)
        self._copy([self._gv[p] for p in ps], [p.grad for p in ps])
        self._ascent_params = ps
        return super().first_step(zero_grad, scaler)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: Any = None) -> None:
        if self._perturbed:
            self.restore()
            ps = [p for p in self._ascent_params if p.grad is not None]
            gv = [self._gv[p] for p in ps]
            F.looksam_orthogonal(
                gv,
                [p.grad for p in ps],
                per_tensor=self.layerwise,
                out=gv,
                foreach=self._use_foreach(ps),
            )
        else:
            ps = [p for _, p in self._params() if p.grad is not None and p in self._gv]
            if ps:
                gs = [p.grad for p in ps]
                F.looksam_reuse(
                    gs,
                    [self._gv[p] for p in ps],
                    self.alpha,
                    per_tensor=self.layerwise,
                    out=gs,
                    foreach=self._use_foreach(ps),
                )
        self.update(scaler)
        self.looksam_step += 1
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Like SAM.step, but the closure runs only on ascent steps (1 in k); returns its loss
        or None on the other steps."""
        if closure is None:
            raise ValueError("LookSAM.step needs a closure that runs the second forward-backward")
        loss = None
        if self.first_step(zero_grad=True):
            with torch.enable_grad():
                loss = closure()
        self.second_step()
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
