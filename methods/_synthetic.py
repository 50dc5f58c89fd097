"""The one initialisation of a learned synthetic set, shared by every method that optimises images.

``dm``, ``dc``/``dsa`` and the trajectory-matching methods (``mtt``, ``ftd``, ``datm``) all start from
``ipc`` images per class, class-major, either real training images drawn at random (``init="real"``,
the papers' default) or N(0, 1) noise in the dataset's (normalised or ZCA) space (``init="noise"``).
On long-tailed data a class with fewer than ``ipc`` training images gives all of them and is filled
up by drawing its images again (each copy is then optimised on its own); the classes filled this way
are recorded in ``meta["short_classes"]``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from distillbench.harness.types import DataBundle
from distillbench.methods.random import random_per_class, short_classes

INITS = ("real", "noise")
Init = Literal["real", "noise"]


def init_synthetic(
    data: DataBundle,
    ipc: int,
    init: str,
    generator: torch.Generator,
    method: str,
    *,
    x_train: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``ipc`` synthetic samples per class (class-major, float32) and what to record about them.

    Args:
        data: the dataset; real images come from ``data.train``.
        ipc: samples per class.
        init: ``"real"`` (random real training images of each class) or ``"noise"`` (N(0, 1)).
        generator: the only source of randomness (the method's ``ctx.generator``).
        method: the calling method's name, for messages.
        x_train: ``data.train.x`` already on ``device`` as float32 (saves a copy when the caller has it).
        device: where the returned tensor lives (default: ``x_train``'s device, else the CPU).

    Returns:
        ``(x, meta)``: ``x`` is ``[C * ipc, *shape]``, a fresh tensor the caller may optimise in place;
        ``meta`` holds ``init`` and, for real images, ``init_indices`` (and ``short_classes`` when a
        class had to be filled up by repetition).

    Raises:
        ValueError: an unknown ``init``.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    device = torch.device(device) if device is not None else (x_train.device if x_train is not None else None)
    device = device or torch.device("cpu")
    info = data.info
    meta: dict[str, Any] = {"init": init}
    if init == "noise":
        shape = (info.num_classes * ipc, *info.shape)
        x = torch.randn(shape, generator=generator, device=generator.device).to(device)
        return x, meta
    idx = random_per_class(data, ipc, generator, method, short="repeat")
    source = x_train if x_train is not None else data.train.x
    x = source[idx.to(source.device)].to(device=device, dtype=torch.float32).clone()
    meta["init_indices"] = idx.tolist()
    if short := short_classes(data, ipc):
        meta["short_classes"] = short  # filled up by repeating real images
    return x, meta
