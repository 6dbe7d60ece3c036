"""Statistics for comparing raw timing samples: medians and a bootstrap interval of their ratio.

A timing comparison asks whether ``current`` is slower than ``baseline`` by more than a threshold.
Each side has a few raw samples (one per timed round). kvperf estimates the ratio of their medians
and a percentile-bootstrap confidence interval for it: resample each side with replacement,
independently, take the ratio of the resampled medians, repeat, and read the interval off the
quantiles. The median ignores one wild round; the bootstrap makes no assumption about the shape of
the noise, which on a CPU is skewed (noise only ever adds time).

A resample is never built. The median of ``n`` values drawn with replacement from the sorted
samples ``x[0] <= ... <= x[n-1]`` is ``x[floor(n * U)]``, where ``U`` is the middle one of ``n``
uniform draws (each draw picks ``x[floor(n * u)]``, and that map keeps the order). That order
statistic follows ``Beta(k, n + 1 - k)``, so one beta draw per side replaces ``n`` draws and a sort,
with exactly the same distribution (for an even ``n``, a second draw gives the next order
statistic). An interval costs the same for 5 samples or 100,000: about 10 ms per metric in pure
Python, so no numerical library is needed, and a result file with a huge sample count cannot make a
comparison slow. The draws come from a ``random.Random`` seeded by the caller, so the same two files
always give the same interval and the same verdicts.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RatioInterval", "median", "ratio_interval", "stable_seed"]

#: Bootstrap resamples per interval: enough that the 2.5% and 97.5% quantiles move by well under a
#: percent between seeds, few enough for a comparison of 50 cases to take a second or two.
RESAMPLES = 2000


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (the mean of the two middle values for an even count)."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def stable_seed(*parts: str) -> int:
    """A seed that depends only on ``parts`` (not on Python's per-process string hashing)."""
    return zlib.crc32("\x1f".join(parts).encode())


@dataclass(frozen=True)
class RatioInterval:
    """``current / baseline`` of the medians, and a confidence interval for it."""

    estimate: float
    low: float
    high: float
    confidence: float


def _quantile(ordered: Sequence[float], q: float) -> float:
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _resampled_median(ordered: Sequence[float], rng: random.Random) -> float:
    """The median of a resample with replacement of the sorted ``ordered`` (same size), drawn through
    the order statistics of uniform draws (see the module docstring): O(1) whatever the size."""
    n = len(ordered)
    if n == 1:
        return ordered[0]
    k = (n + 1) // 2  # the middle rank (odd n), or the lower of the two middle ranks (even n)
    u = rng.betavariate(k, n + 1 - k)  # the k-th smallest of n uniform draws
    low = ordered[min(int(u * n), n - 1)]
    if n % 2:
        return low
    # Given the k-th smallest, the other n - k draws are uniform above it: the next one is their minimum.
    u_next = u + (1 - u) * rng.betavariate(1, n - k)
    return (low + ordered[min(int(u_next * n), n - 1)]) / 2.0


def ratio_interval(baseline: Sequence[float], current: Sequence[float], *, seed: int,
                   confidence: float = 0.95, resamples: int = RESAMPLES) -> RatioInterval:
    """Ratio of medians ``median(current) / median(baseline)`` with a percentile-bootstrap interval.

    Both sides need at least one positive, finite sample; a single sample gives a zero-width interval.
    The cost grows with ``resamples``, and with the sample counts only through one sort.
    """
    if not baseline or not current:
        raise ValueError("ratio_interval needs samples on both sides")
    if not all(0 < v < math.inf for side in (baseline, current) for v in side):
        raise ValueError("ratio_interval needs positive, finite samples (times, rates)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    base, cur = sorted(baseline), sorted(current)
    estimate = median(cur) / median(base)
    rng = random.Random(seed)
    ratios = sorted(_resampled_median(cur, rng) / _resampled_median(base, rng) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return RatioInterval(estimate=estimate, low=_quantile(ratios, tail), high=_quantile(ratios, 1 - tail),
                         confidence=confidence)
