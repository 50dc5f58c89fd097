"""ResNet-18 for small images, in the style of the DC reference code (``ResNet18BN``).

Layout: a 3x3 stride-1 stem convolution (``width`` channels, no bias) -> norm -> ReLU, with *no*
initial max-pool (the CIFAR-style ResNet), then four stages of two basic blocks with ``width``,
``2 width``, ``4 width``, ``8 width`` channels and strides 1, 2, 2, 2 (a 1x1 convolution + norm on
the shortcut where the shape changes), global average pooling, and a linear classifier. ``embed``
returns the pooled ``8 width``-dimensional features (512 by default) before the classifier.

Input sizes: the stages divide the side by 8 (rounding up), so 32x32 inputs end in 4x4 maps (the
reference's fixed ``avg_pool2d(4)`` then gives 1x1) and 28x28 inputs in 4x4 maps too (28 -> 14 ->
7 -> 4); both are pooled globally, which equals the reference's 4x4 average pooling there. The 8x8
digits end in 1x1 maps (8 -> 4 -> 2 -> 1): the last stage then sees one position per channel, which
works (pooling is the identity) but is far from how ResNet-18 is meant to be used; the harness
accepts it so cross-architecture checks can run on CPU, and the docstring says so. Inputs smaller
than 8x8 are rejected with a ``ConfigError``: fewer than one position per stride-8 cell.

Normalisation: ``batchnorm`` (default; ResNet18BN, what DC / DM cross-architecture tables use) or
``instancenorm`` (per-channel GroupNorm with affine terms, the reference's plain ``ResNet18``). With
batch norm, a training step needs more than one sample per batch when the last maps are 1x1.

Parameters are drawn from the generator through :func:`~distillbench.harness.networks.base.construct`
(PyTorch's default schemes for Conv2d, Linear, BatchNorm2d and GroupNorm; nothing here needs more).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.errors import ConfigError
from distillbench.harness.networks.base import Network, construct
from distillbench.harness.plugins import register_network
from distillbench.harness.types import DatasetInfo

ResNetNorm = Literal["batchnorm", "instancenorm"]

_MIN_SIZE = 8  # total stride of the four stages


@dataclasses.dataclass(frozen=True)
class ResNet18Params:
    """ResNet-18 options (defaults: the DC reference's ResNet18BN, base width 64)."""

    width: int = dataclasses.field(default=64, metadata={"help": "channels of the stem and the first stage"})
    norm: ResNetNorm = dataclasses.field(
        default="batchnorm", metadata={"help": "batchnorm (ResNet18BN) or instancenorm (per-channel GroupNorm)"}
    )

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width must be at least 1, got {self.width}")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projected where the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), _norm(norm, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18Module(nn.Module):
    """The network itself; ``embed`` returns the globally pooled features before the classifier."""

    def __init__(self, channels: int, num_classes: int, p: ResNet18Params) -> None:
        super().__init__()
        w = p.width
        self.stem = nn.Sequential(
            nn.Conv2d(channels, w, kernel_size=3, stride=1, padding=1, bias=False), _norm(p.norm, w)
        )
        stages: list[nn.Module] = []
        in_ch = w
        for out_ch, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
            stages.append(
                nn.Sequential(BasicBlock(in_ch, out_ch, stride, p.norm), BasicBlock(out_ch, out_ch, 1, p.norm))
            )
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.samplewise = p.norm != "batchnorm"  # harness/microbatch.py
        self.feature_dim = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.stem(x)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_network("resnet18")
class ResNet18(Network):
    """ResNet-18 (CIFAR-style stem, batch norm by default) for square images of at least 8x8."""

    name = "resnet18"
    Params = ResNet18Params

    def validate(self, info: DatasetInfo) -> None:
        super().validate(info)
        if len(info.shape) != 3 or info.shape[1] != info.shape[2]:
            raise ConfigError(f"resnet18 needs square images [C, H, H]; dataset {info.name!r} has shape {info.shape}")
        if info.shape[-1] < _MIN_SIZE:
            raise ConfigError(
                f"resnet18 needs inputs of at least {_MIN_SIZE}x{_MIN_SIZE} (its stages downsample by 8); "
                f"dataset {info.name!r} has {info.shape[-1]}x{info.shape[-1]}; use convnet or mlp"
            )

    def build(self, info: DatasetInfo, generator: torch.Generator) -> nn.Module:
        self.validate(info)
        return construct(lambda: ResNet18Module(info.shape[0], info.num_classes, self.params), generator)
