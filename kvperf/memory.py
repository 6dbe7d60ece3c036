"""Peak memory of a generate call: allocator statistics on CUDA, live tensor bytes on CPU.

On CUDA the caching allocator keeps exact statistics: reset the peak, run, read
``max_memory_allocated``. That includes the weights, which are allocated already.

On CPU there is no such counter, and the RSS of the process is useless at this scale: the glibc
allocator keeps freed pages, Python and torch allocate beside the model, and the number changes from
run to run. kvperf counts instead the bytes of every tensor storage that is alive, at every aten
operation, through a ``TorchDispatchMode``: a storage is counted when an operation first returns it
and uncounted when it is freed (a finaliser on its storage). Peak memory is the bytes of the model's
parameters and buffers plus the highest count reached during the call. The same case gives the same
number on every run, which is what a regression gate needs. It does not see scratch buffers that a
kernel allocates and frees inside one operation, nor memory outside torch tensors.

The CPU measure runs every operation through Python, so the harness takes it in a separate, untimed
pass.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveTensorBytes", "cuda_peak_memory_bytes", "model_bytes", "peak_memory_bytes"]

T = TypeVar("T")


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each storage once, so tied weights count once)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class LiveTensorBytes(TorchDispatchMode):  # type: ignore[misc]
    """Counts the bytes of CPU tensor storages created under it that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._sizes: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._sizes:  # a view, an in-place result, or already counted
                continue
            self._sizes[key] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            # torch keeps a storage's Python object alive as long as the storage itself, so the
            # finaliser runs exactly when the memory is given back.
            weakref.finalize(storage, self._release, key)
        return out


def cuda_peak_memory_bytes(fn: Callable[[], T], device: torch.device) -> tuple[T, int]:
    """Run ``fn`` and return its result and the allocator's peak bytes on ``device`` during it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    return result, int(torch.cuda.max_memory_allocated(device))


def peak_memory_bytes(fn: Callable[[], T], model: nn.Module) -> tuple[T, int]:
    """Run ``fn`` once and return its result and the peak memory it needed, on the model's device."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return cuda_peak_memory_bytes(fn, device)
    with LiveTensorBytes() as counter:
        result = fn()
    return result, model_bytes(model) + counter.peak_bytes
