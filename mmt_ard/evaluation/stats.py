"""How sure an accuracy is: a 95 % interval per accuracy, and a paired comparison of two models on the same images.

* `wilson_interval(k, n)`: Wilson's score interval for a proportion (good coverage also near 0 % and 100 %, where
  the textbook `p +- 1.96 sqrt(p (1 - p) / n)` collapses to a point);
* `mcnemar_exact(b, c)`: McNemar's exact test of two models evaluated on the same images, from the discordant
  images (`b`: only model A correct, `c`: only model B correct): the two-sided binomial test of `b` out of `b + c`
  against 1/2;
* `paired_difference_interval(a, b, c, d)`: an interval for `acc_A - acc_B` on paired data (Newcombe 1998, method
  10: Wilson intervals of the two accuracies combined with the correlation of the pairs), much narrower than
  treating the two accuracies as independent when the models agree on most images.

Pure Python (`math` only).
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion `k / n` (95 % by default); `(0, 1)` when `n == 0`."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _log_binom_pmf(k: int, n: int) -> float:
    """log of C(n, k) / 2^n."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: `P(X <= min(b, c)) * 2` (capped at 1) for `X ~ Binomial(b + c, 1/2)`.

    Args:
        b: images only the first model gets right.
        c: images only the second model gets right.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.exp(_log_binom_pmf(k, n)) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail)


def paired_difference_interval(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float, float]:
    """`(difference, low, high)` of `acc_A - acc_B` from the 2x2 table of paired outcomes (Newcombe's method 10).

    Args:
        a: images both models get right; b: only A; c: only B; d: neither.
    """
    n = a + b + c + d
    if n == 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        numerator = a * d - b * c
        if numerator > 0:  # Newcombe's continuity correction of the correlation
            numerator = max(numerator - n / 2, 0.0)
        phi = numerator / math.sqrt(margins)
    diff = p1 - p2
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return diff, max(-1.0, diff - below), min(1.0, diff + above)
