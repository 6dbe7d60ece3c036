"""More rounds for the cases of an A/B run whose timings were too noisy to test, within a time budget.

A timing verdict needs at least ``MIN_QUIET_ROUNDS`` quiet rounds a side (``kvperf.gate.compare``). On a
busy machine many cases fall short, and their timings are reported as not tested. Rather than give
up, ``kvperf ab`` runs those cases again, both sides taking turns as before (``kvperf.gate.ab.run_ab``),
and adds the new rounds to the old ones: the comparison then has more rounds to find quiet ones in.
Both sides get the same extra rounds at the same moments, so the rounds stay paired in time.

Only the untested cases run again: the other cases of the run are left out with pytest's own
``--deselect NODEID`` (which works with any kvperf on either side). ``--deselect`` matches node ids
by prefix, so an id that is a prefix of a case to retry is not deselected (that test runs again,
and its rounds are not added).

The budget bounds the time spent on retries: an attempt starts only when its estimated duration
(the cases it runs times the last measured time per case) fits in what is left, and takes as many
untested cases as fit. Retrying stops when every timing was tested, the budget is spent, after
``MAX_ATTEMPTS`` attempts, or when an attempt fails (its log is kept and the verdicts rest on the
rounds before it). Each attempt's own files stay in ``<out>/retries/<n>/``; ``baseline.json`` and
``current.json`` in ``<out>`` hold every round of every attempt in kvperf's fields, their medians
recomputed (pytest-benchmark's own statistics stay those of the first attempt).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvperf.errors import KvperfError
from kvperf.gate.ab import AbRun, SideFailedError
from kvperf.gate.baseline import CaseKey, baseline_from_json
from kvperf.gate.compare import Comparison
from kvperf.gate.result_file import read_json
from kvperf.measure.energy import energy_summary

__all__ = ["MAX_ATTEMPTS", "RETRY_BUDGET_S", "Retries", "deselect_args", "extend_noisy", "merge_rounds",
           "untested_cases"]

#: Default ``--retry-budget-s``: about one more pass of the quick tier on a 2-core machine.
RETRY_BUDGET_S = 120.0
#: Attempts at most, whatever the budget.
MAX_ATTEMPTS = 3
#: Subdirectory of ``--out`` with each attempt's own files.
RETRIES_DIR = "retries"

#: ``run_cases(cases, extra_pytest_args, out_dir)``: run the A/B pair again on ``cases`` only.
RunCases = Callable[[Sequence[CaseKey], Sequence[str], Path], AbRun]
#: ``compare_files(baseline_json, current_json)``: the comparison of two result files.
CompareFiles = Callable[[Path, Path], Comparison]


@dataclass(frozen=True)
class Retries:
    """What the retries did."""

    attempts: int
    #: Cases run again, summed over the attempts.
    case_runs: int
    spent_s: float
    budget_s: float
    #: Why retrying stopped.
    stopped: str

    def note(self) -> str:
        return (f"timings too noisy to test were retried: {self.attempts} attempt(s), {self.case_runs} case run(s), "
                f"{self.spent_s:.0f} s of the {self.budget_s:g} s budget (--retry-budget-s); {self.stopped}")


def untested_cases(comparison: Comparison) -> list[CaseKey]:
    """Cases with a timing verdict that was not tested for too few quiet rounds (not for want of raw
    samples: more rounds of an older kvperf would not have them either), in the comparison's order."""
    cases: dict[CaseKey, None] = {}
    for v in comparison.verdicts:
        if v.noisy and not v.no_samples:
            cases[(v.case, v.model)] = None
    return list(cases)


def _kvperf_benchmarks(data: Any) -> dict[CaseKey, dict[str, Any]]:
    """The kvperf benchmarks of a (checked) result file by case."""
    found: dict[CaseKey, dict[str, Any]] = {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if isinstance(info, dict) and "kvperf_schema" in info:
            found[(bench["name"], str(info.get("model", "")))] = bench
    return found


def _node_ids(data: Any) -> list[str]:
    return [b["fullname"] for b in data["benchmarks"] if isinstance(b, dict) and isinstance(b.get("fullname"), str)]


def deselect_args(keep: Iterable[str], others: Iterable[str]) -> list[str]:
    """``--deselect`` arguments that leave out ``others`` but none of ``keep`` (pytest matches by prefix)."""
    kept = tuple(keep)
    return [f"--deselect={node}" for node in sorted(set(others) - set(kept))
            if not any(k.startswith(node) for k in kept)]


def merge_rounds(into: Any, extra: Any, cases: Iterable[CaseKey]) -> list[CaseKey]:
    """Add the rounds of ``cases`` in ``extra`` to the same cases in ``into`` (both parsed result
    files, ``into`` changed in place): every per-round list is extended, the medians of the sampled
    fields are recomputed, and ``rounds`` and ``kvperf_ab_attempts`` count up. Returns the cases merged."""
    mine, theirs = _kvperf_benchmarks(into), _kvperf_benchmarks(extra)
    merged = []
    for key in cases:
        if key not in mine or key not in theirs:
            continue
        info, more = mine[key]["extra_info"], theirs[key]["extra_info"]
        lists = [name for name, value in info.items()
                 if (name.endswith("_samples") or name == "itl_s") and isinstance(value, list)]
        if any(not isinstance(more.get(name), list) for name in lists):
            continue  # the sides recorded different fields: leave the case as it was
        for name in lists:
            info[name] = info[name] + more[name]
            field = name.removesuffix("_samples")
            if name.endswith("_samples") and isinstance(info.get(field), (int, float)) \
                    and all(isinstance(v, (int, float)) for v in info[name]):
                info[field] = statistics.median(info[name])
        if "energy_j_samples" in lists and isinstance(info.get("generated_tokens"), int):
            info.update(energy_summary(info["energy_j_samples"], info["generated_tokens"],
                                       info.get("energy_note") or more.get("energy_note")))
        info["rounds"] = len(info.get("e2e_s_samples", [])) or info.get("rounds")
        info["kvperf_ab_attempts"] = int(info.get("kvperf_ab_attempts", 1)) + 1
        merged.append(key)
    return merged


def _write_json(data: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.merging")
    tmp.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def extend_noisy(run: AbRun, comparison: Comparison, *, out_dir: Path, run_cases: RunCases,
                 compare_files: CompareFiles, budget_s: float, first_run_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda line: None) -> tuple[Comparison, Retries | None]:
    """Retry the untested cases of ``run`` (see the module docstring) and compare again. Returns the
    final comparison, with a note of what was retried, and the ``Retries`` (None when nothing was)."""
    data = {"baseline": read_json(run.baseline_json), "current": read_json(run.current_json)}
    paths = {"baseline": run.baseline_json, "current": run.current_json}
    per_case_s = first_run_s / max(1, len(_kvperf_benchmarks(data["current"])))
    spent, attempts, case_runs, stopped = 0.0, 0, 0, ""
    while budget_s > 0:
        untested = untested_cases(comparison)
        fit = int((budget_s - spent) // per_case_s) if per_case_s > 0 else len(untested)
        if not untested:
            stopped = "every timing was tested"
            break
        if attempts >= MAX_ATTEMPTS:
            stopped = f"stopped after {MAX_ATTEMPTS} attempts"
            break
        if fit < 1:
            stopped = "the budget is spent" if attempts else "no case fits in the budget"
            break
        chosen = untested[:fit]
        attempts += 1
        ids = [b["fullname"] for key, b in _kvperf_benchmarks(data["current"]).items()
               if key in chosen and isinstance(b.get("fullname"), str)]
        extra = deselect_args(ids, _node_ids(data["current"]) + _node_ids(data["baseline"]))
        log(f"kvperf ab: {len(untested)} case(s) with timings too noisy to test; running {len(chosen)} of them "
            f"again (attempt {attempts}, about {len(chosen) * per_case_s:.0f} s of the {budget_s - spent:.0f} s "
            "left of --retry-budget-s)")
        start = clock()
        try:
            retry = run_cases(chosen, extra, out_dir / RETRIES_DIR / str(attempts))
        except SideFailedError as exc:
            spent += clock() - start
            stopped = f"attempt {attempts} failed and its rounds are not used ({exc})"
            break
        elapsed = clock() - start
        spent += elapsed
        case_runs += len(chosen)
        per_case_s = elapsed / len(chosen)
        try:
            extra_data = {"baseline": read_json(retry.baseline_json), "current": read_json(retry.current_json)}
            for side, path in (("baseline", retry.baseline_json), ("current", retry.current_json)):
                baseline_from_json(extra_data[side], str(path))
        except KvperfError as exc:
            stopped = f"attempt {attempts} wrote a result file kvperf cannot use ({exc})"
            break
        merged = merge_rounds(data["baseline"], extra_data["baseline"], chosen)
        merged = merge_rounds(data["current"], extra_data["current"], merged)
        if not merged:
            stopped = f"attempt {attempts} ran none of the cases on both sides"
            break
        for side, path in paths.items():
            _write_json(data[side], path)
        comparison = compare_files(run.baseline_json, run.current_json)
    if attempts == 0:
        return comparison, None
    retries = Retries(attempts=attempts, case_runs=case_runs, spent_s=spent, budget_s=budget_s, stopped=stopped)
    return replace(comparison, notes=(*comparison.notes, retries.note())), retries
