"""``dc``: Dataset Condensation with gradient matching (Zhao, Mopuri & Bilen, ICLR 2021).

Synthetic images are optimised so that the gradient of the classification loss on each class's
synthetic images matches the gradient on real images of that class, on networks that are trained on
the synthetic set as the synthesis goes on (METHODS.md section 3). The loop itself lives in
:mod:`distillbench.methods._gradmatch`, shared with ``dsa``; this file holds the paper defaults.

Paper defaults (``main.py --method DC``): 1000 iterations, images initialised from N(0, 1) noise,
SGD on the images with lr 0.1 and momentum 0.5, plain SGD lr 0.01 on the network, 256 real images
per class per matching step, batches of 256 synthetic images for the network updates, the
layer-wise distance ``"ours"``, no augmentation, and the ``(outer_loop, inner_loop)`` schedule by
IPC of :data:`~distillbench.methods._gradmatch.PAPER_LOOPS` (IPCs outside the table take the
nearest lower entry, see :func:`~distillbench.methods._gradmatch.resolve_loops`).

Randomness: each iteration's network comes from a generator derived from ``(ctx.seed, name,
iteration)``; noise initialisation, real batches, shuffling and augmentation draws come from
``ctx.generator``. With ``ctx.weights`` the real-side loss is the weighted cross-entropy (weights
normalised within each sampled class batch), which is how KDE reweighting hooks in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from distillbench.harness.plugins import register_method
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods._gradmatch import DIS_METRICS, run_gradient_matching
from distillbench.methods.base import DistillationMethod


@dataclasses.dataclass(frozen=True)
class DCParams:
    """DC hyperparameters; defaults are the paper's (``main.py --method DC``)."""

    iterations: int = dataclasses.field(default=1000, metadata={"help": "fresh networks (outer iterations)"})
    lr_img: float = dataclasses.field(default=0.1, metadata={"help": "SGD learning rate of the synthetic images"})
    momentum: float = dataclasses.field(default=0.5, metadata={"help": "SGD momentum of the synthetic images"})
    lr_net: float = dataclasses.field(
        default=0.01, metadata={"help": "SGD learning rate of the network trained on the synthetic set"}
    )
    batch_real: int = dataclasses.field(default=256, metadata={"help": "real images per class per matching step"})
    batch_train: int = dataclasses.field(
        default=256, metadata={"help": "batch size of the network updates on the synthetic set"}
    )
    init: Literal["noise", "real"] = dataclasses.field(
        default="noise", metadata={"help": "initialise from N(0, 1) noise or from random real images"}
    )
    outer_loop: int | None = dataclasses.field(
        default=None, metadata={"help": "image updates per network; none = the paper's schedule by ipc"}
    )
    inner_loop: int | None = dataclasses.field(
        default=None, metadata={"help": "network epochs on the synthetic set between image updates; none = paper"}
    )
    dis_metric: Literal["ours", "mse", "cos"] = dataclasses.field(
        default="ours", metadata={"help": "gradient distance: layer-wise cosine (ours), mse or cos of the whole"}
    )
    net: str = dataclasses.field(default="convnet", metadata={"help": "network spec of the matching networks"})

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        for key in ("lr_img", "lr_net"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        for key in ("batch_real", "batch_train"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("outer_loop", "inner_loop"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be at least 1 (or none for the paper schedule), got {value}")
        if self.dis_metric not in DIS_METRICS:
            raise ValueError(f"dis_metric must be one of {', '.join(DIS_METRICS)}, got {self.dis_metric!r}")


@register_method("dc")
class GradientMatching(DistillationMethod):
    """Dataset Condensation: match real and synthetic gradients class by class (no augmentation)."""

    name = "dc"
    Params = DCParams
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    accepts_weights = True
    test_config: ClassVar[dict[str, Any]] = {
        "iterations": 2,
        "outer_loop": 2,
        "inner_loop": 1,
        "batch_real": 16,
        "net": "convnet[width=16]",
    }

    def strategy(self, info: DatasetInfo) -> str:
        """The DSA strategy used inside the matching on ``info``; DC uses none."""
        return "none"

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        super().validate(info, ipc)
        self.check_network_and_augmentation(info, self.params.net, self.strategy(info))

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        return run_gradient_matching(self.name, self.params, data, ipc, ctx, self.strategy(data.info))
