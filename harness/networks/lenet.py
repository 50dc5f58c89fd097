"""LeNet, the MNIST network of Dataset Distillation (Wang et al. 2018) and soft-label DD.

Layers (METHODS.md section 1, "Architectures"): conv 6 maps 5x5 -> ReLU -> max pool 2x2 -> conv 16
maps 5x5 -> ReLU -> max pool 2x2 -> FC 120 -> ReLU -> FC 84 -> ReLU -> FC C. ReLU and max pooling
are what the DD code uses (not LeCun's tanh and subsampling).

Padding (``padding1`` of the first conv, ``padding2`` of the second; ``none`` = automatic):

* 28x28 (MNIST): 2 in the first conv, 0 in the second, as in the DD code, so a 28-pixel image is
  treated like a 32-pixel one: 28 -> 28 -> 14 -> 10 -> 5, i.e. 16 * 5 * 5 = 400 features into FC 120.
* 32 pixels and larger (and 28 < H < 32): 0 and 0, the classic LeNet-5 (32 -> 28 -> 14 -> 10 -> 5).
* smaller than 28 (e.g. the 8x8 ``digits`` used in tests): 2 and 2 ("same" convolutions), because
  unpadded 5x5 convolutions would shrink an 8x8 image to nothing: 8 -> 8 -> 4 -> 4 -> 2, 64 features.
  This is our extension; the DD code supports only 28 and 32 pixels.

Initialisation (``init``): ``xavier`` (default) is the DD code's ``--init xavier``: Xavier-normal
weights with gain 1 and zero biases. ``default`` draws PyTorch's default initialisation instead.
Either way every number comes from the generator passed to ``build``.

The module has no buffers, no dropout and no batch norm, so train and eval mode compute the same
function and the network runs unchanged under :func:`torch.func.functional_call` with explicit
parameter tensors, which is how DD unrolls its inner SGD steps. ``embed(x)`` is the 84-d output of
the second FC layer (after ReLU), ``forward(x)`` the logits. Binary tasks get two logits and
cross-entropy here; the DD code used one logit with BCE.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.errors import ConfigError
from distillbench.harness.networks.base import Network, construct
from distillbench.harness.plugins import register_network
from distillbench.harness.types import DatasetInfo

Init = Literal["xavier", "default"]


@dataclasses.dataclass(frozen=True)
class LeNetParams:
    """LeNet options; defaults reproduce the DD code's LeNet."""

    padding1: int | None = dataclasses.field(
        default=None, metadata={"help": "padding of the first conv; none = 2 for 28px and <28px inputs, else 0"}
    )
    padding2: int | None = dataclasses.field(
        default=None, metadata={"help": "padding of the second conv; none = 2 for inputs under 28px, else 0"}
    )
    init: Init = dataclasses.field(
        default="xavier", metadata={"help": "xavier: Xavier-normal weights, zero biases (DD code); default: PyTorch's"}
    )

    def __post_init__(self) -> None:
        for name in ("padding1", "padding2"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")


def auto_padding(height: int) -> tuple[int, int]:
    """The automatic (first, second) conv padding for ``height``-pixel inputs (module docstring).

    Example:
        >>> [auto_padding(h) for h in (8, 28, 32)]
        [(2, 2), (2, 0), (0, 0)]
    """
    if height == 28:
        return 2, 0
    if height < 28:
        return 2, 2
    return 0, 0


def _conv_pool(size: int, padding: int) -> int:
    """Side after a 5x5 conv with ``padding`` and a 2x2 max pool (floor), as PyTorch computes it."""
    return (size + 2 * padding - 4) // 2


@torch.no_grad()
def xavier_init(module: nn.Module, generator: torch.Generator, gain: float = 1.0) -> nn.Module:
    """Xavier-normal weights (std = gain * sqrt(2 / (fan_in + fan_out))) and zero biases, from ``generator``.

    This is the DD code's default ``--init xavier`` (gain 1). Fans follow ``torch.nn.init``: for a
    conv, fan_in = in_channels * kernel area and fan_out = out_channels * kernel area.

    Raises:
        TypeError: a layer with parameters other than Conv/Linear (add its rule here first).
    """
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d | nn.Conv1d | nn.Linear):
            weight = sub.weight
            receptive = weight[0][0].numel()
            fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
            weight.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
            if sub.bias is not None:
                sub.bias.zero_()
        elif any(True for _ in sub.parameters(recurse=False)):
            raise TypeError(f"xavier_init does not know how to initialise {type(sub).__name__}")
    return module


def build_with_init(factory: Callable[[], nn.Module], generator: torch.Generator, init: Init) -> nn.Module:
    """Construct ``factory()`` without the global RNG; parameters from ``generator`` under ``init``."""
    if init == "default":
        return construct(factory, generator)
    with torch.device("meta"):
        module = factory()
    return xavier_init(module.to_empty(device="cpu"), generator)


class LeNetModule(nn.Module):
    """The LeNet itself; see the module docstring."""

    samplewise = True  # no layer mixes the samples of a batch (harness/microbatch.py)

    def __init__(self, channels: int, height: int, width: int, num_classes: int, padding: tuple[int, int]) -> None:
        super().__init__()
        p1, p2 = padding
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=5, padding=p1)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, padding=p2)
        h, w = _conv_pool(_conv_pool(height, p1), p2), _conv_pool(_conv_pool(width, p1), p2)
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.feature_dim = 84

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        out = F.relu(self.fc1(out.flatten(1)))
        return F.relu(self.fc2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.embed(x))


@register_network("lenet")
class LeNet(Network):
    """LeNet (DD / soft-label DD on MNIST): two 5x5 conv + max-pool blocks, FC 120-84-C, ReLU."""

    name = "lenet"
    Params = LeNetParams

    def padding_for(self, info: DatasetInfo) -> tuple[int, int]:
        """The (first, second) conv padding used for ``info``'s input size."""
        auto = auto_padding(info.shape[-2]) if len(info.shape) == 3 else (0, 0)
        p1 = self.params.padding1 if self.params.padding1 is not None else auto[0]
        p2 = self.params.padding2 if self.params.padding2 is not None else auto[1]
        return p1, p2

    def validate(self, info: DatasetInfo) -> None:
        super().validate(info)
        if len(info.shape) != 3:
            raise ConfigError(f"lenet needs images [C, H, W]; dataset {info.name!r} has samples of shape {info.shape}")
        p1, p2 = self.padding_for(info)
        for side in info.shape[1:]:
            first = _conv_pool(side, p1)
            if first < 1 or first + 2 * p2 < 5 or _conv_pool(first, p2) < 1:
                raise ConfigError(
                    f"lenet with paddings ({p1}, {p2}) cannot take {info.shape[1]}x{info.shape[2]} inputs of "
                    f"{info.name!r}: the 5x5 convs and 2x2 pools shrink them to nothing; "
                    "use lenet[padding1=2,padding2=2] (or leave both paddings at none)"
                )

    def build(self, info: DatasetInfo, generator: torch.Generator) -> nn.Module:
        self.validate(info)
        channels, height, width = info.shape
        padding = self.padding_for(info)
        return build_with_init(
            lambda: LeNetModule(channels, height, width, info.num_classes, padding), generator, self.params.init
        )
