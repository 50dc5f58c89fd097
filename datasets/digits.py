"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download).

The images are the UCI "optical recognition of handwritten digits" test set shipped inside
scikit-learn, with pixel values 0-16. They are scaled to [0, 1] and normalised with the mean and
std of the training split. The split is fixed and stratified (seed 0): 1,257 train, 180 validation,
360 test images; ``imbalance=`` subsamples the training split to a long-tailed profile.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from distillbench.datasets._longtail import LongTailParams, long_tail_subsample
from distillbench.datasets.base import Dataset
from distillbench.harness.errors import ConfigError
from distillbench.harness.params import format_spec
from distillbench.harness.plugins import register_dataset
from distillbench.harness.types import DataBundle, DatasetInfo, Split

__all__ = ["Digits", "DigitsParams"]

SPLIT_SEED = 0
N_TEST = 360
N_VAL = 180


# digits takes exactly the options every classification dataset takes (``imbalance=``).
DigitsParams = LongTailParams


@lru_cache(maxsize=4)
def _load_cached(imbalance: float) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    x = raw.images.astype(np.float32) / 16.0
    y = raw.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=N_TEST, stratify=y, random_state=SPLIT_SEED)
    train, val = train_test_split(rest, test_size=N_VAL, stratify=y[rest], random_state=SPLIT_SEED)
    train = np.sort(train)
    # The exponential profile and its seeded draw are shared with every classification dataset.
    tail = long_tail_subsample(y[train], 10, imbalance, SPLIT_SEED)
    train = train[tail.indices]
    mean = float(x[train].mean())
    std = float(x[train].std())

    def split(ids: np.ndarray) -> Split:
        xs = torch.from_numpy((x[ids] - mean) / std).unsqueeze(1).contiguous()
        return Split(xs, torch.from_numpy(y[ids]).contiguous())

    info = _info(DigitsParams(imbalance=imbalance), (mean,), (std,))
    meta = {
        "split_seed": SPLIT_SEED,
        "imbalance": imbalance,
        "long_tail_n_max": tail.n_max if imbalance != 1.0 else None,
        "train_class_counts": tail.counts,
    }
    return DataBundle(info, split(train), split(val), split(test), meta=meta)


def _info(params: LongTailParams, mean: tuple[float, ...] = (), std: tuple[float, ...] = ()) -> DatasetInfo:
    return DatasetInfo(
        name=format_spec("digits", params),
        modality="image",
        num_classes=10,
        shape=(1, 8, 8),
        class_names=tuple(str(i) for i in range(10)),
        mean=mean,
        std=std,
        # Digits are not mirror-symmetric: DSA's authors drop flips for MNIST-like data.
        dsa_strategy="color_crop_cutout_scale_rotate",
    )


@register_dataset("digits")
class Digits(Dataset):
    """scikit-learn's 8x8 handwritten digits; embedded, no download. Train 1,257 / val 180 / test 360."""

    name = "digits"
    Params = DigitsParams

    def info(self) -> DatasetInfo:
        return _info(self.params)

    def load(self, root: Path) -> DataBundle:
        try:
            bundle = _load_cached(float(self.params.imbalance))
        except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
            raise ConfigError(f"dataset 'digits' needs scikit-learn: {exc}") from None
        # Callers get their own Split objects so an in-place edit cannot leak into the cache. The cache
        # is keyed by imbalance alone, so the name (which carries every option, e.g. zca) is set here.
        return dataclasses.replace(
            bundle,
            info=dataclasses.replace(bundle.info, name=self.info().name),
            train=dataclasses.replace(bundle.train),
            val=dataclasses.replace(bundle.val),
            test=dataclasses.replace(bundle.test),
        )
