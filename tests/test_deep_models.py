"""Tests of deep_nets.models: published parameter counts, width scaling, shapes, errors.

Big models are built on the meta device (no memory, no initialization) and only counted; one
forward / backward pass on a batch of 2 runs for a small model of each family.

The published counts, re-derived by hand for CIFAR-10 (3 input channels, 10 classes; all convs
without bias; a norm layer on c channels has 2c parameters):
- PreAct ResNet-18 (pytorch-cifar, no norm after the last block): stem 3*64*9 = 1,728; stage 1:
  2 x (2*128 + 2*36,864) = 147,968; stage 2: (128 + 73,728 + 256 + 147,456 + 8,192) +
  (256 + 2*147,456 + 256) = 525,184; stage 3: 918,272 + 1,180,672 = 2,098,944; stage 4:
  3,671,552 + 4,720,640 = 8,392,192; linear 5,130. Total 11,171,146. Ours adds the final
  norm of He et al. (2 * 512): 11,172,170.
- WRN-28-10: stem 432; n = 4 blocks per stage with widths 160, 320, 640; total 36,479,194.
- WRN-16-8: n = 2, widths 128, 256, 512; total 10,961,370.
`preact_count` / `wrn_count` below implement the same arithmetic for any width.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from deep_nets.models import (
    MODELS,
    PreActResNet,
    build_model,
    count_parameters,
    default_width,
)

CIFAR = (3, 32, 32)


def meta_model(name: str, input_shape=CIFAR, num_classes: int = 10, width=None) -> nn.Module:
    with torch.device("meta"):
        return build_model(
            name,
            in_channels=input_shape[0],
            num_classes=num_classes,
            width=width,
            input_shape=input_shape,
        )


def _block(cin: int, cout: int) -> int:
    """Pre-activation basic block: two norms, two 3x3 convs, 1x1 projection if shapes differ."""
    proj = cin * cout if cin != cout else 0
    return 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + proj


def preact_count(blocks, width, cin=3, k=10, final_norm=True) -> int:
    total, c = 9 * cin * width, width
    for i, n in enumerate(blocks):
        cout = width * 2**i
        for _ in range(n):
            total += _block(c, cout)
            c = cout
    return total + (2 * c if final_norm else 0) + c * k + k


def wrn_count(depth, widen, cin=3, k=10) -> int:
    n = (depth - 4) // 6
    total, c = 9 * cin * 16, 16
    for cout in (16 * widen, 32 * widen, 64 * widen):
        for _ in range(n):
            total += _block(c, cout)
            c = cout
    return total + 2 * c + c * k + k


def test_published_parameter_counts() -> None:
    assert MODELS == (
        "resnet18",
        "resnet18_gn",
        "resnet34_gn",
        "resnet_tiny",
        "resnet_tiny_gn",
        "wrn16_8",
        "wrn28_10",
        "wrn28",
        "resnet34",
        "resnet34preact",
        "vgg16",
        "linear",
        "cnn",
        "mlp",
    )
    with torch.device("meta"):
        plain = PreActResNet((2, 2, 2, 2), in_channels=3, num_classes=10, final_norm=False)
    assert count_parameters(plain) == 11_171_146  # pytorch-cifar PreActResNet18
    assert count_parameters(meta_model("resnet18")) == 11_171_146 + 2 * 512
    assert count_parameters(meta_model("wrn28_10")) == 36_479_194
    assert count_parameters(meta_model("wrn16_8")) == 10_961_370
    # The hand arithmetic of the module docstring agrees with these numbers.
    assert preact_count((2, 2, 2, 2), 64, final_norm=False) == 11_171_146
    assert wrn_count(28, 10) == 36_479_194 and wrn_count(16, 8) == 10_961_370


def test_groupnorm_variants_have_the_same_parameters_and_32_groups() -> None:
    bn, gn = meta_model("resnet18"), meta_model("resnet18_gn")
    assert count_parameters(gn) == count_parameters(bn)  # GN and BN both have 2c affine params
    gns = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    assert all(m.num_groups == 32 for m in gns)
    assert count_parameters(meta_model("resnet34_gn", num_classes=100)) == preact_count(
        (3, 4, 6, 3), 64, k=100
    )
    # The original's rule at any width: width // 2 groups in every layer (4 at width 8).
    narrow = meta_model("resnet_tiny_gn", width=8)
    assert {m.num_groups for m in narrow.modules() if isinstance(m, nn.GroupNorm)} == {4}
    with pytest.raises(ValueError, match="even width"):
        meta_model("resnet_tiny_gn", width=5)


@pytest.mark.parametrize(
    "name,width,expected",
    [
        ("resnet18", 32, lambda: preact_count((2, 2, 2, 2), 32)),
        ("resnet_tiny", None, lambda: preact_count((1, 1, 1, 1), 16)),
        ("resnet_tiny_gn", 24, lambda: preact_count((1, 1, 1, 1), 24)),
        ("wrn28_10", 2, lambda: wrn_count(28, 2)),
        ("wrn16_8", None, lambda: wrn_count(16, 8)),
        ("mlp", 100, lambda: (3072 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)),
    ],
)
def test_model_width_scales_the_architecture(name, width, expected) -> None:
    assert count_parameters(meta_model(name, width=width)) == expected()


def test_defaults_and_cnn_count() -> None:
    assert [default_width(n) for n in ("resnet18", "resnet_tiny", "wrn16_8", "wrn28_10")] == [
        64,
        16,
        8,
        10,
    ]
    # cnn on 1 x 28 x 28, width w = 32: conv 1->32, conv 32->64 (with biases), pool to 4 x 4,
    # linear 64*16 -> 128, linear 128 -> 10.
    w = 32
    expected = (
        (9 * w + w) + (9 * w * 2 * w + 2 * w) + (2 * w * 16 * 4 * w + 4 * w) + 4 * w * 10 + 10
    )
    assert count_parameters(meta_model("cnn", (1, 28, 28))) == expected
    # The 1-D variant on mnist1d: kernels of 3, pooled length 4.
    expected_1d = (
        (3 * w + w) + (3 * w * 2 * w + 2 * w) + (2 * w * 4 * 4 * w + 4 * w) + 4 * w * 10 + 10
    )
    assert count_parameters(meta_model("cnn", (1, 40))) == expected_1d


@pytest.mark.parametrize(
    "name,shape,width",
    [
        ("resnet_tiny", (1, 28, 28), 8),
        ("resnet_tiny_gn", (3, 32, 32), 8),
        ("wrn16_8", (3, 32, 32), 1),
        ("cnn", (1, 28, 28), 8),
        ("cnn", (1, 40), 8),
        ("mlp", (1, 40), 16),
    ],
)
def test_forward_backward_on_a_batch_of_two(name, shape, width) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=shape[0], num_classes=7, width=width, input_shape=shape)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    # Construction is deterministic under the global seed (the trainer's init generator).
    torch.manual_seed(0)
    again = build_model(name, in_channels=shape[0], num_classes=7, width=width, input_shape=shape)
    state = again.state_dict()
    assert state.keys() == initial.keys()
    assert all(torch.equal(state[k], v) for k, v in initial.items())


def test_models_that_do_not_fit_the_input_raise_clear_errors() -> None:
    for name in MODELS:
        if name in ("cnn", "mlp", "linear"):
            assert count_parameters(meta_model(name, (1, 40))) > 0
            continue
        with pytest.raises(ValueError, match=rf"--model={name}.*--dataset.*\(1, 40\)"):
            meta_model(name, (1, 40))
    with pytest.raises(ValueError, match="--model must be one of"):
        meta_model("vit")
    with pytest.raises(ValueError, match="in_channels=1 does not match the --dataset"):
        build_model("cnn", in_channels=1, num_classes=10, input_shape=CIFAR)
    with pytest.raises(ValueError, match="--model_width"):
        meta_model("resnet18", width=0)


def test_resnet_handles_28x28_and_32x32_inputs() -> None:
    # Global average pooling: the same network applies to both resolutions.
    model = build_model(
        "resnet_tiny_gn", in_channels=1, num_classes=10, width=4, input_shape=(1, 28, 28)
    )
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert math.prod(model.linear.weight.shape) == 10 * 32
