"""Models for the deep-network experiments: PreAct ResNets, Wide ResNets, a small CNN and an MLP.

`build_model(name, in_channels=..., num_classes=..., width=..., input_shape=...)` builds one;
`width` (the trainer's --model_width) is the base channel count of the ResNets (default 64; 16 for
the tiny ones), the widen factor k of the WRNs (defaults 8 for wrn16_8, 10 for wrn28_10), the base
channel count of `cnn` (default 32) and the hidden width of `mlp` (default 256).

Architectures (all convolutions without bias, as in the reference implementations):
- PreAct ResNet (He et al. 2016, "Identity mappings"): 3x3 stem conv (stride 1, CIFAR-style),
  four stages of pre-activation basic blocks with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2
  (ResNet-18: 2-2-2-2 blocks, ResNet-34: 3-4-6-3, tiny: 1-1-1-1), a 1x1 projection shortcut where
  the shape changes, a final norm + ReLU (the paper's extra activation after the last unit),
  global average pooling, a linear classifier. Norm: BatchNorm or GroupNorm with
  gcd(32, channels) groups (32 groups as in Wu & He 2018 whenever the width allows it).
- Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): 3x3 stem to 16 channels, three stages of
  n = (d - 4) / 6 pre-activation basic blocks with widths 16k, 32k, 64k and strides 1, 2, 2,
  final BN + ReLU, global average pooling, linear (no dropout).
- cnn: [conv3x3 - ReLU - maxpool2] x 2 (widths w, 2w), adaptive average pool to 4 (x 4),
  linear to 4w, ReLU, linear; 1-D inputs use the same layers in 1-D (kernel 3).
- mlp: flatten - linear(w) - ReLU - linear(w) - ReLU - linear.

Parameter counts (checked in tests/test_deep_models.py, whose docstring has the arithmetic):
PreAct ResNet-18 on CIFAR-10 without the final norm = 11,171,146 (the commonly published number of
the pytorch-cifar implementation); ours has the final BN, + 2 * 512 = 11,172,170.
WRN-28-10 = 36,479,194 and WRN-16-8 = 10,961,370 on CIFAR-10 (the published numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

MODELS: tuple[str, ...] = (
    "resnet18",
    "resnet18_gn",
    "resnet34_gn",
    "resnet_tiny",
    "resnet_tiny_gn",
    "wrn16_8",
    "wrn28_10",
    "cnn",
    "mlp",
)

# name -> (family, blocks / depth, norm, default width)
_SPECS: dict[str, tuple[str, object, str, int]] = {
    "resnet18": ("preact", (2, 2, 2, 2), "bn", 64),
    "resnet18_gn": ("preact", (2, 2, 2, 2), "gn", 64),
    "resnet34_gn": ("preact", (3, 4, 6, 3), "gn", 64),
    "resnet_tiny": ("preact", (1, 1, 1, 1), "bn", 16),
    "resnet_tiny_gn": ("preact", (1, 1, 1, 1), "gn", 16),
    "wrn16_8": ("wrn", 16, "bn", 8),
    "wrn28_10": ("wrn", 28, "bn", 10),
    "cnn": ("cnn", None, "none", 32),
    "mlp": ("mlp", None, "none", 256),
}

NormFactory = Callable[[int], nn.Module]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with gcd(32, channels) groups: 32 when possible, else the largest divisor <= 32
    that also divides 32 (so narrow --model_width values still build)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _norm_factory(kind: str) -> NormFactory:
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return group_norm
    raise ValueError(f"unknown norm {kind!r}")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: y = conv(relu(n2(conv_s(relu(n1(x)))))) + shortcut.

    The shortcut is the identity when shapes agree, else a strided 1x1 conv of relu(n1(x)).
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        self.norm1 = norm(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.norm2 = norm(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.norm2(out)))
        return out + skip


def _stages(
    cin: int, widths: Sequence[int], num_blocks: Sequence[int], norm: NormFactory
) -> tuple[nn.Sequential, int]:
    """Stages of pre-activation blocks, stage i with ``num_blocks[i]`` blocks of ``widths[i]``
    channels, downsampling by 2 at the first block of every stage but the first. Returns the
    stages and their output channels."""
    stages = []
    for i, (cout, n) in enumerate(zip(widths, num_blocks)):
        blocks = []
        for j in range(n):
            blocks.append(PreActBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, norm))
            cin = cout
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), cin


class PreActResNet(nn.Module):
    """PreAct ResNet with stage widths (w, 2w, 4w, 8w) and strides (1, 2, 2, 2)."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        *,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        norm: NormFactory = nn.BatchNorm2d,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.stem = _conv3x3(in_channels, width)
        widths = [width * 2**i for i in range(len(num_blocks))]
        self.stages, cin = _stages(width, widths, num_blocks, norm)
        # The last block's output is a sum of un-normalized branches: normalize + ReLU before
        # pooling (He et al. 2016). final_norm=False gives the pytorch-cifar variant.
        self.final_norm = norm(cin) if final_norm else None
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        if self.final_norm is not None:
            out = F.relu(self.final_norm(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class WideResNet(nn.Module):
    """WRN-depth-k: three stages of (depth - 4) / 6 pre-activation blocks, widths 16k, 32k, 64k."""

    def __init__(
        self,
        depth: int,
        widen: int,
        *,
        in_channels: int,
        num_classes: int,
        norm: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        self.stem = _conv3x3(in_channels, 16)
        self.stages, cin = _stages(16, [16 * widen, 32 * widen, 64 * widen], [n, n, n], norm)
        self.final_norm = norm(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.final_norm(self.stages(self.stem(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class SmallCNN(nn.Module):
    """Two conv-ReLU-maxpool blocks (widths w, 2w), pool to 4 (x 4), a hidden layer of 4w units.

    Works on images (N, C, H, W) and on 1-D signals (N, C, L) (`dims` = 2 or 1).
    """

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 32, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
        avg = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool1d
        self.features = nn.Sequential(
            conv(in_channels, width, 3, padding=1),
            nn.ReLU(),
            pool(2),
            conv(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            pool(2),
            avg(4),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * width * 4**dims, 4 * width), nn.ReLU(), nn.Linear(4 * width, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """flatten -> linear(width) -> ReLU -> linear(width) -> ReLU -> linear(num_classes)."""

    def __init__(self, *, in_features: int, num_classes: int, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def default_width(name: str) -> int:
    """The width a model gets when --model_width is not given."""
    if name not in _SPECS:
        raise ValueError(f"--model must be one of {MODELS}, got {name!r}")
    return _SPECS[name][3]


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    width: int | None = None,
    input_shape: tuple,
) -> nn.Module:
    """Build model `name` for inputs of shape `input_shape` (without the batch dim).

    Raises ValueError naming --model / --dataset / --model_width when the model does not fit
    the input (a 2-D network on 1-D mnist1d signals, a channel mismatch, a bad width).
    """
    if name not in _SPECS:
        raise ValueError(f"--model must be one of {MODELS}, got {name!r}")
    family, arch, norm, default = _SPECS[name]
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) not in (2, 3) or any(s < 1 for s in input_shape):
        raise ValueError(
            f"--model={name}: input_shape must be (channels, length) or (channels, height, "
            f"width), got {input_shape}"
        )
    if input_shape[0] != in_channels:
        raise ValueError(
            f"--model={name}: in_channels={in_channels} does not match the --dataset input "
            f"shape {input_shape}"
        )
    if num_classes < 1:
        raise ValueError(f"--model={name}: num_classes must be >= 1, got {num_classes}")
    w = default if width is None else int(width)
    if w < 1:
        raise ValueError(f"--model_width must be a positive integer, got {width}")
    if family in ("preact", "wrn") and len(input_shape) != 3:
        raise ValueError(
            f"--model={name} is a 2-D convolutional network and needs image inputs (channels, "
            f"height, width), but the --dataset input shape is {input_shape} (1-D signals, e.g. "
            f"mnist1d); use --model=cnn or --model=mlp for this data set"
        )
    if family == "preact":
        return PreActResNet(
            arch,  # type: ignore[arg-type]
            in_channels=in_channels,
            num_classes=num_classes,
            width=w,
            norm=_norm_factory(norm),
        )
    if family == "wrn":
        return WideResNet(
            arch,  # type: ignore[arg-type]
            w,
            in_channels=in_channels,
            num_classes=num_classes,
            norm=_norm_factory(norm),
        )
    if family == "cnn":
        return SmallCNN(
            in_channels=in_channels, num_classes=num_classes, width=w, dims=len(input_shape) - 1
        )
    return MLP(in_features=math.prod(input_shape), num_classes=num_classes, width=w)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (BatchNorm running statistics are buffers: not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
