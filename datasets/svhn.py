"""``svhn``: Street View House Numbers, cropped digits (Netzer et al. 2011), 32x32 colour, 10 classes.

Layout: ``ROOT/svhn/train_32x32.mat`` and ``ROOT/svhn/test_32x32.mat``, the official "format 2"
MATLAB files (what torchvision's ``SVHN(root=ROOT/svhn)`` reads; the 531,131-image ``extra`` split
is not used, as in the DC repository). The files are parsed here with ``scipy.io.loadmat``
(``X``: uint8 ``[32, 32, 3, N]``, ``y``: ``[N, 1]`` with digit 0 stored as label 10, mapped to 0).
73,257 train / 26,032 test images; the classes are unbalanced (digit 1 is the most frequent).

Download addresses and md5 sums are read at run time from ``torchvision.datasets.SVHN.split_list``;
checksums are verified on download and by ``prepare(download=True)`` only.

Normalisation: the DC repository's statistics (METHODS.md section 3). Splits: the official train
and test splits; 5,000 stratified validation images carved from train (seed 0); ``imbalance=`` as in
``_longtail`` (``n_max`` capped so every class can supply its target, since SVHN is unbalanced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillbench.datasets import _files
from distillbench.datasets._files import check_md5, dataset_lock, fix_hint
from distillbench.datasets._longtail import LongTailParams, build_image_bundle
from distillbench.datasets.base import Dataset
from distillbench.harness.errors import DataError
from distillbench.harness.params import format_spec
from distillbench.harness.plugins import register_dataset
from distillbench.harness.types import DataBundle, DatasetInfo

FOLDER = "svhn"
SPLITS = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


@register_dataset("svhn")
class SVHN(Dataset):
    """SVHN cropped digits: 73,257 train / 26,032 test, 32x32 colour; val 5,000 from train."""

    name = "svhn"
    Params = LongTailParams
    test_config: ClassVar[dict[str, Any]] = {"imbalance": 10.0}

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=format_spec(self.name, self.params),
            modality="image",
            num_classes=10,
            shape=(3, 32, 32),
            class_names=tuple(str(i) for i in range(10)),
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            # House numbers are digits, which are not mirror-symmetric (DSA's advice for digit data).
            dsa_strategy="color_crop_cutout_scale_rotate",
        )

    def data_paths(self, root: Path) -> list[Path]:
        """The files ``load`` reads."""
        return [Path(root) / FOLDER / n for n in SPLITS.values()]

    def _remote(self) -> dict[str, tuple[str, str]]:
        """``{file name: (url, md5)}`` from ``torchvision.datasets.SVHN.split_list``."""
        import torchvision.datasets

        table = torchvision.datasets.SVHN.split_list
        return {table[split][1]: (table[split][0], table[split][2]) for split in SPLITS}

    def _missing_error(self, root: Path, missing: list[Path]) -> DataError:
        remote = self._remote()
        urls = ", ".join(remote[p.name][0] for p in missing)
        return DataError(
            f"dataset {self.name!r}: missing {', '.join(map(str, missing))}; download {urls} into "
            f"{Path(root) / FOLDER}, or {fix_hint(self.name, root)}"
        )

    def prepare(self, root: Path, *, download: bool = False) -> None:
        """Check the ``.mat`` files; with ``download``, fetch missing ones and verify md5 sums.

        Raises:
            DataError: a file is missing (and ``download`` is off), corrupt, or cannot be downloaded.
        """
        root = Path(root)
        missing = [p for p in self.data_paths(root) if not p.exists()]
        if not download:
            if missing:
                raise self._missing_error(root, missing)
            return
        remote = self._remote()
        for path in self.data_paths(root):
            if path.exists():
                check_md5(path, remote[path.name][1], dataset=self.name)
        if not missing:
            return
        with dataset_lock(root, self.name):
            for path in missing:
                if path.exists():  # fetched by another process while this one waited for the lock
                    check_md5(path, remote[path.name][1], dataset=self.name)
                    continue
                url, md5 = remote[path.name]
                _files.download([url], path, md5=md5, dataset=self.name)

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        from scipy.io import loadmat  # scipy comes with scikit-learn
        from scipy.io.matlab import MatReadError

        try:
            mat = loadmat(path, variable_names=["X", "y"])
            x = np.asarray(mat["X"])
            y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
        except (OSError, MatReadError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
            raise DataError(
                f"dataset {self.name!r}: cannot read {path} as an SVHN .mat file ({type(exc).__name__}: {exc}); "
                "replace it with the official file"
            ) from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y) or x.dtype != np.uint8:
            raise DataError(
                f"dataset {self.name!r}: {path} holds X {x.dtype} {x.shape} and {len(y)} labels, expected uint8 "
                "[32, 32, 3, N] and N; replace it with the official file"
            )
        if len(y) and (y.min() < 0 or y.max() > 10):
            raise DataError(f"dataset {self.name!r}: {path} has labels outside 0-10")
        y[y == 10] = 0  # the format stores digit 0 as class 10
        return np.transpose(x, (3, 2, 0, 1)), y

    def load(self, root: Path) -> DataBundle:
        """Read the ``.mat`` files into normalised train / validation / test tensors.

        Raises:
            DataError: a file is missing or does not parse; the message names it.
        """
        root = Path(root)
        missing = [p for p in self.data_paths(root) if not p.exists()]
        if missing:
            raise self._missing_error(root, missing)
        train_path, test_path = self.data_paths(root)
        return build_image_bundle(
            self.info(), self._read(train_path), self._read(test_path), self.params.imbalance, source=str(root / FOLDER)
        )
