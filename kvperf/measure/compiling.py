"""Compilation, kept out of the timed rounds: the call that compiles is a warm-up, timed apart, and
every timed call is checked for recompilation.

``torch.compile`` compiles a frame the first time it runs it with new shapes or guards; that can take
seconds to a minute on a CPU (inductor writes and builds C++). A timed round that included it would
report the compiler, not the model. So a compiled case first makes one untimed call and reports how
long it took (``compile_s``: the wall time of that whole call, compilation included, which is how
long a user waits for the first compiled ``generate``), and then counts, around every timed call, the
frames TorchDynamo tried to compile (``torch._dynamo.utils.counters["frames"]["total"]``): any above 0
are recompilations inside a timed round, and are reported, not hidden.

Why TorchDynamo is reset before that call: it recompiles a function at most ``recompile_limit`` (8)
times per process and then runs it eagerly for good, without an error. A session of many compiled
cases (dtypes, batch sizes, models) would pass that limit and time eager code under the name
``compiled``. After the reset each case compiles its own frames, so ``compile_s`` is always a real
compile, and a call that compiled nothing, or failed to compile a frame, is an error, not a figure.

``compile_s`` depends on inductor's on-disk cache (``/tmp/torchinductor_<user>``): the first compile
on a machine builds every kernel, later ones in other processes load them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CompileWarmup", "compile_warmup", "compiled_frames", "frame_counts"]


def frame_counts() -> tuple[int, int]:
    """Frames TorchDynamo has tried to compile in this process so far, and of those the ones it did."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"]), int(counters["frames"]["ok"])


def compiled_frames() -> int:
    """Frames TorchDynamo has tried to compile in this process so far (recompilations included)."""
    return frame_counts()[0]


@dataclass(frozen=True)
class CompileWarmup:
    """The untimed call that compiled a case."""

    #: Wall time of that call, compilation included.
    compile_s: float
    #: Frames TorchDynamo compiled during it (at least 1: ``compile_warmup`` refuses a call that compiled
    #: nothing).
    compiled_frames: int


def compile_warmup(call: Callable[[], Any]) -> CompileWarmup:
    """Reset TorchDynamo, then run ``call`` (one generate call that compiles) untimed by the benchmark,
    and time it. Raises ``RuntimeError`` when it compiled nothing or gave up on a frame: what would be
    timed next is not compiled code."""
    import torch._dynamo

    torch._dynamo.reset()
    total, ok = frame_counts()
    start = time.perf_counter()
    call()
    compile_s = time.perf_counter() - start
    tried, done = frame_counts()
    tried, done = tried - total, done - ok
    if done == 0 or tried > done:
        raise RuntimeError(f"torch.compile compiled {done} of the {tried} frame(s) it tried in the compiling call, so "
                           "the compiled cache mode would time eager code: run with TORCH_LOGS=recompiles,graph_breaks "
                           "to see why")
    return CompileWarmup(compile_s=compile_s, compiled_frames=done)
