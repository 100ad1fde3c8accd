"""Model, data, init, gradients and simplicity measures of one_layer_relu_nets (float64, CPU)."""

from __future__ import annotations

import pytest
import torch

from one_layer_relu_nets.data import reference_1d, teacher_student
from one_layer_relu_nets.engine import sam_gradient
from one_layer_relu_nets.measures import simplicity_1d
from one_layer_relu_nets.model import (
    Params,
    init_params,
    loss_and_grads,
    per_example_grads,
    stack_params,
)

F64 = torch.float64


def _random_params(R: int, width: int, d: int, seed: int = 0) -> Params:
    g = torch.Generator().manual_seed(seed)
    return Params(
        torch.randn(R, width, d, dtype=F64, generator=g),
        torch.randn(R, width, dtype=F64, generator=g),
        torch.randn(R, width, dtype=F64, generator=g),
    )


def _f(W, b, a, X):
    """The network written directly with autograd-able ops, one run, no batch dims."""
    return torch.relu(X @ W.T + b) @ a


# ------------------------------------------------------------------------------- data and init
def test_reference_data_matches_reference_md():
    # PAPERS.md#relu-nets: x = ([-5.5, ..., 5.5]) / 4 + 0.07, y = 0.345 + [-2, 1.5, 0, 0, 2, 1, ...]
    x_expected = [
        -1.305,
        -1.055,
        -0.805,
        -0.555,
        -0.305,
        -0.055,
        0.195,
        0.445,
        0.695,
        0.945,
        1.195,
        1.445,
    ]
    y_expected = [
        -1.655,
        1.845,
        0.345,
        0.345,
        2.345,
        1.345,
        0.345,
        -0.655,
        0.345,
        1.345,
        2.345,
        -0.655,
    ]
    data = reference_1d()
    assert data.X.shape == (12, 1) and data.y.shape == (12,)
    torch.testing.assert_close(
        data.X[:, 0], torch.tensor(x_expected, dtype=F64), rtol=0, atol=1e-15
    )
    torch.testing.assert_close(data.y, torch.tensor(y_expected, dtype=F64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_reference_init_is_the_original_draw(seed):
    """The original notebook: torch.manual_seed(seed); hidden = nn.Linear(1, 100) then weight =
    2.5 (2 round(rand) - 1), bias = 2.5 randn; out = nn.Linear(100, 1, bias=False),
    weight = 4 randn."""
    torch.manual_seed(seed)
    hidden = torch.nn.Linear(1, 100, bias=True)
    W = 2.5 * (-1 + 2 * torch.round(torch.rand_like(hidden.weight)))
    b = torch.randn_like(hidden.bias) * 2.5
    out = torch.nn.Linear(100, 1, bias=False)
    a = torch.randn_like(out.weight) * 4.0
    p = init_params(100, 1, seed, "reference")
    assert p.W.dtype == F64
    assert torch.equal(p.W, W.double()) and torch.equal(p.b, b.double())
    assert torch.equal(p.a, a[0].double())


def test_reference_init_distribution():
    p = init_params(20000, 1, 3, "reference")
    assert torch.all(p.W.abs() == 2.5)  # hidden weights +-2.5
    assert 0.48 < (p.W > 0).double().mean() < 0.52  # random signs
    assert abs(p.b.std().item() - 2.5) < 0.05 and abs(p.b.mean().item()) < 0.05
    assert abs(p.a.std().item() - 4.0) < 0.08 and abs(p.a.mean().item()) < 0.08


def test_standard_init_is_pytorch_default_range():
    p = init_params(5000, 4, 0, "standard")
    assert p.W.abs().max() <= 0.5 and p.W.abs().max() > 0.49  # U(-1/sqrt(d), 1/sqrt(d))
    assert p.a.abs().max() <= 5000**-0.5
    assert not torch.equal(init_params(50, 4, 0, "standard").W, init_params(50, 4, 1, "standard").W)
    with pytest.raises(ValueError, match="init"):
        init_params(5, 1, 0, "xavier")


def test_teacher_data_is_deterministic_and_noiseless():
    a, b = teacher_student(4, 3, 10, 50, 7), teacher_student(4, 3, 10, 50, 7)
    assert torch.equal(a.X, b.X) and torch.equal(a.y_test, b.y_test)
    Wt, at = torch.tensor(a.teacher["W"], dtype=F64), torch.tensor(a.teacher["a"], dtype=F64)
    torch.testing.assert_close(torch.linalg.vector_norm(Wt, dim=1), torch.ones(3, dtype=F64))
    torch.testing.assert_close(a.y, torch.relu(a.X @ Wt.T) @ at)


# ------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("d", [1, 3])
def test_batched_loss_and_grads_equal_autograd(d):
    R, width, n = 3, 7, 5
    P = _random_params(R, width, d)
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(n, d, dtype=F64, generator=g), torch.randn(n, dtype=F64, generator=g)
    omega = torch.rand(n, dtype=F64, generator=g)
    loss, grads, _ = loss_and_grads(P, X.unsqueeze(0), y.unsqueeze(0), omega)
    for r in range(R):
        W, b, a = (t[r].clone().requires_grad_(True) for t in P)
        L = (0.5 * omega * (_f(W, b, a, X) - y) ** 2).sum()
        gW, gb, ga = torch.autograd.grad(L, (W, b, a))
        torch.testing.assert_close(loss[r], L.detach())
        torch.testing.assert_close(grads.W[r], gW)
        torch.testing.assert_close(grads.b[r], gb)
        torch.testing.assert_close(grads.a[r], ga)


def test_per_example_grads_equal_autograd():
    R, width, d, n = 2, 6, 2, 4
    P = _random_params(R, width, d, seed=3)
    X = torch.randn(n, d, dtype=F64)
    y = torch.randn(n, dtype=F64)
    g = per_example_grads(P, X.unsqueeze(0), y.unsqueeze(0))
    assert g.W.shape == (R, n, width, d) and g.a.shape == (R, n, width)
    for r in range(R):
        for i in range(n):
            W, b, a = (t[r].clone().requires_grad_(True) for t in P)
            L = 0.5 * (_f(W, b, a, X[i : i + 1]) - y[i : i + 1]).pow(2).sum()
            gW, gb, ga = torch.autograd.grad(L, (W, b, a))
            torch.testing.assert_close(g.W[r, i], gW)
            torch.testing.assert_close(g.b[r, i], gb)
            torch.testing.assert_close(g.a[r, i], ga)


@pytest.mark.parametrize("m", [1, 2, 6])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sam_gradient_equals_autograd_on_unbatched_copy(m, normalize, reduction):
    """m-SAM: per chunk C_k, e_k = rho g_k/||g_k|| (or rho g_k), g_k = grad of the chunk loss; the
    update direction sums omega grad l_i(w + e_k) over the chunk's examples, over all chunks."""
    R, width, d, n = 3, 5, 2, 6
    P = _random_params(R, width, d, seed=5)
    X, y = torch.randn(n, d, dtype=F64), torch.randn(n, dtype=F64)
    rho = torch.tensor([0.0, 0.05, 0.3], dtype=F64)
    total, per_chunk = sam_gradient(
        P, X.unsqueeze(0), y.unsqueeze(0), rho, m, normalize=normalize, reduction=reduction
    )
    assert per_chunk.W.shape == (R, n // m, width, d)
    omega = 1.0 if reduction == "sum" else 1.0 / n
    omega_chunk = 1.0 if reduction == "sum" else 1.0 / m
    for r in range(R):
        acc = [torch.zeros_like(t[r]) for t in P]
        for k in range(n // m):
            Xk, yk = X[k * m : (k + 1) * m], y[k * m : (k + 1) * m]
            w = [t[r].clone().requires_grad_(True) for t in P]
            Lk = (omega_chunk * 0.5 * (_f(*w, Xk) - yk) ** 2).sum()
            g = torch.autograd.grad(Lk, w)
            norm = torch.sqrt(sum((gi**2).sum() for gi in g))
            e = [rho[r] * gi / norm if normalize else rho[r] * gi for gi in g]
            wp = [(t[r] + ei).requires_grad_(True) for t, ei in zip(P, e, strict=True)]
            Lp = (omega * 0.5 * (_f(*wp, Xk) - yk) ** 2).sum()
            gp = torch.autograd.grad(Lp, wp)
            for name_i, (t_acc, gpi) in enumerate(zip(acc, gp, strict=True)):
                t_acc += gpi
                torch.testing.assert_close(per_chunk[name_i][r, k], gpi)
        for t, t_acc in zip(total, acc, strict=True):
            torch.testing.assert_close(t[r], t_acc)


def test_sam_gradient_with_rho_zero_is_the_gradient():
    P = _random_params(2, 4, 1, seed=9)
    data = reference_1d()
    X, y = data.X.unsqueeze(0), data.y.unsqueeze(0)
    total, _ = sam_gradient(P, X, y, torch.zeros(2, dtype=F64), 1)
    _, grads, _ = loss_and_grads(P, X, y)
    for a, b in zip(total, grads, strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------- measures
def _hand_built() -> Params:
    # neuron: (w, b, a) -> breakpoint -b/w, slope jump a|w|
    rows = [
        (1.0, 0.0, 2.0),  # bp 0.0, jump +2            -> a kink
        (-2.0, 1.0, 1.0),  # bp 0.5, jump +2           \ same point: total 0 -> no kink
        (1.0, -0.5, -2.0),  # bp 0.5, jump -2          /
        (4.0, 8.0, 5.0),  # bp -2.0: outside [-1, 1]  -> not counted
        (0.5, 0.1, 0.1),  # bp -0.2, jump 0.05        -> below the threshold (TV only)
        (0.0, -1.0, 3.0),  # w = 0: no breakpoint, never active
    ]
    t = torch.tensor(rows, dtype=F64)
    return Params(t[:, 0:1].contiguous(), t[:, 1].contiguous(), t[:, 2].contiguous())


def test_kinks_slope_tv_active_and_path_norm_on_hand_built_net():
    p = _hand_built()
    x = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=F64)
    m = simplicity_1d(p, x, threshold=1.0)
    assert m["kinks"] == 1
    assert m["slope_tv"] == pytest.approx(2.05, abs=1e-12)
    assert m["active_neurons"] == 5
    assert m["path_norm"] == pytest.approx(2 * 1 + 1 * 2 + 2 * 1 + 5 * 4 + 0.1 * 0.5, abs=1e-12)
    # a threshold below 0.05 also counts the small kink
    assert simplicity_1d(p, x, threshold=0.01)["kinks"] == 2
    # the slope TV agrees with finite differences of f on a fine grid
    grid = torch.linspace(-1, 1, 2_001, dtype=F64)
    f = torch.relu(grid[:, None] * p.W[:, 0] + p.b) @ p.a
    slope = torch.diff(f) / torch.diff(grid)
    assert torch.diff(slope).abs().sum().item() == pytest.approx(2.05, abs=1e-6)


def test_kink_merge_tolerance():
    # two equal jumps 0.005 apart: one kink (merged, total 4) at merge_tol 0.01, two at 0.001
    p = Params(
        torch.tensor([[1.0], [1.0]], dtype=F64),
        torch.tensor([0.0, -0.005], dtype=F64),
        torch.tensor([2.0, 2.0], dtype=F64),
    )
    x = torch.tensor([-1.0, 1.0], dtype=F64)
    assert simplicity_1d(p, x, merge_tol=0.01)["kinks"] == 1
    assert simplicity_1d(p, x, merge_tol=0.001)["kinks"] == 2


def test_stack_params_roundtrip():
    ps = [init_params(5, 2, s, "standard") for s in range(3)]
    st = stack_params(ps)
    assert st.W.shape == (3, 5, 2)
    assert torch.equal(st.b[1], ps[1].b)


@pytest.mark.parametrize(("d", "reduction"), [(1, "sum"), (3, "mean")])
def test_loss_hessian_equals_autograd_hessian(d, reduction):
    from one_layer_relu_nets.engine import lambda_max
    from one_layer_relu_nets.model import loss_hessian

    width, n = 6, 5
    P = _random_params(1, width, d, seed=11)
    p = Params(*(t[0] for t in P))
    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(n, d, dtype=F64, generator=g), torch.randn(n, dtype=F64, generator=g)
    omega = 1.0 if reduction == "sum" else 1.0 / n
    flat = torch.cat([p.W.reshape(-1), p.b, p.a])

    def loss(v):
        W, b, a = v[: width * d].reshape(width, d), v[width * d : width * (d + 1)], v[-width:]
        return (omega * 0.5 * (_f(W, b, a, X) - y) ** 2).sum()

    ref = torch.autograd.functional.hessian(loss, flat)
    torch.testing.assert_close(loss_hessian(p, X, y, omega), ref, rtol=1e-12, atol=1e-12)
    # batched over runs, and lambda_max is the top eigenvalue
    torch.testing.assert_close(loss_hessian(P, X.unsqueeze(0), y.unsqueeze(0), omega)[0], ref)
    lam = torch.linalg.eigvalsh(ref)[-1]
    assert lambda_max(p, X, y, reduction) == pytest.approx(float(lam), rel=1e-12)
