"""Noise-aware verdicts: two kvperf result files in, one verdict per case and metric out.

Cases are matched by benchmark name (which holds every parameter, dtype included) and model. Each
metric of a matched case gets ``improved``, ``unchanged`` or ``regressed``; a case only in the
current file is ``new``, one only in the baseline ``missing``.

**Deterministic metrics** (FLOPs per token, KV-cache bytes, peak memory on CPU) are the same on
every run, so they are compared exactly: any increase is a regression (a tolerance can be set per
metric; on CUDA, where the allocator's peak can move a little, peak memory gets 2%).

**Timings** (e2e, TTFT, TPOT, tokens/s) are compared on their raw per-round samples:

1. Rounds during which kvperf's own threads waited for a core more than ``max_cpu_wait`` of the
   time (5% by default; ``cpu_wait_samples``, see ``kvperf.gate.env.CpuContention``) are left out on both
   sides: another process slowed them, not the code. (A quiet round waits well under 1%; one that
   shares its core with another process 10% to 100%.) With fewer than ``MIN_QUIET_ROUNDS`` quiet rounds on either
   side the metric is ``unchanged`` and flagged ``noisy``: there is too little clean data to judge.
2. The ratio of the medians of the quiet rounds (current / baseline, as a cost: for tokens/s the
   inverse) gets a 95% percentile-bootstrap interval (``kvperf.gate.stats``, seeded per case and metric, so
   verdicts are reproducible).
3. ``regressed`` when the whole interval lies above ``1 + threshold``: the slowdown is larger than the
   threshold *and* that is statistically significant. ``improved`` when it lies below
   ``1 / (1 + threshold)``. Otherwise ``unchanged``.

**What was compared** is part of the result (``Comparison.case_counts``, ``timing_counts``), and a
comparison that tested nothing never passes: files with no case in common, or with cases in one file
only (unless ``allow_partial``), are bad input (``kvperf.gate.case_coverage``); and when timings are gated
and not one timing verdict could be tested, the outcome is ``untested`` (``EXIT_UNTESTED``).

The interval covers the round-to-round noise inside a run. It cannot see drift between runs made
at different times (another VM on the host, frequency, memory placement), which on a shared VM is
larger than any useful threshold; ``kvperf.gate.ab`` removes that drift by measuring both sides in one
run, taking turns round by round, and then compares their files with this same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from kvperf.errors import BadInputError, UsageError
from kvperf.gate.baseline import Baseline, CaseKey
from kvperf.gate.case_coverage import check_coverage, coverage_notes
from kvperf.gate.env import mismatched_fields, version_changes
from kvperf.gate.fingerprint import OUTPUT_METRIC, OutputChange, output_changes, output_notes, output_verdict_note
from kvperf.gate.stats import median, ratio_interval, stable_seed

__all__ = [
    "EXIT_PASS",
    "EXIT_REGRESSION",
    "EXIT_UNTESTED",
    "METRICS",
    "MIN_QUIET_ROUNDS",
    "TIMING_MODES",
    "BandwidthFraction",
    "Comparison",
    "Metric",
    "TimingMode",
    "Verdict",
    "compare",
    "default_thresholds",
    "parse_thresholds",
]

#: ``gate``: timings can fail the comparison, and another machine's file is refused; ``report``:
#: timings of the same machine are compared and shown, but never fail it (the default against a
#: stored baseline: on a shared VM their run-to-run drift is larger than any useful threshold);
#: ``auto``: like ``gate`` on the same machine, skipped on another; ``skip``: never compared.
TimingMode = Literal["gate", "report", "auto", "skip"]
TIMING_MODES: tuple[TimingMode, ...] = ("gate", "report", "auto", "skip")
VerdictName = Literal["improved", "unchanged", "regressed", "new", "missing"]
Outcome = Literal["pass", "regression", "untested"]

#: Exit codes of a comparison (``kvperf compare``, ``kvperf ab``); 2 is bad input (``kvperf.errors``).
#: ``EXIT_UNTESTED`` is 8 because 3 to 7 already have meanings in kvperf (a failed A/B side, pytest's
#: usage error, an out-of-memory ``kvperf run``, a pytest session with nothing to compare or save).
EXIT_PASS = 0
EXIT_REGRESSION = 1
#: Timings were gated, and not one timing verdict could be tested: neither a pass nor a regression.
EXIT_UNTESTED = 8

#: Fewest quiet rounds a side needs for a timing verdict other than a ``noisy`` unchanged.
MIN_QUIET_ROUNDS = 3
#: Default ``max_cpu_wait``: rounds whose threads waited for a core longer than this share of the
#: round are left out.
MAX_CPU_WAIT = 0.05
#: Other processes' average CPU use (in cores) during a run above which a comparison warns.
BUSY_MACHINE_CORES = 0.25


@dataclass(frozen=True)
class Metric:
    """A compared metric: its name on the command line, where it is in ``extra_info``, and how to judge it."""

    name: str
    field: str
    label: str
    unit: str
    timing: bool
    higher_is_better: bool
    default_threshold_pct: float
    #: The same on any machine with the same software (FLOPs, KV bytes). CPU peak memory is exact on one
    #: machine, but the kernels torch picks for another CPU's instruction set (bf16 above all) can
    #: allocate differently, so it is compared only between runs of the same machine.
    portable: bool = False
    #: Measured in the timed thread's CPU time: waiting for a core does not add to it, so rounds that
    #: waited are kept (``_quiet`` leaves out only wall-clock rounds).
    cpu_time: bool = False
    #: Compared only when the user sets its threshold (``--threshold tpot_cpu=30``): information by
    #: default, because its A/A floor against a stored baseline was too high to gate on (README).
    opt_in: bool = False

    @property
    def samples_field(self) -> str:
        return f"{self.field}_samples"


METRICS: tuple[Metric, ...] = (
    Metric("e2e", "e2e_s", "e2e", "s", timing=True, higher_is_better=False, default_threshold_pct=5.0),
    # Prefill of a small prompt takes about a millisecond on CPU: its relative noise is the largest.
    Metric("ttft", "ttft_s", "TTFT", "s", timing=True, higher_is_better=False, default_threshold_pct=10.0),
    Metric("tpot", "tpot_s", "TPOT", "s", timing=True, higher_is_better=False, default_threshold_pct=5.0),
    Metric("tokens_per_s", "tokens_per_s", "tokens/s", "tok/s", timing=True, higher_is_better=True,
           default_threshold_pct=5.0),
    # The same clock reads in the timed thread's CPU time (``time.thread_time``). Against a stored
    # baseline on a shared 2-vCPU VM their A/A floor was 50-80% (benchmarks/gate_study.py, README):
    # compared only on request, with a threshold the user measured for their runner.
    Metric("e2e_cpu", "e2e_cpu_s", "e2e CPU", "s", timing=True, higher_is_better=False,
           default_threshold_pct=5.0, cpu_time=True, opt_in=True),
    Metric("ttft_cpu", "ttft_cpu_s", "TTFT CPU", "s", timing=True, higher_is_better=False,
           default_threshold_pct=10.0, cpu_time=True, opt_in=True),
    Metric("tpot_cpu", "tpot_cpu_s", "TPOT CPU", "s", timing=True, higher_is_better=False,
           default_threshold_pct=5.0, cpu_time=True, opt_in=True),
    # Energy of the timed call (GPU counter or RAPL, ``kvperf.measure.energy``), per round like a timing and
    # as noisy: compared only on request (``--threshold energy=10``), where the counter exists.
    Metric("energy", "energy_j", "energy", "J", timing=True, higher_is_better=False,
           default_threshold_pct=10.0, opt_in=True),
    Metric("peak_memory", "peak_memory_bytes", "peak memory", "B", timing=False, higher_is_better=False,
           default_threshold_pct=0.0),
    Metric("kv_bytes", "kv_cache_bytes", "KV bytes", "B", timing=False, higher_is_better=False,
           default_threshold_pct=0.0, portable=True),
    Metric("flops_per_token", "flops_per_token", "FLOPs/token", "FLOP", timing=False, higher_is_better=False,
           default_threshold_pct=0.0, portable=True),
)
_BY_NAME = {m.name: m for m in METRICS}
_TIMING_NAMES = frozenset(m.name for m in METRICS if m.timing)


def default_thresholds(device_type: str = "cpu") -> dict[str, float]:
    """Threshold per metric, in percent. CUDA peak memory gets 2% (allocator rounding and workspaces)."""
    thresholds = {m.name: m.default_threshold_pct for m in METRICS}
    if device_type == "cuda":
        thresholds["peak_memory"] = 2.0
    return thresholds


def parse_thresholds(items: Iterable[str]) -> dict[str, float]:
    """``["tpot=3", "e2e=7.5%"]`` -> ``{"tpot": 3.0, "e2e": 7.5}``; ``UsageError`` naming a bad item."""
    parsed: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in _BY_NAME:
            raise UsageError(f"bad threshold {item!r}: write METRIC=PCT with METRIC one of "
                             f"{', '.join(_BY_NAME)}, e.g. tpot=5")
        try:
            value = float(raw.strip().removesuffix("%"))
        except ValueError:
            raise UsageError(f"bad threshold {item!r}: {raw!r} is not a percentage, e.g. {name}=5") from None
        if not 0 <= value < 1000:
            raise UsageError(f"bad threshold {item!r}: use a percentage in [0, 1000), e.g. {name}=5")
        parsed[name] = value
    return parsed


@dataclass(frozen=True)
class Verdict:
    """One case and metric: the verdict, both values, the relative change and, for timings, the
    confidence interval of the ratio current / baseline."""

    case: str
    model: str
    metric: str
    verdict: VerdictName
    baseline: float | None = None
    current: float | None = None
    #: ``current / baseline - 1`` of the displayed values.
    change: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    threshold_pct: float | None = None
    #: Not tested (a timing with too few quiet rounds, or without raw samples): reported as
    #: ``unchanged``, but nothing was tested.
    noisy: bool = False
    note: str = ""
    #: A timing not tested because a side has no raw samples (``noisy`` is set too).
    no_samples: bool = False


@dataclass(frozen=True)
class BandwidthFraction:
    """One case's ``bandwidth_fraction`` on both sides: information beside the verdicts, never a verdict.
    Each side is divided by its own machine's peak, so it reads across machines too, but it is a timing
    and moves with the machine's noise."""

    case: str
    model: str
    baseline: float | None
    current: float | None


@dataclass(frozen=True)
class Comparison:
    """Every verdict of one comparison, with what was and wasn't compared."""

    baseline_source: str
    current_source: str
    verdicts: tuple[Verdict, ...]
    timings_compared: bool
    notes: tuple[str, ...] = field(default=())
    #: Timings were gated (``timings="gate"``): a comparison that could test none of them is not a pass.
    timings_required: bool = False
    #: Cases in both files.
    compared_cases: int = 0
    #: Cases only in the baseline, and only in the current run (allowed by ``allow_partial``).
    missing_cases: tuple[CaseKey, ...] = ()
    new_cases: tuple[CaseKey, ...] = ()
    #: How option names are spelled in messages (``--`` for the CLI, ``--kvperf-`` for pytest).
    flag_prefix: str = "--"
    #: Cases whose generated token ids changed (``kvperf.gate.fingerprint``), and the library versions that
    #: differ between the two environments, e.g. ``transformers 4.57.6 -> 5.24.0``.
    output_changes: tuple[OutputChange, ...] = ()
    version_changes: tuple[str, ...] = ()
    #: A regressed timing fails the comparison; False under ``timings="report"``, where timings
    #: are shown (``reported_slowdowns``) but only the deterministic metrics can fail it.
    timings_gated: bool = True
    #: Information that never gates: each compared case's share of its machine's peak memory bandwidth
    #: (``kvperf.measure.roofline``), baseline and current; None where a side could not know it.
    bandwidth_fractions: tuple[BandwidthFraction, ...] = ()

    @property
    def regressions(self) -> list[Verdict]:
        """Regressed verdicts that fail the comparison (timings only when ``timings_gated``)."""
        return [v for v in self.verdicts if v.verdict == "regressed"
                and (self.timings_gated or v.metric not in _TIMING_NAMES)]

    @property
    def reported_slowdowns(self) -> list[Verdict]:
        """Timings that regressed beyond their threshold but were reported, not gated."""
        return [v for v in self.verdicts if v.verdict == "regressed" and not self.timings_gated
                and v.metric in _TIMING_NAMES]

    def timing_counts(self) -> dict[str, int]:
        """Timing verdicts of the compared cases: ``total``, ``tested``, ``noisy`` (too few quiet rounds)
        and ``no_samples``."""
        timing = {m.name for m in METRICS if m.timing}
        judged = [v for v in self.verdicts if v.metric in timing and v.verdict not in ("new", "missing")]
        return {"total": len(judged), "tested": sum(not v.noisy for v in judged),
                "noisy": sum(v.noisy and not v.no_samples for v in judged),
                "no_samples": sum(v.no_samples for v in judged)}

    @property
    def outcome(self) -> Outcome:
        """``regression`` with at least one regressed verdict; else ``untested`` when timings were gated
        and none could be tested; else ``pass``."""
        if self.regressions:
            return "regression"
        if self.timings_required and (not self.timings_compared or self.timing_counts()["tested"] == 0):
            return "untested"
        return "pass"

    @property
    def exit_code(self) -> int:
        """``EXIT_PASS`` (0), ``EXIT_REGRESSION`` (1) or ``EXIT_UNTESTED`` (8), by ``outcome``."""
        return {"pass": EXIT_PASS, "regression": EXIT_REGRESSION, "untested": EXIT_UNTESTED}[self.outcome]

    def case_counts(self) -> dict[str, int]:
        return {"compared": self.compared_cases, "missing": len(self.missing_cases), "new": len(self.new_cases)}

    def counts(self) -> dict[str, int]:
        names: tuple[VerdictName, ...] = ("regressed", "improved", "unchanged", "new", "missing")
        counts: dict[str, int] = {name: sum(v.verdict == name for v in self.verdicts) for name in names}
        counts["regressed"] = len(self.regressions)
        counts["reported"] = len(self.reported_slowdowns)
        counts["noisy"] = sum(v.noisy for v in self.verdicts)
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline_source, "current": self.current_source,
                "timings_compared": self.timings_compared, "notes": list(self.notes),
                "outcome": self.outcome, "exit_code": self.exit_code, "counts": self.counts(),
                "timings_gated": self.timings_gated, "reported_slowdowns": len(self.reported_slowdowns),
                "cases": self.case_counts(), "timings": {"required": self.timings_required, **self.timing_counts()},
                "missing_cases": [list(k) for k in self.missing_cases],
                "new_cases": [list(k) for k in self.new_cases],
                "version_changes": list(self.version_changes),
                "output_changes": [asdict(c) for c in self.output_changes],
                "verdicts": [asdict(v) for v in self.verdicts],
                "bandwidth_fractions": [asdict(b) for b in self.bandwidth_fractions]}


def _check_environments(baseline: Baseline, current: Baseline, timings: TimingMode, allow_env_mismatch: bool,
                        flag_prefix: str) -> tuple[bool, bool, list[str]]:
    """Whether timings are compared, whether the hardware counts as the same (for CPU peak memory),
    and notes. ``BadInputError`` for a mismatch that isn't allowed."""
    b_env, c_env = baseline.environment, current.environment
    exact = mismatched_fields(b_env, c_env, timings=False)
    hardware = [f for f in mismatched_fields(b_env, c_env, timings=True, host=False) if f not in exact]
    machine = [f for f in mismatched_fields(b_env, c_env, timings=True) if f not in exact]
    allow = f"{flag_prefix}allow-env-mismatch"
    if exact and not allow_env_mismatch:
        raise BadInputError(f"environments differ in {'; '.join(exact)}: compare runs of the same software and "
                            f"device, or pass {allow} to compare anyway")
    notes = [f"environments differ, compared anyway ({allow}): {'; '.join(exact + machine)}"] \
        if allow_env_mismatch and (exact or machine) else []
    same_machine, same_hardware = allow_env_mismatch or not machine, allow_env_mismatch or not hardware
    if not same_machine:
        if timings == "gate":
            raise BadInputError(f"timing environments differ in {'; '.join(machine)}: timings are gated only "
                                f"between runs of one machine; pass {flag_prefix}timings report to compare the "
                                f"deterministic metrics and leave timings out, or {allow} to compare timings anyway")
        what = "timings" if same_hardware else "timings and peak memory"
        notes.append(f"{what} not compared: the machines differ in {'; '.join(machine)}")
    elif timings == "skip":
        notes.append(f"timings not compared ({flag_prefix}timings skip)")
    elif timings == "report":
        notes.append(f"timings reported, not gated ({flag_prefix}timings report, the default against a stored "
                     f"baseline); pass {flag_prefix}timings gate on a dedicated runner")
    return same_machine and timings != "skip", same_hardware, notes


def _quiet(info: dict[str, Any], samples: Sequence[float], max_cpu_wait: float) -> list[float]:
    waits = info.get("cpu_wait_samples")
    if not isinstance(waits, list) or len(waits) != len(samples):
        return list(samples)
    return [s for s, wait in zip(samples, waits, strict=True)
            if not isinstance(wait, (int, float)) or wait <= max_cpu_wait]


def _samples(info: dict[str, Any], metric: Metric) -> list[float] | None:
    raw = info.get(metric.samples_field)
    if isinstance(raw, list) and raw and all(isinstance(v, (int, float)) and v > 0 for v in raw):
        return [float(v) for v in raw]
    return None


def _number(info: dict[str, Any], key: str) -> float | None:
    value = info.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _timing_verdict(case: str, model: str, metric: Metric, b_info: dict[str, Any], c_info: dict[str, Any],
                    threshold_pct: float, max_cpu_wait: float) -> Verdict:
    base_all, cur_all = _samples(b_info, metric), _samples(c_info, metric)
    common = Verdict(case=case, model=model, metric=metric.name, verdict="unchanged", threshold_pct=threshold_pct)
    if base_all is None or cur_all is None:
        b, c = _number(b_info, metric.field), _number(c_info, metric.field)
        return replace(common, verdict="unchanged", baseline=b, current=c,
                       change=c / b - 1 if b and c is not None else None, noisy=True, no_samples=True,
                       note="no raw samples: not tested")
    if metric.cpu_time:
        base, cur = base_all, cur_all
    else:
        base, cur = _quiet(b_info, base_all, max_cpu_wait), _quiet(c_info, cur_all, max_cpu_wait)
    if len(base) < MIN_QUIET_ROUNDS or len(cur) < MIN_QUIET_ROUNDS:
        b, c = median(base or base_all), median(cur or cur_all)
        return replace(common, verdict="unchanged", baseline=b, current=c, change=c / b - 1, noisy=True,
                       note=f"noisy: quiet rounds {len(base)}/{len(base_all)} baseline, "
                            f"{len(cur)}/{len(cur_all)} current (need {MIN_QUIET_ROUNDS})")
    interval = ratio_interval(base, cur, seed=stable_seed(case, model, metric.name))
    # As a cost: above 1 is worse, whichever way the metric points.
    if metric.higher_is_better:
        cost_low, cost_high = 1 / interval.high, 1 / interval.low
    else:
        cost_low, cost_high = interval.low, interval.high
    limit = 1 + threshold_pct / 100
    verdict: VerdictName = "unchanged"
    if cost_low > limit:
        verdict = "regressed"
    elif cost_high < 1 / limit:
        verdict = "improved"
    dropped = (len(base_all) - len(base)) + (len(cur_all) - len(cur))
    return replace(common, verdict=verdict, baseline=median(base), current=median(cur),
                   change=interval.estimate - 1, ci_low=interval.low, ci_high=interval.high,
                   note=f"{dropped} busy round(s) left out" if dropped else "")


def _exact_verdict(case: str, model: str, metric: Metric, b_info: dict[str, Any], c_info: dict[str, Any],
                   threshold_pct: float) -> Verdict:
    b, c = _number(b_info, metric.field), _number(c_info, metric.field)
    common = Verdict(case=case, model=model, metric=metric.name, verdict="unchanged", threshold_pct=threshold_pct)
    if b is None and c is None:
        return replace(common, verdict="unchanged", note="not recorded on either side")
    if b is None:
        return replace(common, verdict="new", current=c, note="not in the baseline")
    if c is None:
        return replace(common, verdict="missing", baseline=b, note="not in the current run")
    if b < 0 or c < 0:  # -1: not measured
        return replace(common, verdict="unchanged", baseline=b, current=c, note="not measured")
    change = c / b - 1 if b else (0.0 if c == 0 else float("inf"))
    cost = c / b if b else (1.0 if c == 0 else float("inf"))
    if metric.higher_is_better:
        cost = b / c if c else float("inf")
    limit = 1 + threshold_pct / 100
    verdict: VerdictName = "regressed" if cost > limit else "improved" if cost < 1 / limit else "unchanged"
    return replace(common, verdict=verdict, baseline=b, current=c, change=change)


def compare(
    baseline: Baseline,
    current: Baseline,
    *,
    thresholds: dict[str, float] | None = None,
    timings: TimingMode = "gate",
    allow_env_mismatch: bool = False,
    max_cpu_wait: float = MAX_CPU_WAIT,
    flag_prefix: str = "--",
    allow_partial: bool = False,
    gate_output: bool = False,
) -> Comparison:
    """Verdicts for every case and metric of ``current`` against ``baseline``.

    ``thresholds`` (percent, by metric name) override ``default_thresholds``; an opt-in metric (the
    CPU-time ones) is compared only when it has a threshold here. ``timings``: ``gate``
    compares timings and refuses environments whose machine fields differ; ``report`` compares
    timings of the same machine but never fails on them; ``auto`` gates timings only when the
    machines match; ``skip`` never compares timings. FLOPs and KV bytes are always compared, CPU
    peak memory when the hardware matches. ``flag_prefix`` spells option names in messages
    (``--`` for the CLI, ``--kvperf-`` for pytest). Raises ``BadInputError`` for environments that
    differ in a field that matters, unless ``allow_env_mismatch``; for files with no case in common;
    and for cases in one file only, unless ``allow_partial``. A case whose generated tokens changed is a
    note, or with ``gate_output`` a ``regressed`` verdict of the ``output`` metric (``kvperf.gate.fingerprint``).
    """
    limits = {**default_thresholds(current.environment.device_type), **(thresholds or {})}
    missing, new = check_coverage(baseline, current, allow_partial=allow_partial, flag_prefix=flag_prefix)
    timings_compared, same_hardware, notes = _check_environments(baseline, current, timings, allow_env_mismatch,
                                                                flag_prefix)
    notes[:0] = coverage_notes(baseline, current, missing, new, flag_prefix)
    metrics = [m for m in METRICS if (timings_compared or not m.timing) and (same_hardware or m.portable)
               and (not m.opt_in or m.name in (thresholds or {}))]
    verdicts: list[Verdict] = []
    for key in sorted(set(baseline.cases) | set(current.cases), key=_case_order):
        name, model = key
        b_info, c_info = baseline.cases.get(key), current.cases.get(key)
        for metric in metrics:
            if b_info is None or c_info is None:
                verdicts.append(Verdict(case=name, model=model, metric=metric.name,
                                        verdict="new" if b_info is None else "missing",
                                        baseline=None if b_info is None else _number(b_info, metric.field),
                                        current=None if c_info is None else _number(c_info, metric.field)))
            elif metric.timing:
                verdicts.append(_timing_verdict(name, model, metric, b_info, c_info, limits[metric.name],
                                                max_cpu_wait))
            else:
                verdicts.append(_exact_verdict(name, model, metric, b_info, c_info, limits[metric.name]))
    if timings_compared:
        busy = {side: _others(result) for side, result in (("baseline", baseline), ("current", current))}
        if any(v is not None and v > BUSY_MACHINE_CORES for v in busy.values()):
            shown = " and ".join(f"{v:.2f} during the {side} run" for side, v in busy.items() if v is not None)
            notes.append(f"other processes used {shown} (CPU cores, on average): on a shared machine timings "
                         "drift between runs by more than their rounds show; read timing verdicts with care")
    changes = output_changes(baseline, current)
    notes.extend(output_notes(baseline, current, changes, gated=gate_output))
    if gate_output:
        verdicts.extend(Verdict(case=c.case, model=c.model, metric=OUTPUT_METRIC, verdict="regressed",
                                note=output_verdict_note(c)) for c in changes)
    for side, result in (("baseline", baseline), ("current", current)):
        if result.foreign_benchmarks:
            notes.append(f"{result.foreign_benchmarks} non-kvperf benchmark(s) in the {side} file not compared")
    return Comparison(baseline_source=baseline.source, current_source=current.source,
                      verdicts=tuple(verdicts), timings_compared=timings_compared, notes=tuple(notes),
                      timings_required=timings == "gate", timings_gated=timings != "report",
                      compared_cases=len(baseline.cases.keys() & current.cases.keys()),
                      missing_cases=missing, new_cases=new, flag_prefix=flag_prefix, output_changes=changes,
                      version_changes=tuple(version_changes(baseline.environment, current.environment)),
                      bandwidth_fractions=_bandwidth_fractions(baseline, current))


def _bandwidth_fractions(baseline: Baseline, current: Baseline) -> tuple[BandwidthFraction, ...]:
    """The cases in both files with a recorded bandwidth fraction on at least one side."""
    rows = []
    for key in sorted(baseline.cases.keys() & current.cases.keys(), key=_case_order):
        b, c = (_number(side.cases[key], "bandwidth_fraction") for side in (baseline, current))
        if b is not None or c is not None:
            rows.append(BandwidthFraction(case=key[0], model=key[1], baseline=b, current=c))
    return tuple(rows)


def _others(result: Baseline) -> float | None:
    """CPU cores other processes used during a run's timed rounds, on average (None: not recorded)."""
    values = [v for info in result.cases.values() for v in info.get("cpu_others_samples") or []
              if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def _case_order(key: tuple[str, str]) -> tuple[str, str]:
    return key[1], key[0]
