"""Tests of Dataset Distillation (``dd``), soft-label DD, LeNet / AlexCifarNet and the replay engine.

Behaviour tests run on the 8x8 ``digits`` with ``net=mlp[hidden=64]``: LeNet does take 8x8 inputs
(paddings 2 and 2, see ``harness/networks/lenet.py``), but its six 5x5 filters learn slowly from a
fixed Xavier initialisation in three inner steps (measured: about 35-45% replay accuracy after 60
outer iterations at lr 0.1, against about 90% for the MLP), so a clear margin in seconds needs the MLP.
LeNet is exercised by shape tests, the conformance tests (its ``test_config`` uses the default
``net=lenet``) and a short distil-and-replay smoke test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from distillbench.harness import store
from distillbench.harness.errors import ConfigError, DivergedError, IncompatibleError
from distillbench.harness.evaluate import evaluate
from distillbench.harness.networks import build_network, resolve_network
from distillbench.harness.plugins import METHODS, PROTOCOLS
from distillbench.harness.protocols import DD_REPLAY_V1, EvalProtocol
from distillbench.harness.replay import inner_loss, replay, unroll
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods.dd import softplus_inverse

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on a shared machine (conftest.py)

NET = "mlp[hidden=64]"
# Fast-learning settings for digits: one data step (the fixed-init recipe), Adam lr 0.1 instead of
# 0.01, 15 epochs of 4 real batches of 256 = 60 outer iterations (about 0.5 s).
FAST = {"distill_steps": 1, "epochs": 15, "batch_size": 256, "lr": 0.1, "net": NET}
# The same start, practically untrained: Adam moves every value by about lr per step.
UNTRAINED = {**FAST, "epochs": 1, "lr": 1e-9}


def make_dd(**params: Any) -> Any:
    """``dd`` configured through its spec string (so parsing and type checks are exercised)."""
    body = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
    configured = METHODS.resolve(f"dd[{body}]" if body else "dd")
    return configured.obj(configured.params)


def distil(data: DataBundle, ipc: int = 1, seed: int = 0, **params: Any) -> DistilledSet:
    method = make_dd(**params)
    method.validate(data.info, ipc)
    return method.distill(data, ipc, Context(torch.device("cpu"), torch_generator(seed), seed))


def image_info(channels: int, size: int, num_classes: int = 10) -> DatasetInfo:
    return DatasetInfo(
        name=f"toy{channels}x{size}",
        modality="image",
        num_classes=num_classes,
        shape=(channels, size, size),
        class_names=tuple(str(c) for c in range(num_classes)),
    )


@pytest.fixture(scope="module")
def fast_set(digits: DataBundle) -> DistilledSet:
    """A hard-label fixed-init set distilled with ``FAST`` (shared by several tests)."""
    return distil(digits, **FAST)


@pytest.fixture(scope="module")
def soft_set(digits: DataBundle) -> DistilledSet:
    """A soft-label fixed-init set distilled with ``FAST``."""
    return distil(digits, soft_labels=True, **FAST)


class TestNetworks:
    """LeNet and AlexCifarNet: the DD papers' layer sizes, validation, and functional use."""

    @pytest.mark.parametrize(("channels", "size", "flat"), [(1, 28, 400), (1, 32, 400), (3, 32, 400), (1, 8, 64)])
    def test_lenet_shapes(self, channels: int, size: int, flat: int) -> None:
        """28px gets padding 2 (as 32px unpadded): 16*5*5 = 400 into FC 120; 8x8 gets 'same' convs: 16*2*2."""
        info = image_info(channels, size, num_classes=7)
        net = build_network("lenet", info, torch_generator(0))
        x = torch.randn(4, channels, size, size)
        assert net.fc1.in_features == flat
        assert net(x).shape == (4, 7)
        assert net.embed(x).shape == (4, 84)

    def test_alexcifarnet_shapes(self) -> None:
        """32x32 RGB: two pools 3/2 (padding 1) leave 8x8, so 64*8*8 = 4096 into FC 384, then 192, then C."""
        net = build_network("alexcifarnet", image_info(3, 32), torch_generator(0))
        assert net.hidden[0].in_features == 4096
        assert [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)] == [384, 192, 10]
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    def test_xavier_init_from_generator(self) -> None:
        """Default init: Xavier-normal weights (std sqrt(2/(fan_in+fan_out))), zero biases, same seed same net."""
        info = image_info(1, 28)
        a = build_network("lenet", info, torch_generator(3))
        b = build_network("lenet", info, torch_generator(3))
        for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb), name
        assert bool((a.fc1.bias == 0).all())
        expected = (2.0 / (400 + 120)) ** 0.5
        assert abs(float(a.fc1.weight.detach().std()) - expected) < 0.1 * expected

    @pytest.mark.parametrize("spec", ["lenet", "alexcifarnet"])
    def test_functional_call_matches_forward(self, spec: str) -> None:
        """The networks run with explicit parameter tensors, as DD's unrolled steps need."""
        net = build_network(spec, image_info(3, 32), torch_generator(1))
        x = torch.randn(3, 3, 32, 32)
        params = {k: v.detach().clone() for k, v in net.named_parameters()}
        torch.testing.assert_close(functional_call(net, params, (x,)), net(x))

    def test_validation_errors(self) -> None:
        """Inputs the networks cannot take are ConfigErrors naming the fix; text is incompatible."""
        with pytest.raises(ConfigError, match=r"lenet with paddings \(0, 0\) cannot take 8x8.*padding1=2"):
            resolve_network("lenet[padding1=0,padding2=0]").validate(image_info(1, 8))
        with pytest.raises(ConfigError, match="alexcifarnet needs images of at least 2x2"):
            resolve_network("alexcifarnet").validate(image_info(3, 1))
        text = DatasetInfo(name="t", modality="text", num_classes=2, shape=(5,), class_names=("a", "b"))
        for spec in ("lenet", "alexcifarnet"):
            with pytest.raises(IncompatibleError, match="text"):
                resolve_network(spec).validate(text)


class TestLayout:
    """How ``ipc``, ``distill_steps``, ``num_samples`` and ``init_labels`` shape the set."""

    def test_fixed_init_recipe(self, fast_set: DistilledSet) -> None:
        """``distill_steps=1`` at ipc 1: one step of 10 images (one per class), 3 learned step sizes."""
        assert fast_set.x.shape == (10, 1, 8, 8)
        assert fast_set.y.tolist() == list(range(10))
        assert fast_set.extras["lrs"].shape == (3,)
        assert fast_set.extras["step_of_sample"].tolist() == [0] * 10
        meta = fast_set.meta
        assert (meta["net"], meta["init"], meta["distill_steps"], meta["distill_epochs"]) == (NET, "fixed", 1, 3)
        assert isinstance(meta["init_seed"], int)

    def test_steps_are_class_major_for_hard_labels(self, digits: DataBundle) -> None:
        """ipc 4 over 2 steps: 2 images per class per step, class-major within each step, T = 2 * 3."""
        out = distil(digits, ipc=4, **{**UNTRAINED, "distill_steps": 2})
        step = [c for c in range(10) for _ in range(2)]
        assert out.y.tolist() == step + step
        assert out.extras["step_of_sample"].tolist() == [0] * 20 + [1] * 20
        assert out.extras["lrs"].shape == (6,)

    def test_soft_labels_are_class_interleaved(self, digits: DataBundle) -> None:
        """Soft-label runs start one-hot, classes interleaved ([0..9] repeated), as in the SLDD code."""
        out = distil(digits, ipc=2, soft_labels=True, **UNTRAINED)
        assert out.y.shape == (20, 10)
        assert out.y.argmax(1).tolist() == list(range(10)) * 2
        assert out.meta["label_order"] == "class-interleaved"

    def test_ipc_must_split_into_steps(self, digits: DataBundle) -> None:
        """ipc counts images per class over all steps, so it must be a multiple of distill_steps."""
        with pytest.raises(ConfigError, match=r"ipc 1 is not a multiple of distill_steps 10.*distill_steps in \[1\]"):
            make_dd().validate(digits.info, 1)
        make_dd().validate(digits.info, 10)  # the code default: 10 steps of 1 image per class

    def test_num_samples_is_reported(self, digits: DataBundle) -> None:
        """``num_samples(info, ipc)`` is the total the method returns."""
        assert make_dd(soft_labels=True, num_samples=5).num_samples(digits.info, 1) == 5
        assert make_dd().num_samples(digits.info, 3) == 30


class TestValidation:
    """Bad soft-label layouts are ConfigErrors that say what is wrong and what fits."""

    def test_num_samples_above_classes_times_ipc(self, digits: DataBundle) -> None:
        with pytest.raises(ConfigError, match=r"num_samples 11 exceeds classes x ipc = 10 x 1 = 10"):
            make_dd(soft_labels=True, distill_steps=1, num_samples=11).validate(digits.info, 1)

    def test_init_labels_wrong_length(self, digits: DataBundle) -> None:
        with pytest.raises(ConfigError, match=r"init_labels has 4 classes, but each of the 1 data steps holds 5"):
            make_dd(soft_labels=True, distill_steps=1, num_samples=5, init_labels="0/1/2/3").validate(digits.info, 1)

    def test_init_labels_out_of_range(self, digits: DataBundle) -> None:
        with pytest.raises(ConfigError, match=r"classes \[10\] outside 0..9"):
            make_dd(soft_labels=True, distill_steps=1, num_samples=5, init_labels="0/1/2/3/10").validate(digits.info, 1)

    def test_layout_options_need_soft_labels(self) -> None:
        with pytest.raises(ConfigError, match="need soft_labels=true"):
            make_dd(num_samples=5)

    def test_parameter_ranges(self) -> None:
        with pytest.raises(ConfigError, match="betas must be two values"):
            make_dd(betas="0.5")
        with pytest.raises(ConfigError, match="distill_lr must be positive"):
            make_dd(distill_lr=0)


class TestDistillation:
    """What distillation achieves on digits (fixed init, hard and soft labels)."""

    def test_improves_replay_accuracy(self, digits: DataBundle, fast_set: DistilledSet) -> None:
        """60 outer iterations lift replay accuracy from the untrained images by a wide margin."""
        base = evaluate(DD_REPLAY_V1, distil(digits, **UNTRAINED), digits, seed=0).acc_mean
        trained = evaluate(DD_REPLAY_V1, fast_set, digits, seed=0).acc_mean
        assert base < 0.4, f"untrained images already reach {base:.3f}"
        assert trained > base + 0.4, f"replay accuracy {trained:.3f} vs untrained {base:.3f}"
        losses = [loss for _, loss in fast_set.meta["loss_curve"]]
        assert losses[-1] < 0.5 * losses[0]
        assert not torch.allclose(fast_set.extras["lrs"], torch.full((3,), 0.02)), "step sizes are learned"

    def test_deterministic_for_a_seed(self, digits: DataBundle, fast_set: DistilledSet) -> None:
        """Same seed: identical samples, labels and step sizes; another seed: other samples."""
        settings = {**FAST, "epochs": 2}
        a, b = distil(digits, **settings), distil(digits, **settings)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert torch.equal(a.extras["lrs"], b.extras["lrs"])
        assert not torch.equal(a.x, distil(digits, seed=1, **settings).x)

    def test_soft_labels_are_learned(self, soft_set: DistilledSet, digits: DataBundle) -> None:
        """Soft labels leave one-hot (unnormalised values) and the set replays well."""
        one_hot = F.one_hot(torch.arange(10), 10).float()
        assert soft_set.soft and soft_set.y.dtype == torch.float32
        assert float((soft_set.y - one_hot).abs().max()) > 0.05
        assert evaluate(DD_REPLAY_V1, soft_set, digits, seed=0).acc_mean > 0.7

    def test_five_samples_for_ten_classes(self, digits: DataBundle) -> None:
        """5 soft-label samples (initial classes 0-4) replay clearly above the untrained baseline."""
        layout = {"soft_labels": True, "num_samples": 5, "init_labels": "0/1/2/3/4"}
        base_set = distil(digits, **layout, **UNTRAINED)
        out = distil(digits, **layout, **{**FAST, "epochs": 30})
        assert out.x.shape == (5, 1, 8, 8) and out.y.shape == (5, 10)
        assert base_set.y.argmax(1).tolist() == [0, 1, 2, 3, 4]
        base = evaluate(DD_REPLAY_V1, base_set, digits, seed=0).acc_mean
        acc = evaluate(DD_REPLAY_V1, out, digits, seed=0).acc_mean
        # With hard labels 5 images could reach at most ~50%; learned labels carry the other classes.
        assert acc > base + 0.3, f"replay accuracy {acc:.3f} vs untrained {base:.3f}"

    def test_random_init_replays_on_k_fresh_networks(self, digits: DataBundle) -> None:
        """``init=random`` records no init seed; replay trains ``n_models`` fresh networks."""
        out = distil(digits, init="random", **{**FAST, "epochs": 2})
        assert out.meta["init"] == "random" and out.meta["init_seed"] is None
        result = evaluate(dataclasses.replace(DD_REPLAY_V1, n_models=3), out, digits, seed=0)
        assert len(result.acc_per_model) == 3 and len(set(result.acc_per_model)) > 1

    def test_lenet_smoke(self, digits: DataBundle) -> None:
        """The paper network distils and replays on 8x8 digits (two outer iterations)."""
        out = distil(digits, distill_steps=1, epochs=1, batch_size=512, net="lenet")
        result = evaluate(DD_REPLAY_V1, out, digits, seed=0)
        assert result.network == "lenet" and len(result.acc_per_model) == 1

    def test_divergence_is_reported(self, digits: DataBundle) -> None:
        """A step size that blows the weights up ends in DivergedError, not in NaN samples."""
        with pytest.raises(DivergedError, match="dd diverged"):
            distil(digits, **{**FAST, "epochs": 1, "distill_lr": 1e30})

    def test_progress_is_reported(self, digits: DataBundle) -> None:
        """``ctx.report`` receives increasing fractions ending at 1."""
        fractions: list[float] = []
        method = make_dd(**{**FAST, "epochs": 2})
        ctx = Context(torch.device("cpu"), torch_generator(0), 0, progress=lambda f, _m: fractions.append(f))
        method.distill(digits, 1, ctx)
        assert fractions == sorted(fractions) and fractions[-1] == 1.0


class TestGradient:
    """The unrolled inner loop is differentiated exactly (checked against finite differences)."""

    def _problem(self, soft: bool) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        info = image_info(1, 2, num_classes=3)
        net = build_network("mlp[hidden=4]", info, torch_generator(0)).double()
        w0 = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
        gen = torch_generator(1)
        x_real = torch.randn(6, 1, 2, 2, generator=gen, dtype=torch.float64)
        y_real = torch.tensor([0, 1, 2, 0, 1, 2])
        labels = torch.eye(3, dtype=torch.float64) if soft else torch.arange(3)
        return net, w0, x_real, y_real, labels

    @pytest.mark.parametrize("soft", [False, True])
    def test_gradcheck_step_sizes_samples_labels(self, soft: bool) -> None:
        """Gradients of the real-data loss after T=4 steps (2 data steps) w.r.t. raw lrs, samples and labels."""
        net, w0, x_real, y_real, labels = self._problem(soft)
        gen = torch_generator(2)
        images = torch.randn(2, 3, 1, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
        raw = torch.tensor([0.3, -0.5, 0.1, 0.4], dtype=torch.float64, requires_grad=True)
        inputs = [raw, images]
        if soft:
            learn = (labels + 0.1 * torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)).requires_grad_(True)
            inputs.append(learn)

        def outer(raw: torch.Tensor, images: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            targets = list(rest[0].unbind(0)) if soft else [labels, labels]
            w = unroll(net, w0, list(images.unbind(0)), targets, F.softplus(raw), soft=soft, create_graph=True)
            return F.cross_entropy(functional_call(net, w, (x_real,)), y_real)

        assert torch.autograd.gradcheck(outer, tuple(inputs), eps=1e-6, atol=1e-6)

    def test_replay_equals_differentiable_unroll(self) -> None:
        """Replay (detached steps) and the differentiable unroll reach the same weights."""
        net, w0, _, _, labels = self._problem(False)
        xs = [torch.randn(3, 1, 2, 2, generator=torch_generator(4), dtype=torch.float64)]
        lrs = torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)
        a = unroll(net, w0, xs, [labels], lrs, soft=False, create_graph=True)
        b = unroll(net, w0, xs, [labels], lrs, soft=False)
        for k in a:
            torch.testing.assert_close(a[k].detach(), b[k])

    def test_soft_loss_is_unnormalised(self) -> None:
        """Soft inner loss is sum_c y_c * CE_c with the labels as given (here scaled by 2 and negative)."""
        logits = torch.tensor([[1.0, 2.0, 0.5]])
        y = torch.tensor([[2.0, -0.5, 0.0]])
        expected = 2.0 * F.cross_entropy(logits, torch.tensor([0])) - 0.5 * F.cross_entropy(logits, torch.tensor([1]))
        torch.testing.assert_close(inner_loss(logits, y, soft=True), expected)

    def test_softplus_inverse(self) -> None:
        """Raw step sizes start at softplus^-1(distill_lr), also for huge values."""
        for value in (0.001, 0.02, 1.0, 50.0):
            assert float(F.softplus(torch.tensor(softplus_inverse(value), dtype=torch.float64))) == pytest.approx(value)


class TestReplayEngine:
    """``dd-replay-v1``: what it accepts, what it returns, and that saved sets replay identically."""

    def test_non_dd_set_is_rejected(self, digits: DataBundle) -> None:
        """A set without learned steps gets a ConfigError that names the missing extras and the alternative."""
        dset = DistilledSet(x=digits.train.x[:10], y=digits.train.y[:10])
        with pytest.raises(ConfigError, match=r"needs a set with learned steps.*'lrs'.*convnet-v1"):
            evaluate(DD_REPLAY_V1, dset, digits, seed=0)

    def test_registered_protocol_and_result(self, digits: DataBundle, fast_set: DistilledSet) -> None:
        """The registered protocol replays; fixed init gives K=1 and the row names the set's network."""
        protocol = PROTOCOLS.get("dd-replay-v1")
        assert protocol.engine == "replay" and protocol.networks == ("from-set",)
        result = evaluate(protocol, fast_set, digits, seed=5, network="from-set")
        again = replay(protocol, fast_set, digits, seed=6)
        assert result.network == NET
        assert len(result.acc_per_model) == 1 and len(result.acc_per_class) == 10
        assert result.acc_per_model == again.acc_per_model, "fixed init: the replay ignores the eval seed"
        assert 0.0 <= result.val_acc_mean <= 1.0

    def test_other_network_is_rejected(self, digits: DataBundle, fast_set: DistilledSet) -> None:
        with pytest.raises(ValueError, match=r"replays a set on its own network 'mlp\[hidden=64\]'"):
            evaluate(DD_REPLAY_V1, fast_set, digits, seed=0, network="convnet")

    def test_unknown_engine_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="valid engines: train, replay"):
            EvalProtocol(name="x", version=1, engine="replya")  # type: ignore[arg-type]

    def test_store_round_trip_replays_identically(
        self, tmp_path: Path, digits: DataBundle, soft_set: DistilledSet
    ) -> None:
        """save_set / load_set keep x, soft y, extras and meta; the loaded set replays to the same accuracy."""
        path = store.save_set(tmp_path, "dd-set", soft_set, {"method": "dd"})
        loaded, _ = store.load_set(path)
        assert torch.equal(loaded.x, soft_set.x) and torch.equal(loaded.y, soft_set.y)
        assert set(loaded.extras) == {"lrs", "step_of_sample"}
        for key, value in soft_set.extras.items():
            assert torch.equal(loaded.extras[key], value)
        assert loaded.meta["init_seed"] == soft_set.meta["init_seed"]
        before = evaluate(DD_REPLAY_V1, soft_set, digits, seed=0)
        after = evaluate(DD_REPLAY_V1, loaded, digits, seed=0)
        assert after.acc_per_model == before.acc_per_model
        assert after.acc_per_class == before.acc_per_class

    @pytest.mark.parametrize("which", ["hard", "soft"])
    def test_training_protocols_accept_dd_sets(
        self, which: str, digits: DataBundle, fast_set: DistilledSet, soft_set: DistilledSet
    ) -> None:
        """Ordinary training (the train engine) scores dd sets too, soft labels with the soft CE."""
        dset = fast_set if which == "hard" else soft_set
        protocol = EvalProtocol(name="tiny-dd", version=1, networks=(NET,), epochs=5, n_models=1, augment="none")
        result = evaluate(protocol, dset, digits, seed=0)
        assert result.network == NET and 0.0 <= result.acc_mean <= 1.0


class TestAutoNetwork:
    """``net=auto`` (the default) is lenet on images and textcnn on text, resolved before ids are hashed."""

    @pytest.mark.parametrize(
        ("dataset", "method", "ipc", "protocol", "trial_id", "distill_id"),
        [
            ("digits", "dd", 10, "quick-v1", "e78c9fef1f2f74c3", "26a7d3edcc615550"),
            ("digits", "dd[net=lenet]", 10, "quick-v1", "e78c9fef1f2f74c3", "26a7d3edcc615550"),
            ("digits", "dd[distill_steps=1]", 1, "dd-replay-v1", "1b1f4a0d0e43d1f9", "e4e5a84a0d17cdcd"),
            ("mnist", "dd[soft_labels=true]", 10, "dd-replay-v1", "325b0fa01fe2bc0e", "90b6da1014b2f260"),
        ],
    )
    def test_image_ids_unchanged(
        self, dataset: str, method: str, ipc: int, protocol: str, trial_id: str, distill_id: str
    ) -> None:
        """Pinned while lenet was the literal default: image dd trials keep their ids (results are found)."""
        from distillbench.harness.spec import TrialSpec

        resolved = TrialSpec(dataset=dataset, method=method, ipc=ipc, protocol=protocol).resolve()
        assert (resolved.trial_id, resolved.distill_id) == (trial_id, distill_id)
        assert resolved.method.params.net == "lenet" and resolved.method.display == method.replace("[net=lenet]", "")

    def test_auto_without_the_resolver(self, digits: DataBundle) -> None:
        """A dd built directly keeps net='auto' and resolves it itself, for validation and the set's meta."""
        method = METHODS.resolve("dd").obj(METHODS.resolve("dd").params)
        assert method.params.net == "auto" and method.network(digits.info) == "lenet"
        method.validate(digits.info, 10)

    def test_explicit_network_is_kept_and_shown(self) -> None:
        """Any other net is identity and display as before."""
        from distillbench.harness.spec import TrialSpec

        resolved = TrialSpec(dataset="digits", method=f"dd[net={NET}]", ipc=10, protocol="quick-v1").resolve()
        assert resolved.method.params.net == NET and resolved.method.display == f"dd[net={NET}]"
