"""``random``: a coreset of real training samples drawn uniformly at random, ``ipc`` per class.

The simplest baseline of the dataset-condensation papers (DC, DM): it shows how much a
distillation method gains over just keeping a few real samples. The selection comes only from
``ctx.generator``, so a trial seed fixes it; the chosen training indices are recorded in
``meta["indices"]`` so the set can be traced back to the real data.
"""

from __future__ import annotations

from typing import Any, ClassVar

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
            name = data.info.class_names[c] if c < len(data.info.class_names) else str(c)
            raise ConfigError(
                f"method {method!r} selects {ipc} real samples per class, but class {c} ({name!r}) of "
                f"{data.info.name!r} has only {count} training samples; use ipc <= {count}"
            )


def random_per_class(data: DataBundle, ipc: int, generator: torch.Generator, method: str) -> torch.Tensor:
    """Indices into ``data.train`` of ``ipc`` distinct random samples per class, class-major.

    Args:
        data: the loaded dataset.
        ipc: samples per class.
        generator: the only source of randomness (one ``randperm`` per class, in class order).
        method: the calling method's name, for error messages.

    Returns:
        Int64 CPU tensor ``[ipc * num_classes]``: class 0's indices first, then class 1's, ...

    Raises:
        ConfigError: a class has fewer than ``ipc`` training samples.
    """
    check_class_sizes(data, ipc, method)
    chosen = []
    for members in data.class_indices():
        # The permutation is drawn on the generator's device (it may be a CUDA generator).
        perm = torch.randperm(len(members), generator=generator, device=generator.device)[:ipc].cpu()
        chosen.append(members[perm])
    return torch.cat(chosen)


@register_method("random")
class RandomReal(DistillationMethod):
    """``ipc`` real training samples per class, chosen uniformly without replacement.

    Works on any modality because it only indexes the training tensors. Labels are the samples'
    own (hard) labels; the output is ordered by class.
    """

    name = "random"
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    test_config: ClassVar[dict[str, Any]] = {}

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        indices = random_per_class(data, ipc, ctx.generator, self.name)
        return DistilledSet(
            x=data.train.x[indices].clone(),
            y=data.train.y[indices].clone(),
            meta={"indices": indices.tolist()},
        )
