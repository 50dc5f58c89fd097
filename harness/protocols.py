"""Sealed, versioned evaluation protocols.

A protocol fixes everything about how a distilled set is scored: the evaluation network, the
optimiser and schedule, the augmentation, and the number K of freshly initialised models trained
on the set. Methods cannot change it, and the leaderboard compares rows only within one
``name`` + ``version``. Changing any field of a published protocol means a new version.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """An evaluation recipe: train ``n_models`` networks on the distilled set, test each.

    Attributes:
        name: registry name, e.g. ``convnet-v1``.
        version: bumped whenever any field changes.
        networks: network specs trained on the set; the first is the primary one. A protocol with
            several networks (a cross-architecture protocol) gives one row per network.
        epochs: passes over the distilled set.
        lr: SGD learning rate; multiplied by ``lr_decay_factor`` once ``lr_decay_at`` of the epochs are done.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: mini-batch size (sets smaller than it are one batch).
        lr_decay_at: fraction of the epochs after which the learning rate drops.
        lr_decay_factor: the drop.
        augment: ``dsa`` (the dataset's DSA strategy, parameters per sample) or ``none``.
        n_models: K, the number of evaluation models, each from a seed derived from the trial seed.
        quick: True for short recipes meant for demos and CI; their numbers are not paper numbers.
        description: one line shown by ``describe`` and the leaderboard.
    """

    name: str
    version: int
    networks: tuple[str, ...] = ("convnet",)
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay_at: float = 0.5
    lr_decay_factor: float = 0.1
    augment: str = "dsa"
    n_models: int = 20
    quick: bool = False
    description: str = ""

    @property
    def network(self) -> str:
        """The primary evaluation network."""
        return self.networks[0]

    @property
    def id(self) -> str:
        """``name@version``, the key under which rows are compared."""
        return f"{self.name}@{self.version}"


CONVNET_V1 = EvalProtocol(
    name="convnet-v1",
    version=1,
    description=(
        "DC/DSA/DM paper recipe: ConvNet-3 (width 128, instance norm, avg pooling), SGD lr 0.01 "
        "momentum 0.9 wd 5e-4, batch 256, 1000 epochs with DSA augmentation, lr x0.1 at half, K=20 models"
    ),
)

QUICK_V1 = EvalProtocol(
    name="quick-v1",
    version=1,
    epochs=300,
    n_models=3,
    quick=True,
    description=("QUICK demo/CI recipe, not comparable to papers: convnet-v1 with 300 epochs and K=3 models"),
)
