"""``datm``: Difficulty-Aligned Trajectory Matching (Guo et al., ICLR 2024; arXiv 2310.05773).

MTT on FTD's flat experts (:mod:`distillbench.methods.ftd`, without FTD's EMA), with three changes
from DATM's official code (METHODS-trajectory.md section 3):

1. **Difficulty-aligned start epochs.** Start epochs come from ``[min_start_epoch, upper)``; with
   ``sequential_generation`` (DATM's default) ``upper`` grows linearly from ``current_max_start_epoch``
   to ``max_start_epoch`` over the first ``expansion_end_epoch`` iterations, so a small set first
   matches the early, easy segments of the trajectories.
2. **Learnable soft labels.** Each sample carries a vector of label logits, trained with the images
   through the unrolled steps (SGD ``lr_y``, momentum ``momentum_y``); the student's loss is the soft
   cross-entropy to their softmax (temperature 1). The set's labels are that softmax, which the
   protocols' soft cross-entropy trains on exactly as DATM's evaluation does; the logits are kept in
   ``extras["label_logits"]``.
3. **Initialisation from the experts** (``pix_init=samples_predicted_correctly``): real images the
   first expert's final snapshot classifies correctly, labelled with the logits of the experts that
   classify them correctly, averaged. ``pix_init=real`` takes random real images and the first
   expert's logits.
4. **Loss gate.** An iteration whose matching loss exceeds ``threshold`` updates nothing (counted in
   ``meta["iterations_skipped_by_threshold"]``).

Defaults are DATM's CIFAR-10 IPC 10 configuration (experts 100 x 100 epochs with GSAM rho 0.01,
alpha 0.3; 10,000 iterations, ``syn_steps`` 80, ``expert_epochs`` 2, window 0, 10 -> 20 by iteration
1,000, ``lr_img`` 100, ``lr_lr`` 1e-5, ``lr_teacher`` 0.01, ``lr_y`` 2, ``threshold`` 1.0), distilled
on ``cifar10[zca=true]`` as every DATM configuration is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

from distillbench.harness.errors import ConfigError
from distillbench.harness.plugins import register_method
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods._trajectory import (
    FlatTrajectoryParams,
    LoopOptions,
    StartWindow,
    TrajectoryMethod,
    run_trajectory_matching,
)
from distillbench.methods.mtt import TINY_TRAJECTORY


def _field(default: Any, text: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class DATMParams(FlatTrajectoryParams):
    """DATM hyperparameters, named as in its configuration files; defaults: CIFAR-10 IPC 10."""

    iterations: int = _field(10000, "updates of the synthetic set")
    syn_steps: int = _field(80, "student SGD steps on the synthetic set per iteration")
    expert_epochs: int = _field(2, "expert epochs the student's steps must cover")
    lr_img: float = _field(100.0, "SGD learning rate of the synthetic images")
    train_epochs: int = _field(100, "epochs each expert is trained")
    pix_init: Literal["samples_predicted_correctly", "real", "noise"] = _field(
        "samples_predicted_correctly", "images the experts classify correctly (with their logits), real, or noise"
    )
    min_start_epoch: int = _field(0, "lower end of the start-epoch window")
    current_max_start_epoch: int = _field(10, "initial upper end of the window (sequential generation)")
    max_start_epoch: int = _field(20, "final upper end of the window")
    expansion_end_epoch: int = _field(1000, "iteration at which the upper end reaches max_start_epoch")
    sequential_generation: bool = _field(True, "grow the window's upper end (false: [min, max) throughout)")
    lr_y: float = _field(2.0, "SGD learning rate of the label logits")
    momentum_y: float = _field(0.9, "SGD momentum of the label logits")
    threshold: float = _field(1.0, "skip the updates of an iteration whose matching loss exceeds this")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.min_start_epoch < self.max_start_epoch:
            raise ValueError(
                f"min_start_epoch must be in [0, max_start_epoch={self.max_start_epoch}), got {self.min_start_epoch}"
            )
        if (
            self.sequential_generation
            and not self.min_start_epoch < self.current_max_start_epoch <= self.max_start_epoch
        ):
            raise ValueError(
                f"current_max_start_epoch must be in ({self.min_start_epoch}, {self.max_start_epoch}] (between "
                f"min_start_epoch and max_start_epoch), got {self.current_max_start_epoch}"
            )
        if self.expansion_end_epoch < 1:
            raise ValueError(f"expansion_end_epoch must be at least 1, got {self.expansion_end_epoch}")
        if not (self.lr_y > 0 and math.isfinite(self.lr_y)):
            raise ValueError(f"lr_y must be a positive finite number, got {self.lr_y}")
        if not 0.0 <= self.momentum_y < 1.0:
            raise ValueError(f"momentum_y must be in [0, 1), got {self.momentum_y}")
        if not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise ValueError(f"threshold must be a positive finite number, got {self.threshold}")


@register_method("datm")
class DifficultyAlignedTrajectoryMatching(TrajectoryMethod):
    """DATM: trajectory matching on flat experts with a moving start window and learned soft labels."""

    name = "datm"
    Params = DATMParams
    flat_experts = True
    test_config: ClassVar[dict[str, Any]] = {
        **TINY_TRAJECTORY,
        "current_max_start_epoch": 1,
        "expansion_end_epoch": 2,
        "threshold": 10.0,
    }

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        super().validate(info, ipc)
        if info.num_classes < 2:
            raise ConfigError(f"method 'datm' learns soft labels over classes; {info.name!r} has only one class")

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        p = self.params
        window = StartWindow(
            lo=p.min_start_epoch,
            max_start=p.max_start_epoch,
            current_max=p.current_max_start_epoch if p.sequential_generation else None,
            expansion_end=p.expansion_end_epoch,
        )
        options = LoopOptions(
            window=window,
            learn_labels=True,
            lr_y=p.lr_y,
            momentum_y=p.momentum_y,
            threshold=p.threshold,
            init=p.pix_init,
        )
        return run_trajectory_matching(self, data, ipc, ctx, options)
