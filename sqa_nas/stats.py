"""Small-sample statistics for figures a user decides on: means with 95% confidence
intervals (Student's t) and sample standard deviations. No SciPy: the t quantiles are
tabulated."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom.
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` >= 1 degrees of freedom (between tabulated
    values, the next smaller df's: a slightly wider interval, never a narrower one)."""
    if df < 1:
        raise ValueError(f"t975 needs df >= 1, got {df}")
    if df > 120:
        return 1.960
    return _T975[max(k for k in _T975 if k <= df)]


def mean_ci95(xs: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% confidence interval) of `xs`; the half-width is infinite
    for fewer than two values."""
    if not xs:
        raise ValueError("mean_ci95 of no values")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, math.inf
    return mean, t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def log_ratio_ci95(xs: Sequence[float]) -> tuple[float, float]:
    """(geometric mean, relative half-width) of positive `xs`: the mean and 95% interval of
    their logarithms, taken back as exp(mean) and exp(half) - 1 (a ratio's natural scale:
    +3% and -3% are symmetric in it)."""
    mean, half = mean_ci95([math.log(x) for x in xs])
    return math.exp(mean), math.expm1(half) if math.isfinite(half) else math.inf


def std(xs: Sequence[float]) -> float | None:
    """The sample standard deviation of `xs` (n - 1), None for fewer than two values."""
    return statistics.stdev(xs) if len(xs) >= 2 else None
