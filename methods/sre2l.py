"""``sre2l``: Squeeze, Recover and Relabel (Yin, Xing, Shen; NeurIPS 2023, arXiv 2306.13092).

1. **Squeeze**: a teacher with batch norm trained on the real training split; here the shared,
   cached teacher of :mod:`~distillbench.methods.teacher` (so the ``teacher`` / ``adsa`` label
   stages with the same teacher fields use the very same network).
2. **Recover**: synthetic images start as N(0, 1) noise in the normalised space, one target class
   each, and are optimised with Adam so that the teacher (eval mode, frozen) classifies them as their
   class while the per-channel mean and variance of every BatchNorm layer's input over the batch match
   that layer's running statistics::

       loss = CE(f(jitter(x)), y) + r_bn * sum_l w_l (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2)

   with ``w_1 = first_bn_multiplier`` and ``w_l = 1`` for later layers, a cosine learning-rate decay
   without warm-up, a random cyclic shift (jitter) of the batch each step, and the pixels clipped to
   the valid range after each step.
3. **Relabel**: the teacher's soft labels ``softmax(f(x) / T)`` of the final images are the set's
   labels. ``meta["teacher"]`` and ``meta["image_class"]`` let ``labels: adsa`` recalibrate them and a
   ``relabel="online"`` protocol relabel every augmented batch, as SRe2L's own evaluation does.

Defaults follow SRe2L's small-dataset recovery script for CIFAR (``recover_cifar.sh`` /
``recover_cifar.py`` of github VILA-Lab/SRe2L): Adam lr 0.25 with betas (0.5, 0.9), 1000 iterations,
``r_bn`` 0.01, first-BN multiplier 10, jitter 4 pixels on 32x32 images (here ``size // 8``), one image
per class per batch (the CIFAR scripts' batch of 100 images for 100 classes). The teacher differs
from the paper (a batch-norm ConvNet from the shared cache instead of a ResNet-18 trained 200
epochs), and so does the relabelling (one stored soft label per image; per-crop relabelling is the
online protocol). Randomness (noise, jitter) comes from ``ctx.generator`` only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.errors import ConfigError, DivergedError
from distillbench.harness.plugins import register_method
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods.base import DistillationMethod
from distillbench.methods.teacher import (
    TeacherOptions,
    get_teacher,
)


@dataclasses.dataclass(frozen=True)
class SRe2LParams(TeacherOptions):
    """SRe2L hyperparameters; defaults from SRe2L's CIFAR recovery script (module docstring)."""

    iterations: int = dataclasses.field(default=1000, metadata={"help": "Adam steps per batch of images"})
    lr: float = dataclasses.field(default=0.25, metadata={"help": "Adam learning rate of the images (cosine decay)"})
    r_bn: float = dataclasses.field(default=0.01, metadata={"help": "weight of the BatchNorm statistics loss"})
    first_bn_multiplier: float = dataclasses.field(default=10.0, metadata={"help": "extra weight of the first BN"})
    jitter: int | None = dataclasses.field(
        default=None, metadata={"help": "max random shift in pixels; none = image size // 8 (4 on 32x32)"}
    )
    ipc_per_batch: int = dataclasses.field(
        default=1, metadata={"help": "images per class optimised together (BN statistics over that batch)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.r_bn < 0 or self.first_bn_multiplier < 0:
            raise ValueError("r_bn and first_bn_multiplier must be non-negative")
        if self.jitter is not None and self.jitter < 0:
            raise ValueError(f"jitter must be non-negative, got {self.jitter}")
        if self.ipc_per_batch < 1:
            raise ValueError(f"ipc_per_batch must be at least 1, got {self.ipc_per_batch}")


class _BNStats:
    """Forward hooks that measure how far each BatchNorm's input statistics are from its running ones."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.losses: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.losses.append(
            torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var)
        )

    def take(self, first_multiplier: float) -> torch.Tensor:
        weights = [first_multiplier] + [1.0] * (len(self.losses) - 1)
        total = sum(w * loss for w, loss in zip(weights, self.losses, strict=True))
        self.losses = []
        return total

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@register_method("sre2l")
class SRe2L(DistillationMethod):
    """SRe2L: recover images from a batch-norm teacher's statistics, label them with its soft labels."""

    name = "sre2l"
    Params = SRe2LParams
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    test_config: ClassVar[dict[str, Any]] = {
        "iterations": 10,
        "ipc_per_batch": 2,
        "teacher_net": "convnet[norm=batchnorm,width=8]",
        "teacher_epochs": 2,
        "teacher_min_steps": 0,
    }

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        super().validate(info, ipc)
        from distillbench.harness.networks import resolve_network
        from distillbench.harness.seeding import torch_generator

        network = resolve_network(self.params.teacher_net)
        network.validate(info)
        probe = network.build(info, torch_generator(0))
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules()):
            raise ConfigError(
                f"method 'sre2l' matches BatchNorm statistics, but teacher_net {self.params.teacher_net!r} has no "
                "BatchNorm layer; use e.g. teacher_net=convnet[norm=batchnorm]"
            )

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        p = self.params
        info = data.info
        device = torch.device(ctx.device)
        teacher = get_teacher(data, p.recipe(), cache_dir=ctx.cache_dir, device=device)
        model = teacher.on(device)
        num_classes = info.num_classes
        size = info.shape[-1]
        jitter = p.jitter if p.jitter is not None else max(1, size // 8)
        lo, hi = _pixel_range(info, device)
        gen = ctx.generator

        images: list[torch.Tensor] = []
        classes: list[torch.Tensor] = []
        last: dict[str, float] = {}
        hooks = _BNStats(model)
        try:
            for first in range(0, ipc, p.ipc_per_batch):
                k = min(p.ipc_per_batch, ipc - first)
                # Class-interleaved within a batch, as the reference's one-image-per-class batches.
                targets = torch.arange(num_classes).repeat(k).to(device)
                noise = torch.randn((k * num_classes, *info.shape), generator=gen, device=gen.device)
                x = noise.to(device).requires_grad_(True)
                opt = torch.optim.Adam([x], lr=p.lr, betas=(0.5, 0.9), eps=1e-8)
                for it in range(p.iterations):
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * (1 + math.cos(math.pi * it / p.iterations)) * p.lr
                    shifts = torch.randint(0, jitter + 1, (2,), generator=gen, device=gen.device).tolist()
                    xj = torch.roll(x, shifts=(int(shifts[0]), int(shifts[1])), dims=(-2, -1))
                    ce = F.cross_entropy(model(xj), targets)
                    bn = hooks.take(p.first_bn_multiplier)
                    loss = ce + p.r_bn * bn
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        x.data = torch.maximum(torch.minimum(x.data, hi), lo)
                last = {"loss_ce": float(ce.detach()), "loss_bn": float(torch.as_tensor(bn).detach())}
                if not all(math.isfinite(v) for v in last.values()):
                    raise DivergedError(f"method 'sre2l' diverged (losses {last}, lr={p.lr}); lower lr")
                images.append(x.detach().cpu())
                classes.append(targets.cpu())
                ctx.report(min(1.0, (first + k) / ipc), f"sre2l: {first + k}/{ipc} images per class recovered")
        finally:
            hooks.close()

        x_all = torch.cat(images)
        cls_all = torch.cat(classes)
        # Class-major order, like every other method's output.
        order = torch.argsort(cls_all, stable=True)
        x_all, cls_all = x_all[order].contiguous(), cls_all[order]
        logits = teacher.logits(x_all, device=device)
        y = torch.softmax(logits.double() / p.temperature, dim=1).float()
        meta = {
            "image_class": cls_all.tolist(),
            "teacher": {**teacher.reference(), "temperature": p.temperature},
            "label_tau": None,
            "jitter": jitter,
            "final_loss_ce": last.get("loss_ce"),
            "final_loss_bn": last.get("loss_bn"),
            "teacher_agreement": float((logits.argmax(1) == cls_all).double().mean()),
        }
        return DistilledSet(x=x_all, y=y, meta=meta)


def _pixel_range(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds ``[1, C, 1, 1]`` of valid pixels (values 0..1) in the normalised space."""
    channels = info.shape[0]
    mean = torch.tensor(info.mean or (0.0,) * channels, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std or (1.0,) * channels, dtype=torch.float32).view(1, -1, 1, 1)
    if mean.numel() != channels:
        mean, std = mean.expand(1, channels, 1, 1), std.expand(1, channels, 1, 1)
    return ((0.0 - mean) / std).to(device), ((1.0 - mean) / std).to(device)


__all__ = ["SRe2L", "SRe2LParams"]
