"""Out of memory: what counts as one, what the error says, and that the failed case's memory is freed."""

from __future__ import annotations

import weakref

import pytest
import torch

import kvperf.measure.oom
from kvperf.errors import EXIT_OUT_OF_MEMORY, OutOfMemoryError
from kvperf.measure.oom import is_out_of_memory, out_of_memory_as_error, release_memory, requested_size
from kvperf.spec import GenerationSpec

#: What torch 2.x's CPU allocator raises on Linux when an allocation fails.
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 137438953472 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize(("exc", "expected"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), True),
    (RuntimeError(CPU_OOM), True),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."), True),
    (MemoryError(), True),
    (RuntimeError("shape '[2, 3]' is invalid for input of size 5"), False),
    (ValueError("can't allocate memory"), False),
])
def test_what_counts_as_out_of_memory(exc: BaseException, expected: bool):
    assert is_out_of_memory(exc) is expected


def test_the_error_names_the_requested_size_and_exits_5():
    spec = GenerationSpec(batch_size=64, prompt_len=4096, new_tokens=128)
    with pytest.raises(OutOfMemoryError) as raised, \
            out_of_memory_as_error(requested_size(spec, "bfloat16", "cuda:0"), "cpu", hint="use a smaller --batch"):
        raise RuntimeError(CPU_OOM)
    assert str(raised.value) == ("out of memory for batch 64 x (prompt 4096 + 128 new tokens), bfloat16 on cuda:0: "
                                 "use a smaller --batch")
    assert raised.value.exit_code == EXIT_OUT_OF_MEMORY == 5


def test_other_errors_pass_unchanged():
    with pytest.raises(RuntimeError, match="invalid for input"), out_of_memory_as_error("x", "cpu"):
        raise RuntimeError("shape '[2, 3]' is invalid for input of size 5")


def test_the_failed_call_s_tensors_are_freed():
    """The frames of the failed call hold its tensors for as long as the error lives: they are cleared."""
    refs: list[weakref.ref[torch.Tensor]] = []

    def generate() -> None:
        activations = torch.zeros(1024)
        refs.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(OutOfMemoryError) as raised, out_of_memory_as_error("x", "cpu"):
        generate()
    assert raised.value.__context__ is not None  # still chained, and yet:
    assert refs[0]() is None


def test_cuda_memory_goes_back_to_the_device(monkeypatch: pytest.MonkeyPatch):
    emptied: list[bool] = []
    monkeypatch.setattr(kvperf.measure.oom.torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(kvperf.measure.oom.torch.cuda, "empty_cache", lambda: emptied.append(True))
    release_memory("cpu")
    assert emptied == []
    release_memory("cuda:0")
    assert emptied == [True]
