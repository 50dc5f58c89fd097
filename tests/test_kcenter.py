"""Tests of the ``kcenter`` coreset: hand-checkable farthest-point order, determinism, real samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import distillbench as db
from distillbench.harness.errors import ConfigError
from distillbench.harness.plugins import DATASETS
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet, Split
from distillbench.methods.kcenter import kcenter_order

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on a shared machine (conftest.py)


def make(**params: Any) -> Any:
    """``kcenter`` with ``params``."""
    return db.create_method("kcenter", **params)


def run(method: Any, data: DataBundle, ipc: int, seed: int = 0) -> DistilledSet:
    method.validate(data.info, ipc)
    return method.distill(data, ipc, Context(torch.device("cpu"), torch_generator(seed), seed))


def tiny_bundle(values: list[float], labels: list[int], num_classes: int) -> DataBundle:
    """A dataset of 1x1x1 'images' whose pixel feature is exactly the given value."""
    info = DatasetInfo("tiny", "image", num_classes, (1, 1, 1), tuple(f"c{i}" for i in range(num_classes)))
    x = torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)
    split = Split(x, torch.tensor(labels, dtype=torch.int64))
    return DataBundle(info, split, split, split)


class TestFarthestPointOrder:
    """Greedy k-center: the sample nearest the mean first, then always the farthest from the centres."""

    # Class 0: values 0, 1, 2, 10, 4 at train indices 0, 2, 4, 6, 8; class 1: 5, 6, 9, 6 at 1, 3, 5, 7.
    VALUES = [0.0, 5.0, 1.0, 6.0, 2.0, 9.0, 10.0, 6.0, 4.0]
    LABELS = [0, 1, 0, 1, 0, 1, 0, 1, 0]

    def test_pixel_kcenter_matches_hand_computation(self) -> None:
        """Picks computed by hand.

        Class 0 (mean 3.4): first 4 (|4 - 3.4| = 0.6 beats 2's 1.4). Farthest from {4}: 10 (6 > 4 for
        0). Farthest from {4, 10}: 0 (its nearest centre is 4 away; 1 is 3, 2 is 2 away). Then from
        {4, 10, 0}: 2 (2 from both 0 and 4) beats 1 (1 from 0).
        Class 1 (mean 6.5): first the 6 at index 3 (tie with the 6 at index 7: lowest position);
        farthest from {6}: 9 (3 > 1 for 5, 0 for the duplicate 6); then 5; then the duplicate.
        """
        data = tiny_bundle(self.VALUES, self.LABELS, num_classes=2)
        out = run(make(features="pixels"), data, ipc=4)
        assert out.meta["indices"] == [8, 6, 0, 4, 3, 5, 1, 7]
        assert out.x.flatten().tolist() == [4.0, 10.0, 0.0, 2.0, 6.0, 9.0, 5.0, 6.0]
        assert out.y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        assert out.meta["features"] == "pixels"

    def test_full_order_in_one_dimension(self) -> None:
        """All five picks of class 0, including the last (nearest-centre distance 1)."""
        feats = torch.tensor([[0.0], [1.0], [2.0], [10.0], [4.0]])
        assert kcenter_order(feats, 5).tolist() == [4, 3, 0, 2, 1]

    def test_two_dimensions_differs_from_nearest_to_mean(self) -> None:
        """The second pick is the farthest point, not the next-nearest to the mean.

        Points a=(0.1, 0), b=(0.2, 0), c=(-0.3, 0), d=(0, 2), e=(0, -1) have mean (0, 0.2). First: a
        (squared distance 0.05); then d (distance to a ~2.0); then e (distance to a ~1.005, to d 3),
        then c (0.4 from a) before b (0.1 from a).
        """
        feats = torch.tensor([[0.1, 0.0], [0.2, 0.0], [-0.3, 0.0], [0.0, 2.0], [0.0, -1.0]])
        assert kcenter_order(feats, 5).tolist() == [0, 3, 4, 2, 1]

    def test_duplicates_and_ties_go_to_the_lowest_position(self) -> None:
        """Identical samples: the first is nearest the mean (tie: lowest), then the lowest remaining."""
        assert kcenter_order(torch.zeros(4, 3), 4).tolist() == [0, 1, 2, 3]

    def test_too_many_picks(self) -> None:
        """Asking for more centres than samples is an error."""
        with pytest.raises(ValueError, match="cannot pick 3 centres from 2 samples"):
            kcenter_order(torch.zeros(2, 1), 3)


class TestKCenterMethod:
    """``kcenter`` as a registered method."""

    def test_too_small_class_is_a_config_error(self) -> None:
        """A class with fewer than ipc samples is named."""
        data = tiny_bundle([0.0, 1.0, 2.0], [0, 0, 1], num_classes=2)
        with pytest.raises(ConfigError, match=r"class 1 .*only 1 training samples"):
            run(make(features="pixels"), data, ipc=2)

    def test_pixels_ignore_the_seed(self) -> None:
        """With pixel features no randomness is involved: every seed gives the same coreset."""
        data = tiny_bundle(TestFarthestPointOrder.VALUES, TestFarthestPointOrder.LABELS, num_classes=2)
        assert (
            run(make(features="pixels"), data, 2, seed=0).meta["indices"]
            == run(make(features="pixels"), data, 2, seed=7).meta["indices"]
        )

    def test_trained_features_select_real_samples_deterministically(self) -> None:
        """Default (trained) features, briefly trained: real samples at the recorded indices, reproducible."""
        configured = DATASETS.resolve("digits")
        digits = configured.obj(configured.params).load(Path("."))
        method_args = {"train_epochs": 1, "net": "convnet[width=16]"}
        out = run(make(**method_args), digits, ipc=2)
        indices = torch.tensor(out.meta["indices"])
        assert torch.equal(out.x, digits.train.x[indices])
        assert torch.equal(out.y, digits.train.y[indices])
        assert out.meta["features"] == "trained"
        assert run(make(**method_args), digits, ipc=2).meta["indices"] == out.meta["indices"]
