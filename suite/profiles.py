"""The profiles of ``make reproduce``: the one vocabulary every stage shares.

- ``test``:  seconds; every experiment end to end on toy budgets (pytest, the notebook tests);
- ``quick``: CPU minutes (``make reproduce``);
- ``full``:  CPU hours, more seeds;
- ``paper``: the papers' own settings (the deep nets need a GPU and CIFAR on disk; a stage whose
  paper setting is a CPU one runs it, one that has no paper-scale setting says so in its rows).

Each stage keeps its settings in one table keyed by these names and reads it through
``settings``, so a stage that lacks a profile fails on import (``check_table``), not at the end
of a long job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

PROFILES = ("test", "quick", "full", "paper")

T = TypeVar("T")


def check_profile(profile: str) -> str:
    """``profile`` if it is one of ``PROFILES``, else a ValueError naming them."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: choose from {', '.join(PROFILES)}")
    return profile


def check_table(table: Mapping[str, T], family: str) -> Mapping[str, T]:
    """``table`` (a stage's settings per profile) if its keys are exactly ``PROFILES``."""
    if tuple(table) != PROFILES:
        raise ValueError(
            f"{family}: the profile table has {', '.join(table) or 'nothing'}; it must define "
            f"exactly {', '.join(PROFILES)} (suite.profiles), in that order"
        )
    return table


def settings(table: Mapping[str, T], profile: str) -> T:
    """``table[profile]`` after ``check_profile`` (the error names the four profiles)."""
    return table[check_profile(profile)]
