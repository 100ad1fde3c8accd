"""The batched m-SAM paths of ``msam_backward`` against the loop (the reference).

Both paths run the same training (20 steps of SGD with momentum) from the same weights on the same
batches; the weights, the batch-norm running statistics and the logged losses must agree to float
rounding. With an L2 term inside the loss (read from the module at call time, as deep_nets does)
``vectorize=True`` takes the vmap path; without it, on a model of Linear layers, the fused path
(which ``vectorize=None``, the default, takes too).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deep_nets.models import build_model
from deep_nets.steps import OriginalAscentSAM
from sharpness import SAM, msam_backward
from sharpness.modules import msam_fused_reason, msam_vectorize_reason

TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(768, 16), nn.Tanh(), nn.Linear(16, 10))


def resnet(norm: str, seed: int = 0) -> nn.Module:
    """PreAct ResNet-18, width 4, on 16 x 16 inputs: the last stage is 2 x 2, so every GroupNorm
    group holds several values (with one value a group normalizes rounding noise, whose sign
    then decides a ReLU: a model whose output is rounding, useless for comparing paths)."""
    torch.manual_seed(seed)
    name = "resnet18" if norm == "bn" else "resnet18_gn"
    return build_model(name, in_channels=3, num_classes=10, width=4, input_shape=(3, 16, 16))


MODELS = {"mlp": mlp, "resnet_gn": lambda: resnet("gn"), "resnet_bn": lambda: resnet("bn")}


def batch(t: int, dtype: torch.dtype, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + t)
    return torch.randn(n, 3, 16, 16, generator=g, dtype=dtype), torch.randint(
        0, 10, (n,), generator=g
    )


def l2_loss(model: nn.Module, l2: float = 1e-3):
    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        reg = sum((p**2).sum() for p in model.parameters())  # the module's tensors, at call time
        return F.cross_entropy(model(x), y) + 0.5 * l2 * reg

    return loss


def plain_loss(model: nn.Module):
    return lambda x, y: F.cross_entropy(model(x), y)


def train(
    make, dtype, vectorize, steps=20, m=4, opt_cls=SAM, autocast=None, jitter=0.0, reg=True, **kw
):
    model = make().to(dtype)
    with torch.no_grad():  # a relative change of the initial weights (the model's sensitivity)
        for p in model.parameters():
            p.mul_(1 + jitter)
    opt_kw = kw.pop("opt_kw", {})
    # the official ASAM scales parameters by name: it needs named_parameters()
    params = model.named_parameters() if opt_kw.get("adaptive") else model.parameters()
    opt = opt_cls(params, torch.optim.SGD, rho=0.1, lr=0.02, momentum=0.9, **opt_kw)
    loss = l2_loss(model) if reg else plain_loss(model)
    logged = []
    for t in range(steps):
        x, y = batch(t, dtype)
        opt.zero_grad()
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            lo, plo = msam_backward(opt, model, loss, x, y, m, vectorize=vectorize, **kw)
        opt.update()
        logged.append((lo.item(), plo.item()))
    return model, logged


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def assert_same(ref, vec, tol):
    (m1, l1), (m2, l2) = ref, vec
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for kind in ("weights", "running"):  # relative over all weights, over all BN statistics
        ks = [
            k for k in s1 if s1[k].is_floating_point() and ("running" in k) == (kind != "weights")
        ]
        if ks:
            a, b = (torch.cat([s[k].reshape(-1) for k in ks]) for s in (s1, s2))
            assert rel(b, a) <= tol, (kind, rel(b, a))
    for k in s1:
        if not s1[k].is_floating_point():  # num_batches_tracked
            assert torch.equal(s1[k], s2[k]), k
    for a, b in zip(l1, l2):
        assert abs(a[0] - b[0]) <= tol * abs(a[0]) and abs(a[1] - b[1]) <= tol * abs(a[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(MODELS))
def test_vectorized_equals_loop_after_20_steps(name, dtype):
    make = MODELS[name]
    assert msam_vectorize_reason(make()) is None
    ref = train(make, dtype, vectorize=False)
    vec = train(make, dtype, vectorize=True)
    tol = TOL[dtype]
    if name != "mlp":
        # These small ReLU ResNets amplify any rounding difference ~10x a step (the loop
        # against itself from weights changed by 1e-15 relative: 2.6e-15 after one step, 2.2e-3
        # after eight). Bound: the vectorized path is no further from the loop than the loop
        # is from itself after a change of the initial weights of one rounding error.
        eps = torch.finfo(dtype).eps
        noisy = train(make, dtype, vectorize=False, jitter=eps)
        tol = max(tol, 10 * rel(weights(noisy[0]), weights(ref[0])))
    assert_same(ref, vec, tol)
    moved = [rel(p, q) for p, q in zip(ref[0].parameters(), make().to(dtype).parameters())]
    assert max(moved) > 1e-2  # the runs trained


@pytest.mark.parametrize(
    "kw",
    [
        dict(sam_iters=3, step_size_mult=0.7),
        dict(bn_first_pass_only=False),
        dict(bn_first_pass_only=False, sam_iters=2, step_size_mult=1.5),
        dict(opt_cls=OriginalAscentSAM, opt_kw=dict(normalize=False, acc_steps=4)),
        dict(opt_kw=dict(adaptive=True, eta=0.01)),
        dict(max_batched_params=3000),  # groups of chunks (the model has ~2.3k values... x chunks)
        dict(m=2),
    ],
    ids=["iters3", "bn_every", "bn_every_iters2", "no_grad_norm", "asam", "groups", "m2"],
)
def test_vectorized_equals_loop_for_every_option(kw):
    make = MODELS["resnet_bn"]  # 2 steps: before the ResNet's rounding amplification shows
    ref = train(make, torch.float64, vectorize=False, steps=2, **dict(kw))
    vec = train(make, torch.float64, vectorize=True, steps=2, **dict(kw))
    assert_same(ref, vec, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_fused_equals_loop_after_20_steps(dtype):
    """The fused path (the default where it applies) on the MLP without an L2 term."""
    make = MODELS["mlp"]
    assert msam_fused_reason(make()) is None
    ref = train(make, dtype, vectorize=False, reg=False)
    fused = train(make, dtype, vectorize=None, reg=False)
    assert_same(ref, fused, TOL[dtype])
    moved = [rel(p, q) for p, q in zip(ref[0].parameters(), make().to(dtype).parameters())]
    assert max(moved) > 1e-2  # the runs trained


@pytest.mark.parametrize(
    "kw",
    [
        dict(sam_iters=3, step_size_mult=0.7),
        dict(step_size_mult=0.7),
        dict(opt_cls=OriginalAscentSAM, opt_kw=dict(normalize=False, acc_steps=4)),
        dict(opt_cls=OriginalAscentSAM, opt_kw=dict(acc_steps=4)),
        dict(opt_kw=dict(adaptive=True, eta=0.01)),
        dict(opt_kw=dict(maximize=True)),
        dict(max_batched_params=30000),  # groups of chunks (the model has ~12.5k values)
        dict(m=2),
        dict(m=16),  # one chunk: the auto path is the loop
    ],
    ids=[
        "iters3",
        "mult",
        "no_grad_norm",
        "original_normalized",
        "asam",
        "maximize",
        "groups",
        "m2",
        "m16",
    ],
)
def test_fused_equals_loop_for_every_option(kw):
    make = MODELS["mlp"]
    ref = train(make, torch.float64, vectorize=False, steps=3, reg=False, **dict(kw))
    fused = train(make, torch.float64, vectorize=None, steps=3, reg=False, **dict(kw))
    assert_same(ref, fused, 1e-12)


def test_fused_refusals_name_the_reason():
    """Batch norm, a layer without a per-chunk forward: not fused (the reason says why)."""
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert "batch norm" in msam_fused_reason(bn)
    assert "Conv2d" in msam_fused_reason(resnet("gn"))
    emb = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2))
    assert "Embedding" in msam_fused_reason(emb)
    frozen = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2))
    frozen[0].weight.requires_grad_(False)
    assert msam_fused_reason(frozen) is None  # a frozen layer reads the same weights per chunk


def test_running_statistics_with_cumulative_average_momentum_none():
    def make():
        model = resnet("bn")
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = None
        return model

    for kw in (dict(), dict(bn_first_pass_only=False)):
        ref = train(make, torch.float64, vectorize=False, steps=2, **kw)
        vec = train(make, torch.float64, vectorize=True, steps=2, **kw)
        assert_same(ref, vec, 1e-12)


def test_bfloat16_autocast_vectorized_equals_loop_and_is_not_erm():
    """Autocast caches the low-precision copy of a leaf weight: a pass at w + e must not compute
    with w (the loop clears the cache after perturb and restore; the vectorized path passes
    fresh tensors). One step in bfloat16: the two paths' updates agree far better than either
    agrees with ERM's (rho = 0), and both move as float32 SAM does. (The MLP: in the width-4
    ResNets one bfloat16 step is mostly rounding, 1.2-1.3 relative off float32 SAM either way.)"""
    make = MODELS["mlp"]

    def ac():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    w0 = weights(make())
    loop = weights(train(make, torch.float32, vectorize=False, steps=1, autocast=ac)[0]) - w0
    vec = weights(train(make, torch.float32, vectorize=True, steps=1, autocast=ac)[0]) - w0
    sam32 = weights(train(make, torch.float32, vectorize=False, steps=1)[0]) - w0
    erm = weights(_erm_bf16(make, ac)) - w0
    assert rel(vec, loop) < 0.05 * rel(erm, loop), (rel(vec, loop), rel(erm, loop))
    assert rel(loop, sam32) < 0.05 * rel(erm, sam32) and rel(vec, sam32) < 0.05 * rel(erm, sam32)


def _erm_bf16(make, ac):
    model = make()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=0.02, momentum=0.9)
    x, y = batch(0, torch.float32)
    opt.zero_grad()
    with ac():
        msam_backward(opt, model, l2_loss(model), x, y, 4, vectorize=True)
    opt.update()
    return model


def test_auto_falls_back_to_the_loop_where_vectorizing_does_not_apply():
    """A loss over captured parameter tensors (a regularizer list made before the call), a
    dropout model: auto gives the loop's numbers exactly, vectorize=True refuses with the reason."""
    model = mlp()
    captured = list(model.parameters())

    def bad_loss(x, y):
        return F.cross_entropy(model(x), y) + 1e-2 * sum((p**2).sum() for p in captured)

    drop = nn.Sequential(nn.Flatten(), nn.Linear(768, 16), nn.Dropout(0.3), nn.Linear(16, 10))

    def functional_dropout(x, y):  # a random op vmap cannot batch like the loop
        h = F.dropout(model[1](model[0](x)), 0.3, training=True)
        return F.cross_entropy(model[3](model[2](h)), y)

    cases = [
        (model, bad_loss, "other than the module's own"),
        (drop, lambda x, y: F.cross_entropy(drop(x), y), "Dropout in training mode"),
        (model, functional_dropout, "vmap cannot batch"),
    ]
    for net, loss, why in cases:
        x, y = batch(0, torch.float32)
        out = []
        for vec in (None, False):
            torch.manual_seed(5)
            start = {k: v.clone() for k, v in net.state_dict().items()}
            opt = SAM(net.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
            opt.zero_grad()
            msam_backward(opt, net, loss, x, y, 2, vectorize=vec)  # 8 chunks: auto vectorizes
            out.append([p.grad.clone() for p in net.parameters()])
            net.load_state_dict(start)
        assert all(torch.equal(a, b) for a, b in zip(*out)), why
        opt.zero_grad()
        with pytest.raises(ValueError, match=why):
            msam_backward(opt, net, loss, x, y, 4, vectorize=True)
        assert all(p.grad is None for p in net.parameters())  # refused before any change


def test_unused_and_frozen_parameters_as_in_the_loop():
    """A parameter the loss never reaches keeps grad None (weight decay must not move it), a
    frozen one too, like the loop."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(768, 8), nn.Tanh(), nn.Linear(8, 10))
            self.spare = nn.Linear(3, 3)  # never called

        def forward(self, x):
            return self.body(x)

    net = Net().double()
    net.body[1].bias.requires_grad_(False)
    x, y = batch(0, torch.float64)
    out = []
    for vec in (False, True):
        opt = SAM(net.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, weight_decay=0.1)
        opt.zero_grad()
        msam_backward(opt, net, lambda a, b: F.cross_entropy(net(a), b), x, y, 2, vectorize=vec)
        out.append([None if p.grad is None else p.grad.clone() for p in net.parameters()])
    for a, b in zip(*out):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert net.spare.weight.grad is None and net.body[1].bias.grad is None


def test_vectorize_argument_errors():
    model = mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    x, y = batch(0, torch.float32)
    loss = l2_loss(model)
    with pytest.raises(ValueError, match="vectorize must be None"):
        msam_backward(opt, model, loss, x, y, 4, vectorize="yes")
    with pytest.raises(ValueError, match="max_batched_params must be a positive integer"):
        msam_backward(opt, model, loss, x, y, 4, max_batched_params=0)


def test_deep_nets_batched_steps_equal_the_loop(tmp_path):
    """deep_nets' loss regularizes the tensors it reads from the module at call time, so
    --msam_impl vectorized applies with --l2_reg (the vmap path; a loss over a captured list is
    refused) and trains as --msam_impl loop does; without --l2_reg the default (auto: the fused
    path on the MLP) trains as the loop does too."""
    from deep_nets.train import train as run
    from tests.test_deep_train import final_weights, tiny

    kw = dict(epochs=1, sam_rho=0.05, acc_steps=4, frac_train=0.1)
    for impl, l2 in (("vectorized", 1e-3), ("loop", 1e-3), ("auto", 0.0), ("loop", 0.0)):
        run(tiny(tmp_path / f"{impl}{l2}", msam_impl=impl, l2_reg=l2, **kw))
    for a, b in (("vectorized0.001", "loop0.001"), ("auto0.0", "loop0.0")):
        wa, wb = final_weights(tmp_path / a), final_weights(tmp_path / b)
        for k in wb:
            assert rel(wa[k], wb[k]) < 1e-5, (a, k)


def test_config_refuses_vectorized_where_it_cannot_apply():
    from deep_nets.config import TrainConfig, check_config

    for kw, world, msg in (
        (dict(grad_gauss_std=0.1), 1, "with --grad_gauss_std"),
        (dict(), 2, "under DDP"),
    ):
        cfg = TrainConfig(
            dataset="mnist1d", model="mlp", sam_rho=0.05, acc_steps=4, msam_impl="vectorized", **kw
        )
        with pytest.raises(ValueError, match=f"--msam_impl vectorized does not apply {msg}"):
            check_config(cfg, world_size=world)


def test_gradients_accumulate_into_existing_grads_as_in_the_loop():
    """Two calls without zero_grad (gradient accumulation over batches) add up in both paths."""
    out = []
    for vec in (False, True):
        model = mlp().double()
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
        opt.zero_grad()
        for t in range(2):
            x, y = batch(t, torch.float64)
            msam_backward(opt, model, l2_loss(model), x, y, 2, vectorize=vec)
        out.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)
