"""The t-interval of `sqa_nas.stats` against tabulated Student t quantiles."""

from __future__ import annotations

import math

import pytest

from sqa_nas.stats import mean_ci95, t_quantile_975


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
