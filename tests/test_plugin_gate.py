"""The gate under pytest, end to end in a pytester sandbox: a comparison of nothing is never a pass, a
subset of the tier is refused or labelled, a directory that can't be written is refused before the run,
a write that fails at the end keeps the results, and saved files carry no hostname."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import tempfile
from pathlib import Path

import pytest

import kvperf.gate.baseline
from kvperf.errors import EXIT_NOTHING_COMPARED, EXIT_SAVE_FAILED
from kvperf.gate.baseline import load_baseline
from kvperf.gate.env import current_environment
from tests.faults import FaultyModule, full_disk_fdopen, oserror
from tests.test_compare import BASE, info, result_json

TINY = ["--kvperf-rounds", "2", "--kvperf-warmup", "0", "--kvperf-dtypes", "float32", "-p", "no:cacheprovider"]

BENCH_FILE = """
import pytest
from kvperf import GenerationSpec

@pytest.mark.parametrize("cache", ["on", "off"])
def test_case(kvperf_bench, cache):
    kvperf_bench(GenerationSpec(cache=cache, batch_size=1, prompt_len=8, new_tokens=4))
"""

# The tier's own cases, which --kvperf-dtypes and the size options choose.
MATRIX_FILE = """
import pytest

@pytest.mark.kvperf_experiment("matrix")
def test_matrix(kvperf_case, kvperf_bench):
    kvperf_bench(kvperf_case)
"""
MATRIX_TINY = ["--kvperf-batch-sizes", "1", "--kvperf-prompt-lens", "8", "--kvperf-new-tokens", "3",
               "--kvperf-rounds", "2", "--kvperf-warmup", "0", "-p", "no:cacheprovider"]


def baseline_file(pytester: pytest.Pytester, names: list[str], device_type: str = "cpu") -> Path:
    """A baseline of ``names`` from this machine's environment (the quick tier's one torch thread)."""
    env = current_environment(device_type, root=pytester.path, torch_threads=1)
    path = pytester.path / "base.json"
    path.write_text(json.dumps(result_json({name: info(BASE) for name in names}, env)))
    return path


def no_traceback(result: pytest.RunResult) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output


def nothing_ran(result: pytest.RunResult) -> None:
    assert re.search(r"\d+ (passed|failed|skipped)", result.stdout.str()) is None


def literal(text: str) -> str:
    """``text`` as an fnmatch pattern that matches only itself (brackets are character classes there)."""
    return text.replace("[", "[[]")


# A comparison of nothing is never a pass ---------------------------------------------------------------

SKIPPING_FILE = """
import pytest
from kvperf import GenerationSpec

@pytest.mark.parametrize("cache", ["on", "off"])
def test_case(kvperf_bench, cache):
    pytest.skip("needs a GPU")
    kvperf_bench(GenerationSpec(cache=cache, batch_size=1, prompt_len=8, new_tokens=4))
"""


def test_a_run_whose_cases_were_all_skipped_is_not_a_pass(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=SKIPPING_FILE)
    baseline_file(pytester, ["test_case[on]", "test_case[off]"])
    result = pytester.runpytest(*TINY, "--kvperf-compare=base.json")
    result.assert_outcomes(skipped=2)
    assert result.ret == EXIT_NOTHING_COMPARED == 6
    result.stdout.fnmatch_lines(["kvperf: error: no kvperf case ran (2 skipped: needs a GPU, ...), so nothing was "
                                 "compared or saved"])
    assert "no regression" not in result.stdout.str()
    no_traceback(result)

    result = pytester.runpytest(*TINY, "--kvperf-save-baseline")
    result.assert_outcomes(skipped=2)
    assert result.ret == EXIT_NOTHING_COMPARED
    result.stdout.fnmatch_lines(["kvperf: error: no kvperf case ran (2 skipped: *), so nothing was compared or saved"])
    assert not (pytester.path / "baselines").exists()


def test_cuda_cases_skipped_on_a_machine_without_a_gpu_are_not_a_pass(pytester: pytest.Pytester):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CUDA cases would run")
    pytester.makepyfile(test_bench=MATRIX_FILE)
    names = [f"test_matrix[cache={c}-bs=1-prompt=8-new=3-fp16]" for c in ("on", "static", "off")]
    baseline_file(pytester, names, device_type="cuda")
    result = pytester.runpytest(*MATRIX_TINY, "--kvperf-device", "cuda", "--kvperf-dtypes", "float16",
                                "--kvperf-compare=base.json")
    result.assert_outcomes(skipped=3)
    assert result.ret == EXIT_NOTHING_COMPARED
    result.stdout.fnmatch_lines(["kvperf: error: no kvperf case ran (3 skipped: needs a CUDA GPU, *), so nothing "
                                 "was compared or saved"])
    no_traceback(result)


def test_a_users_own_cases_under_cuda_without_a_gpu_are_skipped_not_failed(pytester: pytest.Pytester):
    """``kvperf_bench`` in a user's file is skipped like the tier's cases, so the gate sees nothing ran."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CUDA cases would run")
    pytester.makepyfile(test_bench=BENCH_FILE)
    baseline_file(pytester, ["test_case[on]", "test_case[off]"], device_type="cuda")
    result = pytester.runpytest(*TINY, "--kvperf-device", "cuda", "--kvperf-compare=base.json")
    result.assert_outcomes(skipped=2)
    assert result.ret == EXIT_NOTHING_COMPARED
    result.stdout.fnmatch_lines(["kvperf: error: no kvperf case ran (2 skipped: needs a CUDA GPU, *"])
    no_traceback(result)


def test_no_case_in_common_with_the_baseline_is_not_a_pass(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    baseline_file(pytester, ["test_renamed[on]", "test_renamed[off]", "test_renamed[static]"])
    result = pytester.runpytest(*TINY, "--kvperf-compare=base.json", "--kvperf-timings=skip")
    result.assert_outcomes(passed=2)
    assert result.ret == EXIT_NOTHING_COMPARED
    result.stdout.fnmatch_lines(["kvperf: error: nothing compared: none of the 2 case(s) of this run is among the 3 "
                                 "of the baseline base.json: compare with a baseline of the same tier, model and "
                                 "dtypes"])
    assert "no regression" not in result.stdout.str()
    no_traceback(result)


def test_a_failing_session_keeps_its_own_exit_status(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=SKIPPING_FILE + "\ndef test_broken():\n    assert False\n")
    baseline_file(pytester, ["test_case[on]"])
    result = pytester.runpytest(*TINY, "--kvperf-compare=base.json")
    result.assert_outcomes(skipped=2, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# A subset of the tier --------------------------------------------------------------------------------

@pytest.mark.parametrize(("bench", "args", "why"), [
    (BENCH_FILE, [*TINY, "-k", "on"], "1 test(s) deselected by -k 'on'"),
    (BENCH_FILE, [*TINY, "test_bench.py::test_case[on]"], "node id test_bench.py::test_case[on]"),
    (BENCH_FILE, [*TINY, "--kvperf-model", "tiny-llama-gqa"],
     "--kvperf-model 'tiny-llama-gqa' instead of the tier's 'tiny-gpt2'"),
    (MATRIX_FILE, [*MATRIX_TINY, "--kvperf-dtypes", "float32"], "*--kvperf-dtypes float32 leaves out bfloat16"),
    (MATRIX_FILE, [*MATRIX_TINY, "--kvperf-dtypes", "float32,bfloat16"],
     "--kvperf-batch-sizes 1 instead of the tier's 1,4 and 1,2,4,8; --kvperf-prompt-lens 8 instead of the tier's "
     "32,128 and 32,64,128,256; --kvperf-new-tokens 3 instead of the tier's 32"),
], ids=["keyword", "node-id", "model", "dtypes", "sizes"])
def test_a_subset_is_refused_as_the_tier_s_baseline_before_anything_runs(pytester: pytest.Pytester, bench, args,
                                                                         why):
    pytester.makepyfile(test_bench=bench)
    result = pytester.runpytest(*args, "--kvperf-save-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: */baselines/*/quick.json: refusing to save part of tier 'quick' as its "
                                 f"baseline ({literal(why)}): save the whole tier, pass --kvperf-save-baseline=DIR to "
                                 "save elsewhere, or --kvperf-save-subset to save it here marked as a subset"])
    nothing_ran(result)
    assert not (pytester.path / "baselines").exists()
    no_traceback(result)


def test_a_subset_is_saved_labelled_elsewhere_or_with_the_flag(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    warning = ("kvperf: warning: this baseline holds part of tier 'quick', and says so (kvperf_subset: true): "
               "1 test(s) deselected by -k 'on'")
    result = pytester.runpytest(*TINY, "-k", "on", "--kvperf-save-baseline=store", "--benchmark-json=out.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["kvperf: saved baseline store/*/quick.json", warning])
    (path,) = (pytester.path / "store").glob("*/quick.json")
    for data in (json.loads(path.read_text()), json.loads((pytester.path / "out.json").read_text())):
        assert data["kvperf_subset"] is True
        assert data["kvperf_selection"] == {
            "tier": "quick", "model": "tiny-gpt2", "device_type": "cpu", "dtypes": ["float32"], "args": ["."],
            "keyword": "on", "markexpr": "", "deselected_tests": 1, "narrowed_by": ["1 test(s) deselected by -k 'on'"]}
        assert data["kvperf_skipped_cases"] == []
    assert load_baseline(path).subset is True

    result = pytester.runpytest(*TINY, "-k", "on", "--kvperf-save-baseline", "--kvperf-save-subset")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([warning])
    (path,) = (pytester.path / "baselines").glob("*/quick.json")
    assert json.loads(path.read_text())["kvperf_subset"] is True

    result = pytester.runpytest(*TINY, "--kvperf-save-baseline", "--kvperf-overwrite-baseline")
    result.assert_outcomes(passed=2)
    assert "warning" not in result.stdout.str()
    data = json.loads(path.read_text())
    assert data["kvperf_subset"] is False and data["kvperf_selection"]["narrowed_by"] == []


# Writability, before the run and at its end -------------------------------------------------------------

def test_a_file_in_the_way_of_the_baseline_directory_is_refused_before_the_run(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    (pytester.path / "afile").write_text("")
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline=afile")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0].startswith("ERROR: afile: is not a directory, so no baseline can be saved under "
                                             "afile/")
    assert result.stderr.lines[0].endswith(": pass --kvperf-save-baseline=DIR with a directory")
    nothing_ran(result)
    no_traceback(result)


def test_a_read_only_directory_is_refused_before_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makepyfile(test_bench=BENCH_FILE)
    read_only = FaultyModule(tempfile, ("mkstemp",), oserror(errno.EROFS), times=10,
                             when=lambda *a, dir=None, **k: Path(dir).is_relative_to(pytester.path))
    monkeypatch.setattr(kvperf.gate.baseline, "tempfile", read_only)
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: */baselines/*: cannot save a baseline there (Read-only file system): pass "
                                 "--kvperf-save-baseline=DIR with a writable DIR"])
    nothing_ran(result)
    no_traceback(result)


def _under_baselines(*args: object, **kwargs: object) -> bool:
    return any("baselines" in str(a) for a in (*args, *kwargs.values()))


SAVE_FAULTS = {
    # name: (module of kvperf.gate.baseline, its stand-in, what the line says)
    "fsync": ("os", lambda: FaultyModule(os, ("fsync",), oserror(errno.EIO)), "Input/output error"),
    "rename": ("os", lambda: FaultyModule(os, ("link", "replace"), oserror(errno.EXDEV), when=_under_baselines,
                                          times=2), "Invalid cross-device link"),
    "full disk": ("os", full_disk_fdopen, "No space left on device"),
    # The write check passed (it probes the project directory); the baseline's own directory is read-only.
    "read-only": ("tempfile", lambda: FaultyModule(tempfile, ("mkstemp",), oserror(errno.EROFS),
                                                   when=_under_baselines), "Read-only file system"),
}


@pytest.mark.parametrize("fault", list(SAVE_FAULTS))
def test_a_write_that_fails_at_the_end_keeps_the_results_and_says_where(pytester: pytest.Pytester,
                                                                        monkeypatch: pytest.MonkeyPatch, fault):
    pytester.makepyfile(test_bench=BENCH_FILE)
    fallback = pytester.path / "fallback"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    module, make, why = SAVE_FAULTS[fault]
    faulty = make()
    monkeypatch.setattr(kvperf.gate.baseline, module, faulty)
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline")
    result.assert_outcomes(passed=2)
    assert result.ret == EXIT_SAVE_FAILED == 7 and faulty.failures >= 1
    (kept,) = fallback.glob("kvperf-unsaved-quick-*.json")
    result.stdout.fnmatch_lines([f"kvperf: error: could not save the baseline */baselines/*/quick.json ({why}); "
                                 f"this run's results are in {kept}: move it there once that is fixed"])
    assert {name for name, _ in load_baseline(kept).cases} == {"test_case[on]", "test_case[off]"}
    left = [p.name for p in (pytester.path / "baselines").rglob("*") if p.is_file()]
    assert left == []  # no half-written baseline, no temporary file
    no_traceback(result)


# What a saved file records -------------------------------------------------------------------------------

def test_saved_files_carry_no_hostname(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline", "--benchmark-json=out.json")
    result.assert_outcomes(passed=2)
    (path,) = (pytester.path / "baselines").glob("*/quick.json")
    for text in (path.read_text(), (pytester.path / "out.json").read_text()):
        machine = json.loads(text)["machine_info"]
        assert "node" not in machine and machine["kvperf"]["cpu_model"]  # the rest of machine_info is kept
        if len(platform.node()) >= 6:  # a short name could appear by chance
            assert platform.node() not in text
