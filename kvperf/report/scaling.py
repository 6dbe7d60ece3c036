"""Power-law fits of cost against length: is it O(n) or O(n^2)?

Without a cache every decode step re-runs the whole prefix, so step ``i`` costs O(prompt + i) and a
run of ``n`` tokens costs O(n^2); with a cache each step attends to the cached keys, costs O(1) in
weights and O(prompt + i) only in the attention read, and the run is close to O(n) at these sizes.

``fit_power_law`` fits ``y = a * x**b`` by least squares on ``log y = log a + b log x`` and reports
the exponent with its standard error and R^2. Fixed costs (Python, kernel launches) flatten small
sizes, so an exponent measured over short lengths sits below the asymptotic one; compare the two
caches on the same lengths rather than reading an exponent in isolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kvperf.errors import UsageError

__all__ = ["PowerLawFit", "fit_power_law"]


@dataclass(frozen=True)
class PowerLawFit:
    """``y = coefficient * x ** exponent`` fitted on log-log axes."""

    exponent: float
    exponent_stderr: float
    coefficient: float
    r_squared: float
    points: int

    def predict(self, x: float) -> float:
        return self.coefficient * x**self.exponent

    def describe(self) -> str:
        err = f" ± {self.exponent_stderr:.2f}" if math.isfinite(self.exponent_stderr) else ""
        return f"O(n^{self.exponent:.2f}{err}), R² {self.r_squared:.3f}, {self.points} points"


def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> PowerLawFit:
    """Fit ``ys = a * xs**b``. Needs at least two distinct positive ``xs`` and positive ``ys``."""
    if len(xs) != len(ys):
        raise UsageError(f"fit_power_law got {len(xs)} x values and {len(ys)} y values: give one y per x")
    if any(v <= 0 for v in (*xs, *ys)):
        raise UsageError("fit_power_law needs positive values: lengths and times are never zero")
    lx = [math.log(v) for v in xs]
    ly = [math.log(v) for v in ys]
    n = len(lx)
    mx, my = sum(lx) / n, sum(ly) / n
    sxx = sum((x - mx) ** 2 for x in lx)
    if n < 2 or sxx == 0:
        raise UsageError("fit_power_law needs at least two distinct lengths")
    slope = sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / sxx
    intercept = my - slope * mx
    residuals = [y - (intercept + slope * x) for x, y in zip(lx, ly, strict=True)]
    ss_res = sum(r * r for r in residuals)
    ss_tot = sum((y - my) ** 2 for y in ly)
    stderr = math.sqrt(ss_res / (n - 2) / sxx) if n > 2 else float("nan")
    r_squared = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(exponent=slope, exponent_stderr=stderr, coefficient=math.exp(intercept),
                       r_squared=r_squared, points=n)
