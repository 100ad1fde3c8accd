"""SAM under autocast (``--half_prec``) is SAM: the pass at w + e computes with w + e.

Autocast casts each leaf weight once per region and reuses the copy; a SAM step that perturbs the
weights in place inside one region would compute its second pass with w, i.e. ERM. Each test
compares the update gradient of a SAM rule under bfloat16 autocast with the same rule in float32:
the two agree within bfloat16 precision and both differ from ERM by far more. On CPU (the
autocast caching rule is the same on every device).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deep_nets.config import TrainConfig
from deep_nets.steps import STEPS, StepContext, build_optimizer, step_kind
from deep_nets.train import make_loss
from sharpness import SAM, LookSAM
from sharpness.modules import msam_backward


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 5))


def data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 12, generator=g), torch.randint(0, 5, (n,), generator=g)


def bf16() -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def check(grad_of) -> None:
    """``grad_of(autocast, rho)`` -> the update gradient; SAM in bf16 ~ SAM in fp32, != ERM."""
    f32 = contextlib.nullcontext
    sam32, erm32 = grad_of(f32, 0.5), grad_of(f32, 0.0)
    sam16, erm16 = grad_of(bf16, 0.5), grad_of(bf16, 0.0)
    effect = (sam32 - erm32).norm()
    assert effect > 0.1 * erm32.norm()  # rho makes SAM visibly different from ERM (0.16-0.45)
    assert (sam16 - sam32).norm() < 0.1 * effect, "bf16 SAM is not float32 SAM"  # 0.01-0.02
    assert (sam16 - erm16).norm() > 0.8 * effect, "bf16 SAM computes ERM's gradient"


@pytest.mark.parametrize(
    "m, iters, adaptive",
    [(16, 1, False), (4, 1, False), (16, 1, True), (4, 3, False), (16, 2, True)],
    ids=["sam", "msam", "asam", "msam_iters3", "asam_iters2"],
)
def test_msam_backward_under_one_autocast_region(m, iters, adaptive):
    x, y = data()

    def grad_of(autocast, rho):
        model = net()
        asam = dict(adaptive=True, eta=0.01) if adaptive else {}  # the official ASAM
        opt = SAM(model.named_parameters(), torch.optim.SGD, rho=rho, lr=0.1, **asam)
        with autocast():  # the whole m-SAM gradient in one region, as a user would write it
            msam_backward(
                opt, model, lambda a, b: F.cross_entropy(model(a), b), x, y, m, sam_iters=iters
            )
        return flat_grad(model)

    check(grad_of)


@pytest.mark.parametrize("cls", [SAM, LookSAM])
def test_two_step_api_under_one_autocast_region(cls):
    x, y = data()

    def grad_of(autocast, rho):
        model = net()
        opt = cls(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1)
        loss = lambda: F.cross_entropy(model(x), y)  # noqa: E731
        with autocast():
            loss().backward()
            opt.step(lambda: loss().backward())
        # The update gradient is left in p.grad by second_step (before zero_grad).
        return flat_grad(model)

    check(grad_of)


def test_restore_drops_the_cast_of_w_plus_e():
    """After restore(), a forward in the same region computes at w again (not at w + e)."""
    x, y = data()
    model = net()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    with bf16():
        at_w = model(x).float()
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        at_we = model(x).float()
        opt.restore()
        again = model(x).float()
    assert (at_we - at_w).abs().max() > 0.05
    torch.testing.assert_close(again, at_w, rtol=0, atol=0)


@pytest.mark.parametrize(
    "flags",
    [
        dict(sam_rho=0.5),
        dict(sam_rho=0.5, acc_steps=4),
        dict(sam_rho=0.5, sam_variant="asam"),
        dict(sam_rho=0.5, acc_steps=2, sam_iters=3, sam_step_size_mult=0.5),
        dict(sam_rho=0.5, sam_use_prev_batch=True),
        dict(sam_rho=0.5, sam_perturb_batch="other"),
        dict(sam_rho=0.5, sam_variant="random"),
    ],
    ids=["sam", "msam", "asam", "sam_iters3", "prev_batch", "other_batch", "random"],
)
def test_trainer_steps_under_half_prec(flags):
    """The trainer's step functions with its ``--half_prec`` autocast (bfloat16 on CPU)."""
    x, y = data()

    def grad_of(autocast, rho):
        cfg = TrainConfig(
            dataset="mnist1d",
            model="mlp",
            batch_size=16,
            lr_max=0.1,
            l2_reg=0.0,
            **{**flags, "sam_rho": rho},
        )
        model = net()
        opt = build_optimizer(cfg, model)
        ctx = StepContext(
            cfg,
            opt,
            model,
            make_loss(cfg, model, model),
            cfg.m,
            list(model.parameters()),
            torch.Generator().manual_seed(0),
            other_batch=lambda: (x.flip(0), y.flip(0)),
            autocast=autocast,
            prev=(x.flip(0), y.flip(0)),
        )
        # grad captured just before the base step (the step functions zero nothing themselves)
        STEPS[step_kind(cfg, True) if rho > 0 else "erm"](ctx, x, y)
        return flat_grad(model)

    check(grad_of)
