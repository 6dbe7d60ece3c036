"""Which of a tier's cases a session ran, and whether its options narrowed the tier.

A baseline gates only the cases it holds. One saved from part of a tier (``-k``, ``-m``, a node id,
fewer dtypes, other sizes or another model) silently stops gating the rest: later runs find those
cases ``new``, never ``regressed``. So every kvperf result file records, at its top level:

* ``kvperf_subset``: ``true`` when the session's options narrowed the tier's cases;
* ``kvperf_selection``: the options that select cases (``Selection.to_json``), with ``narrowed_by``,
  one line per narrowing option.

The plugin refuses to save a subset as the tier's default baseline unless ``--kvperf-save-subset`` is
given. Cases that were selected but skipped (no GPU, out of memory) are not a narrowing of the
selection: they are listed apart, in ``kvperf_skipped_cases``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvperf.tiers import DEFAULT_DTYPES, Tier

__all__ = ["Selection", "narrowed_by", "relative_args"]


@dataclass(frozen=True)
class Selection:
    """The case-selecting options of one session."""

    tier: str
    model: str
    device_type: str
    dtypes: tuple[str, ...]
    #: The paths and node ids given on the command line, relative to the rootdir where they are inside it.
    args: tuple[str, ...]
    keyword: str
    markexpr: str
    #: Tests that ``-k``, ``-m``, ``--deselect`` or ``--lf`` removed from the collection.
    deselected_tests: int
    narrowed_by: tuple[str, ...]

    @property
    def subset(self) -> bool:
        """Whether the options left out some of the tier's cases (or chose other ones)."""
        return bool(self.narrowed_by)

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.tier, "model": self.model, "device_type": self.device_type, "dtypes": list(self.dtypes),
                "args": list(self.args), "keyword": self.keyword, "markexpr": self.markexpr,
                "deselected_tests": self.deselected_tests, "narrowed_by": list(self.narrowed_by)}


def _sizes(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def narrowed_by(tier: Tier, default: Tier, *, dtypes: Sequence[str], device_type: str, args: Sequence[str],
                keyword: str, markexpr: str, deselected_tests: int, tier_cases: bool = True) -> tuple[str, ...]:
    """Why the selection is not the whole of ``default`` (the tier as defined), one reason per option;
    empty when it is. ``tier`` is the tier with the command line's overrides applied. ``tier_cases``:
    whether the session runs the tier's cases (``kvperf_case``); the tier's sizes and dtypes narrow only
    those, not the fixed specs of a benchmark file's own cases."""
    reasons: list[str] = []
    if deselected_tests:
        by = " ".join(f"{flag} {value!r}" for flag, value in (("-k", keyword), ("-m", markexpr)) if value)
        reasons.append(f"{deselected_tests} test(s) deselected" + (f" by {by}" if by else ""))
    reasons.extend(f"node id {arg}" for arg in args if "::" in arg)
    if tier.model != default.model:
        reasons.append(f"--kvperf-model {tier.model!r} instead of the tier's {default.model!r}")
    if not tier_cases:
        return tuple(reasons)
    if (tier.batch_sizes, tier.sweep_batch_sizes) != (default.batch_sizes, default.sweep_batch_sizes):
        reasons.append(f"--kvperf-batch-sizes {_sizes(tier.batch_sizes)} instead of the tier's "
                       f"{_sizes(default.batch_sizes)} and {_sizes(default.sweep_batch_sizes)}")
    if (tier.prompt_lens, tier.sweep_prompt_lens) != (default.prompt_lens, default.sweep_prompt_lens):
        reasons.append(f"--kvperf-prompt-lens {_sizes(tier.prompt_lens)} instead of the tier's "
                       f"{_sizes(default.prompt_lens)} and {_sizes(default.sweep_prompt_lens)}")
    if tier.new_tokens != default.new_tokens:
        reasons.append(f"--kvperf-new-tokens {tier.new_tokens} instead of the tier's {default.new_tokens}")
    left_out = [d for d in DEFAULT_DTYPES.get(device_type, ()) if d not in dtypes]
    if left_out:
        reasons.append(f"--kvperf-dtypes {','.join(dtypes)} leaves out {', '.join(left_out)}")
    return tuple(reasons)


def relative_args(args: Sequence[str], rootdir: Path) -> tuple[str, ...]:
    """Command-line paths and node ids relative to ``rootdir`` where they are inside it, so that a saved
    file does not record the user's home directory."""
    shown = []
    for arg in args:
        path, sep, rest = arg.partition("::")
        if os.path.isabs(path):
            with suppress(ValueError):  # outside the rootdir: kept as given
                path = Path(path).relative_to(rootdir).as_posix()
        shown.append(path + sep + rest)
    return tuple(shown)
