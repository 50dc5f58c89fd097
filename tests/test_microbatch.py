"""CPU micro-batches (harness/microbatch.py): the split computation equals the whole-batch one.

Digits batches are too small for ``auto`` to split them, so the equivalence tests force a split with
``DISTILLBENCH_MICROBATCH=<n>`` and compare against ``off`` from the same seeds.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from distillbench.harness import compiled, microbatch
from distillbench.harness.augment import DSA
from distillbench.harness.errors import ConfigError
from distillbench.harness.evaluate import train_on_set
from distillbench.harness.networks import build_network
from distillbench.harness.plugins import METHODS
from distillbench.harness.protocols import QUICK_V1
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods._gradmatch import real_class_gradients, train_on_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

PROTOCOL = dataclasses.replace(QUICK_V1, networks=("convnet[width=16]",), epochs=4, lr=0.05, n_models=1)
MNIST_SHAPED = DatasetInfo("mnist-shaped", "image", 10, (1, 28, 28), tuple(map(str, range(10))))


@pytest.fixture(scope="module")
def dset(digits: DataBundle) -> DistilledSet:
    """10 real training images per class: one batch of 100 per epoch."""
    g = torch.Generator().manual_seed(0)
    chosen = torch.cat([idx[torch.randperm(len(idx), generator=g)[:10]] for idx in digits.class_indices()])
    return DistilledSet(digits.train.x[chosen].clone(), digits.train.y[chosen].clone())


def assert_same_parameters(a: nn.Module, b: nn.Module, what: str) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), (
            f"{what}: parameter {name} differs between whole batches and micro-batches "
            f"(max abs difference {(p - q).abs().max().item():.2e})"
        )


class TestSameMath:
    def test_eval_training_hard_labels(
        self, digits: DataBundle, dset: DistilledSet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        models = {}
        for setting in ("off", "7"):
            monkeypatch.setenv(microbatch.MICROBATCH_ENV, setting)
            models[setting] = train_on_set(PROTOCOL, dset, digits.info, generator=torch_generator(3), device="cpu")
        assert_same_parameters(models["off"], models["7"], "train_on_set, hard labels")

    def test_eval_training_soft_labels(
        self, digits: DataBundle, dset: DistilledSet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        soft = DistilledSet(dset.x, torch.softmax(torch.randn(len(dset), 10, generator=torch_generator(1)), 1))
        models = {}
        for setting in ("off", "9"):
            monkeypatch.setenv(microbatch.MICROBATCH_ENV, setting)
            models[setting] = train_on_set(PROTOCOL, soft, digits.info, generator=torch_generator(3), device="cpu")
        assert_same_parameters(models["off"], models["9"], "train_on_set, soft labels")

    def test_dm_real_side(self, digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
        configured = METHODS.resolve("dm[iterations=5,batch_real=16,net=convnet[width=16]]")
        sets = {}
        for setting in ("off", "5"):
            monkeypatch.setenv(microbatch.MICROBATCH_ENV, setting)
            method = configured.obj(configured.params)
            sets[setting] = method.distill(digits, 2, Context(torch.device("cpu"), torch_generator(0), 0)).x
        assert torch.allclose(sets["off"], sets["5"], rtol=1e-4, atol=1e-5), (
            "dm: the synthetic set differs when the real side runs in micro-batches "
            f"(max abs difference {(sets['off'] - sets['5']).abs().max().item():.2e})"
        )

    @pytest.mark.parametrize("weighting", ["none", "skewed", "all-zero"])
    def test_dc_real_gradients(self, digits: DataBundle, monkeypatch: pytest.MonkeyPatch, weighting: str) -> None:
        net = build_network("convnet[width=16]", digits.info, torch_generator(0))
        real = [digits.train.x[idx[:12]] for idx in digits.class_indices()[:3]]
        weights = None
        if weighting != "none":
            g = torch_generator(2)
            weights = [torch.rand(12, generator=g) ** 3 for _ in real]
            if weighting == "all-zero":
                weights[1] = torch.zeros(12)  # falls back to the plain mean, whole or split
        grads = {}
        for setting in ("off", "5"):
            monkeypatch.setenv(microbatch.MICROBATCH_ENV, setting)
            grads[setting] = real_class_gradients(net, real, [0, 1, 2], weights, vmapped=False)
        for c, (whole, split) in enumerate(zip(grads["off"], grads["5"], strict=True)):
            for g_whole, g_split in zip(whole, split, strict=True):
                assert torch.allclose(g_whole, g_split, rtol=1e-4, atol=1e-6), (
                    f"dc real gradient of class {c} ({weighting} weights) differs in micro-batches"
                )

    def test_dc_inner_loop(self, digits: DataBundle, dset: DistilledSet, monkeypatch: pytest.MonkeyPatch) -> None:
        nets = {}
        for setting in ("off", "6"):
            monkeypatch.setenv(microbatch.MICROBATCH_ENV, setting)
            net = build_network("convnet[width=16]", digits.info, torch_generator(0))
            opt = torch.optim.SGD(net.parameters(), lr=0.01)
            train_on_synthetic(net, opt, dset.x, dset.y, 3, 64, DSA("none"), torch_generator(4))
            nets[setting] = net
        assert_same_parameters(nets["off"], nets["6"], "dc inner loop")


class TestWhenItSplits:
    def test_auto_splits_large_cpu_batches_into_cache_sized_pieces(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(microbatch.MICROBATCH_ENV, raising=False)
        net = build_network("convnet", MNIST_SHAPED, torch_generator(0))  # width 128: 512 KiB per sample
        x = torch.zeros(100, 1, 28, 28)
        assert microbatch.largest_activation_bytes(net, x) == 128 * 32 * 32 * 4
        assert microbatch.chunk_size(net, x) == microbatch.TARGET_BYTES // (128 * 32 * 32 * 4)
        assert microbatch.chunk_size(net, x[:12]) is None, "a batch within the target must run whole"

    def test_networks_that_mix_samples_are_never_split(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(microbatch.MICROBATCH_ENV, "4")
        x = torch.zeros(16, 1, 28, 28)
        bn = build_network("convnet[norm=batchnorm]", MNIST_SHAPED, torch_generator(0))
        assert microbatch.chunk_size(bn, x) is None, "batch norm in train mode depends on the whole batch"
        bn.eval()  # frozen statistics are per-sample, but the module did not declare itself samplewise
        assert microbatch.chunk_size(bn, x) is None

        class Undeclared(nn.Module):  # a plugin network that says nothing about its samples
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x - x.mean(0)

        assert microbatch.chunk_size(Undeclared(), x) is None
        assert microbatch.chunk_size(build_network("convnet", MNIST_SHAPED, torch_generator(0)), x) == 4

    def test_off_and_bad_settings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        net = build_network("convnet", MNIST_SHAPED, torch_generator(0))
        x = torch.zeros(100, 1, 28, 28)
        monkeypatch.setenv(microbatch.MICROBATCH_ENV, "off")
        assert microbatch.chunk_size(net, x) is None
        monkeypatch.setenv(microbatch.MICROBATCH_ENV, "lots")
        with pytest.raises(ConfigError, match="DISTILLBENCH_MICROBATCH='lots' is not valid; use auto, off or"):
            microbatch.chunk_size(net, x)


class TestCompile:
    """When the CPU eval engine compiles (harness/compiled.py), and that the compiled step is the eager one."""

    def test_auto_compiles_only_long_cpu_runs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(compiled.COMPILE_ENV, raising=False)
        monkeypatch.setattr(compiled, "have_cxx", lambda: True)
        cpu = torch.device("cpu")
        assert compiled.should_compile(cpu, compiled.MIN_STEPS)
        assert not compiled.should_compile(cpu, compiled.MIN_STEPS - 1), "a short run must not pay for a compile"
        assert not compiled.should_compile(torch.device("cuda"), 10**6), "CUDA evaluation belongs to the batched engine"
        monkeypatch.setattr(compiled, "have_cxx", lambda: False)
        assert not compiled.should_compile(cpu, 10**6), "auto without a C++ compiler must stay eager"

    def test_on_off_and_bad_settings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cpu = torch.device("cpu")
        monkeypatch.setenv(compiled.COMPILE_ENV, "off")
        assert not compiled.should_compile(cpu, 10**6)
        monkeypatch.setenv(compiled.COMPILE_ENV, "on")
        monkeypatch.setattr(compiled, "have_cxx", lambda: True)
        assert compiled.should_compile(cpu, 1)
        monkeypatch.setattr(compiled, "have_cxx", lambda: False)
        with pytest.raises(ConfigError, match="DISTILLBENCH_COMPILE=on needs a C\\+\\+ compiler"):
            compiled.should_compile(cpu, 1)
        monkeypatch.setenv(compiled.COMPILE_ENV, "yes")
        with pytest.raises(ConfigError, match="DISTILLBENCH_COMPILE='yes' is not valid; use auto, on, off"):
            compiled.should_compile(cpu, 1)

    def test_failed_compile_trains_eagerly(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(_model: nn.Module) -> object:
            def call(_x: torch.Tensor) -> torch.Tensor:
                raise RuntimeError("no compiler today")

            return call

        monkeypatch.setattr(torch, "compile", broken)
        monkeypatch.setenv(compiled.COMPILE_ENV, "on")
        monkeypatch.setattr(compiled, "have_cxx", lambda: True)
        net = build_network("convnet[width=8]", MNIST_SHAPED, torch_generator(0))
        forward = compiled.training_forward(net, torch.device("cpu"), 1)
        x = torch.randn(2, 1, 28, 28)
        assert torch.equal(forward(x), net(x)) and torch.equal(forward(x), net(x))
        assert "torch.compile failed (RuntimeError: no compiler today); training this model eagerly" in caplog.text

    @pytest.mark.slow  # compiling takes 30-90 s on 2 cores with an empty Inductor cache
    def test_compiled_training_equals_eager(
        self, digits: DataBundle, dset: DistilledSet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        models = {}
        for setting in ("off", "on"):
            monkeypatch.setenv(compiled.COMPILE_ENV, setting)
            models[setting] = train_on_set(PROTOCOL, dset, digits.info, generator=torch_generator(3), device="cpu")
        assert_same_parameters(models["off"], models["on"], "train_on_set, compiled")
