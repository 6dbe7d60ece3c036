"""`--kvperf-compare` under pytest: the verdict says how much was tested, missing cases are refused
loudly, and a baseline saved from a subset of its tier is labelled (pytester, tiny cases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_plugin_baseline import BENCH_FILE, TINY


def _save(pytester: pytest.Pytester) -> Path:
    pytester.makepyfile(test_bench=BENCH_FILE)
    pytester.runpytest(*TINY, "--kvperf-save-baseline=store").assert_outcomes(passed=2)
    (path,) = (pytester.path / "store").glob("*/quick.json")
    return path


def test_the_pytest_verdict_says_how_much_was_tested(pytester: pytest.Pytester):
    path = _save(pytester)
    # Two rounds a case: fewer than the 3 quiet rounds a timing verdict needs, so none is tested.
    result = pytester.runpytest(*TINY, f"--kvperf-compare={path}", "--kvperf-timings=gate")
    result.stdout.fnmatch_lines([
        "verdict: NOT TESTED: timings were gated and none could be tested (2 cases compared; timings: 0 of 8 tested, "
        "8 too noisy); rerun on a quieter machine, or pass --kvperf-timings skip to gate only the deterministic "
        "metrics"])
    # Reported, not gated (the default): nothing could be tested, and the verdict says so without failing.
    result = pytester.runpytest(*TINY, f"--kvperf-compare={path}")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["verdict: no regression (2 cases compared; timings (reported): 0 of 8 tested, "
                                 "8 too noisy)"])
    result = pytester.runpytest(*TINY, f"--kvperf-compare={path}", "--kvperf-timings=skip")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["verdict: no regression (2 cases compared; timings: not compared)"])


def test_a_baseline_case_missing_from_the_run_is_refused_loudly(pytester: pytest.Pytester):
    data = json.loads(_save(pytester).read_text())
    data["benchmarks"][0]["name"] = "test_case[renamed]"
    (pytester.path / "renamed.json").write_text(json.dumps(data))
    result = pytester.runpytest(*TINY, "--kvperf-compare=renamed.json", "--kvperf-timings=skip")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([
        "kvperf: error: this run against renamed.json: 1 case(s) of the baseline are missing from the current run "
        "(test_case[[]renamed]); 1 case(s) of the current run are not in the baseline (test_case[[]on]): a renamed "
        "test, another -k selection or another model; run the same cases, or pass --kvperf-allow-partial to compare "
        "only the 1 case(s) in common"])
    assert "verdict: no regression" not in result.stdout.str()


def test_a_baseline_saved_from_a_subset_is_labelled(pytester: pytest.Pytester):
    data = json.loads(_save(pytester).read_text())
    data.update(kvperf_subset=True, kvperf_selection={"narrowed_by": ["1 test(s) deselected by -k 'on'"]})
    (pytester.path / "subset.json").write_text(json.dumps(data))
    result = pytester.runpytest(*TINY, "--kvperf-compare=subset.json", "--kvperf-timings=skip")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "note: the baseline file was saved from a subset of its tier (1 test(s) deselected by -k 'on'): cases outside "
        "it are not compared",
        "verdict: no regression (2 cases compared; timings: not compared)"])
