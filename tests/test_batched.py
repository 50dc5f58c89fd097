"""The batched evaluation engine (K models under one vmapped step) against the sequential path.

Cost control (2 CPU cores): a ConvNet of width 16 on digits (8x8), IPC 5 (one batch per epoch), so
every step is milliseconds; the two engines train the same K=3 models once for the equivalence checks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from distillbench.harness import batched
from distillbench.harness.augment import DSA
from distillbench.harness.evaluate import accuracy, evaluate, train_on_set
from distillbench.harness.plugins import DATASETS
from distillbench.harness.protocols import QUICK_V1
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import DataBundle, DistilledSet

# 50 images are one batch per epoch; lr 0.05 lets 30 such steps reach ~0.8 test accuracy (observed 0.77-0.83),
# so a broken engine (wrong labels, no step) is visible while both engines stay cheap.
PROTOCOL = dataclasses.replace(QUICK_V1, networks=("convnet[width=16]",), epochs=30, lr=0.05, n_models=3)


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    """The real digits dataset."""
    configured = DATASETS.resolve("digits")
    return configured.obj(configured.params).load(Path("."))


@pytest.fixture(scope="module")
def dset(digits: DataBundle) -> DistilledSet:
    """5 real training images per class."""
    g = torch.Generator().manual_seed(0)
    chosen = torch.cat([idx[torch.randperm(len(idx), generator=g)[:5]] for idx in digits.class_indices()])
    return DistilledSet(digits.train.x[chosen].clone(), digits.train.y[chosen].clone())


def seeds(k: int) -> list[int]:
    """The eval seeds ``evaluate`` derives for trial seed 0."""
    return [derive_seed(0, "eval", PROTOCOL.name, PROTOCOL.version, i) for i in range(k)]


@pytest.fixture(scope="module")
def both_engines(digits: DataBundle, dset: DistilledSet) -> tuple[list[nn.Module], list[nn.Module]]:
    """The K models trained sequentially and batched from the same seeds."""
    sequential = [
        train_on_set(PROTOCOL, dset, digits.info, generator=torch_generator(s), device="cpu") for s in seeds(3)
    ]
    together = batched.train_models_batched(
        PROTOCOL, dset, digits.info, generators=[torch_generator(s) for s in seeds(3)], device="cpu"
    )
    return sequential, together


class TestBatchedEquivalence:
    def test_per_sample_many_equals_separate_calls(self) -> None:
        """Augmenting K batches at once equals K ``per_sample`` calls with the same generators."""
        aug = DSA("color_crop_cutout_flip_scale_rotate")
        x = torch.rand(6, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        for trial in range(5):
            together = aug.per_sample_many(x, [torch.Generator().manual_seed(10 * trial + k) for k in range(6)])
            apart = torch.stack([aug.per_sample(x[k], torch.Generator().manual_seed(10 * trial + k)) for k in range(6)])
            assert torch.allclose(together, apart, atol=1e-6), f"trial {trial}: batched DSA differs"

    def test_same_models_as_sequential(self, both_engines: tuple[list[nn.Module], list[nn.Module]]) -> None:
        """Same initial weights, batch orders and augmentations: the trained weights agree closely.

        The engines differ only in floating-point summation order (a grouped convolution vs K plain
        ones); over 30 SGD steps that stays far below the size of a step, so parameters agree to 1e-3.
        """
        sequential, together = both_engines
        for k, (a, b) in enumerate(zip(sequential, together, strict=True)):
            for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
                assert torch.allclose(pa, pb, atol=1e-3, rtol=1e-3), f"model {k} parameter {name} differs"

    def test_accuracies_match(self, digits: DataBundle, dset: DistilledSet, monkeypatch: pytest.MonkeyPatch) -> None:
        """``evaluate`` with the batched engine gives the sequential per-model accuracies.

        With identical initial weights, batch orders and augmentations, and parameters equal to 1e-3,
        a test prediction can flip only for a sample within rounding of a decision boundary: at most a
        couple of the 360 test images, so each model's accuracy agrees within 0.01.
        """
        protocol = dataclasses.replace(PROTOCOL, n_models=2)
        monkeypatch.setenv(batched.ENGINE_ENV, "sequential")
        seq = evaluate(protocol, dset, digits, seed=0)
        monkeypatch.setenv(batched.ENGINE_ENV, "batched")
        bat = evaluate(protocol, dset, digits, seed=0)
        assert seq.acc_mean > 0.5, f"sequential engine barely learned ({seq.acc_per_model})"
        for a, b in zip(seq.acc_per_model, bat.acc_per_model, strict=True):
            assert abs(a - b) <= 0.01, f"per-model accuracies differ: {seq.acc_per_model} vs {bat.acc_per_model}"


class TestEngineChoice:
    def test_defaults_and_override(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Sequential on the CPU, batched on CUDA, unless the environment variable says otherwise."""
        monkeypatch.delenv(batched.ENGINE_ENV, raising=False)
        assert batched.eval_engine("cpu") == "sequential"
        assert batched.eval_engine("cuda") == "batched"
        monkeypatch.setenv(batched.ENGINE_ENV, "batched")
        assert batched.eval_engine("cpu") == "batched"
        monkeypatch.setenv(batched.ENGINE_ENV, "fast")
        with pytest.raises(ValueError, match="valid: sequential, batched"):
            batched.eval_engine("cpu")

    def test_batchnorm_falls_back_with_reason(
        self, digits: DataBundle, dset: DistilledSet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A batch-norm network is trained sequentially; the reason reaches the progress callback."""
        monkeypatch.setenv(batched.ENGINE_ENV, "batched")
        protocol = dataclasses.replace(PROTOCOL, networks=("convnet[width=8,norm=batchnorm]",), epochs=1, n_models=2)
        messages: list[str] = []
        result = evaluate(protocol, dset, digits, seed=0, progress=lambda f, m: messages.append(m))
        assert len(result.acc_per_model) == 2
        assert any("BatchNorm2d" in m and "training sequentially" in m for m in messages), messages


class TestBatchedDistillationMath:
    """DM's and DC's batched computations equal the reference's per-class ones on the same inputs."""

    @staticmethod
    def net_and_data(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """A width-16 ConvNet on 8x8 inputs, 4 real images of each of 10 classes and 2 synthetic ones."""
        from distillbench.harness.networks import build_network
        from distillbench.harness.types import DatasetInfo

        info = DatasetInfo("toy", "image", 10, (1, 8, 8), tuple("0123456789"))
        g = torch.Generator().manual_seed(seed)
        net = build_network("convnet[width=16]", info, g)
        return net, torch.randn(40, 1, 8, 8, generator=g), torch.randn(20, 1, 8, 8, generator=g)

    def test_dm_loss_equals_per_class_passes(self) -> None:
        """One forward per side for all classes gives the per-class loss and image gradient to 1e-5."""
        from distillbench.methods.dm import mean_embedding_loss

        net, real, syn = self.net_and_data()
        net.requires_grad_(False)
        syn_a = syn.clone().requires_grad_(True)
        with torch.no_grad():
            emb_real = net.embed(real).view(10, 4, -1)
        batched_loss = mean_embedding_loss(emb_real, net.embed(syn_a).view(10, 2, -1))
        batched_loss.backward()
        syn_b = syn.clone().requires_grad_(True)
        per_class = sum(
            ((net.embed(real[4 * c : 4 * c + 4]).mean(0) - net.embed(syn_b[2 * c : 2 * c + 2]).mean(0)) ** 2).sum()
            for c in range(10)
        )
        per_class.backward()
        assert torch.allclose(batched_loss, per_class, rtol=1e-5, atol=1e-6)
        assert torch.allclose(syn_a.grad, syn_b.grad, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize(
        ("sizes", "vmapped"),
        [((4,) * 10, True), ((4,) * 10, None), ((4,) * 9 + (3,), True)],
        ids=["vmapped", "device-default", "ragged-loop"],
    )
    def test_dc_matching_equals_per_class_distance(self, sizes: tuple[int, ...], vmapped: bool | None) -> None:
        """The batched real side (vmap, the loop, or the loop for ragged classes) gives DC's per-class distances."""
        from distillbench.methods._gradmatch import class_distance, match_all_classes

        net, real, syn = self.net_and_data(1)
        idx = [torch.arange(4 * c, 4 * c + s) for c, s in enumerate(sizes)]
        no_aug, gen = DSA("none"), torch.Generator()
        dists, grad = match_all_classes(net, real, idx, syn, 2, "ours", no_aug, gen, vmapped=vmapped)
        for c in range(10):
            syn_c = syn[2 * c : 2 * c + 2].clone().requires_grad_(True)
            expected = class_distance(net, real[idx[c]], syn_c, c, "ours", no_aug, gen)
            (g,) = torch.autograd.grad(expected, syn_c)
            assert torch.allclose(dists[c], expected.detach(), rtol=1e-5, atol=1e-6), f"class {c} distance"
            assert torch.allclose(grad[2 * c : 2 * c + 2], g, rtol=1e-4, atol=1e-6), f"class {c} image gradient"


def _flat_parameters(models: list[nn.Module]) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for m in models for p in m.parameters()])


class TestBatchedOptions:
    """The options of the batched step (issue 9's GPU remedies) keep each model's math."""

    # Batches of 16 from 50 images: several steps per epoch and a short last batch, where prefetching
    # has to line up draws and rows exactly.
    SMALL = dataclasses.replace(PROTOCOL, epochs=2, batch_size=16)

    @staticmethod
    def train(protocol: object, dset: DistilledSet, digits: DataBundle, options: str) -> list[nn.Module]:
        return batched.train_models_batched(
            protocol,
            dset,
            digits.info,
            generators=[torch_generator(s) for s in seeds(3)],
            device="cpu",
            options=batched.BatchedOptions.parse(options),
        )

    def test_parse_and_label(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Unset means prefetch only; 'none' switches all off; unknown names are errors listing the valid ones."""
        monkeypatch.delenv(batched.OPTIONS_ENV, raising=False)
        assert batched.BatchedOptions.from_env() == batched.BatchedOptions(prefetch=True)
        assert batched.BatchedOptions.parse("none").label == "none"
        both = batched.BatchedOptions.parse(" BF16 , prefetch")
        assert (both.bf16, both.prefetch, both.channels_last, both.compile) == (True, True, False, False)
        assert both.label == "prefetch,bf16"
        monkeypatch.setenv(batched.OPTIONS_ENV, "prefetch,fp8")
        with pytest.raises(ValueError, match="unknown option.*fp8.*prefetch, channels_last, bf16, compile"):
            batched.BatchedOptions.from_env()

    def test_ship_round_trip(self) -> None:
        """Tensors of mixed dtypes and shapes come back equal, in order, from the one-copy-per-dtype transfer."""
        tensors = [
            torch.arange(6).view(2, 3),
            torch.rand(4),
            torch.tensor([True, False]),
            torch.arange(3),
            torch.rand(2, 2),
        ]
        for sent, got in zip(tensors, batched._ship(tensors, torch.device("cpu")), strict=True):
            assert got.dtype == sent.dtype and torch.equal(got, sent)

    def test_prefetch_trains_the_same_models(self, digits: DataBundle, dset: DistilledSet) -> None:
        """Drawing an epoch's orders and DSA parameters ahead leaves the random stream, and so the models, identical."""
        per_step = _flat_parameters(self.train(self.SMALL, dset, digits, "none"))
        ahead = _flat_parameters(self.train(self.SMALL, dset, digits, "prefetch"))
        assert torch.equal(per_step, ahead)

    def test_channels_last_same_math(self, digits: DataBundle, dset: DistilledSet) -> None:
        """The NHWC layout changes only summation order: parameters agree to 1e-4 after 8 steps."""
        plain = _flat_parameters(self.train(self.SMALL, dset, digits, "prefetch"))
        nhwc = _flat_parameters(self.train(self.SMALL, dset, digits, "prefetch,channels_last"))
        assert torch.allclose(plain, nhwc, atol=1e-4, rtol=1e-4)

    def test_bf16_accuracy_close(
        self, digits: DataBundle, dset: DistilledSet, both_engines: tuple[list[nn.Module], list[nn.Module]]
    ) -> None:
        """bf16 autocast changes the arithmetic, not what the models learn: per-model accuracy within 0.05.

        Against the float32 batched models of the same seeds (30 steps). The bound lets 18 of the 360 test
        images flip; a broken path (wrong dtype, no step) misses it by far.
        """
        fp32 = both_engines[1]
        bf16 = self.train(PROTOCOL, dset, digits, "prefetch,bf16")
        for k, (a, b) in enumerate(zip(fp32, bf16, strict=True)):
            acc_a, _ = accuracy(a, digits.test, 10, device="cpu")
            acc_b, _ = accuracy(b, digits.test, 10, device="cpu")
            assert acc_a > 0.5, f"model {k} barely learned in float32 ({acc_a})"
            assert abs(acc_a - acc_b) <= 0.05, f"model {k}: bf16 {acc_b:.3f} vs float32 {acc_a:.3f}"

    @pytest.mark.slow
    def test_compile_same_math(self, digits: DataBundle, dset: DistilledSet) -> None:
        """torch.compile over the vmapped loss (a minute or more to compile on 2 cores) keeps the math."""
        eager = _flat_parameters(self.train(self.SMALL, dset, digits, "prefetch"))
        fused = _flat_parameters(self.train(self.SMALL, dset, digits, "prefetch,compile"))
        assert torch.allclose(eager, fused, atol=1e-3, rtol=1e-3)
