"""Linear interpolation of the train and test loss between two trained networks (Fig. 9),
through ``sharpness.measures.interpolate`` (the suite's one definition of the measure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharpness.measures import interpolate


def _batches(x: Tensor, y: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def interpolate_losses(
    net: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    ts: Sequence[float],
    data: Mapping[str, tuple[Tensor, Tensor]],
    *,
    batch_size: int = 512,
) -> dict[str, list[float]]:
    """Mean cross-entropy of w(t) = (1 - t) w_a + t w_b on each (x, y) of ``data`` for t in ``ts``
    (t = 0: ``state_a``, t = 1: ``state_b``; t outside [0, 1] extrapolates). Floating-point
    entries of the state dicts are interpolated; batch-norm running statistics are then recomputed
    on ``data["train"]`` for every t (interpolated statistics do not describe w(t)); integer
    buffers are taken from ``state_a``. Returns {"t": ts, name: losses for each data name}."""
    bn = _batches(*data["train"], batch_size)
    out: dict[str, list[float]] = {"t": [float(t) for t in ts]}
    for name, (x, y) in data.items():
        rows = interpolate(
            net,
            state_a,
            state_b,
            ts,
            F.cross_entropy,
            _batches(x, y, batch_size),
            error_fn=None,
            bn_data=bn,
        )
        out[name] = [r["loss"] for r in rows]
    return out


def relative_distance(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]) -> float:
    """||w_b - w_a|| / ||w_a|| over the floating-point parameters of two state dicts of one model
    (batch-norm running statistics left out: they are not weights)."""
    keys = [
        k
        for k, v in state_a.items()
        if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
    ]
    d = sum(float(((state_b[k].double() - state_a[k].double()) ** 2).sum()) for k in keys)
    n = sum(float((state_a[k].double() ** 2).sum()) for k in keys)
    return (d / n) ** 0.5 if n > 0 else float("inf")


def interpolate_runs(
    run_a: Mapping[str, Any], run_b: Mapping[str, Any], ts: Sequence[float], n_train: int = 2000
) -> dict[str, Any]:
    """``interpolate_losses`` between the final weights of two finished runs of the trainer
    (their ``checkpoint.pt``), on the first ``n_train`` examples of run a's training split (its
    possibly noisy labels, as trained) and on its test set; same data flags in both runs. Adds
    ``rel_distance``: ``relative_distance`` of the two end points."""
    from pathlib import Path

    from deep_nets.config import TrainConfig
    from deep_nets.data import load_dataset
    from deep_nets.models import build_model

    cfg = TrainConfig.from_dict(run_a["config"]["config"])
    states = []
    for run in (run_a, run_b):
        ck = Path(run["path"]) / "checkpoint.pt"
        if not ck.exists():
            raise FileNotFoundError(f"{ck}: the run has no checkpoint to interpolate")
        states.append(torch.load(ck, map_location="cpu", weights_only=True)["model"])
    splits = load_dataset(
        cfg.dataset,
        cfg.data_dir,
        seed=cfg.seed,
        val_frac=0.1,
        frac_train=cfg.frac_train,
        p_label_noise=cfg.p_label_noise,
        noise_type=cfg.noise_type,
        device="cpu",
    )
    net = build_model(
        cfg.model,
        in_channels=splits.input_shape[0],
        num_classes=splits.num_classes,
        width=cfg.model_width,
        input_shape=tuple(splits.input_shape),
    )
    data = {
        "train": (splits.train_x[:n_train], splits.train_y[:n_train]),
        "test": (splits.test_x, splits.test_y),
    }
    out: dict[str, Any] = dict(interpolate_losses(net, states[0], states[1], ts, data))
    out["rel_distance"] = relative_distance(states[0], states[1])
    return out
