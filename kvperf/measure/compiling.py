"""Compilation, kept out of the timed rounds: the call that compiles is a warm-up, timed apart, and
every timed call is checked for recompilation.

``torch.compile`` compiles a frame the first time it runs it with new shapes or guards; that can take
seconds to a minute on a CPU (inductor writes and builds C++). A timed round that included it would
report the compiler, not the model. So a compiled case first makes one untimed call and reports how
long it took (``compile_s``: the wall time of that whole call, compilation included, which is how
long a user waits for the first compiled ``generate``), and then counts, around every timed call, the
frames TorchDynamo compiled (``torch._dynamo.utils.counters["frames"]["ok"]``): any above 0 are
recompilations inside a timed round, and are reported, not hidden.

``compile_s`` depends on inductor's on-disk cache (``/tmp/torchinductor_<user>``): the first compile
on a machine builds every kernel, later ones in other processes load them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CompileWarmup", "compile_warmup", "compiled_frames"]


def compiled_frames() -> int:
    """Frames TorchDynamo has compiled in this process so far (recompilations included)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


@dataclass(frozen=True)
class CompileWarmup:
    """The untimed call that compiled a case."""

    #: Wall time of that call, compilation included.
    compile_s: float
    #: Frames TorchDynamo compiled during it; 0 when an earlier case with the same shapes compiled
    #: them already (``compile_s`` is then a plain warm-up call).
    compiled_frames: int


def compile_warmup(call: Callable[[], Any]) -> CompileWarmup:
    """Run ``call`` (one generate call that compiles) untimed by the benchmark, and time it."""
    before = compiled_frames()
    start = time.perf_counter()
    call()
    return CompileWarmup(compile_s=time.perf_counter() - start, compiled_frames=compiled_frames() - before)
