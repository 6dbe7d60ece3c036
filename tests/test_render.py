"""Rendering: names from a result file reach neither the terminal raw nor out of their Markdown code span."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kvperf.cli import main
from kvperf.gate.baseline import baseline_from_json
from kvperf.gate.compare import compare
from kvperf.gate.render import render_markdown, render_table
from tests.test_compare import BASE, info, result_json

ANSI = "test_x[\x1b[2J\x1b[31mred\x1b[0m\nverdict: no regression\u202e]"
TICKS = "test_x[a`b``| **bold** <img src=x onerror=alert(1)>]"


def regressed(name: str) -> tuple[dict, dict]:
    return result_json({name: info(BASE)}), result_json({name: info(BASE, flops=2e6)})


def test_control_characters_in_a_case_name_are_escaped_in_the_table():
    base, cur = regressed(ANSI)
    table = render_table(compare(baseline_from_json(base, "a.json"), baseline_from_json(cur, "b.json")))
    assert "\x1b" not in table and "\u202e" not in table
    assert "test_x[\\x1b[2J\\x1b[31mred\\x1b[0m\\nverdict: no regression\\u202e]" in table
    assert [line for line in table.splitlines() if line.startswith("verdict:")] == [
        "verdict: REGRESSION (1 case compared; timings: 4 of 4 tested)"]


def test_a_case_name_in_an_error_is_escaped_too(tmp_path: Path, capsys):
    data = result_json({ANSI: info(BASE)})
    data["benchmarks"][0]["extra_info"]["kv_cache_bytes"] = "x"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert main(["compare", str(path), str(path)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1 and "\\x1b[2J" in err


def test_a_backtick_in_a_case_name_stays_inside_its_code_span():
    base, cur = regressed(TICKS)
    md = render_markdown(compare(baseline_from_json(base, "a`b.json"), baseline_from_json(cur, "c.json")))
    row = next(line for line in md.splitlines() if "FLOPs/token" in line)
    # The fence is longer than any run of backticks in the name, and the pipe is escaped for the table.
    assert row.startswith("| ```test_x[a`b``\\| **bold** <img src=x onerror=alert(1)>]``` | FLOPs/token | ")
    cells = re.split(r"(?<!\\)\|", row)[1:-1]
    assert len(cells) == 8  # the name did not add a column
    assert "Baseline ``a`b.json``, current `c.json`." in md


def test_notes_are_plain_text_in_markdown():
    base = result_json({"test_a": info(BASE), "test_<b>": info(BASE)})
    cur = result_json({"test_a": info(BASE)})
    md = render_markdown(compare(baseline_from_json(base, "a.json"), baseline_from_json(cur, "b.json"),
                                 allow_partial=True))
    assert "> MISSING: 1 case(s) of the baseline are not in the current run and were not compared " \
           "(--allow-partial): test\\_\\<b\\>\n" in md


def test_a_code_span_is_padded_where_commonmark_would_eat_a_backtick_or_a_space():
    from kvperf.text import md_code

    assert md_code("plain") == "`plain`"
    assert md_code("`x") == "`` `x ``"
    assert md_code("x``") == "``` x`` ```"
    assert md_code(" x ") == "`  x  `"
