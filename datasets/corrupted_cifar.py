"""``corrupted_cifar10[conflict=0.05, type=0, severity=4]``: CIFAR-10 with a class-correlated corruption.

Learning from Failure (Nam et al., NeurIPS 2020) pairs each CIFAR-10 class ``c`` with corruption ``c``
of one of two lists (``type``; names and formulas in ``_corruptions``):

* type 0: snow, frost, fog, brightness, contrast, spatter, elastic, jpeg, pixelate, saturate;
* type 1: gaussian_noise, shot_noise, impulse_noise, speckle_noise, gaussian_blur, defocus_blur,
  glass_blur, motion_blur, zoom_blur, original.

``severity`` (1-5) defaults to 4, the severity of LfF's released sets (``CorruptedCIFAR10-Type0-
Skewed0.05-Severity4``). Bias as in ``_biased``: per class, ``round(conflict * n_c)`` training samples
get a uniformly drawn other corruption; validation is biased like train; the test split is unbiased
(every corruption equally often within each class). ``groups["bias"]`` is the corruption index.

Source: the CIFAR-10 files of ``cifar10`` (``ROOT/cifar-10-batches-py/``, same checks and download),
with the same validation carve-out and ``imbalance=``. The corruptions run once, at load time, from
fixed seeds; the corrupted uint8 images are cached in ``ROOT/corrupted_cifar10/<key>.npz`` (written
atomically; skipped on a read-only root) and the cache is keyed on the options, a fingerprint of the
source files and :data:`CACHE_VERSION`. Normalisation: CIFAR-10's statistics (``cifar10``'s), since
most corruptions keep the colour statistics close to the original.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from distillbench.datasets._biased import (
    BIAS_SEED,
    bias_meta,
    biased_attributes,
    check_conflict,
    read_cache,
    unbiased_attributes,
    with_groups,
    write_cache,
)
from distillbench.datasets._corruptions import CORRUPTIONS
from distillbench.datasets._files import normalise_images
from distillbench.datasets._longtail import LongTailParams, split_train_val, torch_labels
from distillbench.datasets.base import Dataset
from distillbench.datasets.cifar import CIFAR10
from distillbench.harness.params import format_spec
from distillbench.harness.plugins import register_dataset
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import DataBundle, DatasetInfo, Split

__all__ = ["CACHE_VERSION", "CorruptedCIFAR10", "CorruptedParams", "corrupt"]

# Bump when a corruption's formula or parameters change, so stale caches are not reused.
CACHE_VERSION = 1
_CHUNK = 2048  # images corrupted at once (bounds memory; the generator carries over between chunks)


@dataclasses.dataclass(frozen=True)
class CorruptedParams(LongTailParams):
    """Options of ``corrupted_cifar10``."""

    conflict: float = dataclasses.field(
        default=0.05, metadata={"help": "share of bias-conflicting training samples per class, in [0, 1]"}
    )
    type: int = dataclasses.field(
        default=0, metadata={"help": "LfF's corruption list: 0 (snow, frost, fog, ...) or 1 (noises and blurs)"}
    )
    severity: int = dataclasses.field(default=4, metadata={"help": "corruption severity, 1 (mild) to 5 (strong)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_conflict(self.conflict)
        if self.type not in CORRUPTIONS:
            raise ValueError(f"type must be 0 or 1 (LfF's two corruption lists), got {self.type}")
        if not 1 <= self.severity <= 5:
            raise ValueError(f"severity must be an integer from 1 to 5, got {self.severity}")


def corrupt(images: np.ndarray, bias: np.ndarray, kind: int, severity: int, seed: int) -> np.ndarray:
    """Apply corruption ``bias[i]`` of list ``kind`` to uint8 image ``i`` (``[N, 3, H, W]``); returns uint8.

    Each corruption index draws from its own generator (``derive_seed(seed, index)``), so the result
    does not depend on how the other classes are processed.
    """
    out = np.empty_like(images)
    for k, (name, fn) in enumerate(CORRUPTIONS[kind]):
        idx = np.flatnonzero(bias == k)
        gen = torch_generator(derive_seed(seed, name))
        for start in range(0, len(idx), _CHUNK):
            part = idx[start : start + _CHUNK]
            x = torch.from_numpy(images[part]).to(torch.float32).div_(255)
            y = fn(x, severity, gen)
            out[part] = y.mul(255).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


@register_dataset("corrupted_cifar10")
class CorruptedCIFAR10(Dataset):
    """Corrupted CIFAR-10 (Nam et al. 2020): one corruption per class; ``conflict`` of train differ."""

    name = "corrupted_cifar10"
    Params = CorruptedParams
    test_config: ClassVar[dict[str, Any]] = {"conflict": 0.05, "type": 1, "severity": 2}

    def _cifar(self) -> CIFAR10:
        return CIFAR10(LongTailParams(imbalance=self.params.imbalance))

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=format_spec(self.name, self.params),
            modality="image",
            num_classes=10,
            shape=(3, 32, 32),
            class_names=CIFAR10.class_names,
            mean=CIFAR10.mean,
            std=CIFAR10.std,
        )

    def corruption_names(self) -> tuple[str, ...]:
        """The corruption of each class (index = class = bias value)."""
        return tuple(name for name, _ in CORRUPTIONS[self.params.type])

    def prepare(self, root: Path, *, download: bool = False) -> None:
        """Check (or with ``download`` fetch) the CIFAR-10 files; corruption happens in ``load``."""
        self._cifar().prepare(root, download=download)

    def cache_path(self, root: Path, fingerprint: str) -> Path:
        """Where the corrupted images of this configuration are cached."""
        p = self.params
        key = f"type{p.type}-severity{p.severity}-conflict{p.conflict!r}-imbalance{p.imbalance!r}"
        return Path(root) / "corrupted_cifar10" / f"{key}-v{CACHE_VERSION}-{fingerprint}.npz"

    def load(self, root: Path) -> DataBundle:
        """Read CIFAR-10, corrupt each split once (or read the cache) and normalise.

        Raises:
            DataError: a CIFAR-10 file is missing or does not parse; the message names it.
        """
        root = Path(root)
        cifar = self._cifar()
        cifar.prepare(root)  # the missing-file error names the CIFAR-10 paths and the fetch command
        x_train, y_train = cifar._read_split(root, cifar.train_files)
        x_test, y_test = cifar._read_split(root, cifar.test_files)
        digest = hashlib.sha1(y_train.tobytes() + y_test.tobytes())
        digest.update(np.ascontiguousarray(x_train[::97]).tobytes() + np.ascontiguousarray(x_test[::97]).tobytes())
        path = self.cache_path(root, digest.hexdigest()[:12])
        split = split_train_val(y_train, 10, self.params.imbalance)

        arrays = read_cache(path)
        if arrays is None:
            p = self.params
            parts = {
                "train": (x_train[split.train], y_train[split.train]),
                "val": (x_train[split.val], y_train[split.val]),
                "test": (x_test, y_test),
            }
            arrays = {}
            for name, (x, y) in parts.items():
                seed = derive_seed(BIAS_SEED, name)
                if name == "test":
                    bias = unbiased_attributes(y, 10, seed)
                else:
                    bias = biased_attributes(y, 10, p.conflict, seed)
                arrays[f"{name}_x"] = corrupt(x, bias, p.type, p.severity, derive_seed(seed, "corrupt"))
                arrays[f"{name}_y"] = y.astype(np.int64)
                arrays[f"{name}_bias"] = bias
            cached = write_cache(path, arrays)
        else:
            cached = True

        info = self.info()
        splits = {
            name: with_groups(
                Split(normalise_images(arrays[f"{name}_x"], info.mean, info.std), torch_labels(arrays[f"{name}_y"])),
                arrays[f"{name}_bias"],
            )
            for name in ("train", "val", "test")
        }
        meta = {
            **split.meta,
            **bias_meta("corruption", self.params.conflict, splits, corruptions=list(self.corruption_names())),
            "severity": self.params.severity,
            "type": self.params.type,
            "source": str(root / cifar.folder),
            "cache": str(path) if cached else None,
            "val_bias": "biased like train (same conflict ratio, own draw)",
            "test_bias": "unbiased (each corruption equally often within every class)",
            "normalisation": f"(x / 255 - {list(info.mean)}) / {list(info.std)}",
        }
        return DataBundle(info, splits["train"], splits["val"], splits["test"], meta=meta)
