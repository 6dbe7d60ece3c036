"""`kvperf env`: the fingerprint, the GPU telemetry and the energy counters, with a fake NVML and powercap."""

from __future__ import annotations

import json
import sys

import pytest

import kvperf.measure.energy
import kvperf.measure.telemetry
from kvperf.cli import main
from kvperf.gate.env import Environment
from tests.test_energy import NO_RAPL, powercap
from tests.test_telemetry import H100, FakeNvml


def test_env_json_with_a_gpu_and_rapl(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(kvperf.measure.telemetry, "PynvmlNvml", FakeNvml(energy_mj=[10, 20, 30]))
    monkeypatch.setattr(kvperf.measure.energy, "POWERCAP_ROOT",
                        powercap(tmp_path, {"intel-rapl:0": ("package-0", 5, 100)}))
    assert main(["env", "--json", "--device", "cuda:0", "--torch-threads", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    note = data["gpu"].pop("note")
    assert data["gpu"] == H100 and note.startswith("cuda:0 matched to NVML by index")  # torch has no CUDA here
    assert (data["gpu_name"], data["gpu_memory_bytes"], data["gpu_driver"]) == \
        (H100["name"], H100["memory_total_bytes"], H100["driver_version"])
    assert data["device_type"] == "cuda" and data["torch_threads"] == 1
    assert data["key"] == Environment.from_json(data).key()
    assert data["energy_sources"] == {
        "cpu": {"source": "RAPL package-0 (whole processor)", "note": None},
        "cuda": {"source": f"NVML total energy ({note})", "note": None}}


def test_env_without_nvml_or_rapl_says_why(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(kvperf.measure.energy, "POWERCAP_ROOT", tmp_path / "powercap")
    assert main(["env", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    reason = "pynvml is not installed (pip install nvidia-ml-py)"
    assert data["gpu"] == {**dict.fromkeys(H100), "note": reason}
    assert data["energy_sources"] == {"cpu": {"source": None, "note": NO_RAPL.format(root=tmp_path / "powercap")},
                                      "cuda": {"source": None, "note": f"no GPU energy counter: {reason}"}}
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"gpu.note                    {reason}\n" in out and "gpu.sm_clock_mhz            -\n" in out
    assert f"energy_sources.cpu.note     {NO_RAPL.format(root=tmp_path / 'powercap')}\n" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["env", "--device", "npu"], "kvperf: error: --device 'npu' is not a device: use cpu, cuda or cuda:N\n"),
        (["env", "--torch-threads", "0"], "kvperf: error: --torch-threads must be at least 1, got 0\n"),
    ],
)
def test_env_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert capsys.readouterr().err == message
