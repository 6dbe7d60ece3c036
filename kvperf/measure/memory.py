"""Peak memory of a generate call, and what it was made of: allocator statistics on CUDA, storages
allocated during the call on CPU.

On CUDA the caching allocator keeps exact statistics: read what is allocated, reset the peak, run,
read ``max_memory_allocated``. The call's own peak is the difference.

On CPU there is no such counter, and the RSS of the process is useless at this scale: the glibc
allocator keeps freed pages, Python and torch allocate beside the model, and the number changes from
run to run. kvperf counts instead the bytes of every tensor storage that the call allocates and that
is still alive, at every aten operation, through a ``TorchDispatchMode``. A storage is counted when
an operation returns it *and none of the operation's inputs has it*, and uncounted when it is freed
(a finaliser on its storage). The input rule matters: ``F.linear`` returns ``aten.t(weight)``, a view
of a weight that existed before the call, and GPT-2's LM head is a view of the tied embedding. Counted
as new, such views were never released (the weight never dies) and were counted a second time through
the weights: the old measure was 36-52% too high. The one exception is ``aten.lift_fresh``, which
hands a constant that ``torch.tensor(...)`` built outside the dispatcher to the operations: it is new.

``tests/test_memory_trust.py`` checks the result against the allocator itself, as
``torch.profiler.profile(profile_memory=True)`` records it: the two agree to within
``SCRATCH_TOLERANCE_BYTES``, the size of scratch buffers that a kernel allocates and frees inside one
operation (the dispatcher never sees those; the largest difference measured over every preset and
cache mode was 12 bytes). The same case gives the same number on every run, which is what a
regression gate needs. Memory outside torch tensors is not counted.

Peak memory is reported in parts (``PeakMemory``), so that a user sees what the cache costs:

* ``weights_bytes``: the model's parameters and buffers, each storage once;
* ``peak_above_weights_bytes``: what the call itself had allocated and alive at its peak;
* of that, ``peak_kv_cache_bytes``: the storages the model's cache held at that moment (the cache is
  the one that the model and its modules are given, see ``_CacheWatch``), and
  ``peak_activations_bytes``: everything else (activations, logits, masks, the output ids).

The CPU measure runs every operation through Python, so the harness takes it in a separate, untimed
pass.

**A model on several devices** (a device map, ``kvperf.device_map``): the peak is measured on every
device the model uses (``kvperf.measure.devices.model_devices``), each in its own way, in one call:
the allocator's peak on every GPU, the live storages on the CPU (all CPU storages: modules that a
device map splits between CPU entries are one device, ``cpu``). ``PeakMemory`` keeps the parts per
device (``weights_bytes_by_device``, ``peak_above_weights_bytes_by_device``); the totals are their
sums. The devices need not peak at the same moment, so the total is the sum of each device's own
peak: what the devices must each hold, not a snapshot. Weights that accelerate offloaded (a
parameter on ``meta``) count on the device their map entry names when that is ``cpu`` (accelerate
keeps them in host memory and copies each block to its GPU for the block's forward, a copy that the
GPU's allocator peak sees); weights offloaded to ``disk``, or on ``meta`` with no entry, are not
counted, and ``note`` says how many bytes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kvperf.kv.kv_size import cache_tensors, returned_cache
from kvperf.measure.devices import device_name, model_devices, synchronize

__all__ = [
    "SCRATCH_TOLERANCE_BYTES",
    "LiveTensorBytes",
    "PeakMemory",
    "allocator_peak_bytes",
    "cuda_peak_memory_bytes",
    "measure_peak",
    "model_bytes",
    "model_bytes_by_device",
    "peak_memory_bytes",
]

T = TypeVar("T")

#: Most bytes by which the CPU measure may fall short of the allocator's own peak: scratch buffers a
#: kernel allocates and frees inside one operation. Measured at most 12 bytes (``benchmarks/
#: memory_study.py``, every preset and cache mode); the trust tests allow this much.
SCRATCH_TOLERANCE_BYTES = 64

_LIFT_FRESH = torch.ops.aten.lift_fresh.default


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each storage once, so tied weights count once), on
    every device; see ``model_bytes_by_device``."""
    return sum(model_bytes_by_device(model)[0].values())


def _map_target(hf_map: Mapping[str, Any], name: str) -> str | None:
    """The device-map value of the module that holds tensor ``name``: the longest key that is the
    module or one of its parents (``""`` is the whole model)."""
    owners = [key for key in hf_map if key == "" or name == key or name.startswith(f"{key}.")]
    if not owners:
        return None
    target = hf_map[max(owners, key=len)]
    return target if target in ("disk", "meta") else device_name(target)


def model_bytes_by_device(model: nn.Module) -> tuple[dict[str, int], int]:
    """Bytes of the model's parameters and buffers per device (each storage once), and the bytes it was
    not able to place: weights that accelerate offloaded to ``disk`` or whose device is unknown.

    A weight on ``meta`` that the model's ``hf_device_map`` offloaded to ``cpu`` is held in host memory
    by accelerate's hooks: its bytes count on ``cpu``."""
    seen: dict[tuple[str, int], int] = {}
    offloaded: dict[int, tuple[str | None, int]] = {}
    hf_map = getattr(model, "hf_device_map", None)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type == "meta":
            target = _map_target(hf_map, name) if isinstance(hf_map, dict) else None
            offloaded[id(tensor)] = (target, tensor.numel() * tensor.element_size())
            continue
        storage = tensor.untyped_storage()
        seen[(device_name(tensor.device), storage.data_ptr())] = storage.nbytes()
    by_device: dict[str, int] = {}
    for (device, _), nbytes in seen.items():
        by_device[device] = by_device.get(device, 0) + nbytes
    uncounted = 0
    for target, nbytes in offloaded.values():
        if target == "cpu":
            by_device["cpu"] = by_device.get("cpu", 0) + nbytes
        else:
            uncounted += nbytes
    return by_device, uncounted


@dataclass(frozen=True)
class PeakMemory:
    """The peak memory of one call and its parts, in bytes.

    ``peak_kv_cache_bytes`` and ``peak_activations_bytes`` are ``None`` where kvperf cannot attribute
    the peak (CUDA: the allocator keeps no record of which tensors were alive at its peak); ``note``
    then says why."""

    weights_bytes: int
    peak_above_weights_bytes: int
    peak_kv_cache_bytes: int | None
    peak_activations_bytes: int | None
    #: How the peak was measured: ``cpu-storages`` (live storages allocated during the call) or
    #: ``cuda-allocator`` (``torch.cuda.max_memory_allocated``).
    method: str
    note: str | None = None
    #: The weights and the call's own peak on each device the model uses (``cpu``, ``cuda:0``, ...);
    #: ``weights_bytes`` and ``peak_above_weights_bytes`` are their sums. Empty when not known per device.
    weights_bytes_by_device: Mapping[str, int] = field(default_factory=dict)
    peak_above_weights_bytes_by_device: Mapping[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Weights plus the call's own peak: the ``peak_memory_bytes`` of a result."""
        return self.weights_bytes + self.peak_above_weights_bytes

    @property
    def total_bytes_by_device(self) -> dict[str, int]:
        """Weights plus the call's own peak, per device: the ``peak_memory_bytes_by_device`` of a result."""
        devices = [*self.weights_bytes_by_device, *self.peak_above_weights_bytes_by_device]
        return {d: self.weights_bytes_by_device.get(d, 0) + self.peak_above_weights_bytes_by_device.get(d, 0)
                for d in dict.fromkeys(devices)}

    def summary(self) -> dict[str, Any]:
        """Flat JSON values for a result's ``extra_info``."""
        return {"peak_memory_bytes": self.total_bytes, "weights_bytes": self.weights_bytes,
                "peak_above_weights_bytes": self.peak_above_weights_bytes,
                "peak_kv_cache_bytes": self.peak_kv_cache_bytes,
                "peak_activations_bytes": self.peak_activations_bytes,
                "peak_memory_method": self.method, "peak_memory_note": self.note,
                "peak_memory_bytes_by_device": self.total_bytes_by_device}


class LiveTensorBytes(TorchDispatchMode):  # type: ignore[misc]
    """Counts the bytes of the CPU tensor storages allocated under it that are still alive, and their peak.

    ``attribute`` (optional) returns the storages that belong to the KV cache right now (their
    ``data_ptr``); it is called at every new peak, and ``peak_attributed_bytes`` is the bytes of those
    storages that were counted and alive at the peak."""

    def __init__(self, attribute: Callable[[], set[int]] | None = None) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_attributed_bytes = 0
        self._sizes: dict[int, int] = {}
        self._attribute = attribute

    def _release(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key, 0)

    def _count(self, storage: torch.UntypedStorage, key: int, nbytes: int) -> None:
        self._sizes[key] = nbytes
        self.live_bytes += nbytes
        # torch keeps a storage's Python object alive as long as the storage itself, so the
        # finaliser runs exactly when the memory is given back.
        weakref.finalize(storage, self._release, key)
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            if self._attribute is not None:
                self.peak_attributed_bytes = sum(self._sizes.get(k, 0) for k in self._attribute())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        # Storages the operation was given: what it returns on them (a view, an in-place or ``out=``
        # result) was not allocated by it. ``lift_fresh`` is given a constant built outside the
        # dispatcher, which is new memory all the same.
        given = set() if func is _LIFT_FRESH else {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in given or key in self._sizes:
                continue
            self._count(storage, key, nbytes)
        return out


class _CacheWatch:
    """Keeps the cache that the model's modules are given, to tell which storages are the cache's at
    any moment.

    Every module is watched, not only the model's forward: ``generate`` passes its cache to the
    forward on most releases, but on some (5.0) it passes none for the prefill, and the model builds
    its ``DynamicCache`` inside its forward and hands it to its layers (positionally to GPT-2's blocks,
    by keyword to their attention)."""

    def __init__(self) -> None:
        self.cache: Any = None

    def hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        from transformers.cache_utils import Cache

        cache = returned_cache(kwargs)
        if cache is None:
            cache = next((arg for arg in args if isinstance(arg, Cache)), None)
        if cache is not None:
            self.cache = cache

    def storages(self) -> set[int]:
        return {t.untyped_storage().data_ptr() for t in _tensors(self.cache)}


def _tensors(cache: Any) -> Iterator[torch.Tensor]:
    return cache_tensors(cache) if cache is not None else iter(())


def cuda_peak_memory_bytes(fn: Callable[[], T], device: torch.device) -> tuple[T, int]:
    """Run ``fn`` and return its result and the allocator's peak bytes on ``device`` above what was
    allocated when it started."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    return result, int(torch.cuda.max_memory_allocated(device)) - int(before)


_CUDA_NOTE = "the CUDA allocator does not record which tensors were alive at its peak"


def measure_peak(fn: Callable[[], T], model: nn.Module) -> tuple[T, PeakMemory]:
    """Run ``fn`` (a call of ``model``, e.g. a ``generate``) once; return its result and its peak memory,
    per device and in total (every device ``model_devices`` names, in one call)."""
    devices = model_devices(model)
    weights, uncounted = model_bytes_by_device(model)
    gpus = [d for d in devices if d.type == "cuda"]
    on_cpu = any(d.type == "cpu" for d in devices)
    synchronize(gpus)
    before = {d: int(torch.cuda.memory_allocated(d)) for d in gpus}
    for d in gpus:
        torch.cuda.reset_peak_memory_stats(d)
    counter: LiveTensorBytes | None = None
    if on_cpu:
        result, counter = _count_cpu_storages(fn, model)
    else:
        result = fn()
    synchronize(gpus)
    above = {device_name(d): int(torch.cuda.max_memory_allocated(d)) - before[d] for d in gpus}
    if counter is not None:
        above = {"cpu": counter.peak_bytes, **above}
    notes = [_CUDA_NOTE] if gpus else []
    if uncounted:
        notes.append(f"{uncounted} bytes of weights offloaded to disk (or on the meta device with no device-map "
                     "entry) are not counted")
    kv = counter.peak_attributed_bytes if counter is not None and not gpus else None
    method = "+".join((["cuda-allocator"] if gpus else []) + (["cpu-storages"] if on_cpu else []))
    return result, PeakMemory(
        weights_bytes=sum(weights.values()), peak_above_weights_bytes=sum(above.values()),
        peak_kv_cache_bytes=kv, peak_activations_bytes=None if kv is None else sum(above.values()) - kv,
        method=method, note="; ".join(notes) or None,
        weights_bytes_by_device={d: weights.get(d, 0) for d in dict.fromkeys([*above, *weights])},
        peak_above_weights_bytes_by_device={d: above.get(d, 0) for d in dict.fromkeys([*above, *weights])})


def _count_cpu_storages(fn: Callable[[], T], model: nn.Module) -> tuple[T, LiveTensorBytes]:
    """Run ``fn`` under ``LiveTensorBytes``, attributing the storages of the cache the model is given."""
    watch = _CacheWatch()
    handles = [module.register_forward_pre_hook(watch.hook, with_kwargs=True) for module in model.modules()]
    try:
        with LiveTensorBytes(attribute=watch.storages) as counter:
            result = fn()
    finally:
        for handle in handles:
            handle.remove()
    return result, counter


def allocator_peak_bytes(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` under ``torch.profiler`` with memory profiling and return its result and the highest
    total that the CPU allocator had handed out above what it held when ``fn`` started.

    This is the allocator's own record of every allocation and free, scratch buffers included: an
    independent check of ``LiveTensorBytes`` (``tests/test_trust.py``), too slow and too noisy on
    stderr to be kvperf's measure."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]  # type: ignore[attr-defined]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return result, peak


def peak_memory_bytes(fn: Callable[[], T], model: nn.Module) -> tuple[T, int]:
    """Run ``fn`` once and return its result and the peak memory it needed, weights included."""
    result, peak = measure_peak(fn, model)
    return result, peak.total_bytes
