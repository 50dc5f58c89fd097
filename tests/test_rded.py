"""Tests of ``rded``: which crops it keeps, how it stitches them, its labels, seeding and validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import distillbench as db
import distillbench.methods.rded as rded
from distillbench.harness.errors import ConfigError, IncompatibleError
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet, Split
from distillbench.methods.teacher import get_teacher
from tests import test_methods

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on a shared machine (conftest.py)


def make(**overrides: Any) -> Any:
    """``rded`` with its ``test_config`` plus ``overrides``, validated as a grid spec would be."""
    return db.create_method("rded", **{**rded.RDED.test_config, **overrides})


def run(method: Any, data: DataBundle, ipc: int, seed: int = 0) -> DistilledSet:
    method.validate(data.info, ipc)
    return method.distill(data, ipc, Context(torch.device("cpu"), torch_generator(seed), seed))


def observer_of(method: Any, data: DataBundle) -> torch.nn.Module:
    """The cached observer the method used (same recipe, same data: the in-process memo)."""
    return get_teacher(data, method.params.recipe()).model


def recrop(data: DataBundle, out: DistilledSet, factor: int) -> torch.Tensor:
    """Every recorded patch cut again from its source image with its recorded box, in rank order."""
    _, height, width = data.info.shape
    src = data.train.x[torch.tensor(out.meta["patch_sources"])].float()
    boxes = torch.tensor(out.meta["patch_boxes"])
    return rded.crop_resize(src, boxes, (height // factor, width // factor))


class TestPatchSelection:
    """The kept crops are the observer's most realistic ones: lowest cross-entropy, one per image."""

    def test_keep_best_takes_each_images_minimum_then_the_lowest(self) -> None:
        """Per image the lowest-score crop; across images the ``count`` lowest of those, ascending."""
        scores = torch.tensor([[3.0, 0.5, 2.0], [0.1, 4.0, 5.0], [9.0, 8.0, 0.9], [0.3, 0.2, 7.0]])
        sel = rded.keep_best(scores, 3)
        assert sel.image.tolist() == [1, 3, 0]
        assert sel.crop.tolist() == [0, 1, 1]
        assert sel.score.tolist() == pytest.approx([0.1, 0.2, 0.5])
        assert sel.extra == 0

    def test_short_class_uses_second_best_crops_after_all_best_ones(self) -> None:
        """Long-tailed data: with fewer images than patches needed, next-best crops follow every best one."""
        scores = torch.tensor([[0.4, 0.6, 0.5], [0.9, 0.1, 0.2]])
        sel = rded.keep_best(scores, 4)
        assert list(zip(sel.image.tolist(), sel.crop.tolist(), strict=True)) == [(1, 1), (0, 0), (1, 2), (0, 2)]
        assert sel.extra == 2
        with pytest.raises(ConfigError, match="raise num_crop"):
            rded.keep_best(scores, 7)

    def test_recorded_scores_are_sorted_per_image_minima_of_the_observer(
        self, digits: DataBundle, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Per class the recorded scores ascend, are the smallest per-image minima, and are the observer's CE.

        The score matrices the method computed are captured on their way into ``keep_best``; the
        recorded patches are then cut again from their sources and scored independently.
        """
        captured: list[torch.Tensor] = []
        real_keep_best = rded.keep_best

        def spy(scores: torch.Tensor, count: int) -> rded.Selection:
            captured.append(scores.clone())
            return real_keep_best(scores, count)

        monkeypatch.setattr(rded, "keep_best", spy)
        ipc, method = 2, make(mipc=12, num_crop=4)
        out = run(method, digits, ipc)
        per_class = ipc  # factor 1: one patch per image
        recorded = torch.tensor(out.meta["patch_scores"]).view(digits.info.num_classes, per_class)
        sources = torch.tensor(out.meta["patch_sources"]).view(digits.info.num_classes, per_class)
        assert len(captured) == digits.info.num_classes
        for c, scores in enumerate(captured):
            assert scores.shape == (12, 4)
            assert bool((recorded[c][1:] >= recorded[c][:-1]).all()), "rank order is ascending CE"
            minima = scores.min(dim=1).values.sort().values
            assert recorded[c].tolist() == pytest.approx(minima[:per_class].tolist())
            assert len(set(sources[c].tolist())) == per_class, "at most one crop per real image"
            assert bool((digits.train.y[sources[c]] == c).all())

        # Independent re-scoring: cut each recorded box again and ask the observer.
        observer = observer_of(method, digits)
        crops = recrop(digits, out, factor=1)
        target = torch.tensor(out.meta["image_class"])
        with torch.no_grad():
            ce = F.cross_entropy(observer(crops), target, reduction="none")
        assert ce.tolist() == pytest.approx(out.meta["patch_scores"], rel=1e-4, abs=1e-6)
        assert torch.allclose(out.x, crops), "with factor 1 an image is its patch"

    def test_boxes_are_square_crops_of_at_least_8_percent_inside_the_image(self) -> None:
        """Random resized crops: aspect ratio 1, area fraction in [0.08, 1], always inside the image."""
        boxes = rded.sample_boxes(500, 5, 32, 32, torch_generator(3)).view(-1, 3)
        top, left, side = boxes.unbind(1)
        assert int(side.min()) >= round(math.sqrt(0.08 * 32 * 32)) and int(side.max()) <= 32
        assert bool((top >= 0).all() and (left >= 0).all())
        assert bool((top + side <= 32).all() and (left + side <= 32).all())
        assert int(side.max()) >= 31 and int(side.min()) <= 10, "the area fraction spans its range"


class TestStitching:
    """With ``factor`` > 1 an image is a grid of patches: cell k of image j holds the patch of rank k*ipc + j."""

    def test_stitch_layout_on_labelled_patches(self) -> None:
        """Patches filled with their rank land in row-major cells: image j, cell (r, s) = (2r + s)*ipc + j."""
        ipc, factor = 3, 2
        ranks = torch.arange(ipc * factor**2, dtype=torch.float32)
        patches = ranks.view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
        images = rded.stitch(patches, ipc, factor)
        assert images.shape == (ipc, 1, 8, 8)
        for j in range(ipc):
            for r in range(factor):
                for s in range(factor):
                    cell = images[j, 0, 4 * r : 4 * r + 4, 4 * s : 4 * s + 4]
                    assert bool((cell == (r * factor + s) * ipc + j).all()), (j, r, s)

    def test_digits_images_are_their_recorded_patches_in_grid_order(self, digits: DataBundle) -> None:
        """End to end on digits (factor 2): each 4x4 cell equals its recorded patch cut again from the source."""
        ipc, factor = 3, 2
        out = run(make(factor=factor, mipc=20), digits, ipc)
        assert out.meta["factor"] == factor
        patches = recrop(digits, out, factor)  # class-major, rank order
        per_class = ipc * factor**2
        for c in range(digits.info.num_classes):
            for j in range(ipc):
                image = out.x[c * ipc + j, 0]
                for k in range(factor**2):
                    r, s = divmod(k, factor)
                    expected = patches[c * per_class + k * ipc + j, 0]
                    assert torch.equal(image[4 * r : 4 * r + 4, 4 * s : 4 * s + 4], expected), (c, j, k)
        scores = torch.tensor(out.meta["patch_scores"]).view(-1, per_class)
        assert bool((scores[:, 1:] >= scores[:, :-1]).all())


class TestLabelsAndSeeding:
    """Labels are the observer's tempered softmax; a seed fixes the whole set."""

    @pytest.mark.parametrize("temperature", [1.0, 4.0])
    def test_soft_labels_are_the_observers_softmax(self, digits: DataBundle, temperature: float) -> None:
        """``y = softmax(observer(x) / T)``; meta names the observer, T and each image's class."""
        method = make(temperature=temperature)
        out = run(method, digits, 2)
        observer = observer_of(method, digits)
        with torch.no_grad():
            expected = torch.softmax(observer(out.x).double() / temperature, dim=1).float()
        assert out.y.shape == (20, 10)
        assert torch.allclose(out.y, expected, atol=1e-6)
        assert out.meta["image_class"] == [c for c in range(10) for _ in range(2)]
        assert out.meta["teacher"]["temperature"] == temperature
        assert out.meta["teacher"]["net"] == method.params.teacher_net

    def test_online_relabelling_reproduces_the_stored_labels(self, digits: DataBundle) -> None:
        """``quick-v1-relabel`` finds the observer through meta and labels the set's own images as stored."""
        from distillbench.methods.relabel import online_relabeler

        out = run(make(temperature=4.0), digits, 1)
        relabel = online_relabeler(out, digits.info, torch.device("cpu"))
        assert torch.allclose(relabel(out.x), out.y, atol=1e-6)

    def test_same_seed_same_set_other_seed_other_set(self, digits: DataBundle) -> None:
        """Images, labels and the recorded patches depend only on the seed (ctx.generator)."""
        a, b = run(make(factor=2, mipc=12), digits, 2, seed=5), run(make(factor=2, mipc=12), digits, 2, seed=5)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert a.meta == b.meta
        other = run(make(factor=2, mipc=12), digits, 2, seed=6)
        assert not torch.equal(a.x, other.x)

    def test_conformance_contract(self, digits: DataBundle) -> None:
        """The conformance test of tests/test_methods.py, run for rded (it lists only built-in methods)."""
        for ipc in (1, 2):
            test_methods.TestConformance().test_output_contract_and_seeding("rded", ipc, digits)


class TestValidation:
    """Bad settings fail before any training, with a one-line message that says what to use."""

    def test_too_deep_observer_for_digits(self, digits: DataBundle) -> None:
        """A ConvNet-5 observer cannot take 8x8 digits: validation names the depth and the fix."""
        method = make(teacher_net="convnet[depth=5]")
        expected = r"'rded': observer teacher_net='convnet\[depth=5\]': convnet depth 5 is too deep for 8x8.*depth <= 3"
        with pytest.raises(ConfigError, match=expected):
            method.validate(digits.info, 1)

    def test_factor_must_tile_the_image(self, digits: DataBundle) -> None:
        """factor 3 does not divide 8, factor 8 leaves 1-pixel cells; the message lists the factors that fit."""
        for factor in (3, 8):
            with pytest.raises(ConfigError, match=r"use factor in \{1, 2, 4\}"):
                make(factor=factor, mipc=300).validate(digits.info, 1)
        make(factor=4, mipc=300).validate(digits.info, 1)

    def test_mipc_must_cover_the_patches_of_a_class(self, digits: DataBundle) -> None:
        """ipc 3 at factor 2 needs 12 patches per class, so 12 real images per class at least."""
        with pytest.raises(ConfigError, match=r"mipc=8 .* 12 patches .* use mipc >= 12"):
            make(factor=2, mipc=8).validate(digits.info, 3)

    @pytest.mark.parametrize("key", ["factor", "num_crop", "mipc"])
    def test_counts_must_be_positive(self, key: str) -> None:
        """factor, num_crop and mipc below 1 are rejected when the spec is resolved."""
        with pytest.raises(ConfigError, match=f"{key} must be at least 1"):
            make(**{key: 0})

    def test_text_data_is_incompatible(self) -> None:
        """rded crops images; a text dataset fails validation naming the modality."""
        info = DatasetInfo(name="toks", modality="text", num_classes=2, shape=(5,), class_names=("a", "b"))
        with pytest.raises(IncompatibleError, match="text"):
            make().validate(info, 1)

    def test_short_class_is_filled_and_recorded(self) -> None:
        """A class with fewer real images than patches uses more crops per image and says so in meta."""
        info = DatasetInfo(name="toy", modality="image", num_classes=2, shape=(1, 8, 8), class_names=("a", "b"))
        gen = torch_generator(0)
        x = torch.randn(12, 1, 8, 8, generator=gen)
        y = torch.tensor([0] * 10 + [1] * 2)
        split = Split(x, y)
        data = DataBundle(info, split, split, split)
        out = run(make(mipc=10, num_crop=3), data, 3)
        assert out.x.shape == (6, 1, 8, 8)
        assert out.meta["short_classes"] == {"1": 2}
