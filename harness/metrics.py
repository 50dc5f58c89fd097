"""Test-set metrics beyond top-1: bias groups and many / medium / few-shot classes.

Both families are computed per evaluation model and then averaged over the K models, like the
overall accuracy.

**Bias** (datasets whose test split carries ``groups["bias"]`` and ``groups["aligned"]``, e.g.
``colored_mnist``): accuracy on bias-aligned test samples (the bias attribute is the one the train
split correlates with the label), on bias-conflicting samples, and the worst accuracy over the
(class, bias attribute) groups present in the test split (Sagawa et al. 2020's worst-group accuracy).

**Long tail** (datasets whose training split was made long-tailed, ``meta["imbalance"] > 1``): classes
are grouped by their *training* count. With more than :data:`FEW_CLASS_LIMIT` classes the thresholds
of the long-tail literature apply (Liu et al. 2019, OLTR): many-shot > 100 training samples,
few-shot < 20, medium-shot in between. With few classes (CIFAR-10-LT, MNIST-LT, digits-LT) those
absolute thresholds would leave groups empty, so the classes are split into thirds by training count:
the ``C // 3`` largest classes are many-shot, the ``C // 3`` smallest few-shot, the rest medium-shot
(3 / 4 / 3 for 10 classes). Ties in counts are broken by class index, so the grouping is fixed. A
group's accuracy is the mean of its classes' accuracies (the test split is balanced, so this equals
the accuracy on the group's test samples).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

from distillbench.harness.store import column_names
from distillbench.harness.types import Split

FEW_CLASS_LIMIT = 20
MANY_SHOT_MIN = 100  # more than this many training samples: many-shot (datasets with > 20 classes)
FEW_SHOT_MAX = 20  # fewer than this many training samples: few-shot (datasets with > 20 classes)

BIAS_COLUMNS = column_names(family="bias")
SHOT_COLUMNS = column_names(family="long_tail")


def has_bias_groups(split: Split) -> bool:
    """Whether ``split`` records a bias attribute and bias alignment for every sample."""
    return "bias" in split.groups and "aligned" in split.groups


def bias_metrics(correct: torch.Tensor, split: Split) -> dict[str, float]:
    """Aligned, conflicting and worst-group accuracy of one model.

    Args:
        correct: bool ``[n]``, whether the model classified each sample of ``split`` correctly.
        split: the test split, with ``groups["bias"]`` (int ``[n]``) and ``groups["aligned"]`` (bool ``[n]``).

    Returns:
        ``acc_aligned``, ``acc_conflicting`` (``nan`` when the split has no such sample) and
        ``acc_worst_group``.
    """
    correct = correct.detach().to("cpu", torch.bool)
    aligned = split.groups["aligned"].to("cpu", torch.bool)
    bias = split.groups["bias"].to("cpu", torch.int64)
    labels = split.y.to("cpu", torch.int64)

    def mean(mask: torch.Tensor) -> float:
        return float(correct[mask].double().mean()) if bool(mask.any()) else math.nan

    # One group id per (class, bias value); empty groups do not exist and cannot be the worst.
    group = labels * (int(bias.max()) + 1 if bias.numel() else 1) + bias
    worst = min((mean(group == g) for g in torch.unique(group).tolist()), default=math.nan)
    return {"acc_aligned": mean(aligned), "acc_conflicting": mean(~aligned), "acc_worst_group": worst}


def shot_groups(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """The classes of each shot group (``many``, ``medium``, ``few``), by training count; see the module doc."""
    counts = list(train_counts)
    num_classes = len(counts)
    if num_classes > FEW_CLASS_LIMIT:
        many = [c for c, n in enumerate(counts) if n > MANY_SHOT_MIN]
        few = [c for c, n in enumerate(counts) if n < FEW_SHOT_MAX]
        medium = [c for c, n in enumerate(counts) if FEW_SHOT_MAX <= n <= MANY_SHOT_MIN]
        return {"many": many, "medium": medium, "few": few}
    order = sorted(range(num_classes), key=lambda c: (-counts[c], c))
    third = num_classes // 3
    return {
        "many": sorted(order[:third]),
        "medium": sorted(order[third : num_classes - third]),
        "few": sorted(order[num_classes - third :]),
    }


def shot_metrics(acc_per_class: Sequence[float], train_counts: Sequence[int]) -> dict[str, float]:
    """Many / medium / few-shot accuracy from per-class accuracies (``nan`` for an empty group)."""
    out = {}
    for name, classes in shot_groups(train_counts).items():
        values = [acc_per_class[c] for c in classes if not math.isnan(acc_per_class[c])]
        out[f"acc_{name}"] = statistics.fmean(values) if values else math.nan
    return out


def is_long_tailed(meta: dict) -> bool:
    """Whether a dataset's training split was made long-tailed (``imbalance`` above 1)."""
    return float(meta.get("imbalance", 1.0) or 1.0) > 1.0


__all__ = [
    "BIAS_COLUMNS",
    "SHOT_COLUMNS",
    "bias_metrics",
    "has_bias_groups",
    "is_long_tailed",
    "shot_groups",
    "shot_metrics",
]
