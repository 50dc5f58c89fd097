"""What the biased datasets share: which samples conflict with the bias, groups, meta and a cache file.

A biased dataset pairs every class ``c`` with one value ``c`` of a spurious attribute (a colour, a
corruption, a gender), as in Learning from Failure (Nam et al., NeurIPS 2020) and DisEnt (Lee et al.,
NeurIPS 2021). Per class, a fraction ``conflict`` of the training samples is *bias-conflicting*: it
gets a uniformly drawn *other* attribute value; the rest is *bias-aligned*. The test split is
unbiased: within every class the attribute is spread evenly over all values.

Every split of such a dataset records ``groups["bias"]`` (int64, the attribute value in ``[0, C)``)
and ``groups["aligned"]`` (bool, attribute == label), which the evaluation reads for its aligned,
conflicting and worst-group accuracies.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillbench.harness.types import Split

# Fixed seeds: a configured dataset is the same set of images in every trial, process and machine.
BIAS_SEED = 0


def check_conflict(conflict: float) -> None:
    """Raise ``ValueError`` unless ``0 <= conflict <= 1`` (literature values: 0.005, 0.01, 0.02, 0.05)."""
    if not 0.0 <= conflict <= 1.0 or math.isnan(conflict):
        raise ValueError(
            f"conflict must be a fraction in [0, 1] (share of bias-conflicting training samples; the "
            f"literature uses 0.005, 0.01, 0.02, 0.05), got {conflict}"
        )


def biased_attributes(labels: np.ndarray, num_values: int, conflict: float, seed: int) -> np.ndarray:
    """Attribute values for a biased split: ``round(conflict * n_c)`` conflicting samples per class.

    Which samples of class ``c`` conflict is a seeded draw; each of them gets a value drawn uniformly
    from the ``num_values - 1`` values other than ``c``; every other sample gets ``c``.

    Args:
        labels: int labels ``[n]`` in ``[0, num_values)``.
        num_values: number of attribute values (= number of classes).
        conflict: fraction of bias-conflicting samples per class.
        seed: seed of the draw.

    Returns:
        int64 attribute values ``[n]``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    bias = labels.copy()
    for c in range(num_values):
        members = np.flatnonzero(labels == c)
        k = int(round(conflict * len(members)))
        chosen = rng.permutation(members)[:k]
        # An offset in 1..C-1 added modulo C is a uniform draw among the other values.
        bias[chosen] = (c + rng.integers(1, num_values, size=k)) % num_values
    return bias


def unbiased_attributes(labels: np.ndarray, num_values: int, seed: int) -> np.ndarray:
    """Attribute values independent of the label: each class spreads evenly over all values.

    Within class ``c`` a seeded permutation of its samples gets the values ``0, 1, ..., C-1, 0, ...``
    in turn, so every value appears ``floor`` or ``ceil`` of ``n_c / C`` times (exactly uniform,
    not merely uniform in expectation).
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    bias = np.zeros_like(labels)
    for c in range(num_values):
        members = rng.permutation(np.flatnonzero(labels == c))
        start = int(rng.integers(num_values))  # which values get the extra sample varies per class
        bias[members] = (start + np.arange(len(members))) % num_values
    return bias


def bias_groups(bias: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
    """``{"bias": int64 [n], "aligned": bool [n]}`` for a split."""
    bias = np.asarray(bias, dtype=np.int64)
    return {
        "bias": torch.from_numpy(bias.copy()),
        "aligned": torch.from_numpy(bias == np.asarray(labels, dtype=np.int64)),
    }


def with_groups(split: Split, bias: np.ndarray) -> Split:
    """``split`` with the bias groups of ``bias`` added (other groups are kept)."""
    return Split(split.x, split.y, {**split.groups, **bias_groups(bias, split.y.numpy())})


def bias_meta(attribute: str, conflict: float, splits: Mapping[str, Split], **extra: Any) -> dict[str, Any]:
    """The ``meta`` facts every biased dataset records (attribute, conflict, measured shares)."""
    measured = {
        name: round(1.0 - float(s.groups["aligned"].float().mean()), 6) if len(s) else None
        for name, s in splits.items()
    }
    return {
        "bias_attribute": attribute,
        "conflict": float(conflict),
        "conflict_measured": measured,
        "bias_seed": BIAS_SEED,
        **extra,
    }


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images ``[N, C, H, W]``, accumulated in float64 (deterministic)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0).clamp_min(1e-6)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of float images ``[N, C, H, W]`` in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache ``.npz``, or ``None`` if it is absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError):
        return None


def write_cache(path: Path, arrays: Mapping[str, np.ndarray]) -> bool:
    """Write ``arrays`` to ``path`` atomically (temporary file, then rename); False if not writable.

    A read-only data root is legitimate (a shared copy): the dataset is then rebuilt in every process.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError:
        return False
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
