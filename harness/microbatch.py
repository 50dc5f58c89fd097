"""Cache-sized micro-batches on the CPU: the same batch math, computed in pieces that fit the cache.

On a CPU the non-convolution layers of a ConvNet (normalisation, activation, pooling and their
backward passes) are bound by memory traffic, and a whole batch's activations do not fit in the
cache: ConvNet-3 width 128 on a 32x32 map holds 512 KiB per sample in every one of those layers.
Running the batch as micro-batches of about :data:`TARGET_BYTES` of activations each and summing
their contributions keeps each layer's working set in the cache. Measured on the 2-core development
machine (AMD EPYC, AVX2, two threads, ConvNet-3 width 128, MNIST-shaped input):

* a training step on 100 images (forward, backward): 0.41 s whole, 0.29 s in micro-batches of 25;
* DM's gradient-free forward pass of 2,560 images: 4.25 s whole (channels-last), 2.34-2.44 s in
  micro-batches of 16-64;
* the target size: micro-batches of 12 samples (6 MiB here) against 24 (12 MiB), alternated three
  times on a busy machine: 6 eval epochs 2.21 s against 3.82 s (best runs), 2 DM iterations 7.37 s
  against 8.00 s, one quick DC iteration 19.5-20.9 s against 22.9-25.0 s (whole batches: 32.9 s).

This is only exact when every sample's output depends on that sample alone, so a network opts in by
setting ``samplewise = True`` on its module (the bundled networks do unless they use batch norm; see
:func:`is_samplewise`). Then the mean loss of the batch equals the sum of the micro-batches' summed
losses divided by the batch size, and its gradient equals the sum of theirs, up to floating-point
summation order. The random draws (batch order, augmentation) are made for the whole batch before it
is split, so they are those of the unsplit path.

``DISTILLBENCH_MICROBATCH`` controls it: ``auto`` (default: CPU tensors, samplewise networks, chunk
size from :data:`TARGET_BYTES`), ``off``, or a positive integer (that many samples per micro-batch,
on any device: for experiments and tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.errors import ConfigError

MICROBATCH_ENV = "DISTILLBENCH_MICROBATCH"
# About a core's share of a server CPU's last-level cache; 6 MiB measured best of 3, 6 and 12 (docstring).
TARGET_BYTES = 6 * 2**20

_probe_cache: dict[tuple, int] = {}


def is_samplewise(model: nn.Module) -> bool:
    """Whether ``model``, as it is now, computes every sample independently of the rest of its batch.

    The module must declare ``samplewise = True`` (a plugin network that says nothing is never split),
    and no batch-norm layer may be in training mode and no dropout active (a frozen batch norm in
    eval mode is per-sample).
    """
    return bool(getattr(model, "samplewise", False)) and samples_independent(model)


def samples_independent(model: nn.Module) -> bool:
    """Whether no batch-norm layer of ``model`` is in training mode and no dropout layer is active.

    Batch norm in training mode uses batch statistics; dropout's mask comes from the global stream, so
    a split or a joint pass would draw differently. A batch norm frozen in eval mode counts as
    independent. This only inspects the standard layers; :func:`is_samplewise` also requires the
    network's own declaration.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd) and m.training:
            return False
    return True


def _setting() -> str | int:
    value = os.environ.get(MICROBATCH_ENV, "").strip().lower() or "auto"
    if value in ("auto", "off"):
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ConfigError(f"{MICROBATCH_ENV}={value!r} is not valid; use auto, off or a positive number of samples")


def largest_activation_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of the largest output of any submodule of ``model`` for one sample ``sample[:1]``.

    Measured once per (module class, parameter shapes, sample shape) with forward hooks on a
    one-sample forward pass without gradients, then cached.
    """
    key = (type(model), tuple(tuple(p.shape) for p in model.parameters()), tuple(sample.shape[1:]), sample.dtype)
    if key not in _probe_cache:
        largest = [sample[:1].numel() * sample.element_size()]

        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                largest[0] = max(largest[0], output.numel() * output.element_size())

        handles = [m.register_forward_hook(hook) for m in model.modules()]
        try:
            with torch.no_grad():
                model(sample[:1])
        finally:
            for h in handles:
                h.remove()
        _probe_cache[key] = largest[0]
    return _probe_cache[key]


def chunk_size(model: nn.Module, x: torch.Tensor) -> int | None:
    """Samples per micro-batch for ``model`` on the batch ``x``, or ``None``: run the batch whole.

    ``auto`` splits only CPU batches of a samplewise network whose activations exceed
    :data:`TARGET_BYTES`; a number splits any samplewise network's batches on any device.
    """
    setting = _setting()
    if setting == "off" or len(x) < 2 or not is_samplewise(model):
        return None
    if isinstance(setting, int):
        chunk = setting
    elif x.device.type != "cpu":
        return None  # a GPU wants the whole batch: it has the bandwidth and needs the parallelism
    else:
        chunk = max(1, TARGET_BYTES // largest_activation_bytes(model, x))
    return chunk if chunk < len(x) else None


def forward_no_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``fn(x)`` without gradients, computed ``chunk`` samples at a time (whole if ``chunk`` is None)."""
    with torch.no_grad():
        if chunk is None:
            return fn(x)
        return torch.cat([fn(part) for part in x.split(chunk)])


def backward_mean_loss(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    soft: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """Back-propagate the batch's mean cross-entropy into ``model``'s ``.grad``; returns it, detached.

    ``model`` is the module or any callable computing its logits (such as its compiled form).

    ``target`` holds class indices, or with ``soft`` probability rows (loss
    ``-(target * log_softmax(logits)).sum(1).mean()``). With ``chunk`` the batch runs as micro-batches
    whose summed losses, divided by the batch size, add up to the same mean and the same gradient.
    """
    n = len(x)
    if chunk is None:
        loss = _cross_entropy(model(x), target, soft, "mean")
        loss.backward()
        return loss.detach()
    total = torch.zeros((), device=x.device)
    for xs, ts in zip(x.split(chunk), target.split(chunk), strict=True):
        part = _cross_entropy(model(xs), ts, soft, "sum") / n
        part.backward()
        total += part.detach()
    return total


def weighted_grad(
    model: nn.Module,
    params: list[torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    coefficients: torch.Tensor,
    chunk: int | None,
) -> list[torch.Tensor]:
    """Detached gradient of ``sum_i coefficients[i] * CE(model(x_i), target_i)`` w.r.t. ``params``.

    A weighted mean cross-entropy is this sum with coefficients that add up to one; the micro-batches'
    gradients are summed, so the result is the unsplit gradient whatever ``chunk`` is.
    """
    parts = (
        [(x, target, coefficients)]
        if chunk is None
        else zip(x.split(chunk), target.split(chunk), coefficients.split(chunk), strict=True)
    )
    total: list[torch.Tensor] | None = None
    for xs, ts, cs in parts:
        loss = (cs * F.cross_entropy(model(xs), ts, reduction="none")).sum()
        grads = torch.autograd.grad(loss, params)
        total = [g.detach() for g in grads] if total is None else [a + g for a, g in zip(total, grads, strict=True)]
    assert total is not None  # x has at least one sample
    return total


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``-(target * log_softmax(logits)).sum(1)``, averaged (``mean``) or summed (``sum``) over the batch."""
    per_sample = -(target * F.log_softmax(logits, dim=1)).sum(1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, soft: bool, reduction: str) -> torch.Tensor:
    if soft:
        return soft_cross_entropy(logits, target, reduction)
    return F.cross_entropy(logits, target, reduction=reduction)
