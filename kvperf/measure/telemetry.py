"""What the GPU a run uses says about itself, through NVML: ``GpuTelemetry``.

Decode is bound by memory bandwidth, so a GPU timing means little without the clocks the GPU ran
at, its power limit, its temperature and its memory bus. NVML (the library behind ``nvidia-smi``)
gives them; kvperf reads it through ``pynvml`` (the ``nvidia-ml-py`` package).

NVML sits behind ``Nvml``, a small protocol that ``PynvmlNvml`` implements over ``pynvml``, so that
tests drive every branch with a fake, and so that ``pynvml`` is imported only when a fingerprint is
taken, never when kvperf is imported.

Nothing here raises, and nothing warns: a missing ``pynvml``, a machine without an NVIDIA driver or
without a GPU gives a ``GpuTelemetry`` whose fields are all None and whose ``note`` says why; a call
that one GPU does not support (clocks on some boards, the memory bus width on old drivers) leaves
that field None and adds its reason to the note.

Which GPU: for ``cuda:N`` (``cuda`` meaning torch's current device) the CUDA device is matched to its
NVML device by UUID, else by PCI bus id, both from ``torch.cuda.get_device_properties``, else by
index (CUDA and NVML number GPUs alike only under ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and without
``CUDA_VISIBLE_DEVICES``); the note says which. A run on the CPU describes NVML's GPU 0, if any.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

__all__ = [
    "DEVICE_FIELDS",
    "SYSTEM_FIELDS",
    "CudaIdentity",
    "GpuTelemetry",
    "Nvml",
    "NvmlCallError",
    "NvmlUnavailable",
    "PynvmlNvml",
    "gpu_telemetry",
    "open_nvml",
    "read_telemetry",
    "resolve_gpu",
]


@dataclass(frozen=True)
class GpuTelemetry:
    """One GPU as NVML describes it when the fingerprint is taken. ``None``: not known (see ``note``)."""

    name: str | None = None
    #: NVML's UUID, ``GPU-xxxxxxxx-...``.
    uuid: str | None = None
    driver_version: str | None = None
    #: The newest CUDA version the driver supports (``nvmlSystemGetCudaDriverVersion``), e.g. ``12.4``;
    #: not the CUDA runtime torch was built with (``torch.version.cuda``).
    cuda_version: str | None = None
    memory_total_bytes: int | None = None
    #: Current clocks when the fingerprint is taken, and the most the board allows.
    sm_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    memory_clock_mhz: int | None = None
    memory_clock_max_mhz: int | None = None
    #: The enforced power limit.
    power_limit_w: float | None = None
    temperature_c: int | None = None
    persistence_mode: bool | None = None
    memory_bus_width_bits: int | None = None
    #: How the GPU was matched to the run's device, and why any field is None.
    note: str | None = None

    @classmethod
    def unavailable(cls, reason: str) -> GpuTelemetry:
        """Every field None, and the reason."""
        return cls(note=reason)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuTelemetry:
        """Read what ``dataclasses.asdict`` wrote; unknown keys are ignored, missing ones are None."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


class NvmlUnavailable(Exception):
    """NVML cannot be used here at all: no ``pynvml``, no driver, no GPU. The message says which."""


class NvmlCallError(Exception):
    """One NVML call failed (e.g. ``Not Supported`` on this GPU); the message is NVML's reason."""


class Nvml(Protocol):
    """The NVML calls kvperf makes. Device calls take a handle from one of the ``handle_by_*`` calls.
    Every call raises ``NvmlCallError`` when NVML refuses it."""

    def init(self) -> None:
        """Start NVML; raises ``NvmlUnavailable`` (no driver, no library)."""

    def shutdown(self) -> None: ...
    def device_count(self) -> int: ...
    def handle_by_index(self, index: int) -> Any: ...
    def handle_by_uuid(self, uuid: str) -> Any: ...
    def handle_by_pci_bus_id(self, bus_id: str) -> Any: ...
    def driver_version(self) -> str: ...
    def cuda_version(self) -> str: ...
    def name(self, handle: Any) -> str: ...
    def uuid(self, handle: Any) -> str: ...
    def memory_total_bytes(self, handle: Any) -> int: ...
    def sm_clock_mhz(self, handle: Any) -> int: ...
    def sm_clock_max_mhz(self, handle: Any) -> int: ...
    def memory_clock_mhz(self, handle: Any) -> int: ...
    def memory_clock_max_mhz(self, handle: Any) -> int: ...
    def power_limit_w(self, handle: Any) -> float: ...
    def temperature_c(self, handle: Any) -> int: ...
    def persistence_mode(self, handle: Any) -> bool: ...
    def memory_bus_width_bits(self, handle: Any) -> int: ...
    def total_energy_mj(self, handle: Any) -> int:
        """Energy the GPU used since the driver loaded, in millijoules (Volta and newer)."""


#: ``GpuTelemetry`` fields read from the driver, and from the device.
SYSTEM_FIELDS = ("driver_version", "cuda_version")
DEVICE_FIELDS = ("name", "uuid", "memory_total_bytes", "sm_clock_mhz", "sm_clock_max_mhz", "memory_clock_mhz",
                 "memory_clock_max_mhz", "power_limit_w", "temperature_c", "persistence_mode",
                 "memory_bus_width_bits")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PynvmlNvml:
    """``Nvml`` over ``pynvml``: its errors become ``NvmlUnavailable`` (at init) or ``NvmlCallError``."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError:
            raise NvmlUnavailable("pynvml is not installed (pip install nvidia-ml-py)") from None
        self._nvml: Any = pynvml

    def _call(self, function: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, function)(*args)
        except self._nvml.NVMLError as exc:
            raise NvmlCallError(f"{function}: {exc}") from None
        except AttributeError:  # an nvidia-ml-py too old for this call
            raise NvmlCallError(f"{function}: not in this nvidia-ml-py (pip install -U nvidia-ml-py)") from None

    def init(self) -> None:
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML cannot start: {exc} (no NVIDIA driver on this machine?)") from None

    def shutdown(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def handle_by_index(self, index: int) -> Any:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def handle_by_uuid(self, uuid: str) -> Any:
        return self._call("nvmlDeviceGetHandleByUUID", uuid)

    def handle_by_pci_bus_id(self, bus_id: str) -> Any:
        return self._call("nvmlDeviceGetHandleByPciBusId", bus_id)

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion"))

    def cuda_version(self) -> str:
        version = int(self._call("nvmlSystemGetCudaDriverVersion"))  # 12040 for 12.4
        return f"{version // 1000}.{version % 1000 // 10}"

    def name(self, handle: Any) -> str:
        return _text(self._call("nvmlDeviceGetName", handle))

    def uuid(self, handle: Any) -> str:
        return _text(self._call("nvmlDeviceGetUUID", handle))

    def memory_total_bytes(self, handle: Any) -> int:
        return int(self._call("nvmlDeviceGetMemoryInfo", handle).total)

    def _clock(self, handle: Any, kind: str, maximum: bool) -> int:
        function = "nvmlDeviceGetMaxClockInfo" if maximum else "nvmlDeviceGetClockInfo"
        return int(self._call(function, handle, getattr(self._nvml, kind)))

    def sm_clock_mhz(self, handle: Any) -> int:
        return self._clock(handle, "NVML_CLOCK_SM", maximum=False)

    def sm_clock_max_mhz(self, handle: Any) -> int:
        return self._clock(handle, "NVML_CLOCK_SM", maximum=True)

    def memory_clock_mhz(self, handle: Any) -> int:
        return self._clock(handle, "NVML_CLOCK_MEM", maximum=False)

    def memory_clock_max_mhz(self, handle: Any) -> int:
        return self._clock(handle, "NVML_CLOCK_MEM", maximum=True)

    def power_limit_w(self, handle: Any) -> float:
        return int(self._call("nvmlDeviceGetEnforcedPowerLimit", handle)) / 1000  # milliwatts

    def temperature_c(self, handle: Any) -> int:
        return int(self._call("nvmlDeviceGetTemperature", handle, self._nvml.NVML_TEMPERATURE_GPU))

    def persistence_mode(self, handle: Any) -> bool:
        return int(self._call("nvmlDeviceGetPersistenceMode", handle)) == self._nvml.NVML_FEATURE_ENABLED

    def memory_bus_width_bits(self, handle: Any) -> int:
        return int(self._call("nvmlDeviceGetMemoryBusWidth", handle))

    def total_energy_mj(self, handle: Any) -> int:
        return int(self._call("nvmlDeviceGetTotalEnergyConsumption", handle))


def open_nvml(factory: Callable[[], Nvml] | None = None) -> Nvml:
    """A started NVML (``PynvmlNvml`` unless ``factory`` gives another); ``NvmlUnavailable`` with the
    reason when it cannot start. The caller shuts it down."""
    nvml = (factory or PynvmlNvml)()
    nvml.init()
    return nvml


#: ``(uuid, pci_bus_id)`` of a CUDA device index, either None where torch can't say.
CudaIdentity = Callable[[int], tuple[str | None, str | None]]


def _cuda_index(device: str) -> int:
    """The CUDA index of ``cuda`` (torch's current device) or ``cuda:N``."""
    _, _, index = device.partition(":")
    if index:
        return int(index)
    import torch

    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def _torch_identity(index: int) -> tuple[str | None, str | None]:
    """UUID and PCI bus id of CUDA device ``index`` from torch (either None where this torch lacks it)."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    props = torch.cuda.get_device_properties(index)
    raw_uuid = getattr(props, "uuid", None)
    uuid = None if raw_uuid is None else str(raw_uuid)
    if uuid is not None and not uuid.startswith(("GPU-", "MIG-")):
        uuid = "GPU-" + uuid
    bus = getattr(props, "pci_bus_id", None)
    domain, dev = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", None)
    pci = None if bus is None or dev is None else f"{domain:08x}:{bus:02x}:{dev:02x}.0"
    return uuid, pci


def resolve_gpu(nvml: Nvml, device: str, identity: CudaIdentity | None = None) -> tuple[Any, str]:
    """The NVML handle of the GPU ``device`` (``cpu``, ``cuda`` or ``cuda:N``) runs on, and how it was
    found. ``NvmlUnavailable`` when NVML sees no GPU or cannot find this one."""
    try:
        count = nvml.device_count()
    except NvmlCallError as exc:
        raise NvmlUnavailable(f"NVML cannot count the GPUs ({exc})") from None
    if count == 0:
        raise NvmlUnavailable("NVML sees no GPU on this machine")
    if not device.startswith("cuda"):
        try:
            return nvml.handle_by_index(0), f"the run uses the {device.upper()}: NVML's GPU 0 is described"
        except NvmlCallError as exc:
            raise NvmlUnavailable(f"NVML cannot open GPU 0 ({exc})") from None
    index = _cuda_index(device)
    uuid, pci = (identity or _torch_identity)(index)
    for how, key, lookup in (("UUID", uuid, nvml.handle_by_uuid), ("PCI bus id", pci, nvml.handle_by_pci_bus_id)):
        if key is not None:
            with contextlib.suppress(NvmlCallError):
                return lookup(key), f"cuda:{index} matched to NVML by {how} {key}"
    try:
        return nvml.handle_by_index(index), (f"cuda:{index} matched to NVML by index (torch gave no UUID or PCI bus "
                                             "id NVML knows; right only under CUDA_DEVICE_ORDER=PCI_BUS_ID without "
                                             "CUDA_VISIBLE_DEVICES)")
    except NvmlCallError as exc:
        raise NvmlUnavailable(f"NVML has no GPU for cuda:{index} ({exc})") from None


def read_telemetry(nvml: Nvml, handle: Any, how: str) -> GpuTelemetry:
    """Every ``GpuTelemetry`` field of ``handle``; a call NVML refuses leaves its field None, with its
    reason in the note (after ``how``, how the GPU was found)."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    calls: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
        (name, getattr(nvml, name), ()) for name in SYSTEM_FIELDS]
    calls += [(name, getattr(nvml, name), (handle,)) for name in DEVICE_FIELDS]
    for name, call, args in calls:
        try:
            values[name] = call(*args)
        except NvmlCallError as exc:
            values[name] = None
            problems.append(f"{name}: {exc}")
    note = how + ("; not known: " + "; ".join(problems) if problems else "")
    return GpuTelemetry(**values, note=note)


def gpu_telemetry(device: str = "cuda", *, nvml_factory: Callable[[], Nvml] | None = None,
                  identity: CudaIdentity | None = None) -> GpuTelemetry:
    """The ``GpuTelemetry`` of the GPU ``device`` runs on (NVML's GPU 0 for a CPU run). Never raises:
    without NVML or a GPU every field is None and ``note`` says why.

    ``nvml_factory`` and ``identity`` stand in for ``pynvml`` and for torch's device properties in tests."""
    try:
        nvml = open_nvml(nvml_factory)
    except NvmlUnavailable as exc:
        return GpuTelemetry.unavailable(str(exc))
    try:
        handle, how = resolve_gpu(nvml, device, identity)
        return read_telemetry(nvml, handle, how)
    except NvmlUnavailable as exc:
        return GpuTelemetry.unavailable(str(exc))
    finally:
        nvml.shutdown()
