"""``mnist``, ``fashion_mnist``, ``kmnist``: 28x28 grey-scale, 10 classes, 60,000 train / 10,000 test.

Layout: torchvision's, ``ROOT/<MNIST|FashionMNIST|KMNIST>/raw/`` holding ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each either
extracted or as the ``.gz`` of the official distribution (the extracted file is preferred, it reads
faster). The IDX files are parsed here (:func:`~distillbench.datasets._files.read_idx`), not through
torchvision's classes: that keeps loading free of torchvision's import and lets a copy in the right
layout but with other contents (a re-split subset) load, with a clear error if a file does not parse.

Download addresses and md5 sums are read at run time from torchvision's own classes
(``torchvision.datasets.MNIST.mirrors`` and ``.resources``, likewise ``FashionMNIST`` and ``KMNIST``),
so they follow torchvision's mirror updates; checksums are verified on download and by
``prepare(download=True)`` only (see ``_files``).

Normalisation (``(x / 255 - mean) / std``): MNIST 0.1307 / 0.3081 and FashionMNIST 0.2861 / 0.3530
are the DC repository's figures (METHODS.md section 3). The DC repository has no KMNIST; we use
0.1918 / 0.3483, the mean and standard deviation of the 60,000 KMNIST training pixels scaled to
[0, 1] as commonly quoted for KMNIST. They could not be recomputed in this development environment
(no copy of KMNIST, no network); ``distillbench data fetch kmnist`` on a connected machine and
``x.mean(), x.std()`` over ``train-images-idx3-ubyte / 255`` checks them.

Splits: the official train and test splits; validation and ``imbalance=`` as in ``_longtail``
(5,000 stratified validation images from the official train split, seed 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillbench.datasets import _files
from distillbench.datasets._files import check_md5, dataset_lock, fix_hint, gunzip, read_idx
from distillbench.datasets._longtail import LongTailParams
from distillbench.datasets.base import OfficialSplitImages
from distillbench.harness.errors import DataError
from distillbench.harness.params import format_spec
from distillbench.harness.plugins import register_dataset
from distillbench.harness.types import DatasetInfo

# The four IDX files of every MNIST-format distribution, by role (names fixed by the format).
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class _MNISTFormat(OfficialSplitImages):
    """Shared loader of the MNIST-format datasets; subclasses set the class attributes below.

    Class attributes:
        folder: torchvision's folder name (also the name of its dataset class).
        mean, std: normalisation statistics.
        class_names: one name per class.
        dsa_strategy: DSA augmentation families suited to the images.
    """

    Params = LongTailParams
    # A long tail on 10 classes keeps conformance tests on tiny fake trees small and exercises the option.
    test_config: ClassVar[dict[str, Any]] = {"imbalance": 10.0}
    folder: ClassVar[str] = ""
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    class_names: ClassVar[tuple[str, ...]] = ()
    # Digits and characters are not mirror-symmetric: DSA's authors drop flips for MNIST-like data.
    dsa_strategy: ClassVar[str] = "color_crop_cutout_scale_rotate"

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=format_spec(self.name, self.params),
            modality="image",
            num_classes=10,
            shape=(1, 28, 28),
            class_names=self.class_names,
            mean=self.mean,
            std=self.std,
            dsa_strategy=self.dsa_strategy,
        )

    def raw_folder(self, root: Path) -> Path:
        """Where the IDX files live: ``root/<folder>/raw`` (torchvision's layout)."""
        return Path(root) / self.folder / "raw"

    def data_paths(self, root: Path) -> list[Path]:
        """The files ``load`` reads (the extracted IDX file where present, else its ``.gz``)."""
        raw = self.raw_folder(root)
        return [raw / n if (raw / n).exists() else raw / f"{n}.gz" for n in FILES.values()]

    def _remote(self) -> tuple[list[str], dict[str, str]]:
        """Mirrors and ``{gz file name: md5}`` from torchvision's class of the same name."""
        import torchvision.datasets

        tv = getattr(torchvision.datasets, self.folder)
        return list(tv.mirrors), dict(tv.resources)

    def _missing(self, root: Path) -> list[Path]:
        raw = self.raw_folder(root)
        return [raw / n for n in FILES.values() if not (raw / n).exists() and not (raw / f"{n}.gz").exists()]

    def _missing_error(self, root: Path, missing: list[Path]) -> DataError:
        mirrors, _ = self._remote()
        names = ", ".join(f"{p}(.gz)" for p in missing)
        return DataError(
            f"dataset {self.name!r}: missing {names} (torchvision's layout); download the .gz files from "
            f"{mirrors[0]} into {self.raw_folder(root)}, or {fix_hint(self.name, root)}"
        )

    def prepare(self, root: Path, *, download: bool = False) -> None:
        """Check the four IDX files; with ``download``, fetch missing ones and verify md5 sums.

        With ``download``, each ``.gz`` present must match torchvision's md5; a file present only
        extracted is accepted as it is (the official sums are of the ``.gz`` files, so it cannot be
        checked without downloading it again).

        Raises:
            DataError: a file is missing (and ``download`` is off), corrupt, or cannot be downloaded.
        """
        root = Path(root)
        if not download:
            self.check_files(root)
            return
        mirrors, sums = self._remote()
        raw = self.raw_folder(root)

        def verify_present() -> list[str]:
            needed = []
            for n in FILES.values():
                gz = raw / f"{n}.gz"
                if gz.exists():
                    check_md5(gz, sums[gz.name], dataset=self.name)
                elif not (raw / n).exists():
                    needed.append(n)
            return needed

        if not verify_present():
            self._extract_missing(raw)
            return
        with dataset_lock(root, self.name):
            # Another process may have fetched the files while this one waited for the lock.
            for n in verify_present():
                gz = raw / f"{n}.gz"
                _files.download([m + gz.name for m in mirrors], gz, md5=sums[gz.name], dataset=self.name)
            self._extract_missing(raw)

    def _extract_missing(self, raw: Path) -> None:
        # Extraction only speeds up loading (the .gz files load as they are): skip it in a read-only copy.
        if not os.access(raw, os.W_OK):
            return
        for n in FILES.values():
            if not (raw / n).exists() and (raw / f"{n}.gz").exists():
                gunzip(raw / f"{n}.gz", raw / n, dataset=self.name)

    def _read_split(self, root: Path, images_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
        paths = dict(zip(FILES, self.data_paths(root), strict=True))
        images = read_idx(paths[images_key], dataset=self.name)
        labels = read_idx(paths[labels_key], dataset=self.name)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DataError(
                f"dataset {self.name!r}: {paths[images_key]} holds {images.dtype} {images.shape}, expected uint8 "
                "images [N, 28, 28]; replace it with the original file"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"dataset {self.name!r}: {paths[labels_key]} holds {labels.shape[0] if labels.ndim else 0} labels "
                f"for {len(images)} images in {paths[images_key]}; the two files do not belong together"
            )
        if len(labels) and int(labels.max()) >= 10:
            raise DataError(f"dataset {self.name!r}: {paths[labels_key]} has label {int(labels.max())}; expected 0-9")
        return images[:, None, :, :], labels.astype(np.int64)

    def _read_splits(self, root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return (
            self._read_split(root, "train_images", "train_labels"),
            self._read_split(root, "test_images", "test_labels"),
        )

    def _source(self, root: Path) -> Path:
        return self.raw_folder(root)


@register_dataset("mnist")
class MNIST(_MNISTFormat):
    """MNIST handwritten digits (LeCun et al.): 60,000 train / 10,000 test, 28x28 grey; val 5,000 from train."""

    name = "mnist"
    folder = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)
    class_names = tuple(str(i) for i in range(10))


@register_dataset("fashion_mnist")
class FashionMNIST(_MNISTFormat):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train / 10,000 test, 28x28 grey clothing; val 5,000 from train."""

    name = "fashion_mnist"
    folder = "FashionMNIST"
    mean = (0.2861,)
    std = (0.3530,)
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    # Clothing is close to mirror-symmetric, so the DSA default with flips applies.
    dsa_strategy = "color_crop_cutout_flip_scale_rotate"


@register_dataset("kmnist")
class KMNIST(_MNISTFormat):
    """Kuzushiji-MNIST (Clanuwat et al. 2018): 60,000 train / 10,000 test, 28x28 grey cursive Japanese."""

    name = "kmnist"
    folder = "KMNIST"
    # Not in the DC repository; see the module docstring for the source and how to check them.
    mean = (0.1918,)
    std = (0.3483,)
    class_names = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
