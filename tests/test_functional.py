"""The pure ascent rules against closed forms written out independently here."""

import math

import pytest
import torch

from sharpness import functional as F

D = torch.float64


def _g(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)]


def _flat(xs):
    return torch.cat([x.reshape(-1) for x in xs])


@pytest.mark.parametrize("p", [2.0, float("inf"), 3.0, 1.5])
def test_perturbation_has_norm_rho_and_maximizes_linearization(p):
    g = _g()
    e = F.perturbation(g, 0.3, p, eps=0.0)
    fe = _flat(e)
    assert torch.linalg.vector_norm(fe, p).item() == pytest.approx(0.3, rel=1e-12)
    # Hoelder: <g, e> <= rho ||g||_q with equality at the maximizer.
    q = 1.0 if math.isinf(p) else p / (p - 1)
    best = 0.3 * torch.linalg.vector_norm(_flat(g), q).item()
    assert (fe @ _flat(g)).item() == pytest.approx(best, rel=1e-12)


def test_p2_and_pinf_closed_forms():
    g = _g(1)
    fg = _flat(g)
    e2 = _flat(F.perturbation(g, 0.05, 2.0, eps=0.0))
    torch.testing.assert_close(e2, 0.05 * fg / fg.norm(), rtol=1e-14, atol=0)
    einf = _flat(F.perturbation(g, 0.05, float("inf")))
    assert torch.equal(einf, 0.05 * torch.sign(fg))


def test_unnormalized_is_rho_g():
    g = _g(2)
    e = F.perturbation(g, 0.1, normalize=False)
    for a, b in zip(e, g):
        assert torch.equal(a, 0.1 * b)


def test_zero_gradient_gives_zero_perturbation():
    e = F.perturbation([torch.zeros(3, dtype=D)], 0.1)
    assert torch.equal(e[0], torch.zeros(3, dtype=D))


def test_foreach_equals_loop():
    g = _g(3)
    for p in (2.0, float("inf")):
        a = F.perturbation(g, 0.2, p, foreach=True)
        b = F.perturbation(g, 0.2, p, foreach=False)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-15, atol=0)


def test_batched_equals_one_at_a_time_with_per_run_rho():
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(4, 6, 10, generator=gen, dtype=D)  # (runs, examples, d)
    v = torch.randn(4, 6, 10, generator=gen, dtype=D)
    rho = torch.tensor([0.0, 0.1, 0.5, 2.0], dtype=D)
    eu, ev = F.perturbation([u, v], rho[:, None], batch_dims=2)
    for r in range(4):
        for i in range(6):
            one = F.perturbation([u[r, i], v[r, i]], float(rho[r]))
            torch.testing.assert_close(eu[r, i], one[0], rtol=1e-14, atol=1e-18)
            torch.testing.assert_close(ev[r, i], one[1], rtol=1e-14, atol=1e-18)


def test_adaptive_eta0_all_tensors_is_rho_T2g_over_norm_Tg():
    g = _g(5)
    w = _g(6)
    T = F.asam_scale(w, eta=0.0, weights_only=False)
    e = F.perturbation(g, 0.5, scale=T, eps=0.0)
    tg = _flat([t * x for t, x in zip(T, g)])
    want = 0.5 * _flat([t * t * x for t, x in zip(T, g)]) / tg.norm()
    torch.testing.assert_close(_flat(e), want, rtol=1e-14, atol=0)


def test_asam_weights_only_leaves_biases_plain():
    w = _g(7)
    T = F.asam_scale(w, eta=0.01, weights_only=True)
    assert T[1] is None
    torch.testing.assert_close(T[0], w[0].abs() + 0.01)


def test_project_onto_ball():
    e = [x * 10 for x in _g(8)]
    pr = F.project(e, 0.5, 2.0)
    assert _flat(pr).norm().item() == pytest.approx(0.5, rel=1e-12)
    inside = [x * 1e-3 for x in _g(8)]
    for a, b in zip(F.project(inside, 0.5, 2.0), inside):
        assert torch.equal(a, b)
    pinf = F.project(e, 0.5, float("inf"))
    assert _flat(pinf).abs().max().item() <= 0.5


def test_multi_step_on_quadratic_matches_hand_computation():
    A = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=D))
    w = torch.tensor([1.0, -1.0, 0.5], dtype=D)

    def grad(x):
        return A @ x

    rho, mult = 0.1, 0.7
    e = F.multi_step_perturbation(lambda e: grad(w + e), grad(w), rho, 3, mult, eps=0.0)
    # by hand: e_{k+1} = P(e_k + rho*mult*g_k/||g_k||), projection onto the 2-ball of radius rho
    ref = torch.zeros(3, dtype=D)
    for _ in range(3):
        gk = grad(w + ref)
        ref = ref + rho * mult * gk / gk.norm()
        if ref.norm() > rho:
            ref = ref * rho / ref.norm()
    torch.testing.assert_close(e, ref, rtol=1e-13, atol=0)
    one = F.multi_step_perturbation(lambda e: grad(w + e), grad(w), rho, 1, 1.0)
    assert torch.equal(one, F.perturbation(grad(w), rho))


def test_looksam_decomposition_and_reuse():
    g, gs = _g(9), _g(10)
    gv = F.looksam_orthogonal(g, gs, eps=0.0)
    fg, fs, fv = _flat(g), _flat(gs), _flat(gv)
    torch.testing.assert_close(fv, fs - (fg @ fs) / (fg @ fg) * fg, rtol=1e-13, atol=1e-15)
    assert abs((fv @ fg).item()) < 1e-12
    r = F.looksam_reuse(g, gv, 0.7, eps=0.0)
    torch.testing.assert_close(_flat(r), fg + 0.7 * fg.norm() / fv.norm() * fv, rtol=1e-13, atol=0)
    # per tensor: each tensor on its own
    rl = F.looksam_reuse(g, gv, 0.7, per_tensor=True, eps=0.0)
    for a, x, v in zip(rl, g, gv):
        torch.testing.assert_close(a, x + 0.7 * x.norm() / v.norm() * v, rtol=1e-13, atol=0)


def test_layerwise_trust_ratio():
    g, w = _g(11), _g(12)
    e = F.perturbation(g, 0.1, layerwise_weights=w, eps=0.0)
    for a, x, ww in zip(e, g, w):
        torch.testing.assert_close(a, 0.1 * ww.norm() * x / x.norm(), rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: F.perturbation(_g(), -0.1), "rho"),
        (lambda: F.perturbation(_g(), 0.1, p=1.0), "p"),
        (lambda: F.asam_scale(_g(), eta=-1.0), "eta"),
        (lambda: F.multi_step_perturbation(lambda e: e, _g(), 0.1, iters=0), "sam_iters"),
        (lambda: F.multi_step_perturbation(lambda e: e, _g(), 0.1, 2, step_size_mult=0), "step"),
    ],
)
def test_invalid_arguments_name_themselves(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_hessian_top_eigenvalue_of_a_quadratic():
    from sharpness.measures import hessian_top_eigenvalue

    Q = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=D))[0]
    H = Q @ torch.diag(torch.tensor([7.0, 3.0, 1.0, 0.5, 0.1, 0.0], dtype=D)) @ Q.T
    w = torch.randn(6, dtype=D, requires_grad=True)
    lam = hessian_top_eigenvalue(lambda: 0.5 * w @ H @ w, [w], iters=200, tol=1e-12)
    assert lam == pytest.approx(7.0, rel=1e-8)


def test_looksam_rules_foreach_equal_loop():
    g, gs = _g(13), _g(14)
    a = F.looksam_orthogonal(g, gs, foreach=True)
    b = F.looksam_orthogonal(g, gs, foreach=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)
    buf = [x.clone() for x in g]  # out aliasing grads, as the optimizer uses it
    F.looksam_orthogonal(buf, gs, foreach=True, out=buf)
    for x, y in zip(buf, b):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)
    r1 = F.looksam_reuse(g, a, 0.7, foreach=True)
    r2 = F.looksam_reuse(g, a, 0.7, foreach=False)
    for x, y in zip(r1, r2):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------ issue 8: projected ascent
def original_weight_ascent(grad, w, rho, iters, mult, normalize):
    """The original code's ``perturb_weights_sam`` / ``weight_ascent_step``, written out:
    delta += step * g / (||g|| + 1e-12) (or step * g without normalization), then
    delta *= rho / ||delta|| if ||delta|| > rho, for every one of ``iters`` steps."""
    step = rho * mult
    delta = torch.zeros_like(w)
    for _ in range(iters):
        g = grad(w + delta)
        delta = delta + (step / (g.norm() + 1e-12) * g if normalize else step * g)
        if delta.norm() > rho:
            delta = delta * rho / delta.norm()
    return delta


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("iters, mult", [(1, 2.0), (1, 0.5), (1, 3.0), (2, 0.7), (3, 1.5)])
@pytest.mark.parametrize("curvature", [1.0, 0.01])  # unnormalized: outside / inside the ball
def test_multi_step_is_the_originals_projected_ascent(iters, mult, normalize, curvature):
    """Item 3: iters = 1 used to skip the projection (--sam_iters 1 --sam_step_size_mult 2 gave
    ||e|| = 2 rho; the unnormalized step was never clipped)."""
    A = curvature * torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=D))
    w = torch.tensor([1.0, -1.0, 0.5], dtype=D)

    def grad(x):
        return A @ x

    rho = 0.1
    e = F.multi_step_perturbation(
        lambda e: grad(w + e), grad(w), rho, iters, mult, normalize=normalize, eps=1e-12
    )
    want = original_weight_ascent(grad, w, rho, iters, mult, normalize)
    torch.testing.assert_close(e, want, rtol=1e-13, atol=0)
    assert e.norm().item() <= rho * (1 + 1e-12)
    if normalize and mult >= 1:
        assert e.norm().item() == pytest.approx(rho, rel=1e-12)


# ------------------------------------------------------------------ issue 8: p close to 1
def _scaled_reference(g: torch.Tensor, rho: float, p: float) -> torch.Tensor:
    """rho sign(g)|g|^(q-1) / ||g||_q^(q-1) in float64 on g / max|g| (the rule is invariant to
    that scaling; float64 alone overflows for |g| = 1e30 and q = 101)."""
    q = p / (p - 1)
    u = g.double() / g.double().abs().max()
    return rho * u.sign() * u.abs() ** (q - 1) / torch.linalg.vector_norm(u, q) ** (q - 1)


@pytest.mark.parametrize("p", [1.01, 1.1, 1.5, 3.0, 10.0, 100.0])
@pytest.mark.parametrize("magnitude", [1e-30, 1e-4, 1.0, 1e4, 1e30])
def test_general_p_is_accurate_in_float32_at_the_edges(p, magnitude):
    """Item 6: p = 1.1 with |g| ~ 1e-4 gave e = 0 and p = 1.01 with |g| ~ 1e4 gave NaN in float32.
    The supported range: any p in (1, inf), any finite nonzero float32 gradient. eps = 0 at the
    extreme magnitudes (eps is added to ||g||_q, so 1e-12 would dominate |g| ~ 1e-30)."""
    gen = torch.Generator().manual_seed(int(p * 100))
    g = [magnitude * torch.randn(40, generator=gen), magnitude * torch.randn(3, 5, generator=gen)]
    eps = 1e-12 if 1e-6 <= magnitude <= 1e6 else 0.0
    rho = 0.05
    for layerwise in (False, True):
        if layerwise:
            w = [torch.ones_like(x) for x in g]
            e = F.perturbation(g, rho, p, eps=eps, layerwise_weights=w)
            ref = [_scaled_reference(x, rho, p) * x.numel() ** 0.5 for x in g]
        else:
            e = F.perturbation(g, rho, p, eps=eps)
            flat = _scaled_reference(_flat(g), rho, p)
            ref = [flat[:40], flat[40:].reshape(3, 5)]
        for a, b in zip(e, ref):
            assert a.dtype == torch.float32 and torch.isfinite(a).all()
            torch.testing.assert_close(a.double(), b, rtol=2e-4, atol=1e-7 * rho)
    fe = _flat(F.perturbation(g, rho, p, eps=eps)).double()
    assert torch.linalg.vector_norm(fe, p).item() == pytest.approx(rho, rel=1e-4)


# ------------------------------------------------------------------ issue 8: one eps convention
EPS = 0.5  # large enough that adding it to ||g|| vs ||g||^2 vs ||g||^(q-1) differs visibly


def test_eps_is_added_to_the_norm_before_any_power():
    """Item 7: the module docstring's rule, against closed forms, for every function and both
    the loop and the foreach path."""
    g, gs = _g(20), _g(21)
    fg, fs = _flat(g), _flat(gs)
    n2 = fg.norm()
    for foreach in (False, True):
        e = _flat(F.perturbation(g, 0.1, 2.0, eps=EPS, foreach=foreach))
        torch.testing.assert_close(e, 0.1 * fg / (n2 + EPS), rtol=1e-14, atol=0)
        gv = _flat(F.looksam_orthogonal(g, gs, eps=EPS, foreach=foreach))
        want_v = fs - (fg @ fs) / (n2 + EPS) ** 2 * fg
        torch.testing.assert_close(gv, want_v, rtol=1e-13, atol=1e-15)
        r = _flat(F.looksam_reuse(g, gs, 0.7, eps=EPS, foreach=foreach))
        torch.testing.assert_close(r, fg + 0.7 * n2 / (fs.norm() + EPS) * fs, rtol=1e-13, atol=0)
    q = 1.5  # p = 3
    e3 = _flat(F.perturbation(g, 0.1, 3.0, eps=EPS))
    want3 = (
        0.1 * fg.sign() * fg.abs() ** (q - 1) / (torch.linalg.vector_norm(fg, q) + EPS) ** (q - 1)
    )
    torch.testing.assert_close(e3, want3, rtol=1e-13, atol=0)
    w = _g(22)
    el = F.perturbation(g, 0.1, 2.0, eps=EPS, layerwise_weights=w)
    for a, x, ww in zip(el, g, w):
        torch.testing.assert_close(a, 0.1 * ww.norm() * x / (x.norm() + EPS), rtol=1e-14, atol=0)
    per = F.looksam_orthogonal(g, gs, eps=EPS, per_tensor=True)
    for a, x, s in zip(per, g, gs):
        want = s - (x * s).sum() / (x.norm() + EPS) ** 2 * x
        torch.testing.assert_close(a, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_vectors_give_zero_terms_for_eps_zero(foreach):
    z = [torch.zeros(3, 4, dtype=D), torch.zeros(5, dtype=D)]
    g = _g(23)
    for p in (2.0, 3.0, float("inf")):
        for x in F.perturbation(z, 0.1, p, eps=0.0, foreach=foreach):
            assert torch.equal(x, torch.zeros_like(x))
    for a, b in zip(F.looksam_orthogonal(z, g, eps=0.0, foreach=foreach), g):
        assert torch.equal(a, b)  # g = 0: all of g_s is orthogonal to it
    for a, b in zip(F.looksam_reuse(g, z, 0.7, eps=0.0, foreach=foreach), g):
        assert torch.equal(a, b)  # g_v = 0 adds nothing


def test_projection_of_a_huge_float32_perturbation_is_exact():
    """||e||^2 overflows float32 at ||e|| ~ 1e19; the projection must not turn that into e = 0
    (the unnormalized ascent with a huge rho goes through it, sam_iters = 1 included)."""
    e = torch.full((10,), 1e29)
    assert torch.equal(F.project(e, 1e31), e)
    torch.testing.assert_close(F.project(e, 1.0), torch.full((10,), 10**-0.5))
    tiny = torch.full((10,), 1e-30)
    torch.testing.assert_close(F.project(tiny, 1e-31), torch.full((10,), 1e-31 * 10**-0.5))
