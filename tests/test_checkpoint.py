"""Distillation checkpoints: an interrupted run resumed from its checkpoint equals an uninterrupted one (CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distillbench.harness.checkpoint import Checkpointer
from distillbench.harness.plugins import METHODS
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context

from .conftest import temp_plugin


class Interrupt(Exception):
    """Stands for a crash, a preemption or a lost node in the middle of the loop."""


# method -> (parameters, progress text at which the run is interrupted, checkpoint every, resumed from)
CASES = {
    "dm": ({"iterations": 6, "batch_real": 16, "net": "convnet[width=16]"}, "iteration 5/", 2, 4),
    # dc runs the same gradient-matching loop as dsa, without the augmentation draws.
    "dsa": ({"iterations": 3, "outer_loop": 1, "batch_real": 4, "net": "convnet[width=8]"}, "iteration 3/", 1, 2),
    # dd checkpoints at epoch ends (the epoch's sample order is not saved): every is in epochs.
    "dd": ({"epochs": 3, "batch_size": 512, "distill_steps": 1, "distill_epochs": 2}, "epoch 3", 1, 2),
}


def _method(name: str, params: dict):
    cls = METHODS.get(name)
    return cls(cls.Params(**params))


def _ctx(progress=None, checkpoint=None) -> Context:
    ctx = Context(device=torch.device("cpu"), generator=torch_generator(1234), seed=1234, progress=progress)
    if checkpoint is not None:
        ctx.checkpoint = checkpoint
    return ctx


# dm in the default run; dsa (the loop dc shares) and dd with -m slow, to keep the default suite short.
@pytest.mark.parametrize(
    "name", ["dm", pytest.param("dsa", marks=pytest.mark.slow), pytest.param("dd", marks=pytest.mark.slow)]
)
def test_interrupted_then_resumed_equals_uninterrupted(name, digits, tmp_path):
    """Interrupt at iteration k by an exception, resume from the checkpoint: the set is bit-identical."""
    params, stop_at, every, resumed = CASES[name]
    ipc = 1
    reference = _method(name, params).distill(digits, ipc, _ctx())

    def crash(fraction: float, message: str) -> None:
        if stop_at in message:
            raise Interrupt(message)

    target = tmp_path / "checkpoints" / "trial.pt"
    with pytest.raises(Interrupt):
        _method(name, params).distill(digits, ipc, _ctx(crash, Checkpointer(target, every=every)))
    assert target.is_file(), "no checkpoint was written before the interruption"

    checkpoint = Checkpointer(target, every=every)
    resumed_set = _method(name, params).distill(digits, ipc, _ctx(None, checkpoint))
    assert checkpoint.resumed_from == resumed
    assert torch.equal(resumed_set.x, reference.x), "the resumed run differs from the uninterrupted one"
    assert torch.equal(resumed_set.y, reference.y)
    for key, value in reference.extras.items():
        assert torch.equal(resumed_set.extras[key], value)
    assert resumed_set.meta["loss_curve"] == reference.meta["loss_curve"]
    assert resumed_set.meta["iterations_done"] == reference.meta["iterations_done"]


def test_no_checkpoint_without_schedule(digits, tmp_path):
    """With the time rule and a short run nothing is written (short trials pay nothing)."""
    target = tmp_path / "c.pt"
    checkpoint = Checkpointer(target, every_s=3600)
    _method("dm", CASES["dm"][0]).distill(digits, 1, _ctx(None, checkpoint))
    assert checkpoint.saved == 0 and not target.exists()


def test_checkpoint_from_other_code_is_a_clear_error(tmp_path):
    """A checkpoint lacking a state the loop needs names the file and says to delete it."""
    target = tmp_path / "c.pt"
    Checkpointer(target, every=1).maybe_save(1, syn=torch.zeros(2))
    with pytest.raises(RuntimeError, match=r"holds no state for \['opt'\].*Delete it"):
        Checkpointer(target, every=1).resume(syn=torch.zeros(2), opt=torch.optim.SGD([torch.zeros(1)], lr=1.0))


def test_runner_resumes_a_failed_trial_and_deletes_the_checkpoint(tmp_path, monkeypatch):
    """run_trial: a trial that dies mid-distillation leaves a checkpoint under <results>/checkpoints;
    running it again continues from there, gives the uninterrupted set, and removes the checkpoint."""
    from distillbench.harness import store
    from distillbench.harness.protocols import QUICK_V1
    from distillbench.harness.runner import run_trial
    from distillbench.harness.spec import TrialSpec

    monkeypatch.setenv("DISTILLBENCH_CHECKPOINT_S", "0")  # save after every iteration
    protocol = dataclasses.replace(QUICK_V1, name="ckpt-test", networks=("convnet[width=8]",), epochs=1, n_models=1)
    spec = TrialSpec(
        dataset="digits", method="dm[iterations=6,batch_real=16,net=convnet[width=16]]", ipc=1, protocol="ckpt-test"
    )

    def crash(fraction: float, message: str) -> None:
        if "dm: iteration 4/" in message:
            raise Interrupt(message)

    with temp_plugin("protocols", "ckpt-test", protocol):
        distill_id = spec.resolve().distill_id
        (failed,) = run_trial(spec, results=tmp_path / "a", progress=crash)
        assert failed["status"] == "error" and "Interrupt" in failed["error"]
        checkpoint = tmp_path / "a" / "checkpoints" / f"{distill_id}.pt"
        assert checkpoint.is_file()
        (done,) = run_trial(spec, results=tmp_path / "a")
        (reference,) = run_trial(spec, results=tmp_path / "b")
    assert done["status"] == "ok" and not checkpoint.exists()
    resumed_set, _ = store.load_set(store.find_set(tmp_path / "a", distill_id))
    reference_set, _ = store.load_set(store.find_set(tmp_path / "b", distill_id))
    assert torch.equal(resumed_set.x, reference_set.x)
