"""`sqa_nas.stats`: the t-interval against tabulated Student t quantiles, the F test's p-value
and the chi-square quantiles against closed forms and tables."""

from __future__ import annotations

import math

import pytest

from sqa_nas.stats import chi2_cdf, chi2_quantile, f_sf, mean_ci95, std_ci95, t_quantile_975


@pytest.mark.parametrize(
    ("df", "table"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042), (120, 1.980)],
)
def test_t_quantile_matches_the_table(df, table):
    assert t_quantile_975(df) == pytest.approx(table, abs=5e-4)


def test_t_quantile_refuses_no_degrees_of_freedom():
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile_975(0)


def test_mean_ci95_is_the_t_interval_with_n_minus_one_dof():
    mean, low, high = mean_ci95([1.0, 2.0, 3.0])  # s = 1, n = 3: half = t(2) / sqrt(3)
    assert mean == 2.0
    assert high - mean == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert mean - low == pytest.approx(high - mean)
    assert mean_ci95([0.5]) is None  # one value: no spread, no interval


@pytest.mark.parametrize("d1, x", [(1, 2.0), (4, 0.5), (16, 3.0), (30, 10.0)])
def test_f_sf_matches_the_closed_form_with_two_denominator_degrees_of_freedom(d1, x):
    # F(d1, 2): P(F > x) = 1 - (1 + 2 / (d1 x))^(-d1 / 2)
    assert f_sf(x, d1, 2) == pytest.approx(1 - (1 + 2 / (d1 * x)) ** (-d1 / 2), rel=1e-12)


@pytest.mark.parametrize("d2, x", [(2, 1.0), (5, 0.7), (16, 3.0)])
def test_f_sf_matches_the_closed_form_with_two_numerator_degrees_of_freedom(d2, x):
    # F(2, d2): P(F > x) = (1 + 2 x / d2)^(-d2 / 2)
    assert f_sf(x, 2, d2) == pytest.approx((1 + 2 * x / d2) ** (-d2 / 2), rel=1e-12)


def test_f_sf_at_tabled_critical_values_and_its_edges():
    assert f_sf(3.3258, 5, 10) == pytest.approx(0.05, abs=1e-4)  # F(5, 10) 95% point
    assert f_sf(19.43, 16, 2) == pytest.approx(0.05, abs=1e-4)  # F(16, 2) 95% point
    assert f_sf(1.0, 7, 7) == pytest.approx(0.5)  # symmetric about 1
    assert f_sf(0.0, 3, 4) == 1.0 and f_sf(1e9, 3, 4) < 1e-9
    with pytest.raises(ValueError, match="positive degrees of freedom"):
        f_sf(1.0, 0, 3)


@pytest.mark.parametrize("x", [0.1, 1.0, 5.0, 40.0])
def test_chi2_cdf_matches_the_closed_form_with_two_degrees_of_freedom(x):
    assert chi2_cdf(x, 2) == pytest.approx(1 - math.exp(-x / 2), rel=1e-12)


@pytest.mark.parametrize(
    ("p", "df", "table"),
    [
        (0.025, 2, 0.05064),
        (0.975, 2, 7.3778),
        (0.975, 1, 5.0239),
        (0.025, 10, 3.2470),
        (0.975, 10, 20.4832),
        (0.975, 100, 129.5612),
    ],
)
def test_chi2_quantile_matches_the_table(p, df, table):
    assert chi2_quantile(p, df) == pytest.approx(table, abs=5e-4)


def test_a_std_of_three_values_is_known_within_a_factor_of_twelve():
    low, high = std_ci95(1.0, 3)
    assert low == pytest.approx(math.sqrt(2 / 7.3778), abs=1e-4)
    assert high == pytest.approx(math.sqrt(2 / 0.05064), abs=1e-3)
    assert std_ci95(1.0, 1) is None
    assert chi2_cdf(1e6, 3) == 1.0  # the series overflows that far in the tail: the limit
    with pytest.raises(ValueError, match="df >= 1"):
        chi2_cdf(1.0, 0)
