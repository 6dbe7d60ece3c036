"""Out of memory under pytest, in a pytester sandbox: the case is skipped with its size, the session goes
on, and the baseline of the other cases is saved with the skipped ones listed. The allocation failures
are fakes that raise exactly what torch raises (the machine's memory is never exhausted)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

import kvperf.measure.bench
from tests.test_oom import CPU_OOM

TINY = ["--kvperf-rounds", "2", "--kvperf-warmup", "0", "--kvperf-dtypes", "float32", "-p", "no:cacheprovider"]

# Batch 2 and 3 run out of memory in a timed round (CPU allocator, then CUDA), batch 4 after them (in
# the FLOP count), batch 1 fits; it runs last, so the session must have gone on.
BENCH_FILE = """
import pytest
from kvperf import GenerationSpec

@pytest.mark.parametrize("batch", [2, 3, 4, 1])
def test_case(kvperf_bench, batch):
    kvperf_bench(GenerationSpec(cache="on", batch_size=batch, prompt_len=8, new_tokens=4))
"""


@pytest.fixture
def allocation_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    real_time, real_work = kvperf.measure.bench.time_generation, kvperf.measure.bench.measure_work

    def time_generation(model: Any, spec: Any, *args: Any, **kwargs: Any) -> Any:
        if spec.batch_size == 2:
            raise RuntimeError(CPU_OOM)
        if spec.batch_size == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_time(model, spec, *args, **kwargs)

    def measure_work(model: Any, spec: Any, *args: Any, **kwargs: Any) -> Any:
        if spec.batch_size == 4:
            raise MemoryError
        return real_work(model, spec, *args, **kwargs)

    monkeypatch.setattr(kvperf.measure.bench, "time_generation", time_generation)
    monkeypatch.setattr(kvperf.measure.bench, "measure_work", measure_work)


def reason(batch: int) -> str:
    return f"out of memory for batch {batch} x (prompt 8 + 4 new tokens), float32 on cpu"


@pytest.mark.usefixtures("allocation_failures")
def test_out_of_memory_skips_the_case_and_the_rest_is_saved(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "--kvperf-save-baseline", "--benchmark-json=out.json", "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"SKIPPED [[]1] *: {reason(2)}", f"SKIPPED [[]1] *: {reason(3)}",
                                 f"SKIPPED [[]1] *: {reason(4)}"])
    result.stdout.fnmatch_lines(["kvperf: saved baseline */quick.json",
                                 "kvperf: warning: 3 case(s) skipped, listed in the baseline (kvperf_skipped_cases): "
                                 "test_case[[]2], test_case[[]3], test_case[[]4]"])
    (path,) = (pytester.path / "baselines").glob("*/quick.json")
    for data in (json.loads(path.read_text()), json.loads((pytester.path / "out.json").read_text())):
        assert [b["name"] for b in data["benchmarks"]] == ["test_case[1]"]  # nothing of the failed cases
        assert data["kvperf_skipped_cases"] == [
            {"name": f"test_case[{batch}]", "model": "tiny-gpt2", "reason": reason(batch)} for batch in (2, 3, 4)]
        assert data["kvperf_subset"] is False  # skipped is not deselected
    # kvperf's summary too holds only the case that ran
    assert [line.split()[:2] for line in result.stdout.lines if line.startswith(("   on", "  off"))] == [["on", "1"]]
    assert "Traceback" not in result.stdout.str()
