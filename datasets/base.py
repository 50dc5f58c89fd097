"""The contract every dataset implements.

A dataset family is one file in ``datasets/`` holding one class decorated with
``@register_dataset(name)``. ``prepare`` (download or check files; idempotent) is separate from
``load`` (read prepared files into tensors). ``info`` returns static facts without touching disk.

Class attributes:
    Params: frozen dataclass of the dataset's options (e.g. ``imbalance``).
    test_config: options that make the dataset small and fast for conformance tests.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillbench.harness.errors import DataError
from distillbench.harness.params import NoParams
from distillbench.harness.types import DataBundle, DatasetInfo


class Dataset(abc.ABC):
    """Base class of datasets; see the module docstring."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    test_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abc.abstractmethod
    def info(self) -> DatasetInfo:
        """Static facts (classes, shape, normalisation) without loading any data."""

    def prepare(self, root: Path, *, download: bool = False) -> None:
        """Make sure the files are under ``root`` (download if allowed); raise ``DataError`` if not."""
        return None

    @abc.abstractmethod
    def load(self, root: Path) -> DataBundle:
        """Read the prepared data into train / validation / test tensors."""


class OfficialSplitImages(Dataset):
    """An image dataset stored as files holding its official train and test splits (MNIST, CIFAR).

    Subclasses say which files are missing, how to ask for them, and how to read each split as uint8
    images and labels; ``load`` and the check of ``prepare`` are then shared. The dataset's params
    carry ``imbalance`` (the long-tail option every such dataset offers).
    """

    @abc.abstractmethod
    def _missing(self, root: Path) -> list[Path]:
        """The files ``load`` needs that are not under ``root``."""

    @abc.abstractmethod
    def _missing_error(self, root: Path, missing: list[Path]) -> DataError:
        """The error naming ``missing`` and how to get them."""

    @abc.abstractmethod
    def _read_splits(self, root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """``((x_train, y_train), (x_test, y_test))``, uint8 images ``[N, C, H, W]`` and int64 labels."""

    @abc.abstractmethod
    def _source(self, root: Path) -> Path:
        """The folder the files are read from (recorded in the bundle)."""

    def check_files(self, root: Path) -> None:
        """Raise ``DataError`` naming every missing file and how to get it."""
        missing = self._missing(Path(root))
        if missing:
            raise self._missing_error(Path(root), missing)

    def load(self, root: Path) -> DataBundle:
        """Read the official splits into normalised train / validation / test tensors.

        Raises:
            DataError: a file is missing or does not parse; the message names it.
        """
        from distillbench.datasets._longtail import build_image_bundle

        root = Path(root)
        self.check_files(root)
        train, test = self._read_splits(root)
        return build_image_bundle(self.info(), train, test, self.params.imbalance, source=str(self._source(root)))
