"""A Markdown comparison that fits in a GitHub comment (65,536 characters).

``render_markdown`` lists every verdict; a full tier against a baseline outgrows a pull-request
comment. The summary keeps what a reviewer needs first: the verdict and what it rests on, the notes,
the regressions, then the other changes folded in a ``<details>`` section, each table cut where the
limit would be passed, with a line that says how many rows were left out and where they are.
"""

from __future__ import annotations

from kvperf.gate.compare import Comparison
from kvperf.gate.render import _md_table, _rows, _summary, render_markdown, scope, verdict_line
from kvperf.text import md_code, md_text

__all__ = ["GITHUB_COMMENT_LIMIT", "render_markdown_summary"]

#: GitHub's limit on the body of an issue or pull-request comment, in characters.
GITHUB_COMMENT_LIMIT = 65_536
#: Kept free for the lines that close the summary.
_RESERVE = 600


def _fitted(rows: list[list[str]], budget: int) -> tuple[list[str], int]:
    """The Markdown table of as many of ``rows`` as fit in ``budget`` characters, and how many were left out."""
    for keep in range(len(rows), -1, -1):
        lines = _md_table(rows[:keep]) if keep else []
        if len("\n".join(lines)) + 1 <= budget:
            return lines, len(rows) - keep
    return [], len(rows)  # unreachable: keep == 0 always fits


def render_markdown_summary(comparison: Comparison, limit: int = GITHUB_COMMENT_LIMIT) -> str:
    """``render_markdown`` when it fits in ``limit`` characters; else the verdict, the notes, the
    regressions and the other changes (folded), cut to fit."""
    full = render_markdown(comparison)
    if len(full) <= limit:
        return full
    title = {"regression": "❌ Performance regression", "untested": "⚠️ Timings not tested: not a pass",
             "pass": "✅ No performance regression"}[comparison.outcome]
    lines = [f"### kvperf: {title}", "",
             f"Baseline {md_code(comparison.baseline_source)}, current {md_code(comparison.current_source)}.", "",
             f"**{md_text(scope(comparison))}.** {_summary(comparison)}.", ""]
    if comparison.outcome == "untested":
        lines += [md_text(verdict_line(comparison).removeprefix("verdict: ")), ""]
    lines += [f"> {md_text(note)}" for note in comparison.notes] + ([""] if comparison.notes else [])
    changed = _rows(comparison, everything=False)
    regressed = [r for r in changed if r[2] == "regressed"]
    others = [r for r in changed if r[2] != "regressed"]
    left_out = 0
    if regressed:
        table, cut = _fitted(regressed, limit - len("\n".join(lines)) - _RESERVE)
        lines += ["#### Regressions", "", *table, ""]
        left_out += cut
    if others:
        head = [f"<details><summary>Other changes ({len(others)})</summary>", ""]
        table, cut = _fitted(others, limit - len("\n".join(lines + head)) - _RESERVE)
        lines += [*head, *table, "", "</details>", ""]
        left_out += cut
    if left_out:
        lines.append(f"{left_out} changed row(s) did not fit in a GitHub comment: see `kvperf compare --format json` "
                     "or the table output.")
    lines.append("Unchanged verdicts are left out of this summary (the full list: `--format markdown`).")
    return "\n".join(lines) + "\n"
