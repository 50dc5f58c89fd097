"""Tests of the evaluation engine on the real ``digits`` dataset with short quick-v1 variants.

Cost control (2 CPU cores): the accuracy checks share one IPC-10 evaluation (60 epochs = 60 SGD steps
per model, K=2), the full training set is trained once (one model, 20 epochs = 100 steps), and the
determinism, seed checks use a 15-epoch protocol (models well above chance, so different seeds visibly
give different models), and the progress check a 1-epoch one.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from distillbench.harness.evaluate import EvalResult, accuracy, evaluate, train_on_set
from distillbench.harness.protocols import QUICK_V1
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import DataBundle, DistilledSet, Split

CHANCE = 0.1  # digits has 10 balanced classes
# Random-real IPC-10 digits reach about 0.90 with 60 epochs here (0.82 with a ConvNet-3 on 8x8).
# 0.5 (5x chance) leaves room for platform and seed variation, yet a broken loop (labels misaligned
# with samples, no optimiser step, augmentation destroying the images) stays near 0.1-0.3 and fails it.
FAR_ABOVE_CHANCE = 0.5
ACC_PROTOCOL = dataclasses.replace(QUICK_V1, epochs=60, n_models=2)
# The full set (1,257 images, 5 batches per epoch) gets 20 epochs = 100 steps, one model, to stay cheap.
FULL_PROTOCOL = dataclasses.replace(QUICK_V1, epochs=20, n_models=1)
FULL_MARGIN = 0.03  # observed: 0.958 vs 0.900
SHORT_PROTOCOL = dataclasses.replace(QUICK_V1, epochs=15, n_models=2)
TINY_PROTOCOL = dataclasses.replace(QUICK_V1, epochs=1, n_models=2)


def random_real(data: DataBundle, ipc: int, seed: int) -> DistilledSet:
    """``ipc`` real training images per class, drawn with a seeded generator (the random baseline)."""
    generator = torch.Generator().manual_seed(seed)
    picks = [idx[torch.randperm(len(idx), generator=generator)[:ipc]] for idx in data.class_indices()]
    chosen = torch.cat(picks)
    return DistilledSet(data.train.x[chosen].clone(), data.train.y[chosen].clone(), meta={"ipc": ipc})


@pytest.fixture(scope="module")
def ipc10(digits: DataBundle) -> DistilledSet:
    """A random-real IPC-10 set (100 images)."""
    return random_real(digits, 10, seed=0)


@pytest.fixture(scope="module")
def ipc10_result(digits: DataBundle, ipc10: DistilledSet) -> EvalResult:
    """The IPC-10 set evaluated under ``ACC_PROTOCOL`` with trial seed 0 (shared by several tests)."""
    return evaluate(ACC_PROTOCOL, ipc10, digits, seed=0)


@pytest.fixture(scope="module")
def short_result(digits: DataBundle, ipc10: DistilledSet) -> EvalResult:
    """The IPC-10 set evaluated under ``SHORT_PROTOCOL`` with trial seed 3."""
    return evaluate(SHORT_PROTOCOL, ipc10, digits, seed=3)


class TestAccuracyLevels:
    def test_ipc10_set_is_balanced(self, ipc10: DistilledSet) -> None:
        """The random-real set has exactly 10 images of each of the 10 classes."""
        assert torch.bincount(ipc10.y, minlength=10).tolist() == [10] * 10

    def test_ipc10_far_above_chance(self, ipc10_result: EvalResult) -> None:
        """Every model trained on 10 real images per class scores far above chance on the test split."""
        for k, acc in enumerate(ipc10_result.acc_per_model):
            assert acc > FAR_ABOVE_CHANCE, (
                f"model {k}: test accuracy {acc:.3f} <= {FAR_ABOVE_CHANCE} (chance {CHANCE}); "
                f"all models: {ipc10_result.acc_per_model}"
            )

    def test_full_train_set_beats_ipc10(self, digits: DataBundle, ipc10_result: EvalResult) -> None:
        """Training on all 1,257 training images (100 SGD steps) beats IPC-10 (60 steps) clearly."""
        full = evaluate(FULL_PROTOCOL, DistilledSet(digits.train.x, digits.train.y), digits, seed=0)
        assert full.acc_mean > ipc10_result.acc_mean + FULL_MARGIN, (
            f"full train set {full.acc_mean:.3f} is not above IPC-10 {ipc10_result.acc_mean:.3f} + {FULL_MARGIN}"
        )

    def test_result_fields(self, ipc10_result: EvalResult) -> None:
        """The result names the network, has K accuracies in [0, 1] and a positive wall time."""
        assert ipc10_result.network == ACC_PROTOCOL.network
        assert len(ipc10_result.acc_per_model) == ACC_PROTOCOL.n_models
        assert all(0.0 <= a <= 1.0 for a in ipc10_result.acc_per_model), ipc10_result.acc_per_model
        assert ipc10_result.seconds > 0

    def test_validation_accuracy_reported(self, ipc10_result: EvalResult) -> None:
        """Each model's validation-split accuracy is reported and, like test accuracy, far above chance."""
        val = ipc10_result.val_acc_per_model
        assert len(val) == ACC_PROTOCOL.n_models, f"expected {ACC_PROTOCOL.n_models} val accuracies, got {val}"
        assert all(FAR_ABOVE_CHANCE < v <= 1.0 for v in val), f"validation accuracies {val}"
        assert ipc10_result.val_acc_mean == pytest.approx(sum(val) / len(val))
        # 180 val images: accuracies are multiples of 1/180.
        assert all(abs(v * 180 - round(v * 180)) < 1e-9 for v in val), f"{val} are not counts over 180 images"


class TestPerClass:
    def test_length_and_range(self, ipc10_result: EvalResult) -> None:
        """There is one per-class accuracy per class, each in [0, 1]."""
        per_class = ipc10_result.acc_per_class
        assert len(per_class) == 10, f"expected 10 per-class accuracies, got {len(per_class)}"
        assert all(0.0 <= a <= 1.0 for a in per_class), per_class

    def test_consistent_with_overall(self, digits: DataBundle, ipc10_result: EvalResult) -> None:
        """Class-size-weighted per-class accuracy equals overall accuracy; the plain mean is close.

        The stratified test split has 35-37 images per class, so the unweighted mean may differ from the
        overall accuracy by a little, the weighted one not at all.
        """
        counts = digits.test.class_counts(10)
        per_class = ipc10_result.acc_per_class
        weighted = sum(a * n for a, n in zip(per_class, counts, strict=True)) / sum(counts)
        assert weighted == pytest.approx(ipc10_result.acc_mean, abs=1e-9), (
            f"weighted per-class {weighted:.6f} != overall {ipc10_result.acc_mean:.6f}"
        )
        assert sum(per_class) / 10 == pytest.approx(ipc10_result.acc_mean, abs=0.02)


class TestAccuracyFunction:
    class ConstantModel(nn.Module):
        """Predicts ``label`` for every input."""

        def __init__(self, label: int, num_classes: int) -> None:
            super().__init__()
            self.label, self.num_classes = label, num_classes

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], self.num_classes)
            logits[:, self.label] = 1.0
            return logits

    def test_exact_counts_across_batches(self) -> None:
        """A model that always says class 1 scores the share of class 1, per class [0, 1, 0, nan]."""
        y = torch.tensor([0, 1, 1, 2, 1, 0, 2])
        split = Split(torch.zeros(7, 1, 2, 2), y)
        overall, per_class = accuracy(self.ConstantModel(1, 4), split, 4, device="cpu", batch_size=3)
        assert overall == pytest.approx(3 / 7)
        assert per_class[:3] == [0.0, 1.0, 0.0]
        assert math.isnan(per_class[3]), "a class without test samples should be nan"

    def test_empty_split(self) -> None:
        """An empty split gives nan overall and per class instead of dividing by zero."""
        split = Split(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))
        overall, per_class = accuracy(self.ConstantModel(0, 3), split, 3, device="cpu")
        assert math.isnan(overall) and all(math.isnan(a) for a in per_class)


class TestDeterminism:
    def test_same_seed_identical(self, digits: DataBundle, ipc10: DistilledSet, short_result: EvalResult) -> None:
        """The same trial seed gives identical accuracies, whatever the global RNG state is."""
        with torch.random.fork_rng():
            torch.manual_seed(12345)  # the fixture ran with another global state
            again = evaluate(SHORT_PROTOCOL, ipc10, digits, seed=3)
        assert again.acc_per_model == short_result.acc_per_model, (
            f"{again.acc_per_model} != {short_result.acc_per_model}"
        )
        assert again.val_acc_per_model == short_result.val_acc_per_model
        assert again.acc_per_class == short_result.acc_per_class

    def test_different_seeds_differ(self, digits: DataBundle, ipc10: DistilledSet, short_result: EvalResult) -> None:
        """Another trial seed gives other models and therefore other accuracies."""
        other = evaluate(SHORT_PROTOCOL, ipc10, digits, seed=4)
        assert other.acc_per_model != short_result.acc_per_model, f"seeds 3 and 4 both gave {other.acc_per_model}"

    def test_model_k_uses_derived_seed(self, digits: DataBundle, ipc10: DistilledSet, short_result: EvalResult) -> None:
        """Model k is ``train_on_set`` with ``derive_seed(seed, 'eval', name, version, k)``; the K models differ."""
        for k in range(SHORT_PROTOCOL.n_models):
            seed_k = derive_seed(3, "eval", SHORT_PROTOCOL.name, SHORT_PROTOCOL.version, k)
            model = train_on_set(SHORT_PROTOCOL, ipc10, digits.info, generator=torch_generator(seed_k), device="cpu")
            assert not model.training, "train_on_set must return the model in eval mode"
            acc, _ = accuracy(model, digits.test, 10, device="cpu")
            assert acc == short_result.acc_per_model[k], (
                f"model {k}: {acc} != evaluate's {short_result.acc_per_model[k]}"
            )
        first, second = short_result.acc_per_model
        assert first != second, f"models 0 and 1 both scored {first}: were they trained from one seed?"

    def test_progress_called_after_each_model(self, digits: DataBundle, ipc10: DistilledSet) -> None:
        """``progress`` gets fractions 1/K, ..., 1 and a message per model."""
        calls: list[tuple[float, str]] = []
        evaluate(TINY_PROTOCOL, ipc10, digits, seed=0, progress=lambda f, m: calls.append((f, m)))
        assert [f for f, _ in calls] == [0.5, 1.0], calls
        assert all("model" in m for _, m in calls), calls


class TestSoftLabels:
    def test_one_hot_soft_matches_hard(self, digits: DataBundle, ipc10: DistilledSet, ipc10_result: EvalResult) -> None:
        """One-hot soft labels (soft cross-entropy) train like hard labels (cross-entropy).

        Both losses are equal for one-hot targets and the random streams are the same, so only float
        rounding separates the runs; 0.02 allows a few test images (of 360) to flip.
        """
        onehot = nn.functional.one_hot(ipc10.y, 10).float()
        soft = DistilledSet(ipc10.x, onehot)
        assert soft.soft
        result = evaluate(ACC_PROTOCOL, soft, digits, seed=0)
        for k, (s, h) in enumerate(zip(result.acc_per_model, ipc10_result.acc_per_model, strict=True)):
            assert s == pytest.approx(h, abs=0.02), f"model {k}: soft {s:.4f} vs hard {h:.4f}"


class TestInputValidation:
    def test_shape_mismatch(self, digits: DataBundle) -> None:
        """Samples of the wrong shape raise ValueError naming both shapes."""
        bad = DistilledSet(torch.zeros(4, 1, 16, 16), torch.arange(4))
        with pytest.raises(ValueError) as excinfo:
            evaluate(TINY_PROTOCOL, bad, digits, seed=0)
        message = str(excinfo.value)
        assert "(1, 16, 16)" in message and "(1, 8, 8)" in message, message

    def test_soft_label_width_mismatch(self, digits: DataBundle) -> None:
        """Soft labels with the wrong number of columns raise ValueError naming both counts."""
        bad = DistilledSet(torch.zeros(4, 1, 8, 8), torch.full((4, 5), 0.2))
        with pytest.raises(ValueError, match=r"5 columns.*10 classes"):
            evaluate(TINY_PROTOCOL, bad, digits, seed=0)

    def test_hard_label_out_of_range(self, digits: DataBundle) -> None:
        """Hard labels outside [0, C) raise ValueError naming the valid range."""
        bad = DistilledSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 10]))
        with pytest.raises(ValueError, match=r"\[0, 9\]"):
            evaluate(TINY_PROTOCOL, bad, digits, seed=0)

    def test_label_count_mismatch(self, digits: DataBundle) -> None:
        """A different number of labels and samples raises ValueError."""
        bad = DistilledSet(torch.zeros(3, 1, 8, 8), torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="3 samples but 2 labels"):
            evaluate(TINY_PROTOCOL, bad, digits, seed=0)

    def test_unknown_augmentation(self, digits: DataBundle, ipc10: DistilledSet) -> None:
        """A protocol with an unknown ``augment`` value is refused with the valid values."""
        protocol = dataclasses.replace(TINY_PROTOCOL, augment="mixup")
        with pytest.raises(ValueError, match="'mixup'.*dsa, none"):
            evaluate(protocol, ipc10, digits, seed=0)


class TestSideEffects:
    def test_set_left_untouched(self, digits: DataBundle, ipc10: DistilledSet) -> None:
        """A set that still requires grad gets no ``.grad`` and keeps its values (evaluation detaches it)."""
        x = ipc10.x.clone().requires_grad_(True)
        y = nn.functional.one_hot(ipc10.y, 10).float().requires_grad_(True)
        before_x, before_y = x.detach().clone(), y.detach().clone()
        evaluate(TINY_PROTOCOL, DistilledSet(x, y), digits, seed=0)
        assert x.grad is None and y.grad is None, "evaluation back-propagated into the distilled set"
        assert torch.equal(x.detach(), before_x) and torch.equal(y.detach(), before_y), "the set was modified"


class TestEvalResultStats:
    def test_mean_and_population_std(self) -> None:
        """``acc_std`` is the population std (ddof=0), as ``np.std`` in the reference code."""
        result = EvalResult("convnet", [0.5, 0.7, 0.9], [0.7] * 10, [0.4, 0.6, 0.8], 1.0)
        assert result.acc_mean == pytest.approx(0.7)
        assert result.acc_std == pytest.approx(math.sqrt(((0.2**2) * 2) / 3))
        assert result.val_acc_mean == pytest.approx(0.6)
