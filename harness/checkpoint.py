"""Distillation checkpoints: long trials save their loop state and continue from it after a restart.

A method's loop calls two methods of ``ctx.checkpoint`` (a :class:`Checkpointer`, or the do-nothing
:class:`NoCheckpoint` when the trial has no results directory)::

    start = ctx.checkpoint.resume(syn=syn, opt=opt, gen=gen, tracker=tracker)   # 0 without a checkpoint
    for it in range(start, p.iterations):
        ...
        if tracker.step(loss):
            break
        ctx.checkpoint.maybe_save(it + 1, syn=syn, opt=opt, gen=gen, tracker=tracker)

The keyword names are free; each value is saved by its kind: a tensor by value (restored in place),
a ``torch.Generator`` by its state, anything with ``state_dict`` / ``load_state_dict`` (optimisers,
schedulers, :class:`~distillbench.methods._loop.LossTracker`) by its state dict. With the generator
state saved, a resumed CPU run is bit-identical to an uninterrupted one.

Where: ``<results>/checkpoints/<distill_id>.pt`` (a local, NFS or ``s3://`` results location,
through :mod:`distillbench.harness.store`), written atomically, loaded with
``torch.load(weights_only=True)`` (no arbitrary pickles), and deleted by the runner once the set
is saved. When: every ``every`` iterations if given, else when ``every_s`` seconds have passed since
the last save (default: ``$DISTILLBENCH_CHECKPOINT_S`` or 600 s), so short trials never write one.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import torch

from distillbench.harness import store
from distillbench.harness.errors import DistillBenchError

DEFAULT_EVERY_S = 600.0


class NoCheckpoint:
    """The checkpoint of a trial that keeps none: ``resume`` starts at 0, ``maybe_save`` does nothing."""

    def resume(self, **objects: Any) -> int:
        return 0

    def maybe_save(self, iteration: int, **objects: Any) -> bool:
        return False

    def clear(self) -> None:
        return None


class Checkpointer(NoCheckpoint):
    """Periodic loop checkpoints of one distillation, in one file.

    Args:
        target: the checkpoint file (a path, a URI or a :class:`~distillbench.harness.store.Location`).
        every: save after every ``every`` completed iterations; ``None`` for the time rule.
        every_s: with ``every=None``, save when this many seconds passed since the last save
            (default ``$DISTILLBENCH_CHECKPOINT_S`` or 600).
    """

    def __init__(self, target: Any, *, every: int | None = None, every_s: float | None = None) -> None:
        self.target = store.location(target)
        self.every = every
        if every_s is None:
            every_s = float(os.environ.get("DISTILLBENCH_CHECKPOINT_S") or DEFAULT_EVERY_S)
        self.every_s = every_s
        self._last = time.monotonic()
        self.saved = 0
        self.resumed_from: int | None = None

    @classmethod
    def for_trial(cls, results: Any, distill_id: str, **kwargs: Any) -> Checkpointer:
        """The checkpoint of a distillation under a results directory."""
        return cls(store.location(results) / "checkpoints" / f"{distill_id}.pt", **kwargs)

    def resume(self, **objects: Any) -> int:
        """Restore ``objects`` in place from the checkpoint; return the iterations done (0 without one)."""
        if not self.target.is_file():
            return 0
        state = torch.load(io.BytesIO(self.target.read_bytes()), map_location="cpu", weights_only=True)
        missing = sorted(set(objects) - set(state["objects"]))
        if missing:
            raise RuntimeError(
                f"checkpoint {self.target} holds no state for {missing}; it was written by other code. "
                "Delete it to start the distillation from scratch"
            )
        for name, obj in objects.items():
            _restore(obj, state["objects"][name])
        self.resumed_from = int(state["iteration"])
        return self.resumed_from

    def maybe_save(self, iteration: int, **objects: Any) -> bool:
        """Save ``objects`` after ``iteration`` completed iterations if the schedule says so."""
        due = (iteration % self.every == 0) if self.every else (time.monotonic() - self._last >= self.every_s)
        if not due:
            return False
        state = {"iteration": int(iteration), "objects": {name: _capture(obj) for name, obj in objects.items()}}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.target.write_bytes(buffer.getvalue())
        self._last = time.monotonic()
        self.saved += 1
        return True

    def clear(self) -> None:
        """Delete the checkpoint (the set is saved: nothing is left to resume)."""
        self.target.delete()

    def check_writable(self) -> None:
        """Fail now, in one line, where the checkpoint cannot be written (not at the first save, after minutes).

        Raises:
            DistillBenchError: the file (or its folder) cannot be created; the message names the path.
        """
        if self.target.is_file():
            return  # a checkpoint to resume from: it was written there before
        try:
            self.target.write_bytes(b"")
            self.target.delete()
        except OSError as exc:
            raise DistillBenchError(
                f"cannot write the checkpoint {self.target}: {exc.strerror or exc}; choose a writable location"
            ) from None


def _capture(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}: pass tensors, generators or objects with state_dict")


def _restore(obj: Any, saved: Any) -> None:
    if isinstance(obj, torch.Tensor):
        with torch.no_grad():
            obj.copy_(saved.to(obj.device))
    elif isinstance(obj, torch.Generator):
        obj.set_state(saved)
    else:
        obj.load_state_dict(saved)
