"""``groups``: sample weights from the known bias groups, the upper reference for any reweighting.

``kde`` (Cui et al., ICML 2024) has to *find* the bias-conflicting samples from an embedding it
learns on the biased data. ``groups`` reads them from the dataset instead (``groups["aligned"]`` of
the training split, which every biased dataset records, ``datasets/_biased.py``) and gives each
class's conflicting samples the share ``share`` of the class's weight, its aligned samples the
rest, evenly within each group; weights have mean 1 within each class, as ``kde``'s default.

It is not a fair entry on a leaderboard (it uses the labels a debiasing method is denied); it is the
measurement that separates the two questions behind a short DM + ``kde`` result: does ``kde`` put
the weight in the right place (compare ``kde``'s weight map with ``share``), and how far can the
best-placed weights take the method at this run length and on this data (``groups`` itself).
``share=0.5`` is group balance within each class; the share ``kde`` reaches is reported by
``benchmarks/kde_analysis.py``. A class without conflicting (or without aligned) samples keeps
uniform weights.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from distillbench.harness.errors import ConfigError
from distillbench.harness.plugins import register_weighting
from distillbench.harness.stages import Weighting
from distillbench.harness.types import Context, DataBundle


@dataclasses.dataclass(frozen=True)
class GroupParams:
    """Options of ``groups``."""

    share: float = dataclasses.field(
        default=0.5, metadata={"help": "share of each class's weight on its bias-conflicting samples (0-1)"}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1] (the conflicting samples' share of a class), got {self.share}")


def group_weights(labels: torch.Tensor, aligned: torch.Tensor, num_classes: int, share: float) -> torch.Tensor:
    """Per-sample weights, mean 1 within each class, ``share`` of each class's total on its conflicting samples."""
    w = torch.ones(len(labels), dtype=torch.float32)
    for c in range(num_classes):
        in_class = labels == c
        conflicting = in_class & ~aligned
        agreeing = in_class & aligned
        n, n_conf, n_al = int(in_class.sum()), int(conflicting.sum()), int(agreeing.sum())
        if n_conf == 0 or n_al == 0:
            continue  # one group only: nothing to rebalance
        w[conflicting] = share * n / n_conf
        w[agreeing] = (1.0 - share) * n / n_al
    return w


@register_weighting("groups")
class GroupWeighting(Weighting):
    """Weights from the known bias groups: conflicting samples get ``share`` of each class (an oracle)."""

    name = "groups"
    Params = GroupParams
    test_config: ClassVar[dict[str, float]] = {"share": 0.5}

    def compute(self, data: DataBundle, ctx: Context) -> torch.Tensor:
        aligned = data.train.groups.get("aligned")
        if aligned is None:
            raise ConfigError(
                f"weighting 'groups' needs a dataset with bias groups; {data.info.name!r} has none "
                "(use colored_mnist, bg_fmnist, corrupted_cifar10 or bffhq, or weighting kde)"
            )
        return group_weights(data.train.y, aligned.bool(), data.info.num_classes, self.params.share)
