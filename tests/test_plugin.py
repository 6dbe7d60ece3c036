"""The pytest plugin, run end to end in a pytester sandbox on a user's own benchmark file."""

from __future__ import annotations

import json
import os

import pytest

TINY = ["--kvperf-batch-sizes", "1,2", "--kvperf-prompt-lens", "8", "--kvperf-new-tokens", "3",
        "--kvperf-rounds", "2", "--kvperf-warmup", "0", "-p", "no:cacheprovider"]

BENCH_FILE = """
import pytest
from kvperf import GenerationSpec

@pytest.mark.kvperf_experiment("matrix")
def test_matrix(kvperf_case, kvperf_bench):
    kvperf_bench(kvperf_case)

def test_custom(kvperf_bench):
    results = kvperf_bench(GenerationSpec(cache="static", batch_size=1, prompt_len=4, new_tokens=3))
    assert len(results) == 2
"""


def test_cases_run_with_readable_ids_and_full_extra_info(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "--kvperf-dtypes", "float32,bf16", "--benchmark-json=out.json", "-v")
    result.assert_outcomes(passed=13)  # 3 cache modes x 2 batch sizes x 2 dtypes, and the custom case
    result.stdout.fnmatch_lines(["*test_matrix?cache=on-bs=2-prompt=8-new=3-bf16? PASSED*"])
    data = json.loads((pytester.path / "out.json").read_text())
    by_name = {b["name"]: b for b in data["benchmarks"]}
    info = by_name["test_matrix[cache=off-bs=2-prompt=8-new=3-fp32]"]["extra_info"]
    assert info["cache"] == "off" and info["batch_size"] == 2 and info["dtype"] == "float32"
    assert info["generated_tokens"] == 6 and info["kv_cache_bytes"] == 0
    assert len(info["itl_s"]) == 2 and all(len(r) == 2 for r in info["itl_s"])
    assert len(info["e2e_s_samples"]) == 2
    assert {"ttft_s", "tpot_s", "tokens_per_s", "peak_memory_bytes", "itl_p95_s"} <= info.keys()
    assert by_name["test_custom"]["extra_info"]["experiment"] == "custom"
    assert by_name["test_custom"]["stats"]["rounds"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kvperf-tier", "huge"], "ERROR: unknown tier 'huge': use one of quick, full, cpu"),
        (["--kvperf-dtypes", "int4"],
         "ERROR: --kvperf-dtypes: unknown dtype 'int4': use one of float32, bfloat16, float16"),
        (["--kvperf-batch-sizes", "0"], "ERROR: --kvperf-batch-sizes values must be positive integers, got '0'"),
        (["--kvperf-batch-sizes", "two"], "ERROR: --kvperf-batch-sizes takes comma-separated integers, got 'two'"),
        (["--kvperf-prompt-lens", "600"],
         "ERROR: tier 'quick' reaches 632 positions (prompt + new tokens) but model 'tiny-gpt2' has 512: "
         "pass shorter --kvperf-prompt-lens / --kvperf-new-tokens"),
        (["--kvperf-device", "tpu"], "ERROR: --kvperf-device 'tpu' is not a device: use cpu, cuda or cuda:N"),
        (["--kvperf-new-tokens", "1"], "ERROR: --kvperf-new-tokens must be at least 2, got 1"),
        (["--kvperf-warmup", "99999999999999999999"],
         "ERROR: --kvperf-warmup must be in [0, 1000], got 99999999999999999999"),
        (["--kvperf-warmup", "-5"], "ERROR: --kvperf-warmup must be in [0, 1000], got -5"),
        (["--kvperf-rounds", "0"], "ERROR: --kvperf-rounds must be in [1, 10000], got 0"),
        (["--kvperf-rounds", "1000000"], "ERROR: --kvperf-rounds must be in [1, 10000], got 1000000"),
        (["--kvperf-threads", "0"], "ERROR: --kvperf-threads must be in [1, 1024], got 0"),
        (["--kvperf-threads", "99999999999"], "ERROR: --kvperf-threads must be in [1, 1024], got 99999999999"),
    ],
)
def test_bad_options_are_usage_errors_without_traceback(pytester: pytest.Pytester, args, message):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == message
    assert "Traceback" not in result.stderr.str()


def test_cuda_cases_skip_with_a_reason_on_a_cpu_machine(pytester: pytest.Pytester):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CUDA cases would run")
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "--kvperf-device", "cuda", "--kvperf-dtypes", "float16", "-rs", "-k", "matrix")
    result.assert_outcomes(skipped=6)
    result.stdout.fnmatch_lines(["*needs a CUDA GPU, and torch.cuda.is_available() is False here*"])


@pytest.mark.parametrize("stale", ["1000,1001", "file"])
def test_a_stale_ab_variable_is_one_line_not_an_internal_error(pytester: pytest.Pytester,
                                                              monkeypatch: pytest.MonkeyPatch, stale: str):
    """KVPERF_AB_TURNS left in the environment (no `kvperf ab` behind it): closed descriptors, or open
    ones that are not the driver's pipes."""
    pytester.makepyfile(test_bench=BENCH_FILE)
    fd = os.open(pytester.path / "test_bench.py", os.O_RDONLY)
    try:
        value = f"{fd},{fd}" if stale == "file" else stale
        monkeypatch.setenv("KVPERF_AB_TURNS", value)
        result = pytester.runpytest(*TINY)
    finally:
        os.close(fd)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    first = value.split(",")[0]
    assert result.stderr.lines[0] == (
        f"ERROR: KVPERF_AB_TURNS={value!r} is set but no `kvperf ab` run is behind it (descriptor {first} is not an "
        "open pipe): it is left over in the environment; `unset KVPERF_AB_TURNS` to run the benchmarks on their own")
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output


def test_the_pipes_of_a_real_ab_run_are_accepted():
    from kvperf.plugin import _check_ab_pipes

    read_fd, write_fd = os.pipe()
    try:
        _check_ab_pipes(f"{read_fd},{write_fd}")  # no error
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_driver_that_went_away_is_one_line_not_an_internal_error(pytester: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """Real pipes, as `kvperf ab` hands them over, but the driver's ends are closed."""
    pytester.makepyfile(test_bench=BENCH_FILE)
    to_side_read, to_side_write = os.pipe()
    to_driver_read, to_driver_write = os.pipe()
    os.close(to_driver_read)
    os.close(to_side_write)
    try:
        monkeypatch.setenv("KVPERF_AB_TURNS", f"{to_side_read},{to_driver_write}")
        result = pytester.runpytest(*TINY)
    finally:
        os.close(to_side_read)
        os.close(to_driver_write)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*kvperf: lost the `kvperf ab` driver (*): run the side again through `kvperf ab`*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
