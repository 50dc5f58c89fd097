"""The evaluation protocol of configs/tuning-cpu.yaml (imported through the grid's ``plugins:``).

``tuning-cpu-v1``: convnet-v1's recipe (SGD momentum 0.9, wd 5e-4, DSA, lr x0.1 at half) on a ConvNet-3 of
width 16 for 50 epochs at lr 0.05 with K = 2 models. Far below every paper's protocol and marked quick: it
exists so that 12 searches of 12 trials each, plus the default and final trials, fit about an hour of one
CPU core (docs/tuning.md). A set of 10-100 images is one batch, so 50 epochs are 50 steps; at lr 0.01 (the
papers') 30 such steps left every digits set near 63% validation accuracy whatever it held, while 50 steps
at lr 0.05 scored a random-real MNIST IPC 10 set as 100 steps at lr 0.01 do (82% test, measured here).
Build the leaderboard of such rows with ``--plugin configs/tuning_cpu.py``.
"""

import dataclasses

from distillbench.harness.plugins import register_protocol
from distillbench.harness.protocols import CPU_REDUCED_V1

register_protocol(
    dataclasses.replace(
        CPU_REDUCED_V1,
        name="tuning-cpu-v1",
        networks=("convnet[width=16]",),
        epochs=50,
        lr=0.05,
        n_models=2,
        description=(
            "CPU tuning-evidence recipe, not comparable to papers: ConvNet-3 width 16, 50 epochs at lr 0.05, K=2, DSA"
        ),
    )
)
