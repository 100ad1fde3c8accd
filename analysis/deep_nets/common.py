"""What the seven deep-net experiments share: the run of one method on a profile's base config,
the setting sentence of captions and notes, and the caption text of an ``Experiment``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.deep_nets.runs import Spec
from suite.claims import mean_std
from suite.stage import StageContext

PAPER = "Towards Understanding SAM"


def method(
    P: dict[str, Any],
    seed: int,
    *,
    base: str = "base",
    rho: float = 0.0,
    acc: int = 1,
    variant: str = "sam",
    prev: bool = False,
    unnorm: bool = False,
    start: float = 0.0,
    end: float = 1.0,
    gauss: float = 0.0,
) -> Spec:
    """The run of one method on the profile's ``base`` config (SAM flags set explicitly so that
    a paper base config's own SAM settings never leak into the ERM run). ``prev``: the original's
    n-SAM (``--sam_use_prev_batch``); ``gauss``: the original's random baseline
    (``--add_weight_perturb_scale``, Gaussian per coordinate, SAM off)."""
    flags = {
        **P[base],
        "sam_rho": rho,
        "acc_steps": acc,
        "sam_variant": variant,
        "sam_perturb_batch": "same",
        "sam_use_prev_batch": prev,
        "sam_no_grad_norm": unnorm,
        "sam_epoch_frac_start": start,
        "sam_epoch_frac_end": end,
        "add_weight_perturb_scale": gauss,
        "mul_weight_perturb_scale": 0.0,
    }
    if variant == "looksam":
        flags["looksam_k"] = P["looksam_k"]
    return Spec.make(flags, seed)


def m_of(P: dict[str, Any], acc: int, base: str = "base") -> int:
    """The m of m-SAM: examples per ascent = batch size / accumulation steps."""
    return P[base].get("batch_size", 128) // acc


def setting(P: dict[str, Any], base: str = "base") -> str:
    """'<model> on <data>, <epochs> epochs, <n> seed(s)' of the profile's ``base`` config."""
    b = P[base]
    frac = b.get("frac_train", 1.0)
    data = b["dataset"] + (f" ({frac:.0%} of train)" if frac < 1 else "")
    return f"{b['model']} on {data}, {b['epochs']} epochs, {len(P['seeds'])} seed(s)"


def per_seed(P: dict[str, Any], fn: Callable[[int], Spec]) -> list[Spec]:
    """The runs of one method, one per seed of the profile."""
    return [fn(s) for s in P["seeds"]]


def rel(path: Path) -> str:
    """A figure as the claims table names it."""
    return f"figures/{Path(path).name}"


def mean_sd(v: list[float]) -> tuple[float, float]:
    """(mean, std) for a bar with an error bar (std 0 for one value)."""
    m_, s_, _ = mean_std(v)
    return m_, 0.0 if math.isnan(s_) else s_


@dataclass(frozen=True)
class Caption:
    """A caption line of a deep-net figure: ``template`` with ``{setting}`` (the profile's model,
    data, epochs and seeds of the ``base`` config) and the profile's settings (``{rho}``, ...)."""

    template: str
    base: str = "base"

    def __call__(self, ctx: StageContext) -> str:
        return self.template.format(setting=setting(ctx.P, self.base), **ctx.P)
