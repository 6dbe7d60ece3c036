"""`kvperf compare` on the command line: what was compared decides the exit code, never only the verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvperf.cli import build_parser, main
from tests.test_compare import BASE, CASE, OTHER, info, result_json


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_files_that_share_no_case_exit_2_not_0(tmp_path: Path, capsys):
    a = write(tmp_path / "a.json", result_json({CASE: info(BASE)}))
    b = write(tmp_path / "b.json", result_json({OTHER: info(BASE)}))
    for extra in ([], ["--allow-partial"]):
        assert main(["compare", str(a), str(b), *extra]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert err.startswith(f"kvperf: error: {a} and {b} have no case in common")


def test_missing_cases_exit_2_unless_allow_partial(tmp_path: Path, capsys):
    both = write(tmp_path / "both.json", result_json({CASE: info(BASE), OTHER: info(BASE)}))
    one = write(tmp_path / "one.json", result_json({CASE: info(BASE)}))
    assert main(["compare", str(both), str(one)]) == 2
    assert capsys.readouterr().err == (
        f"kvperf: error: {one} against {both}: 1 case(s) of the baseline are missing from the current run ({OTHER}): "
        "a renamed test, another -k selection or another model; run the same cases, or pass --allow-partial to "
        "compare only the 1 case(s) in common\n")
    assert main(["compare", str(both), str(one), "--allow-partial"]) == 0
    out = capsys.readouterr().out
    assert f"note: MISSING: 1 case(s) of the baseline are not in the current run and were not compared " \
           f"(--allow-partial): {OTHER}" in out
    assert out.splitlines()[-1] == ("verdict: no regression (1 case compared, 1 missing; timings (reported): 4 of 4 "
                                    "tested)")
    assert main(["compare", str(both), str(one), "--allow-partial", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cases"] == {"compared": 1, "missing": 1, "new": 0}
    assert data["missing_cases"] == [[OTHER, "tiny-gpt2"]]


def test_gated_timings_that_were_all_too_noisy_exit_8(tmp_path: Path, capsys):
    busy = write(tmp_path / "busy.json", result_json({CASE: info(BASE, wait=[0.3] * 5)}))
    assert main(["compare", str(busy), str(busy), "--timings", "gate"]) == 8
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict: NOT TESTED: timings were gated and none "
                                                               "could be tested (1 case compared; timings: 0 of 4")
    assert main(["compare", str(busy), str(busy), "--timings", "skip"]) == 0
    capsys.readouterr()
    # those rounds count as quiet
    assert main(["compare", str(busy), str(busy), "--timings", "gate", "--max-cpu-wait", "0.5"]) == 0
    capsys.readouterr()
    assert main(["compare", str(busy), str(busy), "--timings", "gate", "--format", "markdown"]) == 8
    assert capsys.readouterr().out.startswith("### kvperf: ⚠️ Timings not tested: not a pass\n")


@pytest.mark.parametrize("argv", [[], ["compare"], ["ab"]])
def test_help_documents_the_exit_codes(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "1 a regression was found" in text or "1 at least one regression" in text
    assert "8" in text and "none could be tested" in text and "not a pass" in text
    assert "--allow-partial" in text


def test_gate_output_makes_a_changed_output_exit_1(tmp_path: Path, capsys):
    base = write(tmp_path / "base.json", result_json({CASE: {**info(BASE), "output_sha256": "a" * 64}}))
    changed = write(tmp_path / "changed.json", result_json({CASE: {**info(BASE), "output_sha256": "b" * 64}}))
    assert main(["compare", str(base), str(changed)]) == 0
    assert "note: the output changed in 1 of 1 case(s)" in capsys.readouterr().out
    assert main(["compare", str(base), str(changed), "--gate-output"]) == 1
    out = capsys.readouterr().out
    assert "generated token ids changed (sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb)" in out
    assert out.splitlines()[-1].startswith("verdict: REGRESSION")


def test_ab_takes_gate_output_too():
    assert build_parser().parse_args(["ab", "--gate-output"]).gate_output is True
    assert build_parser().parse_args(["ab"]).gate_output is False
