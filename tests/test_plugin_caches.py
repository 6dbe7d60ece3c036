"""The ``caches`` experiment under the plugin: each cache mode runs or is skipped with its reason, and a
compiled case keeps its compilation out of the timed rounds."""

from __future__ import annotations

import json

import pytest
from transformers import CompileConfig

from kvperf.cli import main
from kvperf.features import missing_quantized_backend
from kvperf.measure import cache_modes

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH_FILE = """
import pytest

@pytest.mark.kvperf_experiment("caches")
def test_caches(kvperf_case, kvperf_bench):
    kvperf_bench(kvperf_case)
"""


def _aot_eager(device_type: str) -> CompileConfig:
    """TorchDynamo and AOTAutograd without inductor's C++ build: the plugin's path in seconds."""
    config = CompileConfig(backend="aot_eager", mode=None)
    config._compile_all_devices = True  # type: ignore[assignment]
    return config


def test_caches_experiment_runs_or_skips_every_mode(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cache_modes, "_compile_config", _aot_eager)
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest("--kvperf-tier", "cpu", "--kvperf-new-tokens", "4", "--kvperf-rounds", "2",
                                "--kvperf-warmup", "0", "--kvperf-dtypes", "float32", "-p", "no:cacheprovider",
                                "-k", "compiled or static or fp8 or offloaded", "-rs", "--benchmark-json=out.json")
    # static, compiled, fp8; offloaded and offloaded_static skip on CPU, and fp8 before transformers 5.21
    fp8 = missing_quantized_backend("fp8") is None
    result.assert_outcomes(passed=2 + fp8, skipped=3 - fp8)
    result.stdout.fnmatch_lines(["*cache 'offloaded' (DynamicCache(offloading=True)) keeps layers in CPU memory*"
                                 "needs cuda, and this run is on cpu*"])
    data = json.loads((pytester.path / "out.json").read_text())
    infos = {b["extra_info"]["cache"]: b["extra_info"] for b in data["benchmarks"]}
    assert set(infos) == {"static", "compiled", *(["fp8"] if fp8 else [])}
    compiled = infos["compiled"]
    # With --kvperf-warmup 0 the compiling call still runs apart, and no timed round compiled anything.
    assert compiled["compile_s"] > 0 and compiled["compiled_frames_in_warmup"] > 0
    assert compiled["recompiles_in_timed_rounds"] == 0 and compiled["compile_note"] is None
    assert compiled["output_sha256"] == infos["static"]["output_sha256"]  # same tokens as the eager cache
    assert "eager 'static' call" in compiled["peak_memory_note"]
    assert infos["static"]["compile_s"] is None and "runs eagerly" in infos["static"]["compile_note"]
    for info in infos.values():
        assert info["kv_cache_bytes"] == info["kv_cache_formula_bytes"] > 0
    capsys.readouterr()
    assert main(["report", str(pytester.path / "out.json")]) == 0
    report = capsys.readouterr().out
    row = next(line.split() for line in report.splitlines() if line.strip().startswith("compiled "))
    assert "Cache implementations" in report and row[8] == f"{compiled['compile_s']:.1f}" and row[9] == "0"
