"""``random``: a coreset of real training samples drawn uniformly at random, ``ipc`` per class.

The simplest baseline of the dataset-condensation papers (DC, DM): it shows how much a
distillation method gains over just keeping a few real samples. The selection comes only from
``ctx.generator``, so a trial seed fixes it; the chosen training indices are recorded in
``meta["indices"]`` so the set can be traced back to the real data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch

from distillbench.harness.errors import ConfigError
from distillbench.harness.plugins import register_method
from distillbench.harness.types import Context, DataBundle, DistilledSet
from distillbench.methods.base import DistillationMethod


def check_class_sizes(data: DataBundle, ipc: int, method: str) -> None:
    """Raise ``ConfigError`` if some class has fewer than ``ipc`` training samples.

    Args:
        data: the loaded dataset.
        ipc: samples per class the method must select.
        method: the method's name, for the message.

    Raises:
        ConfigError: naming the first class that is too small, its count and ``ipc``.
    """
    for c, count in enumerate(data.train.class_counts(data.info.num_classes)):
        if count < ipc:
            raise ConfigError(
                f"method {method!r} selects {ipc} real samples per class, but class {c} "
                f"({data.info.class_name(c)!r}) of {data.info.name!r} has only {count} training samples; "
                f"use ipc <= {count}"
            )


SHORT_POLICIES = ("error", "all", "repeat")


def random_per_class(
    data: DataBundle, ipc: int, generator: torch.Generator, method: str, *, short: str = "error"
) -> torch.Tensor:
    """Indices into ``data.train`` of ``ipc`` random samples per class, class-major.

    Args:
        data: the loaded dataset.
        ipc: samples per class.
        generator: the only source of randomness (one ``randperm`` per class, in class order, plus
            the draws that fill a short class under ``short="repeat"``).
        method: the calling method's name, for error messages.
        short: what a class with fewer than ``ipc`` training samples gives (long-tailed data):
            ``error`` raises; ``all`` gives all of its samples (the set is then smaller); ``repeat``
            gives all of them and fills up to ``ipc`` with samples drawn again with replacement (an
            initialisation for methods that then optimise each sample separately).

    Returns:
        Int64 CPU tensor: class 0's indices first, then class 1's, ...

    Raises:
        ConfigError: ``short="error"`` and a class has fewer than ``ipc`` training samples.
    """
    if short not in SHORT_POLICIES:
        raise ValueError(f"short must be one of {', '.join(SHORT_POLICIES)}, got {short!r}")
    if short == "error":
        check_class_sizes(data, ipc, method)
    chosen = []
    # Filling a class up by repetition needs at least one sample of it.
    for members in data.class_indices(required_by=method if short == "repeat" else None):
        # The permutation is drawn on the generator's device (it may be a CUDA generator).
        perm = torch.randperm(len(members), generator=generator, device=generator.device)[:ipc].cpu()
        picked = members[perm]
        if short == "repeat" and 0 < len(members) < ipc:
            extra = torch.randint(len(members), (ipc - len(members),), generator=generator, device=generator.device)
            picked = torch.cat([picked, members[extra.cpu()]])
        chosen.append(picked)
    return torch.cat(chosen)


def short_classes(data: DataBundle, ipc: int) -> dict[str, int]:
    """``{class index: training count}`` of the classes with fewer than ``ipc`` training samples."""
    counts = data.train.class_counts(data.info.num_classes)
    return {str(c): n for c, n in enumerate(counts) if n < ipc}


@dataclasses.dataclass(frozen=True)
class RandomParams:
    """Options of ``random``."""

    short: Literal["all", "error"] = dataclasses.field(
        default="all",
        metadata={"help": "a class with fewer than ipc samples: all = take all of them (recorded), error = stop"},
    )


@register_method("random")
class RandomReal(DistillationMethod):
    """``ipc`` real training samples per class, chosen uniformly without replacement.

    Works on any modality because it only indexes the training tensors. Labels are the samples'
    own (hard) labels; the output is ordered by class. On long-tailed data a class with fewer than
    ``ipc`` samples gives all of them (``short=all``, the default; the set is smaller and
    ``meta["short_classes"]`` names those classes and their counts) or stops the trial (``short=error``).
    """

    name = "random"
    Params = RandomParams
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    test_config: ClassVar[dict[str, Any]] = {}

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        indices = random_per_class(data, ipc, ctx.generator, self.name, short=self.params.short)
        meta: dict[str, Any] = {"indices": indices.tolist()}
        if short := short_classes(data, ipc):
            meta["short_classes"] = short
        return DistilledSet(x=data.train.x[indices].clone(), y=data.train.y[indices].clone(), meta=meta)
