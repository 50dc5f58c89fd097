"""``full``: the whole real training split, the reference every distilled set is measured against.

Not a distillation method: it returns every training sample with its own label, whatever ``ipc`` the
grid asks for, so a grid can score "the same network trained on all the data" under the same
protocol, seeds and metrics as the distilled sets (the "whole dataset" row of the DC/DM papers'
tables, the full-data reference of the bias and text issues). The row's ``n_distilled`` holds the
real size; its ``ipc`` is only the column it is filed under. List it with one IPC in a grid: every
IPC would train on the same data again.
"""

from __future__ import annotations

from typing import Any, ClassVar

from distillbench.harness.plugins import register_method
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods.base import DistillationMethod


@register_method("full")
class FullData(DistillationMethod):
    """Every real training sample, with its own label (ipc is ignored): the full-data reference."""

    name = "full"
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    uses_randomness = False
    test_config: ClassVar[dict[str, Any]] = {}

    def num_samples(self, info: DatasetInfo, ipc: int) -> int | None:
        return None

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        return DistilledSet(
            x=data.train.x.clone(),
            y=data.train.y.clone(),
            meta={"ignores_ipc": True},
        )
