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
