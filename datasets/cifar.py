"""``cifar10`` and ``cifar100``: 32x32 colour, 50,000 train / 10,000 test (Krizhevsky 2009).

Layout: the "python version" archives as torchvision extracts them, ``ROOT/cifar-10-batches-py/``
(``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``) and
``ROOT/cifar-100-python/`` (``train``, ``test``, ``meta``; the 100 fine labels are used). The
batches are pickled dicts, parsed here (``data``: uint8 ``[N, 3072]`` in channel-major order, and
``labels`` / ``fine_labels``), not through torchvision's classes, so loading does not import
torchvision. Pickle can run code, so the batches are read by a restricted unpickler
(:class:`_BatchUnpickler`) that builds only what the official files hold (dicts, lists, strings,
numbers and numpy arrays) and refuses any other pickled object with a ``DataError`` naming the file.

Download address (the archive) and md5 sums (archive and each extracted batch) are read at run time
from ``torchvision.datasets.CIFAR10`` / ``CIFAR100`` (``url``, ``tgz_md5``, ``train_list``,
``test_list``, ``meta``). Checksums are verified on download and by
``prepare(download=True)``; loading does not hash the files, hence the restricted unpickler.

Normalisation: the DC repository's statistics (METHODS.md section 3). Splits: the official train
and test splits; 5,000 stratified validation images carved from train (seed 0); ``imbalance=`` as
in ``_longtail`` (CIFAR-10-LT with ``n_max`` 4,500 because validation is carved first).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillbench.datasets import _files
from distillbench.datasets._files import check_md5, dataset_lock, extract_tar, fix_hint
from distillbench.datasets._longtail import LongTailParams
from distillbench.datasets.base import OfficialSplitImages
from distillbench.harness.errors import DataError
from distillbench.harness.params import format_spec
from distillbench.harness.plugins import register_dataset
from distillbench.harness.types import DatasetInfo

# The order of the label names in each archive's meta file (batches.meta: label_names; meta: fine_label_names).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` limited to ``'latin1'``, the only call pickle protocols <= 2 write (for ``bytes``)."""
    # Any other codec name is refused without a lookup, which could import an ``encodings`` module.
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only 'latin1' is admitted)")
    return codecs.encode(text, "latin1")


def _numpy_core(module: str) -> Any:
    """``numpy._core.<module>`` (numpy 2), or ``numpy.core.<module>`` on numpy 1.x."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a CIFAR batch may name, mapped to the objects they resolve to.

    The official batches (Python 2, protocol 2) name ``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray`` and ``numpy.dtype``. Batches re-pickled by Python 3 also use
    ``numpy._core.numeric._frombuffer`` (protocol 5), ``_codecs.encode`` (``bytes`` under protocol 2) and
    ``builtins.bytearray``. All of these only build data; nothing here can import a module or run a command.
    """
    reconstruct = _numpy_core("multiarray")._reconstruct
    frombuffer = _numpy_core("numeric")._frombuffer
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global that :class:`_BatchUnpickler` does not admit; ``args[0]`` is its dotted name."""


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed_globals`.

    Every way a pickle can reach a callable (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ``, extension
    codes) goes through ``find_class``, so refusing there stops a planted file before anything runs.
    Persistent ids are refused by the base class, which has no ``persistent_load``.
    """

    def __init__(self, fh: Any) -> None:
        super().__init__(fh, encoding="latin1")  # the official batches are Python 2 pickles
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


class _CIFAR(OfficialSplitImages):
    """Shared loader of the CIFAR archives; subclasses set the class attributes below.

    Class attributes:
        folder: the folder inside the archive.
        torchvision_class: name of torchvision's class holding the address and md5 sums.
        train_files, test_files: batch files of each official split.
        label_key: the key of the labels in each batch.
        mean, std, class_names: facts of the dataset.
    """

    Params = LongTailParams
    test_config: ClassVar[dict[str, Any]] = {"imbalance": 10.0}
    folder: ClassVar[str] = ""
    torchvision_class: ClassVar[str] = ""
    train_files: ClassVar[tuple[str, ...]] = ()
    test_files: ClassVar[tuple[str, ...]] = ()
    label_key: ClassVar[str] = ""
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    class_names: ClassVar[tuple[str, ...]] = ()

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=format_spec(self.name, self.params),
            modality="image",
            num_classes=len(self.class_names),
            shape=(3, 32, 32),
            class_names=self.class_names,
            mean=self.mean,
            std=self.std,
        )

    def data_paths(self, root: Path) -> list[Path]:
        """The batch files ``load`` reads."""
        return [Path(root) / self.folder / n for n in (*self.train_files, *self.test_files)]

    def _remote(self) -> tuple[str, str, str, dict[str, str]]:
        """(archive url, archive file name, archive md5, {extracted file: md5}) from torchvision."""
        import torchvision.datasets

        tv = getattr(torchvision.datasets, self.torchvision_class)
        sums = {name: md5 for name, md5 in (*tv.train_list, *tv.test_list)}
        sums[tv.meta["filename"]] = tv.meta["md5"]
        return tv.url, tv.filename, tv.tgz_md5, sums

    def _missing(self, root: Path) -> list[Path]:
        return [p for p in self.data_paths(root) if not p.exists()]

    def _missing_error(self, root: Path, missing: list[Path]) -> DataError:
        url, *_ = self._remote()
        return DataError(
            f"dataset {self.name!r}: missing {', '.join(map(str, missing))}; download {url} and extract it into "
            f"{root}, or {fix_hint(self.name, root)}"
        )

    def prepare(self, root: Path, *, download: bool = False) -> None:
        """Check the batch files; with ``download``, fetch and extract missing ones and verify md5 sums.

        Raises:
            DataError: a file is missing (and ``download`` is off), corrupt, or cannot be downloaded.
        """
        root = Path(root)
        if not download:
            self.check_files(root)
            return
        url, archive_name, archive_md5, sums = self._remote()
        base = root / self.folder

        def verify_present() -> list[str]:
            needed = []
            for name, md5 in sums.items():
                if (base / name).exists():
                    check_md5(base / name, md5, dataset=self.name)
                else:
                    needed.append(name)
            return needed

        if not verify_present():
            return
        with dataset_lock(root, self.name):
            if not verify_present():  # another process fetched the files while this one waited
                return
            archive = root / archive_name
            if archive.exists():
                check_md5(archive, archive_md5, dataset=self.name)
            else:
                _files.download([url], archive, md5=archive_md5, dataset=self.name)
            extract_tar(archive, root, self.folder, dataset=self.name)
            still = verify_present()
            if still:
                raise DataError(
                    f"dataset {self.name!r}: {archive} does not contain {', '.join(still)}; delete it and fetch again"
                )

    def _read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(path, "rb") as fh:
                batch = _BatchUnpickler(fh).load()
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[self.label_key], dtype=np.int64)
        except _RefusedGlobal as exc:
            raise DataError(
                f"dataset {self.name!r}: {path} contains a pickled object of type {exc.args[0]}; not a CIFAR batch: "
                f"delete it and run `distillbench data fetch {self.name}`"
            ) from None
        except (
            OSError,
            EOFError,
            pickle.UnpicklingError,
            AttributeError,
            KeyError,
            TypeError,
            ValueError,
            IndexError,
        ) as exc:
            raise DataError(
                f"dataset {self.name!r}: cannot read {path} as a CIFAR batch ({type(exc).__name__}: {exc}); "
                "replace it with the file from the official archive"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise DataError(
                f"dataset {self.name!r}: {path} holds data {data.shape} and {len(labels)} labels, expected "
                "[N, 3072] and N; replace it with the file from the official archive"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(f"dataset {self.name!r}: {path} has labels outside 0-{len(self.class_names) - 1}")
        # Rows are channel-major (1024 red, 1024 green, 1024 blue values), i.e. already [3, 32, 32].
        return data.reshape(-1, 3, 32, 32), labels

    def _read_split(self, root: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._read_batch(Path(root) / self.folder / n) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _read_splits(self, root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return self._read_split(root, self.train_files), self._read_split(root, self.test_files)

    def _source(self, root: Path) -> Path:
        return Path(root) / self.folder


@register_dataset("cifar10")
class CIFAR10(_CIFAR):
    """CIFAR-10: 50,000 train / 10,000 test, 32x32 colour, 10 classes; val 5,000 from train."""

    name = "cifar10"
    folder = "cifar-10-batches-py"
    torchvision_class = "CIFAR10"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)
    class_names = CIFAR10_CLASSES


@register_dataset("cifar100")
class CIFAR100(_CIFAR):
    """CIFAR-100: 50,000 train / 10,000 test, 32x32 colour, 100 fine classes; val 5,000 from train."""

    name = "cifar100"
    folder = "cifar-100-python"
    torchvision_class = "CIFAR100"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    mean = (0.5071, 0.4866, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    class_names = CIFAR100_CLASSES
