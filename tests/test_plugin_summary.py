"""kvperf's own terminal summary: a compact table per experiment in the README's order, pytest-benchmark's
wide tables left out unless asked for, its JSON untouched, and the verdict last (pytester, tiny cases)."""

from __future__ import annotations

import json

import pytest

from kvperf.report.physics import contended
from kvperf.report.summary import summary_tables
from kvperf.tiers import ordered_experiments
from tests.test_plugin_baseline import TINY

BENCH_FILE = """
import pytest
from kvperf import GenerationSpec

@pytest.mark.parametrize("cache", ["on", "off"])
def test_case(kvperf_bench, cache):
    kvperf_bench(GenerationSpec(cache=cache, batch_size=1, prompt_len=8, new_tokens=4))

@pytest.mark.kvperf_experiment("first_token")
def test_first(kvperf_case, kvperf_bench):
    kvperf_bench(kvperf_case)
"""


def test_the_summary_replaces_pytest_benchmark_s_tables(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "--benchmark-json=out.json")
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    assert "Name (time in" not in out  # pytest-benchmark's table
    result.stdout.fnmatch_lines([
        "*kvperf summary*",
        "first_token (experiment 4): TTFT against TPOT [tiny-gpt2, tier quick]",
        "cache  bs  prompt  new    dtype  TTFT ms  TPOT ms  tok/s  peak MiB  KV MiB  vs off*",
        "*",
        "   on   1  *",
        "custom [[]tiny-gpt2, tier quick]",
        "*",
        "   on   1       8    4  float32  *x*",
        "  off   1       8    4  float32  *",
        "medians over the timed rounds*",
        "kvperf: every round is in out.json: `kvperf report out.json` for the experiments' tables and plots",
    ])
    summary = out.split("kvperf summary", 1)[1].splitlines()[1:-1]
    assert max(len(line) for line in summary) <= 100  # compact: no 218-character rows
    data = json.loads((pytester.path / "out.json").read_text())
    assert len(data["benchmarks"]) == 2 + len([b for b in data["benchmarks"] if b["group"] == "first_token"])

    result = pytester.runpytest(*TINY, "--kvperf-benchmark-table", "-k", "test_case")
    result.stdout.fnmatch_lines(["*Name (time in ms)*", "*kvperf summary*",
                                 "kvperf: add --benchmark-json=FILE to keep every round*"])


def test_the_verdict_comes_after_the_summary(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    pytester.runpytest(*TINY, "-k", "test_case", "--kvperf-save-baseline=store").assert_outcomes(passed=2)
    (path,) = (pytester.path / "store").glob("*/quick.json")
    result = pytester.runpytest(*TINY, "-k", "test_case", f"--kvperf-compare={path}", "--kvperf-timings=skip")
    result.stdout.fnmatch_lines(["*kvperf summary*", "custom [[]*", "*kvperf baseline*",
                                 "verdict: no regression (2 cases compared; timings: not compared)"])
    assert result.stdout.lines[-2].startswith("verdict: ")


def _case(experiment: str, cache: str, e2e: float, wait: float = 0.0) -> dict[str, object]:
    return {"experiment": experiment, "cache": cache, "batch_size": 1, "prompt_len": 8, "new_tokens": 4,
            "dtype": "float32", "ttft_s": 0.001, "tpot_s": 0.002, "e2e_s": e2e, "tokens_per_s": 4 / e2e,
            "peak_memory_bytes": 2**20, "kv_cache_bytes": 2**19, "cpu_wait_samples": [wait] * 3,
            "model": "tiny-gpt2", "tier": "quick"}


def test_tables_follow_the_experiment_order_and_flag_contended_cases():
    assert ordered_experiments(["custom", "length", "matrix", "zeta", "first_token"]) == [
        "matrix", "length", "first_token", "custom", "zeta"]
    tables = summary_tables([_case("length", "off", 0.03), _case("length", "on", 0.01, wait=0.4),
                             _case("matrix", "on", 0.01)])
    assert [t.title.split()[0] for t in tables] == ["matrix:", "length"]
    length = tables[1]
    assert length.headers[-2:] == ("vs off", "wait")
    assert length.rows[0][-2:] == ("3.00x", "! 40%") and length.rows[1][-2:] == ("", "")
    assert length.notes == ("! 1 case(s) waited for a core (median cpu_wait above 5%): another process slowed them",)
    assert "wait" not in tables[0].headers  # a quiet experiment has no such column
    assert contended(_case("x", "on", 1.0, wait=0.05)) is None and contended({"cache": "on"}) is None
