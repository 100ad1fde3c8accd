"""SAM / LookSAM optimizers: closed forms, equivalences, state, torch.optim conventions."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from sharpness import SAM, LookSAM
from tests.core_utils import loss_fn, params_of, sam_train, tiny_data, tiny_model

D = torch.float64
DAVDA54_ASAM = dict(adaptive=True, eta=0.0, adaptive_weights_only=False)  # T = |w|, all


def _assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


def test_one_step_on_quadratic_equals_closed_form():
    A = torch.diag(torch.tensor([1.0, 3.0, 10.0], dtype=D))
    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    w = nn.Parameter(w0.clone())
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.05, sam_eps=0.0)
    (0.5 * w @ A @ w).backward()
    opt.step(lambda: (0.5 * w @ A @ w).backward())
    g = A @ w0
    e = 0.1 * g / g.norm()
    want = w0 - 0.05 * (A @ (w0 + e))
    torch.testing.assert_close(w.detach(), want, rtol=1e-15, atol=0)


def test_first_step_moves_by_rho_and_second_restores_exactly():
    model = tiny_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.07, lr=0.0)
    x, y = tiny_data()
    w0 = params_of(model)
    loss_fn(model, x, y).backward()
    opt.first_step(zero_grad=True)
    diff = torch.cat([(p.detach() - q).reshape(-1) for p, q in zip(model.parameters(), w0)])
    assert diff.norm().item() == pytest.approx(0.07, rel=1e-9)
    loss_fn(model, x, y).backward()
    opt.second_step(zero_grad=True)  # lr 0: weights must come back bit for bit
    _assert_same(params_of(model), w0)


def test_p_inf_moves_by_rho_sign_g():
    model = tiny_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.01, p=float("inf"), lr=0.1)
    x, y = tiny_data()
    w0 = params_of(model)
    loss_fn(model, x, y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.first_step()
    for p, w, g in zip(model.parameters(), w0, grads):
        torch.testing.assert_close(p.detach(), w + 0.01 * g.sign(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("closure_api", [False, True])
def test_rho_zero_equals_base_optimizer_bit_for_bit(closure_api):
    m1, m2 = tiny_model(), tiny_model()
    sam = SAM(m1.parameters(), torch.optim.SGD, rho=0.0, lr=0.1, momentum=0.9, weight_decay=1e-3)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sam_train(m1, sam, 20, closure_api=closure_api)
    for t in range(20):
        x, y = tiny_data(seed=100 + t)
        sgd.zero_grad()
        loss_fn(m2, x, y).backward()
        sgd.step()
    _assert_same(params_of(m1), params_of(m2))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rho=0.05),
        dict(rho=0.05, p=float("inf")),
        dict(rho=0.05, p=3.0),
        dict(rho=0.5, adaptive=True, eta=0.01, adaptive_weights_only=False),
        dict(rho=0.05, normalize=False),
        dict(rho=0.05, layerwise=True),
        dict(rho=0.05, max_grad_norm=0.1),
    ],
)
def test_foreach_equals_loop_over_20_steps(kwargs):
    m1, m2 = tiny_model(), tiny_model()
    o1 = SAM(m1.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, sam_foreach=True, **kwargs)
    o2 = SAM(m2.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, sam_foreach=False, **kwargs)
    sam_train(m1, o1, 20)
    sam_train(m2, o2, 20)
    for a, b in zip(params_of(m1), params_of(m2)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_sam_matches_hand_written_sam_over_steps():
    """An independent plain-PyTorch SAM with momentum SGD, written out here."""
    m1, m2 = tiny_model(), tiny_model()
    opt = SAM(m1.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, sam_eps=0.0)
    sam_train(m1, opt, 10)
    bufs = [torch.zeros_like(p) for p in m2.parameters()]
    ps = list(m2.parameters())
    for t in range(10):
        x, y = tiny_data(seed=100 + t)
        g = torch.autograd.grad(loss_fn(m2, x, y), ps)
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        with torch.no_grad():
            es = [0.05 * gi / norm for gi in g]
            for p, e in zip(ps, es):
                p.add_(e)
        gs = torch.autograd.grad(loss_fn(m2, x, y), ps)
        with torch.no_grad():
            for p, e, gi, b in zip(ps, es, gs, bufs):
                p.sub_(e)
                b.mul_(0.9).add_(gi)
                p.sub_(0.1 * b)
    for a, b in zip(params_of(m1), params_of(m2)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_looksam_k1_equals_sam():
    m1, m2 = tiny_model(), tiny_model()
    o1 = LookSAM(m1.parameters(), torch.optim.SGD, rho=0.05, k=1, lr=0.1, momentum=0.9)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sam_train(m1, o1, 12)
    sam_train(m2, o2, 12)
    _assert_same(params_of(m1), params_of(m2))


def test_looksam_runs_closure_once_in_k_steps():
    model = tiny_model()
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=0.05, k=4, lr=0.1)
    calls = []
    for t in range(12):
        x, y = tiny_data(seed=t)
        opt.zero_grad()
        loss_fn(model, x, y).backward()

        def closure(x=x, y=y, t=t):
            calls.append(t)
            loss = loss_fn(model, x, y)
            loss.backward()
            return loss

        opt.step(closure)
    assert calls == [0, 4, 8]


def test_looksam_reuse_step_follows_the_rule():
    """Step 1 (ascent) stores g_v; step 2 must update with g + alpha ||g||/||g_v|| g_v."""
    model = tiny_model()
    opt = LookSAM(
        model.parameters(), torch.optim.SGD, rho=0.05, k=2, alpha=0.7, lr=0.1, sam_eps=0.0
    )
    ps = list(model.parameters())
    x, y = tiny_data(seed=0)
    w0 = params_of(model)
    g = torch.autograd.grad(loss_fn(model, x, y), ps)
    sam_train(model, opt, 1, start=-100)  # batch seed 0 (100 + start)
    # recompute g_s at w0 + e by hand
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    with torch.no_grad():
        for p, w, gi in zip(ps, w0, g):
            p.copy_(w + 0.05 * gi / norm)
    gs = torch.autograd.grad(loss_fn(model, x, y), ps)
    fg = torch.cat([t.reshape(-1) for t in g])
    fs = torch.cat([t.reshape(-1) for t in gs])
    gv = fs - (fg @ fs) / (fg @ fg) * fg
    w1 = [w - 0.1 * s for w, s in zip(w0, gs)]
    with torch.no_grad():
        for p, w in zip(ps, w1):
            p.copy_(w)
    x2, y2 = tiny_data(seed=101)
    g2 = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_fn(model, x2, y2), ps)])
    upd = g2 + 0.7 * g2.norm() / gv.norm() * gv
    opt.zero_grad()
    loss_fn(model, x2, y2).backward()
    assert opt.first_step(zero_grad=True) is False  # no ascent: grads must survive
    opt.second_step()
    got = torch.cat([p.detach().reshape(-1) for p in ps])
    want = torch.cat([w.reshape(-1) for w in w1]) - 0.1 * upd
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
        lambda ps: SAM(ps, torch.optim.Adam, rho=0.5, lr=1e-2, **DAVDA54_ASAM),
        lambda ps: LookSAM(ps, torch.optim.SGD, rho=0.05, k=3, lr=0.1, momentum=0.9),
    ],
)
def test_lockstep_resume(make):
    """Save after 5 steps, load into fresh objects: both continue 5 steps identically."""
    m1 = tiny_model()
    o1 = make(m1.parameters())
    sam_train(m1, o1, 5)
    model_sd = _roundtrip(m1.state_dict())
    opt_sd = _roundtrip(o1.state_dict())
    m2 = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    m2.load_state_dict(model_sd)
    o2 = make(m2.parameters())
    o2.load_state_dict(opt_sd)
    sam_train(m1, o1, 5, start=5)
    sam_train(m2, o2, 5, start=5)
    _assert_same(params_of(m1), params_of(m2))
    # the base optimizer's state (momentum / Adam moments) is in the saved dict
    assert opt_sd["state"], "base optimizer state missing from SAM.state_dict()"


def test_state_dict_without_base_state_would_diverge():
    """The defect this guards against: dropping the momentum changes the continuation."""
    m1, m2 = tiny_model(), tiny_model()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sam_train(m1, o1, 5)
    m2.load_state_dict(m1.state_dict())
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sam_train(m1, o1, 3, start=5)
    sam_train(m2, o2, 3, start=5)
    assert not all(torch.equal(a, b) for a, b in zip(params_of(m1), params_of(m2)))


def test_scheduler_attached_to_sam_changes_base_lr_without_warning():
    model = tiny_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sam_train(model, opt, 1)
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5


def test_param_without_grad_does_not_change():
    model = tiny_model()
    frozen = nn.Parameter(torch.ones(4, dtype=D))
    opt = SAM([*model.parameters(), frozen], torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sam_train(model, opt, 3)
    assert torch.equal(frozen.detach(), torch.ones(4, dtype=D))


def test_deepcopy_continues_identically():
    m1 = tiny_model()
    o1 = LookSAM(m1.parameters(), torch.optim.SGD, rho=0.05, k=2, lr=0.1, momentum=0.9)
    sam_train(m1, o1, 3)
    m2, o2 = copy.deepcopy((m1, o1))
    sam_train(m1, o1, 3, start=3)
    sam_train(m2, o2, 3, start=3)
    _assert_same(params_of(m1), params_of(m2))


def test_per_group_rho():
    model = tiny_model()
    ps = list(model.parameters())
    opt = SAM([{"params": ps[:2], "rho": 0.0}, {"params": ps[2:]}], torch.optim.SGD, rho=0.1, lr=0)
    x, y = tiny_data()
    w0 = params_of(model)
    loss_fn(model, x, y).backward()
    opt.first_step()
    assert all(torch.equal(p.detach(), w) for p, w in zip(ps[:2], w0[:2]))
    assert not all(torch.equal(p.detach(), w) for p, w in zip(ps[2:], w0[2:]))


def test_clipping_applies_to_update_gradient_only():
    m1, m2 = tiny_model(), tiny_model()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, max_grad_norm=1e-3)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = tiny_data()
    for m, o in ((m1, o1), (m2, o2)):
        loss_fn(m, x, y).backward()
        o.first_step(zero_grad=True)
        loss_fn(m, x, y).backward()
        if o is o2:  # reference: clip by hand after the second backward
            o2.restore()
            torch.nn.utils.clip_grad_norm_(list(m2.parameters()), 1e-3)
            o2.update()
        else:
            o1.second_step()
    for a, b in zip(params_of(m1), params_of(m2)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_grad_scaler_gives_the_same_step():
    """GradScaler (CPU, no overflow) scales both backward passes; the step must not change."""
    m1, m2 = tiny_model(), tiny_model()
    for normalize in (True, False):
        o1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, normalize=normalize)
        o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, normalize=normalize)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        x, y = tiny_data()
        scaler.scale(loss_fn(m1, x, y)).backward()
        o1.first_step(zero_grad=True, scaler=scaler)
        scaler.scale(loss_fn(m1, x, y)).backward()
        o1.second_step(zero_grad=True, scaler=scaler)
        scaler.update()
        sam_train(m2, o2, 1, start=-100 + 1)  # batch seed 1 == tiny_data()
        for a, b in zip(params_of(m1), params_of(m2)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_bf16_autocast_step_keeps_float32_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    w0 = params_of(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(params_of(model), w0))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rho=-0.1), "rho"),
        (dict(rho="0.05"), "rho"),
        (dict(p=1.0), "p"),
        (dict(eta=-1.0), "eta"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(sam_eps=-1.0), "sam_eps"),
    ],
)
def test_invalid_sam_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SAM(tiny_model().parameters(), torch.optim.SGD, lr=0.1, **kwargs)


@pytest.mark.parametrize(
    "kwargs, name", [(dict(k=0), "k"), (dict(k=2.5), "k"), (dict(alpha=-0.5), "alpha")]
)
def test_invalid_looksam_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LookSAM(tiny_model().parameters(), torch.optim.SGD, lr=0.1, **kwargs)


def test_base_optimizer_instance_and_missing_closure_are_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="base_optimizer"):
        SAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1))
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(
        ValueError, match="learning rate"
    ):  # the base optimizer's own validation still runs
        SAM(model.parameters(), torch.optim.SGD, lr=-1.0)


@pytest.mark.parametrize("layerwise", [False, True])
def test_looksam_foreach_equals_loop_over_20_steps(layerwise):
    m1, m2 = tiny_model(), tiny_model()
    kw = dict(rho=0.05, k=3, alpha=0.7, layerwise=layerwise, lr=0.1, momentum=0.9)
    o1 = LookSAM(m1.parameters(), torch.optim.SGD, sam_foreach=True, **kw)
    o2 = LookSAM(m2.parameters(), torch.optim.SGD, sam_foreach=False, **kw)
    sam_train(m1, o1, 20)
    sam_train(m2, o2, 20)
    for a, b in zip(params_of(m1), params_of(m2)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_a_rho_written_into_a_param_group_during_training_is_the_radius():
    """davda54-style loops schedule rho by writing group["rho"]; with the radius stored as
    sam_rho that write must still act (a silently ignored schedule is the bug this pins)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)

    def run(set_rho):
        torch.manual_seed(1)
        net = torch.nn.Linear(5, 1).double()
        opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        for _ in range(3):
            set_rho(opt)
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.first_step(zero_grad=True)
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.second_step(zero_grad=True)
        return net.weight.detach().clone()

    def write(key, value):
        def f(opt):
            for g in opt.param_groups:
                g[key] = value

        return f

    big = run(write("sam_rho", 0.5))
    assert torch.equal(run(write("rho", 0.5)), big)  # the familiar key acts like sam_rho
    assert not torch.equal(run(write("rho", 0.05)), big)
    with pytest.raises(ValueError, match="rho"):
        run(write("rho", float("nan")))
