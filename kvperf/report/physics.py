"""Results that contradict the physics: a cache that costs more work than no cache, or more time
while it does less work.

With the cache on, every decode step runs the model on one new token per sequence; with it off, on
the whole prefix. So cache on never does more FLOPs than cache off for the same batch, prompt, new
tokens and dtype (``kvperf.measure.work`` counts them exactly). A cache-on case that does is a bug in the
cache. A cache-on case that took *longer* than its cache-off twin while doing fewer FLOPs is
usually a busy machine: when its rounds waited for a core (``cpu_wait``, ``contended``) the
report says so; when they did not, per-step overhead dominates at that size, and the report says
that instead. Either way the reader learns that the timing says more about the machine than the
cache.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

__all__ = ["CONTENDED_WAIT", "contended", "contradictions"]

Row = dict[str, Any]

#: A case whose median round waited for a core longer than this share of its wall time is contended
#: (the same limit as ``kvperf.gate.compare.MAX_CPU_WAIT``, above which a comparison drops a round).
CONTENDED_WAIT = 0.05


def contended(case: Row) -> float | None:
    """The median share of its rounds' wall time a case waited for a core, if above
    ``CONTENDED_WAIT``; None for a quiet case or one without the record."""
    waits = [w for w in case.get("cpu_wait_samples") or [] if isinstance(w, (int, float))]
    if not waits:
        return None
    wait = statistics.median(waits)
    return wait if wait > CONTENDED_WAIT else None


def _key(case: Row) -> tuple[Any, ...]:
    return case["batch_size"], case["prompt_len"], case["new_tokens"], case["dtype"]


def _label(case: Row) -> str:
    return (f"cache {case['cache']}, batch {case['batch_size']}, prompt {case['prompt_len']}, "
            f"{case['new_tokens']} new, {case['dtype']}")


def contradictions(cases: Iterable[Row]) -> list[str]:
    """One line per cached case whose FLOPs or time contradict its cache-off twin's."""
    cases = list(cases)
    off = {_key(c): c for c in cases if c["cache"] == "off"}
    lines: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    for case in cases:
        twin = off.get(_key(case))
        key = (case["cache"], *_key(case))
        if case["cache"] == "off" or twin is None or key in seen:
            continue
        seen.add(key)
        flops, twin_flops = case.get("flops"), twin.get("flops")
        if isinstance(flops, (int, float)) and isinstance(twin_flops, (int, float)) and flops > twin_flops:
            lines.append(f"{_label(case)}: does more work than the cache off ({flops:,.0f} against {twin_flops:,.0f} "
                         "FLOPs): the cache is not saving the prefix's work, a bug to look at")
            continue
        if case["e2e_s"] <= twin["e2e_s"]:
            continue
        ratio = case["e2e_s"] / twin["e2e_s"]
        work = (f" although it does {twin_flops / flops:.1f}x fewer FLOPs"
                if isinstance(flops, (int, float)) and isinstance(twin_flops, (int, float)) and flops > 0 else "")
        waits = [w for w in (contended(case), contended(twin)) if w is not None]
        why = (f"its rounds waited for a core up to {max(waits):.0%} of the time (cpu_wait): the machine was busy, "
               "rerun on a quiet one" if waits else
               "no contention was recorded: at this size the per-step overhead outweighs the work saved")
        lines.append(f"{_label(case)}: took {ratio:.2f}x the time of the cache off{work}; {why}")
    return lines
