"""Small-sample statistics for figures a user decides on: medians with distribution-free 95%
confidence intervals, and sample standard deviations."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median_ci95(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, low, high): the median of `xs` and its distribution-free 95% confidence
    interval, the order statistics x_(k) and x_(n+1-k) with the largest k for which
    P(Binomial(n, 1/2) < k) <= 0.025. It holds for any distribution, heavy tails included
    (one round of a timing slowed 15x by another job moves it by one rank). Below 6 values
    no such interval exists; the range of the values is returned, with less than 95%
    coverage (`MEDIAN_CI_MIN` says when it is established)."""
    if not xs:
        raise ValueError("median_ci95 of no values")
    ordered, n = sorted(xs), len(xs)
    k, tail = 0, 0.0
    while tail + math.comb(n, k) / 2**n <= 0.025:
        tail += math.comb(n, k) / 2**n
        k += 1
    k = max(k, 1)  # 1-based rank; below MEDIAN_CI_MIN values, the range
    return statistics.median(ordered), ordered[k - 1], ordered[n - k]


MEDIAN_CI_MIN = 6  # values for `median_ci95` to be a 95% interval (2 / 2^6 < 0.05)


def rel_half_width(center: float, low: float, high: float) -> float:
    """The larger relative distance from `center` to an end of [low, high]."""
    return max(high / center - 1, 1 - low / center)


def std(xs: Sequence[float]) -> float | None:
    """The sample standard deviation of `xs` (n - 1), None for fewer than two values."""
    return statistics.stdev(xs) if len(xs) >= 2 else None
