"""``kcenter``: a k-center coreset by greedy farthest-point selection (Sener & Savarese, ICLR 2018).

Per class, the first centre is the sample closest to the class mean feature; every further pick is
the sample farthest from the centres chosen so far (largest Euclidean distance to its nearest
centre). This is the greedy 2-approximation of the k-center problem used as the "K-Center" coreset
baseline in the DC and DM papers (METHODS.md section 6).

The first centre: Sener & Savarese's greedy starts from an existing labelled pool; a coreset from
scratch needs a seed point, and the sample nearest the class mean is deterministic and central, so
the farthest-point picks that follow cover the class's spread rather than hanging off an outlier.

Feature space (parameter ``features``), as in ``herding``: the default ``"trained"`` is the
embedding (features before the classifier) of a ConvNet trained briefly on the real training split,
because the papers' coreset baselines selected in the feature space of a ConvNet trained on the
real data; their exact extractor is **unverified**, so ``"random"`` (a randomly initialised ConvNet)
and ``"pixels"`` are offered too (see :mod:`distillbench.methods._features`). Features are used as
they are (no normalisation). Distances are computed in float64.

The result depends on the seed only through the extractor (its initialisation and batch order are
derived from ``ctx.seed``); ties go to the lowest position, so the selection is deterministic and,
with ``features="pixels"``, the same for every seed.
"""

from __future__ import annotations

import dataclasses

import torch

from distillbench.harness.plugins import register_method
from distillbench.methods._features import FeatureParams, FeatureSelection


@dataclasses.dataclass(frozen=True)
class KCenterParams(FeatureParams):
    """Options of ``kcenter`` (the shared feature-space options)."""


def kcenter_order(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Positions (into ``feats``) of the first ``k`` greedy k-center picks, in pick order.

    Args:
        feats: features of one class ``[n, d]``.
        k: number of picks, ``k <= n``.

    Returns:
        Int64 tensor ``[k]`` of distinct positions: first the sample nearest the mean, then each
        time the sample whose distance to its nearest chosen centre is largest. Ties go to the
        lowest position; once every remaining sample coincides with a centre (distance 0), the
        lowest remaining positions follow.
    """
    # Float64 so that near-ties are decided by the data, not by float32 rounding.
    f = feats.to(torch.float64)
    n = len(f)
    if k > n:
        raise ValueError(f"cannot pick {k} centres from {n} samples")
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    picks: list[int] = []
    first = int(torch.argmin(torch.linalg.vector_norm(f - f.mean(dim=0), dim=1)))
    picks.append(first)
    # Distance of every sample to its nearest centre so far, updated with each new centre.
    nearest = torch.linalg.vector_norm(f - f[first], dim=1)
    taken = torch.zeros(n, dtype=torch.bool)
    taken[first] = True
    for _ in range(1, k):
        # Chosen samples are excluded explicitly: with duplicates a remaining sample can also be at 0.
        i = int(torch.argmax(nearest.masked_fill(taken, -1.0)))
        picks.append(i)
        taken[i] = True
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(f - f[i], dim=1))
    return torch.tensor(picks, dtype=torch.int64)


@register_method("kcenter")
class KCenter(FeatureSelection):
    """K-Center coreset: ``ipc`` real samples per class chosen by greedy farthest-point selection.

    The default feature space is the embedding of a ConvNet trained on the real training split
    (``features="trained"``); the first centre of a class is its sample nearest the class mean.
    Deterministic given ``ctx.seed``; the selected training indices are recorded in
    ``meta["indices"]`` (class-major, pick order within a class).
    """

    name = "kcenter"
    Params = KCenterParams
    order = staticmethod(kcenter_order)
