"""What the paper defaults of ``distill`` and ``evaluate`` cost on a machine without a GPU, said up front.

``distill`` and ``evaluate`` default to ``convnet-v1`` (K = 20 models x 1,000 epochs), the recipe whose
numbers compare with papers, and methods default to their papers' iteration counts (``dm``: 20,000).
On a GPU that is minutes; on a CPU it is hours. So before any work, when the machine has no GPU and
the protocol was not given (or a method's ``iterations`` was left at a default of at least
:data:`MIN_ITERATIONS`), the CLI prints one warning line with the expected evaluation time and the
option that makes a short run of it.

A warning rather than an error: the same command line then means the same thing on every machine
(scripts and docs stay portable), ``convnet-v1`` on a CPU is sometimes the right call (DD with LeNet,
one image per class), and giving ``--protocol`` explicitly silences it. The expected time is measured,
not guessed: a few training steps of the protocol's network (with its augmentation) on random samples
of the set's shape, timed here (:func:`time_train_step`), times the protocol's number of steps. The
probe runs eagerly; long CPU evaluations are compiled (``DISTILLBENCH_COMPILE=auto``, about 1.2x faster
per step where measured), so the figure errs long. Method iterations are not timed (that would mean
running the method); the warning names their count.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from distillbench.harness.errors import DistillBenchError
from distillbench.harness.params import parse_spec
from distillbench.harness.workflow import DEFAULT_PROTOCOL

SHORT_PROTOCOL = "quick-v1"
"""The protocol the warning suggests for a demo."""
PROBE_STEPS = 3
PROBE_BATCH = 32
MIN_ITERATIONS = 1000
"""A method's default ``iterations`` from which the warning names them (dc 1,000; dm 20,000; mtt 5,000)."""


def eval_steps(protocol: Any, n_samples: int) -> int:
    """SGD steps the train engine takes to score a set of ``n_samples`` (all K models, every epoch)."""
    batch = min(protocol.batch_size, n_samples)
    return protocol.n_models * protocol.epochs * math.ceil(n_samples / batch)


def time_train_step(protocol: Any, info: Any, n_samples: int) -> float:
    """Seconds per training step of ``protocol``'s network on ``info``-shaped input, measured on the CPU here.

    The probe runs the real training path (:func:`~distillbench.harness.evaluate.train_on_set`) twice,
    for 1 and for ``1 + PROBE_STEPS`` steps, and takes the difference, so building the network and the
    first, slower step cancel out. It trains on at most :data:`PROBE_BATCH` random samples and scales
    linearly to the protocol's batch (one or two CPU threads have no idle width a larger batch could use).

    Raises:
        ValueError, DistillBenchError: the protocol cannot train on this data (the command reports it).
    """
    from distillbench.harness.evaluate import train_on_set
    from distillbench.harness.seeding import torch_generator
    from distillbench.harness.types import DistilledSet

    batch = min(protocol.batch_size, n_samples)
    probe_batch = min(batch, PROBE_BATCH)
    gen = torch_generator(0)
    x = torch.randn((probe_batch, *info.shape), generator=gen)
    y = torch.arange(probe_batch) % info.num_classes
    dset = DistilledSet(x, y, meta={"zca": bool(getattr(info, "zca", False))})

    def seconds(steps: int) -> float:
        probe = dataclasses.replace(protocol, epochs=steps, n_models=1)
        start = time.perf_counter()
        train_on_set(probe, dset, info, generator=torch_generator(0), device="cpu")
        return time.perf_counter() - start

    first = seconds(1)
    more = seconds(1 + PROBE_STEPS)
    # A busy machine can make the longer run look shorter; then the whole run's average is the estimate.
    step = (more - first) / PROBE_STEPS if more > first else more / (1 + PROBE_STEPS)
    return step * batch / probe_batch


def duration(seconds: float) -> str:
    """``2 h 50 min``, ``12 min``, ``40 s``: how long, to the precision an estimate has."""
    if seconds >= 3600:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{max(1, round(seconds))} s"


def _protocol_clause(protocol: Any, info: Any, n_samples: int | None) -> str | None:
    if getattr(protocol, "engine", "train") != "train" or not n_samples:
        return None
    try:
        step = time_train_step(protocol, info, n_samples)
    except (ValueError, RuntimeError, DistillBenchError):
        # The protocol cannot score this data (a network refusing the input shape raises RuntimeError
        # inside torch); the command itself says why, and an estimate must never stop a valid command.
        return None
    seconds = eval_steps(protocol, n_samples) * step
    threads = torch.get_num_threads()
    return (
        f"--protocol defaults to {protocol.name} ({protocol.n_models} models x {protocol.epochs:,} epochs), about "
        f"{duration(seconds)} of evaluation on this CPU (from training steps timed here, {threads} threads); "
        f"pass --protocol {SHORT_PROTOCOL} for a short demo, or --protocol {protocol.name} to keep it without "
        "this warning"
    )


def _iterations_clause(method_spec: str, method: Any) -> str | None:
    _name, raw = parse_spec(method_spec)
    if "iterations" in raw or not dataclasses.is_dataclass(method.params):
        return None
    field = next((f for f in dataclasses.fields(method.params) if f.name == "iterations"), None)
    iterations = getattr(method.params, "iterations", None)
    if field is None or not isinstance(iterations, int) or iterations != field.default or iterations < MIN_ITERATIONS:
        return None
    return (
        f"{method.name} runs its default {iterations:,} iterations; write '{method.name}[iterations=...]' "
        "for a shorter run"
    )


def _message(clauses: list[str | None]) -> str | None:
    kept = [c for c in clauses if c]
    return f"warning: no GPU: {'; '.join(kept)}" if kept else None


def _on_cpu() -> bool:
    from distillbench.harness.runner import pick_device

    return pick_device().type == "cpu"


def distill_warning(spec: Any, *, protocol_given: bool) -> str | None:
    """The warning for ``distill`` of ``spec`` (a :class:`~distillbench.harness.spec.TrialSpec`), or ``None``.

    ``None`` on a GPU, when nothing was left at an expensive default, or when the spec is invalid
    (the command then fails with its own one-line error).
    """
    if not _on_cpu():
        return None
    try:
        resolved = spec.resolve()
        n_samples = resolved.method.obj(resolved.method.params).num_samples(resolved.info, resolved.spec.ipc)
    except DistillBenchError:
        return None
    return _message(
        [
            _iterations_clause(spec.method, resolved.method),
            None if protocol_given else _protocol_clause(resolved.protocol, resolved.info, n_samples),
        ]
    )


def evaluate_warning(set_file: str, *, protocol_given: bool) -> str | None:
    """The warning for ``evaluate SET_FILE`` under the default protocol, or ``None`` (see :func:`distill_warning`)."""
    if protocol_given or not _on_cpu():
        return None
    from distillbench.harness import store
    from distillbench.harness.spec import TrialSpec

    try:
        dset, meta = store.load_set(set_file)
        spec = TrialSpec.from_dict({**meta["spec"], "protocol": DEFAULT_PROTOCOL})
        resolved = spec.resolve()
    except (DistillBenchError, KeyError, TypeError, ValueError, OSError):
        return None  # not a readable set: the command says why
    return _message([_protocol_clause(resolved.protocol, resolved.info, len(dset))])
