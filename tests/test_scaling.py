from __future__ import annotations

import pytest

from kvperf import UsageError
from kvperf.report.scaling import fit_power_law


def test_recovers_linear_and_quadratic_exponents():
    ns = [10, 50, 100, 250, 500]
    linear = fit_power_law(ns, [0.003 * n for n in ns])
    quadratic = fit_power_law(ns, [2e-5 * n * n for n in ns])
    assert linear.exponent == pytest.approx(1.0)
    assert quadratic.exponent == pytest.approx(2.0)
    assert quadratic.r_squared == pytest.approx(1.0)
    assert quadratic.predict(1000) == pytest.approx(20.0)


def test_noise_shows_in_the_standard_error():
    fit = fit_power_law([1, 2, 4, 8], [1.0, 2.3, 3.6, 8.5])
    assert 0.8 < fit.exponent < 1.2
    assert fit.exponent_stderr > 0
    assert "O(n^" in fit.describe()


@pytest.mark.parametrize(
    ("xs", "ys", "message"),
    [
        ([1, 2], [1.0], "fit_power_law got 2 x values and 1 y values: give one y per x"),
        ([0, 2], [1.0, 2.0], "fit_power_law needs positive values: lengths and times are never zero"),
        ([3, 3], [1.0, 2.0], "fit_power_law needs at least two distinct lengths"),
    ],
)
def test_bad_input(xs, ys, message):
    with pytest.raises(UsageError) as info:
        fit_power_law(xs, ys)
    assert str(info.value) == message
