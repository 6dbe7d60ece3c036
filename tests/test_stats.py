"""kvperf.gate.stats: the bootstrap of a median is exact, seeded, and costs the same for 5 samples or 100,000."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter

import pytest

from kvperf.gate.stats import median, ratio_interval


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_the_resampled_median_follows_the_exact_bootstrap_distribution(n):
    from kvperf.gate.stats import _resampled_median

    values = sorted([1.0, 1.5, 2.25, 3.0, 7.0][:n])
    # Every resample with replacement, equally likely: the exact distribution of its median.
    exact = Counter(median(pick) for pick in itertools.product(values, repeat=n))
    total = n**n
    rng = random.Random(0)
    draws = 40_000
    seen = Counter(_resampled_median(values, rng) for _ in range(draws))
    assert set(seen) <= set(exact)
    for value, count in exact.items():
        assert seen[value] / draws == pytest.approx(count / total, abs=0.01), value


def test_100k_samples_a_side_compare_in_well_under_two_seconds():
    rng = random.Random(1)
    base = [0.010 + rng.random() * 1e-4 for _ in range(100_000)]
    cur = [t * 1.02 for t in base]
    start = time.perf_counter()
    interval = ratio_interval(base, cur, seed=3)
    assert time.perf_counter() - start < 2.0
    assert interval.low == pytest.approx(1.02, abs=1e-3) and interval.high == pytest.approx(1.02, abs=1e-3)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, -1.0])
def test_non_positive_or_non_finite_samples_are_refused(bad):
    with pytest.raises(ValueError, match="positive, finite samples"):
        ratio_interval([1.0, 1.1, bad], [1.0, 1.0, 1.0], seed=0)
