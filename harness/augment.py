"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021), written for batched use.

A strategy is a ``_``-joined list of families, e.g. ``color_crop_cutout_flip_scale_rotate``. As in
the reference ("aug_mode S"), each application picks one family uniformly and applies it:

* color: brightness ``+U(-0.5, 0.5)``, then saturation ``x U(0, 2)``, then contrast ``x U(0.5, 1.5)``;
* crop: integer translation by up to 1/8 of the size, zero padding;
* cutout: a zero square of half the side length at a random centre;
* flip: horizontal flip with probability 1/2;
* scale: independent x/y scale in ``[1/1.2, 1.2]``;
* rotate: rotation by ``U(-15, 15)`` degrees.

Two ways of drawing parameters:

* :meth:`DSA.per_sample` (evaluation training): one family per batch, parameters per sample.
* :meth:`DSA.siamese` (matching-based distillation): one family and one parameter draw per *group*
  (e.g. per class), shared by every tensor passed in, so the real and the synthetic batch of a
  class see the same transformation. All groups go through one call, so a batched method needs
  one augmentation pass per iteration instead of one per class.

Every random number comes from the ``torch.Generator`` passed in. The transformations are
differentiable with respect to the images (gradients flow to synthetic samples).

Why not kornia: its augmentations replay parameters, but their parameter distributions differ from
DSA's (for example brightness is multiplicative there), and DSA's exact families are 100 lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
_SCALE = 1.2
_ROTATE_DEG = 15.0
_CROP_RATIO = 0.125
_CUTOUT_RATIO = 0.5


class FamilyGroup(NamedTuple):
    """The batches of a K-batch draw that picked one family: their parameters, concatenated, and their rows.

    ``rows`` indexes the flattened ``[K * n, ...]`` images (``None``: every batch picked this family).
    """

    family: str
    params: dict[str, torch.Tensor]
    rows: torch.Tensor | None

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> FamilyGroup:
        """The group with its tensors on ``device``."""
        params = {k: v.to(device, non_blocking=non_blocking) for k, v in self.params.items()}
        rows = self.rows.to(device, non_blocking=non_blocking) if self.rows is not None else None
        return FamilyGroup(self.family, params, rows)


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """The families of a strategy string; raises ``ValueError`` naming unknown ones."""
    parts = tuple(p for p in strategy.split("_") if p)
    unknown = [p for p in parts if p not in FAMILIES]
    if unknown or not parts:
        raise ValueError(f"unknown DSA families {unknown} in {strategy!r}; valid families: {', '.join(FAMILIES)}")
    return parts


def _uniform(n: int, generator: torch.Generator, device: torch.device, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo


def _draw(family: str, n: int, size: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """``n`` parameter draws for ``family`` on images of side ``size``."""
    if family == "color":
        return {
            "brightness": _uniform(n, generator, device, -0.5, 0.5),
            "saturation": _uniform(n, generator, device, 0.0, 2.0),
            "contrast": _uniform(n, generator, device, 0.5, 1.5),
        }
    if family == "crop":
        shift = int(size * _CROP_RATIO + 0.5)
        return {
            "tx": torch.randint(-shift, shift + 1, (n,), generator=generator, device=device),
            "ty": torch.randint(-shift, shift + 1, (n,), generator=generator, device=device),
        }
    if family == "cutout":
        half = int(size * _CUTOUT_RATIO + 0.5)
        return {
            "cx": torch.randint(0, size + (1 - half % 2), (n,), generator=generator, device=device),
            "cy": torch.randint(0, size + (1 - half % 2), (n,), generator=generator, device=device),
        }
    if family == "flip":
        return {"flip": torch.rand(n, generator=generator, device=device) < 0.5}
    if family == "scale":
        return {
            "sx": _uniform(n, generator, device, 1.0 / _SCALE, _SCALE),
            "sy": _uniform(n, generator, device, 1.0 / _SCALE, _SCALE),
        }
    if family == "rotate":
        return {"angle": _uniform(n, generator, device, -_ROTATE_DEG, _ROTATE_DEG) * math.pi / 180.0}
    raise ValueError(f"unknown DSA family {family!r}")


def _apply(family: str, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply ``family`` with per-sample parameters ``p`` (each of length ``x.shape[0]``)."""
    n, _, h, w = x.shape
    if family == "color":
        x = x + p["brightness"].view(n, 1, 1, 1)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * p["saturation"].view(n, 1, 1, 1) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * p["contrast"].view(n, 1, 1, 1) + mean
    if family == "flip":
        return torch.where(p["flip"].view(n, 1, 1, 1), x.flip(3), x)
    if family == "cutout":
        half = int(h * _CUTOUT_RATIO + 0.5)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        cy = p["cy"].view(n, 1, 1) - half // 2
        cx = p["cx"].view(n, 1, 1) - half // 2
        inside = (ys >= cy) & (ys < cy + half) & (xs >= cx) & (xs < cx + half)
        return x * (~inside).unsqueeze(1).to(x.dtype)
    # crop, scale and rotate are affine resamplings.
    zeros = torch.zeros(n, device=x.device, dtype=x.dtype)
    ones = torch.ones(n, device=x.device, dtype=x.dtype)
    if family == "crop":
        # Integer shifts expressed in normalised coordinates (align_corners=True: 2/(size-1) per pixel),
        # sampled with 'nearest' so pixels move exactly and the border fills with zeros.
        tx = p["tx"].to(x.dtype) * 2.0 / max(w - 1, 1)
        ty = p["ty"].to(x.dtype) * 2.0 / max(h - 1, 1)
        theta = torch.stack([torch.stack([ones, zeros, tx], 1), torch.stack([zeros, ones, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=True)
    if family == "scale":
        sx, sy = p["sx"].to(x.dtype), p["sy"].to(x.dtype)
        theta = torch.stack([torch.stack([sx, zeros, zeros], 1), torch.stack([zeros, sy, zeros], 1)], 1)
    elif family == "rotate":
        a = p["angle"].to(x.dtype)
        theta = torch.stack([torch.stack([a.cos(), -a.sin(), zeros], 1), torch.stack([a.sin(), a.cos(), zeros], 1)], 1)
    else:
        raise ValueError(f"unknown DSA family {family!r}")
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class DSA:
    """Differentiable Siamese Augmentation for one strategy (see the module docstring).

    Args:
        strategy: families joined by ``_``; ``""`` or ``"none"`` disables augmentation.

    Example:
        >>> aug = DSA("color_crop")
        >>> g = torch.Generator().manual_seed(0)
        >>> aug.per_sample(torch.zeros(4, 1, 8, 8), g).shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.families = () if strategy in ("", "none") else parse_strategy(strategy)

    def __bool__(self) -> bool:
        return bool(self.families)

    def _pick_family(self, generator: torch.Generator, device: torch.device) -> str:
        return self.families[int(torch.randint(len(self.families), (1,), generator=generator, device=device))]

    def per_sample(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One family for the whole batch, independent parameters for every sample."""
        if not self.families:
            return x
        family = self._pick_family(generator, generator.device)
        params = _draw(family, x.shape[0], x.shape[-1], generator, generator.device)
        return _apply(family, x, {k: v.to(x.device) for k, v in params.items()})

    def draw_per_sample(self, n: int, size: int, generator: torch.Generator) -> tuple[str, dict[str, torch.Tensor]]:
        """The family and per-sample parameters :meth:`per_sample` draws for ``n`` images of side ``size``.

        Drawing apart from applying lets a caller draw ahead (a whole epoch of batches) on the host and
        ship the draws to the device in one copy; the draws, and so the random stream, are unchanged.
        """
        family = self._pick_family(generator, generator.device)
        return family, _draw(family, n, size, generator, generator.device)

    def group_draws(self, draws: Sequence[tuple[str, dict[str, torch.Tensor]]], n: int) -> list[FamilyGroup]:
        """The K draws of :meth:`draw_per_sample` (one per batch of ``n`` rows) gathered by family, on the host.

        Args:
            draws: for batch ``k`` (rows ``k * n`` to ``(k + 1) * n`` of the flattened ``[K * n, ...]`` images),
                its family and parameters.
            n: rows per batch.

        Returns:
            One :class:`FamilyGroup` per family that some batch picked, in :attr:`families` order.
        """
        picks = [family for family, _ in draws]
        groups = []
        for family in self.families:
            members = [i for i, f in enumerate(picks) if f == family]
            if not members:
                continue
            params = {key: torch.cat([draws[i][1][key].cpu() for i in members]) for key in draws[members[0]][1]}
            rows = None
            if len(members) < len(draws):
                rows = torch.cat([torch.arange(i * n, (i + 1) * n) for i in members])
            groups.append(FamilyGroup(family, params, rows))
        return groups

    @staticmethod
    def apply_groups(x: torch.Tensor, groups: Sequence[FamilyGroup]) -> torch.Tensor:
        """Apply :meth:`group_draws`' groups (their tensors already on ``x``'s device) to ``x`` ``[K, n, ...]``."""
        flat = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
        result = flat
        for group in groups:
            if group.rows is None:
                result = _apply(group.family, flat, group.params)
            else:
                result = result.index_put((group.rows,), _apply(group.family, flat[group.rows], group.params))
        return result.view_as(x)

    def per_sample_many(self, x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """:meth:`per_sample` for K batches at once: ``x[k]`` augmented with draws from ``generators[k]``.

        Each generator draws exactly what ``per_sample(x[k], generators[k])`` would (its family, then its
        per-sample parameters), so the result equals K separate calls; but each family is applied once,
        to the rows of every batch that picked it, instead of once per batch.

        Args:
            x: ``[K, n, C, H, W]``.
            generators: K generators.

        Returns:
            ``[K, n, C, H, W]``.
        """
        if not self.families:
            return x
        n = x.shape[1]
        draws = [self.draw_per_sample(n, x.shape[-1], g) for g in generators]
        # Row indices are built on the host and copied over: no device-to-host synchronisation.
        return self.apply_groups(x, [group.to(x.device) for group in self.group_draws(draws, n)])

    def siamese(
        self,
        tensors: list[torch.Tensor],
        groups: list[torch.Tensor],
        n_groups: int,
        generator: torch.Generator,
    ) -> list[torch.Tensor]:
        """Augment several batches with one family and parameter draw per group, shared across them.

        Args:
            tensors: batches of images ``[n_i, C, H, W]`` (same C, H, W).
            groups: for each batch, the group index (``0 <= g < n_groups``) of every sample.
            n_groups: number of groups; group ``g`` gets its own family and parameters.
            generator: the randomness.

        Returns:
            The augmented batches, in the input order.
        """
        if not self.families:
            return list(tensors)
        dev = generator.device
        size = tensors[0].shape[-1]
        family_of_group = torch.randint(len(self.families), (n_groups,), generator=generator, device=dev)
        draws = {f: _draw(f, n_groups, size, generator, dev) for f in self.families}
        out = []
        for x, g in zip(tensors, groups, strict=True):
            # Family masks and indices live with the generator (the host for a CPU generator); only the
            # gathered parameters and row indices go to the images' device, so a GPU run never waits
            # for the host here. Pass ``groups`` on the generator's device to avoid a copy back.
            g_dev = g.to(dev)
            fam = family_of_group[g_dev]
            result = x
            for fi, family in enumerate(self.families):
                mask = fam == fi
                if not bool(mask.any()):
                    continue
                idx = torch.nonzero(mask, as_tuple=True)[0]
                p = {k: v[g_dev[idx]].to(x.device) for k, v in draws[family].items()}
                if bool(mask.all()):
                    result = _apply(family, x, p)
                else:
                    idx_x = idx.to(x.device)
                    result = result.index_put((idx_x,), _apply(family, x[idx_x], p))
            out.append(result)
        return out
