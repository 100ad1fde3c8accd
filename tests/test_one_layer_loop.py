"""The training loop of one_layer_relu_nets pinned against plain loops written here, with autograd
(never the closed-form gradients, schedules or data of the code under test): the original
notebook's loop, m-SAM / 1-SAM with every lr and rho schedule, SGD's batches, the teacher, and
the C backend against the torch backend."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from one_layer_relu_nets import fast
from one_layer_relu_nets.data import teacher_student
from one_layer_relu_nets.engine import Config, make_dataset, run_group

F64 = torch.float64
BACKENDS = ["torch", "c"]
needs_c = pytest.mark.skipif(not fast.available(), reason="no C compiler for the C backend")


def _backend(name: str):
    return pytest.param(name, marks=needs_c) if name == "c" else name


def _f(W, b, a, X):
    return torch.relu(X @ W.T + b) @ a


def _original_init(seed: int) -> list[torch.Tensor]:
    """The notebook's Net(1, 100, 1) after torch.manual_seed(seed), cast to float64."""
    torch.manual_seed(seed)
    hidden = torch.nn.Linear(1, 100)
    W = 2.5 * (-1 + 2 * torch.round(torch.rand_like(hidden.weight)))
    b = torch.randn_like(hidden.bias) * 2.5
    out = torch.nn.Linear(100, 1, bias=False)
    a = torch.randn_like(out.weight) * 4.0
    return [W.double(), b.double(), a[0].double()]


def _original_loop(seed: int, rho: float, steps: int, iter_max: int = 1_000_000):
    """The original notebook's loop (one_layer_relu_nets/1d_nn.ipynb), in float64: loss
    0.5 sum of squares, SGD without momentum at lr_max = 5e-5; with rho > 0 the ascent
    w + rho g/||g|| and the lr of step n (1-based) lr_max (1 - n/iter_max), for SAM only."""
    x = torch.tensor(
        (
            np.array([-5.5, -4.5, -3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5]) / 4 + 0.07
        ).reshape(-1, 1),
        dtype=F64,
    )
    y = torch.tensor(0.345 + np.array([-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1]), dtype=F64)
    w = _original_init(seed)
    lr_max = 5e-5
    for n in range(1, steps + 1):
        p = [t.clone().requires_grad_(True) for t in w]
        loss = 0.5 * ((_f(*p, x) - y) ** 2).sum()
        g = torch.autograd.grad(loss, p)
        lr = lr_max
        if rho > 0:
            norm = torch.sqrt(sum((gi**2).sum() for gi in g))
            pp = [(t + rho * gi / norm).requires_grad_(True) for t, gi in zip(w, g, strict=True)]
            lr = lr_max * (1 - n / iter_max)
            g = torch.autograd.grad(0.5 * ((_f(*pp, x) - y) ** 2).sum(), pp)
        w = [t - lr * gi for t, gi in zip(w, g, strict=True)]
    return w


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize(("alg", "rho"), [("gd", 0.0), ("nsam", 0.3)])
def test_original_notebook_loop_first_3000_steps(seed, alg, rho):
    """Our run with the original's settings (lr decayed for SAM only, T = 10^6) equals the
    notebook's loop after 3000 steps. The notebook's batch is a random permutation of the 12
    points each step; it changes only the order of a sum, so the reference keeps the order.
    (The default backend; the torch backend equals it, test_c_backend_equals_torch_backend.)"""
    backend = "auto"
    cfg = Config(
        algorithms=[alg],
        rhos=[rho],
        lr=5e-5,
        lr_schedule="linear",
        lr_decay_sam_only=True,
        iterations=1_000_000,
        loss_threshold=1e-5,
        backend=backend,
        seeds=[seed],
    )
    res = run_group(cfg, make_dataset(cfg), alg, [rho], [seed], max_steps=3000)
    assert res.iterations == [3000] and not res.stopped[0]
    ref = _original_loop(seed, rho, 3000)
    for ours, theirs in zip(res.params, ref, strict=True):
        torch.testing.assert_close(ours[0], theirs, rtol=1e-11, atol=1e-11)


# ------------------------------------------------------------------ m-SAM with every schedule
LR_S = {
    "constant": lambda t, T: 1.0,
    "linear": lambda t, T: 1.0 - (t + 1) / T,
    "cosine": lambda t, T: 0.5 * (1.0 + math.cos(math.pi * (t + 1) / T)),
}
RHO_S = {
    "constant": lambda t, T: 1.0,
    "linear": lambda t, T: 1.0 - t / T,
    "inv_sqrt": lambda t, T: 1.0 / math.sqrt(1.0 + t),
}
TINY = dict(
    task="teacher",
    d=2,
    teacher_width=2,
    n_train=6,
    n_test=40,
    width=5,
    init="standard",
    reduction="mean",
    lr=0.3,
)


def _msam_reference(cfg: Config, data, m: int, rho: float, seed: int, steps: int):
    """m-SAM written plainly: for each chunk of m consecutive examples the ascent of the chunk
    loss (mean over the chunk), then the gradient of the batch loss's chunk terms at the
    perturbed point; lr and rho schedules from the tables above."""
    from one_layer_relu_nets.model import init_params

    w = list(init_params(cfg.width, data.d, seed, cfg.init))
    X, y, n = data.X, data.y, data.n
    for t in range(steps):
        rho_t = rho * RHO_S[cfg.rho_schedule](t, cfg.iterations)
        total = [torch.zeros_like(v) for v in w]
        for k in range(n // m):
            Xk, yk = X[k * m : (k + 1) * m], y[k * m : (k + 1) * m]
            p = [v.clone().requires_grad_(True) for v in w]
            g = torch.autograd.grad((0.5 * (_f(*p, Xk) - yk) ** 2).mean(), p)
            if cfg.normalize:
                norm = torch.sqrt(sum((gi**2).sum() for gi in g))
                e = [rho_t * gi / (norm + 1e-12) for gi in g]
            else:
                e = [rho_t * gi for gi in g]
            pp = [(v + ei).requires_grad_(True) for v, ei in zip(w, e, strict=True)]
            gp = torch.autograd.grad((0.5 * (_f(*pp, Xk) - yk) ** 2).sum() / n, pp)
            total = [a + b for a, b in zip(total, gp, strict=True)]
        lr_t = cfg.lr * LR_S[cfg.lr_schedule](t, cfg.iterations)
        w = [v - lr_t * g for v, g in zip(w, total, strict=True)]
    return w


@pytest.mark.parametrize("backend", [_backend(b) for b in BACKENDS])
@pytest.mark.parametrize(("alg", "m"), [("1sam", 1), ("msam", 3)])
@pytest.mark.parametrize("lr_schedule", list(LR_S))
@pytest.mark.parametrize("rho_schedule", list(RHO_S))
def test_sam_steps_equal_a_plain_autograd_loop(backend, alg, m, lr_schedule, rho_schedule):
    T = 12
    cfg = Config(
        **TINY,
        algorithms=[alg],
        m=m,
        iterations=T,
        loss_threshold=0.0,
        lr_schedule=lr_schedule,
        rho_schedule=rho_schedule,
        backend=backend,
    )
    data = make_dataset(cfg)
    res = run_group(cfg, data, alg, [0.4, 0.1], [0, 1])
    for i, (rho, seed) in enumerate([(0.4, 0), (0.1, 1)]):
        ref = _msam_reference(cfg, data, m, rho, seed, T)
        for ours, theirs in zip(res.params, ref, strict=True):
            torch.testing.assert_close(ours[i], theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", [_backend(b) for b in BACKENDS])
def test_unnormalized_nsam_equals_a_plain_loop(backend):
    cfg = Config(
        **TINY,
        algorithms=["nsam"],
        iterations=10,
        loss_threshold=0.0,
        normalize=False,
        rho_schedule="inv_sqrt",
        lr_schedule="cosine",
        backend=backend,
    )
    data = make_dataset(cfg)
    res = run_group(cfg, data, "nsam", [0.5], [2])
    ref = _msam_reference(cfg, data, data.n, 0.5, 2, 10)
    for ours, theirs in zip(res.params, ref, strict=True):
        torch.testing.assert_close(ours[0], theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", [_backend(b) for b in BACKENDS])
def test_lr_decay_for_sam_only_keeps_gd_at_the_constant_lr(backend):
    base = Config(**TINY, iterations=10, loss_threshold=0.0, lr_schedule="linear", backend=backend)
    data = make_dataset(base)
    const = run_group(dataclasses.replace(base, lr_schedule="constant"), data, "gd", [0.0], [0])
    only = run_group(dataclasses.replace(base, lr_decay_sam_only=True), data, "gd", [0.0], [0])
    decayed = run_group(base, data, "gd", [0.0], [0])
    torch.testing.assert_close(only.params.W, const.params.W, rtol=0, atol=0)
    assert not torch.allclose(decayed.params.W, const.params.W, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ SGD batches, teacher, backends
def test_sgd_batches_are_drawn_without_replacement_from_the_runs_generator():
    """Step t of run seed s uses randperm(n)[:B] of a generator seeded 10000 + s (documented in
    engine.py), so the batches are without replacement and independent of the other runs."""
    cfg = Config(**TINY, algorithms=["sgd"], batch_size=4, iterations=15, loss_threshold=0.0)
    data = make_dataset(cfg)
    res = run_group(cfg, data, "sgd", [0.0, 0.0], [0, 5])
    from one_layer_relu_nets.model import init_params

    for i, seed in enumerate([0, 5]):
        g = torch.Generator().manual_seed(10_000 + seed)
        w = list(init_params(cfg.width, data.d, seed, cfg.init))
        for _ in range(15):
            idx = torch.randperm(data.n, generator=g)[:4]
            assert len(set(idx.tolist())) == 4
            p = [v.clone().requires_grad_(True) for v in w]
            L = (0.5 * (_f(*p, data.X[idx]) - data.y[idx]) ** 2).mean()
            w = [v - cfg.lr * gi for v, gi in zip(w, torch.autograd.grad(L, p), strict=True)]
        for ours, theirs in zip(res.params, w, strict=True):
            torch.testing.assert_close(ours[i], theirs, rtol=1e-12, atol=1e-12)


def test_teacher_construction():
    """Unit-norm teacher neurons with output weights +1, -1, +1, ... (alternating); labels are
    the teacher's outputs, without noise, on training, test and validation points."""
    ds = teacher_student(4, 3, 10, 30, 7, n_val=5)
    W = torch.tensor(ds.teacher["W"], dtype=F64)
    a = torch.tensor([1.0, -1.0, 1.0], dtype=F64)
    assert torch.tensor(ds.teacher["a"], dtype=F64).tolist() == a.tolist()
    torch.testing.assert_close(torch.linalg.vector_norm(W, dim=1), torch.ones(3, dtype=F64))
    for X, y in ((ds.X, ds.y), (ds.X_test, ds.y_test), (ds.X_val, ds.y_val)):
        torch.testing.assert_close(y, torch.relu(X @ W.T) @ a)
    # the validation points come after the others: adding them changes neither
    plain = teacher_student(4, 3, 10, 30, 7)
    assert torch.equal(plain.X, ds.X) and torch.equal(plain.X_test, ds.X_test)
    # and they are fresh points, not copies of training or test points
    others = torch.cat([ds.X, ds.X_test])
    assert torch.cdist(ds.X_val, others).min() > 1e-6


LOSS_STOP = 2e-3


@needs_c
@pytest.mark.parametrize(("alg", "m"), [("gd", 1), ("nsam", 1), ("1sam", 1), ("msam", 2)])
@pytest.mark.parametrize("normalize", [True, False])
def test_c_backend_equals_torch_backend(alg, m, normalize):
    """Whole groups (params, stop steps, history rows) on both backends, runs that stop at
    different steps included."""
    cfg = Config(
        **TINY,
        algorithms=[alg],
        m=m,
        iterations=120,
        loss_threshold=LOSS_STOP,
        normalize=normalize,
        lr_schedule="linear",
        n_logs=8,
    )
    data = make_dataset(cfg)
    a = run_group(dataclasses.replace(cfg, backend="torch"), data, alg, [0.05, 0.2], [0, 1])
    b = run_group(dataclasses.replace(cfg, backend="c"), data, alg, [0.05, 0.2], [0, 1])
    assert a.iterations == b.iterations and a.stopped == b.stopped
    assert any(it < 120 for it in a.iterations), "no run stopped early"
    for x, y in zip(a.params, b.params, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert [r["step"] for r in a.history] == [r["step"] for r in b.history]
    for ra, rb in zip(a.history, b.history, strict=True):
        np.testing.assert_allclose(ra["train_loss"], rb["train_loss"], rtol=1e-9)
        np.testing.assert_allclose(ra["test_loss"], rb["test_loss"], rtol=1e-9)


def test_backend_c_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="^backend"):
        Config(algorithms=["sgd"], batch_size=4, backend="c").validate(12)
    with pytest.raises(ValueError, match="^backend"):
        Config(dtype="float32", backend="c").validate(12)
