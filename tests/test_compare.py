"""Verdicts: each of the five, thresholds, significance on raw samples, busy rounds, environments, output."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from kvperf.errors import BadInputError, UsageError
from kvperf.gate.baseline import Baseline, baseline_from_json
from kvperf.gate.compare import compare, parse_thresholds
from kvperf.gate.env import Environment
from kvperf.gate.render import render_markdown, render_table
from kvperf.gate.stats import median, ratio_interval

ENV = Environment(cpu_model="Test CPU", cpu_count=2, torch_threads=1, machine="x86_64", system="Linux",
                  python_version="3.11", torch_version="2.13.0+cpu", transformers_version="5.23.0",
                  device_type="cpu", git_commit="abc", git_dirty=False)
CASE = "test_matrix[cache=on-bs=1-prompt=8-new=4-fp32]"


def info(e2e: list[float], *, flops: float = 1e6, kv: int = 4096, peak: int = 10_000,
         wait: list[float] | None = None) -> dict[str, Any]:
    """A case's extra_info: e2e samples, and the other timings derived from them (new=4 tokens)."""
    return {
        "kvperf_schema": 1, "model": "tiny-gpt2", "e2e_s": median(e2e), "e2e_s_samples": e2e,
        "ttft_s_samples": [0.001] * len(e2e), "ttft_s": 0.001,
        "tpot_s_samples": [(t - 0.001) / 3 for t in e2e], "tpot_s": (median(e2e) - 0.001) / 3,
        "tokens_per_s_samples": [4 / t for t in e2e], "tokens_per_s": 4 / median(e2e),
        # thread CPU time: what the rounds cost without the waiting (here the quiet rounds' cost)
        "e2e_cpu_s_samples": [0.01] * len(e2e), "ttft_cpu_s_samples": [0.001] * len(e2e),
        "tpot_cpu_s_samples": [0.003] * len(e2e),
        "flops_per_token": flops, "kv_cache_bytes": kv, "peak_memory_bytes": peak, "generated_tokens": 4,
        "cpu_wait_samples": wait if wait is not None else [0.0] * len(e2e),
    }


def result_json(cases: dict[str, dict[str, Any]], env: Environment = ENV) -> dict[str, Any]:
    """pytest-benchmark's JSON layout with kvperf's additions."""
    return {"machine_info": {"node": "test", "kvperf": env.to_json()}, "commit_info": {},
            "benchmarks": [{"name": name, "fullname": f"bench.py::{name}", "group": "matrix", "params": {},
                            "stats": {"median": i["e2e_s"], "rounds": len(i["e2e_s_samples"])}, "extra_info": i}
                           for name, i in cases.items()],
            "datetime": "2026-01-01T00:00:00", "version": "5.3.1", "kvperf": {"schema": 1}}


def run(cases: dict[str, dict[str, Any]], env: Environment = ENV, source: str = "run") -> Baseline:
    return baseline_from_json(result_json(cases, env), source)


BASE = [0.0100, 0.0102, 0.0099, 0.0101, 0.0100]


def verdicts(comparison, metric: str) -> list[str]:
    return [v.verdict for v in comparison.verdicts if v.metric == metric]


def test_a_clear_slowdown_is_regressed_with_its_interval():
    slow = [t * 1.20 for t in BASE]
    comparison = compare(run({CASE: info(BASE)}), run({CASE: info(slow)}))
    e2e = next(v for v in comparison.verdicts if v.metric == "e2e")
    assert e2e.verdict == "regressed"
    assert e2e.change == pytest.approx(0.20)
    assert 1.05 < e2e.ci_low <= 1.20 <= e2e.ci_high
    assert verdicts(comparison, "tokens_per_s") == ["regressed"]  # fewer tokens/s is worse
    assert verdicts(comparison, "ttft") == ["unchanged"]
    assert comparison.exit_code == 1


def test_a_clear_speedup_is_improved():
    fast = [t * 0.8 for t in BASE]
    comparison = compare(run({CASE: info(BASE)}), run({CASE: info(fast)}))
    assert verdicts(comparison, "e2e") == ["improved"]
    assert verdicts(comparison, "tokens_per_s") == ["improved"]
    assert comparison.exit_code == 0


def test_a_noisy_equal_pair_is_unchanged():
    noisy_a = [0.010, 0.013, 0.009, 0.016, 0.011]
    noisy_b = [0.012, 0.009, 0.015, 0.010, 0.014]  # median 20% higher, but the samples overlap
    comparison = compare(run({CASE: info(noisy_a)}), run({CASE: info(noisy_b)}))
    e2e = next(v for v in comparison.verdicts if v.metric == "e2e")
    assert e2e.change == pytest.approx(0.012 / 0.011 - 1)
    assert e2e.verdict == "unchanged" and e2e.ci_low < 1.05 < e2e.ci_high
    assert comparison.exit_code == 0


def test_a_slowdown_below_its_threshold_is_not_a_regression():
    slow = [t * 1.20 for t in BASE]
    comparison = compare(run({CASE: info(BASE)}), run({CASE: info(slow)}),
                         thresholds={"e2e": 30, "tpot": 30, "tokens_per_s": 30})
    assert comparison.exit_code == 0
    assert verdicts(comparison, "e2e") == ["unchanged"]


def test_verdicts_are_deterministic():
    slow = [0.0104, 0.0110, 0.0099, 0.0120, 0.0101]
    first = compare(run({CASE: info(BASE)}), run({CASE: info(slow)}))
    second = compare(run({CASE: info(BASE)}), run({CASE: info(slow)}))
    assert first == second
    assert ratio_interval(BASE, slow, seed=1) == ratio_interval(BASE, slow, seed=1)


OTHER = "test_matrix[cache=off-bs=1-prompt=8-new=4-fp32]"


def test_files_with_no_case_in_common_are_bad_input_even_when_partial_is_allowed():
    for allow_partial in (False, True):
        with pytest.raises(BadInputError) as excinfo:
            compare(run({CASE: info(BASE)}, source="a.json"), run({OTHER: info(BASE)}, source="b.json"),
                    allow_partial=allow_partial)
        assert str(excinfo.value) == (
            f"a.json and b.json have no case in common (1 in the baseline, e.g. {CASE}; 1 in the current run, e.g. "
            f"{OTHER}): nothing can be compared; compare runs of the same benchmarks (same tier, -k selection and "
            "model)")


def test_missing_and_new_cases_are_refused_unless_a_partial_comparison_is_asked_for():
    third = "test_matrix[cache=static-bs=1-prompt=8-new=4-fp32]"
    base, cur = run({CASE: info(BASE), OTHER: info(BASE)}, source="a.json"), run({CASE: info(BASE), third: info(BASE)},
                                                                                 source="b.json")
    with pytest.raises(BadInputError) as excinfo:
        compare(base, cur)
    assert str(excinfo.value) == (
        f"b.json against a.json: 1 case(s) of the baseline are missing from the current run ({OTHER}); 1 case(s) of "
        f"the current run are not in the baseline ({third}): a renamed test, another -k selection or another model; "
        "run the same cases, or pass --allow-partial to compare only the 1 case(s) in common")
    with pytest.raises(BadInputError, match="or pass --kvperf-allow-partial to compare only"):
        compare(base, cur, flag_prefix="--kvperf-")
    partial = compare(base, cur, allow_partial=True)
    by_case = {(v.case, v.verdict) for v in partial.verdicts if v.verdict in ("new", "missing")}
    assert by_case == {(OTHER, "missing"), (third, "new")}
    assert partial.exit_code == 0 and partial.case_counts() == {"compared": 1, "missing": 1, "new": 1}
    assert partial.notes[0] == (f"MISSING: 1 case(s) of the baseline are not in the current run and were not "
                                f"compared (--allow-partial): {OTHER}")
    table = render_table(partial)
    assert "case only in the baseline" in table and "case only in the current run" in table
    assert table.splitlines()[-1] == ("verdict: no regression (1 case compared, 1 missing, 1 new; timings: 4 of 4 "
                                      "tested)")


def test_gated_timings_that_were_all_too_noisy_to_test_are_not_a_pass():
    busy = dict(wait=[0.5] * 5)  # every round waited for a core half of the time
    cases = {CASE: info(BASE, **busy), OTHER: info(BASE, **busy)}
    gated = compare(run(cases), run(cases))
    assert gated.timing_counts() == {"total": 8, "tested": 0, "noisy": 8, "no_samples": 0}
    assert gated.outcome == "untested" and gated.exit_code == 8
    assert render_table(gated).splitlines()[-1] == (
        "verdict: NOT TESTED: timings were gated and none could be tested (2 cases compared; timings: 0 of 8 "
        "tested, 8 too noisy); rerun on a quieter machine, or pass --timings skip to gate only the deterministic "
        "metrics")
    assert render_markdown(gated).startswith("### kvperf: ⚠️ Timings not tested: not a pass\n")
    assert gated.to_json()["outcome"] == "untested" and gated.to_json()["exit_code"] == 8
    # A regression stays a regression (exit 1) however noisy the timings.
    flops = compare(run(cases), run({CASE: info(BASE, flops=2e6, **busy), OTHER: info(BASE, **busy)}))
    assert flops.exit_code == 1
    # Timings compared only where possible (auto) or not at all (skip): the deterministic metrics decide.
    auto = compare(run(cases), run(cases), timings="auto")
    assert auto.exit_code == 0
    assert render_table(auto).splitlines()[-1] == ("verdict: no regression (2 cases compared; timings: 0 of 8 "
                                                   "tested, 8 too noisy)")
    skip = compare(run(cases), run(cases), timings="skip")
    assert skip.exit_code == 0
    assert render_table(skip).splitlines()[-1] == "verdict: no regression (2 cases compared; timings: not compared)"


def test_one_tested_timing_is_enough_and_the_verdict_line_says_how_many():
    cases = {CASE: info(BASE), OTHER: info(BASE, wait=[0.5] * 5)}
    comparison = compare(run(cases), run(cases))
    assert comparison.exit_code == 0
    assert render_table(comparison).splitlines()[-1] == ("verdict: no regression (2 cases compared; timings: 4 of 8 "
                                                         "tested, 4 too noisy)")
    old = result_json({CASE: info(BASE)})  # written by a kvperf that kept no raw samples
    old["benchmarks"][0]["extra_info"] = {k: v for k, v in info(BASE).items() if not k.endswith("_samples")}
    no_samples = compare(baseline_from_json(old, "old.json"), baseline_from_json(old, "old.json"))
    assert no_samples.exit_code == 8
    assert "timings: 0 of 4 tested, 4 without raw samples" in render_table(no_samples)


def test_a_file_saved_from_a_subset_of_its_tier_is_labelled():
    data = result_json({CASE: info(BASE)})
    data.update(kvperf_subset=True, kvperf_selection={"narrowed_by": ["1 test(s) deselected by -k 'on'",
                                                                      "--kvperf-model 'distilgpt2'"]})
    comparison = compare(baseline_from_json(data, "quick.json"), run({CASE: info(BASE)}))
    assert comparison.notes == ("the baseline file was saved from a subset of its tier (1 test(s) deselected by -k "
                                "'on'; --kvperf-model 'distilgpt2'): cases outside it are not compared",)
    assert "note: the baseline file was saved from a subset of its tier" in render_table(comparison)
    data["kvperf_selection"] = None  # a subset that does not say how
    assert compare(run({CASE: info(BASE)}), baseline_from_json(data, "cur.json")).notes == (
        "the current file was saved from a subset of its tier (its options are not recorded): cases outside it are "
        "not compared",)
    data["kvperf_subset"] = "yes"
    with pytest.raises(BadInputError, match=r"^quick\.json: 'kvperf_subset' is 'yes', not true or false: "):
        baseline_from_json(data, "quick.json")


def test_busy_rounds_are_left_out_and_too_few_quiet_rounds_are_flagged_noisy():
    busy = [0.0100, 0.0101, 0.0500, 0.0600, 0.0700]  # three rounds slowed by another process
    comparison = compare(run({CASE: info(BASE)}), run({CASE: info(busy, wait=[0.0, 0.0, 0.4, 0.5, 0.6])}))
    e2e = next(v for v in comparison.verdicts if v.metric == "e2e")
    assert e2e.verdict == "unchanged" and e2e.noisy
    assert e2e.note == "noisy: quiet rounds 5/5 baseline, 2/5 current (need 3)"
    assert comparison.counts()["noisy"] == 4
    two_busy = [0.0100, 0.0101, 0.0099, 0.0600, 0.0700]
    comparison = compare(run({CASE: info(BASE)}), run({CASE: info(two_busy, wait=[0, 0, 0, 0.5, 0.6])}))
    e2e = next(v for v in comparison.verdicts if v.metric == "e2e")
    assert e2e.verdict == "unchanged" and not e2e.noisy and e2e.note == "2 busy round(s) left out"
    # Without the contention record the same samples are a regression.
    comparison = compare(run({CASE: info(BASE)}), run({CASE: info([0.0600, 0.0700, 0.0650, 0.06, 0.07])}))
    assert verdicts(comparison, "e2e") == ["regressed"]


def test_cpu_time_metrics_keep_the_rounds_that_waited():
    """Waiting for a core adds wall time, not CPU time: no round is left out, and a CPU-time
    slowdown in rounds that waited is still a regression."""
    busy = [0.0100, 0.0101, 0.0500, 0.0600, 0.0700]
    slower = {**info(busy, wait=[0.0, 0.0, 0.4, 0.5, 0.6]), "tpot_cpu_s_samples": [0.0036] * 5}
    # information by default: not compared unless the user sets a threshold
    assert verdicts(compare(run({CASE: info(BASE)}), run({CASE: slower})), "tpot_cpu") == []
    comparison = compare(run({CASE: info(BASE)}), run({CASE: slower}),
                         thresholds={"tpot_cpu": 5, "e2e_cpu": 5})
    tpot_cpu = next(v for v in comparison.verdicts if v.metric == "tpot_cpu")
    assert tpot_cpu.verdict == "regressed" and not tpot_cpu.noisy and tpot_cpu.note == ""
    assert verdicts(comparison, "e2e_cpu") == ["unchanged"]
    assert verdicts(comparison, "ttft_cpu") == []


def test_energy_is_compared_on_request_and_never_from_a_null():
    """Energy per round (a GPU counter or RAPL) gates only with a threshold; where a side has no counter
    (null samples) it is not tested, and says so."""
    joules = {**info(BASE), "energy_j_samples": [2.0, 2.1, 1.9, 2.0, 2.0], "energy_j": 2.0}
    more = {**info(BASE), "energy_j_samples": [3.0, 3.1, 2.9, 3.0, 3.0], "energy_j": 3.0}
    assert verdicts(compare(run({CASE: joules}), run({CASE: more})), "energy") == []
    assert verdicts(compare(run({CASE: joules}), run({CASE: more}), thresholds={"energy": 10}),
                    "energy") == ["regressed"]
    unread = {**info(BASE), "energy_j_samples": [None] * 5, "energy_j": None}
    (verdict,) = [v for v in compare(run({CASE: joules}), run({CASE: unread}), thresholds={"energy": 10}).verdicts
                  if v.metric == "energy"]
    assert verdict.verdict == "unchanged" and verdict.note == "no raw samples: not tested"


def test_deterministic_metrics_are_compared_exactly():
    comparison = compare(run({CASE: info(BASE, flops=1_000_000, kv=4096, peak=10_000)}),
                         run({CASE: info(BASE, flops=1_000_001, kv=2048, peak=10_000)}))
    assert verdicts(comparison, "flops_per_token") == ["regressed"]
    assert verdicts(comparison, "kv_bytes") == ["improved"]
    assert verdicts(comparison, "peak_memory") == ["unchanged"]
    relaxed = compare(run({CASE: info(BASE, flops=1_000_000)}), run({CASE: info(BASE, flops=1_010_000)}),
                      thresholds={"flops_per_token": 2})
    assert verdicts(relaxed, "flops_per_token") == ["unchanged"]


def test_a_metric_absent_from_an_older_baseline_is_new():
    old = info(BASE)
    del old["flops_per_token"]
    comparison = compare(run({CASE: old}), run({CASE: info(BASE)}))
    assert verdicts(comparison, "flops_per_token") == ["new"]


@pytest.mark.parametrize(("items", "expected"), [
    ([], {}),
    (["tpot=3"], {"tpot": 3.0}),
    (["e2e=7.5%", "flops_per_token=0"], {"e2e": 7.5, "flops_per_token": 0.0}),
])
def test_thresholds_parse(items, expected):
    assert parse_thresholds(items) == expected


@pytest.mark.parametrize(("item", "message"), [
    ("tpot", "bad threshold 'tpot': write METRIC=PCT with METRIC one of e2e, ttft, tpot, tokens_per_s, "
             "e2e_cpu, ttft_cpu, tpot_cpu, energy, peak_memory, kv_bytes, flops_per_token, e.g. tpot=5"),
    ("latency=5", "bad threshold 'latency=5': write METRIC=PCT with METRIC one of e2e, ttft, tpot, "
                  "tokens_per_s, e2e_cpu, ttft_cpu, tpot_cpu, energy, peak_memory, kv_bytes, flops_per_token, "
                  "e.g. tpot=5"),
    ("tpot=fast", "bad threshold 'tpot=fast': 'fast' is not a percentage, e.g. tpot=5"),
    ("tpot=-1", "bad threshold 'tpot=-1': use a percentage in [0, 1000), e.g. tpot=5"),
])
def test_bad_thresholds_name_the_item(item, message):
    with pytest.raises(UsageError) as excinfo:
        parse_thresholds([item])
    assert str(excinfo.value) == message


def test_a_software_mismatch_is_bad_input_unless_allowed():
    newer = replace(ENV, torch_version="2.14.0+cpu")
    with pytest.raises(BadInputError) as excinfo:
        compare(run({CASE: info(BASE)}), run({CASE: info(BASE)}, env=newer))
    assert str(excinfo.value) == ("environments differ in torch_version ('2.13.0+cpu' -> '2.14.0+cpu'): compare "
                                  "runs of the same software and device, or pass --allow-env-mismatch to compare "
                                  "anyway")
    allowed = compare(run({CASE: info(BASE)}), run({CASE: info(BASE)}, env=newer), allow_env_mismatch=True)
    assert allowed.timings_compared and allowed.exit_code == 0
    assert allowed.notes == ("environments differ, compared anyway (--allow-env-mismatch): torch_version "
                             "('2.13.0+cpu' -> '2.14.0+cpu')",)


def test_another_machine_gates_timings_only_when_asked():
    runner = replace(ENV, cpu_model="Other CPU", cpu_count=4, git_commit="def")
    base, cur = run({CASE: info(BASE)}), run({CASE: info([t * 2 for t in BASE], flops=2e6)}, env=runner)
    with pytest.raises(BadInputError, match=r"^timing environments differ in cpu_model \('Test CPU' -> 'Other "
                                            r"CPU'\); cpu_count \(2 -> 4\): timings are gated only between runs of one "
                                            r"machine"):
        compare(base, cur)
    auto = compare(base, cur, timings="auto")
    assert not auto.timings_compared
    assert {v.metric for v in auto.verdicts} == {"kv_bytes", "flops_per_token"}
    assert verdicts(auto, "flops_per_token") == ["regressed"]  # deterministic metrics still gate
    assert auto.notes[-1].startswith("timings and peak memory not compared: the machines differ in cpu_model")
    assert not compare(base, cur, timings="skip").timings_compared
    assert verdicts(compare(base, cur, allow_env_mismatch=True), "e2e") == ["regressed"]
    # The git commit is what a comparison is about: it never counts as a mismatch.
    assert compare(base, run({CASE: info(BASE)}, env=replace(ENV, git_commit="fff", git_dirty=True))).exit_code == 0


def test_markdown_and_json_output():
    comparison = compare(run({CASE: info(BASE)}, source="base.json"),
                         run({CASE: info([t * 1.2 for t in BASE], flops=2e6)}, source="pr.json"))
    md = render_markdown(comparison)
    assert md.startswith("### kvperf: ❌ Performance regression\n")
    assert "Baseline `base.json`, current `pr.json`." in md
    assert "| case | metric | verdict | baseline | current | change | 95% CI of change | note |" in md
    assert f"| `{CASE}` | FLOPs/token | ❌ regressed | 1,000,000 | 2,000,000 | +100.0% |  | threshold ±0% |" in md
    assert "<details><summary>All verdicts</summary>" in md
    data = json.loads(json.dumps(comparison.to_json()))
    assert data["exit_code"] == 1 and data["counts"]["regressed"] == 4
    e2e = next(v for v in data["verdicts"] if v["metric"] == "e2e")
    assert e2e["verdict"] == "regressed" and e2e["baseline"] == pytest.approx(0.0100)
    clean = compare(run({CASE: info(BASE)}), run({CASE: info(BASE)}))
    assert render_markdown(clean).startswith("### kvperf: ✅ No performance regression\n")
    assert render_table(clean).splitlines()[-1] == "verdict: no regression (1 case compared; timings: 4 of 4 tested)"


# --- library versions and the output fingerprint ------------------------------------------------------------

HASH_A, HASH_B = "a" * 64, "b" * 64


def hashed(output_sha256: str, distinct: int = 1) -> dict[str, Any]:
    return {**info(BASE), "output_sha256": output_sha256, "output_sha256_distinct": distinct}


def test_two_environments_name_the_library_versions_that_differ_at_the_top():
    older = replace(ENV, transformers_version="4.57.6", python_version="3.10")
    comparison = compare(run({CASE: info(BASE)}, env=older, source="old.json"), run({CASE: info(BASE)}),
                         allow_env_mismatch=True)
    assert comparison.version_changes == ("Python 3.10 -> 3.11", "transformers 4.57.6 -> 5.23.0")
    lines = render_table(comparison).splitlines()
    assert lines[:2] == ["kvperf compare: old.json -> run", "versions differ: Python 3.10 -> 3.11, transformers "
                                                            "4.57.6 -> 5.23.0"]
    # Markdown escapes the arrow's ">" (it could open HTML); CommonMark shows it as itself.
    assert r"**Versions differ:** Python 3.10 -\> 3.11, transformers 4.57.6 -\> 5.23.0." in render_markdown(comparison)
    assert comparison.to_json()["version_changes"] == ["Python 3.10 -> 3.11", "transformers 4.57.6 -> 5.23.0"]
    same = compare(run({CASE: info(BASE)}), run({CASE: info(BASE)}))
    assert same.version_changes == () and not render_table(same).splitlines()[1].startswith("versions differ")


def test_a_changed_output_is_a_note_not_a_regression():
    comparison = compare(run({CASE: hashed(HASH_A), OTHER: hashed(HASH_A)}),
                         run({CASE: hashed(HASH_B), OTHER: hashed(HASH_A)}))
    assert comparison.exit_code == 0 and not comparison.regressions
    assert [(c.case, c.baseline_sha256, c.current_sha256) for c in comparison.output_changes] == [
        (CASE, HASH_A, HASH_B)]
    assert comparison.notes == (f"the output changed in 1 of 2 case(s): the generated token ids differ from the "
                                f"baseline's ({CASE}); a note, not a regression (kvperf compare and kvperf ab fail "
                                "on it with --gate-output)",)
    assert "note: the output changed in 1 of 2 case(s)" in render_table(comparison)
    assert comparison.to_json()["output_changes"] == [{"case": CASE, "model": "tiny-gpt2", "baseline_sha256": HASH_A,
                                                       "current_sha256": HASH_B}]


def test_a_changed_output_is_a_regression_when_gated():
    comparison = compare(run({CASE: hashed(HASH_A)}), run({CASE: hashed(HASH_B)}), gate_output=True)
    assert comparison.exit_code == 1
    [verdict] = comparison.regressions
    assert (verdict.case, verdict.metric, verdict.verdict) == (CASE, "output", "regressed")
    assert verdict.note == "generated token ids changed (sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb)"
    assert f"{CASE}  output" in render_table(comparison)
    assert compare(run({CASE: hashed(HASH_A)}), run({CASE: hashed(HASH_A)}), gate_output=True).exit_code == 0


def test_an_output_that_varied_between_rounds_or_was_not_recorded_is_not_compared():
    varied = compare(run({CASE: hashed(HASH_A)}), run({CASE: hashed(HASH_B, distinct=2)}), gate_output=True)
    assert varied.exit_code == 0 and varied.output_changes == ()
    assert varied.notes == (f"the output varied between the timed rounds of 1 case(s) of the current run (not "
                            f"deterministic there), so it was not compared: {CASE}",)
    older_kvperf = compare(run({CASE: info(BASE)}), run({CASE: hashed(HASH_B)}), gate_output=True)
    assert older_kvperf.exit_code == 0 and older_kvperf.output_changes == () and older_kvperf.notes == ()


def test_report_mode_shows_slower_timings_but_fails_only_on_deterministic_metrics():
    slow = run({CASE: info([t * 1.3 for t in BASE])})
    reported = compare(run({CASE: info(BASE)}), slow, timings="report")
    assert verdicts(reported, "e2e") == ["regressed"] and reported.regressions == []
    assert [v.metric for v in reported.reported_slowdowns] == ["e2e", "tpot", "tokens_per_s"]
    assert reported.exit_code == 0 and not reported.timings_required
    assert reported.notes[-1].startswith("timings reported, not gated (--timings report")
    assert "slower" in render_table(reported) and "🐢 slower (not gated)" in render_markdown(reported)
    # A deterministic metric still fails it.
    more_work = compare(run({CASE: info(BASE)}), run({CASE: info(BASE, flops=2e6)}), timings="report")
    assert [v.metric for v in more_work.regressions] == ["flops_per_token"] and more_work.exit_code == 1


def test_the_same_hardware_on_another_machine_compares_peak_memory_but_not_timings():
    """Two VMs of one CPU model and size are not one machine: their timings drift apart."""
    here, there = replace(ENV, machine_id="aaaa"), replace(ENV, machine_id="bbbb")
    base = run({CASE: info(BASE, peak=10_000)}, env=here)
    cur = run({CASE: info([t * 2 for t in BASE], peak=12_000)}, env=there)
    with pytest.raises(BadInputError, match=r"^timing environments differ in machine_id \(another machine\): "):
        compare(base, cur, timings="gate")
    for mode in ("report", "auto"):
        comparison = compare(base, cur, timings=mode)  # type: ignore[arg-type]
        assert not comparison.timings_compared
        assert {v.metric for v in comparison.verdicts} == {"peak_memory", "kv_bytes", "flops_per_token"}
        assert [v.metric for v in comparison.regressions] == ["peak_memory"]
        assert comparison.notes[-1] == "timings not compared: the machines differ in machine_id (another machine)"
    old = run({CASE: info(BASE)}, env=ENV)  # a baseline made before kvperf recorded the machine
    assert compare(old, run({CASE: info(BASE)}, env=here), timings="report").notes[-1] == (
        "timings not compared: the machines differ in machine_id (not recorded in the baseline)")


def test_the_bandwidth_fraction_is_shown_beside_the_verdicts_and_never_gates():
    # a 20% slower run with a lower bandwidth fraction, timings reported: the fraction is information only
    slow = [t * 1.20 for t in BASE]
    base = {**info(BASE), "bandwidth_fraction": 0.25}
    cur = {**info(slow), "bandwidth_fraction": 0.20}
    other = "test_matrix[cache=off-bs=1-prompt=8-new=4-fp32]"
    comparison = compare(run({CASE: base, other: info(BASE)}), run({CASE: cur, other: info(BASE)}), timings="report")
    assert [(b.case, b.baseline, b.current) for b in comparison.bandwidth_fractions] == [(CASE, 0.25, 0.20)]
    assert "bandwidth_fraction" not in {v.metric for v in comparison.verdicts}
    assert comparison.exit_code == 0
    text = render_table(comparison)
    assert ("bandwidth fraction of the peak (information, never gates; kvperf report shows each peak):" in text)
    row = next(line for line in text.splitlines() if line.startswith(f"  {CASE}"))
    assert row.split() == [CASE, "25.0%", "20.0%", "-20.0%"]
    assert f"| `{CASE}` | 25.0% | 20.0% | -20.0% |" in render_markdown(comparison)
    assert comparison.to_json()["bandwidth_fractions"] == [
        {"case": CASE, "model": "tiny-gpt2", "baseline": 0.25, "current": 0.20}]
