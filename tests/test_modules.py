"""m-SAM for modules, batch-norm statistics policy."""

import pytest
import torch
from torch import nn

from sharpness import SAM, frozen_bn_stats, msam_backward
from tests.core_utils import loss_fn, params_of, sam_train, tiny_data, tiny_model


def _msam_steps(model, opt, steps, m, n=16, **kw):
    for t in range(steps):
        x, y = tiny_data(n, seed=100 + t)
        opt.zero_grad()
        msam_backward(opt, model, lambda a, b: loss_fn(model, a, b), x, y, m, **kw)
        opt.update()


def test_msam_with_m_equal_batch_equals_sam():
    m1, m2 = tiny_model(), tiny_model()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    _msam_steps(m1, o1, 5, m=16, sam_iters=1)
    sam_train(m2, o2, 5)
    for a, b in zip(params_of(m1), params_of(m2)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_msam_equals_average_of_per_chunk_sam_gradients():
    model = tiny_model()
    ps = list(model.parameters())
    x, y = tiny_data(12)
    w0 = params_of(model)
    want = [torch.zeros_like(p) for p in ps]
    for c in range(3):  # m = 4: chunks of 4 consecutive examples
        xc, yc = x[4 * c : 4 * c + 4], y[4 * c : 4 * c + 4]
        g = torch.autograd.grad(loss_fn(model, xc, yc), ps)
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        with torch.no_grad():
            for p, w, gi in zip(ps, w0, g):
                p.copy_(w + 0.1 * gi / norm)
        gs = torch.autograd.grad(loss_fn(model, xc, yc), ps)
        with torch.no_grad():
            for p, w in zip(ps, w0):
                p.copy_(w)
        want = [a + b / 3 for a, b in zip(want, gs)]
    opt = SAM(ps, torch.optim.SGD, rho=0.1, lr=0.0, sam_eps=0.0)
    loss, ploss = msam_backward(opt, model, lambda a, b: loss_fn(model, a, b), x, y, 4)
    for p, w, gw in zip(ps, w0, want):
        assert torch.equal(p.detach(), w)  # weights restored exactly
        torch.testing.assert_close(p.grad, gw, rtol=1e-12, atol=1e-15)
    assert ploss > loss  # the ascent raised the loss


def test_msam_multi_step_equals_hand_projected_ascent():
    model = tiny_model()
    ps = list(model.parameters())
    x, y = tiny_data(8)
    w0 = params_of(model)
    rho, mult = 0.1, 0.6
    e = [torch.zeros_like(p) for p in ps]
    for _ in range(3):
        with torch.no_grad():
            for p, w, ei in zip(ps, w0, e):
                p.copy_(w + ei)
        g = torch.autograd.grad(loss_fn(model, x, y), ps)
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        e = [ei + rho * mult * gi / norm for ei, gi in zip(e, g)]
        en = torch.sqrt(sum((ei**2).sum() for ei in e))
        if en > rho:
            e = [ei * rho / en for ei in e]
    with torch.no_grad():
        for p, w, ei in zip(ps, w0, e):
            p.copy_(w + ei)
    want = torch.autograd.grad(loss_fn(model, x, y), ps)
    with torch.no_grad():
        for p, w in zip(ps, w0):
            p.copy_(w)
    opt = SAM(ps, torch.optim.SGD, rho=rho, lr=0.0, sam_eps=0.0)
    msam_backward(
        opt, model, lambda a, b: loss_fn(model, a, b), x, y, 8, sam_iters=3, step_size_mult=mult
    )
    for p, gw in zip(ps, want):
        torch.testing.assert_close(p.grad, gw, rtol=1e-12, atol=1e-15)


def test_msam_rejects_m_not_dividing_batch():
    model = tiny_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    x, y = tiny_data(10)
    with pytest.raises(ValueError, match="m=3 must be a positive integer dividing the batch"):
        msam_backward(opt, model, lambda a, b: loss_fn(model, a, b), x, y, 3)


def test_frozen_bn_stats_uses_batch_stats_but_updates_nothing():
    model = tiny_model(bn=True)
    bn = model[1]
    x, _ = tiny_data()
    out_train = model(x)  # one update of the running statistics
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    assert bn.num_batches_tracked.item() == 1
    with frozen_bn_stats(model):
        model(x * 2.0 + 1.0)
        again = model(x)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert bn.num_batches_tracked.item() == 1
    torch.testing.assert_close(again, out_train)  # still normalized with the batch statistics
    assert bn.track_running_stats  # restored on exit
    model(x)
    assert bn.num_batches_tracked.item() == 2


def test_sam_with_frozen_bn_updates_running_stats_once_per_step():
    model = tiny_model(bn=True)
    bn = model[1]
    ref = tiny_model(bn=True)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.0)
    x, y = tiny_data()
    loss_fn(model, x, y).backward()
    loss_fn(ref, x, y)  # the reference sees the batch once at w
    opt.first_step(zero_grad=True)
    with frozen_bn_stats(model):
        loss_fn(model, x, y).backward()
    opt.second_step(zero_grad=True)
    assert torch.equal(bn.running_mean, ref[1].running_mean)
    assert torch.equal(bn.running_var, ref[1].running_var)
    assert bn.num_batches_tracked.item() == 1


def test_msam_bn_first_pass_only_counts_one_update_per_chunk():
    model = tiny_model(bn=True)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.0)
    x, y = tiny_data(16)
    msam_backward(opt, model, lambda a, b: loss_fn(model, a, b), x, y, 4)
    assert model[1].num_batches_tracked.item() == 4
    msam_backward(opt, model, lambda a, b: loss_fn(model, a, b), x, y, 4, bn_first_pass_only=False)
    assert model[1].num_batches_tracked.item() == 4 + 8


def test_msam_unused_parameter_gets_no_gradient_and_no_error():
    model = tiny_model()
    extra = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = SAM([*model.parameters(), extra], torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = tiny_data(8)
    msam_backward(opt, model, lambda a, b: loss_fn(model, a, b), x, y, 4)
    opt.update()
    assert extra.grad is None and torch.equal(extra.detach(), torch.zeros(3, dtype=torch.float64))
