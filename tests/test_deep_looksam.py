"""The deep-net trainer's LookSAM step (``deep_nets.steps.looksam_step`` with the optimizer
``build_optimizer`` makes) against the paper's rule written out here in float64: the step is not
why LookSAM underfits the quick MLP (deep_nets/README.md, "LookSAM underfits").

Also the cost measurement of the LookSAM experiment (``analysis.deep_nets.looksam``): its
interleaved per-step timing reruns to the same decided gap within the gap's standard error
(issue 20, calibration (iii))."""

from __future__ import annotations

import contextlib

import torch

from deep_nets.config import TrainConfig
from deep_nets.models import build_model
from deep_nets.steps import STEPS, StepContext, build_optimizer, step_kind
from deep_nets.train import make_loss

K, ALPHA, RHO, LR, MOM, L2 = 3, 0.7, 0.1, 0.1, 0.9, 5e-4


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", in_channels=1, num_classes=4, width=8, input_shape=(1, 12)).double()


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 1, 12, generator=g, dtype=torch.float64),
            torch.randint(4, (16,), generator=g),
        )
        for _ in range(n)
    ]


def _trainer_steps(steps: int) -> list[torch.Tensor]:
    cfg = TrainConfig(
        sam_rho=RHO,
        sam_variant="looksam",
        looksam_k=K,
        looksam_alpha=ALPHA,
        lr_max=LR,
        momentum=MOM,
        l2_reg=L2,
        batch_size=16,
    )
    model = _model()
    opt = build_optimizer(cfg, model)
    ctx = StepContext(
        cfg,
        opt,
        model,
        make_loss(cfg, model, model),
        cfg.m,
        list(model.parameters()),
        torch.Generator(),
        other_batch=None,
        autocast=contextlib.nullcontext,
    )
    step = STEPS[step_kind(cfg, True)]
    assert step is STEPS["looksam"]
    for x, y in _batches(steps):
        step(ctx, x, y)
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


def _reference(steps: int) -> list[torch.Tensor]:
    """Liu et al. 2022, Algorithm 1 with momentum SGD: every K steps g_s = grad at
    w + rho g / ||g||, g_v = g_s - <g, g_s> / ||g||^2 g, update g_s; else g + alpha ||g|| / ||g_v||
    g_v. Loss: cross-entropy + 0.5 l2 ||w||^2 (the trainer's)."""
    model = _model()
    ps = list(model.parameters())

    def loss(x, y):
        return torch.nn.functional.cross_entropy(model(x), y) + 0.5 * L2 * sum(
            (p**2).sum() for p in ps
        )

    flat = lambda xs: torch.cat([a.reshape(-1) for a in xs])  # noqa: E731
    bufs, gv = [torch.zeros_like(p) for p in ps], None
    for t, (x, y) in enumerate(_batches(steps)):
        g = torch.autograd.grad(loss(x, y), ps)
        if t % K == 0:
            n = flat(g).norm()
            with torch.no_grad():
                for p, a in zip(ps, g):
                    p.add_(RHO * a / n)
            gs = torch.autograd.grad(loss(x, y), ps)
            with torch.no_grad():
                for p, a in zip(ps, g):
                    p.sub_(RHO * a / n)
            c = flat(g) @ flat(gs) / n**2
            gv = [s - c * a for a, s in zip(g, gs)]
            upd = gs
        else:
            c = ALPHA * flat(g).norm() / flat(gv).norm()
            upd = [a + c * v for a, v in zip(g, gv)]
        with torch.no_grad():
            for p, b, u in zip(ps, bufs, upd):
                b.mul_(MOM).add_(u)
                p.sub_(LR * b)
    return [p.detach().clone() for p in ps]


def test_trainer_looksam_step_is_the_papers_rule():
    ours, ref = _trainer_steps(8), _reference(8)
    start = [p.detach() for p in _model().parameters()]
    for a, b, w0 in zip(ours, ref, start, strict=True):
        assert (a - w0).abs().max() > 1e-3  # the weights moved
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
