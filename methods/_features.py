"""Feature spaces for the coreset baselines (herding, k-center, ...).

A coreset method selects real samples by their position in some feature space. Which space the
DC / DM papers used for their baselines is not stated precisely (METHODS.md section 6 marks the
exact extractor as unverified), so the space is a parameter of every coreset method and the three
candidates live here, shared:

* ``"pixels"``: the flattened inputs, already in the dataset's normalised space. No network, no
  randomness; a coreset in this space ignores the seed.
* ``"random"``: the embedding (features before the classifier) of a randomly initialised network
  (default ConvNet-3). Random conv features are a surprisingly good similarity measure for images and
  cost one forward pass.
* ``"trained"``: the embedding of the same network after a short training run on the real training
  split (cross-entropy, SGD lr 0.01 momentum 0.9, batch 256, ``train_epochs`` epochs, batches by
  slicing a fresh permutation each epoch). This is the closest reading of "herding on features of a
  ConvNet trained on the real data" used for the papers' baselines.

Randomness (network initialisation, batch order) comes from generators derived from ``ctx.seed``
and the feature kind, never from ``ctx.generator``: extracting features must not shift the random
stream the calling method uses for anything else, and the same seed always gives the same features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.networks import build_network, resolve_network
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods.base import DistillationMethod

FEATURE_KINDS: tuple[str, ...] = ("pixels", "random", "trained")

_TRAIN_LR = 0.01
_TRAIN_MOMENTUM = 0.9
_TRAIN_BATCH = 256
_EMBED_CHUNK = 1024


def features(
    data: DataBundle,
    x: torch.Tensor,
    kind: str,
    ctx: Context,
    *,
    net: str = "convnet",
    train_epochs: int = 10,
) -> torch.Tensor:
    """Features of the samples ``x`` in the feature space ``kind``.

    Args:
        data: the dataset; ``data.info`` configures the network and ``data.train`` trains it
            (``kind="trained"``).
        x: samples ``[n, *data.info.shape]`` in the dataset's normalised space.
        kind: ``"pixels"``, ``"random"`` or ``"trained"`` (see the module docstring).
        ctx: device and ``seed`` (generators are derived from it).
        net: network spec of the extractor, e.g. ``"convnet"`` or ``"convnet[width=64]"``.
        train_epochs: epochs of training on ``data.train`` for ``kind="trained"``.

    Returns:
        Float32 CPU tensor ``[n, d]``.

    Raises:
        ValueError: an unknown ``kind`` or ``train_epochs < 1`` for ``"trained"``.
    """
    if kind == "pixels":
        return x.detach().flatten(1).to(device="cpu", dtype=torch.float32)
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; valid kinds: {', '.join(FEATURE_KINDS)}")
    # Networks are built on the CPU (their initialisation draws from a CPU generator), then moved.
    init_gen = torch_generator(derive_seed(ctx.seed, "features", kind, net, "init"))
    model = build_network(net, data.info, init_gen).to(ctx.device)
    if kind == "trained":
        if train_epochs < 1:
            raise ValueError(f"train_epochs must be at least 1 for trained features, got {train_epochs}")
        batch_gen = torch_generator(derive_seed(ctx.seed, "features", kind, net, "batches"))
        train_classifier(model, data.train.x, data.train.y, train_epochs, batch_gen, ctx.device)
    return embed(model, x, ctx.device)


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Train ``model`` in place with cross-entropy (SGD lr 0.01, momentum 0.9, batch 256).

    Batches are slices of one permutation per epoch drawn from ``generator`` (CPU), the way the
    evaluation protocol batches, without a ``DataLoader``.
    """
    x = x.to(device)
    y = y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=_TRAIN_LR, momentum=_TRAIN_MOMENTUM)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=generator).to(device)
        for start in range(0, len(y), _TRAIN_BATCH):
            idx = perm[start : start + _TRAIN_BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``model.embed`` of ``x`` in eval mode, in chunks, as a float32 CPU tensor ``[n, d]``."""
    model.eval()
    out = [model.embed(x[i : i + _EMBED_CHUNK].to(device)).float().cpu() for i in range(0, len(x), _EMBED_CHUNK)]
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out).flatten(1)


@dataclasses.dataclass(frozen=True)
class FeatureParams:
    """Options of the coreset methods that select real samples in a feature space (herding, kcenter)."""

    features: Literal["trained", "random", "pixels"] = dataclasses.field(
        default="trained",
        metadata={"help": "feature space: trained ConvNet embedding, random ConvNet embedding, or pixels"},
    )
    train_epochs: int = dataclasses.field(
        default=10, metadata={"help": "epochs of training on the real train split for features=trained"}
    )
    net: str = dataclasses.field(default="convnet", metadata={"help": "network spec of the feature extractor"})

    def __post_init__(self) -> None:
        if self.train_epochs < 1:
            raise ValueError(f"train_epochs must be at least 1, got {self.train_epochs}")


class FeatureSelection(DistillationMethod):
    """Base of coreset methods that pick ``ipc`` real samples per class by an order in a feature space.

    Subclasses set ``Params`` (a :class:`FeatureParams`) and implement :meth:`order`. Deterministic
    given ``ctx.seed``; the selected training indices are recorded in ``meta["indices"]``
    (class-major, pick order within a class).
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    test_config: ClassVar[dict[str, Any]] = {"train_epochs": 1, "net": "convnet[width=16]"}

    @staticmethod
    def order(feats: torch.Tensor, k: int) -> torch.Tensor:
        """Positions (into ``feats`` of one class) of the first ``k`` picks, in pick order."""
        raise NotImplementedError

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        super().validate(info, ipc)
        if self.params.features != "pixels":
            resolve_network(self.params.net).validate(info)

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        from distillbench.methods.random import check_class_sizes

        check_class_sizes(data, ipc, self.name)
        p = self.params
        ctx.report(0.0, f"extracting {p.features} features")
        feats = features(data, data.train.x, p.features, ctx, net=p.net, train_epochs=p.train_epochs)
        chosen = []
        for c, members in enumerate(data.class_indices()):
            chosen.append(members[self.order(feats[members], ipc)])
            ctx.report((c + 1) / data.info.num_classes, f"{self.name}: class {c}")
        indices = torch.cat(chosen)
        return DistilledSet(
            x=data.train.x[indices].clone(),
            y=data.train.y[indices].clone(),
            meta={"indices": indices.tolist(), "features": p.features},
        )
