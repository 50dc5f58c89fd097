"""The GPU campaign of issue 20: one command that, on one lent H100 within 9 minutes, runs the paper-setting
cells that fit and the GPU speed checks issue 9 left open, and writes one JSON file of results.

    python benchmarks/gpu_campaign.py --dry-run                   # the plan, estimated times; runs nothing
    python benchmarks/gpu_campaign.py --out $OUT/gpu_campaign.json  # on the device (needs no Ray, no install)
    python benchmarks/gpu_campaign.py --smoke --out /tmp/c.json     # the same code path on the CPU, tiny settings

What runs, in order (``--dry-run`` prints it with each part's estimated start, length and end):

1. **speed** (issue 9, alone on the GPU so its timings are clean): K=20 ConvNet-3 evaluation models at
   MNIST IPC 10 trained one after another (the sequential engine) against the batched engine
   (``harness/batched.py``) without and with each remedy of :class:`~distillbench.harness.batched.BatchedOptions`
   (per-epoch prefetch of the host-drawn orders and DSA parameters, channels-last, bf16 autocast,
   ``torch.compile``), each ratio against the >= 3x target; then the accuracy agreement of the fastest
   variant with the sequential engine on real MNIST (K=20 each, 300 epochs, Welch's t-test).
2. **cells**, packed ``--slots`` at a time on the GPU as separate processes, in order of value to issue 20's
   fidelity table: DM and DM + ``kde`` on ``colored_mnist`` (5% conflicting, mnist-10k base) at the paper's
   per-iteration settings, evaluated along the way and stopped at the deadline (the paper's 20,000
   iterations take ~10 min alone on an H100, so a curve reaches what fits and says how far); DC and DSA at
   MNIST IPC 1 at full paper length under ``convnet-v1``; soft-label DD with 10 images at the paper's
   20,300 outer iterations; a small ``mtt`` run. A cell that no longer fits is recorded as skipped.

Every cell's spec is validated through the registries (``TrialSpec.resolve``) before anything runs. Each
child process writes its own partial JSON atomically after every point, and the parent merges them into
``--out`` (atomically) after every change, so a slow device or a killed child still leaves a partial file.
Each phase has a deadline: a curve evaluates its last point and stops before the campaign's deadline; a
child still running ``--grace-s`` past the deadline is killed (its earlier points are kept).

Data: the mnist cells read an MNIST in torchvision's layout (``ROOT/MNIST/raw``, e.g. ``mnist-10k``):
``--data-root``, else ``$DISTILLBENCH_DATA``, ``.campaign-data/mnist-10k`` in this checkout, or
``../shared/data/mnist-10k``, the first that holds it. The device machine receives only the checkout, so
stage the copy beside the code (``benchmarks/README.md`` says how) or every cell falls back to the embedded
``digits`` (8x8; marked as such). Estimates: per-unit costs on one H100 (:data:`H100`), measured ones from
earlier lent H100s and the rest estimated, each marked; the JSON records what the run measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 540.0  # the device tool's 10 minutes per command, less a minute for the machine's own start-up
EXIT_USAGE = 2


def _import_from_checkout() -> None:
    """Make ``distillbench`` importable from this checkout when it is not installed (a bare device machine).

    pyproject's ``package-dir`` maps the import package onto the top-level folders; the same mapping is
    built here by hand, so the campaign needs neither ``pip install`` nor network access there.
    """
    try:
        import distillbench.harness  # noqa: F401

        return
    except ImportError:
        pass
    folders = {
        "distillbench": ROOT / "harness" / "_distillbench",
        "distillbench.harness": ROOT / "harness",
        "distillbench.methods": ROOT / "methods",
        "distillbench.datasets": ROOT / "datasets",
        "distillbench.leaderboard": ROOT / "leaderboard",
    }
    for name, folder in folders.items():
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_import_from_checkout()
sys.path.insert(0, str(ROOT / "benchmarks"))
from bias_curve import COLUMNS, Snapshots  # noqa: E402
from fidelity_dd import SETTINGS as DD_SETTINGS  # noqa: E402
from fidelity_dd import spec_for  # noqa: E402

from distillbench.harness import store  # noqa: E402
from distillbench.harness.checkpoint import NoCheckpoint  # noqa: E402
from distillbench.harness.errors import DataError, DistillBenchError  # noqa: E402
from distillbench.harness.spec import TrialSpec  # noqa: E402

log = logging.getLogger("gpu_campaign")


# ------------------------------------------------------------------------------------------- costs
@dataclasses.dataclass(frozen=True)
class Cost:
    """One per-unit cost on one H100 with the process alone on the GPU, and where the figure comes from."""

    seconds: float
    source: str  # starts with "measured" or "estimate"


# The planner's figures. "measured" ones come from earlier lent H100s (benchmarks/README.md's GPU table,
# docs/bias.md); "estimate" ones are reasoned from those and are what a first campaign run replaces:
# its JSON holds the measured seconds per iteration and per evaluation of every cell.
H100: dict[str, Cost] = {
    "setup": Cost(5.0, "estimate: parent start, spec checks, data check"),
    "child_start": Cost(12.0, "estimate: interpreter, torch import, CUDA context, dataset load"),
    "dm_it_ipc10": Cost(0.029, "measured: docs/bias.md, DM width 128, 256 real/class, IPC 10, DSA, alone"),
    "dm_it_ipc50": Cost(0.035, "estimate: IPC 10's 29 ms plus 400 more synthetic images through forward+backward"),
    "dm_it_digits": Cost(0.012, "estimate: 8x8 inputs, launch-bound"),
    "kde": Cost(15.0, "estimate: SupCon encoder, 5 epochs over 7,200 images, and the density step"),
    "quick_eval_ipc10": Cost(3.0, "estimate: K=3 x 300 steps, from 44 ms per K=20 step (benchmarks/README.md)"),
    "quick_eval_ipc50": Cost(10.0, "estimate: K=3 x 600 steps of 250 images"),
    "convnet_eval_ipc1": Cost(12.0, "estimate: K=20 batched, 1,000 one-batch epochs of 10 images"),
    "replay_eval": Cost(2.0, "estimate: dd-replay-v1 of a fixed-init set, K=1"),
    "dc_it_ipc1": Cost(0.10, "estimate: from DC IPC 10's 2.6 s per iteration (10 outer x 50 inner steps)"),
    "dsa_it_ipc1": Cost(0.12, "estimate: dc_it_ipc1 plus Siamese DSA"),
    "dd_it": Cost(0.012, "estimate: LeNet, 3 unrolled steps on 10 images, 1,024 real images, launch-bound"),
    "mtt_buffer": Cost(30.0, "estimate: 10 experts x 10 epochs of 7,200 images"),
    "mtt_it": Cost(0.03, "estimate: 20 student steps on 10 images, width 128"),
    "speed_sequential": Cost(3.34, "measured: benchmarks/README.md, K=20 x 50 epochs sequential"),
    "speed_batched": Cost(2.2, "measured: benchmarks/README.md, K=20 x 50 epochs batched (no remedies)"),
    "speed_compile": Cost(60.0, "estimate: Inductor compile of the vmapped step (CPU: 30-90 s)"),
    "speed_agreement": Cost(30.0, "estimate: K=20 x 300 epochs, sequential (~20 s) and batched (~10 s)"),
}
# --smoke: the same phases on the CPU of a development machine, tiny settings (seconds, loaded machine).
SMOKE: dict[str, Cost] = {
    "setup": Cost(3.0, "smoke"),
    "child_start": Cost(6.0, "smoke"),
    "dm_it_digits": Cost(0.01, "smoke"),
    "kde": Cost(1.0, "smoke"),
    "quick_eval_ipc10": Cost(0.5, "smoke"),
    "convnet_eval_ipc1": Cost(0.5, "smoke"),
    "dc_it_ipc1": Cost(0.05, "smoke"),
    "speed_sequential": Cost(0.3, "smoke"),
    "speed_batched": Cost(0.3, "smoke"),
    "speed_compile": Cost(0.0, "smoke: compile is not tried (a minute or more on a CPU)"),
    "speed_agreement": Cost(0.0, "smoke: no agreement run (needs MNIST)"),
}


# ------------------------------------------------------------------------------------------- cells
@dataclasses.dataclass(frozen=True)
class Cell:
    """One trial of the campaign: a spec, how it runs, what it is worth, and what it costs.

    ``kind`` is ``curve`` (DM: the set evaluated at ``milestones`` and once more when the deadline comes,
    so it runs until the deadline or ``iterations``) or ``trial`` (distil to the end, evaluate once). The
    ``digits`` and ``smoke`` fields replace dataset, method and weighting without MNIST and under ``--smoke``.
    """

    name: str
    kind: str
    dataset: str
    method: str
    ipc: int
    protocol: str
    iterations: int
    it_cost: str  # key of the per-iteration cost
    eval_cost: str  # key of the per-evaluation cost
    paper: str  # the paper's number and setting this cell stands beside
    note: str  # how the cell differs from the paper
    weighting: str = "none"
    setup_cost: str | None = None  # key of a one-off cost (weights, expert buffer)
    milestones: tuple[int, ...] = ()
    digits: tuple[str, str, str] | None = None  # (dataset, method, weighting) on the embedded digits
    smoke: tuple[str, str, str] | None = None  # (dataset, method, weighting) under --smoke (digits based)


def _dm_curve(name: str, ipc: int, weighting: str, paper: str, extra: str = "") -> Cell:
    """A DM curve cell; ``extra`` adds DM parameters (``weight_mode=sample``) to the paper's."""
    it_cost = "dm_it_ipc10" if ipc == 10 else "dm_it_ipc50"
    options = f",{extra}" if extra else ""
    return Cell(
        name=name,
        kind="curve",
        dataset="colored_mnist[conflict=0.05]",
        method=f"dm[iterations=20000{options}]",
        ipc=ipc,
        protocol="quick-v1",
        iterations=20000,
        it_cost=it_cost,
        eval_cost=f"quick_eval_ipc{ipc}",
        paper=paper,
        note="mnist-10k base (36 conflicting images per class, paper ~300); quick-v1 (K=3, 300 epochs) as the "
        "earlier H100 table; stops at the deadline, short of 20,000 iterations",
        weighting=weighting,
        setup_cost="kde" if weighting.startswith("kde") else None,  # groups reads labels: no setup
        milestones=(2000, 5000, 10000, 15000, 20000),
        digits=("colored_mnist[base=digits,conflict=0.05]", f"dm[iterations=20000{options}]", weighting),
        smoke=(
            "colored_mnist[base=digits,conflict=0.05]",
            f"dm[iterations=100000,batch_real=4,net=convnet[width=8]{options}]",
            "kde[encoder=pixels]" if weighting.startswith("kde") else weighting,
        ),
    )


def _sldd_method(train_size: int) -> str:
    """Soft-label DD with 10 images (fidelity_dd's setting 1) at the paper's outer iterations on ``train_size``."""
    per_epoch = max(1, train_size // min(1024, train_size))  # dd's batch 1024, the last batch dropped
    spec, _, _ = spec_for(DD_SETTINGS[1], "lenet", None, per_epoch)
    return spec


# Training-split sizes the plan converts soft-label DD's run length with (a run recomputes it from the data).
MNIST10K_TRAIN = 7200  # mnist-10k after its validation split
DIGITS_TRAIN = 1257

CELLS: tuple[Cell, ...] = (
    _dm_curve("dm-kde-ipc50", 50, "kde", "DM + KDE 91.5% (Cui et al. 2024, 20,000 it., full MNIST)"),
    _dm_curve("dm-ipc50", 50, "none", "DM alone 23.8% (Cui et al. 2024)"),
    _dm_curve(
        "dm-groups-ipc50",
        50,
        "groups[share=1.0]",
        "the reweighting ceiling: all weight on the conflicting samples (oracle; docs/bias.md, 80% at IPC 10 on the "
        "CPU after 1,000 it.)",
    ),
    Cell(
        name="dc-mnist-ipc1",
        kind="trial",
        dataset="mnist",
        method="dc",
        ipc=1,
        protocol="convnet-v1",
        iterations=1000,
        it_cost="dc_it_ipc1",
        eval_cost="convnet_eval_ipc1",
        paper="DC 91.7% (DC readme, full MNIST)",
        note="paper settings (1,000 iterations, batch_real 256, width 128) on mnist-10k's 7,200 images",
        digits=("digits", "dc", "none"),
        smoke=("digits", "dc[iterations=3,batch_real=8,net=convnet[width=8]]", "none"),
    ),
    Cell(
        name="sldd-10",
        kind="trial",
        dataset="mnist",
        method=_sldd_method(MNIST10K_TRAIN),
        ipc=1,
        protocol="dd-replay-v1",
        iterations=20300,
        it_cost="dd_it",
        eval_cost="replay_eval",
        paper="soft-label DD > 96% (10 images)",
        note="the paper's 350 epochs of 58 outer iterations as outer iterations on mnist-10k; also a long CPU run",
        digits=("digits", _sldd_method(DIGITS_TRAIN), "none"),
    ),
    Cell(
        name="dsa-mnist-ipc1",
        kind="trial",
        dataset="mnist",
        method="dsa",
        ipc=1,
        protocol="convnet-v1",
        iterations=1000,
        it_cost="dsa_it_ipc1",
        eval_cost="convnet_eval_ipc1",
        paper="DSA 88.7% (DSA readme, full MNIST)",
        note="paper settings on mnist-10k",
        digits=("digits", "dsa", "none"),
    ),
    Cell(
        name="mtt-mnist-ipc1",
        kind="trial",
        dataset="mnist",
        method="mtt[iterations=1000,syn_steps=20,expert_epochs=2,max_start_epoch=5,lr_img=100,num_experts=10,"
        "train_epochs=10]",
        ipc=1,
        protocol="convnet-v1",
        iterations=1000,
        it_cost="mtt_it",
        eval_cost="convnet_eval_ipc1",
        setup_cost="mtt_buffer",
        paper="no MNIST number in the trajectory papers; docs/trajectory.md has the CPU evidence",
        note="small: 10 experts x 10 epochs (paper 100 x 50), 1,000 iterations (paper 5,000), width 128",
        digits=(
            "digits",
            "mtt[iterations=1000,syn_steps=20,expert_epochs=2,max_start_epoch=5,lr_img=100,num_experts=10,"
            "train_epochs=10]",
            "none",
        ),
    ),
    _dm_curve(
        "dm-kde-sample-ipc50",
        50,
        "kde",
        "DM + KDE 91.5%; real batch drawn by weight (docs/bias.md: faster early at IPC 10, level by 4,000 it.)",
        extra="weight_mode=sample",
    ),
    _dm_curve("dm-kde-ipc10", 10, "kde", "no paper number at IPC 10; CPU 64.55% at 6,000 it. (docs/bias.md)"),
)
CELL_NAMES = tuple(c.name for c in CELLS)


# ------------------------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class Settings:
    """What one campaign run is: budget, packing, data, device, and the cells asked for."""

    budget_s: float = BUDGET_S
    slots: int = 4
    contention: float = 1.5
    speed: bool = True
    speed_timeout_s: float = 200.0
    grace_s: float = 8.0
    margin_s: float = 10.0
    data_root: str | None = None
    data_note: str = ""
    device: str | None = None
    smoke: bool = False
    cells: tuple[str, ...] = CELL_NAMES
    speed_k: int = 20
    speed_epochs: int = 50

    @property
    def costs(self) -> dict[str, Cost]:
        return SMOKE if self.smoke else H100

    def cost(self, key: str) -> float:
        costs = self.costs
        if key in costs:
            return costs[key].seconds
        if self.smoke:  # a smoke cell's per-unit costs default to tiny
            return 0.05
        raise KeyError(key)


def cell_variant(cell: Cell, settings: Settings) -> tuple[str, str, str, str]:
    """(dataset, method, weighting, variant) the cell runs with under these settings."""
    if settings.smoke:
        if cell.smoke is None:
            raise ValueError(f"cell {cell.name!r} has no --smoke variant; pick cells with --cells")
        return (*cell.smoke, "smoke")
    if settings.data_root is None:
        if cell.digits is None:
            raise ValueError(f"cell {cell.name!r} needs MNIST and has no digits variant")
        return (*cell.digits, "digits (no MNIST data)")
    return cell.dataset, cell.method, cell.weighting, "paper"


def trial_spec(cell: Cell, settings: Settings) -> TrialSpec:
    dataset, method, weighting, _ = cell_variant(cell, settings)
    return TrialSpec(dataset, method, cell.ipc, 0, weighting, protocol=cell.protocol, grid="gpu-campaign")


def _iteration_cost(cell: Cell, settings: Settings, variant: str) -> float:
    key = "dm_it_digits" if (cell.kind == "curve" and variant.startswith("digits")) else cell.it_cost
    return settings.cost(key)


@dataclasses.dataclass
class PlannedCell:
    cell: Cell
    variant: str
    spec: dict[str, Any]
    trial_id: str
    lane: int | None
    start_s: float | None
    seconds: float | None
    end_s: float | None
    iterations: int  # planned (curves: the estimated reach by the deadline)
    limit: int  # the iterations the spec runs to
    skipped: str | None = None


@dataclasses.dataclass
class Plan:
    settings: Settings
    speed_s: float
    cells_start_s: float
    deadline_s: float
    cells: list[PlannedCell]

    @property
    def total_s(self) -> float:
        ends = [c.end_s for c in self.cells if c.end_s is not None]
        return max([self.cells_start_s, *ends]) + self.settings.margin_s

    @property
    def fits(self) -> bool:
        return self.total_s <= self.settings.budget_s + 1e-6 and any(c.skipped is None for c in self.cells)

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "budget_s": s.budget_s,
            "slots": s.slots,
            "contention": s.contention,
            "data_root": s.data_root,
            "data": s.data_note,
            "smoke": s.smoke,
            "speed": {"start_s": s.cost("setup"), "seconds": self.speed_s, "timeout_s": s.speed_timeout_s}
            if s.speed
            else None,
            "cells_start_s": self.cells_start_s,
            "deadline_s": self.deadline_s,
            "total_s": round(self.total_s, 1),
            "fits": self.fits,
            "cells": [
                {
                    "name": p.cell.name,
                    "kind": p.cell.kind,
                    "variant": p.variant,
                    "spec": p.spec,
                    "trial_id": p.trial_id,
                    "lane": p.lane,
                    "start_s": _round(p.start_s),
                    "seconds": _round(p.seconds),
                    "end_s": _round(p.end_s),
                    "iterations": p.iterations,
                    "limit": p.limit,
                    "paper_iterations": p.cell.iterations,
                    "paper": p.cell.paper,
                    "note": p.cell.note,
                    "skipped": p.skipped,
                }
                for p in self.cells
            ],
            "costs": {k: dataclasses.asdict(v) for k, v in s.costs.items()},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def speed_seconds(settings: Settings) -> float:
    """Estimated length of the speed phase: a child's start, warm-ups, sequential, 5 variants, compile, agreement."""
    if not settings.speed:
        return 0.0
    scale = settings.speed_epochs / 50
    batched = settings.cost("speed_batched") * scale
    return (
        settings.cost("child_start")
        + settings.cost("speed_sequential") * scale * 1.1  # plus its warm-up
        + 5 * batched * 1.1
        + settings.cost("speed_compile")
        + (settings.cost("speed_agreement") if settings.data_root is not None else 0.0)
    )


def cell_minimum_s(cell: Cell, settings: Settings, variant: str, contention: float, limit: int) -> float:
    """The least a cell needs: to the end of its ``limit`` iterations (trial) or to its first point (curve)."""
    fixed = settings.cost("child_start") + (settings.cost(cell.setup_cost) if cell.setup_cost else 0.0) * contention
    eval_s = settings.cost(cell.eval_cost) * contention
    it_s = _iteration_cost(cell, settings, variant) * contention
    first = (SMOKE_MILESTONES if settings.smoke else cell.milestones)[0] if cell.kind == "curve" else limit
    return fixed + first * it_s + eval_s


def curve_reach(cell: Cell, settings: Settings, variant: str, seconds: float, contention: float, limit: int) -> int:
    """Iterations a curve cell reaches in ``seconds``, its milestone evaluations and last point included."""
    fixed = settings.cost("child_start") + (settings.cost(cell.setup_cost) if cell.setup_cost else 0.0) * contention
    eval_s = settings.cost(cell.eval_cost) * contention
    it_s = _iteration_cost(cell, settings, variant) * contention
    milestones = SMOKE_MILESTONES if settings.smoke else cell.milestones
    left = seconds - fixed - eval_s  # the last point
    reach = 0
    for m in milestones:
        cost = (m - reach) * it_s + eval_s
        if cost > left:
            break
        left -= cost
        reach = m
    if reach < limit:
        reach = min(limit, reach + max(0, int(left / it_s)))
    return reach


def curve_seconds(cell: Cell, settings: Settings, variant: str, contention: float, limit: int) -> float:
    """How long a curve cell takes to run all ``limit`` iterations, every milestone evaluated."""
    fixed = settings.cost("child_start") + (settings.cost(cell.setup_cost) if cell.setup_cost else 0.0) * contention
    points = len([m for m in (SMOKE_MILESTONES if settings.smoke else cell.milestones) if m < limit]) + 1
    it_s = _iteration_cost(cell, settings, variant) * contention
    return fixed + limit * it_s + points * settings.cost(cell.eval_cost) * contention


SMOKE_MILESTONES = (2, 5)  # the smoke curves' points; their 100,000 iterations end at the deadline, as the real ones


def make_plan(settings: Settings) -> Plan:
    """Validate every cell's spec and lay the cells out on ``slots`` lanes in order of value.

    A curve cell takes its lane to the deadline; a trial cell takes its estimated length. A cell that does
    not fit before the deadline in the lane that frees first is skipped (and says why).

    Raises:
        DistillBenchError: a cell's spec does not resolve (unknown name, bad parameter, incompatible pair).
    """
    setup = settings.cost("setup")
    speed = speed_seconds(settings)
    start = setup + speed
    deadline = settings.budget_s - settings.margin_s
    contention = settings.contention if settings.slots > 1 else 1.0
    lanes = [start] * settings.slots
    planned = []
    for name in settings.cells:
        cell = next(c for c in CELLS if c.name == name)
        spec = trial_spec(cell, settings)
        try:
            resolved = spec.resolve()
        except DistillBenchError as exc:
            raise type(exc)(f"cell {cell.name!r}: {exc}") from None
        variant = cell_variant(cell, settings)[3]
        lane = min(range(settings.slots), key=lambda i: lanes[i])
        begin = lanes[lane]
        # The iterations the spec runs to (the paper's; a smoke spec's few), for the estimates.
        limit = (
            int(getattr(resolved.method.params, "iterations", cell.iterations)) if settings.smoke else cell.iterations
        )
        entry = PlannedCell(cell, variant, spec.to_dict(), resolved.trial_id, None, None, None, None, 0, limit)
        need = cell_minimum_s(cell, settings, variant, contention, limit)
        if begin + need > deadline:
            entry.skipped = f"needs ~{need:.0f} s, {max(0.0, deadline - begin):.0f} s left in the lane that frees first"
        elif cell.kind == "curve":
            entry.iterations = curve_reach(cell, settings, variant, deadline - begin, contention, limit)
            seconds = deadline - begin
            if entry.iterations == limit:  # done before the deadline: the lane frees for the next cell
                seconds = curve_seconds(cell, settings, variant, contention, limit)
            entry.lane, entry.start_s, entry.seconds, entry.end_s = lane, begin, seconds, begin + seconds
            lanes[lane] = begin + seconds
        else:
            entry.iterations = limit
            entry.lane, entry.start_s, entry.seconds, entry.end_s = lane, begin, need, begin + need
            lanes[lane] = begin + need
        planned.append(entry)
    return Plan(settings, speed, start, deadline, planned)


def format_plan(plan: Plan) -> str:
    s = plan.settings
    lines = [
        f"gpu_campaign plan ({'SMOKE, CPU' if s.smoke else 'one H100'}): budget {s.budget_s:.0f} s "
        f"({s.budget_s / 60:.1f} min), "
        f"{s.slots} cell slots, contention x{s.contention} while packed (assumed), deadline {plan.deadline_s:.0f} s",
        f"data: {s.data_note}",
        f"{'part':<20} {'start':>6} {'est. s':>7} {'end':>6}  what",
        f"{'setup':<20} {0:>6.0f} {s.cost('setup'):>7.0f} {s.cost('setup'):>6.0f}  parent start, spec checks",
    ]
    if s.speed:
        lines.append(
            f"{'speed':<20} {s.cost('setup'):>6.0f} {plan.speed_s:>7.0f} {plan.cells_start_s:>6.0f}  issue 9: "
            f"K={s.speed_k} x {s.speed_epochs} epochs, sequential vs batched [{' | '.join(speed_variants(s))}]"
            f"{', agreement on MNIST' if s.data_root else ''}; timeout {s.speed_timeout_s:.0f} s"
        )
    for p in plan.cells:
        if p.skipped:
            lines.append(f"{p.cell.name:<20} {'-':>6} {'-':>7} {'-':>6}  SKIPPED: {p.skipped}")
            continue
        reach = (
            f"~{p.iterations:,} of {p.limit:,} it. by the deadline"
            if p.cell.kind == "curve"
            else f"{p.iterations:,} it."
        )
        lines.append(
            f"{p.cell.name:<20} {p.start_s:>6.0f} {p.seconds:>7.0f} {p.end_s:>6.0f}  lane {p.lane + 1}, {p.variant}: "
            f"{p.spec['method']} on {p.spec['dataset']}"
            + (f" + {p.spec['weighting']}" if p.spec["weighting"] != "none" else "")
            + f", IPC {p.spec['ipc']}, {p.spec['protocol']}; {reach}"
        )
    lines.append(
        f"total: ~{plan.total_s:.0f} s of {s.budget_s:.0f} s ({'fits' if plan.fits else 'DOES NOT FIT'}); "
        f"{sum(p.skipped is None for p in plan.cells)} of {len(plan.cells)} cells planned, every spec valid"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- child: cells
class OutOfTime(Exception):  # noqa: N818 - a signal, not an error
    """Raised from a method's loop (through its checkpoint hook) when the cell must stop."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"stopped at iteration {iteration} for the deadline")
        self.iteration = iteration


class CurvePoints(Snapshots):
    """``bias_curve``'s snapshots plus the deadline: a last point, then a stop, before the cell's time is up."""

    def __init__(self, at: list[int], evaluate: Callable[[int, Any, float], None], deadline: float, eval_s: float):
        super().__init__(at, evaluate)
        self.deadline = deadline
        self.eval_s = eval_s  # replaced by the measured evaluation time after the first point

    def maybe_save(self, iteration: int, **objects: Any) -> bool:
        super().maybe_save(iteration, **objects)
        if time.time() + 1.5 * self.eval_s + 2.0 >= self.deadline:
            if iteration not in self.at:
                self.at.add(iteration)
                self._point(iteration, objects["syn"])
            raise OutOfTime(iteration)
        return False


class DeadlineGuard(NoCheckpoint):
    """The checkpoint hook of a trial cell: counts iterations and stops the loop when evaluating would not fit."""

    def __init__(self, deadline: float, eval_s: float) -> None:
        self.deadline = deadline
        self.eval_s = eval_s
        self.iteration = 0
        self.t0 = time.perf_counter()

    def resume(self, **objects: Any) -> int:
        self.t0 = time.perf_counter()
        return 0

    def maybe_save(self, iteration: int, **objects: Any) -> bool:
        self.iteration = iteration
        if time.time() + 1.5 * self.eval_s + 2.0 >= self.deadline:
            raise OutOfTime(iteration)
        return False


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    text = json.dumps(doc, indent=1, default=str, allow_nan=True)
    store.atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _device_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    return info


def _smoke_protocol(protocol: Any) -> Any:
    """The cell's protocol cut to one epoch, one model and width 8 (--smoke only: exercises the path, no result)."""
    if protocol.engine != "train":
        return protocol
    return dataclasses.replace(protocol, epochs=2, n_models=1, networks=("convnet[width=8]",))


def run_cell(cell: Cell, settings: Settings, out: Path, deadline: float, workdir: Path) -> int:
    """Run one cell in this process, writing its record to ``out`` after every point."""
    import torch

    from distillbench.harness.runner import distill_set, evaluate_set, load_data, pick_device
    from distillbench.harness.types import DistilledSet

    t_start = time.perf_counter()
    record: dict[str, Any] = {"name": cell.name, "kind": cell.kind, "status": "running", "points": []}
    spec = trial_spec(cell, settings)
    record.update(spec=spec.to_dict(), paper=cell.paper, note=cell.note, pid=os.getpid())
    _write_json(out, record)
    eval_s = settings.cost(cell.eval_cost)
    try:
        device = pick_device(settings.device)
        record["device"] = _device_info(device)
        resolved = spec.resolve()
        data = load_data(resolved, Path(settings.data_root) if settings.data_root else ROOT)
        if cell.name == "sldd-10" and not settings.smoke:
            # The paper's outer iterations on this training split (the plan assumed mnist-10k's 7,200).
            spec = dataclasses.replace(spec, method=_sldd_method(len(data.train)))
            record["spec"] = spec.to_dict()
            resolved = spec.resolve()
        record["trial_id"] = resolved.trial_id
        protocol = _smoke_protocol(resolved.protocol) if settings.smoke else resolved.protocol
        record["protocol"] = {"name": protocol.name, "epochs": protocol.epochs, "n_models": protocol.n_models}
        labels = torch.arange(data.info.num_classes).repeat_interleave(cell.ipc)

        def point(iteration: int, dset: Any, distill_s: float) -> None:
            t = time.perf_counter()
            cols = evaluate_set(protocol, dset, data, seed=0, device=device)
            seconds = time.perf_counter() - t
            if isinstance(hook, CurvePoints | DeadlineGuard):
                hook.eval_s = max(hook.eval_s, seconds) if record["points"] else seconds
            record["points"].append(
                {
                    "iteration": iteration,
                    "distill_seconds": round(distill_s, 2),
                    "eval_seconds": round(seconds, 2),
                    **{k: cols.get(k) for k in COLUMNS},
                    "acc_per_model": cols.get("acc_per_model"),
                }
            )
            record["iterations_done"] = iteration
            if iteration:
                record["seconds_per_iteration"] = round(distill_s / iteration, 5)
            _write_json(out, record)
            print(f"[{cell.name}] it={iteration} acc={cols.get('acc_mean')} ({seconds:.1f} s eval)", flush=True)

        t0 = time.perf_counter()
        if cell.kind == "curve":
            at = list(SMOKE_MILESTONES if settings.smoke else cell.milestones)
            hook: Any = CurvePoints(at, lambda i, syn, s: point(i, DistilledSet(x=syn, y=labels), s), deadline, eval_s)
            try:
                distill_set(resolved, data, device=device, checkpoint=hook, results=workdir, cache_dir=workdir)
                record["status"] = "ok"
            except OutOfTime as stop:
                record["status"] = "stopped_at_deadline"
                record["stopped_at"] = stop.iteration
        else:
            hook = DeadlineGuard(deadline, eval_s)
            try:
                dset = distill_set(resolved, data, device=device, checkpoint=hook, results=workdir, cache_dir=workdir)
            except OutOfTime as stop:
                # dd checkpoints at epoch ends, the other methods every iteration: say which was counted.
                unit = "epoch" if resolved.method.name == "dd" else "iteration"
                record["status"] = "stopped_at_deadline"
                record["stopped_at"] = stop.iteration
                record["stopped_at_unit"] = unit
                distill_s = time.perf_counter() - hook.t0
                record[f"seconds_per_{unit}"] = round(distill_s / max(1, stop.iteration), 5)
            else:
                t_end = time.perf_counter()
                done = int(dset.meta.get("iterations_done") or hook.iteration)
                point(done, dset, t_end - t0)
                # The loop alone (from its first iteration), without weights, buffers or evaluation.
                record["seconds_per_iteration"] = round((t_end - hook.t0) / max(1, done), 5)
                record["status"] = "ok"
    except Exception as exc:  # the record carries the error; the parent and the other cells go on
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}"
        log.exception("cell %s failed", cell.name)
    record["wall_s"] = round(time.perf_counter() - t_start, 1)
    _write_json(out, record)
    return 0 if record["status"] != "error" else 1


# ------------------------------------------------------------------------------------------- child: speed
SPEED_VARIANTS = ("none", "prefetch", "prefetch,channels_last", "prefetch,bf16", "prefetch,channels_last,bf16")


def speed_variants(settings: Settings) -> list[str]:
    """The batched options timed, in order; ``compile`` last (it may eat the phase) and never under --smoke."""
    return list(SPEED_VARIANTS) + ([] if settings.smoke else ["prefetch,channels_last,bf16,compile"])


NOT_IMPLEMENTED = (
    "DSA parameters drawn by a device generator: that would change each model's random stream, so the batched "
    "models would no longer equal the sequential engine's; 'prefetch' removes the per-step host-device "
    "synchronisations instead (host draws, one pinned non-blocking copy per epoch)",
    "a hand-fused norm/ReLU/pool kernel or a stacked (non-vmap) ConvNet: only torch.compile's fusion of the "
    "vmapped step ('compile') is tried",
)


def _speed_inputs(settings: Settings) -> tuple[Any, Any, Any, str]:
    """(IPC-10 set, data bundle or None, dataset info, what the data is) for the speed checks."""
    import torch

    from distillbench.harness.plugins import DATASETS
    from distillbench.harness.types import DistilledSet

    name = "digits" if settings.smoke else "mnist"
    configured = DATASETS.resolve(name)
    dataset = configured.obj(configured.params)
    g = torch.Generator().manual_seed(0)
    if settings.smoke or settings.data_root is not None:
        root = Path(settings.data_root) if settings.data_root and not settings.smoke else ROOT
        data = dataset.load(root)
        chosen = torch.cat([idx[torch.randperm(len(idx), generator=g)[:10]] for idx in data.class_indices()])
        dset = DistilledSet(data.train.x[chosen].clone(), data.train.y[chosen].clone())
        return dset, data, data.info, f"{name} ({'embedded' if settings.smoke else settings.data_root}), 10 per class"
    info = dataset.info()
    x = torch.randn(100, *info.shape, generator=g)
    return DistilledSet(x, torch.arange(10).repeat_interleave(10)), None, info, "random tensors of MNIST's shape"


def run_speed(settings: Settings, out: Path, deadline: float) -> int:
    """Issue 9's open GPU check: K batched models against K sequential ones, per batched option; agreement."""
    import torch

    from distillbench.harness import batched
    from distillbench.harness.evaluate import evaluate, train_on_set
    from distillbench.harness.protocols import CONVNET_V1
    from distillbench.harness.runner import pick_device
    from distillbench.harness.seeding import derive_seed, torch_generator

    record: dict[str, Any] = {"status": "running", "target_ratio": 3.0, "variants": [], "pid": os.getpid()}
    record["not_implemented"] = list(NOT_IMPLEMENTED)
    _write_json(out, record)
    try:
        device = pick_device(settings.device)
        record["device"] = _device_info(device)
        dset, data, info, what = _speed_inputs(settings)
        network = "convnet[width=8]" if settings.smoke else "convnet"
        k, epochs = settings.speed_k, settings.speed_epochs
        protocol = dataclasses.replace(CONVNET_V1, networks=(network,), epochs=epochs, n_models=k)
        record["setting"] = {"k": k, "epochs": epochs, "network": network, "images": len(dset), "data": what}
        seeds = [derive_seed(0, "gpu_campaign", "speed", i) for i in range(k)]

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def sequential(p: Any) -> float:
            sync()
            t = time.perf_counter()
            for s in seeds[: p.n_models]:
                train_on_set(p, dset, info, generator=torch_generator(s), device=device)
            sync()
            return time.perf_counter() - t

        def together(p: Any, options: str) -> float:
            sync()
            t = time.perf_counter()
            batched.train_models_batched(
                p,
                dset,
                info,
                generators=[torch_generator(s) for s in seeds[: p.n_models]],
                device=device,
                options=batched.BatchedOptions.parse(options),
            )
            sync()
            return time.perf_counter() - t

        warm = dataclasses.replace(protocol, epochs=2)
        sequential(dataclasses.replace(warm, n_models=1))  # CUDA context, cuDNN autotuning, allocator
        record["sequential_s"] = round(sequential(protocol), 3)
        _write_json(out, record)
        compile_failed: list[str] = []

        class _Catch(logging.Handler):
            def emit(self, rec: logging.LogRecord) -> None:
                if "torch.compile failed" in rec.getMessage():
                    compile_failed.append(rec.getMessage())

        logging.getLogger("distillbench.harness.compiled").addHandler(_Catch())

        def measure(options: str) -> None:
            if time.time() + 10 >= deadline:
                record["variants"].append({"options": options, "skipped": "speed phase deadline"})
                return
            try:
                first = together(warm, options)  # warm-up; for compile, the compile itself
                seconds = together(protocol, options)
            except Exception as exc:  # one failing variant must not hide the others
                record["variants"].append({"options": options, "error": f"{type(exc).__name__}: {exc}"[:500]})
                log.exception("batched[%s] failed", options)
                return
            entry = {
                "options": options,
                "seconds": round(seconds, 3),
                "ratio": round(record["sequential_s"] / seconds, 3),
                "first_call_s": round(first, 2),
                "meets_target": record["sequential_s"] / seconds >= 3.0,
            }
            if "compile" in options:
                entry["compiled"] = not compile_failed
                if compile_failed:
                    entry["compile_error"] = compile_failed[0][:500]
            record["variants"].append(entry)
            _write_json(out, record)
            print(f"[speed] {options}: {seconds:.3f} s, ratio {entry['ratio']}", flush=True)

        variants = speed_variants(settings)
        for options in [v for v in variants if "compile" not in v]:
            measure(options)
        # Agreement before compiling (which may take the rest of the phase): does the fastest eager variant
        # learn what the sequential engine learns?
        eager = [v for v in record["variants"] if "seconds" in v]
        if data is None or settings.smoke:
            record["agreement"] = {"skipped": "needs real MNIST (--data-root); not run under --smoke"}
        elif eager:
            pick = min(eager, key=lambda v: v["seconds"])["options"]
            agree = dataclasses.replace(CONVNET_V1, epochs=300, n_models=k)
            if time.time() + settings.cost("speed_agreement") * 1.5 < deadline:
                try:
                    record["agreement"] = _agreement(agree, dset, data, pick, evaluate, device)
                except Exception as exc:
                    record["agreement"] = {"options": pick, "error": f"{type(exc).__name__}: {exc}"[:500]}
            else:
                record["agreement"] = {"skipped": "speed phase deadline", "options": pick}
        _write_json(out, record)
        for options in [v for v in variants if "compile" in v]:
            measure(options)
        timed = [v for v in record["variants"] if "seconds" in v]
        record["best"] = min(timed, key=lambda v: v["seconds"]) if timed else None
        record["status"] = "ok"
    except Exception as exc:
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}"
        log.exception("speed checks failed")
    _write_json(out, record)
    return 0 if record["status"] == "ok" else 1


def _agreement(protocol: Any, dset: Any, data: Any, options: str, evaluate: Any, device: Any) -> dict[str, Any]:
    """K models per engine on real MNIST IPC 10: mean accuracies and Welch's t-test (as run.py's eval_agreement)."""
    from scipy import stats

    from distillbench.harness import batched

    previous = {key: os.environ.get(key) for key in (batched.ENGINE_ENV, batched.OPTIONS_ENV)}
    result: dict[str, Any] = {"options": options, "epochs": protocol.epochs, "k": protocol.n_models}
    try:
        for engine in ("sequential", "batched"):
            os.environ[batched.ENGINE_ENV] = engine
            os.environ[batched.OPTIONS_ENV] = options
            t = time.perf_counter()
            accs = evaluate(protocol, dset, data, seed=0, device=device).acc_per_model
            result[engine] = {
                "acc_mean": statistics.fmean(accs),
                "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "seconds": round(time.perf_counter() - t, 2),
                "acc_per_model": accs,
            }
        test = stats.ttest_ind(
            result["sequential"]["acc_per_model"], result["batched"]["acc_per_model"], equal_var=False
        )
        result["welch_p"] = None if math.isnan(test.pvalue) else float(test.pvalue)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return result


# ------------------------------------------------------------------------------------------- parent
@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen
    out: Path
    log: Path
    deadline: float
    started: float
    alongside: list[str]
    killed: bool = False


def _tail(path: Path, lines: int = 25) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _child_args(settings: Settings, which: str, out: Path, deadline: float, workdir: Path) -> list[str]:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--child-out", str(out)]
    args += ["--deadline", repr(deadline), "--workdir", str(workdir), "--threads", str(_threads(settings))]
    if settings.data_root:
        args += ["--data-root", settings.data_root]
    if settings.device:
        args += ["--device", settings.device]
    if settings.smoke:
        args.append("--smoke")
    args += ["--speed-k", str(settings.speed_k), "--speed-epochs", str(settings.speed_epochs)]
    return args


def _threads(settings: Settings) -> int:
    return max(1, (os.cpu_count() or 2) // max(1, settings.slots))


def run_campaign(plan: Plan, out: Path, *, keep_workdir: bool = False) -> int:
    """Run the plan's phases as child processes; merge their records into ``out`` after every change.

    The children's records, logs and caches (kde weights, expert buffers) live in a temporary folder,
    removed at the end unless ``keep_workdir``; a failed child's log tail is in its record.
    """
    settings = plan.settings
    t0 = time.time()
    deadline = t0 + plan.deadline_s
    workdir = Path(tempfile.mkdtemp(prefix="gpu_campaign."))
    doc: dict[str, Any] = {
        "campaign": "gpu_campaign",
        "issue": 20,
        "status": "running",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "workdir": str(workdir),
        "plan": plan.to_dict(),
        "speed": None,
        "cells": {},
    }

    def save() -> None:
        doc["elapsed_s"] = round(time.time() - t0, 1)
        _write_json(out, doc)

    save()
    print(format_plan(plan), flush=True)
    print(f"writing {out}; child logs in {workdir}{'' if keep_workdir else ' (removed at the end)'}", flush=True)

    def start(which: str, child_deadline: float, alongside: list[str]) -> Child:
        name = which.split(":", 1)[1] if ":" in which else which
        child_out = workdir / f"{name}.json"
        child_log = workdir / f"{name}.log"
        with child_log.open("w") as handle:
            proc = subprocess.Popen(
                _child_args(settings, which, child_out, child_deadline, workdir),
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        print(f"[{time.time() - t0:6.1f} s] start {name} (pid {proc.pid})", flush=True)
        return Child(name, proc, child_out, child_log, child_deadline, time.time(), alongside)

    def collect(child: Child, killed: bool) -> dict[str, Any]:
        record = _read(child.out) or {"name": child.name, "status": "not_started"}
        if killed:
            record["status"] = "timeout" if record.get("status") == "running" else record.get("status")
            record["killed_after_s"] = round(time.time() - child.started, 1)
        elif record.get("status") == "running":  # exited without a final record: a crash
            record["status"] = "crashed"
        record["exit_code"] = child.proc.returncode
        record["alongside"] = child.alongside
        record["wall_s"] = record.get("wall_s") or round(time.time() - child.started, 1)
        if record["status"] not in ("ok", "stopped_at_deadline"):
            record["log_tail"] = _tail(child.log)
        print(f"[{time.time() - t0:6.1f} s] {child.name}: {record['status']}", flush=True)
        return record

    def finish(child: Child) -> bool:
        """Whether the child is done (killed once past its deadline and the grace)."""
        if child.proc.poll() is not None:
            return True
        if time.time() > child.deadline + settings.grace_s:
            child.proc.kill()
            child.proc.wait()
            child.killed = True
            return True
        return False

    # Phase 1: speed, alone on the device.
    if settings.speed:
        speed_deadline = min(deadline, time.time() + settings.speed_timeout_s)
        child = start("speed", speed_deadline, [])
        while not finish(child):
            time.sleep(0.5)
            partial = _read(child.out)
            if partial is not None and partial != doc["speed"]:
                doc["speed"] = partial
                save()
        doc["speed"] = collect(child, child.killed)
        save()

    # Phase 2: the cells, packed.
    pending = [p for p in plan.cells if p.skipped is None]
    for p in plan.cells:
        if p.skipped is not None:
            doc["cells"][p.cell.name] = {"name": p.cell.name, "status": "skipped", "reason": p.skipped}
    contention = settings.contention if settings.slots > 1 else 1.0
    running: list[Child] = []
    last_save = time.time()
    while pending or running:
        for child in [c for c in running if finish(c)]:
            running.remove(child)
            doc["cells"][child.name] = collect(child, child.killed)
            save()
        while pending and len(running) < settings.slots:
            entry = pending.pop(0)
            need = cell_minimum_s(entry.cell, settings, entry.variant, contention, entry.limit)
            if time.time() + need > deadline:
                reason = f"not started: needs ~{need:.0f} s, {max(0.0, deadline - time.time()):.0f} s left"
                doc["cells"][entry.cell.name] = {"name": entry.cell.name, "status": "skipped", "reason": reason}
                print(f"[{time.time() - t0:6.1f} s] {entry.cell.name}: {reason}", flush=True)
                save()
                continue
            running.append(start(f"cell:{entry.cell.name}", deadline, [c.name for c in running]))
        if time.time() - last_save > 5:
            for child in running:
                partial = _read(child.out)
                if partial is not None:
                    doc["cells"][child.name] = {**partial, "alongside": child.alongside}
            save()
            last_save = time.time()
        time.sleep(0.5)
    doc["status"] = "done"
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    save()
    print(summary(doc), flush=True)
    if not keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _git_sha() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # the device copy may have no .git


def summary(doc: dict[str, Any]) -> str:
    lines = [f"gpu_campaign: {doc['status']} in {doc.get('elapsed_s')} s"]
    speed = doc.get("speed") or {}
    if speed:
        lines.append(f"speed: {speed.get('status')}, sequential {speed.get('sequential_s')} s")
        for v in speed.get("variants", []):
            measured = f"{v['seconds']} s, ratio {v['ratio']}" if "seconds" in v else v.get("skipped", "")
            lines.append(f"  batched[{v['options']}]: {measured}")
        if speed.get("agreement"):
            a = speed["agreement"]
            if "welch_p" in a:
                lines.append(
                    f"  agreement [{a['options']}]: sequential {a['sequential']['acc_mean']:.4f}, "
                    f"batched {a['batched']['acc_mean']:.4f}, Welch p {a['welch_p']}"
                )
    for name, cell in doc["cells"].items():
        last = (cell.get("points") or [{}])[-1]
        acc = last.get("acc_mean")
        lines.append(
            f"{name}: {cell.get('status')}"
            + (f", it. {last.get('iteration')}, acc {acc:.4f}" if acc is not None else "")
            + (f", conflicting {last['acc_conflicting']:.4f}" if last.get("acc_conflicting") is not None else "")
            + (f" ({cell['reason']})" if cell.get("reason") else "")
            + (f" ({cell['error']})" if cell.get("error") else "")
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    """One-line errors, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"gpu_campaign: error: {message}\n")


def _has_mnist(root: Path) -> bool:
    from distillbench.harness.plugins import DATASETS

    configured = DATASETS.resolve("mnist")
    try:
        configured.obj(configured.params).prepare(root, download=False)
    except DataError:
        return False
    return True


def find_data_root(arg: str | None) -> tuple[str | None, str]:
    """The MNIST root the cells read, and a line saying where it came from (``None``: digits fallback).

    Raises:
        ValueError: ``arg`` names a folder without MNIST (asked for explicitly, so no silent fallback).
    """
    if arg is not None:
        root = Path(arg).expanduser().resolve()
        if not _has_mnist(root):
            raise ValueError(f"--data-root {arg}: no MNIST in torchvision's layout there ({root}/MNIST/raw)")
        return str(root), f"MNIST at {root} (--data-root)"
    candidates = []
    if os.environ.get("DISTILLBENCH_DATA"):
        candidates.append((Path(os.environ["DISTILLBENCH_DATA"]).expanduser(), "$DISTILLBENCH_DATA"))
    candidates += [
        (ROOT / ".campaign-data" / "mnist-10k", "staged in the checkout"),
        (ROOT.parent / "shared" / "data" / "mnist-10k", "../shared/data"),
    ]
    for root, where in candidates:
        if _has_mnist(root):
            return str(root.resolve()), f"MNIST at {root.resolve()} ({where})"
    looked = ", ".join(str(r) for r, _ in candidates)
    return None, f"no MNIST found ({looked}): every cell runs its digits variant"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpu_campaign.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check it fits; run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the plan as one JSON object")
    parser.add_argument("--smoke", action="store_true", help="the same code path on the CPU with tiny settings")
    parser.add_argument("--out", default=None, help="the JSON file of results (default results/gpu_campaign.json)")
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (e.g. a copy of mnist-10k)")
    parser.add_argument("--budget-s", type=float, default=None, help=f"wall-clock budget (default {BUDGET_S:.0f})")
    parser.add_argument("--slots", type=int, default=None, help="cells at once on the device (default 4; smoke 2)")
    parser.add_argument("--contention", type=float, default=1.5, help="assumed slowdown of a cell while packed")
    parser.add_argument("--cells", default=None, help=f"comma-separated subset, in this order: {','.join(CELL_NAMES)}")
    parser.add_argument("--skip-speed", action="store_true", help="no speed phase")
    parser.add_argument("--speed-timeout-s", type=float, default=200.0, help="the speed phase's own limit")
    parser.add_argument("--grace-s", type=float, default=8.0, help="seconds past its deadline before a child is killed")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available; smoke: cpu)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the children's logs and records")
    parser.add_argument("--speed-k", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--speed-epochs", type=int, default=None, help=argparse.SUPPRESS)
    # Internal: how the parent starts its children.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    cells = CELL_NAMES
    if args.cells is not None:
        cells = tuple(c.strip() for c in args.cells.split(",") if c.strip())
        unknown = [c for c in cells if c not in CELL_NAMES]
        if unknown or not cells:
            parser.error(f"--cells: unknown {', '.join(unknown) or 'empty list'}; valid: {', '.join(CELL_NAMES)}")
    budget = args.budget_s if args.budget_s is not None else (60.0 if args.smoke else BUDGET_S)
    slots = args.slots if args.slots is not None else (2 if args.smoke else 4)
    for name, value, low in (("--budget-s", budget, 1), ("--slots", slots, 1), ("--contention", args.contention, 1)):
        if not (value >= low and math.isfinite(value)):
            parser.error(f"{name} must be a finite number >= {low}, got {value}")
    if args.speed_timeout_s <= 0 or args.grace_s < 0:
        parser.error("--speed-timeout-s must be positive and --grace-s non-negative")
    if args.device not in (None, "cpu", "cuda") and not str(args.device).startswith("cuda:"):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.smoke:
        data_root, data_note = None, "smoke: embedded digits only"
        if args.cells is None:
            cells = tuple(c.name for c in CELLS if c.smoke is not None)
    else:
        try:
            data_root, data_note = find_data_root(args.data_root)
        except ValueError as exc:
            parser.error(str(exc))
    return Settings(
        budget_s=budget,
        slots=slots,
        contention=args.contention,
        speed=not args.skip_speed,
        speed_timeout_s=args.speed_timeout_s,
        grace_s=args.grace_s,
        data_root=data_root,
        data_note=data_note,
        device=args.device or ("cpu" if args.smoke else None),
        smoke=args.smoke,
        cells=cells,
        speed_k=args.speed_k or (2 if args.smoke else 20),
        speed_epochs=args.speed_epochs or (2 if args.smoke else 50),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.child is not None:  # a child process started by run_campaign
        if args.smoke:
            # Compiling takes a minute on a CPU, longer than a whole smoke run (dm compiles long CPU runs).
            os.environ.setdefault("DISTILLBENCH_COMPILE", "off")
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        settings = Settings(
            data_root=args.data_root,
            device=args.device,
            smoke=args.smoke,
            speed_k=args.speed_k or 20,
            speed_epochs=args.speed_epochs or 50,
        )
        out, deadline = Path(args.child_out), float(args.deadline)
        if args.child == "speed":
            return run_speed(settings, out, deadline)
        cell = next(c for c in CELLS if c.name == args.child.split(":", 1)[1])
        return run_cell(cell, settings, out, deadline, Path(args.workdir))
    settings = settings_from(args, parser)
    try:
        plan = make_plan(settings)
    except (DistillBenchError, ValueError) as exc:
        parser.error(str(exc))
    if args.dry_run:
        print(json.dumps(plan.to_dict(), indent=1) if args.json else format_plan(plan))
        if not plan.fits:
            print(
                f"gpu_campaign: error: the plan needs ~{plan.total_s:.0f} s and fits no cell in the budget of "
                f"{settings.budget_s:.0f} s; raise --budget-s or drop the speed phase (--skip-speed)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return 0
    if not plan.fits:
        parser.error(f"the plan fits no cell in the budget of {settings.budget_s:.0f} s (see --dry-run)")
    out = Path(args.out or ROOT / "results" / "gpu_campaign.json")
    return run_campaign(plan, out, keep_workdir=args.keep_workdir)


if __name__ == "__main__":
    sys.exit(main())
