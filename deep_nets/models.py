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
  width // 2 groups in every layer (the original's rule: 32 at width 64, as in Wu & He 2018).
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
from typing import Any

import torch
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
    "wrn28",
    "resnet34",
    "resnet34preact",
    "vgg16",
    "linear",
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
    "wrn28": ("wrn", 28, "bn", 10),
    "resnet34": ("postact", (3, 4, 6, 3), "bn", 64),
    "resnet34preact": ("preact", (3, 4, 6, 3), "bn", 64),
    "vgg16": ("vgg", None, "none", 64),
    "linear": ("linear", None, "none", 0),
    "cnn": ("cnn", None, "none", 32),
    "mlp": ("mlp", None, "none", 256),
}

NormFactory = Callable[[int], nn.Module]


def group_norm(width: int) -> NormFactory:
    """GroupNorm with ``width // 2`` groups in every layer, as the original (32 groups at the
    default width 64, as in Wu & He 2018; every stage's channel count w 2^i is a multiple)."""
    if width < 2 or width % 2:
        raise ValueError(
            f"--model_width {width}: the GroupNorm models have width // 2 groups in every layer "
            "(the original's rule), which needs an even width >= 2"
        )
    return lambda channels: nn.GroupNorm(width // 2, channels)


def _norm_factory(kind: str, width: int) -> NormFactory:
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return group_norm(width)
    raise ValueError(f"unknown norm {kind!r}")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: y = conv(relu(n2(conv_s(relu(n1(x)))))) + shortcut.

    The shortcut is the identity when shapes agree, else a strided 1x1 conv of relu(n1(x)).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        norm: NormFactory,
        act: Callable[[Tensor], Tensor] = F.relu,
        droprate: float = 0.0,
    ) -> None:
        super().__init__()
        self.act, self.droprate = act, droprate
        self.norm1 = norm(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.norm2 = norm(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.act(self.norm2(self.conv1(out)))
        if self.droprate > 0:  # the original's place: before the second conv
            out = F.dropout(out, p=self.droprate, training=self.training)
        return self.conv2(out) + skip


def _stages(
    cin: int,
    widths: Sequence[int],
    num_blocks: Sequence[int],
    norm: NormFactory,
    **block: Any,
) -> tuple[nn.Sequential, int]:
    """Stages of pre-activation blocks, stage i with ``num_blocks[i]`` blocks of ``widths[i]``
    channels, downsampling by 2 at the first block of every stage but the first. Returns the
    stages and their output channels."""
    stages = []
    for i, (cout, n) in enumerate(zip(widths, num_blocks)):
        blocks = []
        for j in range(n):
            blocks.append(PreActBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, norm, **block))
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
        **block: Any,
    ) -> None:
        super().__init__()
        self.stem = _conv3x3(in_channels, width)
        widths = [width * 2**i for i in range(len(num_blocks))]
        self.stages, cin = _stages(width, widths, num_blocks, norm, **block)
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
        **block: Any,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        self.stem = _conv3x3(in_channels, 16)
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stages, cin = _stages(16, widths, [n, n, n], norm, **block)
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


class BasicBlockPostAct(nn.Module):
    """The original's ResNet-34 block (post-activation, He et al. 2015): y = relu(bn2(conv2(
    relu(bn1(conv1(x))))) + shortcut(x)), shortcut = conv1x1 + BN where the shape changes.
    Attribute names are the original's, so its checkpoints load as they are."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetPostAct(nn.Module):
    """The original's ``resnet34``: stem conv3x3 + BN + ReLU, four stages of post-activation
    blocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2), global average pooling, linear."""

    def __init__(
        self, num_blocks: Sequence[int], *, in_channels: int, num_classes: int, width: int = 64
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        cin, layers = width, []
        for i, n in enumerate(num_blocks):
            cout, blocks = width * 2**i, []
            for j in range(n):
                blocks.append(BasicBlockPostAct(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class VGG16(nn.Module):
    """The original's ``vgg16`` (configuration D without batch norm, widths w, 2w, 4w, 8w, 8w,
    conv biases, five 2x2 max-pools) with a classifier 8w -> 8w -> 8w -> classes (ReLU between).
    Needs 32 x 32 inputs (the five pools reduce them to 1 x 1)."""

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        cfg = [w[0], w[0], "M", w[1], w[1], "M", w[2], w[2], w[2], "M"]
        cfg += [w[3], w[3], w[3], "M", w[4], w[4], w[4], "M"]
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin, cin),
            nn.ReLU(True),
            nn.Linear(cin, cin),
            nn.ReLU(True),
            nn.Linear(cin, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class LinearModel(nn.Module):
    """The original's ``linear``: flatten, one linear map without bias (logits = W x)."""

    def __init__(self, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self._model = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self._model(x)


def parse_activation(name: str) -> Callable[[Tensor], Tensor]:
    """``relu`` or ``softplusB`` (softplus with integer beta B, the original's --activation)."""
    if name == "relu":
        return F.relu
    tail = name[len("softplus") :] if name.startswith("softplus") else ""
    if not tail.isdigit() or int(tail) < 1:
        raise ValueError(f"--activation {name!r}: use relu or softplusB with an integer B >= 1")
    beta = int(tail)

    def softplus(x: Tensor) -> Tensor:
        return F.softplus(x, beta=beta)

    return softplus


@torch.no_grad()
def init_original(model: nn.Module, *, linear_model: bool = False, scale_init: float = 0.0) -> None:
    """The original's ``init_weights``. Every model but ``linear`` (``init_weights_he``, from Rice
    et al.): conv weights ~ Kaiming normal (fan_out, relu gain: std = sqrt(2 / (k^2 c_out))),
    norm layers weight 1 and bias 0, linear biases 0 (linear weights keep PyTorch's default),
    VGG16's conv biases 0 (its constructor's).
    ``linear``: weights ~ N(0, 1) rescaled to Frobenius norm ``scale_init`` (0: all zero)."""
    for m in model.modules():
        if linear_model:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_()
                m.weight.mul_(scale_init / m.weight.norm())
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(model, VGG16) and m.bias is not None:
                m.bias.zero_()  # the original's VGG constructor zeroes its conv biases
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.zero_()


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
    droprate: float = 0.0,
    activation: str = "relu",
    init: str = "pytorch",
    scale_init: float = 0.0,
) -> nn.Module:
    """Build model `name` for inputs of shape `input_shape` (without the batch dim).

    ``init`` "original" re-initializes as the original code (``init_original``); "pytorch" keeps
    PyTorch's defaults. Raises ValueError naming --model / --dataset / --model_width when the
    model does not fit the input (a 2-D network on 1-D mnist1d signals, a channel mismatch, a bad
    width) or --droprate / --activation where the model has no place for them.
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
    if init not in ("original", "pytorch"):
        raise ValueError(f"--init {init!r}: choose from original, pytorch")
    w = default if width is None else int(width)
    if family != "linear" and w < 1:
        raise ValueError(f"--model_width must be a positive integer, got {width}")
    if family in ("preact", "wrn", "postact", "vgg") and len(input_shape) != 3:
        raise ValueError(
            f"--model={name} is a 2-D convolutional network and needs image inputs (channels, "
            f"height, width), but the --dataset input shape is {input_shape} (1-D signals, e.g. "
            f"mnist1d); use --model=cnn or --model=mlp for this data set"
        )
    if droprate and family not in ("preact", "wrn"):
        raise ValueError(f"--droprate is implemented for the PreAct ResNets and WRNs, not {name}")
    if droprate and name == "wrn28":
        raise ValueError(
            "--droprate has no effect with --model wrn28: the original builds it without dropout "
            "whatever --droprate says; use --model wrn28_10 for a WRN-28 with dropout"
        )
    act = parse_activation(activation)
    if activation != "relu" and family != "preact":
        raise ValueError(f"--activation is implemented for the PreAct ResNets only, not {name}")
    block = dict(act=act, droprate=droprate)
    if family == "vgg" and input_shape[1:] != (32, 32):
        raise ValueError(f"--model=vgg16 needs 32 x 32 images, got {input_shape}")
    model: nn.Module
    if family == "preact":
        model = PreActResNet(
            arch,  # type: ignore[arg-type]
            in_channels=in_channels,
            num_classes=num_classes,
            width=w,
            norm=_norm_factory(norm, w),
            **block,
        )
    elif family == "wrn":
        model = WideResNet(
            arch,  # type: ignore[arg-type]
            w,
            in_channels=in_channels,
            num_classes=num_classes,
            norm=_norm_factory(norm, w),
            **block,
        )
    elif family == "postact":
        model = ResNetPostAct(
            arch,  # type: ignore[arg-type]
            in_channels=in_channels,
            num_classes=num_classes,
            width=w,
        )
    elif family == "vgg":
        model = VGG16(in_channels=in_channels, num_classes=num_classes, width=w)
    elif family == "linear":
        model = LinearModel(in_features=math.prod(input_shape), num_classes=num_classes)
    elif family == "cnn":
        model = SmallCNN(
            in_channels=in_channels, num_classes=num_classes, width=w, dims=len(input_shape) - 1
        )
    else:
        model = MLP(in_features=math.prod(input_shape), num_classes=num_classes, width=w)
    if init == "original":
        init_original(model, linear_model=family == "linear", scale_init=scale_init)
    return model


# The original's module names -> ours, for loading its checkpoints (--model_path): PreAct ResNets
# (conv1, layerK.J.bn1/bn2/shortcut.0, bn) and its WRN (conv1, blockK.layer.J.bn1/bn2/convShortcut,
# bn1 at the top, fc). Its resnet34 / vgg16 / linear use the original's names already.
_ORIGINAL_KEYS = {
    "preact": [
        (r"^conv1\.", "stem."),
        (r"^layer(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
        (r"\.bn1\.", ".norm1."),
        (r"\.bn2\.", ".norm2."),
        (r"\.shortcut\.0\.", ".shortcut."),
        (r"^bn\.", "final_norm."),
    ],
    "wrn": [
        (r"^conv1\.", "stem."),
        (r"^block(\d)\.layer\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
        (r"^bn1\.", "final_norm."),
        (r"\.bn1\.", ".norm1."),
        (r"\.bn2\.", ".norm2."),
        (r"\.convShortcut\.", ".shortcut."),
        (r"^fc\.", "linear."),
    ],
}


def from_original_keys(name: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the original code's state-dict keys of model ``name`` to ours (identity where our
    module names are the original's)."""
    import re

    rules = _ORIGINAL_KEYS.get(_SPECS[name][0], [])
    out = {}
    for k, v in state.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (BatchNorm running statistics are buffers: not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
