"""Welch's t test over seeds against scipy's, and the seeds that would resolve a difference."""

from __future__ import annotations

import math
import statistics
import warnings

import pytest
from scipy import stats

from dist_contrast.compare.stats import critical_t, seeds_to_resolve, welch

SAMPLES = [
    ([0.80, 0.82, 0.84], [0.70, 0.74, 0.72]),
    ([0.85, 0.86, 0.90], [0.60, 0.66, 0.63]),
    ([0.91, 0.95], [0.90, 0.93, 0.88, 0.94, 0.89]),  # unequal n
    ([1.0, 2.0, 4.0, 8.0], [3.0, 3.5, 2.5]),  # unequal n and unequal spread
    ([0.5, 0.5, 0.5], [0.4, 0.6, 0.7, 0.3]),  # one sample without spread
    ([0.2, 0.4, 0.3], [0.3, 0.2, 0.4]),  # equal means: t = 0, p = 1
]


@pytest.mark.parametrize(("a", "b"), SAMPLES)
def test_welch_matches_scipy(a: list[float], b: list[float]) -> None:
    result = welch(a, b)
    with warnings.catch_warnings():  # scipy warns of "nearly identical" data without spread
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = stats.ttest_ind(a, b, equal_var=False)
    assert result.difference == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert result.t == pytest.approx(float(expected.statistic), abs=1e-12)
    assert result.df == pytest.approx(float(expected.df))
    assert result.p == pytest.approx(float(expected.pvalue))
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    assert result.se == pytest.approx(se)
    assert (result.n_a, result.n_b, result.n) == (len(a), len(b), min(len(a), len(b)))
    assert result.undefined is None


def test_the_sign_is_a_minus_b() -> None:
    forward, backward = welch([3.0, 4.0], [1.0, 1.5]), welch([1.0, 1.5], [3.0, 4.0])
    assert forward.difference == pytest.approx(2.25) and backward.difference == -2.25
    assert forward.t is not None and backward.t is not None and forward.t == -backward.t
    assert forward.p == backward.p


@pytest.mark.parametrize(("a", "b"), [([0.9], [0.8, 0.7]), ([0.9, 0.8], [0.7]), ([1.0], [2.0])])
def test_fewer_than_two_values_have_no_t(a: list[float], b: list[float]) -> None:
    result = welch(a, b)
    assert result.difference == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert (result.se, result.t, result.df, result.p) == (None, None, None, None)
    assert result.undefined is not None and "fewer than 2 seeds" in result.undefined
    assert seeds_to_resolve(result) is None


@pytest.mark.parametrize(("a", "b"), [([0.5, 0.5], [0.5, 0.5, 0.5]), ([0.5, 0.5], [0.7, 0.7])])
def test_no_spread_in_either_sample_is_said_not_divided_by(a: list[float],
                                                          b: list[float]) -> None:
    result = welch(a, b)
    assert result.se == 0.0 and (result.t, result.df, result.p) == (None, None, None)
    assert result.undefined is not None and "t is undefined" in result.undefined
    assert seeds_to_resolve(result) is None


def test_an_empty_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        welch([], [1.0, 2.0])


def _by_brute_force(d: float, pooled: float) -> int:
    n = 2
    while abs(d) / math.sqrt(2 * pooled / n) < stats.t.ppf(0.975, 2 * (n - 1)):
        n += 1
    return n


@pytest.mark.parametrize(("a", "b"), [
    ([0.80, 0.82, 0.84], [0.85, 0.86, 0.90]),  # t = 2.6 at n = 3: 4 would do
    ([0.80, 0.85, 0.82], [0.78, 0.86, 0.80]),  # a small difference in a wide spread
    ([0.80, 0.82, 0.84], [0.70, 0.74, 0.72]),  # already resolved at n = 3
    ([1.0, 2.0, 4.0, 8.0], [3.0, 3.5, 2.5]),
])
def test_seeds_to_resolve_is_the_first_n_that_reaches_the_critical_t(
    a: list[float], b: list[float]
) -> None:
    result = welch(a, b)
    pooled = (statistics.variance(a) + statistics.variance(b)) / 2
    needed = seeds_to_resolve(result)
    assert needed == _by_brute_force(result.difference, pooled)
    # At that n a difference this size, with this spread, just reaches p < 0.05; one fewer does
    # not.
    ratio = abs(result.difference) / math.sqrt(2 * pooled / needed)
    assert ratio >= critical_t(2 * (needed - 1))
    if needed > 2:
        fewer = abs(result.difference) / math.sqrt(2 * pooled / (needed - 1))
        assert fewer < critical_t(2 * (needed - 2))


def test_seeds_to_resolve_no_difference_is_none() -> None:
    assert seeds_to_resolve(welch([0.2, 0.4, 0.3], [0.3, 0.2, 0.4])) is None
