"""``rded``: realistic, diverse patches of real images picked by an observer (Sun et al., CVPR 2024, arXiv 2312.03526).

RDED ("On the Diversity and Realism of Distilled Dataset") optimises nothing. An observer, a
classifier trained on the real training split, scores random crops of real images; the crops it
finds most typical of their class are kept, ``factor x factor`` of them stitched into one image,
and the set is labelled with the observer's soft labels. Per class ``c``:

1. Draw ``mipc`` real training images of ``c`` without replacement (all of them if the class has
   fewer).
2. Cut ``num_crop`` random resized crops from each: a square covering a fraction U(0.08, 1) of the
   image's area (aspect ratio 1, side ``round(sqrt(fraction * H * W))``) at a uniform position,
   resized (bilinear, antialiased) to the cell size ``H // factor``.
3. Score every crop with the observer in eval mode: ``score = CE(observer(crop), c)``. With
   ``factor`` 1 the crop already has the input size; with ``factor > 1`` it is zero-padded, centred,
   back to the input size (zero is the dataset mean in the normalised space), as the official code
   scores its patches.
4. Keep each image's lowest-score crop, sort those ascending and keep the best ``ipc * factor**2``.
5. Stitch: image ``j`` (``j < ipc``) is a ``factor x factor`` grid whose cell ``k`` (row-major) holds
   the crop of rank ``k * ipc + j``; so the best crops fill image 0, the next best image 1, and so
   on, cell by cell. The cell size equals the crop size, so the official nearest-neighbour resize to
   the cell is the identity here and is skipped.

The labels are ``softmax(observer(x) / temperature)`` of the final images. ``meta["teacher"]`` (the
observer's cache reference with the temperature) and ``meta["image_class"]`` let the
``quick-v1-relabel`` protocol relabel every augmented batch online, as RDED's own evaluation does;
``quick-v1`` trains on the stored labels.

Parameters keep the names of the official code (github LINs-lab/RDED, ``argument.py``):
``factor`` 1 (RDED's CIFAR and Tiny ImageNet scripts; its ImageNet scripts use 2), ``num_crop`` 5 and
``mipc`` 300 (RDED's scripts; its argparse defaults differ). The observer is the shared, cached teacher of
:mod:`~distillbench.methods.teacher` (a BatchNorm ConvNet, like RDED's ``conv3`` observer), so it is
the very network the ``teacher`` / ``adsa`` label stages with the same teacher fields use.

Temperature: RDED trains its student with KL divergence at T = 20 on both the student's and the
observer's logits. Our stored labels are trained with soft cross-entropy at T = 1 on the student,
where observer labels at T = 20 are almost uniform. The default ``temperature=1`` is measured
(digits, IPC 10, seed 0, ``quick-v1``, mean of its 3 models, the default observer at 98.9%
validation accuracy): T = 1 gave 91.6% test (87.4% validation) accuracy, T = 4 86.9% (85.2%) and
T = 20 85.5% (83.1%). ``quick-v1-relabel`` relabels with the same temperature.

Differences from the official code, all deliberate:

* Images stay in the dataset's normalised space as float tensors; RDED de-normalises and saves
  8-bit JPEGs, whose rounding and compression artefacts are not reproduced.
* RDED normalises every dataset (CIFAR too) with ImageNet statistics; here each dataset's own.
* A crop side larger than the short side of a non-square image is clamped to it instead of
  retried (all image datasets here are square, where a ratio-1 crop always fits).
* On long-tailed data a class with fewer real images than ``ipc * factor**2`` also uses its
  images' second-best, third-best, ... crops (after every image's best), instead of failing;
  ``meta["short_classes"]`` records such classes and their image counts.

Sizes: ``factor`` must divide the image height and width and leave cells of at least 2 pixels
(digits 8x8: factor 1, 2 or 4; 28x28: 1, 2, 7; 32x32: 1, 2, 4, 8, 16), and ``mipc`` must be at
least ``ipc * factor**2`` (the patches one class needs). All randomness (the image draw, the crop
sizes and positions) comes from ``ctx.generator``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.errors import ConfigError
from distillbench.harness.plugins import register_method
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods.base import DistillationMethod
from distillbench.methods.teacher import TeacherOptions, get_teacher

# RandomResizedCrop's area range in the official synthesis (torchvision's default lower bound).
MIN_AREA_FRACTION = 0.08
# Crops scored per observer forward pass: bounds memory for large images (ImageNet: 1,500 crops of
# 3x224x224 per class would take 0.9 GB at once).
SCORE_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class RDEDParams(TeacherOptions):
    """RDED hyperparameters; names and defaults from the official CIFAR scripts (module docstring)."""

    temperature: float = dataclasses.field(
        default=1.0,
        metadata={"help": "softmax temperature of the observer's soft labels (1: measured best on digits; RDED: 20)"},
    )
    factor: int = dataclasses.field(
        default=1, metadata={"help": "patches per side of each image (RDED: 1 for CIFAR/Tiny, 2 for ImageNet)"}
    )
    num_crop: int = dataclasses.field(default=5, metadata={"help": "random crops scored per real image"})
    mipc: int = dataclasses.field(
        default=300, metadata={"help": "real images drawn per class (all if the class has fewer)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, got {self.factor}; use factor=1 (no stitching)")
        if self.num_crop < 1:
            raise ValueError(f"num_crop must be at least 1, got {self.num_crop}")
        if self.mipc < 1:
            raise ValueError(f"mipc must be at least 1, got {self.mipc}")


@dataclasses.dataclass(frozen=True)
class Selection:
    """The crops a class keeps, in rank order (best first).

    Attributes:
        image: row of each kept crop in the class's candidate images ``[n_keep]``.
        crop: which of that image's crops ``[n_keep]``.
        score: its score ``[n_keep]``, ascending.
        extra: how many of them are not their image's best crop (a class short of images).
    """

    image: torch.Tensor
    crop: torch.Tensor
    score: torch.Tensor
    extra: int


def keep_best(scores: torch.Tensor, count: int) -> Selection:
    """Each image's lowest-score crop, the ``count`` lowest of those, in ascending order.

    Args:
        scores: ``[n_images, num_crop]`` scores (lower is more realistic).
        count: crops to keep. If there are fewer images than that, the remaining crops of all
            images follow, in ascending order after every image's best one.

    Returns:
        The kept crops, best first.

    Raises:
        ConfigError: fewer crops than ``count`` in all.
    """
    n, k = scores.shape
    if n * k < count:
        raise ConfigError(f"{count} patches are needed, but only {n} images x {k} crops were scored; raise num_crop")
    best_score, best_crop = scores.min(dim=1)
    order = torch.argsort(best_score, stable=True)[:count]
    image, crop, score = order, best_crop[order], best_score[order]
    extra = count - image.numel()
    if extra > 0:
        rest = scores.clone()
        rest[torch.arange(n), best_crop] = math.inf
        flat = torch.argsort(rest.flatten(), stable=True)[:extra]
        image = torch.cat([image, flat // k])
        crop = torch.cat([crop, flat % k])
        score = torch.cat([score, rest.flatten()[flat]])
    return Selection(image=image, crop=crop, score=score, extra=max(extra, 0))


def sample_boxes(n: int, num_crop: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Square random-resized-crop boxes ``[n, num_crop, 3]`` (top, left, side), int64 on the CPU.

    The area fraction is U(0.08, 1), the side ``round(sqrt(fraction * height * width))`` (clamped to
    the short side), the position uniform over the places where the square fits.
    """
    dev = generator.device
    fraction = MIN_AREA_FRACTION + (1 - MIN_AREA_FRACTION) * torch.rand(
        n, num_crop, generator=generator, device=dev, dtype=torch.float64
    )
    side = torch.round(torch.sqrt(fraction * height * width)).clamp(1, min(height, width))
    # One uniform per coordinate scaled to the number of valid offsets (a vectorised randint).
    u = torch.rand(2, n, num_crop, generator=generator, device=dev, dtype=torch.float64)
    top = torch.floor(u[0] * (height - side + 1)).clamp(max=height - side)
    left = torch.floor(u[1] * (width - side + 1)).clamp(max=width - side)
    return torch.stack([top, left, side], dim=-1).long().cpu()


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cut box ``i`` out of ``images[i]`` and resize it to ``size`` (bilinear, antialiased).

    Args:
        images: ``[m, C, H, W]``.
        boxes: ``[m, 3]`` (top, left, side).
        size: output (height, width).

    Returns:
        ``[m, C, *size]``.
    """
    m, channels = images.shape[:2]
    out = images.new_empty((m, channels, *size))
    for side in boxes[:, 2].unique().tolist():
        # All crops with one side length are gathered and resized together.
        rows_of = torch.nonzero(boxes[:, 2] == side, as_tuple=True)[0]
        span = torch.arange(side)
        rows = (boxes[rows_of, 0, None] + span).to(images.device)
        cols = (boxes[rows_of, 1, None] + span).to(images.device)
        which = rows_of.to(images.device)[:, None, None]
        patch = images[which, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if (side, side) != tuple(size):
            patch = F.interpolate(patch, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[rows_of.to(images.device)] = patch
    return out


def pad_to(crops: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad ``crops`` centred to ``height x width`` (a no-op if they have that size)."""
    dh, dw = height - crops.shape[-2], width - crops.shape[-1]
    if dh == 0 and dw == 0:
        return crops
    return F.pad(crops, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=0.0)


@torch.no_grad()
def score_crops(observer: nn.Module, crops: torch.Tensor, label: int, height: int, width: int) -> torch.Tensor:
    """Cross-entropy of the observer (eval mode) on each crop, padded to the input size, for class ``label``."""
    logits = observer(pad_to(crops, height, width).float()).float()
    target = torch.full((crops.shape[0],), label, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction="none")


def stitch(patches: torch.Tensor, ipc: int, factor: int) -> torch.Tensor:
    """Tile patches (rank order) into ``ipc`` images: cell ``k`` (row-major) of image ``j`` is patch ``k * ipc + j``.

    Args:
        patches: ``[ipc * factor**2, C, h, w]``.
        ipc: images to make.
        factor: cells per side.

    Returns:
        ``[ipc, C, factor * h, factor * w]``; cells are row-major.
    """
    n, channels, h, w = patches.shape
    assert n == ipc * factor * factor, (n, ipc, factor)
    grid = patches.view(factor, factor, ipc, channels, h, w)  # (cell row, cell column, image, ...)
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(ipc, channels, factor * h, factor * w)


@register_method("rded")
class RDED(DistillationMethod):
    """RDED: the observer's most realistic crops of real images, stitched, with its soft labels."""

    name = "rded"
    Params = RDEDParams
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    test_config: ClassVar[dict[str, Any]] = {
        "mipc": 8,
        "num_crop": 2,
        "teacher_net": "convnet[norm=batchnorm,width=8]",
        "teacher_epochs": 2,
        "teacher_min_steps": 0,
    }

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        super().validate(info, ipc)
        p = self.params
        if len(info.shape) != 3:
            raise ConfigError(
                f"method 'rded' crops images [C, H, W], but dataset {info.name!r} has samples of shape {info.shape}"
            )
        _, height, width = info.shape
        if height % p.factor or width % p.factor or min(height, width) // p.factor < 2:
            fits = [f for f in range(1, min(height, width) // 2 + 1) if height % f == 0 and width % f == 0]
            raise ConfigError(
                f"method 'rded': factor={p.factor} does not tile {height}x{width} images of {info.name!r} into "
                f"cells of at least 2x2 pixels; use factor in {{{', '.join(map(str, fits))}}}"
            )
        need = ipc * p.factor**2
        if p.mipc < need:
            raise ConfigError(
                f"method 'rded': mipc={p.mipc} real images per class give fewer than the ipc * factor^2 = {need} "
                f"patches one class needs; use mipc >= {need}"
            )
        try:
            self.check_network_and_augmentation(info, p.teacher_net)
        except ConfigError as exc:
            # Name the parameter: the network's own message does not say which network of the trial failed.
            raise ConfigError(f"method 'rded': observer teacher_net={p.teacher_net!r}: {exc}") from None

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        p = self.params
        info = data.info
        device = torch.device(ctx.device)
        teacher = get_teacher(data, p.recipe(), cache_dir=ctx.cache_dir, device=device)
        observer = teacher.on(device)
        _, height, width = info.shape
        cell = (height // p.factor, width // p.factor)
        need = ipc * p.factor**2
        gen = ctx.generator
        x_train = data.train.x

        images: list[torch.Tensor] = []
        scores: list[float] = []
        sources: list[int] = []
        boxes_kept: list[list[int]] = []
        short: dict[str, int] = {}
        for c, members in enumerate(data.class_indices(required_by=self.name)):
            perm = torch.randperm(members.numel(), generator=gen, device=gen.device)[: p.mipc].cpu()
            chosen = members[perm]
            boxes = sample_boxes(chosen.numel(), p.num_crop, height, width, gen)
            flat_boxes = boxes.view(-1, 3)
            owner = torch.arange(chosen.numel()).repeat_interleave(p.num_crop)
            class_scores = torch.empty(flat_boxes.shape[0])
            for start in range(0, flat_boxes.shape[0], SCORE_CHUNK):
                part = slice(start, start + SCORE_CHUNK)
                src = x_train[chosen[owner[part]]].to(device=device, dtype=torch.float32)
                crops = crop_resize(src, flat_boxes[part], cell)
                class_scores[part] = score_crops(observer, crops, c, height, width).cpu()
            sel = keep_best(class_scores.view(chosen.numel(), p.num_crop), need)
            if sel.extra:
                short[str(c)] = int(chosen.numel())
            kept_boxes = boxes[sel.image, sel.crop]
            src = x_train[chosen[sel.image]].to(device=device, dtype=torch.float32)
            patches = crop_resize(src, kept_boxes, cell)
            images.append(stitch(patches, ipc, p.factor).cpu())
            scores.extend(sel.score.tolist())
            sources.extend(chosen[sel.image].tolist())
            boxes_kept.extend(kept_boxes.tolist())
            ctx.report((c + 1) / info.num_classes, f"rded: class {c + 1}/{info.num_classes} selected")

        x_all = torch.cat(images).contiguous()
        image_class = torch.arange(info.num_classes).repeat_interleave(ipc)
        logits = teacher.logits(x_all, device=device)
        y = torch.softmax(logits.double() / p.temperature, dim=1).float()
        meta: dict[str, Any] = {
            "image_class": image_class.tolist(),
            "teacher": {**teacher.reference(), "temperature": p.temperature},
            "label_tau": None,
            "factor": p.factor,
            # Per class, ipc * factor^2 entries in rank order (best first): rank k * ipc + j fills
            # cell k of the class's image j. Boxes are (top, left, side) in the source image.
            "patch_scores": scores,
            "patch_sources": sources,
            "patch_boxes": boxes_kept,
            "observer_agreement": float((logits.argmax(1) == image_class).double().mean()),
        }
        if short:
            meta["short_classes"] = short
        return DistilledSet(x=x_all, y=y, meta=meta)
