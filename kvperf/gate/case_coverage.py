"""Which cases two result files share, and what a comparison must say about the others.

A comparison gates only the cases that are in both files. A case can be in one file only because a
test was renamed, another ``-k`` selection or ``--kvperf-model`` was used, or a baseline was saved
from part of its tier; each of these silently stops gating the cases left out. So:

* two files with no case in common are refused (``BadInputError``): nothing can be compared;
* cases in one file only are refused too, naming a few of them, unless a partial comparison is
  intended (``allow_partial``); then they are listed in the notes, the missing ones first and loudly;
* a file saved from a subset of its tier (``kvperf_subset``, with ``kvperf_selection.narrowed_by``
  written by the plugin) is labelled in the notes, with the options that narrowed it.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvperf.errors import BadInputError
from kvperf.gate.baseline import Baseline, CaseKey

__all__ = ["check_coverage", "coverage_notes"]


def _model_then_name(key: CaseKey) -> tuple[str, str]:
    return key[1], key[0]


def _examples(keys: Sequence[CaseKey], limit: int = 3) -> str:
    shown = ", ".join(name for name, _ in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _narrowed_by(result: Baseline) -> str:
    """How the options of a subset's run narrowed its tier (``kvperf_selection.narrowed_by``)."""
    reasons = (result.selection or {}).get("narrowed_by")
    if isinstance(reasons, list) and reasons and all(isinstance(r, str) for r in reasons):
        return "; ".join(reasons)
    return "its options are not recorded"


def check_coverage(baseline: Baseline, current: Baseline, *, allow_partial: bool,
                   flag_prefix: str) -> tuple[tuple[CaseKey, ...], tuple[CaseKey, ...]]:
    """The cases only in the baseline (missing) and only in the current run (new). ``BadInputError``
    when no case is in both, or when some are in one file only and ``allow_partial`` is not set."""
    missing = tuple(sorted(baseline.cases.keys() - current.cases.keys(), key=_model_then_name))
    new = tuple(sorted(current.cases.keys() - baseline.cases.keys(), key=_model_then_name))
    if not baseline.cases.keys() & current.cases.keys():
        raise BadInputError(f"{baseline.source} and {current.source} have no case in common ({len(baseline.cases)} "
                            f"in the baseline, e.g. {_examples(missing, 1)}; {len(current.cases)} in the current "
                            f"run, e.g. {_examples(new, 1)}): nothing can be compared; compare runs of the same "
                            f"benchmarks (same tier, -k selection and model)")
    if (missing or new) and not allow_partial:
        parts = [f"{len(missing)} case(s) of the baseline are missing from the current run "
                 f"({_examples(missing)})"] if missing else []
        parts += [f"{len(new)} case(s) of the current run are not in the baseline ({_examples(new)})"] if new else []
        raise BadInputError(f"{current.source} against {baseline.source}: {'; '.join(parts)}: a renamed test, "
                            f"another -k selection or another model; run the same cases, or pass "
                            f"{flag_prefix}allow-partial to compare only the "
                            f"{len(baseline.cases.keys() & current.cases.keys())} case(s) in common")
    return missing, new


def coverage_notes(baseline: Baseline, current: Baseline, missing: Sequence[CaseKey], new: Sequence[CaseKey],
                   flag_prefix: str) -> list[str]:
    """Notes that label a file saved from a subset of its tier, and name the cases not compared."""
    notes = [f"the {side} file was saved from a subset of its tier ({_narrowed_by(result)}): cases outside it "
             "are not compared" for side, result in (("baseline", baseline), ("current", current)) if result.subset]
    if missing:
        notes.append(f"MISSING: {len(missing)} case(s) of the baseline are not in the current run and were not "
                     f"compared ({flag_prefix}allow-partial): {_examples(missing, 10)}")
    if new:
        notes.append(f"{len(new)} case(s) of the current run are not in the baseline and were not compared "
                     f"({flag_prefix}allow-partial): {_examples(new, 10)}")
    return notes
