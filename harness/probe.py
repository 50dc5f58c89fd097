"""The probe: a cheap evaluation of a synthetic set while it is being distilled, for early stopping.

ASHA (``tune: {scheduler: asha}``, :mod:`distillbench.harness.tuning`) needs intermediate results to stop a
search trial early. Iterative methods (dm, dc/dsa, mtt and its relatives, dd) report every iteration to
their :class:`~distillbench.methods._loop.LossTracker`; when the runner gives the trial a probe, the tracker
hands it the current synthetic set at ``probes`` evenly spaced iterations, and the probe trains **one small
network for a few epochs** on it and scores it on the **validation split** only. The score goes out as a
progress event (``probe``, ``probe_val_acc``, forced through the rate limit), which the scheduler turns into
the Tune result ASHA reads.

The probe never touches the method's state or randomness: it copies the set, and draws the network, batch
order and augmentation from its own generator (derived from the trial's distillation seed and the probe
index). A trial's distilled set is therefore the same with or without probes, and nothing of the final
evaluation protocol changes. Without a probe (every trial outside a search with a scheduler) the tracker
does nothing extra.

The recipe: the trial's protocol (its optimiser, schedule shape and augmentation; a replay protocol such as
``dd-replay-v1`` uses ``convnet-v1-cpu-reduced``, text data ``text-v1``), one model, ``probe_epochs``
epochs, and for image data a ConvNet of width 32 (the CPU-reduced protocol's network).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import DataBundle, DistilledSet

#: the small network probes train on image data
PROBE_NETWORK = "convnet[width=32]"


def probe_protocol(protocol: Any, info: Any, epochs: int) -> Any:
    """The probe's recipe derived from the trial's ``protocol`` (see the module docstring)."""
    from distillbench.harness.protocols import CPU_REDUCED_V1, TEXT_V1

    base = protocol
    if getattr(protocol, "engine", "train") != "train":
        base = TEXT_V1 if info.modality == "text" else CPU_REDUCED_V1
    network = PROBE_NETWORK if info.modality == "image" else base.networks[0]
    changes: dict[str, Any] = {"epochs": epochs, "n_models": 1, "networks": (network,)}
    if hasattr(base, "relabel"):
        changes["relabel"] = "none"  # online relabelling needs the finished set's teacher
    return dataclasses.replace(base, **changes)


class Probe:
    """Evaluates the synthetic set at ``probes`` evenly spaced iterations and reports the validation accuracy.

    Args:
        probes: how many probes over the run (after 1/(probes+1), 2/(probes+1), ... of the iterations).
        epochs: epochs of the probe's training.
        data: the trial's data (the set is scored on ``data.val``).
        protocol: the trial's evaluation protocol (see :func:`probe_protocol`).
        seed: the trial's distillation seed (probe ``k`` trains from ``derive_seed(seed, "probe", k)``).
        device: where to train.
    """

    def __init__(
        self, probes: int, epochs: int, data: DataBundle, protocol: Any, *, seed: int, device: torch.device
    ) -> None:
        self.probes, self.data, self.seed, self.device = probes, data, seed, torch.device(device)
        self.recipe = probe_protocol(protocol, data.info, epochs)
        self.done: list[tuple[int, int, float]] = []  # (probe index, iteration, validation accuracy)

    def points(self, total: int) -> list[int]:
        """The iterations (1-based counts done) after which a probe runs; at most ``probes``, before the end."""
        return sorted({max(1, (k * total) // (self.probes + 1)) for k in range(1, self.probes + 1)} - {total})

    def after(self, done: int, total: int, current: Callable[[], tuple[torch.Tensor, torch.Tensor]], ctx: Any) -> None:
        """Called by the loop after iteration ``done`` of ``total``: probe if ``done`` is a probe point."""
        points = self.points(total)
        if done not in points:
            return
        index = points.index(done) + 1
        x, y = current()
        # A set that is diverging scores as nothing learned; the loop's own check ends the trial soon after.
        finite = bool(torch.isfinite(x).all()) and (not y.is_floating_point() or bool(torch.isfinite(y).all()))
        accuracy = self.score(x, y, index) if finite else 0.0
        self.done.append((index, done, accuracy))
        ctx.report(
            done / total,
            f"probe {index}/{len(points)} at iteration {done}/{total}: validation accuracy {accuracy:.4f}",
            force=True,
            probe=index,
            probe_val_acc=accuracy,
        )

    def score(self, x: torch.Tensor, y: torch.Tensor, index: int) -> float:
        """Validation accuracy of one network of the probe recipe trained on ``(x, y)``."""
        from distillbench.harness.evaluate import accuracy, train_on_set

        info = self.data.info
        dset = DistilledSet(x=x.detach().clone(), y=y.detach().clone(), meta={"zca": bool(info.zca)})
        generator = torch_generator(derive_seed(self.seed, "probe", index), "cpu")
        model = train_on_set(self.recipe, dset, info, generator=generator, device=self.device)
        acc, _ = accuracy(model, self.data.val, info.num_classes, device=self.device)
        return float(acc)
