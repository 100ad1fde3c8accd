"""The core demo's runs: one ``deep_nets/train.py`` run per (optimizer, seed).

Launched as the deep-net experiments launch theirs (``analysis.deep_nets.runs``: a ``Spec`` per
run, its directory ``<results>/core/runs/<slug>_<hash>_seed<k>`` a pure function of the flags,
``SpecRuns`` through ``suite.stage.run_stage`` and ``suite.launch.run_all``): finished runs are
reused, interrupted ones resumed with the trainer's ``--resume``, and each run directory carries
the trainer's provenance and checks. Nothing here trains; ``analysis.core.measure`` measures the
saved weights afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.core.profiles import METHODS, OPTIMIZERS
from analysis.deep_nets.runs import Spec, SpecRuns, epoch_rows, load


def spec(P: dict[str, Any], opt: str, seed: int) -> Spec:
    """The run of optimizer ``opt`` (``METHODS``) at ``seed`` on the profile's base flags."""
    if opt not in METHODS:
        raise ValueError(f"optimizer {opt!r}: choose from {', '.join(OPTIMIZERS)}")
    return Spec.make({**P["base"], **METHODS[opt]}, seed)


def specs(P: dict[str, Any]) -> list[Spec]:
    """Every run of the profile: each optimizer over the profile's seeds."""
    return [spec(P, o, s) for o in OPTIMIZERS for s in P["seeds"]]


RUNS = SpecRuns(specs)  # suite.stage.Experiment.runs


def load_all(P: dict[str, Any], root: Path) -> dict[str, list[dict]]:
    """{optimizer: the finished runs (``suite.rundir.load_run`` dicts), one per seed in the
    profile's order}; a clear error naming the missing run."""
    return {o: [load(root, spec(P, o, s)) for s in P["seeds"]] for o in OPTIMIZERS}


def curve(run: dict, key: str) -> list[float]:
    """``key`` of every end-of-epoch metrics row (epochs 1, 2, ...)."""
    return [float(r[key]) for r in epoch_rows(run)]
