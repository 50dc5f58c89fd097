"""A multilayer perceptron on flattened inputs (the MLP of the DC reference networks: 128-128 hidden)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from distillbench.harness.networks.base import Network, construct
from distillbench.harness.plugins import register_network
from distillbench.harness.types import DatasetInfo


@dataclasses.dataclass(frozen=True)
class MLPParams:
    """MLP hyperparameters: hidden widths separated by '/' (e.g. ``hidden=256/128``)."""

    hidden: tuple[int, ...] = (128, 128)

    def __post_init__(self) -> None:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")


class MLPModule(nn.Module):
    """Flatten -> (Linear -> ReLU) x len(hidden) -> Linear; ``embed`` is the last hidden layer."""

    samplewise = True  # no layer mixes the samples of a batch (harness/microbatch.py)

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        self.body = nn.Sequential(*layers)
        self.feature_dim = prev
        self.classifier = nn.Linear(prev, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_network("mlp")
class MLP(Network):
    """Multilayer perceptron on flattened samples."""

    name = "mlp"
    Params = MLPParams

    def build(self, info: DatasetInfo, generator: torch.Generator) -> nn.Module:
        self.validate(info)
        return construct(lambda: MLPModule(math.prod(info.shape), self.params.hidden, info.num_classes), generator)
