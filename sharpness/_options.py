"""The wrappers' option rules: which keyword goes to the base optimizer and which to SAM/LookSAM,
and the validation of the wrappers' own values (``sharpness.optim`` uses them).

Every keyword the base optimizer accepts goes to it unchanged. The wrappers' own options have names
no ``torch.optim`` optimizer uses (tests/test_keywords.py walks them all). Two familiar aliases,
``rho`` (SAM's radius) and ``alpha`` (LookSAM's reuse weight), are refused as ambiguous when the
base optimizer has an option of that name; ``eps``/``foreach`` meaning the wrapper's (older code)
are accepted, with a FutureWarning, only when the base optimizer cannot take them.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer

# Per-group options of the wrappers (they live in the param groups shared with the base
# optimizer, so their names must not be any optimizer's group keys) and options that apply to
# all groups at once (refused in a param group rather than silently ignored there).
GROUP_OPTIONS = ("sam_rho", "adaptive", "eta", "adaptive_weights_only")
SAM_GLOBAL_OPTIONS = ("p", "normalize", "layerwise", "max_grad_norm", "sam_eps", "sam_foreach")
LOOKSAM_GLOBAL_OPTIONS = ("k", "looksam_alpha", "looksam_sync")


def check_number(name: str, value: Any, positive: bool = False) -> None:
    """A finite real number >= 0 (> 0 with ``positive``); bools are not numbers here."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value > 0 if positive else value >= 0):
        raise ValueError(
            f"{name} must be a finite number {'>' if positive else '>='} 0 (got {value!r})"
        )


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False (got {value!r})")


def base_keywords(base_optimizer: Callable[..., Optimizer]) -> tuple[frozenset[str], bool]:
    """(the keyword names ``base_optimizer`` declares, whether it also takes **kwargs)."""
    try:
        sig = inspect.signature(base_optimizer)
    except (TypeError, ValueError):  # no signature: assume it takes anything
        return frozenset(), True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = frozenset(n for n, prm in sig.parameters.items() if prm.kind in kinds)
    var_kw = any(prm.kind == inspect.Parameter.VAR_KEYWORD for prm in sig.parameters.values())
    return names, var_kw


def optimizer_name(base_optimizer: Any) -> str:
    return getattr(base_optimizer, "__name__", type(base_optimizer).__name__)


def resolve_alias(
    wrapper: str,
    alias: str,
    canonical: str,
    alias_value: Any,
    canonical_value: Any,
    default: Any,
    base_kw: frozenset[str],
    base_name: str,
    kwargs: dict[str, Any],
) -> Any:
    """The wrapper's value of ``canonical`` given the familiar ``alias`` (rho, alpha).

    If the base optimizer declares ``alias`` itself, ``alias=`` alone is ambiguous and refused;
    with ``canonical=`` given, ``alias=`` goes to the base optimizer (into ``kwargs``)."""
    if alias in base_kw:
        if alias_value is not None and canonical_value is None:
            raise ValueError(
                f"{wrapper}(..., {base_name}, {alias}=...) is ambiguous: {base_name} has its own "
                f"{alias!r} option. Set the wrapper's with {canonical}=...; {alias}=... then goes "
                f"to {base_name} (e.g. {wrapper}(params, {base_name}, {canonical}=..., "
                f"{alias}=...))"
            )
        if alias_value is not None:
            kwargs[alias] = alias_value
    elif alias_value is not None:
        if canonical_value is not None:
            raise ValueError(f"{wrapper}: give {alias}= or {canonical}=, not both")
        return alias_value
    return default if canonical_value is None else canonical_value


def legacy_option(
    wrapper: str,
    legacy: str,
    canonical: str,
    canonical_value: Any,
    base_kw: frozenset[str],
    base_var_kw: bool,
    base_name: str,
    kwargs: dict[str, Any],
) -> Any:
    """``eps=`` / ``foreach=``: the base optimizer's when it takes them; otherwise (old code,
    e.g. SGD has no eps) the wrapper's ``canonical`` option, with a FutureWarning."""
    if legacy not in kwargs or legacy in base_kw or base_var_kw:
        return canonical_value
    value = kwargs.pop(legacy)
    if canonical_value is not None:
        raise ValueError(f"{wrapper}: give {canonical}= only ({base_name} has no {legacy!r})")
    warnings.warn(
        f"{wrapper}({legacy}=...) with {base_name}, which has no {legacy!r} option, sets the "
        f"wrapper's {canonical}; write {canonical}=... (with a base optimizer that has "
        f"{legacy!r}, {legacy}=... goes to the base optimizer)",
        FutureWarning,
        stacklevel=_user_stacklevel(),
    )
    return value


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package (the user's constructor call)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level
