"""Trajectory matching (mtt, ftd, datm): the gradients, the start window, the buffer's reuse, what each method adds."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from distillbench.harness.checkpoint import Checkpointer
from distillbench.harness.errors import ConfigError
from distillbench.harness.networks import build_network
from distillbench.harness.plugins import METHODS
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle
from distillbench.methods._trajectory import (
    FlatModel,
    StartWindow,
    _tesla_gradients,
    _unrolled_gradients,
)
from distillbench.methods.mtt import TINY_TRAJECTORY

from .conftest import temp_plugin

pytestmark = pytest.mark.usefixtures("one_thread")


def method(name: str, **overrides: Any) -> Any:
    cls = METHODS.get(name)
    return cls(cls.Params(**{**cls.test_config, **overrides}))


def ctx(seed: int = 0, **kwargs: Any) -> Context:
    return Context(torch.device("cpu"), torch_generator(seed), seed, **kwargs)


class Interrupt(Exception):
    """Stands for a crash or a preemption in the middle of the loop."""


def _student(digits: DataBundle) -> tuple[FlatModel, torch.Tensor]:
    net = build_network("convnet[width=4]", digits.info, torch_generator(0))
    shapes = [(n, tuple(p.shape)) for n, p in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return FlatModel(net, shapes), flat


class TestGradients:
    """The unrolled student and TESLA's constant-memory variant."""

    def _problem(self, digits: DataBundle, steps: int):
        from distillbench.harness.augment import DSA

        student, theta0 = _student(digits)
        target = theta0 + 0.01 * torch.randn(theta0.shape, generator=torch_generator(1))
        syn = digits.train.x[:20].clone().requires_grad_(True)
        labels = digits.train.y[:20]
        syn_lr = torch.tensor(0.05, requires_grad=True)
        batches = [torch.arange(i * 5, i * 5 + 10) % 20 for i in range(steps)]
        return student, theta0, target, syn, syn_lr, labels, batches, DSA(digits.info.dsa_strategy)

    @pytest.mark.parametrize("steps", [1, 3])
    def test_tesla_loss_equals_unrolled_loss(self, digits, steps):
        """TESLA changes how the gradient is computed, never the loss that is reported."""
        student, theta0, target, syn, syn_lr, labels, batches, aug = self._problem(digits, steps)
        args = (student, theta0, target, syn, syn_lr, [syn], lambda idx: labels[idx], batches, aug)
        loss_a, _ = _unrolled_gradients(*args, torch_generator(7))
        loss_b, _ = _tesla_gradients(*args, torch_generator(7))
        torch.testing.assert_close(loss_a, loss_b)

    def test_tesla_is_exact_for_one_step(self, digits):
        """With one student step there are no cross-step terms: TESLA's gradients equal backpropagation's."""
        student, theta0, target, syn, syn_lr, labels, batches, aug = self._problem(digits, 1)
        args = (student, theta0, target, syn, syn_lr, [syn], lambda idx: labels[idx], batches, aug)
        _, exact = _unrolled_gradients(*args, torch_generator(7))
        _, tesla = _tesla_gradients(*args, torch_generator(7))
        for a, b, what in zip(exact, tesla, ("images", "syn_lr"), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7, msg=f"{what} gradient differs")

    def test_tesla_drops_cross_step_terms(self, digits):
        """With several steps TESLA approximates: close to backpropagation's image gradient, not equal."""
        student, theta0, target, syn, syn_lr, labels, batches, aug = self._problem(digits, 3)
        args = (student, theta0, target, syn, syn_lr, [syn], lambda idx: labels[idx], batches, aug)
        _, exact = _unrolled_gradients(*args, torch_generator(7))
        _, tesla = _tesla_gradients(*args, torch_generator(7))
        cos = torch.nn.functional.cosine_similarity(exact[0].flatten(), tesla[0].flatten(), dim=0)
        assert 0.9 < float(cos) < 1.0 - 1e-7, f"cosine of the image gradients {float(cos)}"


class TestStartEpochs:
    """Start epochs stay in the window; DATM's window grows."""

    def test_mtt_start_epochs_respect_max_start_epoch(self, digits):
        """Every drawn start epoch is below max_start_epoch, and the segment fits the buffer."""
        m = method("mtt", iterations=12, max_start_epoch=2, expert_epochs=1, train_epochs=3, syn_steps=1)
        out = m.distill(digits, 1, ctx())
        counts = out.meta["start_epoch_counts"]
        assert sum(counts) == 12 and len(counts) == 3
        assert counts[2:] == [0], f"start epochs drawn beyond max_start_epoch=2: {counts}"
        assert counts[0] > 0 and counts[1] > 0, f"both allowed start epochs should be drawn in 12 tries: {counts}"

    def test_datm_window_grows_to_max(self):
        """Sequential generation: the upper end moves from current_max to max by expansion_end."""
        window = StartWindow(lo=1, max_start=20, current_max=10, expansion_end=100)
        assert window.bounds(0) == (1, 10)
        assert window.bounds(50) == (1, 15)
        assert window.bounds(100) == (1, 20)
        assert window.bounds(10_000) == (1, 20)
        assert StartWindow(lo=0, max_start=25).bounds(7) == (0, 25)

    def test_segment_beyond_buffer_is_refused_at_validation(self, digits):
        """max_start_epoch + expert_epochs beyond train_epochs fails before any expert is trained."""
        m = method("mtt", max_start_epoch=2, expert_epochs=1, train_epochs=2)
        with pytest.raises(ConfigError, match=r"2 \+ 1 = 3 goes beyond the buffer's train_epochs=2"):
            m.validate(digits.info, 1)


class TestResume:
    def test_interrupted_mtt_resumes_to_the_same_set(self, digits, tmp_path):
        """Interrupt mtt mid-run, resume from its checkpoint: the set equals an uninterrupted run's."""
        params = {"iterations": 6}
        reference = method("mtt", **params).distill(digits, 1, ctx(3))

        def crash(fraction: float, message: str) -> None:
            if "mtt: iteration 5/" in message:
                raise Interrupt(message)

        target = tmp_path / "c.pt"
        with pytest.raises(Interrupt):
            method("mtt", **params).distill(digits, 1, ctx(3, progress=crash, checkpoint=Checkpointer(target, every=2)))
        checkpoint = Checkpointer(target, every=2)
        resumed = method("mtt", **params).distill(digits, 1, ctx(3, checkpoint=checkpoint))
        assert checkpoint.resumed_from == 4
        assert torch.equal(resumed.x, reference.x), "the resumed mtt set differs from the uninterrupted one"
        assert torch.equal(resumed.extras["syn_lr"], reference.extras["syn_lr"])
        assert resumed.meta["start_epoch_counts"] == reference.meta["start_epoch_counts"]


class TestMethods:
    def test_mtt_learns_the_step_size_and_records_the_buffer(self, digits):
        """The set carries its learned syn_lr; the metadata names the buffer and how the gradient was taken."""
        out = method("mtt").distill(digits, 1, ctx())
        assert out.extras["syn_lr"].shape == ()
        assert float(out.extras["syn_lr"]) != TINY_TRAJECTORY.get("lr_teacher", 0.01)
        assert out.meta["buffer"]["id"] and out.meta["gradient"] == "full backpropagation"
        assert method("mtt", tesla=True).distill(digits, 1, ctx()).meta["gradient"].startswith("tesla")

    def test_mtt_matching_loss_falls(self, digits):
        """A short mtt run lowers the normalised matching loss (the signal the method optimises)."""
        out = method("mtt", iterations=40, syn_steps=5, lr_img=100.0, num_experts=2, train_epochs=4).distill(
            digits, 1, ctx()
        )
        curve = [loss for _, loss in out.meta["loss_curve"]]
        first, last = sum(curve[:8]) / 8, sum(curve[-8:]) / 8
        assert last < first, f"matching loss did not fall: first windows {first:.4f}, last {last:.4f}"

    def test_ftd_returns_the_moving_average(self, digits):
        """With an EMA decay near 1 the returned images stay near their real initialisation."""
        out = method("ftd", ema_decay=0.999, lr_img=1000.0).distill(digits, 1, ctx())
        init = digits.train.x[torch.tensor(out.meta["init_indices"])]
        raw = method("ftd", ema_decay=0.0, lr_img=1000.0).distill(digits, 1, ctx())
        assert (out.x - init).abs().max() < 0.01 * (raw.x - init).abs().max()
        assert out.meta["buffer"]["recipe"]["flat"] is True

    def test_datm_soft_labels_are_the_softmax_of_learned_logits(self, digits):
        """DATM's labels are softmax(label logits); the images start as ones the expert classifies correctly."""
        out = method("datm").distill(digits, 2, ctx())
        assert out.soft and out.y.shape == (20, 10)
        torch.testing.assert_close(out.y, torch.softmax(out.extras["label_logits"], dim=1))
        assert out.meta["init"] == "samples_predicted_correctly"
        assert out.meta["image_class"] == [c for c in range(10) for _ in range(2)]

    def test_datm_threshold_skips_updates(self, digits):
        """A threshold below every loss skips every update: the images stay the initial ones."""
        out = method("datm", threshold=1e-9).distill(digits, 1, ctx())
        assert out.meta["iterations_skipped_by_threshold"] == out.meta["iterations_done"]
        assert torch.equal(out.x, digits.train.x[torch.tensor(out.meta["init_indices"])])


class TestBufferSharing:
    def test_second_trial_reuses_the_buffer(self, digits, tmp_path):
        """Two trials on one results directory: the first builds the experts, the second's row says 0 seconds."""
        from distillbench.harness.protocols import QUICK_V1
        from distillbench.harness.runner import run_trial
        from distillbench.harness.spec import TrialSpec

        protocol = dataclasses.replace(QUICK_V1, name="traj-test", networks=("convnet[width=8]",), epochs=2, n_models=1)
        spec = "mtt[" + ",".join(f"{k}={v}" for k, v in TINY_TRAJECTORY.items()) + "]"
        with temp_plugin("protocols", "traj-test", protocol):
            (first,) = run_trial(TrialSpec("digits", spec, 1, seed=0, protocol="traj-test"), results=tmp_path)
            (second,) = run_trial(TrialSpec("digits", spec, 1, seed=1, protocol="traj-test"), results=tmp_path)
        assert first["status"] == "ok", first["error"]
        assert second["status"] == "ok", second["error"]
        assert first["buffer_seconds"] > 0
        assert second["buffer_seconds"] == 0.0, "the second trial trained the experts again"
        assert (tmp_path / "buffers").is_dir()

    def test_later_grid_reuses_buffers_through_a_shared_artefacts_folder(self, digits, tmp_path):
        """Two results directories (two grids) sharing one artefacts folder train the experts once."""
        from distillbench.harness.protocols import QUICK_V1
        from distillbench.harness.runner import run_trial
        from distillbench.harness.spec import TrialSpec

        protocol = dataclasses.replace(QUICK_V1, name="traj-test", networks=("convnet[width=8]",), epochs=2, n_models=1)
        spec = "mtt[" + ",".join(f"{k}={v}" for k, v in TINY_TRAJECTORY.items()) + "]"
        shared = tmp_path / "cache"
        with temp_plugin("protocols", "traj-test", protocol):
            trial = TrialSpec("digits", spec, 1, seed=0, protocol="traj-test")
            (first,) = run_trial(trial, results=tmp_path / "grid-a", artefacts=shared)
            (second,) = run_trial(dataclasses.replace(trial, grid="b"), results=tmp_path / "grid-b", artefacts=shared)
        assert first["buffer_seconds"] > 0 and second["buffer_seconds"] == 0.0
        assert (shared / "buffers").is_dir() and not (tmp_path / "grid-a" / "buffers").exists()


class TestGridArtefactsKey:
    def test_grid_names_a_shared_artefacts_folder(self, tmp_path, capsys):
        """`artefacts:` in a grid is accepted, resolved relative to the grid file, and shown by --dry-run."""
        import yaml

        from distillbench.harness.cli import main

        grid = tmp_path / "g.yaml"
        document = {"name": "g", "protocol": "quick-v1", "artefacts": "shared-cache"}
        grid.write_text(yaml.safe_dump({**document, "grid": {"dataset": ["digits"], "method": ["random"], "ipc": [1]}}))
        assert main(["run", str(grid), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"cached artefacts (expert buffers, teachers) in {tmp_path / 'shared-cache'}" in out

    def test_bad_artefacts_value_is_one_line(self, tmp_path, capsys):
        """A non-string artefacts value exits 2 with one line."""
        import yaml

        from distillbench.harness.cli import main

        grid = tmp_path / "g.yaml"
        body = {"dataset": ["digits"], "method": ["random"], "ipc": [1]}
        grid.write_text(yaml.safe_dump({"name": "g", "protocol": "quick-v1", "artefacts": [1], "grid": body}))
        assert main(["run", str(grid), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "artefacts must be a folder or a URI" in err and err.count("\n") == 1
