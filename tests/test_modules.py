"""m-SAM for modules, batch-norm statistics policy."""

import pytest
import torch
from torch import nn

from sharpness import SAM, LookSAM, frozen_bn_stats, local_grads, msam_backward
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


@pytest.mark.parametrize(
    "iters, mult, normalize",
    [(3, 0.6, True), (1, 0.5, True), (1, 2.0, True), (1, 3.0, False), (2, 0.7, False)],
)
def test_msam_ascent_equals_the_originals_projected_ascent(iters, mult, normalize):
    """The original's weight_ascent_step by hand: delta += rho*mult * g/(||g|| + 1e-12) (or
    rho*mult * g unnormalized), then projection onto the rho-ball, for every one of sam_iters
    steps. Item 3: with sam_iters = 1 the step size and the projection were ignored."""
    model = tiny_model()
    ps = list(model.parameters())
    x, y = tiny_data(8)
    w0 = params_of(model)
    rho = 0.1
    e = [torch.zeros_like(p) for p in ps]
    for _ in range(iters):
        with torch.no_grad():
            for p, w, ei in zip(ps, w0, e):
                p.copy_(w + ei)
        g = torch.autograd.grad(loss_fn(model, x, y), ps)
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        c = rho * mult / (norm + 1e-12) if normalize else rho * mult
        e = [ei + c * gi for ei, gi in zip(e, g)]
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
    opt = SAM(ps, torch.optim.SGD, rho=rho, lr=0.0, sam_eps=1e-12, normalize=normalize)
    msam_backward(
        opt, model, lambda a, b: loss_fn(model, a, b), x, y, 8, sam_iters=iters, step_size_mult=mult
    )
    for p, gw in zip(ps, want):
        torch.testing.assert_close(p.grad, gw, rtol=1e-12, atol=1e-15)


def test_msam_refuses_looksam_and_non_sam_optimizers():
    """Item 9: msam_backward with a LookSAM used to take SAM gradients every step, silently."""
    model = tiny_model()
    x, y = tiny_data(8)
    for opt in (
        LookSAM(model.parameters(), torch.optim.SGD, lr=0.1),
        torch.optim.SGD(model.parameters(), lr=0.1),
    ):
        with pytest.raises(ValueError, match="msam_backward needs a sharpness.SAM"):
            msam_backward(opt, model, lambda a, b: loss_fn(model, a, b), x, y, 4)


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


# ------------------------------------------------------------------ local_grads (issue 8, item 8)
@pytest.fixture
def one_process_group(tmp_path):
    """A real gloo process group of one rank, so that DistributedDataParallel can be built."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# importing torch.compile's machinery warns about torch.jit internals; not ours to fix
NO_JIT_WARNING = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")


@NO_JIT_WARNING
def test_local_grads_looks_through_torch_compile(one_process_group):
    """torch.compile(ddp_model) used to get a do-nothing context: global SAM, silently. The DDP
    flag that ``no_sync`` switches off (and DDP's backward reads) must be off inside."""
    ddp = nn.parallel.DistributedDataParallel(tiny_model())
    for model in (ddp, torch.compile(ddp)):
        assert ddp.require_backward_grad_sync
        with local_grads(model):
            assert not ddp.require_backward_grad_sync
        assert ddp.require_backward_grad_sync


@NO_JIT_WARNING
def test_local_grads_refuses_what_it_cannot_make_local(one_process_group):
    ddp = nn.parallel.DistributedDataParallel(tiny_model())

    class Holder(nn.Module):  # a user's wrapper around the DDP module
        def __init__(self) -> None:
            super().__init__()
            self.net = ddp

    for model in (Holder(), torch.compile(Holder())):
        with pytest.raises(ValueError, match="DistributedDataParallel module itself"):
            local_grads(model)
    for model in (nn.DataParallel(tiny_model()), torch.compile(nn.DataParallel(tiny_model()))):
        with pytest.raises(ValueError, match="DataParallel"):
            local_grads(model)
    with pytest.raises(TypeError, match="nn.Module"):
        local_grads(lambda x: x)
    plain = tiny_model()
    with local_grads(plain), local_grads(torch.compile(plain)):  # one process: nothing to do
        pass
