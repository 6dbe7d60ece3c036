"""Reports: the experiments of a benchmark run as tables (terminal or Markdown) and plots.

Input is the JSON that pytest-benchmark writes (``--benchmark-json`` or ``--benchmark-autosave``),
with kvperf's fields in each benchmark's ``extra_info``. Plots need matplotlib
(``pip install 'kvperf[plot]'``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvperf.errors import BadInputError
from kvperf.gate.result_file import REPORT_FIELDS, check_case, check_schema, read_json
from kvperf.report.physics import CONTENDED_WAIT, contended, contradictions
from kvperf.report.plots import make_plots
from kvperf.report.scaling import fit_power_law
from kvperf.tiers import ordered_experiments

__all__ = ["Table", "format_table", "load_cases", "make_plots", "make_tables"]

Row = dict[str, Any]


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


def format_table(table: Table, fmt: str = "text") -> str:
    """Render ``table`` as aligned text or as a GitHub Markdown table."""
    if fmt == "markdown":
        lines = [f"### {table.title}", "", "| " + " | ".join(table.headers) + " |",
                 "|" + "|".join(" --- " for _ in table.headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        lines += ["", *(f"- {note}" for note in table.notes)] if table.notes else []
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in table.rows)) if table.rows else len(h)
              for i, h in enumerate(table.headers)]
    lines = [table.title, "  ".join(h.rjust(w) for h, w in zip(table.headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table.rows]
    lines += [f"  {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def load_cases(paths: Iterable[str | Path]) -> list[Row]:
    """The ``extra_info`` of every kvperf benchmark in the given pytest-benchmark JSON files, each
    checked (``kvperf.gate.result_file``): the schema version this kvperf reads, and every field a table or
    a plot reads, with its type. ``BadInputError`` naming the file, the case and the fix otherwise."""
    cases: list[Row] = []
    for path in paths:
        source = str(path)
        data = read_json(path)
        benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
        if not isinstance(benchmarks, list):
            raise BadInputError(f"{source}: has no 'benchmarks' list: pass a file written by --benchmark-json")
        block = data.get("kvperf")
        if not isinstance(block, dict) or "schema" not in block:
            raise BadInputError(f"{source}: not a kvperf result file (no 'kvperf' schema block): pass a file "
                                "written by `pytest benchmarks --benchmark-json=FILE` with kvperf installed")
        check_schema(block["schema"], "'kvperf.schema'", source)
        for index, bench in enumerate(benchmarks):
            info = bench.get("extra_info") if isinstance(bench, dict) else None
            if not isinstance(info, dict) or "kvperf_schema" not in info:
                continue
            check_schema(info["kvperf_schema"], f"benchmarks[{index}].extra_info.kvperf_schema", source)
            check_case(info, f"benchmarks[{index}]", source, required=REPORT_FIELDS)
            cases.append(info)
    if not cases:
        raise BadInputError("no kvperf cases in the given files: run `pytest benchmarks --benchmark-json=FILE`")
    return cases


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.3f}" if nbytes >= 0 else "n/a"


def _sorted(cases: Iterable[Row], *keys: str) -> list[Row]:
    return sorted(cases, key=lambda c: tuple(c[k] for k in keys))


def _by_experiment(cases: Iterable[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for case in cases:
        groups[case.get("experiment", "custom")].append(case)
    return groups


def _busy(*cases: Row) -> str:
    """``! 63%`` when a case's rounds waited for a core (median ``cpu_wait`` above 5%), else empty."""
    waits = [w for w in (contended(c) for c in cases) if w is not None]
    return f"! {max(waits):.0%}" if waits else ""


_BUSY_NOTE = (f"busy: '! N%' marks a case whose rounds waited for a core N% of their time (median cpu_wait above "
              f"{CONTENDED_WAIT:.0%}): another process slowed it, and its timings say more about the machine.")


def _fit_note(label: str, xs: Sequence[float], ys: Sequence[float]) -> str:
    if len(set(xs)) < 2:
        return f"{label}: too few points for a fit"
    if min(ys) <= 0:
        return f"{label}: no fit (a value is zero or not measured)"
    return f"{label}: {fit_power_law(xs, ys).describe()}"


def _length_table(cases: list[Row]) -> Table:
    rows, notes = [], []
    for dtype in sorted({c["dtype"] for c in cases}):
        mine = [c for c in cases if c["dtype"] == dtype]
        on = {c["new_tokens"]: c for c in mine if c["cache"] == "on"}
        off = {c["new_tokens"]: c for c in mine if c["cache"] == "off"}
        for n in sorted(on.keys() & off.keys()):
            rows.append((dtype, str(n), _ms(on[n]["e2e_s"]), _ms(off[n]["e2e_s"]),
                         f"{off[n]['e2e_s'] / on[n]['e2e_s']:.2f}x",
                         _ms(on[n]["e2e_s"] / n), _ms(off[n]["e2e_s"] / n), _busy(on[n], off[n])))
        for label, side in (("cache on", on), ("cache off", off)):
            ns = sorted(side)
            notes.append(_fit_note(f"{dtype} total time, {label}", ns, [side[n]["e2e_s"] for n in ns]))
    return Table("Cache on vs off against output length (experiment 1)",
                 ("dtype", "new tokens", "e2e on ms", "e2e off ms", "speedup", "per token on ms",
                  "per token off ms", "busy"), tuple(rows), tuple(notes))


def _batch_table(cases: list[Row]) -> Table:
    rows = [(c["dtype"], str(c["batch_size"]), f"{c['tokens_per_s']:.1f}", _ms(c["itl_p50_s"]),
             _ms(c["itl_p95_s"]), _mib(c["peak_memory_bytes"]), _mib(c["kv_cache_bytes"]),
             _mib(c["kv_cache_bytes"] / c["batch_size"]), _busy(c))
            for c in _sorted(cases, "dtype", "batch_size")]
    return Table("Batching, cache on (experiment 2)",
                 ("dtype", "batch", "tokens/s", "ITL p50 ms", "ITL p95 ms", "peak MiB", "KV MiB",
                  "KV MiB/seq", "busy"), tuple(rows))


def _context_table(cases: list[Row]) -> Table:
    ordered = _sorted(cases, "dtype", "prompt_len")
    rows = [(c["dtype"], str(c["prompt_len"]), _ms(c["ttft_s"]), _ms(c["itl_p50_s"]), _ms(c["itl_p95_s"]),
             _mib(c["peak_memory_bytes"]), _mib(c["kv_cache_bytes"]), _busy(c)) for c in ordered]
    notes = []
    for dtype in sorted({c["dtype"] for c in cases}):
        mine = [c for c in ordered if c["dtype"] == dtype]
        xs = [c["prompt_len"] + c["new_tokens"] - 1 for c in mine]
        notes.append(_fit_note(f"{dtype} KV bytes against cached positions", xs,
                               [c["kv_cache_bytes"] for c in mine]))
        notes.append(_fit_note(f"{dtype} ITL p50 against prompt length", [c["prompt_len"] for c in mine],
                               [c["itl_p50_s"] for c in mine]))
    return Table("Context length, cache on, batch 1 (experiment 3)",
                 ("dtype", "prompt", "TTFT ms", "ITL p50 ms", "ITL p95 ms", "peak MiB", "KV MiB", "busy"),
                 tuple(rows), tuple(notes))


def _first_token_table(cases: list[Row]) -> Table:
    rows = [(c["dtype"], str(c["prompt_len"]), _ms(c["ttft_s"]), _ms(c["tpot_s"]),
             f"{c['ttft_s'] / c['tpot_s']:.2f}", _busy(c)) for c in _sorted(cases, "dtype", "prompt_len")]
    return Table("First-token vs next-token latency (experiment 4)",
                 ("dtype", "prompt", "TTFT ms", "TPOT ms", "TTFT / TPOT", "busy"), tuple(rows),
                 ("TTFT is prefill plus the first token, after warm-up; TPOT = (e2e - TTFT) / (new - 1).",))


def _matrix_table(cases: list[Row]) -> Table:
    off = {(c["batch_size"], c["prompt_len"], c["new_tokens"], c["dtype"]): c for c in cases if c["cache"] == "off"}
    rows = []
    for c in _sorted(cases, "dtype", "batch_size", "prompt_len", "cache"):
        twin = off.get((c["batch_size"], c["prompt_len"], c["new_tokens"], c["dtype"]))
        speedup = f"{twin['e2e_s'] / c['e2e_s']:.2f}x" if twin and c["cache"] != "off" else ""
        rows.append((c["cache"], str(c["batch_size"]), str(c["prompt_len"]), str(c["new_tokens"]), c["dtype"],
                     _ms(c["ttft_s"]), _ms(c["tpot_s"]), _ms(c["e2e_s"]), f"{c['tokens_per_s']:.1f}", speedup,
                     _mib(c["peak_memory_bytes"]), _mib(c["kv_cache_bytes"]), _busy(c)))
    return Table("Benchmark matrix", ("cache", "batch", "prompt", "new", "dtype", "TTFT ms", "TPOT ms", "e2e ms",
                                      "tokens/s", "vs off", "peak MiB", "KV MiB", "busy"), tuple(rows),
                 ("'vs off': e2e with the cache off divided by e2e of this row (same batch, prompt, dtype).",))


def _caches_table(title: str) -> Callable[[list[Row]], Table]:
    """The ``caches`` and ``sliding`` experiments: one row per cache mode, with the compile time of a
    compiled one (never in TPOT: see kvperf.measure.compiling) and the recompiles of its timed rounds."""

    def table(cases: list[Row]) -> Table:
        rows = []
        for c in _sorted(cases, "dtype", "batch_size", "prompt_len", "cache"):
            compile_s = c.get("compile_s")
            recompiles = c.get("recompiles_in_timed_rounds")
            rows.append((c["cache"], c.get("model", ""), c["dtype"], str(c["batch_size"]), str(c["prompt_len"]),
                         str(c["new_tokens"]), _ms(c["ttft_s"]), _ms(c["tpot_s"]),
                         "" if compile_s is None else f"{compile_s:.1f}", "" if recompiles is None else str(recompiles),
                         _mib(c["peak_memory_bytes"]), _mib(c["kv_cache_bytes"]), _busy(c)))
        return Table(title, ("cache", "model", "dtype", "batch", "prompt", "new", "TTFT ms", "TPOT ms", "compile s",
                             "recompiles", "peak MiB", "KV MiB", "busy"), tuple(rows),
                     ("compile s: the untimed call that compiled (never inside TTFT or TPOT); recompiles: frames "
                      "compiled during the timed rounds (0 expected).",))

    return table


def _formula_table(cases: list[Row]) -> Table:
    rows = []
    refusals: dict[str, None] = {}
    models = []
    for c in _sorted(cases, "cache", "dtype", "batch_size", "prompt_len", "new_tokens"):
        models.append(c.get("model"))
        formula, measured = c["kv_cache_formula_bytes"], c["kv_cache_bytes"]
        if formula is None:  # the formula refused this model: the note says why
            refusals[f"No formula: {c.get('kv_cache_formula_note') or 'no reason recorded'}."] = None
        rows.append((c["cache"], c["dtype"], str(c["batch_size"]), str(c["prompt_len"]), str(c["new_tokens"]),
                     "null" if formula is None else f"{formula:,}", f"{measured:,}",
                     "" if formula is None else f"{measured - formula:+,}"))
    unique = {(m, *r[:5]): r for m, r in zip(models, rows, strict=True)}  # a spec in several experiments: one row
    exact = sum(r[-1] == "+0" for r in unique.values())
    return Table("KV-cache formula against the measured tensors (experiment 5)",
                 ("cache", "dtype", "batch", "prompt", "new", "formula bytes", "measured bytes", "difference"),
                 tuple(unique.values()), (f"{exact} of {len(unique)} cases agree to the byte.", *refusals))


def _gbs(value: Any) -> str:
    return "null" if value is None else f"{value / 1e9:.3g}"


def _roofline_table(cases: list[Row]) -> Table:
    """Every case against the memory-bandwidth limit (``kvperf.measure.roofline``)."""
    rows: list[tuple[str, ...]] = []
    notes: dict[str, int] = {}
    peaks: dict[tuple[Any, Any], None] = {}
    for c in _sorted(cases, "cache", "dtype", "batch_size", "prompt_len", "new_tokens"):
        fraction, intensity = c.get("bandwidth_fraction"), c.get("arithmetic_intensity_flops_per_byte")
        nbytes = c.get("decode_bytes_per_step")
        mark = ""
        if c.get("roofline_note"):
            mark = f"[{notes.setdefault(str(c['roofline_note']), len(notes) + 1)}]"
        if c.get("peak_bandwidth_bytes_per_s") is not None or c.get("peak_bandwidth_note"):
            peaks[(c.get("peak_bandwidth_bytes_per_s"), c.get("peak_bandwidth_note"))] = None
        rows.append((str(c.get("experiment", "custom")), c["cache"], c["dtype"], str(c["batch_size"]),
                     str(c["prompt_len"]), str(c["new_tokens"]), _ms(c["tpot_s"]),
                     "null" if nbytes is None else _mib(nbytes), _gbs(c.get("achieved_bandwidth_bytes_per_s")),
                     "null" if fraction is None else f"{fraction:.1%}",
                     "null" if intensity is None else f"{intensity:.3g}", mark))
    lines = [f"peak bandwidth {_gbs(peak)} GB/s: {note or 'no note'}" for peak, note in peaks]
    lines.append("bytes/step: weights + the formula's KV cache (mean over the decode steps) + recurrent states; "
                 "achieved = bytes/step / TPOT; FLOP/byte = decode FLOPs per step / bytes per step.")
    lines += [f"[{n}] {note}" for note, n in notes.items()]
    return Table("Roofline: decode against the memory-bandwidth limit",
                 ("experiment", "cache", "dtype", "batch", "prompt", "new", "TPOT ms", "MiB/step", "achieved GB/s",
                  "of peak", "FLOP/byte", "note"), tuple(rows), tuple(lines))


def _energy_table(cases: list[Row]) -> Table:
    """Energy of the timed generate calls (``kvperf.measure.energy``): a row per measured case; the cases
    that have none are counted under their reason, never given a number."""
    rows: list[tuple[str, ...]] = []
    missing: dict[str, int] = {}
    for c in _sorted(cases, "cache", "dtype", "batch_size", "prompt_len", "new_tokens"):
        if c.get("energy_j") is None:
            reason = str(c.get("energy_note") or "no reason recorded")
            missing[reason] = missing.get(reason, 0) + 1
            continue
        per_token = c.get("energy_per_token_j")
        rows.append((str(c.get("experiment", "custom")), c["cache"], c["dtype"], str(c["batch_size"]),
                     str(c["prompt_len"]), str(c["new_tokens"]), f"{c['energy_j']:.4g}",
                     "null" if per_token is None else f"{per_token * 1e3:.4g}", str(c.get("energy_source") or "")))
    notes = ["energy_j: the whole timed generate call, prefill included; per token: divided by the generated "
             "tokens (median over the rounds)."]
    notes += [f"null in {n} of {len(cases)} cases: {reason}" for reason, n in missing.items()]
    return Table("Energy of the timed generate calls",
                 ("experiment", "cache", "dtype", "batch", "prompt", "new", "energy J", "mJ/token", "counter"),
                 tuple(rows), tuple(notes))


_BUILDERS: dict[str, Callable[[list[Row]], Table]] = {
    "matrix": _matrix_table, "length": _length_table, "batch": _batch_table,
    "context": _context_table, "first_token": _first_token_table,
    "caches": _caches_table("Cache implementations"), "sliding": _caches_table("Sliding-window caches"),
}


def make_tables(cases: list[Row]) -> list[Table]:
    """One table per experiment present in ``cases`` (custom cases go in the matrix layout)."""
    tables = []
    groups = _by_experiment(cases)
    for experiment in ordered_experiments(groups):  # the README's order, not the alphabet's
        group = groups[experiment]
        table = _BUILDERS.get(experiment, _matrix_table)(group)
        extra = [_BUSY_NOTE] if any(contended(c) for c in group) else []
        extra += [f"contradicts the FLOP counts: {line}" for line in contradictions(group)]
        tables.append(replace(table, notes=table.notes + tuple(extra)))
    cached = [c for c in cases if c["cache"] != "off" and "kv_cache_formula_bytes" in c]
    if cached:
        tables.append(_formula_table(cached))
    roofline = [c for c in cases if "decode_bytes_per_step" in c]
    if roofline:
        tables.append(_roofline_table(roofline))
    energy = [c for c in cases if "energy_j" in c]
    if energy:
        tables.append(_energy_table(energy))
    return tables
