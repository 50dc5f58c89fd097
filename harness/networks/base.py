"""The network-factory contract and seeded initialisation.

A network plugin is a factory: ``validate(info)`` rejects inputs it cannot handle (before anything
runs) and ``build(info, generator)`` returns a fresh ``nn.Module`` whose parameters are drawn from
``generator`` only. Built modules expose ``embed(x)`` (the features before the classifier, used by
distribution matching and feature-space baselines) and ``forward(x)`` (logits).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from distillbench.harness.params import NoParams
from distillbench.harness.types import DatasetInfo


class Network(abc.ABC):
    """Base class of network factories."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def validate(self, info: DatasetInfo) -> None:
        """Raise ``ConfigError``/``IncompatibleError`` if the network cannot take ``info``'s samples."""
        from distillbench.harness.errors import IncompatibleError

        if info.modality not in self.modalities:
            raise IncompatibleError(
                f"network {self.name!r} takes {'/'.join(sorted(self.modalities))} input, "
                f"but dataset {info.name!r} is {info.modality}"
            )

    @abc.abstractmethod
    def build(self, info: DatasetInfo, generator: torch.Generator) -> nn.Module:
        """A freshly initialised module for ``info`` (parameters drawn from ``generator``)."""


def construct(factory: Callable[[], nn.Module], generator: torch.Generator) -> nn.Module:
    """Build ``factory()`` without touching torch's global RNG, then draw its parameters from ``generator``.

    The module is constructed on the ``meta`` device (so PyTorch's constructors draw nothing from
    the global random stream), materialised on the CPU, and initialised by :func:`init_parameters`.
    """
    with torch.device("meta"):
        module = factory()
    return init_parameters(module.to_empty(device="cpu"), generator)


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every parameter of ``module`` from ``generator`` with PyTorch's default schemes.

    PyTorch's constructors draw from the global RNG; re-drawing here keeps library code free of
    global seeding while giving the same distributions (Kaiming-uniform with a=sqrt(5) for weights,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases, ones/zeros for normalisation layers).
    """
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d | nn.Conv1d | nn.Linear):
            weight = sub.weight
            fan_in = weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            # kaiming_uniform_(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            weight.uniform_(-bound, bound, generator=generator)
            if sub.bias is not None:
                sub.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(sub, nn.GroupNorm | nn.LayerNorm | nn.modules.batchnorm._NormBase):
            if getattr(sub, "weight", None) is not None:
                sub.weight.fill_(1.0)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()
            if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
                sub.reset_running_stats()
        elif any(True for _ in sub.parameters(recurse=False)):
            raise TypeError(
                f"init_parameters does not know how to initialise {type(sub).__name__}; "
                "extend it or initialise the layer explicitly from the generator"
            )
    return module
