"""``herding``: a coreset whose running feature mean tracks the class mean (Welling 2009).

Per class, samples are added greedily: the k-th pick is the not-yet-chosen sample ``i`` that
minimises ``|| mu - (phi_1 + ... + phi_{k-1} + phi_i) / k ||``, where ``mu`` is the mean feature of
the whole class. This is the herding selection of iCaRL and of the coreset baselines reported by
the DC and DM papers (METHODS.md section 6).

Feature space (parameter ``features``): the default is ``"trained"``, the embedding of a ConvNet
trained briefly on the real training split, because the DC / DM papers' baselines selected in the
feature space of a ConvNet trained on the real data. Their exact extractor (architecture, training
length, normalisation of the features) is **unverified**, so ``"random"`` (a randomly initialised
ConvNet) and ``"pixels"`` are offered for comparison; see :mod:`distillbench.methods._features`.
Features are used as they are (no L2 normalisation, unlike iCaRL).

The result depends on the seed only through the extractor (its initialisation and batch order are
derived from ``ctx.seed``); with ``features="pixels"`` it is the same for every seed.
"""

from __future__ import annotations

import dataclasses

import torch

from distillbench.harness.plugins import register_method
from distillbench.methods._features import FeatureParams, FeatureSelection


@dataclasses.dataclass(frozen=True)
class HerdingParams(FeatureParams):
    """Options of ``herding`` (the shared feature-space options)."""


def herding_order(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Positions (into ``feats``) of the first ``k`` herding picks, in pick order.

    Args:
        feats: features of one class ``[n, d]``.
        k: number of picks, ``k <= n``.

    Returns:
        Int64 tensor ``[k]`` of distinct positions. Ties go to the lowest position.
    """
    # Float64 so that near-ties are decided by the data, not by float32 rounding.
    f = feats.to(torch.float64)
    mu = f.mean(dim=0)
    running = torch.zeros_like(mu)
    taken = torch.zeros(len(f), dtype=torch.bool)
    picks = []
    for step in range(1, k + 1):
        # || mu - (running + f_i) / step ||^2 for every candidate i; taken samples are excluded.
        dist = ((mu - (running + f) / step) ** 2).sum(dim=1)
        dist[taken] = float("inf")
        i = int(torch.argmin(dist))
        picks.append(i)
        taken[i] = True
        running += f[i]
    return torch.tensor(picks, dtype=torch.int64)


@register_method("herding")
class Herding(FeatureSelection):
    """Herding coreset: ``ipc`` real samples per class whose feature mean tracks the class mean.

    The default feature space is the embedding of a ConvNet trained on the real training split
    (``features="trained"``), as the DC / DM papers' coreset baselines used a ConvNet trained on
    the real data (exact extractor unverified). Deterministic given ``ctx.seed``; the selected
    training indices are recorded in ``meta["indices"]`` (class-major, pick order within a class).
    """

    name = "herding"
    Params = HerdingParams
    order = staticmethod(herding_order)
