"""The objects that flow through a trial: dataset facts, data splits, distilled sets, method context."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from distillbench.harness.progress import emit

Modality = Literal["image", "text"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a configured dataset, known without loading it.

    Attributes:
        name: display name with parameters, e.g. ``digits`` or ``cifar10[imbalance=100]``.
        modality: ``"image"`` or ``"text"``.
        num_classes: number of classes C.
        shape: shape of one sample, e.g. ``(1, 8, 8)``.
        class_names: one name per class.
        mean: per-channel mean used for normalisation (images).
        std: per-channel std used for normalisation (images).
        dsa_strategy: the DSA augmentation families suited to the data (no flips for digits).
        zca: whether the samples are ZCA-whitened (``zca=true``: fitted on the train split, applied to
            every split); a set distilled in one space cannot be evaluated in the other.
    """

    name: str
    modality: Modality
    num_classes: int
    shape: tuple[int, ...]
    class_names: tuple[str, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    zca: bool = False

    def class_name(self, c: int) -> str:
        """The name of class ``c``, or its number where the dataset names fewer classes (for messages)."""
        return self.class_names[c] if c < len(self.class_names) else str(c)


@dataclasses.dataclass
class Split:
    """One split of a dataset: samples ``x``, integer labels ``y`` and optional per-sample groups."""

    x: torch.Tensor
    y: torch.Tensor
    groups: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def class_counts(self, num_classes: int) -> list[int]:
        """Number of samples of each class."""
        return torch.bincount(self.y, minlength=num_classes).tolist()


@dataclasses.dataclass
class DataBundle:
    """A loaded dataset: train / validation / test splits plus static facts."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def class_indices(self, *, required_by: str | None = None) -> list[torch.Tensor]:
        """Indices of the training samples of each class.

        Args:
            required_by: the name of a method that needs samples of every class: a class without any is
                then a ``ConfigError`` naming the method, the class and the dataset.
        """
        indices = [torch.nonzero(self.train.y == c, as_tuple=True)[0] for c in range(self.info.num_classes)]
        if required_by is not None:
            empty = next((c for c, members in enumerate(indices) if len(members) == 0), None)
            if empty is not None:
                from distillbench.harness.errors import ConfigError

                raise ConfigError(
                    f"method {required_by!r} needs training samples of every class, but class {empty} "
                    f"({self.info.class_name(empty)!r}) of {self.info.name!r} has none; drop the class from the "
                    "dataset or choose another method"
                )
        return indices


@dataclasses.dataclass
class DistilledSet:
    """The output of a method: synthetic (or selected) samples and their labels.

    Attributes:
        x: samples, shape ``[n, *info.shape]``, in the dataset's normalised space.
        y: hard labels ``[n]`` (int64) or soft labels ``[n, C]`` (float).
        extras: further tensors the protocol may use (e.g. learned step sizes of DD).
        meta: JSON-able facts (method, dataset, ipc, seed, indices of selected real samples, ...).
    """

    x: torch.Tensor
    y: torch.Tensor
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def soft(self) -> bool:
        """Whether labels are soft (a distribution or score vector per sample)."""
        return self.y.dim() == 2

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def nbytes(self) -> int:
        """Bytes of the tensors (what a user stores or ships)."""
        tensors = [self.x, self.y, *self.extras.values()]
        return int(sum(t.numel() * t.element_size() for t in tensors))


# ``progress(fraction_done, message)``; a callback that also takes ``**values`` gets the event's numbers
# (phase, iteration, loss, ...) and finer events too (see distillbench.harness.progress).
ProgressFn = Callable[..., None]


@dataclasses.dataclass
class Context:
    """What a method gets besides the data: where to run and where its randomness comes from.

    Attributes:
        device: torch device for the computation.
        generator: the only source of randomness a method may use (seeded from the trial seed).
        seed: the integer behind ``generator``, for code that needs to derive further generators.
        weights: per-sample weights of the real training set (``None`` without a weighting).
        progress: optional callback ``(fraction_done, message)``; one that also takes ``**values`` receives
            the numbers of each event as well (:mod:`distillbench.harness.progress`).
        time_budget_s: optional soft wall-clock budget; methods may stop early and record it.
        checkpoint: periodic loop checkpoints (``resume`` / ``maybe_save``; see
            :mod:`distillbench.harness.checkpoint`); a no-op unless the runner gives the trial one.
        cache_dir: where shared artefacts such as trained teachers are stored (``<results>/teachers``
            under the runner); ``None`` means the user cache (``$DISTILLBENCH_CACHE`` or ``~/.cache/distillbench``).
        results: the trial's results directory (a local path, a URI or a store ``Location``), where cached
            artefacts shared by trials and nodes live (``<results>/buffers``); ``None`` without one (the
            user cache is used instead).
        probe: a :class:`~distillbench.harness.probe.Probe` when the trial is a search trial under early
            stopping: iterative methods show it their set at a few iterations (through ``LossTracker``).
    """

    device: torch.device
    generator: torch.Generator
    seed: int
    weights: torch.Tensor | None = None
    progress: ProgressFn | None = None
    time_budget_s: float | None = None
    checkpoint: Any = dataclasses.field(default_factory=lambda: _no_checkpoint())
    cache_dir: Path | None = None
    results: Any = None
    probe: Any = None

    def report(self, fraction: float, message: str = "", *, fine: bool = False, **values: Any) -> None:
        """Forward progress to the callback, if any.

        ``values`` are the event's numbers (``iteration=``, ``iterations=``, ``loss=``, ...), passed on to
        callbacks that take them; ``fine=True`` marks an in-between event that two-argument callbacks do
        not get (:func:`distillbench.harness.progress.emit`).
        """
        if self.progress is not None:
            emit(self.progress, fraction, message, fine=fine, **values)


def _no_checkpoint() -> Any:
    from distillbench.harness.checkpoint import NoCheckpoint

    return NoCheckpoint()
