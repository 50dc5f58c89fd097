r"""Text classification datasets: ``sst5``, ``sst2``, ``mr``, ``trec6``, ``trec50``, ``imdb``, ``ag_news``.

Each reads the layout of its canonical distribution under the data root (DESIGN.md, Data):

=========  =====================================================  ==========================================
dataset    files under the data root                              splits
=========  =====================================================  ==========================================
sst5/sst2  ``sst/trees/{train,dev,test}.txt`` (PTB trees)          official train / dev (validation) / test
mr         ``rt-polaritydata/rt-polarity.{pos,neg}``               none official: seeded stratified 90/10
trec6/50   ``trec/train_5500.label``, ``trec/TREC_10.label``       official train / test
imdb       ``aclImdb/{train,test}/{pos,neg}/*.txt``                official train / test
ag_news    ``ag_news_csv/{train,test}.csv``                        official; test.csv alone: seeded 90/10
=========  =====================================================  ==========================================

SST: the label of a sentence is its root label (0-4, SST-5); ``sst2`` drops label 2 and maps 0-1 to
negative (0) and 3-4 to positive (1). Leaves are the tokens; ``-LRB-``/``-RRB-`` become brackets and
``\\/`` a slash. Without an official split (MR; AG News when only ``test.csv`` is present) the test
part is a stratified 10% drawn with seed :data:`SPLIT_SEED` (``_longtail.stratified_holdout``),
recorded in ``DataBundle.meta["split"]``. Validation: SST's dev split; otherwise a stratified 10%
of the train part (``_longtail.split_train_val``, capped at 5,000).

Downloads (``prepare(download=True)``) happen only for files with a recorded checksum. The
addresses below are the canonical ones; of the checksums only IMDB's md5 is recorded: it is the
value published with the archive's use in torchtext and many other loaders (cross-checked across
several independent public sources, not against the bytes, since this environment has no network
beyond PyPI). For SST, MR, TREC and AG News no checksum could be verified offline, so none is
invented: ``prepare(download=True)`` raises a ``DataError`` naming the address and the folder to
place the files in, and loading a copy placed by hand works as usual.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillbench.datasets import _files
from distillbench.datasets._longtail import SPLIT_SEED, stratified_holdout
from distillbench.datasets._text import (
    GLOVE_PACKAGE,
    TextDatasetInfo,
    TextParams,
    build_text_bundle,
    check_nonempty,
    glove_package_root,
    read_lines,
)
from distillbench.datasets.base import Dataset
from distillbench.harness.errors import DataError
from distillbench.harness.params import format_spec
from distillbench.harness.plugins import register_dataset
from distillbench.harness.types import DataBundle

TEST_FRACTION = 0.1

# Canonical addresses. md5 None: no checksum could be verified offline (see the module docstring).
REMOTE: dict[str, dict[str, Any]] = {
    # Stanford Sentiment Treebank, https://nlp.stanford.edu/sentiment/ ("trainDevTestTrees_PTB.zip").
    "sst": {"url": "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip", "md5": None, "into": "sst"},
    # Pang & Lee 2005 sentence polarity v1.0, https://www.cs.cornell.edu/people/pabo/movie-review-data/.
    "mr": {
        "url": "https://www.cs.cornell.edu/people/pabo/movie-review-data/rt-polaritydata.tar.gz",
        "md5": None,
        "into": ".",
    },
    # Li & Roth 2002 question classification, https://cogcomp.seas.upenn.edu/Data/QA/QC/.
    "trec": {"url": "https://cogcomp.seas.upenn.edu/Data/QA/QC/", "md5": None, "into": "trec"},
    # Maas et al. 2011 Large Movie Review Dataset, https://ai.stanford.edu/~amaas/data/sentiment/.
    "imdb": {
        "url": "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        "md5": "7c2ac02c03563afcf9b574c7e56c153a",
        "into": ".",
    },
    # Zhang, Zhao & LeCun 2015 (the ag_news_csv archive of their release; torchtext mirrors the CSVs).
    "ag_news": {
        "url": "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/",
        "md5": None,
        "into": "ag_news_csv",
    },
}


class _TextDataset(Dataset):
    """Shared parts of the text datasets; subclasses read their files in ``read_splits``.

    Class attributes:
        family: key of :data:`REMOTE`.
        default_max_len: sequence length when ``max_len`` is not given.
        class_names: one name per class.
    """

    Params = TextParams
    test_config: ClassVar[dict[str, Any]] = {"vocab_size": 200, "max_len": 16}
    family: ClassVar[str] = ""
    default_max_len: ClassVar[int] = 50
    class_names: ClassVar[tuple[str, ...]] = ()

    @property
    def max_len(self) -> int:
        """The configured sequence length (``max_len`` or the dataset default)."""
        return self.params.max_len if self.params.max_len is not None else self.default_max_len

    def info(self) -> TextDatasetInfo:
        if self.params.embeddings == GLOVE_PACKAGE:
            glove_package_root(f"dataset {self.name!r}")  # an optional extra: say so before any trial runs
        return TextDatasetInfo(
            name=format_spec(self.name, self.params),
            modality="text",
            num_classes=len(self.class_names),
            shape=(self.max_len,),
            class_names=self.class_names,
            dsa_strategy="none",
        )

    def data_paths(self, root: Path) -> list[Path]:
        """The files ``load`` reads."""
        raise NotImplementedError

    def _missing(self, root: Path) -> list[Path]:
        return [p for p in self.data_paths(root) if not p.exists()]

    def prepare(self, root: Path, *, download: bool = False) -> None:
        """Check the files; with ``download``, fetch those with a recorded checksum.

        Raises:
            DataError: files are missing and cannot be downloaded (offline, or no verified checksum).
        """
        root = Path(root)
        missing = self._missing(root)
        if not missing:
            return
        remote = REMOTE[self.family]
        where = root / remote["into"]
        names = ", ".join(str(p) for p in missing)
        if not download:
            # Only datasets with a recorded checksum can be fetched: never suggest a command that refuses.
            fetch = f", or {_files.fix_hint(self.name, root)}" if remote["md5"] is not None else ""
            raise DataError(
                f"dataset {self.name!r}: missing {names}; download {remote['url']} and place its files in "
                f"{where}{fetch}"
            )
        if remote["md5"] is None:
            raise DataError(
                f"dataset {self.name!r}: missing {names}; automatic download is disabled because no verified "
                f"checksum of {remote['url']} is recorded; download it by hand and place its files in {where}"
            )
        self._download(root, remote)

    def _download(self, root: Path, remote: dict[str, Any]) -> None:
        import tarfile

        with _files.dataset_lock(root, self.name):
            if not self._missing(root):
                return
            archive = root / remote["url"].rsplit("/", 1)[-1]
            if not archive.exists():
                _files.download([remote["url"]], archive, md5=remote["md5"], dataset=self.name)
            try:
                with tarfile.open(archive, "r:*") as tar:
                    tar.extractall(root / remote["into"], filter="data")
            except (OSError, EOFError, tarfile.TarError) as exc:
                raise DataError(f"dataset {self.name!r}: cannot extract {archive} ({exc}); delete it") from None

    def read_splits(self, root: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
        """``(train, val or None, test, meta)``, each split ``(texts, labels)``."""
        raise NotImplementedError

    def load(self, root: Path) -> DataBundle:
        """Read the files into token-id splits with the train vocabulary and embeddings.

        Raises:
            DataError: a file is missing, malformed (the message names file and line) or a split is empty.
        """
        root = Path(root)
        missing = self._missing(root)
        if missing:
            self.prepare(root, download=False)
        train, val, test, meta = self.read_splits(root)
        for split, part in (("train", train), ("validation", val), ("test", test)):
            if part is not None:
                check_nonempty(self.name, split, len(part[0]), meta.get("source", root))
        return build_text_bundle(self.info(), self.params, self.max_len, train, val, test, meta=meta)


def seeded_test_split(texts: list[str], labels: np.ndarray, source: str) -> tuple[Any, Any, dict[str, Any]]:
    """A stratified train/test split (10% test, seed :data:`SPLIT_SEED`) of data without an official one."""
    keep, held = stratified_holdout(labels, round(TEST_FRACTION * len(labels)), SPLIT_SEED)
    meta = {
        "split": {
            "policy": f"no official split: stratified {TEST_FRACTION:.0%} test, seed {SPLIT_SEED}",
            "seed": SPLIT_SEED,
            "test_fraction": TEST_FRACTION,
            "n_train": len(keep),
            "n_test": len(held),
            "source": source,
        }
    }
    return ([texts[i] for i in keep], labels[keep]), ([texts[i] for i in held], labels[held]), meta


# ------------------------------------------------------------------------------------------------ SST
_PTB_ROOT = re.compile(r"^\((\d) ")
_PTB_LEAF = re.compile(r"\((\d) ([^()\s]+)\)")
_PTB_TOKENS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}


def read_ptb_trees(path: Path, dataset: str) -> tuple[list[str], list[int]]:
    """Sentences (leaves joined by spaces) and root labels (0-4) of a PTB-format SST file.

    Raises:
        DataError: a non-empty line is not a tree with labels 0-4 and balanced brackets; names file and line.
    """
    texts, labels = [], []
    for number, line in enumerate(read_lines(path, dataset), 1):
        line = line.strip()
        if not line:
            continue
        root = _PTB_ROOT.match(line)
        leaves = _PTB_LEAF.findall(line)
        if root is None or int(root.group(1)) > 4 or line.count("(") != line.count(")") or not leaves:
            raise DataError(
                f"dataset {dataset!r}: {path}, line {number}: not a PTB sentiment tree '(label (label word) ...)' "
                f"with labels 0-4: {line[:60]!r}"
            )
        words = [_PTB_TOKENS.get(w, w).replace("\\/", "/") for _, w in leaves]
        texts.append(" ".join(words))
        labels.append(int(root.group(1)))
    return texts, labels


@register_dataset("sst5")
class SST5(_TextDataset):
    """Stanford Sentiment Treebank, 5 classes (root labels); 8,544 / 1,101 / 2,210 sentences."""

    name = "sst5"
    family = "sst"
    class_names = ("very negative", "negative", "neutral", "positive", "very positive")

    def data_paths(self, root: Path) -> list[Path]:
        return [Path(root) / "sst" / "trees" / f"{s}.txt" for s in ("train", "dev", "test")]

    def map_label(self, label: int) -> int | None:
        """The class of a root label, or ``None`` to drop the sentence."""
        return label

    def read_splits(self, root: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
        parts = []
        for split, path in zip(("train", "validation", "test"), self.data_paths(root), strict=True):
            texts, labels = read_ptb_trees(path, self.name)
            kept = [(t, m) for t, y in zip(texts, labels, strict=True) if (m := self.map_label(y)) is not None]
            check_nonempty(self.name, split, len(kept), path)
            parts.append(([t for t, _ in kept], np.asarray([m for _, m in kept], dtype=np.int64)))
        meta = {"source": str(Path(root) / "sst" / "trees"), "split": {"policy": "official train / dev / test"}}
        return parts[0], parts[1], parts[2], meta


@register_dataset("sst2")
class SST2(SST5):
    """SST binary: SST-5 without neutral (label 2); 0-1 -> negative, 3-4 -> positive."""

    name = "sst2"
    class_names = ("negative", "positive")

    def map_label(self, label: int) -> int | None:
        return None if label == 2 else int(label > 2)


# ------------------------------------------------------------------------------------------------- MR
@register_dataset("mr")
class MR(_TextDataset):
    """Movie Review sentence polarity v1.0 (Pang & Lee 2005): 5,331 + 5,331 sentences, seeded 90/10 split."""

    name = "mr"
    family = "mr"
    class_names = ("negative", "positive")

    def data_paths(self, root: Path) -> list[Path]:
        folder = Path(root) / "rt-polaritydata"
        return [folder / "rt-polarity.neg", folder / "rt-polarity.pos"]

    def read_splits(self, root: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
        texts: list[str] = []
        labels: list[int] = []
        for label, path in enumerate(self.data_paths(root)):
            lines = [line.strip() for line in read_lines(path, self.name) if line.strip()]
            check_nonempty(self.name, f"class {self.class_names[label]!r}", len(lines), path)
            texts += lines
            labels += [label] * len(lines)
        source = str(Path(root) / "rt-polaritydata")
        train, test, meta = seeded_test_split(texts, np.asarray(labels, dtype=np.int64), source)
        return train, None, test, {**meta, "source": source}


# ----------------------------------------------------------------------------------------------- TREC
# The fine classes of each coarse class (Li & Roth 2002, https://cogcomp.seas.upenn.edu/Data/QA/QC/definition.html).
_TREC_FINE_NAMES = {
    "ABBR": "abb exp",
    "DESC": "def desc manner reason",
    "ENTY": "animal body color cremat currency dismed event food instru lang letter other plant product religion "
    "sport substance symbol techmeth termeq veh word",
    "HUM": "desc gr ind title",
    "LOC": "city country mount other state",
    "NUM": "code count date dist money ord other perc period speed temp volsize weight",
}
TREC_FINE = {coarse: tuple(names.split()) for coarse, names in _TREC_FINE_NAMES.items()}
_TREC_LINE = re.compile(r"^([A-Z]+):(\S+) (.+)$")


class _TREC(_TextDataset):
    family = "trec"
    default_max_len = 20
    fine: ClassVar[bool] = False

    def data_paths(self, root: Path) -> list[Path]:
        return [Path(root) / "trec" / "train_5500.label", Path(root) / "trec" / "TREC_10.label"]

    def read_file(self, path: Path) -> tuple[list[str], np.ndarray]:
        """Questions and labels of a ``COARSE:fine question`` file.

        Raises:
            DataError: a line does not have that form or names an unknown label; names file and line.
        """
        index = {n: i for i, n in enumerate(self.class_names)}
        texts, labels = [], []
        for number, line in enumerate(read_lines(path, self.name), 1):
            if not line.strip():
                continue
            match = _TREC_LINE.match(line.strip())
            key = None if match is None else (f"{match.group(1)}:{match.group(2)}" if self.fine else match.group(1))
            if key not in index:
                raise DataError(
                    f"dataset {self.name!r}: {path}, line {number}: expected 'COARSE:fine question' with a known "
                    f"label, got {line.strip()[:60]!r}"
                )
            texts.append(match.group(3))  # type: ignore[union-attr]
            labels.append(index[key])
        return texts, np.asarray(labels, dtype=np.int64)

    def read_splits(self, root: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
        train_path, test_path = self.data_paths(root)
        meta = {"source": str(Path(root) / "trec"), "split": {"policy": "official train_5500 / TREC_10"}}
        train, test = self.read_file(train_path), self.read_file(test_path)
        check_nonempty(self.name, "train", len(train[0]), train_path)
        check_nonempty(self.name, "test", len(test[0]), test_path)
        return train, None, test, meta


@register_dataset("trec6")
class TREC6(_TREC):
    """TREC question classification (Li & Roth 2002), 6 coarse classes; 5,452 train / 500 test."""

    name = "trec6"
    class_names = tuple(TREC_FINE)


@register_dataset("trec50")
class TREC50(_TREC):
    """TREC question classification, 50 fine classes (``COARSE:fine``)."""

    name = "trec50"
    fine = True
    class_names = tuple(f"{c}:{f}" for c, fines in TREC_FINE.items() for f in fines)


# ----------------------------------------------------------------------------------------------- IMDB
@register_dataset("imdb")
class IMDB(_TextDataset):
    """Large Movie Review Dataset (Maas et al. 2011): 25,000 train / 25,000 test reviews, 2 classes."""

    name = "imdb"
    family = "imdb"
    default_max_len = 400  # the paper code's default maxlen
    class_names = ("negative", "positive")

    def data_paths(self, root: Path) -> list[Path]:
        base = Path(root) / "aclImdb"
        return [base / s / c for s in ("train", "test") for c in ("neg", "pos")]

    def _read(self, root: Path, split: str) -> tuple[list[str], np.ndarray]:
        texts, labels = [], []
        for label, cls in enumerate(("neg", "pos")):
            for path in sorted((Path(root) / "aclImdb" / split / cls).glob("*.txt")):
                texts.append(path.read_text(encoding="utf-8", errors="replace").replace("<br />", " "))
                labels.append(label)
        check_nonempty(self.name, split, len(texts), Path(root) / "aclImdb" / split / "{neg,pos}/*.txt")
        return texts, np.asarray(labels, dtype=np.int64)

    def read_splits(self, root: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
        meta = {"source": str(Path(root) / "aclImdb"), "split": {"policy": "official train / test"}}
        return self._read(root, "train"), None, self._read(root, "test"), meta


# -------------------------------------------------------------------------------------------- AG News
@register_dataset("ag_news")
class AGNews(_TextDataset):
    """AG News (Zhang et al. 2015): 4 classes, 120,000 train / 7,600 test; test.csv alone -> seeded 90/10."""

    name = "ag_news"
    family = "ag_news"
    default_max_len = 100
    class_names = ("World", "Sports", "Business", "Sci/Tech")

    def data_paths(self, root: Path) -> list[Path]:
        folder = Path(root) / "ag_news_csv"
        return [folder / "train.csv", folder / "test.csv"] if (folder / "train.csv").exists() else [folder / "test.csv"]

    def read_csv(self, path: Path) -> tuple[list[str], np.ndarray]:
        """Texts (title and description) and labels (class 1-4 -> 0-3) of an AG News CSV file.

        Raises:
            DataError: a row is not ``"class","title","description"`` with class 1-4; names file and line.
        """
        texts, labels = [], []
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if not row:
                    continue
                if len(row) != 3 or row[0].strip() not in {"1", "2", "3", "4"}:
                    raise DataError(
                        f"dataset {self.name!r}: {path}, line {reader.line_num}: expected "
                        f'\'"class","title","description"\' with class 1-4, got {row!r:.60}'
                    )
                texts.append(f"{row[1]} {row[2]}".replace("\\", " "))
                labels.append(int(row[0]) - 1)
        return texts, np.asarray(labels, dtype=np.int64)

    def read_splits(self, root: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
        folder = Path(root) / "ag_news_csv"
        test = self.read_csv(folder / "test.csv")
        if (folder / "train.csv").exists():
            meta = {"source": str(folder), "split": {"policy": "official train / test"}}
            train = self.read_csv(folder / "train.csv")
            check_nonempty(self.name, "train", len(train[0]), folder / "train.csv")
            check_nonempty(self.name, "test", len(test[0]), folder / "test.csv")
            return train, None, test, meta
        check_nonempty(self.name, "test.csv", len(test[0]), folder / "test.csv")
        train, test, meta = seeded_test_split(test[0], test[1], str(folder / "test.csv"))
        return train, None, test, {**meta, "source": str(folder)}
