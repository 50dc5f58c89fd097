"""AlexCifarNet, the CIFAR-10 network of Dataset Distillation (Wang et al. 2018) and soft-label DD.

Layers (METHODS.md section 1, "Architectures"): conv 64 5x5 -> ReLU -> max pool 3/2 -> LRN -> conv
64 5x5 -> ReLU -> LRN -> max pool 3/2 -> FC 384 -> ReLU -> FC 192 -> ReLU -> FC C.

METHODS.md does not list the paddings or the LRN constants. We use "same" padding 2 in both convs,
padding 1 in both pools (so 32 -> 16 -> 8 and 64 * 8 * 8 = 4096 features into FC 384) and
``LocalResponseNorm(size=4, alpha=0.001 / 9, beta=0.75, k=1)``, the cuda-convnet "layers-18pct"
constants that public ports of the DD code's AlexCifarNet use (**UNVERIFIED** against the official
``networks/networks.py``). Inputs need not be 32x32 or RGB: the FC input size follows from the
input shape (the DD code accepts only 3x32x32).

Initialisation (``init``): ``xavier`` (default, the DD code's ``--init xavier``: Xavier-normal with
gain 1, zero biases) or ``default`` (PyTorch's), drawn from the generator passed to ``build``.
The module has no buffers, dropout or batch norm, so it runs unchanged under
:func:`torch.func.functional_call` with explicit parameter tensors (DD's unrolled inner steps).
``embed(x)`` is the 192-d output of the second FC layer (after ReLU).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from distillbench.harness.errors import ConfigError
from distillbench.harness.networks.base import Network
from distillbench.harness.networks.lenet import Init, build_with_init
from distillbench.harness.plugins import register_network
from distillbench.harness.types import DatasetInfo


@dataclasses.dataclass(frozen=True)
class AlexCifarNetParams:
    """AlexCifarNet options."""

    init: Init = dataclasses.field(
        default="xavier", metadata={"help": "xavier: Xavier-normal weights, zero biases (DD code); default: PyTorch's"}
    )


def _pool(size: int) -> int:
    """Side after max pool 3/2 with padding 1 (the 5x5 convs keep the size)."""
    return (size + 2 - 3) // 2 + 1


class AlexCifarNetModule(nn.Module):
    """The AlexCifarNet itself; see the module docstring."""

    samplewise = True  # no layer mixes the samples of a batch (harness/microbatch.py)

    def __init__(self, channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0),
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        flat = 64 * _pool(_pool(height)) * _pool(_pool(width))
        self.hidden = nn.Sequential(nn.Linear(flat, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU())
        self.classifier = nn.Linear(192, num_classes)
        self.feature_dim = 192

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_network("alexcifarnet")
class AlexCifarNet(Network):
    """AlexCifarNet (DD / soft-label DD on CIFAR-10): two conv-pool-LRN blocks, FC 384-192-C."""

    name = "alexcifarnet"
    Params = AlexCifarNetParams

    def validate(self, info: DatasetInfo) -> None:
        super().validate(info)
        if len(info.shape) != 3 or min(info.shape) < 1:
            raise ConfigError(
                f"alexcifarnet needs images [C, H, W]; dataset {info.name!r} has samples of shape {info.shape}"
            )
        if min(info.shape[1:]) < 2:
            # A 1-pixel side would pass through the pools unchanged; nothing convolutional is left to learn.
            raise ConfigError(
                f"alexcifarnet needs images of at least 2x2 pixels; dataset {info.name!r} has {info.shape[1:]}"
            )

    def build(self, info: DatasetInfo, generator: torch.Generator) -> nn.Module:
        self.validate(info)
        channels, height, width = info.shape
        return build_with_init(
            lambda: AlexCifarNetModule(channels, height, width, info.num_classes), generator, self.params.init
        )
