"""Tests of gradient matching (``dc``, ``dsa``, ``methods/_gradmatch.py``) and of the ``resnet18`` network.

Everything runs on the 8x8 digits with narrow ConvNets and a handful of iterations, one intra-op
thread; the whole module takes seconds.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import distillbench as db
from distillbench.harness.augment import DSA
from distillbench.harness.errors import ConfigError, DivergedError
from distillbench.harness.networks import build_network
from distillbench.harness.plugins import METHODS
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods import _gradmatch
from distillbench.methods._gradmatch import (
    PAPER_LOOPS,
    class_distance,
    freeze_batchnorm_statistics,
    gradient_distance,
    layer_distance,
    resolve_loops,
    weighted_cross_entropy,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on a shared machine (conftest.py)

NET = "convnet[width=16]"
NO_AUG = DSA("none")


def make(name: str, **params: Any) -> Any:
    """Method ``name`` with tiny defaults (2 iterations, 2 outer x 1 inner steps) plus ``params``."""
    return db.create_method(
        name, **{"iterations": 2, "outer_loop": 2, "inner_loop": 1, "batch_real": 16, "net": NET, **params}
    )


def run(method: Any, data: DataBundle, ipc: int = 2, seed: int = 0, **ctx_kwargs: Any) -> DistilledSet:
    method.validate(data.info, ipc)
    return method.distill(data, ipc, Context(torch.device("cpu"), torch_generator(seed), seed, **ctx_kwargs))


def matching_objective(data: DataBundle, x: torch.Tensor, ipc: int, nets: int = 3) -> float:
    """Summed per-class distance on held-out fixed networks with each class's full real data."""
    total = 0.0
    members = data.class_indices()
    for s in range(nets):
        net = build_network(NET, data.info, torch_generator(1000 + s))
        for c, m in enumerate(members):
            syn = x[c * ipc : (c + 1) * ipc]
            total += float(class_distance(net, data.train.x[m], syn, c, "ours", NO_AUG, torch_generator(0)).detach())
    return total / nets


class TestGradientDistance:
    """The layer-wise distance ("ours") and the whole-gradient alternatives."""

    def test_zero_for_identical_gradients(self) -> None:
        """Identical gradients are at distance ~0 under every metric."""
        g = [torch.randn(4, 3, 3, 3, generator=torch_generator(0)), torch.randn(4), torch.randn(5, 8)]
        for metric in ("ours", "cos"):
            assert float(gradient_distance(g, [t.clone() for t in g], metric)) == pytest.approx(0.0, abs=1e-5)
        assert float(gradient_distance(g, [t.clone() for t in g], "mse")) == 0.0

    def test_one_dimensional_tensors_are_ignored(self) -> None:
        """Changing only bias / norm gradients leaves "ours" unchanged (0), but not mse."""
        w = torch.randn(3, 2, generator=torch_generator(1))
        b_real, b_syn = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-5.0, 0.0, 7.0])
        assert float(layer_distance(b_real, b_syn)) == 0.0
        # Equal, not zero: eps 1e-6 makes the self-distance of a row slightly positive.
        with_biases = gradient_distance([w, b_real], [w.clone(), b_syn], "ours")
        assert float(with_biases) == float(layer_distance(w, w.clone())) < 1e-4
        assert float(gradient_distance([w, b_real], [w.clone(), b_syn], "mse")) == pytest.approx(36 + 4 + 16)

    def test_matches_hand_computation(self) -> None:
        """A conv gradient [2, 1, 1, 2] is compared row by row (one row per output channel).

        Rows real (1, 0), (0, 1) against synthetic (1, 1), (0, -1): cosines 1/sqrt(2) and -1, so the
        distance is (1 - 1/sqrt(2)) + (1 - (-1)) = 3 - 1/sqrt(2), up to eps 1e-6 in the denominator.
        mse sums squared differences (0 + 1 + 0 + 4 = 5); cos compares the flattened vectors:
        (1 - 1) / (sqrt(2) sqrt(3)) = 0, so 1 - 0 = 1.
        """
        real = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
        syn = torch.tensor([[1.0, 1.0], [0.0, -1.0]]).view(2, 1, 1, 2)
        expected = (1 - 1 / (math.sqrt(2) + 1e-6)) + (1 - (-1) / (1 + 1e-6))
        assert float(gradient_distance([real], [syn], "ours")) == pytest.approx(expected, rel=1e-6)
        assert float(gradient_distance([real], [syn], "mse")) == pytest.approx(5.0)
        assert float(gradient_distance([real], [syn], "cos")) == pytest.approx(1.0, abs=1e-6)

    def test_unknown_metric(self) -> None:
        """An unknown metric names the valid ones."""
        with pytest.raises(ValueError, match="ours, mse, cos"):
            gradient_distance([torch.ones(2, 2)], [torch.ones(2, 2)], "l1")


class TestSchedule:
    """The (outer_loop, inner_loop) schedule by IPC."""

    @pytest.mark.parametrize(("ipc", "loops"), sorted(PAPER_LOOPS.items()))
    def test_paper_table(self, ipc: int, loops: tuple[int, int]) -> None:
        """The paper's IPCs get the paper's loops."""
        assert resolve_loops(ipc) == (*loops, "paper")

    def test_table_values(self) -> None:
        """The table is the DC reference's get_loops."""
        assert PAPER_LOOPS == {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}

    @pytest.mark.parametrize(("ipc", "loops", "entry"), [(2, (1, 1), 1), (15, (10, 50), 10), (100, (50, 10), 50)])
    def test_other_ipcs_use_the_nearest_lower_entry(self, ipc: int, loops: tuple[int, int], entry: int) -> None:
        """An IPC outside the table takes the entry of the nearest lower listed IPC, and says so."""
        assert resolve_loops(ipc) == (*loops, f"nearest lower paper entry (ipc {entry})")

    def test_explicit_values_override(self) -> None:
        """Explicit loops replace the table's, each one on its own."""
        assert resolve_loops(10, 3, 4) == (3, 4, "explicit")
        assert resolve_loops(10, outer_loop=3) == (3, 50, "paper + explicit")
        assert resolve_loops(10, inner_loop=7) == (10, 7, "paper + explicit")

    def test_schedule_recorded_in_meta(self, digits: DataBundle) -> None:
        """The run records the schedule it used (here the nearest-lower rule for ipc 2)."""
        out = run(make("dc", iterations=1, outer_loop="none", inner_loop="none"), digits, ipc=2)
        assert (out.meta["outer_loop"], out.meta["inner_loop"]) == (1, 1)
        assert out.meta["schedule"] == "nearest lower paper entry (ipc 1)"


class TestDC:
    """``dc`` learns images that match real gradients."""

    def test_defaults_are_the_papers(self) -> None:
        """Paper defaults: 1000 iterations, lr_img 0.1, lr_net 0.01, batches 256, noise init, "ours"."""
        p = METHODS.get("dc").Params()
        assert (p.iterations, p.lr_img, p.momentum, p.lr_net) == (1000, 0.1, 0.5, 0.01)
        assert (p.batch_real, p.batch_train, p.init, p.dis_metric, p.net) == (256, 256, "noise", "ours", "convnet")
        assert (p.outer_loop, p.inner_loop) == (None, None)

    def test_lowers_matching_loss_and_changes_images(self, digits: DataBundle) -> None:
        """Ten iterations from real images lower the matching objective on held-out networks.

        Measured: about 74 -> 44 (summed over classes, mean over 3 fixed networks).
        """
        fractions: list[float] = []
        out = run(
            make("dc", iterations=10, batch_real=32, init="real"),
            digits,
            ipc=2,
            progress=lambda f, _msg: fractions.append(f),
        )
        init = digits.train.x[out.meta["init_indices"]]
        assert not torch.allclose(out.x, init, atol=1e-3)
        assert matching_objective(digits, out.x, 2) < 0.85 * matching_objective(digits, init, 2)
        assert out.meta["iterations_done"] == 10 and math.isfinite(out.meta["final_loss"])
        assert fractions == sorted(fractions) and fractions[-1] == 1.0

    def test_batchnorm_network(self, digits: DataBundle) -> None:
        """A BN network (narrow resnet18) runs the BN-statistics path and gives finite images."""
        out = run(make("dc", iterations=1, net="resnet18[width=4]"), digits, ipc=1)
        assert out.x.shape == (10, 1, 8, 8) and bool(torch.isfinite(out.x).all())

    def test_too_deep_network_is_rejected_in_validate(self, digits: DataBundle) -> None:
        """The network is validated with the method, before any work."""
        with pytest.raises(ConfigError, match="too deep"):
            make("dc", net="convnet[depth=4]").validate(digits.info, 1)

    def test_divergence_raises(self, digits: DataBundle) -> None:
        """A non-finite matching loss (absurd lr_img with the unbounded mse) is a DivergedError."""
        with pytest.raises(DivergedError, match=r"dc diverged: .* at iteration 1 .*lr_img"):
            run(make("dc", dis_metric="mse", lr_img=1e30), digits, ipc=1)


class TestBatchNormStatistics:
    """BN statistics come from real data and are frozen during matching."""

    def test_statistics_equal_the_batch_and_layers_are_frozen(self) -> None:
        """Running mean/var equal the batch's (biased var aside) and BN layers end in eval mode."""
        net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2))
        x = torch.randn(8, 1, 3, 3, generator=torch_generator(0)) * 3 + 1
        freeze_batchnorm_statistics(net, x)
        h = net[0](x).detach()
        assert torch.allclose(net[1].running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(net[1].running_var, h.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
        assert not net[1].training and net[1].momentum == 0.1


class TestWeights:
    """``ctx.weights`` enter the real-side loss as a weighted cross-entropy."""

    def test_uniform_weights_equal_no_weights(self, digits: DataBundle) -> None:
        """All-ones weights give the plain mean: the same images up to float rounding."""
        plain = run(make("dc"), digits)
        weighted = run(make("dc"), digits, weights=torch.ones(len(digits.train)))
        assert torch.allclose(plain.x, weighted.x, atol=1e-4)

    def test_skewed_weights_change_the_result(self, digits: DataBundle) -> None:
        """Heavily skewed weights move the images elsewhere."""
        w = torch.rand(len(digits.train), generator=torch_generator(3)) ** 8
        plain = run(make("dc"), digits)
        weighted = run(make("dc"), digits, weights=w)
        assert (plain.x - weighted.x).abs().max() > 1e-3

    def test_weighted_cross_entropy(self) -> None:
        """Weights are normalised within the batch; all-zero weights fall back to the plain mean."""
        logits = torch.randn(4, 3, generator=torch_generator(0))
        labels = torch.tensor([0, 1, 2, 0])
        per_sample = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        mean = per_sample.mean()
        assert torch.allclose(weighted_cross_entropy(logits, labels, torch.full((4,), 3.0)), mean)
        assert torch.allclose(weighted_cross_entropy(logits, labels, torch.zeros(4)), mean)
        one_hot = torch.tensor([0.0, 0.0, 5.0, 0.0])
        assert torch.allclose(weighted_cross_entropy(logits, labels, one_hot), per_sample[2])

    def test_malformed_weights_are_config_errors(self, digits: DataBundle) -> None:
        """Weights must be one non-negative finite number per training sample."""
        with pytest.raises(ConfigError, match="one weight per real training sample"):
            run(make("dc"), digits, weights=torch.ones(3))
        with pytest.raises(ConfigError, match="non-negative"):
            run(make("dc"), digits, weights=-torch.ones(len(digits.train)))


class RecordingDSA(DSA):
    """A DSA that records how the loop calls it."""

    calls: list[tuple[str, Any]] = []

    def siamese(self, tensors, groups, n_groups, generator):  # noqa: ANN001, ANN201
        RecordingDSA.calls.append(("siamese", [len(t) for t in tensors], n_groups))
        return super().siamese(tensors, groups, n_groups, generator)

    def per_sample(self, x, generator):  # noqa: ANN001, ANN201
        RecordingDSA.calls.append(("per_sample", len(x)))
        return super().per_sample(x, generator)


class TestDSA:
    """``dsa`` augments both sides of the matching alike, and the training batches per sample."""

    STRATEGY = "color_crop_cutout_scale_rotate"

    def test_defaults(self, digits: DataBundle) -> None:
        """README defaults: init real, lr_img 0.1, the dataset's strategy (digits: no flip)."""
        p = METHODS.get("dsa").Params()
        assert (p.init, p.lr_img, p.iterations, p.dsa_strategy) == ("real", 0.1, 1000, None)
        out = run(make("dsa"), digits, ipc=1)
        assert out.meta["dsa_strategy"] == digits.info.dsa_strategy == self.STRATEGY

    def test_identical_batches_match_under_augmentation(self, digits: DataBundle) -> None:
        """With the same images on both sides, the augmented per-class distance stays ~0.

        Siamese augmentation transforms both sides identically, so the two gradients are equal for
        every family and draw; augmenting each side with its own draw (the contrast) does not. The
        check uses ``mse``, which has no eps: "ours" is slightly positive even for equal gradients
        when rows have tiny norms.
        """
        net = build_network(NET, digits.info, torch_generator(0))
        x = digits.train.x[digits.class_indices()[3][:8]]
        aug = DSA(self.STRATEGY)
        gen = torch_generator(1)
        for _ in range(12):
            d = class_distance(net, x, x.clone(), 3, "mse", aug, gen)
            assert float(d.detach()) < 1e-10
        independent = class_distance(net, aug.per_sample(x, gen), aug.per_sample(x, gen), 3, "mse", NO_AUG, gen)
        assert float(independent.detach()) > 0.1

    def test_loop_uses_siamese_matching_and_per_sample_training(
        self, digits: DataBundle, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One siamese call per outer step pairs every class's real and synthetic batch; training batches per sample."""
        RecordingDSA.calls = []
        monkeypatch.setattr(_gradmatch, "DSA", RecordingDSA)
        run(make("dsa", iterations=1, outer_loop=2, inner_loop=1), digits, ipc=2)
        siamese = [c for c in RecordingDSA.calls if c[0] == "siamese"]
        per_sample = [c for c in RecordingDSA.calls if c[0] == "per_sample"]
        # 2 outer steps, each one call for all 10 classes (16 real and 2 synthetic images per class group).
        assert siamese == [("siamese", [160, 20], 10)] * 2
        # One inner epoch between the two image updates: one batch of all 20 synthetic images.
        assert per_sample == [("per_sample", 20)]

    def test_dc_does_not_augment(self, digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
        """``dc`` runs with an inactive augmentation: no family is ever applied."""
        RecordingDSA.calls = []
        monkeypatch.setattr(_gradmatch, "DSA", RecordingDSA)
        out = run(make("dc", iterations=1), digits, ipc=1)
        assert out.meta["dsa_strategy"] == "none"
        assert RecordingDSA.calls == []

    def test_unknown_strategy_is_rejected(self) -> None:
        """A strategy with an unknown family fails when the parameters are built."""
        with pytest.raises(ConfigError, match="unknown DSA families"):
            make("dsa", dsa_strategy="color_blur")


def image_info(channels: int, size: int) -> DatasetInfo:
    """A synthetic image dataset description ``[channels, size, size]`` with 10 classes."""
    return DatasetInfo(f"toy{channels}x{size}", "image", 10, (channels, size, size), tuple("0123456789"))


class TestResNet18:
    """``resnet18``: CIFAR-style ResNet-18 with batch norm, seeded from a generator."""

    def test_shapes_on_32x32_rgb(self) -> None:
        """Logits [n, 10], 512-d embedding, and the 11.17M parameters of the CIFAR ResNet-18."""
        net = build_network("resnet18", image_info(3, 32), torch_generator(0))
        x = torch.randn(2, 3, 32, 32, generator=torch_generator(1))
        assert net(x).shape == (2, 10)
        assert net.embed(x).shape == (2, 512)
        assert sum(p.numel() for p in net.parameters()) == 11_173_962
        assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())

    def test_deterministic_under_a_generator(self) -> None:
        """Same seed, same parameters; another seed differs; the global RNG is untouched."""
        info = image_info(3, 32)
        state = torch.random.get_rng_state()
        a = build_network("resnet18[width=8]", info, torch_generator(5)).state_dict()
        b = build_network("resnet18[width=8]", info, torch_generator(5)).state_dict()
        c = build_network("resnet18[width=8]", info, torch_generator(6)).state_dict()
        assert torch.equal(torch.random.get_rng_state(), state)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 64)

    @pytest.mark.parametrize("size", [28, 8])
    def test_small_inputs(self, size: int) -> None:
        """28x28 and the 8x8 digits work (global pooling of 4x4 resp. 1x1 final maps)."""
        net = build_network("resnet18[width=8]", image_info(1, size), torch_generator(0))
        assert net(torch.randn(3, 1, size, size)).shape == (3, 10)
        assert net.embed(torch.randn(3, 1, size, size)).shape == (3, 64)

    def test_too_small_inputs_are_rejected(self) -> None:
        """Inputs below 8x8 are a ConfigError that names the minimum."""
        with pytest.raises(ConfigError, match="at least 8x8"):
            build_network("resnet18", image_info(1, 4), torch_generator(0))

    def test_instancenorm_option(self) -> None:
        """``norm=instancenorm`` replaces every BN by a per-channel GroupNorm."""
        net = build_network("resnet18[width=8,norm=instancenorm]", image_info(3, 32), torch_generator(0))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)
