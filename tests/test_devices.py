"""Model-parallel parameters: tensors on different devices (issue 8, item 10).

No second device is needed: under ``FakeTensorMode`` every operation checks its inputs' devices
exactly as the real kernels do (a mismatch raises FakeTensorDeviceMismatchError) without computing
values. "meta" and "cpu" play the two devices; "meta" first is the strict order (a CPU scalar may
meet any device, a meta scalar may not, as a cuda:0 scalar may not meet cuda:1). The values of
the same code paths are tested on one device elsewhere (the loop path is used for more than one
device, and the loop equals the foreach path).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from sharpness import SAM, LookSAM
from sharpness import functional as F

ORDERS = [("meta", "cpu"), ("cpu", "meta")]
ASAM_EVERY_TENSOR = dict(adaptive=True, eta=0.01, adaptive_weights_only=False)


def _pair(d0: str, d1: str, seed: int = 0) -> list[torch.Tensor]:
    return [torch.randn(3, 4, device=d0), torch.randn(5, device=d1)]


@pytest.mark.parametrize("d0, d1", ORDERS)
def test_functional_rules_on_two_devices(d0, d1):
    with FakeTensorMode():
        g, s, w = _pair(d0, d1), _pair(d0, d1), _pair(d0, d1)
        assert F.lp_norm(g).device.type == d0  # reduced on the first tensor's device
        outs = [
            F.perturbation(g, 0.1, 2.0),
            F.perturbation(g, 0.1, 2.0, eps=0.0),
            F.perturbation(g, 0.1, 3.0),
            F.perturbation(g, 0.1, float("inf")),
            F.perturbation(g, 0.1, normalize=False),
            F.perturbation(g, 0.1, scale=F.asam_scale(w, weights_only=False)),
            F.perturbation(g, 0.1, 3.0, layerwise_weights=w),
            F.project(g, 0.1),
            F.project(g, 0.1, float("inf")),
            F.multi_step_perturbation(lambda e: s, g, 0.1, 3, 0.5),
            F.looksam_orthogonal(g, s),
            F.looksam_orthogonal(g, s, per_tensor=True),
            F.looksam_reuse(g, s, 0.7),
            F.looksam_reuse(g, s, 0.7, per_tensor=True),
        ]
        for out in outs:
            assert [t.device.type for t in out] == [d0, d1]


@pytest.mark.parametrize("d0, d1", ORDERS)
@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
        lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, p=3.0, max_grad_norm=1.0),
        lambda ps: SAM(ps, torch.optim.SGD, rho=0.5, lr=0.1, **ASAM_EVERY_TENSOR),
        lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, layerwise=True),
        lambda ps: LookSAM(ps, torch.optim.SGD, rho=0.05, k=2, lr=0.1, momentum=0.9),
        lambda ps: LookSAM(ps, torch.optim.SGD, rho=0.05, k=2, lr=0.1, layerwise=True),
    ],
)
def test_optimizers_step_with_parameters_on_two_devices(make, d0, d1):
    with FakeTensorMode():
        ps = [nn.Parameter(t) for t in _pair(d0, d1)]
        opt = make(ps)

        def fill() -> None:  # gradients set by hand: backward needs real devices
            for p in ps:
                p.grad = torch.randn(p.shape, device=p.device)

        for _ in range(3):
            fill()
            if opt.first_step(zero_grad=True):
                fill()
            opt.second_step(zero_grad=True)
        assert [p.device.type for p in ps] == [d0, d1]
