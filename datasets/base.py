"""The contract every dataset implements.

A dataset family is one file in ``datasets/`` holding one class decorated with
``@register_dataset(name)``. ``prepare`` (download or check files; idempotent) is separate from
``load`` (read prepared files into tensors). ``info`` returns static facts without touching disk.

Class attributes:
    Params: frozen dataclass of the dataset's options (e.g. ``imbalance``).
    test_config: options that make the dataset small and fast for conformance tests.

Options shared by every image dataset are implemented here once, not per dataset. ``zca=true``
(a field of the dataset's ``Params``, declared with :func:`~distillbench.datasets._zca.zca_field`)
works through a hook: :class:`Dataset` wraps the ``info`` and ``load`` that each subclass defines,
so ``info()`` reports ``zca=True`` (the display name, built by ``format_spec`` from the params,
already reads ``digits[zca=true]``) and ``load()`` whitens the bundle the subclass returns, with a
fit on its train split (see ``datasets/_zca.py``). A subclass therefore keeps returning ordinary
normalised tensors and needs no ZCA code; a dataset whose ``Params`` have no ``zca`` field is
untouched. A bundle whose ``meta`` already records ``"zca"`` is not whitened twice.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillbench.harness.errors import ConfigError, DataError
from distillbench.harness.params import NoParams
from distillbench.harness.types import DataBundle, DatasetInfo


def _wants_zca(dataset: Dataset) -> bool:
    return bool(getattr(dataset.params, "zca", False))


def _info_with_zca(info: Callable[..., DatasetInfo]) -> Callable[..., DatasetInfo]:
    """Wrap a subclass's ``info`` so that ``zca=true`` is reported (and refused on non-image data)."""

    @functools.wraps(info)
    def wrapper(self: Dataset, *args: Any, **kwargs: Any) -> DatasetInfo:
        facts = info(self, *args, **kwargs)
        if not _wants_zca(self):
            return facts
        if facts.modality != "image":
            # Validation calls info(), so this stops a grid before anything runs.
            raise ConfigError(f"zca=true whitens images; dataset {self.name!r} is {facts.modality}: remove zca")
        return dataclasses.replace(facts, zca=True)

    return wrapper


def _load_with_zca(load: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
    """Wrap a subclass's ``load`` so that ``zca=true`` whitens the bundle it returns."""

    @functools.wraps(load)
    def wrapper(self: Dataset, *args: Any, **kwargs: Any) -> DataBundle:
        bundle = load(self, *args, **kwargs)
        if not _wants_zca(self) or "zca" in bundle.meta:
            return bundle
        from distillbench.datasets._zca import whiten_bundle

        return whiten_bundle(bundle)

    return wrapper


class Dataset(abc.ABC):
    """Base class of datasets; see the module docstring."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    test_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only the methods a class defines itself are wrapped: inherited ones are wrapped already.
        own = cls.__dict__
        if "info" in own:
            cls.info = _info_with_zca(own["info"])  # type: ignore[method-assign]
        if "load" in own:
            cls.load = _load_with_zca(own["load"])  # type: ignore[method-assign]

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
