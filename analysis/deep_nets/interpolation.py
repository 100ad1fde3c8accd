"""Linear interpolation of the train and test loss between two trained networks (Fig. 9).

TODO(lead): point ``interpolate_losses`` at ``sharpness.measures`` once the measures issue lands
there (this branch's ``sharpness.measures`` has no interpolation yet); this module is the one
place to switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def _recompute_bn_stats(net: nn.Module, x: Tensor, batch_size: int) -> None:
    """Batch-norm running statistics of the interpolated weights, from scratch: reset, then one
    pass over ``x`` in train mode with cumulative averaging (momentum None)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            net(x[i : i + batch_size])
    net.eval()


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
    from deep_nets.train import evaluate

    out: dict[str, list[float]] = {"t": [float(t) for t in ts]}
    for name in data:
        out[name] = []
    for t in ts:
        sd = {
            k: ((1 - t) * a + t * state_b[k]) if a.is_floating_point() else a
            for k, a in state_a.items()
        }
        net.load_state_dict(sd)
        _recompute_bn_stats(net, data["train"][0], batch_size)
        for name, (x, y) in data.items():
            s = evaluate(net, x, y, batch_size)
            out[name].append(float(s[0] / s[2]))
    return out


def interpolate_runs(run_a: Mapping[str, Any], run_b: Mapping[str, Any], ts: Sequence[float],
                     n_train: int = 2000) -> dict[str, list[float]]:  # fmt: skip
    """``interpolate_losses`` between the final weights of two finished runs of the trainer
    (their ``checkpoint.pt``), on the first ``n_train`` examples of run a's training split (its
    possibly noisy labels, as trained) and on its test set; same data flags in both runs."""
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
        cfg.dataset, cfg.data_dir, seed=cfg.seed, val_frac=0.1, frac_train=cfg.frac_train,
        p_label_noise=cfg.p_label_noise, noise_type=cfg.noise_type, device="cpu",
    )  # fmt: skip
    net = build_model(
        cfg.model, in_channels=splits.input_shape[0], num_classes=splits.num_classes,
        width=cfg.model_width, input_shape=tuple(splits.input_shape),
    )  # fmt: skip
    data = {
        "train": (splits.train_x[:n_train], splits.train_y[:n_train]),
        "test": (splits.test_x, splits.test_y),
    }
    return interpolate_losses(net, states[0], states[1], ts, data)
