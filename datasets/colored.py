"""``colored_mnist`` and ``bg_fmnist``: grey-scale datasets with a class-correlated colour (a spurious bias).

``colored_mnist[conflict=0.05, base=mnist]`` follows Learning from Failure (Nam et al., NeurIPS 2020):
each class ``c`` is paired with colour ``c`` of :data:`COLORS`, injected into the digit (foreground)::

    rgb = intensity * color[k]                   (intensity in [0, 1], k the sample's colour index)

``bg_fmnist[conflict=0.05, base=fashion_mnist]`` (Background Fashion-MNIST, used by Cui et al. 2024
with the datasets of Hwang et al. 2022) colours the *background* instead; the garment stays
grey-scale and turns white where it is brightest::

    rgb = intensity + (1 - intensity) * color[k]

Bias: per class, ``round(conflict * n_c)`` training samples (a seeded choice) get a uniformly drawn
other colour (bias-conflicting), the rest their class's colour (bias-aligned); see ``_biased``.
The literature's conflict ratios are 0.005, 0.01, 0.02 and 0.05 (0.05 is the headline setting of
Cui et al. 2024 and the default here). Choices of this implementation, stated because the papers
differ or are silent:

* **Validation is biased like train** (same ``conflict``, its own seeded draw): it is carved from
  the official training split and stands for more data of the training distribution; selecting
  models on unbiased data would use knowledge of the test distribution.
* **Test is unbiased**: within every class each colour appears ``floor`` or ``ceil`` of ``n_c / 10``
  times (LfF draws the test colours at random, uniform in expectation; here exactly uniform).
* Colours are exact: LfF adds a small per-image Gaussian jitter to the colour (its "severity"); here
  every sample of one colour index has the same colour, so ``groups["bias"]`` is the whole story.
* Colour draws use fixed seeds (``_biased.BIAS_SEED``), so the dataset is identical in every process.
* Normalisation: per-channel mean and std of the coloured *training* split, computed in float64 at
  load time (deterministic; recorded in ``meta["normalisation"]`` and the loaded ``info``; ``info()``
  without loading leaves them empty, as ``digits`` does). They depend on ``base`` and ``conflict``.

``base`` is any grey-scale image dataset in the registry (``mnist``, ``fashion_mnist``, ``kmnist``,
``digits``), loaded with its own layout, splits and ``imbalance=``; ``colored_mnist[base=digits]`` is
an 8x8, offline variant for tests and demos. Output: 3 channels, the base's spatial size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from distillbench.datasets._biased import (
    BIAS_SEED,
    bias_meta,
    biased_attributes,
    channel_stats,
    check_conflict,
    normalise,
    unbiased_attributes,
    with_groups,
)
from distillbench.datasets._longtail import LongTailParams
from distillbench.datasets.base import Dataset
from distillbench.harness.errors import ConfigError, UnknownNameError
from distillbench.harness.params import format_spec
from distillbench.harness.plugins import DATASETS, register_dataset
from distillbench.harness.seeding import derive_seed
from distillbench.harness.types import DataBundle, DatasetInfo, Split

__all__ = ["COLORS", "BackgroundFashionMNIST", "ColoredMNIST", "ColorParams"]

# Ten fixed RGB colours in [0, 1], one per class: the six saturated corners of the RGB cube, then
# orange, violet, grey and light green. No two are closer than 0.5 (Euclidean, RGB in [0, 1]); black
# (invisible digits) and white (invisible garments on a white background) are left out.
COLORS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
    (1.0, 0.5, 0.0),
    (0.5, 0.0, 1.0),
    (0.5, 0.5, 0.5),
    (0.5, 1.0, 0.5),
)
COLOR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "violet", "grey", "light green")


def _grey_bases() -> list[str]:
    """Registered datasets whose samples are single-channel images (checked without loading data)."""
    names = []
    for name in DATASETS.names():
        try:
            configured = DATASETS.resolve(name)
            info = configured.obj(configured.params).info()
        except Exception:  # noqa: BLE001 - a broken third-party plugin must not break this listing
            continue
        if info.modality == "image" and len(info.shape) == 3 and info.shape[0] == 1:
            names.append(name)
    return names


def check_grey_base(base: str) -> None:
    """Raise ``ValueError`` unless ``base`` names a registered single-channel image dataset."""
    try:
        configured = DATASETS.resolve(base)
    except UnknownNameError as exc:
        raise ValueError(f"base: {exc}") from None
    info = configured.obj(configured.params).info()
    if info.modality != "image" or len(info.shape) != 3 or info.shape[0] != 1:
        raise ValueError(
            f"base {base!r} is not a grey-scale image dataset (its samples are {info.modality} {info.shape}); "
            f"use one of: {', '.join(_grey_bases())}"
        )


@dataclasses.dataclass(frozen=True)
class ColorParams(LongTailParams):
    """Options of a colour-biased dataset (``imbalance=`` is passed on to the base dataset)."""

    conflict: float = dataclasses.field(
        default=0.05, metadata={"help": "share of bias-conflicting training samples per class, in [0, 1]"}
    )
    base: str = dataclasses.field(
        default="mnist", metadata={"help": "grey-scale dataset to colour: mnist, fashion_mnist, kmnist, digits"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_conflict(self.conflict)
        if "[" in self.base:
            raise ValueError(f"base must be a plain dataset name, got {self.base!r}; pass imbalance= on its own")
        check_grey_base(self.base)


@dataclasses.dataclass(frozen=True)
class BackgroundParams(ColorParams):
    """Options of ``bg_fmnist`` (as ``colored_mnist``, with Fashion-MNIST as the default base)."""

    base: str = dataclasses.field(
        default="fashion_mnist",
        metadata={"help": "grey-scale dataset to colour: fashion_mnist, mnist, kmnist, digits"},
    )


class _Colored(Dataset):
    """Shared loader; subclasses set ``attribute`` and implement :meth:`paint`."""

    Params: ClassVar[type] = ColorParams
    test_config: ClassVar[dict[str, Any]] = {"base": "digits", "conflict": 0.05}
    attribute: ClassVar[str] = ""

    def base_dataset(self) -> Dataset:
        """The configured grey-scale base dataset."""
        spec = self.params.base
        if self.params.imbalance != 1.0:
            spec = f"{spec}[imbalance={self.params.imbalance!r}]"
        configured = DATASETS.resolve(spec)
        return configured.obj(configured.params)

    def info(self, mean: tuple[float, ...] = (), std: tuple[float, ...] = ()) -> DatasetInfo:
        base = self.base_dataset().info()
        return DatasetInfo(
            name=format_spec(self.name, self.params),
            modality="image",
            num_classes=base.num_classes,
            shape=(3, *base.shape[1:]),
            class_names=base.class_names,
            mean=mean,
            std=std,
            dsa_strategy=base.dsa_strategy,
        )

    @staticmethod
    def paint(intensity: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
        """RGB images ``[N, 3, H, W]`` from intensities ``[N, 1, H, W]`` and colours ``[N, 3]``."""
        raise NotImplementedError

    def prepare(self, root: Path, *, download: bool = False) -> None:
        """Check (or with ``download`` fetch) the base dataset's files."""
        self.base_dataset().prepare(root, download=download)

    def load(self, root: Path) -> DataBundle:
        """Load the base dataset, colour every split and normalise with the coloured train statistics.

        Raises:
            DataError: the base dataset's files are missing or corrupt.
            ConfigError: the base dataset does not have 10 classes (one colour per class).
        """
        base = self.base_dataset().load(Path(root))
        if base.info.num_classes != len(COLORS):
            raise ConfigError(
                f"dataset {self.name!r}: base {self.params.base!r} has {base.info.num_classes} classes; "
                f"there are {len(COLORS)} colours, one per class"
            )
        conflict = self.params.conflict
        draws = {
            "train": biased_attributes(base.train.y.numpy(), len(COLORS), conflict, derive_seed(BIAS_SEED, "train")),
            "val": biased_attributes(base.val.y.numpy(), len(COLORS), conflict, derive_seed(BIAS_SEED, "val")),
            "test": unbiased_attributes(base.test.y.numpy(), len(COLORS), derive_seed(BIAS_SEED, "test")),
        }
        palette = torch.tensor(COLORS, dtype=torch.float32)
        m = torch.tensor(base.info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(base.info.std, dtype=torch.float32).view(1, -1, 1, 1)

        def rgb(split: Split, bias: np.ndarray) -> torch.Tensor:
            intensity = (split.x * s + m).clamp_(0.0, 1.0)  # undo the base's normalisation
            return self.paint(intensity, palette[torch.from_numpy(bias)])

        images = {name: rgb(getattr(base, name), bias) for name, bias in draws.items()}
        mean, std = channel_stats(images["train"])
        splits = {
            name: with_groups(Split(normalise(images[name], mean, std), getattr(base, name).y), bias)
            for name, bias in draws.items()
        }
        info = self.info(mean, std)
        meta = {
            **base.meta,
            **bias_meta(self.attribute, conflict, splits, colors=[list(c) for c in COLORS]),
            "base": base.info.name,
            "val_bias": "biased like train (same conflict ratio, own draw)",
            "test_bias": "unbiased (each colour equally often within every class)",
            "normalisation": f"(rgb - {list(mean)}) / {list(std)}, statistics of the coloured train split",
        }
        return DataBundle(info, splits["train"], splits["val"], splits["test"], meta=meta)


@register_dataset("colored_mnist")
class ColoredMNIST(_Colored):
    """Colored MNIST (Nam et al. 2020): digits painted in their class's colour; ``conflict`` of train differ."""

    name = "colored_mnist"
    Params = ColorParams
    attribute = "color"

    @staticmethod
    def paint(intensity: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
        return intensity * color[:, :, None, None]


@register_dataset("bg_fmnist")
class BackgroundFashionMNIST(_Colored):
    """Background Fashion-MNIST: garments on a class-coloured background; ``conflict`` of train differ."""

    name = "bg_fmnist"
    Params = BackgroundParams
    attribute = "background"

    @staticmethod
    def paint(intensity: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
        return intensity + (1.0 - intensity) * color[:, :, None, None]
