"""Network factories (ConvNet, MLP, ...). Build one from a spec with :func:`build_network`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from distillbench.harness.types import DatasetInfo


def resolve_network(spec: str):  # noqa: ANN201 - returns a configured Network instance
    """The network factory for ``spec`` (``"convnet[depth=2]"``), validated but not built."""
    from distillbench.harness.plugins import NETWORKS

    configured = NETWORKS.resolve(spec)
    return configured.obj(configured.params)


def build_network(spec: str, info: DatasetInfo, generator: torch.Generator) -> nn.Module:
    """Build a freshly initialised network for ``info`` from ``spec``; randomness from ``generator``."""
    return resolve_network(spec).build(info, generator)
