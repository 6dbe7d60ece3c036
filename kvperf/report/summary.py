"""kvperf's own terminal summary at the end of ``pytest benchmarks``: one compact table per experiment.

pytest-benchmark's tables time the whole ``generate`` call and nothing else; what a KV-cache run is
about is TTFT, TPOT, tokens/s, peak and KV memory, and how much the cache saves. Each row is one case
(medians over its rounds). ``vs off`` is the e2e time of the same case with the cache off divided by
this row's: above 1 the cache saves time. A ``!`` marks a case whose rounds waited for a core more
than ``MAX_CPU_WAIT`` of the time (median ``cpu_wait``): another process slowed it, read its timings
with care.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from kvperf.report.experiments import Table, format_table
from kvperf.report.physics import CONTENDED_WAIT, contended
from kvperf.tiers import ordered_experiments

__all__ = ["summary_tables", "write_summary"]

Row = dict[str, Any]

_TITLES = {
    "matrix": "matrix: cache on / static / off x batch x prompt",
    "length": "length (experiment 1): cache on vs off against new tokens",
    "batch": "batch (experiment 2): throughput against batch size",
    "context": "context (experiment 3): latency and memory against prompt length",
    "first_token": "first_token (experiment 4): TTFT against TPOT",
    "caches": "caches: every cache implementation at one size",
    "sliding": "sliding: a sliding-window model's caches",
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 1 else f"{seconds * 1e3:,.0f}"


def _mib(nbytes: float) -> str:
    return "n/a" if nbytes < 0 else f"{nbytes / 2**20:.3g}"


def _key(case: Row) -> tuple[Any, ...]:
    return case["batch_size"], case["prompt_len"], case["new_tokens"], case["dtype"]


def _table(experiment: str, cases: Sequence[Row]) -> Table:
    off = {_key(c): c for c in cases if c["cache"] == "off"}
    order = {mode: i for i, mode in enumerate(("on", "static", "compiled", "quanto", "hqq", "fp8", "offloaded",
                                               "offloaded_static", "off"))}
    rows: list[tuple[str, ...]] = []
    flagged = 0
    for c in sorted(cases, key=lambda c: (c["dtype"], c["batch_size"], c["prompt_len"], c["new_tokens"],
                                          order.get(c["cache"], 3))):
        twin = off.get(_key(c))
        speedup = f"{twin['e2e_s'] / c['e2e_s']:.2f}x" if twin is not None and c["cache"] != "off" else ""
        wait = contended(c)
        flagged += wait is not None
        rows.append((c["cache"], str(c["batch_size"]), str(c["prompt_len"]), str(c["new_tokens"]), c["dtype"],
                     _ms(c["ttft_s"]), _ms(c["tpot_s"]), f"{c['tokens_per_s']:.4g}", _mib(c["peak_memory_bytes"]),
                     _mib(c["kv_cache_bytes"]), speedup, "" if wait is None else f"! {wait:.0%}"))
    headers: tuple[str, ...] = ("cache", "bs", "prompt", "new", "dtype", "TTFT ms", "TPOT ms", "tok/s", "peak MiB",
                                "KV MiB", "vs off", "wait")
    if not flagged:  # the column says nothing on a quiet run
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    notes = [f"! {flagged} case(s) waited for a core (median cpu_wait above {CONTENDED_WAIT:.0%}): another "
             "process slowed them"] if flagged else []
    model = cases[0].get("model", "?")
    tier = cases[0].get("tier", "?")
    return Table(f"{_TITLES.get(experiment, experiment)} [{model}, tier {tier}]", headers, tuple(rows),
                 tuple(notes))


def summary_tables(cases: Iterable[Row]) -> list[Table]:
    """One table per experiment of ``cases`` (``extra_info`` dicts), in the README's order."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for case in cases:
        groups[str(case.get("experiment", "custom"))].append(case)
    return [_table(name, groups[name]) for name in ordered_experiments(groups)]


def write_summary(write_line: Any, cases: Iterable[Row]) -> None:
    """Write the tables with ``write_line`` (a pytest ``TerminalReporter.write_line``), then one line
    on what the columns mean."""
    tables = summary_tables(cases)
    for table in tables:
        for line in format_table(table).rstrip("\n").splitlines():
            write_line(line)
        write_line("")
    if tables:
        write_line("medians over the timed rounds; TTFT = prefill + first token; TPOT = (e2e - TTFT) / (new - 1);")
        write_line("peak = weights + what the call allocated; vs off = e2e with the cache off / e2e of this row")
