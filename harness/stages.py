"""Weightings (sample weights of the real data) and label stages (what happens to labels after distillation).

The built-ins here are the identities of each axis: weighting ``none`` and label stage ``native``.
Richer ones (KDE reweighting, teacher and ADSA soft labels) are plugins of the same two kinds.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch

from distillbench.harness.params import NoParams
from distillbench.harness.plugins import register_label_stage, register_weighting
from distillbench.harness.types import Context, DataBundle, DistilledSet


class Weighting(abc.ABC):
    """Computes one non-negative weight per real training sample for methods that accept weights.

    Class attributes:
        Params: frozen dataclass of options.
        identity: True for the weighting that changes nothing (``none``); any other weighting
            requires a method with ``accepts_weights``.
    """

    Params: ClassVar[type] = NoParams
    identity: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abc.abstractmethod
    def compute(self, data: DataBundle, ctx: Context) -> torch.Tensor | None:
        """Weights ``[len(data.train)]`` or ``None`` for uniform."""


class LabelStage(abc.ABC):
    """Replaces or calibrates the labels of a distilled set (e.g. teacher soft labels)."""

    Params: ClassVar[type] = NoParams
    identity: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abc.abstractmethod
    def apply(self, dset: DistilledSet, data: DataBundle, ctx: Context) -> DistilledSet:
        """The set with new labels."""


@register_weighting("none")
class NoWeighting(Weighting):
    """Uniform weights: the real data is used as it is."""

    name = "none"
    identity = True

    def compute(self, data: DataBundle, ctx: Context) -> torch.Tensor | None:
        return None


@register_label_stage("native")
class NativeLabels(LabelStage):
    """Keep the labels the method produced."""

    name = "native"
    identity = True

    def apply(self, dset: DistilledSet, data: DataBundle, ctx: Context) -> DistilledSet:
        return dset
