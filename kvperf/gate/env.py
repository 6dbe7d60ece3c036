"""The environment a result was measured in: its fingerprint, its key, and how busy the CPU was.

Timings only mean something next to the machine and the software that produced them, so every
result carries an ``Environment``: CPU model and usable cores, torch's thread count, device type,
GPU name, memory and driver, the GPU's telemetry (``gpu``: clocks, power limit, temperature, bus width;
``kvperf.measure.telemetry``, through NVML where present), the torch / transformers / Python
versions, and the git commit with a dirty flag. The plugin adds it to pytest-benchmark's
``machine_info`` (key ``kvperf``).

Not every field matters to every metric (see ``fields_that_matter``):

* the deterministic metrics (FLOPs, KV bytes, CPU peak memory) depend on the software and the
  device type only: the same torch and transformers give the same counts on any x86 or ARM runner;
* CPU peak memory depends on the hardware too (the kernels torch picks for a CPU's instruction set);
* timings depend on the machine itself: two VMs of one CPU model and size share a host with other
  tenants, and drift apart by more than any useful threshold. So a result also carries
  ``machine_id``, a salted hash of ``/etc/machine-id`` (never the raw id, nor the hostname), and
  timings are compared only between results of one machine.

The git commit and the dirty flag never matter: they are what a comparison is about. Nor does the GPU
telemetry (``gpu``): its clocks and temperature change from one moment to the next; it is there to
explain a timing, not to name the environment.

``CpuContention`` measures, around one timed round, how long this process waited for a core and how
much CPU other processes used meanwhile (Linux; see the class). On a shared runner another process
can make a round ten times slower; such a round says nothing about the code, and the comparison
leaves it out (see ``kvperf.gate.compare``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from kvperf.measure.telemetry import GpuTelemetry, gpu_telemetry

__all__ = [
    "DETERMINISTIC_FIELDS",
    "HOST_FIELDS",
    "MACHINE_ID_ENV_VAR",
    "TIMING_FIELDS",
    "Contention",
    "CpuContention",
    "Environment",
    "current_environment",
    "fields_that_matter",
    "machine_id",
    "mismatched_fields",
    "version_changes",
]

#: Fields that can change a deterministic metric (FLOP counts, KV bytes, CPU peak memory).
DETERMINISTIC_FIELDS = ("device_type", "torch_version", "transformers_version")
#: Fields of the hardware, which can change CPU peak memory and timings (GPU fields only on CUDA).
TIMING_FIELDS = ("cpu_model", "cpu_count", "torch_threads", "python_version", "machine", "system")
#: The machine itself: timings are compared only between results with the same ``machine_id``.
HOST_FIELDS = ("machine_id",)
#: Set it to the same text on runners that you have measured to time alike (a dedicated pool), to
#: give them one machine identity; it is hashed like ``/etc/machine-id``.
MACHINE_ID_ENV_VAR = "KVPERF_MACHINE_ID"
_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_MACHINE_ID_SALT = "kvperf-machine-id-v1:"
_GPU_FIELDS = ("gpu_name", "gpu_memory_bytes", "gpu_driver")


@dataclass(frozen=True)
class Environment:
    """Fingerprint of the machine and software of a run. ``None`` means "not known here"."""

    cpu_model: str
    #: CPUs this process may run on (its affinity), not the host's total.
    cpu_count: int
    #: ``torch.get_num_threads()``: intra-op threads, which change CPU timings directly.
    torch_threads: int
    machine: str
    system: str
    python_version: str
    torch_version: str
    transformers_version: str
    #: ``cpu`` or ``cuda``: the device the benchmarks ran on.
    device_type: str
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    gpu_driver: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    #: Salted hash of the machine's identity (``machine_id()``); None in results made before kvperf
    #: recorded it, which then never count as from the same machine as anything.
    machine_id: str | None = None
    #: NVML's description of the GPU the run used (NVML's GPU 0 for a CPU run), all None with the reason
    #: where there is none; None in results made before kvperf recorded it. Never part of the key.
    gpu: GpuTelemetry | None = None
    #: The roofline's ceilings (``kvperf.measure.ceilings.MachineCeilings``), measured once per pytest
    #: session: the peak memory bandwidth and how it was found (or why it is None), the measured FLOP
    #: rate, the CPU's last-level cache. Not part of the key: they describe the machine, not identify it.
    peak_bandwidth_bytes_per_s: float | None = None
    peak_bandwidth_note: str | None = None
    peak_flops_per_s: float | None = None
    peak_flops_note: str | None = None
    last_level_cache_bytes: int | None = None

    def key(self) -> str:
        """A directory name for this environment's baselines, e.g.
        ``cpu-amd-epyc-2cpu-torch2.13.0-cpu-3f9a1c0d``: readable parts, then a hash of every field
        that matters to timings, the machine's identity included, so that two environments share a
        key exactly when their timings are comparable (two VMs of one CPU model do not)."""
        hardware = self.gpu_name if self.device_type == "cuda" and self.gpu_name else self.cpu_model
        readable = f"{self.device_type}-{hardware}-{self.cpu_count}cpu-torch{self.torch_version}"
        slug = re.sub(r"[^a-z0-9.]+", "-", readable.lower()).strip("-")
        # A result without a machine identity (made before kvperf recorded one) keeps its old key.
        matter = {name: getattr(self, name) for name in fields_that_matter(self, timings=True)
                  if not (name in HOST_FIELDS and getattr(self, name) is None)}
        digest = hashlib.sha256(repr(sorted(matter.items())).encode()).hexdigest()[:8]
        return f"{slug}-{digest}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Environment:
        """Read a fingerprint written by ``to_json``; unknown fields are ignored, missing optional
        fields are None. Raises ``ValueError`` naming a missing required field."""
        known = {f.name: f for f in fields(cls)}
        missing = [name for name, f in known.items() if f.default is not None and name not in data]
        if missing:
            raise ValueError(f"environment lacks {', '.join(missing)}")
        values = {name: data[name] for name in known if name in data}
        if isinstance(values.get("gpu"), dict):
            values["gpu"] = GpuTelemetry.from_json(values["gpu"])
        return cls(**values)


def fields_that_matter(env: Environment, *, timings: bool, host: bool = True) -> tuple[str, ...]:
    """The fields two environments must share for their deterministic metrics (``timings=False``)
    or for their timings too (``timings=True``); ``host=False`` leaves out the machine's identity
    (what CPU peak memory needs: the same hardware, not the same machine)."""
    if not timings:
        return DETERMINISTIC_FIELDS
    gpu = _GPU_FIELDS if env.device_type == "cuda" else ()
    return DETERMINISTIC_FIELDS + TIMING_FIELDS + gpu + (HOST_FIELDS if host else ())


def mismatched_fields(baseline: Environment, current: Environment, *, timings: bool,
                      host: bool = True) -> list[str]:
    """``field (baseline -> current)`` for every field that matters and differs; a machine identity
    reads ``machine_id (another machine)`` or ``machine_id (not recorded in the baseline)``."""
    out = []
    for name in fields_that_matter(current, timings=timings, host=host):
        before, after = getattr(baseline, name), getattr(current, name)
        if before == after:
            continue
        if name in HOST_FIELDS:
            out.append(f"{name} (not recorded in the baseline)" if before is None else f"{name} (another machine)")
        else:
            out.append(f"{name} ({before!r} -> {after!r})")
    return out


def machine_id() -> str | None:
    """A salted SHA-256 of this machine's identity, 16 hex digits: ``$KVPERF_MACHINE_ID`` where set,
    else ``/etc/machine-id`` (systemd; ``/var/lib/dbus/machine-id`` on older systems), else the
    hostname. Only the hash is recorded: baselines get committed."""
    raw = os.environ.get(MACHINE_ID_ENV_VAR, "").strip()
    for path in _MACHINE_ID_FILES:
        if raw:
            break
        with contextlib.suppress(OSError, UnicodeDecodeError):
            raw = path.read_text().strip()
    if not raw:
        raw = "hostname:" + socket.gethostname()
    if raw == "hostname:":
        return None
    return hashlib.sha256((_MACHINE_ID_SALT + raw).encode()).hexdigest()[:16]


#: The software whose versions a comparison names when they differ, and how it names them.
_LIBRARIES = (("python_version", "Python"), ("torch_version", "torch"), ("transformers_version", "transformers"))


def version_changes(baseline: Environment, current: Environment) -> list[str]:
    """``transformers 4.57.6 -> 5.24.0`` for every library (Python, torch, transformers) whose version
    differs between two environments."""
    return [f"{label} {getattr(baseline, name)} -> {getattr(current, name)}" for name, label in _LIBRARIES
            if getattr(baseline, name) != getattr(current, name)]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5, check=False)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _git(root: Path) -> tuple[str | None, bool | None]:
    """HEAD's commit and whether tracked files differ from it; None, None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=False)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip(), dirty


def current_environment(device_type: str = "cpu", root: str | Path = ".",
                        torch_threads: int | None = None, device: str | None = None) -> Environment:
    """The fingerprint of this process: ``device_type`` is where the benchmarks run (``device``, e.g.
    ``cuda:1``, the exact device, default ``device_type``), ``root`` the directory whose git commit is
    recorded, ``torch_threads`` the intra-op threads the benchmarks use (default: torch's current setting)."""
    import torch
    import transformers

    gpu = gpu_telemetry(device or device_type)
    commit, dirty = _git(Path(root))
    return Environment(
        cpu_model=_cpu_model(),
        cpu_count=_cpu_count(),
        torch_threads=torch_threads if torch_threads is not None else torch.get_num_threads(),
        machine=platform.machine(),
        system=platform.system(),
        python_version=".".join(platform.python_version_tuple()[:2]),
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        device_type=device_type,
        gpu_name=gpu.name,
        gpu_memory_bytes=gpu.memory_total_bytes,
        gpu_driver=gpu.driver_version,
        git_commit=commit,
        git_dirty=dirty,
        machine_id=machine_id(),
        gpu=gpu,
    )


def _own_wait_ns() -> int | None:
    """Nanoseconds this process's threads have spent runnable but waiting for a core (schedstat)."""
    total, seen = 0, False
    for path in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(path.read_text().split()[1])
            seen = True
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            continue
    return total if seen else None


_CGROUP_V1 = Path("/sys/fs/cgroup/cpuacct/cpuacct.usage")
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.stat")


def _machine_cpu_ns() -> int | None:
    """CPU time of every task this container can see, in nanoseconds: the root cgroup's counter
    (exact), else ``/proc/stat`` (10 ms ticks)."""
    try:
        return int(_CGROUP_V1.read_text())
    except (OSError, ValueError):
        pass
    try:
        for line in _CGROUP_V2.read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * 1000
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle and iowait
        return busy * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Contention:
    """How busy the CPU was around one timed round; None where the kernel can't tell (not Linux)."""

    #: Seconds this process's threads waited for a core, per second of wall time.
    wait: float | None
    #: CPU seconds used by other processes per second of wall time: 1.0 is one other busy core.
    others: float | None


class CpuContention:
    """Measures ``Contention`` between ``start`` and ``stop``: a few small file reads, outside any clock.

    Two kinds of contention make a round slow for reasons that have nothing to do with the code:
    our threads waiting in the run queue behind another process (``wait``; with several OpenMP
    threads a single preempted thread stalls them all, and a round can take ten times as long), and
    another process running on the other cores (``others``): on a VM its vCPU can share a physical
    core, caches and memory bandwidth with ours, which costs 10-50% on a 2-vCPU runner without any
    waiting at all.
    """

    def __init__(self) -> None:
        self._wall_s = 0.0
        self._cpu_s = 0.0
        self._wait_ns: int | None = None
        self._machine_ns: int | None = None

    def start(self) -> None:
        self._wait_ns = _own_wait_ns()
        self._machine_ns = _machine_cpu_ns()
        self._cpu_s = time.process_time()
        self._wall_s = time.perf_counter()

    def stop(self) -> Contention:
        wall_s = time.perf_counter() - self._wall_s
        cpu_s = time.process_time() - self._cpu_s
        wait_ns, machine_ns = _own_wait_ns(), _machine_cpu_ns()
        if wall_s <= 0:
            return Contention(None, None)
        wait = (wait_ns - self._wait_ns) / 1e9 / wall_s \
            if wait_ns is not None and self._wait_ns is not None else None
        others = max(0.0, ((machine_ns - self._machine_ns) / 1e9 - cpu_s) / wall_s) \
            if machine_ns is not None and self._machine_ns is not None else None
        return Contention(wait=wait, others=others)
