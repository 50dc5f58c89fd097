"""Statistics of the leaderboard: pooled mean and std, seed means, and the Welch test against the best.

Every function here is order-independent (inputs are sorted and summed with :func:`math.fsum`), so
the same rows give the same numbers, and therefore the same Markdown bytes, whatever the read order.

The significance mark of a cell answers "is this configuration significantly worse than the best of
its IPC column?" with a two-sided Welch t-test (:func:`scipy.stats.ttest_ind` with
``equal_var=False``) over **seed means**: each seed contributes the mean accuracy of its evaluation
models, because the evaluation models of one seed share one distilled set and are not independent
samples of the method. A test needs at least two seeds on both sides; with fewer, no test is made and
the leaderboard says so instead of marking the cell.

Example::

    >>> welch_p([90.0, 91.0, 92.0], [80.0, 82.0, 81.0]) < 0.05
    True
    >>> welch_p([90.0], [80.0, 82.0]) is None
    True
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ALPHA = 0.05
"""Significance level: a cell is marked "not significantly worse" when ``p >= ALPHA``."""

MIN_SEEDS = 2
"""Fewest seeds on each side for which a Welch test is made."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, population std (ddof=0) and count of a list of values.

    Attributes:
        mean: arithmetic mean.
        std: standard deviation with ddof=0 (0 for one value).
        n: number of values.
    """

    mean: float
    std: float
    n: int


def summarize(values: Iterable[float]) -> Summary | None:
    """Order-independent mean and std (ddof=0) of ``values``; None when there are none.

    Args:
        values: finite numbers (NaN values are dropped).

    Returns:
        The summary, or None for an empty input.
    """
    ordered = sorted(v for v in values if v is not None and not math.isnan(v))
    if not ordered:
        return None
    mean = math.fsum(ordered) / len(ordered)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in ordered) / len(ordered))
    return Summary(mean=mean, std=std, n=len(ordered))


def seed_means(rows: Sequence[Mapping[str, Any]], accuracies: Any) -> tuple[float, ...]:
    """The mean accuracy (percent) of each seed, in seed order.

    Args:
        rows: rows of one configuration at one IPC, each with a ``seed``.
        accuracies: function giving the list of accuracies (fractions) of a row.

    Returns:
        One mean per distinct seed; the models of several rows with the same seed are pooled.
    """
    by_seed: dict[Any, list[float]] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], []).extend(100.0 * v for v in accuracies(row))
    means = []
    for seed in sorted(by_seed, key=lambda s: (s is None, s if s is not None else 0)):
        values = sorted(by_seed[seed])
        if values:
            means.append(math.fsum(values) / len(values))
    return tuple(means)


def welch_p(sample: Sequence[float], best: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test between ``sample`` and ``best``.

    Args:
        sample: seed means of the configuration tested.
        best: seed means of the best configuration of the column.

    Returns:
        The p-value; 1.0 when both samples are constant and equal; 0.0 when both are constant and
        differ (the t statistic is infinite); None when either side has fewer than
        :data:`MIN_SEEDS` values, so that no test is possible.
    """
    if len(sample) < MIN_SEEDS or len(best) < MIN_SEEDS:
        return None
    a, b = sorted(sample), sorted(best)
    var_a, var_b = _variance(a), _variance(b)
    if var_a == 0.0 and var_b == 0.0:
        return 1.0 if math.fsum(a) / len(a) == math.fsum(b) / len(b) else 0.0
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # "precision loss" on nearly equal samples: the p-value is still usable
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def _variance(values: Sequence[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
