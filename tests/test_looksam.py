"""LookSAM against an independent float64 reference written here from the paper's rule, under
every loop a researcher types (issue 8, items 2, 4, 5 and LookSAM's eps, item 7)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sharpness import LookSAM
from tests.core_utils import loss_fn, params_of, sam_train, tiny_data, tiny_model

RHO, K, ALPHA, LR, MOM = 0.05, 3, 0.7, 0.1, 0.9


def _flat(xs):
    return torch.cat([x.reshape(-1) for x in xs])


def reference_looksam(
    steps: int, *, layerwise: bool = False, eps: float = 1e-12, rho: float = RHO, start: int = 0
) -> list[torch.Tensor]:
    """LookSAM (Liu et al. 2022) with momentum SGD, written out: every K steps
    e = rho g/(||g||+eps) (layerwise: rho ||w_l|| g_l/(||g_l||+eps)), g_s = grad at w + e,
    g_v = g_s - <g, g_s>/(||g||+eps)^2 g (per tensor if layerwise), update with g_s; in between
    g + alpha ||g||/(||g_v||+eps) g_v. Batches are seeded 100 + t from t = ``start``."""
    model = tiny_model()
    ps = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in ps]
    gv = None
    for i in range(steps):
        x, y = tiny_data(seed=100 + start + i)
        g = torch.autograd.grad(loss_fn(model, x, y), ps)
        if i % K == 0:
            w0 = [p.detach().clone() for p in ps]
            if layerwise:
                es = [rho * w.norm() * gi / (gi.norm() + eps) for w, gi in zip(w0, g)]
            else:
                n = _flat(g).norm()
                es = [rho * gi / (n + eps) for gi in g]
            with torch.no_grad():
                for p, e in zip(ps, es):
                    p.add_(e)
            gs = torch.autograd.grad(loss_fn(model, x, y), ps)
            with torch.no_grad():
                for p, w in zip(ps, w0):
                    p.copy_(w)
            if layerwise:
                gv = [s - (a * s).sum() / (a.norm() + eps) ** 2 * a for a, s in zip(g, gs)]
            else:
                fg, fs = _flat(g), _flat(gs)
                c = (fg @ fs) / (fg.norm() + eps) ** 2
                gv = [s - c * a for a, s in zip(g, gs)]
            upd = gs
        elif layerwise:
            upd = [a + ALPHA * a.norm() / (v.norm() + eps) * v for a, v in zip(g, gv)]
        else:
            c = ALPHA * _flat(g).norm() / (_flat(gv).norm() + eps)
            upd = [a + c * v for a, v in zip(g, gv)]
        with torch.no_grad():
            for p, b, u in zip(ps, bufs, upd):
                b.mul_(MOM).add_(u)
                p.sub_(LR * b)
    return params_of(model)


def _looksam(model, **kw):
    kw = dict(dict(rho=RHO, k=K, alpha=ALPHA, lr=LR, momentum=MOM), **kw)
    return LookSAM(model.parameters(), torch.optim.SGD, **kw)


def familiar_loop(model, opt, steps: int) -> None:
    """The davda54 loop: first_step(zero_grad=True), an *unconditional* second backward,
    second_step(zero_grad=True)."""
    for t in range(steps):
        x, y = tiny_data(seed=100 + t)
        loss_fn(model, x, y).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model, x, y).backward()
        opt.second_step(zero_grad=True)


def _close(a, b, rtol=1e-10):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-13)


@pytest.mark.parametrize("layerwise", [False, True])
@pytest.mark.parametrize("loop", ["familiar", "looksam_aware", "closure"])
def test_looksam_matches_the_reference_under_every_loop(loop, layerwise):
    """Item 2: the two-call loop used to accumulate 2g on the k-1 skipped steps (42% off,
    91% with layerwise); now every loop gives the paper's trajectory."""
    model = tiny_model()
    opt = _looksam(model, layerwise=layerwise)
    if loop == "familiar":
        familiar_loop(model, opt, 10)
    else:
        sam_train(model, opt, 10, closure_api=loop == "closure")
    _close(params_of(model), reference_looksam(10, layerwise=layerwise))


def test_familiar_loop_ignores_a_differing_extra_gradient():
    """The extra backward on a skipped step is ignored even when it differs from the first
    (here: another batch), and zero_grad=False keeps the first pass's gradient too."""
    m1, m2 = tiny_model(), tiny_model()
    o1, o2 = _looksam(m1), _looksam(m2)
    sam_train(m2, o2, 6)
    for t in range(6):
        x, y = tiny_data(seed=100 + t)
        loss_fn(m1, x, y).backward()
        if o1.ascent_due:
            assert o1.first_step(zero_grad=True)
            loss_fn(m1, x, y).backward()
        else:
            assert o1.first_step(zero_grad=t % 2 == 0) is False
            o1.zero_grad()  # what a user's own loop may do between the passes
            loss_fn(m1, *tiny_data(seed=7)).backward()
        o1.second_step(zero_grad=True)
    _close(params_of(m1), params_of(m2), rtol=1e-14)


@pytest.mark.parametrize("loop", ["familiar", "looksam_aware"])
@pytest.mark.parametrize("layerwise", [False, True])
def test_rho_zero_is_the_base_optimizer_bit_for_bit(loop, layerwise):
    """Item 4: with rho = 0 the stored direction was rounding noise, amplified by the
    normalized reuse rule (0.15 max |dw| after 20 SGD steps)."""
    m1, m2 = tiny_model(), tiny_model()
    opt = _looksam(m1, rho=0.0, layerwise=layerwise)
    if loop == "familiar":
        familiar_loop(m1, opt, 20)
    else:
        sam_train(m1, opt, 20)
    sgd = torch.optim.SGD(m2.parameters(), lr=LR, momentum=MOM)
    for t in range(20):
        x, y = tiny_data(seed=100 + t)
        sgd.zero_grad()
        loss_fn(m2, x, y).backward()
        sgd.step()
    for a, b in zip(params_of(m1), params_of(m2)):
        assert torch.equal(a, b), (a - b).abs().max()


def test_rho_set_to_zero_mid_run_gives_the_base_optimizers_steps():
    """A rho schedule reaching 0 just before an ascent step: from then on the steps are the base
    optimizer's, bit for bit (the direction stored by the earlier ascent must not be reused; it
    is, by LookSAM's design, until the next ascent)."""
    model = tiny_model()
    opt = _looksam(model)
    sam_train(model, opt, 6)  # ascents at steps 0 and 3: a direction is stored; 6 is an ascent
    assert opt.ascent_due and opt._gv
    ref = copy.deepcopy(model)
    sgd = torch.optim.SGD(ref.parameters(), lr=LR, momentum=MOM)
    sgd.load_state_dict(copy.deepcopy(opt.base_optimizer.state_dict()))  # a copy: not aliased
    for g in opt.param_groups:
        g["rho"] = 0.0
    sam_train(model, opt, 6, start=6)
    for t in range(6, 12):
        x, y = tiny_data(seed=100 + t)
        sgd.zero_grad()
        loss_fn(ref, x, y).backward()
        sgd.step()
    for a, b in zip(params_of(model), params_of(ref)):
        assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("overflow_pass", ["first", "second"])
def test_gradscaler_overflow_on_an_ascent_step_recovers(overflow_pass):
    """Item 5: an inf in either pass of an ascent step used to store a non-finite g_v, and the
    scaler then skipped the next k-1 steps too. Now the update is skipped, no direction is kept
    and the next step is an ascent again: the run equals LookSAM on the batches after the
    overflow (the scale is a power of 2, so scaling is exact)."""
    model = tiny_model()
    opt = _looksam(model, sam_eps=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6, growth_interval=10**6)
    steps = 8
    for t in range(steps):
        x, y = tiny_data(seed=100 + t)
        bad = math.inf if t == 0 else 1.0
        scaler.scale(loss_fn(model, x, y) * (bad if overflow_pass == "first" else 1.0)).backward()
        if opt.first_step(zero_grad=True, scaler=scaler):
            second = loss_fn(model, x, y) * (bad if overflow_pass == "second" else 1.0)
            scaler.scale(second).backward()
        opt.second_step(zero_grad=True, scaler=scaler)
        scaler.update()
        if t == 0:
            assert scaler.get_scale() == 2.0**5  # the overflow was seen and skipped
            assert opt.ascent_due  # the ascent is retried
            # and a checkpoint written now holds no non-finite direction
            assert all(torch.isfinite(v).all() for v in opt.state_dict()["sam"]["g_v"].values())
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.looksam_step == steps - 1
    _close(params_of(model), reference_looksam(steps - 1, eps=0.0, start=1), rtol=1e-12)


def test_looksam_passes_its_eps_to_every_rule():
    """Item 7: LookSAM's sam_eps enters the ascent, the decomposition and the reuse rule (it used
    to reach the ascent only); a large eps makes each visible."""
    for layerwise in (False, True):
        model = tiny_model()
        opt = _looksam(model, sam_eps=0.5, layerwise=layerwise)
        sam_train(model, opt, 7)
        _close(params_of(model), reference_looksam(7, layerwise=layerwise, eps=0.5))
