"""Welch's two-sample t test over seeds, and how many seeds would resolve a difference.

Pure functions of lists of floats. t, its degrees of freedom and the standard error are
computed here; scipy only supplies the t distribution's tail and quantile (it comes with
scikit-learn).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: The two-sided level a claim is tested at.
ALPHA = 0.05


@dataclass(frozen=True)
class Welch:
    """``a`` against ``b``: the difference of means (a − b), its standard error, Welch's t, the
    Welch–Satterthwaite degrees of freedom and the two-sided p-value. ``se``, ``t``, ``df`` and
    ``p`` are None where they are undefined; ``undefined`` then says why, in words."""

    difference: float
    se: float | None
    t: float | None
    df: float | None
    p: float | None
    n_a: int
    n_b: int
    var_a: float | None
    var_b: float | None
    undefined: str | None = None

    @property
    def n(self) -> int:
        """The smaller sample's size: what "resolved at n" refers to."""
        return min(self.n_a, self.n_b)


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t test of mean(a) − mean(b) (sample variances, n − 1). A sample of fewer than
    two values has no variance, and two samples without any spread give 0 / 0 or a division
    by zero: t, df and p are None then, with the reason. An empty sample is a ValueError."""
    if not a or not b:
        raise ValueError("welch needs at least one value in each sample")
    difference = statistics.fmean(a) - statistics.fmean(b)
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return Welch(difference, None, None, None, None, n_a, n_b, _var(a), _var(b),
                     "fewer than 2 seeds in a point: no variance, no t")
    var_a, var_b = statistics.variance(a), statistics.variance(b)
    share_a, share_b = var_a / n_a, var_b / n_b
    se = math.sqrt(share_a + share_b)
    if se == 0.0:
        return Welch(difference, 0.0, None, None, None, n_a, n_b, var_a, var_b,
                     "no spread in either point, every seed equal: t is undefined")
    t = difference / se
    df = (share_a + share_b) ** 2 / (share_a ** 2 / (n_a - 1) + share_b ** 2 / (n_b - 1))
    return Welch(difference, se, t, df, two_sided_p(t, df), n_a, n_b, var_a, var_b)


def _var(values: Sequence[float]) -> float | None:
    return statistics.variance(values) if len(values) > 1 else None


def two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(min(1.0, 2.0 * stats.t.sf(abs(t), df)))


def critical_t(df: float, alpha: float = ALPHA) -> float:
    """The two-sided critical value: |T| beyond it has probability ``alpha``."""
    from scipy import stats

    return float(stats.t.ppf(1.0 - alpha / 2.0, df))


def seeds_to_resolve(result: Welch, alpha: float = ALPHA) -> int | None:
    """The seeds per point at which a difference of the observed size, with the observed
    spread, would reach the two-sided ``alpha`` level: the smallest n ≥ 2 with
    |d| / sqrt(2 s̄² / n) ≥ t_crit(2(n − 1)), s̄² the mean of the two variances. None when the
    difference is 0 or a variance is missing or both are 0. A point estimate from the same
    seeds, not a power calculation: at that n a true difference of this size comes out
    significant only about half the time."""
    if result.difference == 0.0 or result.var_a is None or result.var_b is None:
        return None
    pooled = (result.var_a + result.var_b) / 2.0
    if pooled == 0.0:
        return None

    def resolves(n: int) -> bool:
        return abs(result.difference) / math.sqrt(2.0 * pooled / n) >= critical_t(2 * (n - 1),
                                                                                   alpha)

    # The critical t falls as n grows and the ratio rises: the condition is monotone in n.
    # It holds once n ≥ 2 s̄² t² / d² with t at its largest (n = 2), so bisect below that.
    worst = critical_t(2, alpha)
    high = max(2, math.ceil(2.0 * pooled * worst ** 2 / result.difference ** 2))
    low = 2
    while low < high:
        middle = (low + high) // 2
        if resolves(middle):
            high = middle
        else:
            low = middle + 1
    return low
