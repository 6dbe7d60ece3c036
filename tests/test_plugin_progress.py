"""Progress per case and per round with an ETA, and the per-case time budget (pytester, tiny cases)."""

from __future__ import annotations

import json

import pytest

from kvperf.measure.progress import SessionProgress, format_duration, positions, rounds_within
from tests.test_plugin_baseline import BENCH_FILE, TINY


def test_progress_lines_per_case_and_round_with_an_eta(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "--kvperf-progress=all")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "kvperf [[]1/2] test_case[[]on]: round 1/2 took *; about * left in this case",
        "kvperf [[]1/2] test_case[[]on]: done in *; about * left for 1 case(s) (mean of the 1 so far)",
        "kvperf [[]2/2] test_case[[]off]: round 1/2 took *",
        "kvperf [[]2/2] test_case[[]off]: done in *",
    ])
    # auto (the default) stays quiet for cases whose calls are fast
    quiet = pytester.runpytest(*TINY)
    assert "kvperf [" not in quiet.stdout.str()


def test_a_case_budget_lowers_the_rounds_and_says_so(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "--kvperf-case-budget-s=0.001", "--benchmark-json=out.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "kvperf [[]1/2] test_case[[]on]: one call takes *: 1 of 2 timed round(s) fit in --kvperf-case-budget-s 0.001",
        "kvperf: 2 case(s) ran fewer rounds to fit --kvperf-case-budget-s 0.001 (rounds run of the tier's, one "
        "call): test_case[[]on] 1/2 (*), test_case[[]off] 1/2 (*)",
    ])
    infos = [b["extra_info"] for b in json.loads((pytester.path / "out.json").read_text())["benchmarks"]]
    assert [(i["rounds"], i["rounds_planned"], len(i["e2e_s_samples"])) for i in infos] == [(1, 2, 1)] * 2
    # a budget that every call fits in changes nothing
    result = pytester.runpytest(*TINY, "--kvperf-case-budget-s=600", "--benchmark-json=out.json")
    assert "fewer rounds" not in result.stdout.str()
    infos = [b["extra_info"] for b in json.loads((pytester.path / "out.json").read_text())["benchmarks"]]
    assert [(i["rounds"], "rounds_planned" in i) for i in infos] == [(2, False)] * 2
    bad = pytester.runpytest(*TINY, "--kvperf-case-budget-s=0")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: --kvperf-case-budget-s must be above 0 seconds, got 0: give the time one case "
                              "may take, e.g. 120"])


def test_rounds_within_a_budget():
    assert rounds_within(100, 10, 5, 0) == 5  # 9 calls fit after the first: 5 rounds and 2 untimed calls
    assert rounds_within(60, 10, 5, 1) == 2  # 5 calls left: a warm-up, 2 untimed, 2 rounds
    assert rounds_within(5, 10, 3, 0) == 1  # never fewer than one
    assert rounds_within(5, 0, 3, 0) == 3
    assert [format_duration(s) for s in (4.26, 42, 210, 7560)] == ["4.3 s", "42 s", "3.5 min", "2.1 h"]


def test_the_session_eta_is_the_mean_case_time_times_the_cases_left():
    lines: list[str] = []
    session = SessionProgress(total_cases=4, write=lines.append, mode="all", case_times_s=[10.0, 30.0])
    assert session.eta() == "; about 40 s left for 2 case(s) (mean of the 2 so far)"
    assert SessionProgress(total_cases=2, write=lines.append).eta() == ""


def test_a_spec_longer_than_the_model_fails_in_one_line(pytester: pytest.Pytester):
    pytester.makepyfile(test_long="""
from kvperf import GenerationSpec

def test_long_prompt(kvperf_bench):
    kvperf_bench(GenerationSpec(cache="static", batch_size=8, prompt_len=2048, new_tokens=256))
""")
    result = pytester.runpytest(*TINY)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_long_prompt*", "cache=static-bs=8-prompt=2048-new=256 reaches 2304 positions "
                                 "(prompt 2048 + 256 new tokens) but model 'tiny-gpt2' has 512: give a shorter "
                                 "prompt_len or new_tokens, or a model with more positions (--kvperf-model)"])
    assert "Traceback" not in result.stdout.str() and "kvperf/measure/harness.py" not in result.stdout.str()


def test_the_cpu_tier_runs_the_full_tier_s_sizes_on_a_model_that_fits_them():
    from kvperf.models import load_config, max_positions
    from kvperf.tiers import EXPERIMENTS, get_tier

    cpu, full = get_tier("cpu"), get_tier("full")
    for experiment in EXPERIMENTS:
        assert cpu.specs(experiment) == full.specs(experiment)
    limit = max_positions(load_config(cpu.model))
    assert limit is not None and cpu.max_total_len() <= limit
    assert cpu.cpu_threads == 1 and cpu.model == "tiny-llama-gqa"


def test_the_run_is_estimated_before_it_starts_and_the_eta_scales_the_estimate(pytester: pytest.Pytester):
    pytester.makepyfile(test_first="""
import pytest

@pytest.mark.kvperf_experiment("length")
def test_length(kvperf_case, kvperf_bench):
    kvperf_bench(kvperf_case)
""")
    result = pytester.runpytest(*TINY, "--kvperf-progress=all")
    result.assert_outcomes(passed=10)
    # quick tier's length cases, float32: prompt 8, new 8..128, cache on and off; 0 warm-up + 2 rounds + 2 calls
    planned = sum(positions(1, 8, n, c) for n in (8, 16, 32, 64, 128) for c in ("on", "off")) * 4
    share = positions(1, 8, 128, "off") * 4 / planned
    result.stdout.fnmatch_lines([
        f"kvperf: 10 case(s), 40 generate calls, {planned / 1e6:.3g} M token positions through the model; the largest "
        f"case, test_length[[]cache=off-bs=1-prompt=8-new=128-fp32], is {share:.0%} of them; the time is estimated "
        "when the model is loaded",
        "kvperf: estimated * for 10 case(s): 40 generate calls, * GFLOP by formula, at the rates of tiny-gpt2 measured "
        "just now in * (float32: * ms a step, * ms untimed); the ETA refines as cases end",
        "kvperf [[]1/10] test_length[[]cache=on-*]: done in *; about * left for 9 case(s) (their estimate, *, x*: the "
        "1 so far took *x theirs)"])


def test_positions_through_the_model():
    assert positions(2, 10, 4, "on") == 2 * (10 + 3)  # the prompt once, then one position a step
    assert positions(2, 10, 4, "static") == 26
    assert positions(2, 10, 4, "off") == 2 * (10 + 11 + 12 + 13)  # the whole prefix at every step


def test_the_session_eta_is_the_estimate_left_scaled_by_the_cases_so_far():
    lines: list[str] = []
    session = SessionProgress(total_cases=3, write=lines.append, case_times_s=[2.0], estimated_total_s=30.0,
                              estimated_done_s=10.0)
    assert session.eta() == ("; about 4.0 s left for 2 case(s) (their estimate, 20 s, x0.20: the 1 so far took "
                             "0.20x theirs)")


def test_the_case_eta_counts_the_estimated_untimed_calls():
    lines: list[str] = []
    case = SessionProgress(total_cases=1, write=lines.append, mode="all").case("test_x")
    case.plan(rounds=3, warmup_rounds=0, call_s=None)
    case.untimed_estimate_s = 10.0  # peak memory and FLOP count: 5 rounds' time here
    case.before_round()
    case._round_done(2.0)
    assert lines == ["kvperf [1/1] test_x: round 1/3 took 2.0 s; about 14 s left in this case"]
