"""``mtt``: Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022; arXiv 2203.11932).

Synthetic images are learned so that a student trained on them for ``syn_steps`` steps from an
expert's parameters at a random epoch lands where the expert was ``expert_epochs`` later, on real
data. The experts are trained once per (dataset, network, expert recipe, seed) and shared by every
trial as a cached buffer (:mod:`distillbench.methods._experts`, ``<results>/buffers/``); the loop,
its memory handling and its deviations from the official code are in
:mod:`distillbench.methods._trajectory`. ``tesla=true`` computes the image gradient with TESLA's
constant-memory two-pass method instead of full backpropagation (approximate; see there).

Defaults are the official ``distill.py``/``buffer.py`` argparse defaults (100 experts x 50 epochs,
5,000 iterations, ``syn_steps`` 20, ``expert_epochs`` 3, ``max_start_epoch`` 25, ``lr_img`` 1000,
``lr_lr`` 1e-5, ``lr_teacher`` 0.01, DSA, real initialisation). The papers' per-dataset settings
(METHODS-trajectory.md section 1.4) are in ``configs/trajectory-gpu.yaml``; CIFAR-10 IPC 1 and 10
were distilled on ``cifar10[zca=true]``. The learned step size ``syn_lr`` (MTT evaluates with it) is
kept in ``extras["syn_lr"]``; the sealed protocols train with their own learning rate.
"""

from __future__ import annotations

from typing import Any, ClassVar

from distillbench.harness.plugins import register_method
from distillbench.harness.types import Context, DataBundle, DistilledSet
from distillbench.methods._trajectory import (
    LoopOptions,
    StartWindow,
    TrajectoryMethod,
    TrajectoryParams,
    run_trajectory_matching,
)

#: Parameters that make a trajectory method run in about a second on digits (conformance tests).
TINY_TRAJECTORY: dict[str, Any] = {
    "iterations": 3,
    "syn_steps": 2,
    "expert_epochs": 1,
    "max_start_epoch": 1,
    "num_experts": 1,
    "train_epochs": 2,
    "expert_batch": 128,
    "lr_img": 10.0,
    "net": "convnet[width=8]",
}


@register_method("mtt")
class MatchingTrainingTrajectories(TrajectoryMethod):
    """MTT: match the student's parameters after a few synthetic steps to an expert's a few epochs later."""

    name = "mtt"
    Params = TrajectoryParams
    test_config: ClassVar[dict[str, Any]] = TINY_TRAJECTORY

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        window = StartWindow(lo=0, max_start=self.params.max_start_epoch)
        return run_trajectory_matching(self, data, ipc, ctx, LoopOptions(window=window, init=self.params.pix_init))
