"""The first hour: a fresh clone compares against the committed baseline without a false regression,
saves its own without a refusal, and timings gate only against a baseline of the same machine."""

from __future__ import annotations

import pytest

from tests.test_plugin_baseline import BENCH_FILE, TINY


def test_a_fresh_clone_on_another_machine_of_the_same_kind(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makepyfile(test_bench=BENCH_FILE)
    # The committed baseline, made on the developer's VM...
    monkeypatch.setenv("KVPERF_MACHINE_ID", "developer-vm")
    pytester.runpytest(*TINY, "--kvperf-save-baseline").assert_outcomes(passed=2)
    (committed,) = (pytester.path / "baselines").glob("*/quick.json")

    # ...and a fresh clone on another VM with the same CPU model and count: another environment key.
    monkeypatch.setenv("KVPERF_MACHINE_ID", "fresh-clone-vm")
    result = pytester.runpytest(*TINY, "--kvperf-compare")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "note: timings not compared: the machines differ in machine_id (another machine)",
        f"kvperf: no baseline of this machine (*/quick.json); compared with {committed} (same torch, transformers and "
        "device, another machine)",
        f"kvperf: environment key * (this run), {committed.parent.name} (baseline {committed})",
        "verdict: no regression (2 cases compared; timings: not compared)",
    ])
    # The verdict comes last, after pytest-benchmark's tables, just above pytest's own summary line.
    assert result.stdout.lines[-2].startswith("verdict: no regression") and "passed" in result.stdout.lines[-1]

    # Timings gated against another machine's baseline are refused before the run, with the fix.
    result = pytester.runpytest(*TINY, "--kvperf-compare", "--kvperf-timings=gate")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {committed}: baseline environment differs in machine_id (another machine): "
                                 "timings are gated only against a baseline of this machine*"])

    # Saving is not refused: the fresh clone's baseline goes under its own key.
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline")
    result.assert_outcomes(passed=2)
    (own,) = set((pytester.path / "baselines").glob("*/quick.json")) - {committed}
    result.stdout.fnmatch_lines([f"kvperf: saved baseline {own}"])

    # From then on, timings of this machine are compared and reported, not gated, by default.
    result = pytester.runpytest(*TINY, "--kvperf-compare")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"kvperf: environment key {own.parent.name} (this run), {own.parent.name} "
                                 f"(baseline {own})",
                                 "verdict: no regression (2 cases compared; timings (reported): *"])


def test_no_baseline_of_this_software_names_the_ones_there_are(pytester: pytest.Pytester):
    import json

    from kvperf.gate.env import current_environment
    from tests.test_compare import BASE, CASE, info, result_json

    pytester.makepyfile(test_bench=BENCH_FILE)
    env = current_environment("cpu", root=pytester.path, torch_threads=1)
    older = result_json({CASE: info(BASE)})
    # A release no supported environment runs, so that the baseline is of other software on every release.
    older["machine_info"]["kvperf"] = dict(env.to_json(), transformers_version="4.0.0", machine_id="elsewhere")
    path = pytester.path / "baselines" / "cpu-old" / "quick.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(older))
    result = pytester.runpytest(*TINY, "--kvperf-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: no baseline for this environment (*), and the saved ones were made with other software: {path} "
        f"(transformers_version ('4.0.0' -> {env.transformers_version!r})): save one with `pytest benchmarks "
        "--kvperf-save-baseline`, install the release it was made with to compare with it (`pip install "
        '"transformers==4.0.0"`), or pass --kvperf-compare=FILE --kvperf-allow-env-mismatch'])
