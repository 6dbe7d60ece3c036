"""Out of memory: recognise it, free what the failed case held, and say what did not fit.

A case that does not fit is a fact about the machine, not a bug: under pytest it is skipped with its
size in the reason and the session goes on; ``kvperf run`` says so in one line (exit 5). It shows up
in three ways:

* CUDA: ``torch.cuda.OutOfMemoryError`` (recent torch also exports it as ``torch.OutOfMemoryError``, the
  same class; kvperf uses the older name, which older torch releases have too). The tensors
  of the failed call stay referenced from the traceback's frames, and the caching allocator keeps the
  freed blocks for itself, so both are released before the next case runs.
* CPU: torch's allocator raises a ``RuntimeError`` whose message holds
  ``DefaultCPUAllocator: can't allocate memory`` (``not enough memory`` on Windows).
* CPU, in Python code: ``MemoryError``.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from kvperf.errors import OutOfMemoryError
from kvperf.spec import GenerationSpec

__all__ = ["CPU_ALLOCATOR_MESSAGES", "is_out_of_memory", "out_of_memory_as_error", "release_memory",
           "requested_size"]

#: What torch's CPU allocator says when an allocation fails (Linux and macOS, then Windows).
CPU_ALLOCATOR_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure of torch (CPU or CUDA) or of Python."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in CPU_ALLOCATOR_MESSAGES)


def requested_size(spec: GenerationSpec, dtype: str, device: str) -> str:
    """``batch 4 x (prompt 128 + 32 new tokens), float32 on cpu``: what a case asks of memory."""
    return (f"batch {spec.batch_size} x (prompt {spec.prompt_len} + {spec.new_tokens} new tokens), "
            f"{dtype} on {device}")


def release_memory(device: str | torch.device) -> None:
    """Collect garbage, and on CUDA hand the caching allocator's free blocks back to the device."""
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextmanager
def out_of_memory_as_error(what: str, device: str | torch.device, hint: str = "") -> Iterator[None]:
    """Turn an out-of-memory failure of the block into ``OutOfMemoryError("out of memory for <what>")``
    (then ``: <hint>``), after freeing what the block held. Any other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        # The finished frames of the failed call still reference its tensors (and keep them alive as
        # long as the exception does): clear them, then let the allocator give the memory back.
        traceback.clear_frames(exc.__traceback__)
        release_memory(device)
        message = f"out of memory for {what}" + (f": {hint}" if hint else "")
        raise OutOfMemoryError(message) from None
