"""Text networks of soft-label / text dataset distillation (METHODS.md section 2): TextCNN, bi-RNN, bi-LSTM.

Every module takes either **token ids** ``[n, L]`` (looked up in the dataset's frozen embedding
matrix, ``info.embeddings`` of a loaded :class:`~distillbench.datasets._text.TextDatasetInfo`) or
**embedding-space input** ``[n, L, D]`` (float; distilled sentences), told apart by shape: a 2-D
input is ids (integer, or float holding whole numbers as the evaluation engine casts every set to
float32), a 3-D float input is embeddings.

* ``textcnn``: Kim-style CNN (the paper code's ``TextConvNet``): filters of widths 3, 4, 5 x
  ``filters`` (100) spanning the whole embedding width, ReLU, max-over-time pooling, dropout
  (0.5), linear. Sequences shorter than 5 are zero-padded at the end to the widest filter.
* ``birnn``: 2-layer bidirectional tanh RNN, hidden 100; the last layer's final forward and
  backward hidden states, concatenated, feed a linear layer (``TextRNN1``).
* ``bilstm``: the same with an LSTM (``TextLSTM2``).

Randomness: parameters are drawn from the build generator only (:func:`construct_text`, which
initialises RNN/LSTM weights as PyTorch does, U(-1/sqrt(hidden), 1/sqrt(hidden))). Dropout masks
come from a CPU generator owned by the module and seeded from the build generator, so training is
reproducible without global seeding. The embedding matrix is a buffer (frozen, as in the paper);
``trainable_embedding=true`` makes it a parameter initialised from the same vectors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.errors import ConfigError
from distillbench.harness.networks.base import Network, init_parameters
from distillbench.harness.plugins import register_network
from distillbench.harness.types import DatasetInfo


@dataclasses.dataclass(frozen=True)
class TextCNNParams:
    """TextCNN hyperparameters (paper: widths 3/4/5, 100 maps each, dropout 0.5)."""

    filters: int = dataclasses.field(default=100, metadata={"help": "feature maps per filter width"})
    dropout: float = dataclasses.field(default=0.5, metadata={"help": "dropout before the classifier"})
    trainable_embedding: bool = dataclasses.field(default=False, metadata={"help": "learn the word vectors"})

    def __post_init__(self) -> None:
        if self.filters < 1:
            raise ValueError(f"filters must be at least 1, got {self.filters}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class TextRNNParams:
    """Bidirectional RNN / LSTM hyperparameters (paper: 2 layers, hidden 100)."""

    hidden: int = dataclasses.field(default=100, metadata={"help": "hidden units per direction"})
    layers: int = dataclasses.field(default=2, metadata={"help": "stacked recurrent layers"})
    trainable_embedding: bool = dataclasses.field(default=False, metadata={"help": "learn the word vectors"})

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"hidden and layers must be at least 1, got {self.hidden}, {self.layers}")


class _TextModule(nn.Module):
    """Embedding lookup shared by the text modules; ``embed`` gives features, ``forward`` logits."""

    def __init__(self, vocab: int, dim: int, trainable: bool) -> None:
        super().__init__()
        self.embedding_dim = dim
        if trainable:
            self.embedding = nn.Parameter(torch.empty(vocab, dim))
        else:
            self.register_buffer("embedding", torch.empty(vocab, dim))

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, L, D]`` float input for token ids ``[n, L]`` or embedding-space input ``[n, L, D]``."""
        if x.dim() == 2:
            return F.embedding(x.long(), self.embedding)
        if x.dim() == 3 and x.is_floating_point() and x.shape[-1] == self.embedding_dim:
            return x
        raise ValueError(
            f"text networks take token ids [n, L] or embeddings [n, L, {self.embedding_dim}]; "
            f"got {tuple(x.shape)} {x.dtype}"
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class TextCNNModule(_TextModule):
    """Kim CNN: conv widths 3/4/5 over [L, D], ReLU, max over time, dropout, linear."""

    widths = (3, 4, 5)

    def __init__(self, vocab: int, dim: int, num_classes: int, p: TextCNNParams) -> None:
        super().__init__(vocab, dim, p.trainable_embedding)
        self.convs = nn.ModuleList(nn.Conv1d(dim, p.filters, kernel_size=w) for w in self.widths)
        self.dropout = p.dropout
        self.classifier = nn.Linear(p.filters * len(self.widths), num_classes)
        self.dropout_generator = torch.Generator()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lookup(x).transpose(1, 2)  # [n, D, L]: filters span the whole embedding width
        if h.shape[-1] < max(self.widths):
            h = F.pad(h, (0, max(self.widths) - h.shape[-1]))
        feats = torch.cat([F.relu(conv(h)).amax(dim=2) for conv in self.convs], dim=1)
        if self.training and self.dropout > 0:
            keep = torch.rand(feats.shape, generator=self.dropout_generator) >= self.dropout
            feats = feats * keep.to(feats.device, feats.dtype) / (1.0 - self.dropout)
        return feats


class TextRNNModule(_TextModule):
    """Bidirectional RNN or LSTM; last layer's final forward + backward hidden states."""

    def __init__(self, vocab: int, dim: int, num_classes: int, p: TextRNNParams, cell: str) -> None:
        super().__init__(vocab, dim, p.trainable_embedding)
        rnn_cls: Callable[..., nn.Module] = nn.LSTM if cell == "lstm" else nn.RNN
        kwargs = {} if cell == "lstm" else {"nonlinearity": "tanh"}
        self.rnn = rnn_cls(dim, p.hidden, num_layers=p.layers, bidirectional=True, batch_first=True, **kwargs)
        self.classifier = nn.Linear(2 * p.hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.rnn(self.lookup(x))
        h_n = state[0] if isinstance(state, tuple) else state  # [layers * 2, n, hidden]
        return torch.cat([h_n[-2], h_n[-1]], dim=1)


def construct_text(
    factory: Callable[[], _TextModule], generator: torch.Generator, embeddings: torch.Tensor
) -> _TextModule:
    """Build ``factory()`` on the meta device, draw its parameters from ``generator``, copy the embeddings.

    Linear and convolution layers use :func:`init_parameters`; recurrent layers are drawn here with
    PyTorch's default U(-1/sqrt(hidden), 1/sqrt(hidden)) for every weight and bias.
    """
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.RNNBase):
                bound = 1.0 / math.sqrt(sub.hidden_size)
                for weight in sub.parameters(recurse=False):
                    weight.uniform_(-bound, bound, generator=generator)
            elif isinstance(sub, nn.Conv1d | nn.Linear):
                init_parameters(sub, generator)
        module.embedding.copy_(embeddings)
    if isinstance(module, TextCNNModule):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        module.dropout_generator = torch.Generator().manual_seed(seed)
    if isinstance(module, TextRNNModule):
        module.rnn.flatten_parameters()
    return module


class _TextNetwork(Network):
    modalities = frozenset({"text"})

    def _embeddings(self, info: DatasetInfo) -> torch.Tensor:
        emb = getattr(info, "embeddings", None)
        if emb is None:
            raise ConfigError(
                f"network {self.name!r} needs the word vectors of a loaded text dataset (info.embeddings); "
                f"{info.name!r} carries none: build it from DataBundle.info"
            )
        return emb

    def build(self, info: DatasetInfo, generator: torch.Generator) -> nn.Module:
        self.validate(info)
        emb = self._embeddings(info)
        vocab, dim = emb.shape
        return construct_text(lambda: self.module(vocab, dim, info.num_classes), generator, emb)

    def module(self, vocab: int, dim: int, num_classes: int) -> nn.Module:
        """The uninitialised module (built on the meta device by :func:`construct_text`)."""
        raise NotImplementedError


@register_network("textcnn")
class TextCNN(_TextNetwork):
    """Kim-style TextCNN (widths 3/4/5 x 100, max-over-time pooling, dropout 0.5) on frozen word vectors."""

    name = "textcnn"
    Params = TextCNNParams

    def module(self, vocab: int, dim: int, num_classes: int) -> nn.Module:
        return TextCNNModule(vocab, dim, num_classes, self.params)


@register_network("birnn")
class BiRNN(_TextNetwork):
    """2-layer bidirectional tanh RNN (hidden 100); final forward + backward states -> linear."""

    name = "birnn"
    Params = TextRNNParams
    cell = "rnn"

    def module(self, vocab: int, dim: int, num_classes: int) -> nn.Module:
        return TextRNNModule(vocab, dim, num_classes, self.params, self.cell)


@register_network("bilstm")
class BiLSTM(BiRNN):
    """2-layer bidirectional LSTM (hidden 100); final forward + backward states -> linear."""

    name = "bilstm"
    cell = "lstm"
