"""Parity of the deep-net trainer with the original code (tml-epfl/understanding-sam, deep_nets/).

Each test writes the original's formula by hand, in float64 on a tiny model, and compares it with
what the trainer's step functions / schedules / loaders compute. The references follow the
original's ``train.py``, ``sam.py`` (``weight_ascent_step``), ``utils_train.py`` and
``models.py``, not the code under test.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deep_nets.config import TrainConfig
from deep_nets.evaluation import swa_update
from deep_nets.models import build_model, count_parameters
from deep_nets.steps import STEPS, StepContext, build_optimizer, step_kind
from deep_nets.train import load_model_path, lr_at, make_loss


@pytest.fixture(autouse=True, scope="module")
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def tiny_net(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(5, 4)]
    layers += [nn.BatchNorm1d(4)] if bn else []
    layers += [nn.ReLU(), nn.Linear(4, 3)]
    return nn.Sequential(*layers).double()


def batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def cfg_for(**kw) -> TrainConfig:
    base = dict(dataset="mnist1d", model="mlp", batch_size=8, lr_max=0.1, l2_reg=0.01)
    base.update(kw)
    return TrainConfig(**base)


def run_step(
    cfg: TrainConfig, model: nn.Module, x, y, *, prev=None, other=None, kind=None, gen_seed=0
):
    """One step of the trainer's step table on ``model`` (modified in place); ``other``: the
    batch of ``--sam_perturb_batch other`` (default: (x, y))."""
    opt = build_optimizer(cfg, model)
    for g in opt.param_groups:
        g["lr"] = cfg.lr_max
    ctx = StepContext(
        cfg,
        opt,
        model,
        make_loss(cfg, model, model),
        cfg.m,
        list(model.parameters()),
        torch.Generator().manual_seed(gen_seed),
        other_batch=lambda: other or (x, y),
        autocast=contextlib.nullcontext,
        prev=prev,
    )
    model.train()
    STEPS[kind or step_kind(cfg, True)](ctx, x, y)
    return model


# ------------------------------------------------------------ the original's step, by hand
def original_objective(model, ws, x, y, cfg):
    """The original's fp_loss_reg: (CE + sum over *every* parameter of l1 |p| + 0.5 l2 p^2) /
    acc_steps."""
    names = [n for n, _ in model.named_parameters()]
    out = torch.func.functional_call(model, dict(zip(names, ws, strict=True)), (x,))
    reg = sum(cfg.l1_reg * w.abs().sum() + cfg.l2_reg * 0.5 * (w**2).sum() for w in ws)
    return (F.cross_entropy(out, y) + reg) / cfg.acc_steps


def original_step(model, x, y, cfg, *, ascent_x=None, ascent_y=None, rho=None):
    """The original's training step (train.py + sam.perturb_weights_sam / weight_ascent_step):
    for each chunk, delta = 0; sam_iters times: g = grad of the objective at w + delta,
    delta += step * g / (||g|| + 1e-12) (or step * g with sam_no_grad_norm), then delta is
    scaled back onto the rho-ball if ||delta|| > rho; the update gradient is the sum over chunks
    of the objective's gradient at w + delta; SGD with momentum 0.9 (first step: buf = g).
    Returns the new weights and the deltas."""
    w = [p.detach().clone() for p in model.parameters()]
    rho = cfg.sam_rho if rho is None else rho
    step = rho * cfg.sam_step_size_mult
    m = cfg.batch_size // cfg.acc_steps
    total = [torch.zeros_like(t) for t in w]
    deltas = []
    for c in range(cfg.acc_steps):
        xc, yc = x[c * m : (c + 1) * m], y[c * m : (c + 1) * m]
        xa = xc if ascent_x is None else ascent_x[c * m : (c + 1) * m]
        ya = yc if ascent_y is None else ascent_y[c * m : (c + 1) * m]
        delta = [torch.zeros_like(t) for t in w]
        for _ in range(cfg.sam_iters):
            moved = [(a + d).requires_grad_() for a, d in zip(w, delta, strict=True)]
            g = torch.autograd.grad(original_objective(model, moved, xa, ya, cfg), moved)
            gn = math.sqrt(sum(float((t**2).sum()) for t in g))
            for d, t in zip(delta, g, strict=True):
                d += step * t if cfg.sam_no_grad_norm else step / (gn + 1e-12) * t
            dn = math.sqrt(sum(float((d**2).sum()) for d in delta))
            if dn > rho:
                delta = [d * rho / dn for d in delta]
        moved = [(a + d).requires_grad_() for a, d in zip(w, delta, strict=True)]
        g = torch.autograd.grad(original_objective(model, moved, xc, yc, cfg), moved)
        total = [a + b for a, b in zip(total, g, strict=True)]
        deltas.append(delta)
    return [a - cfg.lr_max * t for a, t in zip(w, total, strict=True)], deltas


def assert_weights(model, want, tol=1e-12):
    for p, q in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.detach(), q, atol=tol, rtol=tol)


def check_against_original(**kw):
    cfg = cfg_for(sam_rho=0.3, **kw)
    x, y = batch()
    want, deltas = original_step(tiny_net(), x, y, cfg)
    assert_weights(run_step(cfg, tiny_net(), x, y), want)
    return deltas


# ------------------------------------------------------------------ parity 1: the L2 term
def test_l2_term_covers_every_parameter_as_the_original():
    check_against_original(l2_reg=0.05, acc_steps=2)
    check_against_original(l2_reg=0.05, l1_reg=0.01)
    # --l2_scope weights is really different (the reference cannot pass it by accident)
    cfg = cfg_for(sam_rho=0.3, l2_reg=0.05, l2_scope="weights")
    x, y = batch()
    want, _ = original_step(tiny_net(), x, y, cfg)
    got = run_step(cfg, tiny_net(), x, y)
    assert not all(torch.allclose(p, q) for p, q in zip(got.parameters(), want, strict=True))


# ------------------------------------------------- parity 2 and 3: the original's ascent
@pytest.mark.parametrize("mult", [0.02, 1.0, 40.0])  # no projection / projected onto the ball
@pytest.mark.parametrize("acc", [1, 2])
def test_unnormalized_ascent_is_the_originals(mult, acc):
    deltas = check_against_original(sam_no_grad_norm=True, sam_step_size_mult=mult, acc_steps=acc)
    norms = [math.sqrt(sum(float((d**2).sum()) for d in ds)) for ds in deltas]
    assert all(n <= 0.3 + 1e-12 for n in norms)


@pytest.mark.parametrize("mult", [0.5, 3.0])
def test_step_size_mult_with_one_ascent_step_is_the_originals(mult):
    deltas = check_against_original(sam_step_size_mult=mult)
    n = math.sqrt(sum(float((d**2).sum()) for d in deltas[0]))
    assert n == pytest.approx(0.3 * min(mult, 1.0), rel=1e-9)


@pytest.mark.parametrize("no_norm", [False, True])
def test_multi_step_ascent_is_the_originals(no_norm):
    check_against_original(
        sam_iters=3, sam_step_size_mult=0.5, acc_steps=2, sam_no_grad_norm=no_norm
    )


def test_rho_tied_to_the_learning_rate():
    cfg = cfg_for(sam_lr_mult=2.0)
    x, y = batch()
    want, _ = original_step(tiny_net(), x, y, cfg, rho=cfg.lr_max * 2.0)
    model = tiny_net()
    opt = build_optimizer(cfg, model)
    for g in opt.param_groups:
        g["sam_rho"] = cfg.lr_max * cfg.sam_lr_mult  # what the loop sets every step
    ctx = StepContext(
        cfg,
        opt,
        model,
        make_loss(cfg, model, model),
        cfg.m,
        list(model.parameters()),
        torch.Generator(),
        lambda: (x, y),
        contextlib.nullcontext,
    )
    STEPS["msam"](ctx, x, y)
    assert_weights(model, want)


# ------------------------------------------------------ parity 4: batch-norm statistics
def bn_input_mean(model, ws, x):
    lin = model[1]
    w, b = ws[0], ws[1]
    assert lin.weight.shape == w.shape
    return (x.flatten(1) @ w.T + b).mean(0)


@pytest.mark.parametrize("policy", ["first", "every"])
def test_batch_norm_statistics_policy(policy):
    """every (the original): running mean = 0.9 (0.9 * 0 + 0.1 mu(w)) + 0.1 mu(w + e); first
    (ours): only the pass at w counts, 0.1 mu(w)."""
    cfg = cfg_for(sam_rho=0.3, sam_bn_update=policy, l2_reg=0.0)
    x, y = batch()
    ref = tiny_net(bn=True)
    w = [p.detach().clone() for p in ref.parameters()]
    _, deltas = original_step(ref, x, y, cfg)  # the original's e (batch statistics in train mode)
    mu_w = bn_input_mean(ref, w, x)
    mu_e = bn_input_mean(ref, [a + d for a, d in zip(w, deltas[0], strict=True)], x)
    want = 0.9 * 0.1 * mu_w + 0.1 * mu_e if policy == "every" else 0.1 * mu_w
    got = run_step(cfg, tiny_net(bn=True), x, y)
    torch.testing.assert_close(got[2].running_mean, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("policy", ["first", "every"])
@pytest.mark.parametrize("flag", ["sam_use_prev_batch", "sam_perturb_batch"])
def test_batch_norm_statistics_policy_in_n_sam(policy, flag):
    """n-SAM: the ascent pass at w runs on the other batch xa, the update pass at w + e on x.
    every: 0.9 (0.1 mu(w; xa)) + 0.1 mu(w + e; x); first: the pass at w only, 0.1 mu(w; xa)
    (not the pass at w + e, as before: that is the one ``first`` must leave out)."""
    value = True if flag == "sam_use_prev_batch" else "other"
    cfg = cfg_for(sam_rho=0.3, sam_bn_update=policy, l2_reg=0.0, **{flag: value})
    x, y = batch(seed=1)
    xa, ya = batch(seed=2)
    ref = tiny_net(bn=True)
    w = [p.detach().clone() for p in ref.parameters()]
    _, deltas = original_step(ref, x, y, cfg, ascent_x=xa, ascent_y=ya)
    mu_w = bn_input_mean(ref, w, xa)
    mu_e = bn_input_mean(ref, [a + d for a, d in zip(w, deltas[0], strict=True)], x)
    want = 0.9 * 0.1 * mu_w + 0.1 * mu_e if policy == "every" else 0.1 * mu_w
    got = run_step(cfg, tiny_net(bn=True), x, y, prev=(xa, ya), other=(xa, ya))
    torch.testing.assert_close(got[2].running_mean, want, atol=1e-12, rtol=1e-12)
    assert int(got[2].num_batches_tracked) == (2 if policy == "every" else 1)


def test_freeze_bn_stats_keeps_the_running_statistics():
    from deep_nets.steps import bn_eval

    model = tiny_net(bn=True)
    x, y = batch()
    with bn_eval(model):
        F.cross_entropy(model(x), y).backward()
    assert torch.equal(model[2].running_mean, torch.zeros(4)) and model.training


# ------------------------------------------------------------------------- parity 6: n-SAM
def test_previous_batch_perturbation_is_the_originals():
    cfg = cfg_for(sam_rho=0.3, sam_use_prev_batch=True)
    x, y = batch(seed=1)
    xp, yp = batch(seed=2)
    want, _ = original_step(tiny_net(), x, y, cfg, ascent_x=xp, ascent_y=yp)
    assert step_kind(cfg, True) == "prev_batch"
    assert_weights(run_step(cfg, tiny_net(), x, y, prev=(xp, yp)), want)
    # the first step has no previous batch: it uses its own (not the original's zeros)
    own, _ = original_step(tiny_net(), x, y, cfg)
    assert_weights(run_step(cfg, tiny_net(), x, y, prev=None), own)


@pytest.mark.parametrize("distr", ["gauss", "uniform"])
def test_random_weight_perturbation_scales_are_the_originals(distr):
    """utils_train.perturb_weights: per parameter, n_add then n_mul; w' = (1 + s_mul n_mul) w +
    s_add n_add; the gradient at w' updates w."""
    cfg = cfg_for(
        add_weight_perturb_scale=0.05, mul_weight_perturb_scale=0.2, weight_perturb_distr=distr
    )
    x, y = batch()
    ref = tiny_net()
    g = torch.Generator().manual_seed(7)

    def draw(p):
        if distr == "gauss":
            return torch.randn(p.shape, generator=g)
        return torch.rand(p.shape, generator=g) - 0.5

    w = [p.detach().clone() for p in ref.parameters()]
    moved = []
    for p in w:
        add = 0.05 * draw(p)
        mul = 1 + 0.2 * draw(p)
        moved.append((mul * p + add).requires_grad_())
    grads = torch.autograd.grad(original_objective(ref, moved, x, y, cfg), moved)
    want = [a - cfg.lr_max * t for a, t in zip(w, grads, strict=True)]
    assert step_kind(cfg, False) == "weight_noise"
    assert_weights(run_step(cfg, tiny_net(), x, y, kind="weight_noise", gen_seed=7), want)


# ---------------------------------------------------------------- parity 7: schedules, SWA
def original_piecewise(t, n, lr, first):
    if t / n < first:
        return lr
    if t / n < 0.75:
        return lr / 10.0
    return lr / 100.0


@pytest.mark.parametrize(
    "name,first",
    [
        ("piecewise", 0.5),
        ("piecewise_02epochs", 0.2),
        ("piecewise_03epochs", 0.3),
        ("piecewise_04epochs", 0.4),
    ],
)
def test_piecewise_schedules(name, first):
    for t in [0.0, 1.9, 2.0, 3.99, 4.0, 5.0, 7.4, 7.5, 9.99, 10.0]:
        assert lr_at(name, 0.1, 10, t) == original_piecewise(t, 10, 0.1, first), t


def test_cosine_and_cyclic_schedules():
    # cosine: lr (0.5 + 0.5 cos(pi t / n)); cyclic: 0 -> lr at floor(2 n / 5) -> 0
    for t in [0.0, 1.3, 6.0, 12.0]:
        assert lr_at("cosine", 0.1, 12, t) == 0.1 * (0.5 + 0.5 * math.cos(math.pi * t / 12))
    assert lr_at("cyclic", 0.1, 12, 4.0) == pytest.approx(0.1)  # peak at 2 * 12 // 5 = 4
    assert lr_at("cyclic", 0.1, 12, 2.0) == pytest.approx(0.05)
    assert lr_at("cyclic", 0.1, 12, 8.0) == pytest.approx(0.05)
    assert lr_at("cyclic", 0.1, 12, 4.8) == pytest.approx(0.1 * (12 - 4.8) / 8)


def test_swa_moving_average():
    a, b = tiny_net(), tiny_net()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    want = [0.999 * p.detach() + 0.001 * q.detach() for p, q in zip(a.parameters(), b.parameters())]
    swa_update(a, b, 0.999)
    assert_weights(a, want)


def test_switch_epochs_as_the_original_counts():
    def original(cfg, epoch_1based):
        return cfg.sam_epoch_frac_start <= epoch_1based / cfg.epochs <= cfg.sam_epoch_frac_end

    for start, end in [(0.9, 1.0), (0.0, 0.5), (0.25, 0.75), (0.5, 0.5)]:
        cfg = TrainConfig(
            epochs=20, sam_rho=0.1, sam_epoch_frac_start=start, sam_epoch_frac_end=end
        )
        ours = [cfg.sam_radius(e, 0.1) > 0 for e in range(20)]
        assert ours == [original(cfg, e) for e in range(1, 21)]


# ------------------------------------------------------------------ parity 7: the models
def test_original_models_parameter_counts_and_init():
    def conv(cin, cout, k=3, bias=False):
        return cin * cout * k * k + (cout if bias else 0)

    # post-activation ResNet-34 (kuangliu/pytorch-cifar): 21,282,122 on CIFAR-10
    with torch.device("meta"):
        r34 = build_model("resnet34", in_channels=3, num_classes=10, input_shape=(3, 32, 32))
    assert count_parameters(r34) == 21_282_122
    # VGG-16 (configuration D, conv biases, no BN) with the 512-512-10 classifier
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    cin, total = 3, 0
    for c in widths:
        total, cin = total + conv(cin, c, bias=True), c
    total += (512 * 512 + 512) * 2 + 512 * 10 + 10
    with torch.device("meta"):
        vgg = build_model("vgg16", in_channels=3, num_classes=10, input_shape=(3, 32, 32))
    assert count_parameters(vgg) == total
    lin = build_model(
        "linear",
        in_channels=1,
        num_classes=10,
        input_shape=(1, 40),
        init="original",
        scale_init=2.0,
    )
    assert count_parameters(lin) == 400 and lin._model[1].weight.norm().item() == pytest.approx(2)
    torch.manual_seed(0)
    m = build_model(
        "resnet18",
        in_channels=3,
        num_classes=10,
        width=16,
        input_shape=(3, 32, 32),
        init="original",
    )
    w = m.stages[3][0].conv1.weight  # 3x3, 128 output channels
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.05)  # fan_out
    assert torch.equal(m.linear.bias, torch.zeros(10))
    assert all(
        torch.equal(b.weight, torch.ones_like(b.weight))
        for b in m.modules()
        if isinstance(b, nn.BatchNorm2d)
    )


def test_droprate_and_softplus_activation_in_preact_blocks():
    x = torch.randn(4, 3, 32, 32)
    m = build_model(
        "resnet_tiny", in_channels=3, num_classes=10, width=4, input_shape=(3, 32, 32), droprate=0.5
    )
    m.train()
    assert not torch.equal(m(x), m(x))  # dropout active in training
    m.eval()
    assert torch.equal(m(x), m(x))
    torch.manual_seed(0)
    relu = build_model(
        "resnet_tiny", in_channels=3, num_classes=10, width=4, input_shape=(3, 32, 32)
    ).eval()
    torch.manual_seed(0)
    soft = build_model(
        "resnet_tiny",
        in_channels=3,
        num_classes=10,
        width=4,
        input_shape=(3, 32, 32),
        activation="softplus3",
    ).eval()
    blk = soft.stages[0][0]
    t = torch.randn(10)
    assert torch.allclose(blk.act(t), torch.log1p(torch.exp(3 * t)) / 3)
    assert not torch.allclose(relu(x), soft(x))


# ---------------------------------------------------------- parity 9: original checkpoints
def test_model_path_loads_the_originals_checkpoint_layout(tmp_path):
    """The original saves {'last': sd, 'best': sd, 'swa_last': ..., 'swa_best': ...} with its own
    module names (PreActResNet: conv1, layerK.J.bn1/conv1/bn2/conv2/shortcut.0, bn, linear)."""
    torch.manual_seed(3)
    src = build_model(
        "resnet_tiny", in_channels=3, num_classes=10, width=4, input_shape=(3, 32, 32)
    )
    ours = src.state_dict()
    names = {"stem.weight": "conv1.weight", "final_norm": "bn", "linear": "linear"}
    orig = {}
    for k, v in ours.items():
        parts = k.split(".")
        if k in names:
            key = names[k]
        elif parts[0] == "stages":  # stages.S.B.norm1.weight -> layer{S+1}.B.bn1.weight
            rest = {
                "norm1": "bn1",
                "norm2": "bn2",
                "conv1": "conv1",
                "conv2": "conv2",
                "shortcut": "shortcut.0",
            }[parts[3]]
            key = f"layer{int(parts[1]) + 1}.{parts[2]}.{rest}." + ".".join(parts[4:])
        else:
            key = {"final_norm": "bn", "linear": "linear"}[parts[0]] + "." + ".".join(parts[1:])
        orig[key] = v.clone()
    assert "layer1.0.bn1.weight" in orig and "bn.running_mean" in orig
    path = tmp_path / "orig.pth"
    torch.save({"last": orig, "best": orig, "swa_last": orig, "swa_best": orig}, path)
    torch.manual_seed(4)
    dst = build_model(
        "resnet_tiny", in_channels=3, num_classes=10, width=4, input_shape=(3, 32, 32)
    )
    load_model_path(dst, str(path), "resnet_tiny")
    assert all(torch.equal(dst.state_dict()[k], ours[k]) for k in ours)


def test_model_path_that_is_not_a_checkpoint_explains_itself(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a checkpoint")
    m = tiny_net()
    with pytest.raises(ValueError, match="--model_path .*notes.txt.*original code's .pth"):
        load_model_path(m, str(bad))
    lst = tmp_path / "list.pt"
    torch.save([1, 2], lst)
    with pytest.raises(ValueError, match="plain state dict of tensors; got list"):
        load_model_path(m, str(lst))


# ------------------------------------------------- parity 10: models and label-noise counts
def test_group_norm_has_width_over_2_groups_in_every_layer():
    """The original's PreActResNet: gn_groups = model_width // 2 for every GroupNorm."""
    for name, width in [("resnet_tiny_gn", 16), ("resnet18_gn", 8), ("resnet34_gn", 64)]:
        m = build_model(name, in_channels=3, num_classes=10, width=width, input_shape=(3, 32, 32))
        groups = {g.num_groups for g in m.modules() if isinstance(g, nn.GroupNorm)}
        assert groups == {width // 2}, (name, groups)
    with pytest.raises(ValueError, match="even width"):
        build_model(
            "resnet_tiny_gn", in_channels=3, num_classes=10, width=5, input_shape=(3, 32, 32)
        )


def test_vgg16_conv_biases_start_at_zero_under_the_originals_init():
    def conv_biases(init):
        torch.manual_seed(0)
        m = build_model(
            "vgg16", in_channels=3, num_classes=10, width=2, input_shape=(3, 32, 32), init=init
        )
        return [c.bias for c in m.modules() if isinstance(c, nn.Conv2d)]

    assert all(torch.equal(b, torch.zeros_like(b)) for b in conv_biases("original"))
    assert all(b.abs().sum() > 0 for b in conv_biases("pytorch"))


def test_wrn28_refuses_droprate_as_the_original_never_applies_it():
    kw = dict(in_channels=3, num_classes=10, width=1, input_shape=(3, 32, 32), droprate=0.3)
    with pytest.raises(ValueError, match="wrn28_10"):
        build_model("wrn28", **kw)
    m = build_model("wrn28_10", **kw)
    assert any(getattr(b, "droprate", 0) == 0.3 for b in m.modules())


def test_symmetric_noise_count_is_the_originals_int():
    import numpy as np

    from deep_nets.data import corrupt_labels

    y = np.arange(100) % 10
    for p, want in [(0.29, 28), (0.3, 30), (0.125, 12), (0.999, 99)]:
        _, noisy = corrupt_labels(y, p, "sym", 10, np.random.default_rng(0))
        assert int(noisy.sum()) == int(p * len(y)) == want
