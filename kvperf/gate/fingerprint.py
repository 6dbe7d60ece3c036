"""The output fingerprint: a hash of the token ids a case generated, and what a comparison says when
it changed.

An upgrade can change what a model generates as well as how fast it does it (another attention
kernel, another order of additions, a changed default). kvperf's cases decode greedily from seeded
weights and seeded prompts, so in one environment every round of a case generates the same tokens;
``output_sha256`` hashes them (the generated positions only, every row of the batch), and the
benchmark JSON keeps the hash of each case (``extra_info["output_sha256"]``, and
``output_sha256_distinct``, how many different outputs its timed rounds produced: 1 when the case
is deterministic).

A comparison (``kvperf compare``, ``kvperf ab``) reports the cases whose hash changed as a note: "the
output changed" is worth knowing, but it is not a performance regression, and tiny numeric
differences between releases flip greedy ties on random weights. With ``gate_output`` each such case
becomes a ``regressed`` verdict of the ``output`` metric instead, and the comparison fails. A case
without a hash on either side (a file from a kvperf before the fingerprint) is not compared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvperf.gate.baseline import Baseline, CaseKey

if TYPE_CHECKING:
    import torch

__all__ = ["OUTPUT_METRIC", "OutputChange", "output_changes", "output_notes", "output_sha256", "output_verdict_note"]

#: The name of the output fingerprint among a comparison's metrics (``Verdict.metric``).
OUTPUT_METRIC = "output"


def output_sha256(sequences: torch.Tensor, prompt_len: int) -> str:
    """SHA-256 of the generated token ids: every position after the prompt, row by row, as little-endian
    64-bit integers, after the shape (so that 2 rows of 3 tokens and 3 rows of 2 differ)."""
    import torch  # here, not at the top: compare and render read this module, and they never need torch

    generated = sequences[:, prompt_len:].to(device="cpu", dtype=torch.int64)
    digest = hashlib.sha256(f"{tuple(generated.shape)}".encode())
    digest.update(b"".join(token.to_bytes(8, "little", signed=True) for token in generated.flatten().tolist()))
    return digest.hexdigest()


@dataclass(frozen=True)
class OutputChange:
    """A case in both files whose generated tokens differ, with both hashes."""

    case: str
    model: str
    baseline_sha256: str
    current_sha256: str


def _stable_hash(info: dict[str, Any]) -> str | None:
    """The case's output hash when it has one and its timed rounds agreed on it, else None."""
    value = info.get("output_sha256")
    distinct = info.get("output_sha256_distinct", 1)
    return value if isinstance(value, str) and value and distinct == 1 else None


def _varied(info: dict[str, Any]) -> bool:
    distinct = info.get("output_sha256_distinct", 1)
    return isinstance(distinct, int) and not isinstance(distinct, bool) and distinct > 1


def output_changes(baseline: Baseline, current: Baseline) -> tuple[OutputChange, ...]:
    """The cases in both files whose output hash differs, each side deterministic; in case order."""
    changes = []
    for key in sorted(baseline.cases.keys() & current.cases.keys(), key=lambda k: (k[1], k[0])):
        before, after = _stable_hash(baseline.cases[key]), _stable_hash(current.cases[key])
        if before is not None and after is not None and before != after:
            changes.append(OutputChange(key[0], key[1], before, after))
    return tuple(changes)


def _names(keys: Sequence[CaseKey], limit: int = 5) -> str:
    shown = ", ".join(name for name, _ in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def output_notes(baseline: Baseline, current: Baseline, changes: Sequence[OutputChange], *, gated: bool) -> list[str]:
    """Notes: the cases whose output changed, and the cases whose output could not be compared."""
    common = baseline.cases.keys() & current.cases.keys()
    notes = []
    if changes:
        keys = [(c.case, c.model) for c in changes]
        verdict = "each is a regression (--gate-output)" if gated else \
            "a note, not a regression (kvperf compare and kvperf ab fail on it with --gate-output)"
        notes.append(f"the output changed in {len(changes)} of {len(common)} case(s): the generated token ids differ "
                     f"from the baseline's ({_names(keys)}); {verdict}")
    for side, result in (("baseline", baseline), ("current", current)):
        varied = sorted((k for k in common if _varied(result.cases[k])), key=lambda k: (k[1], k[0]))
        if varied:
            notes.append(f"the output varied between the timed rounds of {len(varied)} case(s) of the {side} run "
                         f"(not deterministic there), so it was not compared: {_names(varied)}")
    return notes


def output_verdict_note(change: OutputChange) -> str:
    """The note of a gated output verdict: the first 12 hex digits of both hashes."""
    return f"generated token ids changed (sha256 {change.baseline_sha256[:12]} -> {change.current_sha256[:12]})"
