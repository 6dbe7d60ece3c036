"""The harness's overhead, measured as carefully as this machine allows.

Not a pytest file (``benchmarks/test_overhead.py`` is the benchmark; this is the study behind the
README's figure). It alternates three calls on the same inputs and generate arguments, reversing the
order every iteration (ABC CBA ...) so that drift and order effects hit all three alike:

* ``bare``: ``model.generate`` alone;
* ``stream``: ``model.generate`` with kvperf's token clock as its streamer;
* ``harness``: ``kvperf.harness.time_generation`` (clock, syncs, token count check, KV bytes).

    python benchmarks/overhead_study.py [on|off] [iterations] [model]

It prints the median of each and its ratio to ``bare``. tiny-gpt2, one thread, is the worst case:
a decode step takes well under a millisecond, so the streamer's few microseconds per token weigh most.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch

from kvperf.harness import _TokenClock, generate_kwargs, time_generation
from kvperf.models import load_model
from kvperf.prompts import make_prompts
from kvperf.spec import GenerationSpec


def main(cache: str, iterations: int, model_name: str) -> None:
    torch.set_num_threads(1)
    model = load_model(model_name)
    spec = GenerationSpec(cache=cache, batch_size=1, prompt_len=32, new_tokens=64)  # type: ignore[arg-type]
    ids, mask = make_prompts(model, spec)
    kwargs = generate_kwargs(model, spec)

    def bare() -> None:
        model.generate(input_ids=ids, attention_mask=mask, **kwargs)

    def stream() -> None:
        model.generate(input_ids=ids, attention_mask=mask, streamer=_TokenClock(torch.device("cpu")), **kwargs)

    def harness() -> None:
        time_generation(model, spec, ids, mask)

    calls: list[Callable[[], None]] = [bare, stream, harness]
    times: dict[str, list[float]] = {f.__name__: [] for f in calls}
    for f in calls:  # warm-up
        f()
    for i in range(iterations):
        for f in calls if i % 2 else reversed(calls):
            start = time.perf_counter()
            f()
            times[f.__name__].append(time.perf_counter() - start)
    base = statistics.median(times["bare"])
    for name, values in times.items():
        mid = statistics.median(values)
        print(f"{name:8} median {mid * 1e3:8.3f} ms  ratio {mid / base:.4f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "on", int(args[1]) if len(args) > 1 else 150, args[2] if len(args) > 2 else "tiny-gpt2")
