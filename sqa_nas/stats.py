"""Small-sample statistics for figures a user decides on: medians with distribution-free 95%
confidence intervals, means with t-intervals (paired differences over seeds), and sample
standard deviations with their chi-square intervals."""

from __future__ import annotations

import functools
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


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` (>= 1) degrees of freedom: the factor of
    a two-sided 95% t-interval. Found by bisection on the exact CDF for integer degrees of
    freedom (Abramowitz & Stegun 26.7.3-4: a finite series in cos(atan(t / sqrt(df))))."""
    if df < 1:
        raise ValueError(f"t_quantile_975 needs df >= 1, got {df}")

    def inside(t: float) -> float:  # P(|T| < t)
        theta = math.atan(t / math.sqrt(df))
        c2, term = math.cos(theta) ** 2, 1.0
        if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2.4/3.5 cos^4 + ...))
            total = 1.0 if df > 1 else 0.0
            for k in range(1, (df - 1) // 2):
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
            return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
        total = 1.0  # even: sin (1 + 1/2 cos^2 + 1.3/2.4 cos^4 + ...)
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total

    low, high = 0.0, 1000.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if inside(mid) < 0.95 else (low, mid)
    return (low + high) / 2


def mean_ci95(xs: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean of `xs` and its two-sided 95% t-interval, mean +- t(n-1)
    * s / sqrt(n) (it assumes the values are roughly normal; with paired differences, the
    per-pair differences are). None below two values."""
    if len(xs) < 2:
        return None
    mean = statistics.fmean(xs)
    half = t_quantile_975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def chi2_cdf(x: float, df: int) -> float:
    """P(X < x) for a chi-square variable with `df` (>= 1) degrees of freedom: the
    regularized lower incomplete gamma function P(df / 2, x / 2), summed as its series
    (A&S 6.5.29), which converges for every x."""
    if df < 1:
        raise ValueError(f"chi2_cdf needs df >= 1, got {df}")
    if x <= 0:
        return 0.0
    a, h = df / 2, x / 2
    term = total = 1 / a
    n = 0
    while term > total * 1e-16:
        n += 1
        term *= h / (a + n)
        total += term
    value = total * math.exp(a * math.log(h) - h - math.lgamma(a))
    return value if math.isfinite(value) and value < 1 else 1.0  # far in the tail: 1


@functools.lru_cache(maxsize=256)
def chi2_quantile(p: float, df: int) -> float:
    """The `p` quantile of chi-square with `df` degrees of freedom, by bisection on
    `chi2_cdf` (cached: a noise floor's interval is asked for on every dashboard frame)."""
    if not 0 < p < 1:
        raise ValueError(f"chi2_quantile needs 0 < p < 1, got {p}")
    low, high = 0.0, df + 50.0 * math.sqrt(df) + 100
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if chi2_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def std_ci95(s: float, n: int) -> tuple[float, float] | None:
    """The 95% interval of a standard deviation `s` measured from `n` normal values (n - 1
    degrees of freedom): s * sqrt((n - 1) / chi2 quantile) at 0.975 and 0.025. Three values
    place sigma only within 0.52-6.3 times s. None below two values."""
    if n < 2:
        return None
    df = n - 1
    return (
        s * math.sqrt(df / chi2_quantile(0.975, df)),
        s * math.sqrt(df / chi2_quantile(0.025, df)),
    )


def f_sf(x: float, d1: float, d2: float) -> float:
    """P(F > x) for Fisher's F with (`d1`, `d2`) degrees of freedom: the one-sided p-value
    of a variance ratio s1^2 / s2^2 (d1, d2 > 0). Through the regularized incomplete beta
    function, I_{d2 / (d2 + d1 x)}(d2 / 2, d1 / 2) (Abramowitz & Stegun 26.6.2)."""
    if d1 <= 0 or d2 <= 0:
        raise ValueError(f"f_sf needs positive degrees of freedom, got {d1}, {d2}")
    if x <= 0:
        return 1.0
    return _incomplete_beta(d2 / (d2 + d1 * x), d2 / 2, d1 / 2)


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1: its continued
    fraction (A&S 26.5.8) where it converges fast, else through I_x(a, b) = 1 - I_1-x(b, a)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1 - front * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), evaluated by the modified Lentz method."""
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1 / guard(1 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 / guard(1 + numerator * d)
            c = guard(1 + numerator / c)
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h
