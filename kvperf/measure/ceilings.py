"""The machine's ceilings for the roofline: its peak memory bandwidth and, where measured, its FLOP rate.

* **GPU**: NVML's maximum memory clock x 1e6 x the bus width / 8 x 2, double data rate
  (``gpu_peak_bandwidth``); where NVML gives neither number, the vendor's published figure for the
  device's name (``PUBLISHED_BANDWIDTH_BYTES_PER_S``, each with its source), else None with the reason.
  The two numbers come from the GPU telemetry (``kvperf.measure.telemetry.GpuTelemetry`` or its JSON
  dict in the environment), read by field name.
* **CPU**: a STREAM-like triad ``a = b + s * c`` with torch over float32 arrays of 4 times the
  last-level cache each (STREAM's own rule, so that no cache holds them), the best of 5 passes after
  one that faults the pages in, counting bytes as STREAM does: 3 arrays per pass, write-allocate
  traffic not counted. It runs with the torch threads that the benchmarks use, so it is the bandwidth
  those threads can reach, not the socket's. Under a second on a 2-vCPU VM; measured once per pytest
  session and recorded in the environment of the results.
* **Compute**: the best float32 FLOP rate of a square matrix multiply, measured beside the triad. On
  CPU this is what the benchmarks' float32 GEMMs can reach; bfloat16 and GPU tensor cores differ.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from kvperf.errors import UsageError

__all__ = [
    "PUBLISHED_BANDWIDTH_BYTES_PER_S",
    "SKIP_ENV_VAR",
    "MachineCeilings",
    "StreamResult",
    "gpu_peak_bandwidth",
    "measure_ceilings",
    "measure_matmul_flops",
    "measure_stream",
    "stream_bytes",
    "stream_numel",
]

#: Test-only: set (to anything but 0) by kvperf's own test suite, whose dozens of pytest sessions would
#: each spend a second on the triad. The ceilings are then None, and their notes say so. Never set it in
#: a real run.
SKIP_ENV_VAR = "KVPERF_TEST_SKIP_CEILINGS"

StreamKernel = Literal["copy", "scale", "add", "triad"]

#: Arrays STREAM's kernels read and write per element: copy ``a = b``, scale ``a = s*b``, add
#: ``a = b + c``, triad ``a = b + s*c`` (STREAM counts each array once, write-allocate traffic not).
_STREAM_ARRAYS: dict[str, int] = {"copy": 2, "scale": 2, "add": 3, "triad": 3}

#: Published peak memory bandwidth of GPUs whose NVML may not report a memory clock or bus width, keyed
#: by the name NVML reports. Each figure is the vendor's datasheet value (decimal units).
PUBLISHED_BANDWIDTH_BYTES_PER_S: dict[str, float] = {
    # NVIDIA T4 datasheet: "GPU Memory Bandwidth 320+ GB/s"
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf
    "Tesla T4": 320e9,
    # NVIDIA A10 datasheet: "GPU memory bandwidth 600 GB/s"
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf
    "NVIDIA A10": 600e9,
    # NVIDIA L4 datasheet: "GPU memory bandwidth 300 GB/s"
    # https://www.nvidia.com/en-us/data-center/l4/
    "NVIDIA L4": 300e9,
    # NVIDIA A100 datasheet: 40GB SXM 1,555 GB/s; 80GB SXM 2,039 GB/s; 80GB PCIe 1,935 GB/s
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    "NVIDIA A100-SXM4-40GB": 1555e9,
    "NVIDIA A100-SXM4-80GB": 2039e9,
    "NVIDIA A100 80GB PCIe": 1935e9,
    # NVIDIA H100 datasheet: H100 SXM 3.35 TB/s, H100 PCIe 2 TB/s
    # https://www.nvidia.com/en-us/data-center/h100/
    "NVIDIA H100 80GB HBM3": 3.35e12,
    "NVIDIA H100 PCIe": 2.0e12,
    # NVIDIA H200 datasheet: "GPU Memory Bandwidth 4.8TB/s"
    # https://www.nvidia.com/en-us/data-center/h200/
    "NVIDIA H200": 4.8e12,
}



def stream_bytes(kernel: StreamKernel, numel: int, itemsize: int) -> int:
    """Bytes one pass of a STREAM kernel moves, counted as STREAM does: each array read or written
    once (``copy``/``scale``: 2 arrays, ``add``/``triad``: 3), write-allocate traffic not counted."""
    if kernel not in _STREAM_ARRAYS:
        raise UsageError(f"unknown STREAM kernel {kernel!r}: use one of {', '.join(_STREAM_ARRAYS)}")
    return _STREAM_ARRAYS[kernel] * numel * itemsize


@dataclass(frozen=True)
class StreamResult:
    """Passes of one STREAM kernel: the bytes each moves and their times."""

    kernel: str
    numel: int
    bytes_per_pass: int
    pass_times_s: tuple[float, ...]

    @property
    def best_bandwidth_bytes_per_s(self) -> float:
        """STREAM's own figure: the bytes over the fastest pass."""
        return self.bytes_per_pass / min(self.pass_times_s)

    @property
    def median_bandwidth_bytes_per_s(self) -> float:
        return self.bytes_per_pass / statistics.median(self.pass_times_s)


def _last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache Linux reports (``/sys/devices/system/cpu/cpu0/cache``); None elsewhere."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = path.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def stream_numel(itemsize: int = 4) -> int:
    """Elements per array: 4 times the last-level cache (STREAM asks for at least 4 times), at least 64 MiB
    and at most 256 MiB an array, so that the caches cannot hold the arrays."""
    llc = _last_level_cache_bytes() or 32 * 2**20
    return min(max(4 * llc, 64 * 2**20), 256 * 2**20) // itemsize


def measure_stream(kernel: StreamKernel = "triad", *, numel: int | None = None, passes: int = 5,
                   device: str | torch.device = "cpu") -> StreamResult:
    """Time ``passes`` passes of a STREAM kernel with torch (float32, out= so nothing is allocated in
    the timed pass), after one untimed pass that faults the pages in."""
    count = numel if numel is not None else stream_numel()
    dev = torch.device(device)
    a = torch.empty(count, dtype=torch.float32, device=dev)
    b = torch.full((count,), 1.0, dtype=torch.float32, device=dev)
    c = torch.full((count,), 2.0, dtype=torch.float32, device=dev)
    scalar = 3.0

    def one_pass() -> None:
        if kernel == "copy":
            a.copy_(b)
        elif kernel == "scale":
            torch.mul(b, scalar, out=a)
        elif kernel == "add":
            torch.add(b, c, out=a)
        else:
            torch.add(b, c, alpha=scalar, out=a)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for index in range(passes + 1):
        sync()
        start = time.perf_counter()
        one_pass()
        sync()
        if index:  # the first pass touches fresh pages: the OS, not the memory, sets its time
            times.append(time.perf_counter() - start)
    return StreamResult(kernel, count, stream_bytes(kernel, count, a.element_size()), tuple(times))


def measure_matmul_flops(n: int = 1024, repeats: int = 4, device: str | torch.device = "cpu") -> float:
    """The best float32 FLOP rate of an ``n x n`` matrix multiply (``2 n^3`` FLOPs), after a warm-up call."""
    dev = torch.device(device)
    x = torch.randn(n, n, device=dev)
    y = torch.randn(n, n, device=dev)
    out = torch.empty(n, n, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    best = math.inf
    for index in range(repeats + 1):
        sync()
        start = time.perf_counter()
        torch.mm(x, y, out=out)
        sync()
        if index:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _field(telemetry: Any, name: str) -> Any:
    """A field of a ``GpuTelemetry`` (``kvperf.measure.telemetry``) or of its JSON dict."""
    if telemetry is None:
        return None
    if isinstance(telemetry, Mapping):
        return telemetry.get(name)
    return getattr(telemetry, name, None)


def gpu_peak_bandwidth(memory_clock_max_mhz: float | None, memory_bus_width_bits: int | None,
                       name: str | None) -> tuple[float | None, str]:
    """``(peak bytes/s, how it was found or why it is None)`` of a GPU: NVML's maximum memory clock x
    1e6 x bus width / 8 x 2 (double data rate), or the published figure for ``name``
    (``PUBLISHED_BANDWIDTH_BYTES_PER_S``) where NVML gives neither number."""
    if memory_clock_max_mhz and memory_bus_width_bits and memory_clock_max_mhz > 0 and memory_bus_width_bits > 0:
        peak = memory_clock_max_mhz * 1e6 * memory_bus_width_bits / 8 * 2
        return peak, (f"NVML: max memory clock {memory_clock_max_mhz:g} MHz x {memory_bus_width_bits} bit bus / 8 "
                      "x 2 (double data rate)")
    if name in PUBLISHED_BANDWIDTH_BYTES_PER_S:
        return PUBLISHED_BANDWIDTH_BYTES_PER_S[name], (f"published datasheet figure for {name} (NVML gave no "
                                                       "memory clock or bus width)")
    return None, (f"NVML gave no memory clock or bus width for {name or 'this GPU'}, and kvperf has no published "
                  "figure for it: add one to kvperf.measure.ceilings.PUBLISHED_BANDWIDTH_BYTES_PER_S")


@dataclass(frozen=True)
class MachineCeilings:
    """The machine's roofs: peak memory bandwidth and, where measured, the FLOP rate; None with the reason."""

    peak_bandwidth_bytes_per_s: float | None
    peak_bandwidth_note: str
    peak_flops_per_s: float | None = None
    peak_flops_note: str = "not measured"
    #: The CPU's largest cache: a decode step whose bytes fit in it reads them from the cache, not from
    #: the memory, and can pass the memory's peak. None on GPUs and where Linux does not say.
    last_level_cache_bytes: int | None = None

    def environment_fields(self) -> dict[str, Any]:
        """The fields ``kvperf.gate.env.Environment`` records them under."""
        return asdict(self)

    @classmethod
    def from_environment(cls, env: Mapping[str, Any]) -> MachineCeilings:
        """The ceilings a result file's environment (``machine_info.kvperf``) recorded."""
        llc = env.get("last_level_cache_bytes")
        return cls(_positive(env, "peak_bandwidth_bytes_per_s"),
                   str(env.get("peak_bandwidth_note") or "not recorded in this result file"),
                   _positive(env, "peak_flops_per_s"),
                   str(env.get("peak_flops_note") or "not recorded in this result file"),
                   llc if isinstance(llc, int) and not isinstance(llc, bool) and llc > 0 else None)


def measure_ceilings(device: str | torch.device = "cpu", gpu: Any = None,
                     gpu_name: str | None = None) -> MachineCeilings:
    """The ceilings of ``device``. CPU: a STREAM triad and a float32 matmul, timed here (about a second)
    with torch's current thread count. CUDA: the peak bandwidth from ``gpu`` (a ``GpuTelemetry`` of
    ``kvperf.measure.telemetry`` or its JSON dict: ``memory_clock_max_mhz``, ``memory_bus_width_bits``,
    ``name``; ``gpu_name`` where it has no name) and a float32 matmul on the GPU."""
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if os.environ.get(SKIP_ENV_VAR, "") not in ("", "0"):
        skipped = f"not measured: {SKIP_ENV_VAR} is set (kvperf's own tests)"
        return MachineCeilings(None, skipped, None, skipped)
    if dev.type == "cuda":
        peak, note = gpu_peak_bandwidth(_field(gpu, "memory_clock_max_mhz"), _field(gpu, "memory_bus_width_bits"),
                                        _field(gpu, "name") or gpu_name)
        flops = measure_matmul_flops(4096, 4, dev)
        return MachineCeilings(peak, note, flops, "best of 4 float32 4096x4096 matmuls on the GPU, at torch's "
                                                  "float32 matmul precision; bfloat16 tensor cores reach more")
    if dev.type != "cpu":
        return MachineCeilings(None, f"no peak bandwidth for device type {dev.type!r}",
                               None, f"not measured on {dev.type!r}")
    stream = measure_stream("triad")
    flops = measure_matmul_flops(1024, 3, dev)
    return MachineCeilings(
        stream.best_bandwidth_bytes_per_s,
        f"STREAM triad with torch, {threads} thread(s): best of {len(stream.pass_times_s)} passes over 3 float32 "
        f"arrays of {stream.numel * 4 / 2**20:.0f} MiB (median pass {stream.median_bandwidth_bytes_per_s / 1e9:.2f} "
        "GB/s); the bandwidth these threads reach, not the socket's",
        flops, f"best of 3 float32 1024x1024 matmuls, {threads} thread(s)", _last_level_cache_bytes())


def _positive(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return None
