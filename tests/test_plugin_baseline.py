"""Saving and comparing baselines from pytest, end to end in a pytester sandbox, on tiny cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--kvperf-rounds", "2", "--kvperf-warmup", "0", "--kvperf-dtypes", "float32", "-p", "no:cacheprovider"]

# Cases of its own rather than the tier's, so that the test does not change when the tiers do.
BENCH_FILE = """
import pytest
from kvperf import GenerationSpec

@pytest.mark.parametrize("cache", ["on", "off"])
def test_case(kvperf_bench, cache):
    kvperf_bench(GenerationSpec(cache=cache, batch_size=1, prompt_len=8, new_tokens=4))
"""


def saved(pytester: pytest.Pytester) -> Path:
    (path,) = (pytester.path / "baselines").glob("*/quick.json")
    return path


def test_save_compare_and_refuse_to_overwrite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline")
    result.assert_outcomes(passed=2)
    path = saved(pytester)
    result.stdout.fnmatch_lines([f"kvperf: saved baseline {path}"])
    data = json.loads(path.read_text())
    assert data["kvperf"] == {"schema": 1}
    env = data["machine_info"]["kvperf"]
    assert path.parent.name == env["key"] and env["device_type"] == "cpu" and env["torch_threads"] >= 1
    info = data["benchmarks"][0]["extra_info"]
    assert {"flops_per_token", "decode_flops_per_token", "cpu_wait_samples", "cpu_others_samples"} <= info.keys()

    # A second save is refused before anything runs, and the baseline is untouched.
    before = path.read_bytes()
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {path}: a baseline already exists: pass --kvperf-overwrite-baseline *"])
    assert path.read_bytes() == before
    pytester.runpytest(*TINY, "--kvperf-save-baseline", "--kvperf-overwrite-baseline").assert_outcomes(passed=2)

    # The same code compares clean on the deterministic metrics (timings of 2 rounds aren't tested here).
    result = pytester.runpytest(*TINY, "--kvperf-compare", "--kvperf-timings=skip")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*kvperf baseline*", "0 regressed, 0 improved, 6 unchanged, 0 new, 0 missing",
                                 "verdict: no regression (2 cases compared; timings: not compared)"])

    # A cache silently disabled under its cache=on label fails the session, through the FLOP count.
    monkeypatch.setenv("KVPERF_TEST_FORCE_CACHE_OFF", "1")
    result = pytester.runpytest(*TINY, "--kvperf-compare", "--kvperf-timings=skip")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_case?on?  FLOPs/token  regressed*",
                                 "verdict: REGRESSION (2 cases compared; timings: not compared)"])


def test_pytest_benchmark_compare_reads_a_saved_baseline(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    pytester.runpytest(*TINY, "--kvperf-save-baseline=store").assert_outcomes(passed=2)
    (path,) = (pytester.path / "store").glob("*/quick.json")
    out = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(path)], capture_output=True,
                         text=True, check=False, cwd=pytester.path)
    assert out.returncode == 0, out.stderr
    assert "test_case[on]" in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--kvperf-compare=nothere.json"], "ERROR: nothere.json: no such file: check the path*"),
    (["--kvperf-compare"], "ERROR: no baseline for this environment (*): save one first with `pytest benchmarks "
                           "--kvperf-save-baseline`, or pass --kvperf-compare=FILE"),
    (["--kvperf-compare=bad.json"], "ERROR: bad.json: truncated (line 1, column *"),
    (["--kvperf-compare=plain.json"], "ERROR: plain.json: not a kvperf baseline*"),
    (["--kvperf-compare=other.json", "--kvperf-timings=gate"],
     "ERROR: other.json: baseline environment differs in cpu_model ('Another CPU' -> *): timings are gated only "
     "against a baseline of this machine: use the baseline of this environment, --kvperf-timings report (gate the "
     "deterministic metrics, leave timings out), or --kvperf-allow-env-mismatch"),
    (["--kvperf-threshold", "tpot"], "ERROR: bad threshold 'tpot': write METRIC=PCT*"),
    (["--kvperf-save-baseline="], "ERROR: --kvperf-save-baseline= names no directory (it would save into the current "
                                  "one): give --kvperf-save-baseline=DIR, or no value for baselines/ in the project "
                                  "root"),
    (["--kvperf-compare="], "ERROR: --kvperf-compare= names no file: give --kvperf-compare=FILE, or no value for "
                            "the baseline of this environment"),
])
def test_bad_gate_options_are_usage_errors_before_anything_runs(pytester: pytest.Pytester, args, message):
    from tests.test_compare import BASE, CASE, ENV, info, result_json

    pytester.makepyfile(test_bench=BENCH_FILE)
    (pytester.path / "bad.json").write_text('{"benchmarks": [')
    plain = result_json({CASE: info(BASE)})
    del plain["kvperf"]
    (pytester.path / "plain.json").write_text(json.dumps(plain))
    other = result_json({CASE: info(BASE)})
    import torch
    import transformers

    other["machine_info"]["kvperf"] = dict(ENV.to_json(), cpu_model="Another CPU", torch_version=torch.__version__,
                                           transformers_version=transformers.__version__)
    (pytester.path / "other.json").write_text(json.dumps(other))
    result = pytester.runpytest(*TINY, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_a_failing_session_saves_no_baseline(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE + "\ndef test_broken():\n    assert False\n")
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["kvperf: baseline not saved: the session did not pass (exit 1)"])
    assert not (pytester.path / "baselines").exists()


@pytest.mark.parametrize("timings", ["gate", "auto"])
def test_another_torch_is_refused_without_suggesting_what_would_not_help(pytester: pytest.Pytester, timings):
    """Other software changes every metric: --kvperf-timings auto would be refused too, so only
    --kvperf-allow-env-mismatch is offered."""
    from kvperf.gate.env import current_environment
    from tests.test_compare import BASE, CASE, info, result_json

    pytester.makepyfile(test_bench=BENCH_FILE)
    env = current_environment("cpu", root=pytester.path, torch_threads=1)
    older = result_json({CASE: info(BASE)})
    older["machine_info"]["kvperf"] = dict(env.to_json(), torch_version="2.0.0")
    (pytester.path / "older.json").write_text(json.dumps(older))
    result = pytester.runpytest(*TINY, "--kvperf-compare=older.json", f"--kvperf-timings={timings}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == (
        f"ERROR: older.json: baseline environment differs in torch_version ('2.0.0' -> {env.torch_version!r}), "
        "which changes every metric: use a baseline made with this torch, transformers and device, or "
        "--kvperf-allow-env-mismatch to compare anyway")
