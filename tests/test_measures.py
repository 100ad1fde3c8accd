"""sharpness.measures against exact answers (float64, CPU, tiny models; a few seconds in all).

References are written here independently of the code under test: numpy ``eigh`` of X^T X / n,
``torch.autograd.functional.hessian``, closed forms for quadratics, hand-written one-step
sharpness and batch-norm statistics, models rebuilt from moved state dicts.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpness.measures import (
    HessianOperator,
    filter_normalized_direction,
    hutchinson_trace,
    interpolate,
    lanczos,
    m_sharpness,
    random_ball_point,
    recompute_bn_stats,
    slice_1d,
    slice_2d,
    slq_density,
    spectrum,
    top_eigenvalues,
)

D = torch.float64
CE = nn.functional.cross_entropy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only spins on a shared machine (measured: 13 s of
    CPU for these files with one thread, 58 s with two under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1/2n) ||X w - y||^2: its Hessian is X^T X / n."""
    return 0.5 * ((out.squeeze(-1) - y) ** 2).mean()


def least_squares(n: int = 40, d: int = 6, seed: int = 0, orthogonal: bool = False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=D)
    if orthogonal:  # orthogonal columns with distinct norms: X^T X / n is diagonal
        X = torch.linalg.qr(X)[0] * torch.linspace(1.0, 3.0, d, dtype=D) * math.sqrt(n)
    y = torch.randn(n, generator=g, dtype=D)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.normal_(generator=g)
    return model, X, y, (X.T @ X / n).numpy()


def tiny_mlp(seed: int = 0, act: type[nn.Module] = nn.Tanh, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 6)]
    if bn:
        layers.append(nn.BatchNorm1d(6))
    layers += [act(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def cls_data(n: int = 48, seed: int = 1, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=D), torch.randint(0, 3, (n,), generator=g)


def autograd_hessian(model: nn.Module, loss_fn, x, y) -> np.ndarray:
    """The reference Hessian: torch.autograd.functional.hessian over all parameters, flattened."""
    names = [n for n, _ in model.named_parameters()]
    ps = tuple(p.detach().clone() for p in model.parameters())

    def f(*qs):
        return loss_fn(torch.func.functional_call(model, dict(zip(names, qs)), (x,)), y)

    blocks = torch.autograd.functional.hessian(f, ps)
    sizes = [p.numel() for p in ps]
    rows = [
        torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(ps))], 1)
        for i in range(len(ps))
    ]
    return torch.cat(rows, 0).numpy()


# ------------------------------------------------------------------------------------ Hessian
def test_least_squares_hessian_is_xtx_over_n():
    model, X, y, H = least_squares()
    op = HessianOperator(model, half_mse, (X, y))
    np.testing.assert_allclose(op.dense().numpy(), H, rtol=0, atol=1e-12)
    ref = np.linalg.eigvalsh(H)[::-1]
    for method in ("lanczos", "power"):
        eig = top_eigenvalues(op, 3, method=method, max_iter=3000, tol=1e-13)
        np.testing.assert_allclose(eig.eigenvalues, ref[:3], rtol=1e-9)
        assert eig.converged
    eig = top_eigenvalues(op, 6, return_vectors=True, tol=1e-12)
    np.testing.assert_allclose(eig.eigenvalues, ref, rtol=1e-10)
    V = eig.eigenvectors.numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(H @ V.T, V.T * np.array(eig.eigenvalues), atol=1e-10)


def test_hessian_over_uneven_batches_is_example_weighted():
    """Batches of 30 and 10 examples must give X^T X / 40, not the mean of the batch Hessians."""
    model, X, y, H = least_squares(n=40)
    loader = [(X[:30], y[:30]), (X[30:], y[30:])]
    op = HessianOperator(model, half_mse, loader)
    v = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=D)
    np.testing.assert_allclose(op.hvp(v).numpy(), H @ v.numpy(), atol=1e-12)
    loss, grad = op.loss_and_grad()
    w = model.weight.detach().reshape(-1)
    assert loss == pytest.approx(float(0.5 * ((X @ w - y) ** 2).mean()), rel=1e-12)
    np.testing.assert_allclose(grad.numpy(), (X.T @ (X @ w - y) / 40).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="re-iterable"):
        HessianOperator(model, half_mse, iter(loader))


def test_hutchinson_trace():
    model, X, y, H = least_squares(orthogonal=True)
    assert np.allclose(H, np.diag(np.diag(H)), atol=1e-10)
    op = HessianOperator(model, half_mse, (X, y))
    # Rademacher v has v_i^2 = 1: exact for a diagonal Hessian, whatever the sample
    tr, _ = hutchinson_trace(op, 3, seed=5)
    assert tr == pytest.approx(np.trace(H), rel=1e-12)
    model, X, y, H = least_squares(seed=2)
    tr, se = hutchinson_trace(HessianOperator(model, half_mse, (X, y)), 400, seed=0)
    assert se > 0 and abs(tr - np.trace(H)) < 4 * se


def test_tiny_mlp_matches_autograd_hessian_and_eigh():
    model = tiny_mlp()
    x, y = cls_data()
    ref = autograd_hessian(model, CE, x, y)
    op = HessianOperator(model, CE, (x, y))
    np.testing.assert_allclose(op.dense().numpy(), ref, rtol=0, atol=1e-12)
    ev = np.linalg.eigh(ref)[0][::-1]
    eig = top_eigenvalues(op, 5, max_iter=op.dim, tol=1e-12)
    np.testing.assert_allclose(eig.eigenvalues, ev[:5], rtol=0, atol=1e-8)
    # over a loader of uneven batches (no cached graph): the same operator
    op2 = HessianOperator(model, CE, [(x[:40], y[:40]), (x[40:], y[40:])])
    eig2 = top_eigenvalues(op2, 5, max_iter=op.dim, tol=1e-12)
    np.testing.assert_allclose(eig2.eigenvalues, ev[:5], rtol=0, atol=1e-8)
    s = spectrum(model, CE, (x, y), k=5, max_iter=op.dim, tol=1e-12)
    assert s["lambda_max"] == pytest.approx(ev[0], abs=1e-8)
    assert s["lambda_max_over_lambda_5"] == pytest.approx(ev[0] / ev[4], rel=1e-7)


def test_float64_option_and_eval_mode():
    """A float32 model measured with dtype=float64 matches the float64 reference; batch norm uses
    running statistics; the model keeps its dtype, weights and training mode."""
    model = tiny_mlp(bn=True).float()
    x, y = cls_data()
    model.train()
    with torch.no_grad():
        model(x.float() * 2 + 1)  # running statistics that differ from x's batch statistics
    before = copy.deepcopy(model.state_dict())
    op = HessianOperator(model, CE, (x.float(), y), dtype=D)
    ref_model = copy.deepcopy(model).double().eval()
    ref = autograd_hessian(ref_model, CE, x.float().double(), y)
    np.testing.assert_allclose(op.dense().numpy(), ref, rtol=0, atol=1e-12)
    assert op.dense().dtype == D
    assert model.training and next(model.parameters()).dtype == torch.float32
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_slq_density_exact_on_small_problems():
    """With as many Lanczos steps as parameters, the quadrature is exact: Rademacher start vectors
    on a diagonal Hessian put mass exactly 1/n at every true eigenvalue."""
    model, X, y, H = least_squares(orthogonal=True)
    op = HessianOperator(model, half_mse, (X, y))
    dens = slq_density(op, n_vectors=3, steps=20, seed=0)
    true = np.sort(np.diag(H))
    for nodes, weights in zip(dens.nodes, dens.weights):
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(np.sort(nodes), true, atol=1e-9)
        np.testing.assert_allclose(weights, np.full(6, 1 / 6), atol=1e-9)
    grid = np.linspace(true[0] - 2, true[-1] + 2, 4001)
    phi = dens.smooth(grid, sigma=0.05)
    assert np.trapezoid(phi, grid) == pytest.approx(1.0, abs=1e-6)
    # the peaks of the smoothed density sit at the eigenvalues
    for lam in true:
        near = np.abs(grid - lam) < 0.01
        assert phi[near].max() > 0.95 * (1 / 6) / (0.05 * math.sqrt(2 * math.pi))


def test_lanczos_quadrature_reproduces_moments():
    """sum_j tau_j theta_j^k = v^T H^k v / v^T v (Gauss quadrature), on the tiny MLP's Hessian
    (indefinite, not diagonal), with the start vector known."""
    model = tiny_mlp(seed=3)
    x, y = cls_data(seed=4)
    op = HessianOperator(model, CE, (x, y))
    H = autograd_hessian(model, CE, x, y)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=D)
    alpha, beta, Q = lanczos(op.hvp, v, 12)
    theta, S = np.linalg.eigh(np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1))
    tau = S[0] ** 2
    u = v.numpy() / np.linalg.norm(v.numpy())
    for k in range(2 * 12):  # exact for degree < 2m
        ref = u @ np.linalg.matrix_power(H, k) @ u
        assert (tau * theta**k).sum() == pytest.approx(ref, rel=1e-7, abs=1e-12)
    np.testing.assert_allclose(Q.numpy() @ Q.numpy().T, np.eye(12), atol=1e-12)
    # a full run (steps = n) puts every node on an eigenvalue of H
    dens = slq_density(op, steps=op.dim, seed=1)
    ev = np.linalg.eigvalsh(H)
    for node, wt in zip(dens.nodes[0], dens.weights[0]):
        if wt > 1e-10:
            assert np.abs(ev - node).min() < 1e-8


def test_lanczos_restart_finds_repeated_eigenvalues():
    """H = diag(5, 5, 5, 1, 0, 0) as a least-squares Hessian: the top 3 are all 5."""
    d = 6
    X = torch.diag(torch.tensor([5.0, 5, 5, 1, 0, 0], dtype=D).sqrt()) * math.sqrt(d)
    model = nn.Linear(d, 1, bias=False).double()
    op = HessianOperator(model, half_mse, (X, torch.zeros(d, dtype=D)))
    eig = top_eigenvalues(op, 4, max_iter=20, tol=1e-12)
    np.testing.assert_allclose(eig.eigenvalues, [5, 5, 5, 1], atol=1e-10)


# ------------------------------------------------------------------------------ m-sharpness
class Quadratic(nn.Module):
    """L(w) = 1/2 w^T H w at w = 0 (its minimum); records every weight it is evaluated at."""

    def __init__(self, H: torch.Tensor, w0: torch.Tensor | None = None) -> None:
        super().__init__()
        self.H = H
        self.w = nn.Parameter(torch.zeros(H.shape[0], dtype=D) if w0 is None else w0.clone())
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.w.detach().clone())
        return (0.5 * self.w @ self.H @ self.w + (x**3).sum() * 0).expand(x.shape[0])


def mean_out(out, y):
    return out.mean()


def _quad(eigs, seed=0):
    Q = torch.linalg.qr(
        torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed), dtype=D)
    )[0]  # noqa: E501
    return Q @ torch.diag(torch.tensor(eigs, dtype=D)) @ Q.T


QX, QY = torch.zeros(8, 1, dtype=D), torch.zeros(8, dtype=D)


def test_worst_case_sharpness_of_a_quadratic_is_rho2_lambda_max_over_2():
    H = _quad([7.0, 3.0, 1.0, 0.5, 0.1, 0.0])
    rho = 0.1
    r = m_sharpness(
        Quadratic(H), mean_out, QX, QY, m=8, rho=rho, steps=60, restarts=2, error_fn=None
    )
    assert r["sharpness"] == pytest.approx(rho**2 * 7.0 / 2, rel=1e-8)
    assert r["n_chunks"] == 1 and r["sharpness_error"] is None
    # the gradient vanishes at the minimum: without a random start the ascent cannot move
    r0 = m_sharpness(Quadratic(H), mean_out, QX, QY, m=8, rho=rho, steps=5, error_fn=None)
    assert r0["sharpness"] == 0.0
    # L-inf ball on a diagonal PSD quadratic: the worst corner gives rho^2 tr(H) / 2
    Hd = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=D))
    r = m_sharpness(
        Quadratic(Hd),
        mean_out,
        QX,
        QY,
        m=8,
        rho=rho,
        p=math.inf,
        steps=3,
        restarts=1,
        error_fn=None,
    )
    assert r["sharpness"] == pytest.approx(rho**2 * 7.5 / 2, rel=1e-12)
    # average case: E 1/2 (rho z)^T H (rho z) = rho^2 tr(H) / 2, z ~ N(0, I)
    r = m_sharpness(
        Quadratic(H),
        mean_out,
        QX,
        QY,
        m=8,
        rho=rho,
        kind="average",
        n_directions=4000,
        error_fn=None,
    )
    assert r["sharpness"] == pytest.approx(rho**2 * 11.6 / 2, rel=0.05)


@pytest.mark.parametrize(
    "p,adaptive", [(2.0, False), (math.inf, False), (2.0, True), (math.inf, True)]
)
def test_multi_step_ascent_never_leaves_the_ball(p, adaptive):
    """An indefinite quadratic away from its minimum with large steps (3 rho): every evaluated
    point satisfies ||T^-1 (w - w0)||_p <= rho, and the ascent does reach the boundary."""
    H = _quad([5.0, 2.0, -1.0, -3.0, 0.5], seed=1)
    w0 = torch.tensor([0.3, -1.0, 0.5, 2.0, -0.2], dtype=D)
    model = Quadratic(H, w0)
    rho = 0.2
    m_sharpness(
        model,
        mean_out,
        QX,
        QY,
        m=4,
        rho=rho,
        p=p,
        adaptive=adaptive,
        steps=8,
        restarts=2,
        step_size_mult=3.0,
        error_fn=None,
    )
    T = w0.abs() if adaptive else torch.ones_like(w0)
    norms = [float(torch.linalg.vector_norm((w - w0) / T, ord=p)) for w in model.seen]
    assert len(norms) >= 2 * 3 * 8
    assert max(norms) <= rho * (1 + 1e-12)
    assert max(norms) >= rho * (1 - 1e-9)


def one_step_reference(model, x, y, m, rho):
    """L_c(w + rho g_c / ||g_c||) - L_c(w) and the same in error, averaged over chunks of m
    consecutive examples, in eval mode, written out by hand."""
    model = copy.deepcopy(model).eval()
    ls, es = [], []
    for c in range(x.shape[0] // m):
        xc, yc = x[c * m : (c + 1) * m], y[c * m : (c + 1) * m]
        loss = CE(model(xc), yc)
        gs = torch.autograd.grad(loss, list(model.parameters()))
        norm = torch.sqrt(sum((g**2).sum() for g in gs))
        err0 = (model(xc).argmax(1) != yc).double().mean()
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, g in zip(moved.parameters(), gs):
                p.add_(rho * g / norm)
            ls.append(float(CE(moved(xc), yc) - loss))
            es.append(float((moved(xc).argmax(1) != yc).double().mean() - err0))
    return sum(ls) / len(ls), sum(es) / len(es)


def test_one_step_plain_sharpness_matches_the_hand_written_estimate():
    model = tiny_mlp(bn=True)
    x, y = cls_data(n=50)
    model.train()
    with torch.no_grad():
        model(x * 3)  # running statistics unlike any chunk's batch statistics
    model.train()  # the measure must switch to eval mode itself
    ref_l, ref_e = one_step_reference(model, x, y, m=8, rho=0.5)
    r = m_sharpness(model, CE, x, y, m=8, rho=0.5, steps=1)
    assert r["n_chunks"] == 6  # 50 // 8; the last 2 examples are dropped
    assert r["sharpness"] == pytest.approx(ref_l, rel=1e-9)
    assert r["sharpness_error"] == pytest.approx(ref_e, abs=1e-12)
    assert model.training
    # more steps and restarts can only find a larger loss in the same ball
    r5 = m_sharpness(model, CE, x, y, m=8, rho=0.5, steps=5, restarts=2, seed=1)
    assert all(a >= b - 1e-12 for a, b in zip(r5["per_chunk"], r["per_chunk"]))
    assert r5["sharpness"] > r["sharpness"]
    # m matters: one perturbation for the whole set is a different (smaller) quantity
    r_all = m_sharpness(model, CE, x, y, m=48, rho=0.5, steps=1)
    assert r_all["n_chunks"] == 1 and r_all["sharpness"] < r["sharpness"]


@pytest.mark.parametrize(
    "kw",
    [
        dict(kind="worst", steps=4, restarts=2),
        # small steps from random starts: the restarts (each its own draw) decide the maximum
        dict(kind="worst", steps=2, restarts=3, step_size_mult=0.05),
        dict(kind="worst", steps=3, restarts=1, p=math.inf, adaptive=True, eta=0.1),
        dict(kind="worst", steps=3, adaptive=True, adaptive_weights_only=True, eta=0.01),
        dict(kind="average", n_directions=5),
    ],
)
def test_vectorized_chunks_equal_the_loop(kw):
    """vmap over chunks (in groups of at most 3 chunks' weights: several groups) gives the
    loop's per-chunk numbers: the same draws in the same order, the same ascent, the same best
    iterate; batch norm with running statistics."""
    model = tiny_mlp(bn=True)
    model.train()
    x, y = cls_data(n=50)
    with torch.no_grad():
        model(x * 3)
    ref = m_sharpness(model, CE, x, y, m=7, rho=0.3, seed=3, **kw)
    n_params = sum(p.numel() for p in model.parameters())
    vec = m_sharpness(
        model, CE, x, y, m=7, rho=0.3, seed=3, vectorize=True, max_batched_params=3 * n_params, **kw
    )
    assert vec["n_chunks"] == ref["n_chunks"] == 7
    np.testing.assert_allclose(vec["per_chunk"], ref["per_chunk"], rtol=1e-9, atol=1e-12)
    for k in ("sharpness", "sharpness_error", "loss", "perturbed_loss", "error"):
        assert vec[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    assert model.training


def _relu_net_and_rescaled(a: float):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    other = copy.deepcopy(net)
    with torch.no_grad():  # relu(a z) = a relu(z) for a > 0: the function is unchanged
        other[0].weight.mul_(a)
        other[0].bias.mul_(a)
        other[2].weight.div_(a)
    return net, other


@pytest.mark.parametrize("kind", ["worst", "average"])
def test_adaptive_sharpness_is_invariant_to_relu_rescaling(kind):
    net, other = _relu_net_and_rescaled(4.0)
    x, y = cls_data(n=32)
    torch.testing.assert_close(net(x), other(x), rtol=1e-12, atol=1e-12)
    kw = dict(m=8, rho=0.1, kind=kind, steps=4, restarts=1, n_directions=5, seed=3)
    ad = [m_sharpness(n, CE, x, y, adaptive=True, **kw)["sharpness"] for n in (net, other)]
    assert ad[0] == pytest.approx(ad[1], rel=1e-9)
    assert abs(ad[0]) > 1e-5  # something was measured
    plain = [m_sharpness(n, CE, x, y, **kw)["sharpness"] for n in (net, other)]
    assert abs(plain[0] - plain[1]) > 0.1 * abs(plain[0])


def test_sharpness_is_seeded_and_validates_arguments():
    net = tiny_mlp()
    x, y = cls_data(n=16)
    kw = dict(m=4, rho=0.3, kind="average", n_directions=3)
    a = m_sharpness(net, CE, x, y, seed=1, **kw)
    assert a == m_sharpness(net, CE, x, y, seed=1, **kw)
    assert a["sharpness"] != m_sharpness(net, CE, x, y, seed=2, **kw)["sharpness"]
    for bad, match in [
        (dict(m=17, rho=0.1), "m must"),
        (dict(m=0, rho=0.1), "m must"),
        (dict(m=4, rho=-1.0), "rho"),
        (dict(m=4, rho=0.1, kind="best"), "kind"),
        (dict(m=4, rho=0.1, p=1.0), "p must"),
        (dict(m=4, rho=0.1, steps=0), "steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            m_sharpness(net, CE, x, y, **bad)


# ---------------------------------------------------------------------------- landscapes
class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _conv_setup():
    torch.manual_seed(0)
    model = ConvBN().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 2, 5, 5, generator=g, dtype=D)
    y = torch.randint(0, 3, (24,), generator=g)
    model.train()
    with torch.no_grad():
        model(x * 2 + 0.5)
    model.eval()
    return model, x, y


def test_filter_normalized_direction():
    model, _, _ = _conv_setup()
    d = filter_normalized_direction(model, seed=0)
    assert set(d) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        if p.dim() <= 1:  # biases and batch-norm scale/shift are not moved
            assert torch.count_nonzero(d[name]) == 0, name
            continue
        for i in range(p.shape[0]):  # each filter has its weight filter's norm
            assert float(d[name][i].norm()) == pytest.approx(float(p[i].detach().norm()), rel=1e-9)
        assert not torch.allclose(d[name] / d[name].norm(), p / p.norm())
    d_again, d_other = filter_normalized_direction(model, 0), filter_normalized_direction(model, 1)
    assert all(torch.equal(d[k], d_again[k]) for k in d)
    assert not torch.equal(d["conv.weight"], d_other["conv.weight"])


def _moved_copy(model, *dirs_and_coeffs):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            for d, c in dirs_and_coeffs:
                p.add_(c * d[name])
    return m.eval()


def test_slices_evaluate_the_moved_weights():
    model, x, y = _conv_setup()
    before = copy.deepcopy(model.state_dict())
    d1, d2 = filter_normalized_direction(model, 0), filter_normalized_direction(model, 1)
    rows = slice_1d(model, CE, (x, y), d1, [-0.5, 0.0, 0.75])
    for r in rows:
        m = _moved_copy(model, (d1, r["alpha"]))
        with torch.no_grad():
            out = m(x)
        assert r["loss"] == pytest.approx(float(CE(out, y)), rel=1e-12)
        assert r["error"] == pytest.approx(float((out.argmax(1) != y).double().mean()))
    rows = slice_2d(model, CE, [(x[:10], y[:10]), (x[10:], y[10:])], d1, d2, [0.0, 0.5], [-1.0])
    assert [(r["alpha"], r["beta"]) for r in rows] == [(0.0, -1.0), (0.5, -1.0)]
    for r in rows:
        with torch.no_grad():
            ref = float(CE(_moved_copy(model, (d1, r["alpha"]), (d2, r["beta"]))(x), y))
        assert r["loss"] == pytest.approx(ref, rel=1e-12)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_interpolation_endpoints_and_midpoint():
    model_a, x, y = _conv_setup()
    torch.manual_seed(5)
    model_b = ConvBN().double()
    model_b.train()
    with torch.no_grad():
        model_b(x - 1)
    model_b.eval()
    sa, sb = model_a.state_dict(), model_b.state_dict()
    rows = interpolate(model_a, sa, sb, [-0.5, 0.0, 0.5, 1.0, 1.5], CE, (x, y))
    with torch.no_grad():
        la, lb = float(CE(model_a(x), y)), float(CE(model_b(x), y))
    assert [r["t"] for r in rows] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert rows[1]["loss"] == pytest.approx(la, rel=1e-12)
    assert rows[3]["loss"] == pytest.approx(lb, rel=1e-12)
    mid = copy.deepcopy(model_a)
    mid.load_state_dict(
        {k: (sa[k] + sb[k]) / 2 if sa[k].is_floating_point() else sa[k] for k in sa}
    )
    with torch.no_grad():
        assert rows[2]["loss"] == pytest.approx(float(CE(mid.eval()(x), y)), rel=1e-12)
    with pytest.raises(ValueError, match="state_b"):
        interpolate(model_a, sa, {k: v for k, v in sb.items() if k != "fc.bias"}, [0], CE, (x, y))


def test_batch_norm_recomputation():
    """Running statistics become the average of the batch statistics over bn_data (reference
    written by hand), and interpolation with bn_data evaluates the recomputed model."""
    model, x, y = _conv_setup()
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    m = copy.deepcopy(model)
    recompute_bn_stats(m, batches)
    assert not m.training
    with torch.no_grad():
        h = [model.conv(b) for b, _ in batches]
    mean = torch.stack([t.mean((0, 2, 3)) for t in h]).mean(0)
    var = torch.stack([t.transpose(0, 1).flatten(1).var(1, unbiased=True) for t in h]).mean(0)
    torch.testing.assert_close(m.bn.running_mean, mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.bn.running_var, var, rtol=1e-12, atol=1e-14)
    assert m.bn.momentum == model.bn.momentum
    rows = interpolate(
        model, model.state_dict(), model.state_dict(), [0.0], CE, (x, y), bn_data=batches
    )
    with torch.no_grad():
        assert rows[0]["loss"] == pytest.approx(float(CE(m(x), y)), rel=1e-12)
        assert rows[0]["loss"] != pytest.approx(float(CE(model(x), y)), rel=1e-6)


class Bump(nn.Module):
    """L(w) = -(w - 0.25)^2 for a scalar w starting at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (-((self.w - 0.25) ** 2)).expand(x.shape[0])


def test_worst_case_keeps_the_best_iterate():
    """Steps of 0.6 overshoot the bump's top at 0.25: the iterates alternate 0.6, 0, 0.6, ...
    with losses -0.1225, -0.0625, -0.1225; the estimate is the best iterate (0 = back at the
    start), never the last one."""
    kw = dict(m=8, rho=1.0, step_size_mult=0.6, error_fn=None)
    for p in (2.0, math.inf):
        one = m_sharpness(Bump(), mean_out, QX, QY, steps=1, p=p, **kw)["sharpness"]
        assert one == pytest.approx(-0.1225 + 0.0625, abs=1e-12)
        for k in (2, 3):
            s = m_sharpness(Bump(), mean_out, QX, QY, steps=k, p=p, **kw)["sharpness"]
            assert s == pytest.approx(0.0, abs=1e-9)


def test_random_ball_points_fill_the_ball():
    """Uniform in the L2 disc (n = 2): P(r <= rho / 2) = 1/4; uniform in the L-inf cube."""
    gen = torch.Generator().manual_seed(0)
    r = [
        float(random_ball_point([torch.Size([2])], 0.3, 2.0, gen, D)[0].norm()) for _ in range(4000)
    ]  # noqa: E501
    assert max(r) <= 0.3 + 1e-12
    assert np.mean(np.array(r) <= 0.15) == pytest.approx(0.25, abs=0.03)
    u = random_ball_point([torch.Size([3, 1000])], 0.3, math.inf, gen, D)[0]
    assert float(u.abs().max()) <= 0.3 and float(u.abs().mean()) == pytest.approx(0.15, abs=0.01)
