"""Tests of DSA augmentation: shapes, gradients, siamese sharing, reproducibility, crop exactness, errors."""

from __future__ import annotations

import pytest
import torch

from distillbench.harness.augment import DSA, FAMILIES


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def images(n: int, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random images with no exact zeros and no repeated values (so moved pixels can be traced)."""
    return torch.rand(n, channels, size, size, generator=gen(seed)) + 0.5


def is_integer_shift(out: torch.Tensor, x: torch.Tensor, max_shift: int) -> tuple[int, int] | None:
    """The (dy, dx) with |d| <= max_shift such that ``out`` is ``x`` shifted with zero fill, else None."""
    _, h, w = x.shape
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            shifted = torch.zeros_like(x)
            # out[i, j] = x[i + dy, j + dx] where that index exists, else 0.
            ys, ye = max(0, -dy), min(h, h - dy)
            xs, xe = max(0, -dx), min(w, w - dx)
            shifted[:, ys:ye, xs:xe] = x[:, ys + dy : ye + dy, xs + dx : xe + dx]
            if torch.equal(out, shifted):
                return dy, dx
    return None


class TestPerSample:
    @pytest.mark.parametrize("family", FAMILIES)
    def test_keeps_shape_and_is_differentiable(self, family: str) -> None:
        """Every family keeps [n, C, H, W] and passes a non-zero gradient back to the input."""
        x = images(6).requires_grad_(True)
        out = DSA(family).per_sample(x, gen(1))
        assert out.shape == x.shape, f"{family}: shape {tuple(out.shape)} != {tuple(x.shape)}"
        weights = torch.randn(out.shape, generator=gen(2))
        (out * weights).sum().backward()
        assert x.grad is not None, f"{family}: no gradient reached the input"
        assert x.grad.abs().sum() > 0, f"{family}: gradient w.r.t. the input is zero"

    @pytest.mark.parametrize("strategy", ["color_crop_cutout_flip_scale_rotate", "crop", "color"])
    def test_same_seed_reproduces_exactly(self, strategy: str) -> None:
        """Equally seeded generators give bit-identical outputs; another seed gives different ones."""
        x = images(8)
        aug = DSA(strategy)
        a = aug.per_sample(x, gen(7))
        b = aug.per_sample(x, gen(7))
        assert torch.equal(a, b), f"{strategy}: same seed, different outputs"
        differs = [not torch.equal(a, aug.per_sample(x, gen(s))) for s in range(8, 12)]
        assert any(differs), f"{strategy}: four other seeds all gave the seed-7 output"

    @pytest.mark.parametrize("family", FAMILIES)
    def test_parameters_drawn_per_sample(self, family: str) -> None:
        """Identical images in one batch get different transformations (evaluation-mode DSA)."""
        x = images(1, size=32).expand(32, -1, -1, -1).contiguous()
        out = DSA(family).per_sample(x, gen(3))
        distinct = {tuple(o.flatten().tolist()) for o in out}
        assert len(distinct) > 1, f"{family}: all 32 copies were transformed identically"

    def test_one_family_per_batch(self) -> None:
        """Within one call every sample gets the same family: all pixel-moving crops or all recoloured."""
        aug = DSA("color_crop")
        x = images(16, size=32)
        kinds_seen = set()
        for seed in range(12):
            out = aug.per_sample(x, gen(seed))
            # A crop only moves pixels (values stay in the input's set plus 0); color changes them.
            is_crop = [
                bool(torch.isin(o, torch.cat([xi.flatten(), torch.zeros(1)])).all())
                for o, xi in zip(out, x, strict=True)
            ]
            assert len(set(is_crop)) == 1, f"seed {seed}: families mixed within one batch: {is_crop}"
            kinds_seen.add(is_crop[0])
        assert kinds_seen == {True, False}, "12 calls never picked both families"


class TestCrop:
    @pytest.mark.parametrize(("size", "max_shift"), [(8, 1), (32, 4)])
    def test_crop_is_exact_integer_shift(self, size: int, max_shift: int) -> None:
        """Each crop output equals its input shifted by whole pixels (at most size/8) with zero fill."""
        x = images(24, size=size)
        out = DSA("crop").per_sample(x, gen(5))
        shifts = []
        for i in range(x.shape[0]):
            shift = is_integer_shift(out[i], x[i], max_shift)
            assert shift is not None, f"sample {i}: crop output is not an integer shift of <= {max_shift} px"
            shifts.append(shift)
        assert any(s != (0, 0) for s in shifts), "no sample was shifted at all"
        assert len(set(shifts)) > 1, f"all samples got the same shift {shifts[0]}"

    def test_cutout_zeroes_one_square(self) -> None:
        """Cutout leaves pixels untouched except a zeroed square of at most half the side."""
        size = 16
        x = images(12, size=size)
        out = DSA("cutout").per_sample(x, gen(6))
        for i in range(x.shape[0]):
            changed = out[i] != x[i]
            assert (out[i][changed] == 0).all(), f"sample {i}: cutout changed pixels to non-zero values"
            mask = changed.any(0)
            if not mask.any():
                continue
            rows = torch.nonzero(mask.any(1)).flatten()
            cols = torch.nonzero(mask.any(0)).flatten()
            box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all(), f"sample {i}: the zeroed region is not a rectangle"
            assert box.shape[0] <= size // 2 and box.shape[1] <= size // 2, f"sample {i}: box {box.shape}"


class TestSiamese:
    @pytest.mark.parametrize("family", FAMILIES)
    def test_same_group_same_transformation(self, family: str) -> None:
        """Two identical batches with the same groups come out identical (shared draw per group)."""
        x = images(10, size=16)
        groups = torch.arange(10) % 5
        real, syn = DSA(family).siamese([x, x.clone()], [groups, groups], 5, gen(11))
        assert torch.equal(real, syn), f"{family}: identical samples of one group were transformed differently"

    @pytest.mark.parametrize("family", FAMILIES)
    def test_batches_of_different_sizes_share_per_group(self, family: str) -> None:
        """A synthetic sample gets the transformation of the real samples of its group."""
        real = images(12, size=16)
        real_groups = torch.arange(12) % 4
        syn = real[:4].clone()  # groups 0..3, each a copy of a real sample of that group
        syn_groups = torch.arange(4)
        out_real, out_syn = DSA(family).siamese([real, syn], [real_groups, syn_groups], 4, gen(12))
        assert torch.equal(out_real[:4], out_syn), f"{family}: the synthetic batch was transformed differently"

    @pytest.mark.parametrize("family", FAMILIES)
    def test_different_groups_different_transformations(self, family: str) -> None:
        """The same image in 16 groups is not transformed identically in all of them (fixed seed)."""
        x = images(1, size=32).expand(16, -1, -1, -1).contiguous()
        (out,) = DSA(family).siamese([x], [torch.arange(16)], 16, gen(13))
        distinct = {tuple(o.flatten().tolist()) for o in out}
        assert len(distinct) > 1, f"{family}: 16 groups all got the same transformation"

    def test_mixed_strategy_shares_family_per_group(self) -> None:
        """With several families, two identical batches still match sample for sample."""
        x = images(32, size=16)
        groups = torch.arange(32) % 8
        a, b = DSA("color_crop_cutout_flip_scale_rotate").siamese([x, x.clone()], [groups, groups], 8, gen(14))
        assert torch.equal(a, b), "identical batches diverged under a mixed strategy"

    def test_same_seed_reproduces_exactly(self) -> None:
        """The same generator seed reproduces siamese outputs bit for bit."""
        x = images(8, size=16)
        groups = torch.arange(8) % 4
        aug = DSA("color_crop_cutout_flip_scale_rotate")
        (a,) = aug.siamese([x], [groups], 4, gen(15))
        (b,) = aug.siamese([x], [groups], 4, gen(15))
        assert torch.equal(a, b), "same seed, different siamese outputs"

    def test_gradient_flows_to_synthetic(self) -> None:
        """Gradients reach the synthetic batch through the siamese transformation."""
        syn = images(4, size=16).requires_grad_(True)
        (out,) = DSA("scale_rotate").siamese([syn], [torch.arange(4)], 4, gen(16))
        out.pow(2).sum().backward()
        assert syn.grad is not None and syn.grad.abs().sum() > 0, "no gradient reached the synthetic images"


class TestStrategies:
    def test_unknown_family_raises(self) -> None:
        """An unknown family is a ValueError naming it and listing the valid families."""
        with pytest.raises(ValueError) as excinfo:
            DSA("color_blur")
        message = str(excinfo.value)
        assert "blur" in message, message
        assert "valid families: " + ", ".join(FAMILIES) in message, message

    @pytest.mark.parametrize("strategy", ["none", ""])
    def test_none_is_identity(self, strategy: str) -> None:
        """``none`` (and the empty strategy) returns its input unchanged and is falsy."""
        aug = DSA(strategy)
        x = images(4)
        assert not aug
        assert torch.equal(aug.per_sample(x, gen(0)), x)
        (out,) = aug.siamese([x], [torch.zeros(4, dtype=torch.long)], 1, gen(0))
        assert torch.equal(out, x)

    def test_families_parsed_in_order(self) -> None:
        """The strategy string splits on ``_`` into its families."""
        assert DSA("crop_scale_rotate").families == ("crop", "scale", "rotate")
        assert DSA("crop")
