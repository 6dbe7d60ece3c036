"""GPU telemetry through NVML: every branch driven by a fake NVML, and the real one where a GPU exists."""

from __future__ import annotations

import sys
import types
from dataclasses import asdict, fields, replace
from typing import Any

import pytest

from kvperf.errors import BadInputError
from kvperf.gate.env import Environment
from kvperf.gate.result_file import check_environment
from kvperf.measure.telemetry import (
    GpuTelemetry,
    NvmlCallError,
    NvmlUnavailable,
    PynvmlNvml,
    gpu_telemetry,
)
from tests.test_compare import ENV

UUID = "GPU-11111111-2222-3333-4444-555555555555"
PCI = "00000000:17:00.0"
H100 = {"name": "NVIDIA H100 80GB HBM3", "uuid": UUID, "driver_version": "550.54.15", "cuda_version": "12.4",
        "memory_total_bytes": 80 * 2**30, "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980, "memory_clock_mhz": 2619,
        "memory_clock_max_mhz": 2619, "power_limit_w": 700.0, "temperature_c": 41, "persistence_mode": True,
        "memory_bus_width_bits": 5120}


class FakeNvml:
    """An ``Nvml`` of GPUs given as dicts of ``GpuTelemetry`` fields (a missing field: "Not Supported")."""

    def __init__(self, gpus: list[dict[str, Any]] | None = None, *, init_error: str | None = None,
                 energy_mj: list[int] | None = None) -> None:
        self.gpus = [dict(H100)] if gpus is None else gpus
        self.init_error = init_error
        self.energy_mj = energy_mj  # successive readings of the energy counter; None: not supported
        self.started = self.stopped = 0

    def __call__(self) -> FakeNvml:  # used as its own factory
        return self

    def init(self) -> None:
        if self.init_error:
            raise NvmlUnavailable(self.init_error)
        self.started += 1

    def shutdown(self) -> None:
        self.stopped += 1

    def device_count(self) -> int:
        return len(self.gpus)

    def _find(self, key: str, value: Any) -> int:
        for index, gpu in enumerate(self.gpus):
            if gpu.get(key) == value:
                return index
        raise NvmlCallError(f"no GPU with {key} {value}: Not Found")

    def handle_by_index(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise NvmlCallError("nvmlDeviceGetHandleByIndex: Invalid Argument")
        return index

    def handle_by_uuid(self, uuid: str) -> int:
        return self._find("uuid", uuid)

    def handle_by_pci_bus_id(self, bus_id: str) -> int:
        return self._find("pci", bus_id)

    def __getattr__(self, name: str) -> Any:
        if name in ("driver_version", "cuda_version"):
            return lambda: self._field(0, name)
        if name in {f.name for f in fields(GpuTelemetry)}:
            return lambda handle: self._field(handle, name)
        raise AttributeError(name)

    def _field(self, handle: int, name: str) -> Any:
        if name not in self.gpus[handle]:
            raise NvmlCallError(f"nvml call for {name}: Not Supported")
        return self.gpus[handle][name]

    def total_energy_mj(self, handle: int) -> int:
        if self.energy_mj is None:
            raise NvmlCallError("nvmlDeviceGetTotalEnergyConsumption: Not Supported")
        if not self.energy_mj:
            raise NvmlCallError("nvmlDeviceGetTotalEnergyConsumption: GPU is lost")
        return self.energy_mj.pop(0)


def identity(uuid: str | None = UUID, pci: str | None = None) -> Any:
    return lambda index: (uuid, pci)


def test_the_fingerprint_of_a_gpu_matched_by_uuid():
    nvml = FakeNvml()
    telemetry = gpu_telemetry("cuda:0", nvml_factory=nvml, identity=identity())
    assert asdict(telemetry) == {**H100, "note": f"cuda:0 matched to NVML by UUID {UUID}"}
    assert nvml.started == nvml.stopped == 1  # NVML is shut down again


def test_the_run_s_gpu_is_found_by_uuid_then_pci_bus_id_then_index():
    other = {**H100, "name": "Other", "uuid": "GPU-other", "pci": "00000000:99:00.0"}
    gpus = [other, {**H100, "pci": PCI}]
    by_uuid = gpu_telemetry("cuda:0", nvml_factory=FakeNvml(gpus), identity=identity())
    assert by_uuid.name == H100["name"]  # cuda:0 is NVML's device 1: CUDA and NVML number them differently
    by_pci = gpu_telemetry("cuda:0", nvml_factory=FakeNvml(gpus), identity=identity(uuid="GPU-gone", pci=PCI))
    assert by_pci.name == H100["name"] and by_pci.note == f"cuda:0 matched to NVML by PCI bus id {PCI}"
    by_index = gpu_telemetry("cuda:1", nvml_factory=FakeNvml(gpus), identity=identity(uuid=None))
    assert by_index.name == H100["name"] and by_index.note.startswith("cuda:1 matched to NVML by index (")
    missing = gpu_telemetry("cuda:5", nvml_factory=FakeNvml(gpus), identity=identity(uuid=None))
    assert missing == GpuTelemetry.unavailable("NVML has no GPU for cuda:5 (nvmlDeviceGetHandleByIndex: Invalid "
                                               "Argument)")


def test_a_call_the_gpu_does_not_support_leaves_its_field_none_and_says_why():
    gpu = {k: v for k, v in H100.items() if k not in ("memory_bus_width_bits", "sm_clock_mhz", "driver_version")}
    telemetry = gpu_telemetry("cuda:0", nvml_factory=FakeNvml([gpu]), identity=identity())
    assert telemetry.memory_bus_width_bits is None and telemetry.sm_clock_mhz is None
    assert telemetry.driver_version is None
    assert telemetry.sm_clock_max_mhz == 1980 and telemetry.memory_clock_max_mhz == 2619
    assert telemetry.note == (f"cuda:0 matched to NVML by UUID {UUID}; not known: driver_version: nvml call for "
                              "driver_version: Not Supported; sm_clock_mhz: nvml call for sm_clock_mhz: Not Supported; "
                              "memory_bus_width_bits: nvml call for memory_bus_width_bits: Not Supported")


def test_a_cpu_run_describes_gpu_0():
    telemetry = gpu_telemetry("cpu", nvml_factory=FakeNvml(), identity=identity())
    assert telemetry.name == H100["name"]
    assert telemetry.note == "the run uses the CPU: NVML's GPU 0 is described"


@pytest.mark.parametrize(
    ("nvml", "reason"),
    [
        (FakeNvml(init_error="NVML cannot start: Driver Not Loaded"), "NVML cannot start: Driver Not Loaded"),
        (FakeNvml([]), "NVML sees no GPU on this machine"),
    ],
)
def test_no_driver_or_no_gpu_gives_all_none_and_the_reason(nvml, reason, recwarn):
    telemetry = gpu_telemetry("cuda:0", nvml_factory=nvml, identity=identity())
    assert telemetry == GpuTelemetry(note=reason)
    assert all(getattr(telemetry, f.name) is None for f in fields(GpuTelemetry) if f.name != "note")
    assert not recwarn.list  # nothing warns


def fake_pynvml(*, init_error: bool = False) -> types.ModuleType:
    """A stand-in for the ``pynvml`` module: what ``PynvmlNvml`` calls, with NVML's error classes."""
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        def __str__(self) -> str:
            return "NVML Shared Library Not Found"

    class NVMLError_NotSupported(NVMLError):
        def __str__(self) -> str:
            return "Not Supported"

    def unsupported(*args: Any) -> Any:
        raise NVMLError_NotSupported()

    def init() -> None:
        if init_error:
            raise NVMLError_LibraryNotFound()

    clocks = {("max", 1): 1980, ("now", 1): 1755, ("max", 2): 2619, ("now", 2): 2619}
    module.__dict__.update(
        NVMLError=NVMLError, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_TEMPERATURE_GPU=0, NVML_FEATURE_ENABLED=1,
        nvmlInit=init, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: "h", nvmlDeviceGetHandleByUUID=lambda uuid: "h",
        nvmlSystemGetDriverVersion=lambda: b"550.54.15", nvmlSystemGetCudaDriverVersion=lambda: 12040,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3", nvmlDeviceGetUUID=lambda h: UUID,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * 2**30),
        nvmlDeviceGetClockInfo=lambda h, kind: clocks["now", kind],
        nvmlDeviceGetMaxClockInfo=lambda h, kind: clocks["max", kind],
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000, nvmlDeviceGetTemperature=lambda h, sensor: 41,
        nvmlDeviceGetPersistenceMode=lambda h: 1, nvmlDeviceGetMemoryBusWidth=unsupported,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: 123_456,
    )  # no nvmlDeviceGetHandleByPciBusId: an nvidia-ml-py too old for it
    return module


def test_pynvml_is_read_in_its_units_and_its_errors_become_reasons(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    telemetry = gpu_telemetry("cuda:0", identity=identity())
    assert asdict(telemetry) == {**H100, "sm_clock_mhz": 1755, "memory_bus_width_bits": None,
                                 "note": f"cuda:0 matched to NVML by UUID {UUID}; not known: memory_bus_width_bits: "
                                         "nvmlDeviceGetMemoryBusWidth: Not Supported"}
    nvml = PynvmlNvml()
    assert nvml.total_energy_mj("h") == 123_456
    with pytest.raises(NvmlCallError, match=r"^nvmlDeviceGetHandleByPciBusId: not in this nvidia-ml-py "):
        nvml.handle_by_pci_bus_id(PCI)


def test_a_missing_pynvml_or_driver_gives_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert gpu_telemetry("cuda:0", identity=identity()) == GpuTelemetry(
        note="pynvml is not installed (pip install nvidia-ml-py)")
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error=True))
    assert gpu_telemetry("cuda:0", identity=identity()) == GpuTelemetry(
        note="NVML cannot start: NVML Shared Library Not Found (no NVIDIA driver on this machine?)")


def test_the_environment_records_the_telemetry_outside_its_key():
    telemetry = gpu_telemetry("cuda:0", nvml_factory=FakeNvml(), identity=identity())
    with_gpu = replace(ENV, gpu=telemetry)
    assert with_gpu.key() == ENV.key()  # clocks and temperature drift: never part of the key
    cuda = replace(ENV, device_type="cuda", gpu_name="NVIDIA H100", gpu_memory_bytes=80 << 30, gpu_driver="550")
    assert replace(cuda, gpu=telemetry).key() == cuda.key()
    data = with_gpu.to_json()
    assert data["gpu"] == {**H100, "note": telemetry.note}
    check_environment(data, "run.json")
    assert Environment.from_json(data) == with_gpu
    assert Environment.from_json({**data, "gpu": {**data["gpu"], "new_field": 1}}) == with_gpu
    check_environment({**data, "gpu": {**data["gpu"], "power_limit_w": 700}}, "run.json")  # an int for a float
    check_environment({**data, "gpu": None}, "run.json")


@pytest.mark.parametrize(
    ("gpu", "message"),
    [
        (3, "machine_info.kvperf.gpu is 3, not object or null"),
        ({"sm_clock_mhz": "fast"}, "machine_info.kvperf.gpu.sm_clock_mhz is 'fast', not int or null"),
        ({"persistence_mode": 1}, "machine_info.kvperf.gpu.persistence_mode is 1, not bool or null"),
        ({"power_limit_w": True}, "machine_info.kvperf.gpu.power_limit_w is True, not float or null"),
    ],
)
def test_a_damaged_gpu_fingerprint_is_refused(gpu, message):
    with pytest.raises(BadInputError) as info:
        check_environment({**ENV.to_json(), "gpu": gpu}, "run.json")
    assert str(info.value).startswith(f"run.json: {message}: the environment fingerprint is damaged; ")


@pytest.mark.gpu
def test_a_real_gpu_is_described():
    import torch

    telemetry = gpu_telemetry(f"cuda:{torch.cuda.current_device()}")
    assert telemetry.name and telemetry.uuid and telemetry.driver_version, telemetry.note
    assert telemetry.memory_total_bytes and telemetry.memory_total_bytes > 0
    assert "matched to NVML by" in (telemetry.note or "")
