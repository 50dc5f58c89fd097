"""The split policy shared by classification datasets: validation carve-out and long-tailed train.

Every classification dataset accepts ``imbalance=`` (DESIGN.md, "Pipeline axes"). The long-tailed
training split follows the exponential profile of Cui et al. (2019) and Cao et al. (LDAM, 2019)::

    n_c = floor(n_max * r ** (c / (C - 1))),   r = 1 / imbalance,   c = 0 .. C-1

so class 0 keeps ``n_max`` samples and class C-1 about ``n_max / imbalance``. Which samples a class
keeps is drawn with a fixed seed, so a configured dataset is the same set of images in every trial,
process and machine. Validation and test splits stay balanced (as in the long-tail literature, where
the test set is the official balanced one).

``n_max`` is the largest class count, capped so that every class can supply its target: class c
needs ``n_max * r ** (c / (C - 1)) <= count_c``. On balanced data the cap is inactive and ``n_max`` is
the per-class count; on data that is already unbalanced (SVHN, a re-split subset) the cap keeps the
profile exact instead of silently truncating tail classes, which would change the imbalance ratio.
Each non-empty class keeps at least one sample.

For the official datasets the validation split (below) is carved from the official train split
*before* the long tail is applied, so CIFAR-10-LT here has ``n_max = 4,500``, not the 5,000 of
Cao et al.: the price of never selecting models on the test set.

Validation: a stratified, seeded hold-out of ``round(0.1 * n_train)`` samples, capped at 5,000
(:data:`VAL_FRACTION`, :data:`VAL_CAP`); e.g. 5,000 for MNIST, CIFAR-10/100 and SVHN, 800 for the
8,000-image ``mnist-10k`` copy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from distillbench.datasets._zca import zca_field
from distillbench.harness.types import DataBundle, DatasetInfo, Split

SPLIT_SEED = 0
VAL_FRACTION = 0.1
VAL_CAP = 5000


@dataclasses.dataclass(frozen=True)
class LongTailParams:
    """Options of an image classification dataset (``zca`` is applied by ``datasets/base.py``'s hook)."""

    imbalance: float = dataclasses.field(
        default=1.0, metadata={"help": "n_max/n_min of an exponential long-tailed train split; 1 = as is"}
    )
    zca: bool = zca_field()

    def __post_init__(self) -> None:
        if not self.imbalance >= 1.0 or math.isinf(self.imbalance):
            raise ValueError(f"imbalance must be a finite number >= 1 (n_max / n_min), got {self.imbalance}")


def _exponents(num_classes: int) -> list[float]:
    return [c / (num_classes - 1) for c in range(num_classes)]


def long_tail_n_max(counts: Sequence[int], imbalance: float) -> int:
    """The head-class size: the largest class count, capped so every class can supply its target."""
    if imbalance == 1.0 or len(counts) < 2:
        return max(counts, default=0)
    r = 1.0 / imbalance
    # Empty classes cannot supply anything whatever n_max is; they do not cap the others.
    caps = [math.floor(have / r**e) for have, e in zip(counts, _exponents(len(counts)), strict=True) if have > 0]
    return min([max(counts), *caps])


def long_tail_counts(counts: Sequence[int], imbalance: float) -> list[int]:
    """Per-class targets ``floor(n_max * r^(c/(C-1)))`` with ``r = 1/imbalance``; see the module docstring.

    Args:
        counts: samples available per class, in class order (class 0 becomes the head).
        imbalance: ``n_max / n_min``; 1 returns ``counts`` unchanged.

    Returns:
        The number of samples to keep per class; never more than a class has, at least 1 for a
        non-empty class.
    """
    if imbalance == 1.0 or len(counts) < 2:
        return list(counts)
    n_max = long_tail_n_max(counts, imbalance)
    r = 1.0 / imbalance
    targets = [int(n_max * r**e) for e in _exponents(len(counts))]
    # min() guards against a floating-point floor landing one above a class's count.
    return [min(max(1, t), have) for t, have in zip(targets, counts, strict=True)]


@dataclasses.dataclass(frozen=True)
class LongTail:
    """The result of :func:`long_tail_subsample`.

    Attributes:
        indices: sorted positions (into the labels given) of the samples kept.
        counts: samples kept per class.
        n_max: the head-class size of the profile.
    """

    indices: np.ndarray
    counts: list[int]
    n_max: int


def long_tail_subsample(labels: np.ndarray, num_classes: int, imbalance: float, seed: int = SPLIT_SEED) -> LongTail:
    """Keep a seeded random subset of each class following the exponential long-tail profile.

    Args:
        labels: integer labels of the pool, shape ``[N]``.
        num_classes: C.
        imbalance: ``n_max / n_min`` (>= 1; 1 keeps everything).
        seed: seed of the per-class draws.

    Returns:
        The positions kept, per-class counts and ``n_max``.
    """
    counts = np.bincount(labels, minlength=num_classes).tolist()
    if imbalance == 1.0:
        return LongTail(np.arange(len(labels)), counts, max(counts, default=0))
    targets = long_tail_counts(counts, imbalance)
    rng = np.random.default_rng(seed)
    keep = [
        np.sort(rng.choice(np.flatnonzero(labels == c), size=target, replace=False)) for c, target in enumerate(targets)
    ]
    return LongTail(np.sort(np.concatenate(keep)), targets, long_tail_n_max(counts, imbalance))


def stratified_holdout(labels: np.ndarray, size: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (kept, held out) with ``size`` held out in proportion to class frequency.

    Per-class quotas are ``size * n_c / N`` rounded by largest remainder (ties to the lower class),
    so they add up to exactly ``size``; members of each class are drawn with a seeded permutation.

    Returns:
        Sorted positions of the kept and of the held-out samples.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / max(len(labels), 1)
    quotas = np.floor(exact).astype(np.int64)
    short = size - int(quotas.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[:short]:
        quotas[i] += 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quotas, strict=True)]
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask), held_out


def validation_size(n_train: int) -> int:
    """``round(VAL_FRACTION * n_train)`` capped at ``VAL_CAP``."""
    return min(VAL_CAP, round(VAL_FRACTION * n_train))


@dataclasses.dataclass(frozen=True)
class TrainVal:
    """Positions into the official train split: the (possibly long-tailed) train part and validation.

    Attributes:
        train: sorted positions of the training samples.
        val: sorted positions of the validation samples.
        meta: facts to record in ``DataBundle.meta`` (seed, sizes, imbalance, ``n_max``, counts).
    """

    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]


def split_train_val(labels: np.ndarray, num_classes: int, imbalance: float, seed: int = SPLIT_SEED) -> TrainVal:
    """Carve the validation split from the official train split, then apply the long tail to the rest."""
    rest, val = stratified_holdout(labels, validation_size(len(labels)), seed)
    tail = long_tail_subsample(labels[rest], num_classes, imbalance, seed)
    train = rest[tail.indices]
    meta = {
        "split_seed": seed,
        "val_policy": f"stratified {VAL_FRACTION:.0%} of the official train split, capped at {VAL_CAP}",
        "val_size": len(val),
        "imbalance": float(imbalance),
        "long_tail_n_max": tail.n_max if imbalance != 1.0 else None,
        "train_class_counts": tail.counts,
    }
    return TrainVal(train, val, meta)


def build_image_bundle(
    info: DatasetInfo,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    imbalance: float,
    *,
    source: str,
) -> DataBundle:
    """Apply the split policy and normalisation to uint8 images of the official train and test splits.

    Args:
        info: the dataset's facts (``mean`` and ``std`` are used to normalise).
        train: official train images ``[N, C, H, W]`` (uint8) and labels ``[N]``.
        test: official test images and labels.
        imbalance: long-tail ratio of the training split.
        source: where the files were read from, recorded in ``meta``.
    """
    from distillbench.datasets._files import normalise_images

    (x_train, y_train), (x_test, y_test) = train, test
    y_train = y_train.astype(np.int64)
    split = split_train_val(y_train, info.num_classes, imbalance)

    def make(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(normalise_images(x, info.mean, info.std), torch_labels(y))

    return DataBundle(
        info,
        make(x_train[split.train], y_train[split.train]),
        make(x_train[split.val], y_train[split.val]),
        make(x_test, y_test),
        meta={**split.meta, "source": source, "normalisation": f"(x / 255 - {list(info.mean)}) / {list(info.std)}"},
    )


def torch_labels(y: np.ndarray) -> torch.Tensor:
    """int64 label tensor (a copy, so the arrays read from files can be freed)."""
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64).copy())
