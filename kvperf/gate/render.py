"""Rendering a ``Comparison``: a plain-text table for the terminal and Markdown for a CI job summary
or a pull-request comment (JSON is ``Comparison.to_json``).

Both end with the verdict and what it rests on: how many cases were compared (and how many are
missing or new) and how many timing verdicts were tested, so that a pass that tested little reads
as such ("timings: 12 of 96 tested, 84 too noisy"). Names from the files are escaped
(``kvperf.text``): a case name cannot write to the terminal or break out of its Markdown code span.
"""

from __future__ import annotations

from kvperf.gate.compare import METRICS, Comparison, Verdict
from kvperf.gate.fingerprint import OUTPUT_METRIC
from kvperf.text import md_code, md_text, terminal_safe

__all__ = ["render_markdown", "render_table", "scope", "verdict_line"]

_METRIC_LABEL = {**{m.name: m.label for m in METRICS}, OUTPUT_METRIC: "output"}
_METRIC_UNIT = {m.name: m.unit for m in METRICS}
_MARK = {"regressed": "❌ regressed", "slower": "🐢 slower (not gated)",
         "improved": "✅ improved", "unchanged": "unchanged", "new": "🆕 new",
         "missing": "⚠️ missing"}


def _format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    unit = _METRIC_UNIT[metric]
    if unit == "s":
        return f"{value * 1e3:.4g} ms"
    if unit == "tok/s":
        return f"{value:.4g} tok/s"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:,.0f}"


def _format_change(v: Verdict) -> str:
    if v.change is None:
        return "-"
    if v.change == float("inf"):
        return "+inf"
    return f"{v.change * 100:+.1f}%"


def _format_ci(v: Verdict) -> str:
    if v.ci_low is None or v.ci_high is None:
        return ""
    return f"[{(v.ci_low - 1) * 100:+.1f}%, {(v.ci_high - 1) * 100:+.1f}%]"


def _rows(comparison: Comparison, everything: bool) -> list[list[str]]:
    rows: list[list[str]] = []
    reported = set(comparison.reported_slowdowns)
    seen_whole_case: set[tuple[str, str]] = set()
    for v in comparison.verdicts:
        if v.verdict in ("new", "missing"):  # a whole case: one row for all its metrics
            if (v.case, v.model) in seen_whole_case or v.note:
                if v.note:
                    rows.append([v.case, _METRIC_LABEL[v.metric], v.verdict, _format_value(v.metric, v.baseline),
                                 _format_value(v.metric, v.current), "-", "", v.note])
                continue
            seen_whole_case.add((v.case, v.model))
            rows.append([v.case, "all", v.verdict, "-", "-", "-", "", f"case only in the "
                         f"{'current run' if v.verdict == 'new' else 'baseline'}"])
            continue
        if v.verdict == "unchanged" and not everything:
            continue
        threshold = f"±{v.threshold_pct:g}%" if v.threshold_pct is not None else ""
        note = "; ".join(part for part in (v.note, f"threshold {threshold}" if v.verdict != "unchanged" else "")
                         if part)
        shown = "slower" if v in reported else v.verdict  # a timing under --timings report: not a regression
        rows.append([v.case, _METRIC_LABEL[v.metric], shown, _format_value(v.metric, v.baseline),
                     _format_value(v.metric, v.current), _format_change(v), _format_ci(v), note])
    return rows


_HEADER = ["case", "metric", "verdict", "baseline", "current", "change", "95% CI of change", "note"]


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _bandwidth_rows(comparison: Comparison) -> list[list[str]]:
    """Each case's share of its machine's peak memory bandwidth, both sides (information, never gated)."""
    rows = []
    for row in comparison.bandwidth_fractions:
        change = (f"{(row.current / row.baseline - 1) * 100:+.1f}%"
                  if row.baseline and row.current is not None else "-")
        rows.append([row.case, _fraction(row.baseline), _fraction(row.current), change])
    return rows


_BANDWIDTH_HEADER = ["case", "baseline", "current", "change"]
_BANDWIDTH_TITLE = "bandwidth fraction of the peak (information, never gates; kvperf report shows each peak):"


def _summary(comparison: Comparison) -> str:
    counts = comparison.counts()
    parts = [f"{counts[name]} {name}" for name in ("regressed", "improved", "unchanged", "new", "missing")]
    if counts["reported"]:
        parts.insert(1, f"{counts['reported']} slower (timings reported, not gated)")
    return ", ".join(parts)


def scope(comparison: Comparison) -> str:
    """What the verdict rests on, e.g. ``96 cases compared, 3 missing; timings: 12 of 384 tested, 372
    too noisy``."""
    cases = comparison.case_counts()
    parts = [f"{cases['compared']} case{'s' if cases['compared'] != 1 else ''} compared"]
    parts += [f"{cases[k]} {k}" for k in ("missing", "new") if cases[k]]
    if not comparison.timings_compared:
        timings = "timings: not compared"
    else:
        t = comparison.timing_counts()
        timings = f"timings{'' if comparison.timings_gated else ' (reported)'}: {t['tested']} of {t['total']} tested"
        timings += f", {t['noisy']} too noisy" if t["noisy"] else ""
        timings += f", {t['no_samples']} without raw samples" if t["no_samples"] else ""
    return f"{', '.join(parts)}; {timings}"


def verdict_line(comparison: Comparison) -> str:
    """The last line of the table: the outcome, and what it rests on."""
    outcome = comparison.outcome
    if outcome == "regression":
        return f"verdict: REGRESSION ({scope(comparison)})"
    if outcome == "untested":
        return (f"verdict: NOT TESTED: timings were gated and none could be tested ({scope(comparison)}); rerun "
                f"on a quieter machine, or pass {comparison.flag_prefix}timings skip to gate only the "
                "deterministic metrics")
    slower = len(comparison.reported_slowdowns)
    reported = f"; {slower} timing(s) slower, reported not gated" if slower else ""
    return f"verdict: no regression ({scope(comparison)}{reported})"


def render_table(comparison: Comparison, *, everything: bool = False) -> str:
    """A plain-text table for a terminal: every verdict that isn't ``unchanged`` (all with
    ``everything``), then the counts and the notes."""
    rows = _rows(comparison, everything)
    lines = [terminal_safe(f"kvperf compare: {comparison.baseline_source} -> {comparison.current_source}")]
    if comparison.version_changes:
        lines.append(terminal_safe(f"versions differ: {', '.join(comparison.version_changes)}"))
    rows = [[terminal_safe(cell) for cell in row] for row in rows]
    if rows:
        widths = [max(len(row[i]) for row in [_HEADER, *rows]) for i in range(len(_HEADER))]
        for row in [_HEADER, ["-" * w for w in widths], *rows]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    bandwidth = [[terminal_safe(cell) for cell in row] for row in _bandwidth_rows(comparison)]
    if bandwidth:
        lines.append(_BANDWIDTH_TITLE)
        widths = [max(len(row[i]) for row in [_BANDWIDTH_HEADER, *bandwidth]) for i in range(len(_BANDWIDTH_HEADER))]
        for row in [_BANDWIDTH_HEADER, *bandwidth]:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    lines.append(_summary(comparison))
    lines.extend(terminal_safe(f"note: {note}") for note in comparison.notes)
    lines.append(verdict_line(comparison))
    return "\n".join(lines)


def _md_table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    for row in rows:
        # A pipe ends a table cell even inside a code span, unless escaped (GitHub Flavored Markdown).
        cells = [md_code(row[0]).replace("|", "\\|"), *(md_text(c) for c in row[1:])]
        cells[2] = _MARK.get(row[2], row[2])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(comparison: Comparison) -> str:
    """Markdown for a CI job summary or a pull-request comment: the verdict, the changed metrics, and
    every verdict in a collapsed section."""
    title = {"regression": "❌ Performance regression", "untested": "⚠️ Timings not tested: not a pass",
             "pass": "✅ No performance regression"}[comparison.outcome]
    lines = [f"### kvperf: {title}", "",
             f"Baseline {md_code(comparison.baseline_source)}, current {md_code(comparison.current_source)}.", "",
             *([f"**Versions differ:** {md_text(', '.join(comparison.version_changes))}.", ""]
               if comparison.version_changes else []),
             f"**{md_text(scope(comparison))}.** {_summary(comparison)}.", ""]
    if comparison.outcome == "untested":
        lines += [md_text(verdict_line(comparison).removeprefix("verdict: ")), ""]
    lines.extend(f"> {md_text(note)}" for note in comparison.notes)
    if comparison.notes:
        lines.append("")
    changed = _rows(comparison, everything=False)
    if changed:
        lines.extend(_md_table(changed))
        lines.append("")
    lines += ["<details><summary>All verdicts</summary>", "", *_md_table(_rows(comparison, everything=True)), "",
              "</details>", ""]
    bandwidth = _bandwidth_rows(comparison)
    if bandwidth:
        lines += [f"<details><summary>{md_text(_BANDWIDTH_TITLE.rstrip(':'))}</summary>", "",
                  "| " + " | ".join(_BANDWIDTH_HEADER) + " |", "|" + "---|" * len(_BANDWIDTH_HEADER),
                  *("| " + " | ".join([md_code(row[0]).replace("|", "\\|"), *(md_text(c) for c in row[1:])]) + " |"
                    for row in bandwidth), "", "</details>", ""]
    lines += ["Timings: regressed when the whole 95% bootstrap interval of the median ratio lies beyond the "
              "threshold, rounds with CPU contention left out. FLOPs, KV bytes and CPU memory: exact."]
    return "\n".join(lines) + "\n"
