"""The energy one timed generate call used, from the hardware's own energy counter.

Two counters, read once before and once after the call (``EnergyMeter.start`` / ``stop``):

* **GPU**: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the
  driver loaded; Volta and newer) of the GPU the model runs on, found as in ``kvperf.measure.telemetry``.
  It counts the whole board, so another process on the same GPU adds to it.
* **CPU**: Linux RAPL through powercap (``/sys/class/powercap/intel-rapl:N/energy_uj``, microjoules; AMD
  Zen processors expose the same files). It counts every top-level ``package-N`` domain: the whole
  processor, idle cores and other processes included, so on a shared machine it is an upper bound of
  what the call used. The counter wraps at ``max_energy_range_uj``; one wrap between the two reads is
  undone. Since Linux 5.10 ``energy_uj`` is readable by root only, and VMs and most containers have no
  powercap at all.

Where a counter is missing, unreadable or does not advance, the energy is None and the note says why:
kvperf never estimates it (from a TDP, say). A counter is first read when the meter is made, so an
unreadable one is known before any timed call.

The harness (``kvperf.measure.harness.time_generation``) reads the counter right before its start clocks
and right after its end clocks (and after the CUDA sync before them), so the reads themselves fall outside
every timing kvperf reports; the energy covers the timed interval plus one counter read at each end.
"""

from __future__ import annotations

import contextlib
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kvperf.measure.telemetry import (
    CudaIdentity,
    Nvml,
    NvmlCallError,
    NvmlUnavailable,
    open_nvml,
    resolve_gpu,
)

__all__ = [
    "POWERCAP_ROOT",
    "EnergyCounter",
    "EnergyMeter",
    "EnergyReadError",
    "EnergyReading",
    "NvmlEnergyCounter",
    "RaplEnergyCounter",
    "energy_meter",
    "energy_summary",
]

POWERCAP_ROOT = Path("/sys/class/powercap")


class EnergyReadError(Exception):
    """A counter read failed; the message says why."""


@dataclass(frozen=True)
class EnergyReading:
    """The energy of one call, or None with the reason."""

    energy_j: float | None
    #: The counter read (``NVML total energy of GPU-...``, ``RAPL package-0``); None without one.
    source: str | None
    note: str | None = None


class EnergyCounter(Protocol):
    """A cumulative energy counter: raw readings, and the joules between two of them."""

    source: str

    def read(self) -> tuple[int, ...]:
        """The raw counter values (one per GPU or per package); ``EnergyReadError`` when unreadable."""

    def joules_between(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        """Joules used between two readings; ``EnergyReadError`` when they cannot tell."""

    def close(self) -> None: ...


class NvmlEnergyCounter:
    """NVML's total-energy counter of one GPU, in millijoules."""

    def __init__(self, nvml: Nvml, handle: Any, source: str) -> None:
        self._nvml, self._handle, self.source = nvml, handle, source

    def read(self) -> tuple[int, ...]:
        try:
            return (self._nvml.total_energy_mj(self._handle),)
        except NvmlCallError as exc:
            raise EnergyReadError(f"NVML energy counter unreadable ({exc})") from None

    def joules_between(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        if any(a < b for a, b in zip(after, before, strict=True)):
            raise EnergyReadError("NVML energy counter went backwards (driver reloaded?)")
        return sum(a - b for a, b in zip(after, before, strict=True)) / 1e3

    def close(self) -> None:
        self._nvml.shutdown()


@dataclass(frozen=True)
class _RaplDomain:
    name: str
    energy: Path
    #: Where the counter wraps, in microjoules; None where the file is unreadable.
    max_range_uj: int | None


class RaplEnergyCounter:
    """The RAPL ``package-N`` domains of powercap, in microjoules, with their wraparound."""

    def __init__(self, domains: Sequence[_RaplDomain]) -> None:
        self._domains = tuple(domains)
        self.source = "RAPL " + "+".join(d.name for d in self._domains) + " (whole processor)"

    def read(self) -> tuple[int, ...]:
        try:
            return tuple(int(d.energy.read_text()) for d in self._domains)
        except (OSError, ValueError) as exc:
            raise EnergyReadError(f"RAPL counter unreadable ({_reason(exc)})") from None

    def joules_between(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        total = 0
        for domain, b, a in zip(self._domains, before, after, strict=True):
            if a < b:  # the counter wrapped (at most once: it takes minutes to hours)
                if domain.max_range_uj is None:
                    raise EnergyReadError(f"RAPL {domain.name} wrapped and its max_energy_range_uj is unreadable")
                a += domain.max_range_uj
            total += a - b
        return total / 1e6

    def close(self) -> None:
        pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _rapl_counter(root: Path) -> RaplEnergyCounter:
    """The package domains under powercap ``root``; ``EnergyReadError`` saying why there are none."""
    if not root.is_dir():
        raise EnergyReadError(f"RAPL not readable: {root} absent (no powercap driver: a VM or a container "
                              "without it)")
    domains = []
    # Top-level zones only (intel-rapl:0, not its sub-zones intel-rapl:0:0, which the package includes).
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:
            continue
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        if not name.startswith("package"):  # psys (the platform) contains the packages: no double count
            continue
        try:
            max_range: int | None = int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            max_range = None
        domains.append(_RaplDomain(name, zone / "energy_uj", max_range))
    if not domains:
        raise EnergyReadError(f"RAPL not readable: no package domain under {root}")
    for domain in domains:  # read once now, so that an unreadable counter is known before any timed call
        try:
            int(domain.energy.read_text())
        except PermissionError:
            raise EnergyReadError(f"RAPL not readable: permission denied on {domain.energy} (root only since "
                                  "Linux 5.10: run as root, or make it readable)") from None
        except (OSError, ValueError) as exc:
            raise EnergyReadError(f"RAPL not readable: {_reason(exc)} on {domain.energy}") from None
    return RaplEnergyCounter(domains)


def _nvml_counter(device: str, nvml_factory: Callable[[], Nvml] | None,
                  identity: CudaIdentity | None) -> NvmlEnergyCounter:
    try:
        nvml = open_nvml(nvml_factory)
    except NvmlUnavailable as exc:
        raise EnergyReadError(f"no GPU energy counter: {exc}") from None
    try:
        handle, how = resolve_gpu(nvml, device, identity)
        counter = NvmlEnergyCounter(nvml, handle, f"NVML total energy ({how})")
        counter.read()
    except NvmlUnavailable as exc:
        nvml.shutdown()
        raise EnergyReadError(f"no GPU energy counter: {exc}") from None
    except EnergyReadError as exc:
        nvml.shutdown()
        raise EnergyReadError(f"this GPU has no total-energy counter: {exc} (it needs Volta or newer)") from None
    return counter


class EnergyMeter:
    """Reads one counter before and after a call (``start``, ``stop``): two reads, nothing in between.

    Made by ``energy_meter``; a meter without a counter gives None and its ``note`` at every ``stop``."""

    def __init__(self, counter: EnergyCounter | None, note: str | None = None) -> None:
        self._counter = counter
        self.note = note
        self._before: tuple[int, ...] | None = None
        self._failed: str | None = None

    @property
    def source(self) -> str | None:
        return None if self._counter is None else self._counter.source

    def start(self) -> None:
        self._before, self._failed = None, None
        if self._counter is None:
            return
        try:
            self._before = self._counter.read()
        except EnergyReadError as exc:
            self._failed = str(exc)

    def stop(self) -> EnergyReading:
        if self._counter is None:
            return EnergyReading(None, None, self.note)
        if self._before is None:
            return EnergyReading(None, self.source, self._failed or "the meter was not started")
        try:
            joules = self._counter.joules_between(self._before, self._counter.read())
        except EnergyReadError as exc:
            return EnergyReading(None, self.source, str(exc))
        if joules <= 0:
            return EnergyReading(None, self.source, "the energy counter did not advance during the call (a call "
                                                    "shorter than the counter's update interval)")
        return EnergyReading(joules, self.source)

    def close(self) -> None:
        if self._counter is not None:
            with contextlib.suppress(Exception):
                self._counter.close()

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def energy_meter(device: str, *, nvml_factory: Callable[[], Nvml] | None = None,
                 identity: CudaIdentity | None = None, powercap_root: Path | None = None) -> EnergyMeter:
    """A meter of the energy counter of ``device`` (``cpu``: RAPL; ``cuda``, ``cuda:N``: NVML). Never raises:
    without a counter its readings are None with the reason. Close it (or use it as a context manager).

    ``nvml_factory``, ``identity`` and ``powercap_root`` (default ``POWERCAP_ROOT``) stand in for ``pynvml``,
    torch's device properties and ``/sys/class/powercap`` in tests."""
    try:
        counter: EnergyCounter = _nvml_counter(device, nvml_factory, identity) if device.startswith("cuda") \
            else _rapl_counter(powercap_root or POWERCAP_ROOT)
    except EnergyReadError as exc:
        return EnergyMeter(None, str(exc))
    return EnergyMeter(counter)


def energy_summary(joules: Sequence[float | None], generated_tokens: int, note: str | None) -> dict[str, Any]:
    """A case's energy from its rounds' joules (``None``: a round not measured, ``note`` the reason):
    ``energy_j`` the median and ``energy_per_token_j`` that over the tokens of one round, when every round
    was measured; else both None, and ``energy_note`` says how many rounds were not and why."""
    measured = [j for j in joules if j is not None]
    if joules and len(measured) == len(joules):
        energy_j = statistics.median(measured)
        return {"energy_j": energy_j, "energy_per_token_j": energy_j / generated_tokens, "energy_note": None}
    # A note of merged rounds (``kvperf ab`` retries) may count rounds already: count them afresh.
    reason = re.sub(r"^\d+ of \d+ rounds not measured: ", "", note or "energy was not measured")
    if measured:
        reason = f"{len(joules) - len(measured)} of {len(joules)} rounds not measured: {reason}"
    return {"energy_j": None, "energy_per_token_j": None, "energy_note": reason}
