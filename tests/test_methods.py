"""Tests of the distillation methods: conformance of every registered method, then per-method behaviour."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import distillbench as db
from distillbench.harness.checkpoint import NoCheckpoint
from distillbench.harness.errors import ConfigError, DivergedError, IncompatibleError
from distillbench.harness.networks import build_network
from distillbench.harness.plugins import DATASETS, METHODS
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet, Split
from distillbench.methods._synthetic import init_synthetic
from distillbench.methods.herding import herding_order

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on a shared machine (conftest.py)


def make_method(name: str, **overrides: Any) -> Any:
    """The method ``name`` configured with its ``test_config`` plus ``overrides`` (validated, typed)."""
    return db.create_method(name, **{**METHODS.get(name).test_config, **overrides})


def run(method: Any, data: DataBundle, ipc: int, seed: int = 0, **ctx_kwargs: Any) -> DistilledSet:
    method.validate(data.info, ipc)
    ctx = Context(torch.device("cpu"), torch_generator(seed), seed, **ctx_kwargs)
    return method.distill(data, ipc, ctx)


def tiny_bundle(values: list[float], labels: list[int], num_classes: int) -> DataBundle:
    """A dataset of 1x1x1 'images' whose pixel feature is exactly the given value."""
    info = DatasetInfo(
        name="tiny",
        modality="image",
        num_classes=num_classes,
        shape=(1, 1, 1),
        class_names=tuple(f"c{i}" for i in range(num_classes)),
    )
    x = torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)
    split = Split(x, torch.tensor(labels, dtype=torch.int64))
    return DataBundle(info, split, split, split)


class TestConformance:
    """Every registered method, with its ``test_config``, honours the method contract on digits."""

    @pytest.mark.parametrize("ipc", [1, 2])
    @pytest.mark.parametrize("name", METHODS.names())
    def test_output_contract_and_seeding(self, name: str, ipc: int, digits: DataBundle) -> None:
        """Shape, finiteness, class-balanced labels; same seed reproduces, another seed differs."""
        method = make_method(name)
        info = digits.info
        if info.modality not in method.modalities:
            pytest.skip(f"{name} does not handle {info.modality} data")
        out = run(method, digits, ipc, seed=0)

        n = method.num_samples(info, ipc)
        if n is None:  # the size depends on the data (``full``): the whole training split
            n = len(digits.train)
        assert isinstance(out, DistilledSet)
        assert out.x.shape == (n, *info.shape)
        assert bool(torch.isfinite(out.x).all())
        assert out.y.shape[0] == n
        # Soft labels (a row per sample) are checked through the class each image was made for
        # (``meta["image_class"]``, e.g. sre2l: a teacher may label an image as another class), else arg-max.
        if "image_class" in out.meta:
            hard = torch.as_tensor(out.meta["image_class"], dtype=torch.int64)
        else:
            hard = out.y.argmax(dim=1) if out.soft else out.y
        assert hard.dtype == torch.int64
        if n == ipc * info.num_classes:  # a method may document another count (num_samples)
            assert torch.bincount(hard, minlength=info.num_classes).tolist() == [ipc] * info.num_classes

        again = run(make_method(name), digits, ipc, seed=0)
        assert torch.equal(out.x, again.x)
        assert torch.equal(out.y, again.y)

        if ipc == 2 and method.uses_randomness:
            # At ipc 2 two seeds pick the same 20 samples only by a negligible chance.
            other = run(make_method(name), digits, ipc, seed=1)
            assert not torch.equal(out.x, other.x)


class TestRandomReal:
    """``random`` selects real training samples."""

    def test_selects_real_samples_with_their_labels(self, digits: DataBundle) -> None:
        """Each output sample is the training sample at the recorded index, with its own label."""
        out = run(make_method("random"), digits, ipc=3)
        indices = torch.tensor(out.meta["indices"])
        assert len(set(indices.tolist())) == len(indices)
        assert torch.equal(out.x, digits.train.x[indices])
        assert torch.equal(out.y, digits.train.y[indices])
        assert out.y.tolist() == [c for c in range(digits.info.num_classes) for _ in range(3)]

    def test_too_small_class_is_a_config_error_with_short_error(self) -> None:
        """With short=error a class with fewer than ipc samples is named, with its count and the ipc."""
        data = tiny_bundle([0.0, 1.0, 2.0], [0, 0, 1], num_classes=2)
        with pytest.raises(ConfigError, match=r"class 1 .*only 1 training samples.*ipc <= 1"):
            run(make_method("random", short="error"), data, ipc=2)

    def test_short_class_gives_all_its_samples_and_is_recorded(self) -> None:
        """Long-tailed data: by default a short class gives every sample it has, once, and meta says so."""
        data = tiny_bundle([0.0, 1.0, 2.0, 3.0], [0, 0, 0, 1], num_classes=2)
        out = run(make_method("random"), data, ipc=2)
        assert out.y.tolist() == [0, 0, 1], "class 0 gives 2 samples, the one-sample class 1 gives 1"
        assert out.meta["short_classes"] == {"1": 1}

    def test_repeat_policy_fills_short_classes_for_initialisation(self) -> None:
        """dm/dc initialise a short class from its real samples repeated up to ipc."""
        from distillbench.methods.random import random_per_class

        data = tiny_bundle([0.0, 1.0, 2.0, 3.0], [0, 0, 0, 1], num_classes=2)
        idx = random_per_class(data, 3, torch.Generator().manual_seed(0), "dm", short="repeat")
        assert data.train.y[idx].tolist() == [0, 0, 0, 1, 1, 1]
        assert sorted(idx[:3].tolist()) == [0, 1, 2], "a full class is drawn without replacement"

    def test_text_data_is_accepted(self) -> None:
        """Token-id samples are selected like images; image-only methods reject text in validate."""
        info = DatasetInfo(name="toks", modality="text", num_classes=2, shape=(5,), class_names=("a", "b"))
        x = torch.arange(40).view(8, 5)
        split = Split(x, torch.tensor([0, 1] * 4))
        data = DataBundle(info, split, split, split)
        out = run(make_method("random"), data, ipc=2)
        assert out.x.dtype == torch.int64
        assert torch.equal(out.x, x[torch.tensor(out.meta["indices"])])
        for name in ("herding", "dm"):
            with pytest.raises(IncompatibleError, match="text"):
                make_method(name).validate(info, 1)


class TestHerding:
    """``herding`` follows the class mean greedily."""

    # Class 0 has pixel values 10, 1, 0, 4 (mean 3.75) and class 1 has 5, 9, 6 (mean 6.667), interleaved.
    VALUES = [10.0, 5.0, 1.0, 9.0, 0.0, 6.0, 4.0]
    LABELS = [0, 1, 0, 1, 0, 1, 0]

    def test_pixel_herding_matches_hand_computation(self) -> None:
        """Greedy picks, computed by hand, differ from 'nearest to the mean' at the third pick.

        Class 0 (mean 3.75): pick 4 (|4 - 3.75| = 0.25); then f minimising |(4 + f)/2 - 3.75|: f = 1
        (2.5, off by 1.25; f = 0 gives 2.0, f = 10 gives 7.0); then |(5 + f)/3 - 3.75|: f = 10 (5.0,
        off by 1.25) beats f = 0 (1.67, off by 2.08), although 0 is nearer the mean than 10.
        Class 1 (mean 6.667): 6, then 9 ((6 + 9)/2 = 7.5 beats 5.5), then 5.
        """
        data = tiny_bundle(self.VALUES, self.LABELS, num_classes=2)
        out = run(make_method("herding", features="pixels"), data, ipc=3)
        # Values 4, 1, 10 of class 0 are at train indices 6, 2, 0; values 6, 9, 5 of class 1 at 5, 3, 1.
        assert out.meta["indices"] == [6, 2, 0, 5, 3, 1]
        assert out.x.flatten().tolist() == [4.0, 1.0, 10.0, 6.0, 9.0, 5.0]
        assert out.y.tolist() == [0, 0, 0, 1, 1, 1]

    def test_herding_order_in_two_dimensions(self) -> None:
        """The second pick balances the first one instead of being the next-nearest point to the mean.

        Points a=(0.1, 0), b=(0.2, 0), c=(-0.3, 0), d=(0, 0.5), e=(0, -0.5) have mean (0, 0). First
        pick: a (squared distance 0.01). Second: (a + f)/2 nearest the mean: c gives (-0.1, 0), 0.01;
        b gives (0.15, 0), 0.0225; d gives (0.05, 0.25), 0.065. So c, although b is nearer the mean.
        """
        feats = torch.tensor([[0.1, 0.0], [0.2, 0.0], [-0.3, 0.0], [0.0, 0.5], [0.0, -0.5]])
        assert herding_order(feats, 2).tolist() == [0, 2]
        assert herding_order(feats, 5).sort().values.tolist() == [0, 1, 2, 3, 4]

    def test_selects_real_samples(self, digits: DataBundle) -> None:
        """The default-feature herding (reduced training) returns real samples at the recorded indices."""
        out = run(make_method("herding"), digits, ipc=2)
        indices = torch.tensor(out.meta["indices"])
        assert torch.equal(out.x, digits.train.x[indices])
        assert torch.equal(out.y, digits.train.y[indices])


class TestDistributionMatching:
    """``dm`` optimises the synthetic images towards the real embedding means."""

    def test_loss_decreases(self, digits: DataBundle) -> None:
        """The recorded loss falls, and so does the objective measured on held-out fixed networks.

        lr_img is 10 (paper: 1) and DSA is off so that 30 iterations move the images visibly above
        the noise of the per-iteration random networks and real batches.
        """
        fractions: list[float] = []
        method = make_method("dm", iterations=30, batch_real=32, lr_img=10.0, dsa=False)
        out = run(method, digits, ipc=2, progress=lambda f, _msg: fractions.append(f))

        losses = [loss for _, loss in out.meta["loss_curve"]]
        assert len(losses) == 30 and out.meta["iterations_done"] == 30
        assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5
        assert fractions == sorted(fractions) and fractions[-1] == 1.0

        init = digits.train.x[out.meta["init_indices"]]
        net = method.params.net
        assert _dm_objective(digits, out.x, 2, net) < _dm_objective(digits, init, 2, net)

    def test_images_move_from_real_init(self, digits: DataBundle) -> None:
        """With init=real the output starts as real samples and ends elsewhere."""
        out = run(make_method("dm"), digits, ipc=1)
        init = digits.train.x[out.meta["init_indices"]]
        assert torch.equal(digits.train.y[out.meta["init_indices"]], out.y)
        assert (out.x - init).abs().max() > 1e-3

    def test_uniform_weights_equal_no_weights(self, digits: DataBundle) -> None:
        """All-equal sample weights reproduce the unweighted result up to float tolerance."""
        plain = run(make_method("dm"), digits, ipc=1)
        uniform = run(make_method("dm"), digits, ipc=1, weights=torch.full((len(digits.train),), 3.0))
        torch.testing.assert_close(uniform.x, plain.x, rtol=1e-4, atol=1e-5)

    def test_skewed_weights_change_the_result(self, digits: DataBundle) -> None:
        """Weights concentrated on a few samples per class change the synthetic images."""
        plain = run(make_method("dm"), digits, ipc=1)
        weights = torch.rand(len(digits.train), generator=torch_generator(7)) ** 8
        skewed = run(make_method("dm"), digits, ipc=1, weights=weights)
        assert (skewed.x - plain.x).abs().max() > 1e-3

    def test_divergence_raises(self, digits: DataBundle) -> None:
        """A learning rate that blows the images up ends in DivergedError, not in NaN images."""
        with pytest.raises(DivergedError, match="lr_img"):
            run(make_method("dm", lr_img=1e30), digits, ipc=1)

    def test_time_budget_stops_early(self, digits: DataBundle) -> None:
        """An exhausted time budget stops after the first iteration and says so in meta."""
        out = run(make_method("dm", iterations=1000), digits, ipc=1, time_budget_s=0.0)
        assert out.meta["iterations_done"] == 1 and out.meta["stopped_early"]
        assert math.isfinite(out.meta["final_loss"])

    @pytest.mark.parametrize(
        "spec",
        [
            "dm[iterations=0]",
            "dm[momentum=1.0]",
            "dm[batch_real=0]",
            "dm[dsa_strategy=blur]",
            "herding[train_epochs=0]",
        ],
    )
    def test_out_of_range_params_are_config_errors(self, spec: str) -> None:
        """Range checks in the parameter dataclasses surface as ConfigError naming the method."""
        with pytest.raises(ConfigError, match="invalid parameters for method"):
            METHODS.resolve(spec)

    def test_validate_rejects_too_deep_network(self, digits: DataBundle) -> None:
        """A ConvNet with more pooling blocks than 8x8 inputs allow is rejected before running."""
        configured = METHODS.resolve("dm[net=convnet[depth=5]]")
        with pytest.raises(ConfigError, match="too deep"):
            configured.obj(configured.params).validate(digits.info, 1)


def _dm_objective(data: DataBundle, x: torch.Tensor, ipc: int, net_spec: str, nets: int = 8) -> float:
    """DM's loss without sampling noise: full class means, no augmentation, fixed held-out networks."""
    total = 0.0
    with torch.no_grad():
        for k in range(nets):
            net = build_network(net_spec, data.info, torch_generator(10_000 + k))
            real = net.embed(data.train.x)
            real_means = torch.stack([real[data.train.y == c].mean(0) for c in range(data.info.num_classes)])
            syn_means = net.embed(x).view(data.info.num_classes, ipc, -1).mean(1)
            total += float(((real_means - syn_means) ** 2).sum())
    return total / nets


class _Capture(NoCheckpoint):
    """A checkpoint stand-in that keeps a copy of the synthetic set after one chosen iteration."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.syn: torch.Tensor | None = None

    def maybe_save(self, iteration: int, **objects: Any) -> bool:
        if iteration == self.at:
            self.syn = objects["syn"].detach().clone()
        return False


class TestTruncation:
    """DM stopped after n iterations is DM run for n iterations (benchmarks/bias_curve.py relies on it)."""

    @pytest.mark.parametrize("weighted", [False, True])
    def test_dm_snapshot_equals_shorter_run(self, digits: DataBundle, weighted: bool) -> None:
        weights = torch.rand(len(digits.train), generator=torch_generator(5)) if weighted else None
        capture = _Capture(at=3)
        run(make_method("dm", iterations=6), digits, ipc=2, weights=weights, checkpoint=capture)
        short = run(make_method("dm", iterations=3), digits, ipc=2, weights=weights)
        assert capture.syn is not None, "dm never reported iteration 3 to its checkpoint"
        assert torch.equal(capture.syn, short.x), (
            "the set after 3 of 6 dm iterations differs from a 3-iteration run with the same seed: something in "
            "dm's loop depends on the total iteration count, so an iteration curve would not show shorter runs"
        )


class TestEmptyClass:
    """A class without training samples stops a method that needs every class, in one line that names it."""

    @pytest.fixture
    def without_class_3(self, digits: DataBundle) -> DataBundle:
        keep = digits.train.y != 3
        train = Split(digits.train.x[keep], digits.train.y[keep], {})
        return dataclasses.replace(digits, train=train)

    @pytest.mark.parametrize("name", ["dm", "dc", "rded", "init_synthetic"])
    def test_the_error_names_method_class_and_dataset(self, without_class_3: DataBundle, name: str) -> None:
        """``init_synthetic``: the real-image start of the trajectory methods (mtt, ftd, datm, tesla)."""
        with pytest.raises(ConfigError) as info:
            if name == "init_synthetic":
                init_synthetic(without_class_3, 2, "real", torch_generator(0), "mtt")
            else:
                run(make_method(name), without_class_3, ipc=2)
        message = str(info.value)
        method = "mtt" if name == "init_synthetic" else name
        assert f"method {method!r} needs training samples of every class" in message, message
        assert "class 3 ('3') of 'digits' has none" in message, message


class TestLongTailedInit:
    """Methods that initialise from real images handle classes with fewer images than ipc."""

    def test_dm_fills_short_classes_by_repeating(self) -> None:
        configured = DATASETS.resolve("digits[imbalance=100]")
        data = configured.obj(configured.params).load(Path("."))
        counts = data.train.class_counts(10)
        assert min(counts) < 10, f"digits[imbalance=100] should have a class below 10 samples, got {counts}"
        out = run(make_method("dm", iterations=1), data, ipc=10)
        assert out.y.tolist() == [c for c in range(10) for _ in range(10)], "every class still gets ipc images"
        assert out.meta["short_classes"] == {str(c): n for c, n in enumerate(counts) if n < 10}

    def test_real_init_starts_from_the_recorded_real_images(self, digits: DataBundle) -> None:
        """With init=real and no short class, dm and dc start from the real images they record.

        One step with a tiny image learning rate leaves the images where they started, so the output
        must be those real images (a noise start would differ by about 1 everywhere).
        """
        for spec in ("dm", "dc"):
            out = run(make_method(spec, iterations=1, lr_img=1e-9, init="real"), digits, ipc=2)
            idx = torch.tensor(out.meta["init_indices"])
            assert torch.allclose(out.x, digits.train.x[idx], atol=1e-4), f"{spec} did not start from its real images"
            assert "short_classes" not in out.meta
