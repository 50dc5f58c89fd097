"""``dsa``: gradient matching with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

The ``dc`` loop (:mod:`distillbench.methods._gradmatch`) with augmentation in two places
(METHODS.md section 3):

* inside the matching, the real batch and the synthetic images of a class get the *same*
  augmentation (one family and one parameter draw, :meth:`DSA.siamese`), so the two gradients are
  compared on equally transformed data and the image gradient flows through the transformation;
* during the network updates on the synthetic set, every sample gets its own draw
  (:meth:`DSA.per_sample`), as the reference's ``epoch(..., aug=True)``.

Defaults follow the DSA README: images initialised from random real images (``init="real"``),
lr_img 0.1, and the dataset's DSA strategy (``info.dsa_strategy``:
``color_crop_cutout_flip_scale_rotate``, without ``flip`` for digit datasets). Everything else is
``dc``'s paper default, including the IPC schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from distillbench.harness.augment import DSA
from distillbench.harness.plugins import register_method
from distillbench.harness.types import DatasetInfo
from distillbench.methods.dc import DCParams, GradientMatching


@dataclasses.dataclass(frozen=True)
class DSAParams(DCParams):
    """DSA hyperparameters: ``dc``'s plus the strategy; defaults from the DSA README."""

    init: Literal["noise", "real"] = dataclasses.field(
        default="real", metadata={"help": "initialise from random real images (DSA README) or N(0, 1) noise"}
    )
    dsa_strategy: str | None = dataclasses.field(
        default=None, metadata={"help": "DSA families joined by '_'; none = the dataset's own strategy"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dsa_strategy is not None:
            DSA(self.dsa_strategy)  # raises ValueError naming unknown families


@register_method("dsa")
class SiameseGradientMatching(GradientMatching):
    """DSA: ``dc`` with Siamese augmentation in the matching and per-sample augmentation in training."""

    name = "dsa"
    Params = DSAParams
    test_config: ClassVar[dict[str, Any]] = {**GradientMatching.test_config}

    def strategy(self, info: DatasetInfo) -> str:
        """The DSA strategy on ``info``: ``dsa_strategy`` if set, else the dataset's own."""
        return self.params.dsa_strategy if self.params.dsa_strategy is not None else info.dsa_strategy
