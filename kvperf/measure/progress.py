"""Progress of a benchmark session, with an ETA, and the per-case time budget.

A case of the full tier on a CPU can take many minutes (cache off, 500 new tokens: one call of
distilgpt2 took 710 s on a 2-vCPU VM), and pytest prints nothing until it ends. So kvperf says, per
case and per round, how far it is and how long the rest should take. Before the first case it
estimates the whole run (``kvperf.measure.cost``: FLOPs by formula, at rates measured on the loaded
model); as cases end, the session's ETA is the estimate of the cases left, scaled by how the cases so
far ran against theirs. Without an estimate (a test with a spec of its own) it is the mean case time
so far times the cases left; the line says which. Within a case, the ETA is the mean of its rounds.

``--kvperf-case-budget-s`` caps the time of one case: kvperf times the case's first warm-up call and
runs as many timed rounds as fit in the budget (at least one), and says so. Fewer rounds than
``MIN_QUIET_ROUNDS`` mean its timings cannot be tested by ``kvperf compare``: the deterministic
metrics (FLOPs, KV bytes, peak memory) are exact from one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CaseProgress", "ProgressMode", "SessionProgress", "format_duration", "plan_line", "positions",
           "rounds_within"]

#: ``all``: a line per case and per round; ``auto``: only for cases whose calls take at least
#: ``SLOW_CALL_S``; ``none``: nothing.
ProgressMode = str
PROGRESS_MODES = ("auto", "all", "none")
#: A call at least this long gets progress lines under ``auto``.
SLOW_CALL_S = 2.0
#: Besides the timed rounds, a case makes two untimed calls after them: peak memory and the FLOP count.
_EXTRA_CALLS = 2


def format_duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def positions(batch_size: int, prompt_len: int, new_tokens: int, cache: str) -> int:
    """Token positions one ``generate`` call runs through the model: with a cache, the prompt once and
    then one position per step; without, the whole prefix at every step. The work of a call is
    nearly proportional to it (attention adds a term in the context length), so it sizes a run before
    it starts (and ``kvperf.measure.cost`` turns it into FLOPs)."""
    if cache == "off":
        return batch_size * (new_tokens * prompt_len + new_tokens * (new_tokens - 1) // 2)
    return batch_size * (prompt_len + new_tokens - 1)


def plan_line(cases: list[tuple[str, int]], calls_per_case: int) -> str:
    """What a run will do, before it starts: cases, calls and positions, and the largest case's share."""
    total = sum(p for _, p in cases) * calls_per_case
    name, largest = max(cases, key=lambda c: c[1])
    return (f"kvperf: {len(cases)} case(s), {len(cases) * calls_per_case} generate calls, {total / 1e6:.3g} M token "
            f"positions through the model; the largest case, {name}, is {largest * calls_per_case / total:.0%} of "
            "them; the time is estimated when the model is loaded")


def rounds_within(budget_s: float, call_s: float, rounds: int, warmup_left: int) -> int:
    """The timed rounds that fit in ``budget_s`` when one call takes ``call_s`` and the first warm-up
    call is done: the remaining warm-ups, the rounds and the two untimed calls after them. At least
    one, at most ``rounds``."""
    if call_s <= 0:
        return rounds
    fit = int((budget_s - call_s) / call_s) - warmup_left - _EXTRA_CALLS
    return max(1, min(rounds, fit))


@dataclass
class SessionProgress:
    """Cases done and their wall times, for the session's ETA."""

    total_cases: int
    write: Callable[[str], None]
    mode: ProgressMode = "auto"
    case_times_s: list[float] = field(default_factory=list)
    started_s: float = field(default_factory=time.perf_counter)
    #: Estimated seconds of one timed call, and of the whole case, of each planned case
    #: (``kvperf.measure.cost``), when known.
    estimated_call_s: dict[str, float] = field(default_factory=dict)
    estimated_case_s: dict[str, float] = field(default_factory=dict)
    #: Estimated seconds of the whole run, and of the cases done so far.
    estimated_total_s: float | None = None
    estimated_done_s: float = 0.0

    def eta(self) -> str:
        done = len(self.case_times_s)
        left = self.total_cases - done
        if not done or left <= 0:
            return ""
        spent = sum(self.case_times_s)
        if self.estimated_total_s is not None and self.estimated_done_s > 0:
            scale = spent / self.estimated_done_s
            estimate = max(0.0, self.estimated_total_s - self.estimated_done_s)
            return (f"; about {format_duration(estimate * scale)} left for {left} case(s) (their estimate, "
                    f"{format_duration(estimate)}, x{scale:.2f}: the {done} so far took {scale:.2f}x theirs)")
        return f"; about {format_duration(spent / done * left)} left for {left} case(s) (mean of the {done} so far)"

    def drop_estimate(self, name: str, estimated_s: float | None = None) -> None:
        """A case was skipped: its estimate (``estimated_s``, else the planned one) is no longer ahead."""
        if self.estimated_total_s is not None:
            self.estimated_total_s -= self.estimated_case_s.get(name, 0.0) if estimated_s is None else estimated_s

    def case(self, name: str) -> CaseProgress:
        return CaseProgress(self, name, len(self.case_times_s) + 1)


@dataclass
class CaseProgress:
    """One case: its rounds' wall times, as the rounds start (``before_round``)."""

    session: SessionProgress
    name: str
    index: int
    rounds: int = 0
    warmup_rounds: int = 0
    started_s: float = field(default_factory=time.perf_counter)
    _round_started_s: float | None = None
    _calls: int = 0
    _round_times_s: list[float] = field(default_factory=list)
    loud: bool = False
    #: Estimated seconds of the two untimed calls after the rounds (``kvperf.measure.cost``), when
    #: known; else they count as two rounds.
    untimed_estimate_s: float | None = None

    def _say(self, text: str) -> None:
        if self.loud:
            self.session.write(f"kvperf [{self.index}/{self.session.total_cases}] {self.name}: {text}")

    def plan(self, rounds: int, warmup_rounds: int, call_s: float | None, note: str = "") -> None:
        """Start the case: its rounds and, if a first call was timed, say what the rest should take."""
        self.rounds, self.warmup_rounds = rounds, warmup_rounds
        mode = self.session.mode
        self.loud = mode == "all" or (mode == "auto" and call_s is not None and call_s >= SLOW_CALL_S)
        if note:
            self.session.write(f"kvperf [{self.index}/{self.session.total_cases}] {self.name}: {note}")
        if call_s is not None:
            calls = warmup_rounds + rounds + _EXTRA_CALLS
            self._say(f"one call took {format_duration(call_s)}: {rounds} round(s) and {calls - rounds} untimed "
                      f"call(s) to go, about {format_duration(call_s * calls)}")

    def before_round(self) -> None:
        """Called before every round (warm-up ones too)."""
        now = time.perf_counter()
        if self._round_started_s is not None:
            self._round_done(now - self._round_started_s)
        self._round_started_s = now
        self._calls += 1

    def _round_done(self, seconds: float) -> None:
        if not self.loud and self.session.mode == "auto" and seconds >= SLOW_CALL_S:
            self.loud = True  # a slow case: from now on, say how far it is
        if self._calls <= self.warmup_rounds:
            self._say(f"warm-up {self._calls}/{self.warmup_rounds} took {format_duration(seconds)}")
            return
        self._round_times_s.append(seconds)
        done = len(self._round_times_s)
        mean = sum(self._round_times_s) / done
        untimed = mean * _EXTRA_CALLS if self.untimed_estimate_s is None else self.untimed_estimate_s
        left = mean * (self.rounds - done) + untimed
        self._say(f"round {done}/{self.rounds} took {format_duration(seconds)}; about {format_duration(left)} "
                  "left in this case")

    def done(self, estimated_s: float = 0.0) -> None:
        """The case ended (its last round, then the untimed peak-memory and FLOP-count calls); its calls
        were estimated at ``estimated_s`` in all (0: no estimate)."""
        elapsed = time.perf_counter() - self.started_s
        self.session.case_times_s.append(elapsed)
        self.session.estimated_done_s += estimated_s
        self._say(f"done in {format_duration(elapsed)}{self.session.eta()}")
