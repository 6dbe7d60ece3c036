"""The machine's ceilings: STREAM's byte counting (not its speed), the GPU peak from telemetry values,
the published figures, and their place in the environment."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from kvperf.errors import UsageError
from kvperf.gate.env import Environment
from kvperf.gate.result_file import check_environment
from kvperf.measure import ceilings
from kvperf.measure.ceilings import (
    SKIP_ENV_VAR,
    MachineCeilings,
    gpu_peak_bandwidth,
    measure_ceilings,
    measure_stream,
    stream_bytes,
)


def test_stream_counts_bytes_as_stream_does():
    assert stream_bytes("triad", 1000, 4) == 3 * 1000 * 4  # read b, read c, write a
    assert stream_bytes("add", 1000, 8) == 3 * 1000 * 8
    assert stream_bytes("copy", 1000, 4) == 2 * 1000 * 4  # read b, write a
    assert stream_bytes("scale", 10, 2) == 2 * 10 * 2
    with pytest.raises(UsageError, match="unknown STREAM kernel 'dot': use one of copy, scale, add, triad"):
        stream_bytes("dot", 10, 4)  # type: ignore[arg-type]


def test_a_stream_measurement_keeps_its_passes_and_divides_the_bytes_by_them():
    result = measure_stream("triad", numel=4096, passes=3)
    assert result.bytes_per_pass == 3 * 4096 * 4 and len(result.pass_times_s) == 3  # the page-faulting pass dropped
    assert result.best_bandwidth_bytes_per_s == result.bytes_per_pass / min(result.pass_times_s)


def test_the_stream_arrays_are_four_times_the_last_level_cache(monkeypatch):
    monkeypatch.setattr(ceilings, "_last_level_cache_bytes", lambda: 32 * 2**20)
    assert ceilings.stream_numel(4) == 128 * 2**20 // 4
    monkeypatch.setattr(ceilings, "_last_level_cache_bytes", lambda: 1 * 2**20)
    assert ceilings.stream_numel(4) == 64 * 2**20 // 4  # never below 64 MiB an array
    monkeypatch.setattr(ceilings, "_last_level_cache_bytes", lambda: 512 * 2**20)
    assert ceilings.stream_numel(4) == 256 * 2**20 // 4  # nor above 256 MiB


def test_the_gpu_peak_is_memory_clock_times_bus_width_times_two():
    peak, note = gpu_peak_bandwidth(2619, 5120, "NVIDIA H100 80GB HBM3")  # what NVML reports on an H100 SXM
    assert peak == 2619e6 * 5120 / 8 * 2 == pytest.approx(3.352e12, rel=1e-3)
    assert note == "NVML: max memory clock 2619 MHz x 5120 bit bus / 8 x 2 (double data rate)"
    peak, note = gpu_peak_bandwidth(None, 5120, "NVIDIA H200")
    assert peak == 4.8e12 and note.startswith("published datasheet figure for NVIDIA H200")
    peak, note = gpu_peak_bandwidth(0, None, "Some Future GPU")
    assert peak is None
    assert note == ("NVML gave no memory clock or bus width for Some Future GPU, and kvperf has no published figure "
                    "for it: add one to kvperf.measure.ceilings.PUBLISHED_BANDWIDTH_BYTES_PER_S")


@pytest.mark.parametrize("telemetry", [
    {"name": "NVIDIA A100-SXM4-80GB", "memory_clock_max_mhz": 1593, "memory_bus_width_bits": 5120},
    SimpleNamespace(name="NVIDIA A100-SXM4-80GB", memory_clock_max_mhz=1593, memory_bus_width_bits=5120, note=None),
])
def test_cuda_ceilings_read_the_telemetry_as_a_dict_or_a_dataclass(monkeypatch, telemetry):
    monkeypatch.delenv(SKIP_ENV_VAR, raising=False)
    monkeypatch.setattr(ceilings, "measure_matmul_flops", lambda n, repeats, device: 1.9e13)  # no GPU here
    got = measure_ceilings("cuda:0", telemetry)
    assert got.peak_bandwidth_bytes_per_s == pytest.approx(1593e6 * 5120 / 8 * 2)  # 2.04 TB/s, the datasheet's 2,039
    assert got.peak_flops_per_s == 1.9e13 and got.last_level_cache_bytes is None
    fallback = measure_ceilings("cuda:0", None, gpu_name="Tesla T4")  # no telemetry: the published figure
    assert fallback.peak_bandwidth_bytes_per_s == 320e9


def test_the_test_suite_skips_the_measurement_and_says_so(monkeypatch):
    monkeypatch.setenv(SKIP_ENV_VAR, "1")
    got = measure_ceilings("cpu")
    assert got.peak_bandwidth_bytes_per_s is None and got.peak_flops_per_s is None
    assert got.peak_bandwidth_note == f"not measured: {SKIP_ENV_VAR} is set (kvperf's own tests)"


def test_the_ceilings_live_in_the_environment_without_changing_its_key():
    env = Environment(cpu_model="Test CPU", cpu_count=2, torch_threads=1, machine="x86_64", system="Linux",
                      python_version="3.11", torch_version="2.13.0+cpu", transformers_version="5.24.0",
                      device_type="cpu")
    measured = MachineCeilings(1.2e10, "STREAM triad", 4e10, "matmul", 2**25)
    with_ceilings = replace(env, **measured.environment_fields())
    assert with_ceilings.key() == env.key()
    data = with_ceilings.to_json()
    assert MachineCeilings.from_environment(data) == measured
    assert Environment.from_json(data).peak_bandwidth_bytes_per_s == 1.2e10
    check_environment({**data, "peak_bandwidth_bytes_per_s": 12_000_000_000}, "run.json")  # JSON may write an int
    assert MachineCeilings.from_environment(env.to_json()).peak_bandwidth_note == "not recorded in this result file"
