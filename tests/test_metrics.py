"""Group metrics: bias-aligned / conflicting / worst-group accuracy and many / medium / few-shot accuracy."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from distillbench.harness.evaluate import evaluate
from distillbench.harness.metrics import bias_metrics, is_long_tailed, shot_groups, shot_metrics
from distillbench.harness.runner import run_trial
from distillbench.harness.spec import TrialSpec
from distillbench.harness.types import DataBundle, DistilledSet, Split


def _split(labels, bias, aligned):
    y = torch.tensor(labels)
    return Split(
        torch.zeros(len(labels), 1),
        y,
        {"bias": torch.tensor(bias), "aligned": torch.tensor(aligned, dtype=torch.bool)},
    )


class TestBiasMetrics:
    def test_hand_computed_case(self):
        # Class 0: 3 aligned (bias 0) of which 2 correct, 1 conflicting (bias 1) wrong.
        # Class 1: 2 aligned (bias 1) both correct, 2 conflicting (bias 0) with 1 correct.
        split = _split([0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 1, 0, 0])
        correct = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
        m = bias_metrics(correct, split)
        assert m["acc_aligned"] == pytest.approx(4 / 5), "aligned accuracy counts the 5 aligned samples"
        assert m["acc_conflicting"] == pytest.approx(1 / 3), "conflicting accuracy counts the 3 others"
        # Groups (class, bias): (0,0) 2/3, (0,1) 0/1, (1,1) 2/2, (1,0) 1/2 -> worst 0.
        assert m["acc_worst_group"] == 0.0

    def test_worst_group_ignores_absent_groups(self):
        split = _split([0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1])
        m = bias_metrics(torch.tensor([1, 0, 1, 1], dtype=torch.bool), split)
        assert m["acc_worst_group"] == pytest.approx(0.5), "only (0,0) and (1,1) exist; (0,1) must not count as 0"
        assert math.isnan(m["acc_conflicting"]), "no conflicting sample: nan, not 0"


class TestShotGroups:
    def test_ten_classes_split_into_thirds_by_count(self):
        counts = [50, 500, 5, 200, 100, 20, 300, 10, 60, 30]
        groups = shot_groups(counts)
        assert groups == {"many": [1, 3, 6], "medium": [0, 4, 8, 9], "few": [2, 5, 7]}

    def test_many_classes_use_absolute_thresholds(self):
        counts = [500] * 30 + [50] * 40 + [5] * 30
        groups = shot_groups(counts)
        assert (len(groups["many"]), len(groups["medium"]), len(groups["few"])) == (30, 40, 30)

    def test_group_accuracy_is_mean_of_class_accuracies(self):
        counts = [9, 8, 7, 6, 5, 4]
        acc = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
        m = shot_metrics(acc, counts)
        assert m == pytest.approx({"acc_many": 0.9, "acc_medium": 0.5, "acc_few": 0.1})

    def test_long_tail_flag_follows_imbalance(self):
        assert is_long_tailed({"imbalance": 10.0}) and not is_long_tailed({}) and not is_long_tailed({"imbalance": 1})


class TestEvaluateReportsGroups:
    def test_biased_test_split_gives_bias_columns(self, digits: DataBundle, tiny_protocol):
        # Mark odd test samples as bias-conflicting with bias attribute = label + 1 (mod 10).
        n = len(digits.test)
        aligned = torch.arange(n) % 2 == 0
        bias = torch.where(aligned, digits.test.y, (digits.test.y + 1) % 10)
        test = dataclasses.replace(digits.test, groups={"bias": bias, "aligned": aligned})
        data = dataclasses.replace(digits, test=test)
        dset = DistilledSet(digits.train.x[:50], digits.train.y[:50])
        result = evaluate(dataclasses.replace(tiny_protocol, epochs=2, n_models=1), dset, data, seed=0)
        assert result.acc_aligned is not None and result.acc_conflicting is not None
        assert result.acc_worst_group <= min(result.acc_aligned, result.acc_conflicting) + 1e-12
        assert result.acc_many is None, "balanced data has no shot groups"

    def test_long_tailed_trial_row_has_shot_columns(self, tiny_protocol):
        (row,) = run_trial(TrialSpec("digits[imbalance=10]", "random", 1, protocol="tiny-test"))
        assert row["status"] == "ok", row["error"]
        for key in ("acc_many", "acc_medium", "acc_few"):
            assert row[key] is not None and 0.0 <= row[key] <= 1.0, f"{key} missing from a long-tailed row"
        assert row["acc_aligned"] is None, "unbiased data has no bias columns"
        counts = row["train_class_counts"]
        assert counts[0] > counts[-1], "imbalance=10 must make the train split long-tailed"
