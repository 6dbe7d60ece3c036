"""What kvperf's timed call costs beyond the model's forward passes, in thread CPU time.

Not a pytest file: this is the study behind the README's "Harness overhead" figures
(``benchmarks/test_overhead.py`` records a wall-time ratio in every quick-tier run). Four ways of
producing the same greedy tokens are interleaved on the same prompts, the order reversed every
iteration (ABCD DCBA ...) so that drift hits them alike:

* ``manual``: a hand-written decode loop that carries the cache (``model(...)``, argmax, append);
* ``bare``: a user's own ``model.generate(max_new_tokens=N, do_sample=False)``;
* ``harness``: ``kvperf.measure.harness.time_generation``, the call kvperf times (token clock, EOS stopping
  off, the token-count check, KV bytes);
* ``min_new``: the same call with the token count fixed the old way, ``min_new_tokens ==
  max_new_tokens``, for comparison.

Every call is measured in the calling thread's CPU time (``time.thread_time``), so load from other
processes hardly moves it, and torch runs one intra-op thread so that all of the work is on that
thread. Forward hooks on the model add up the CPU time spent inside its forward passes, so each
call's cost splits into ``forward`` and ``outside`` (everything else: generate's bookkeeping, logits
processors, the streamer, kvperf's checks). The table gives medians per generated token.

    python benchmarks/overhead_study.py [--model distilgpt2] [--iterations 15] [--prompt 128] [--new 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from kvperf.kv.kv_size import cache_kwarg
from kvperf.measure.harness import generate_kwargs, time_generation
from kvperf.measure.prompts import make_prompts
from kvperf.models import load_model
from kvperf.spec import GenerationSpec


class ForwardClock:
    """Adds up the thread CPU time spent inside the model's top-level forward calls."""

    def __init__(self, model: Any) -> None:
        self.total_s = 0.0
        self._start = 0.0
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._exit)

    def _enter(self, *args: Any) -> None:
        self._start = time.thread_time()

    def _exit(self, *args: Any) -> None:
        self.total_s += time.thread_time() - self._start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="distilgpt2")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = load_model(args.model)
    spec = GenerationSpec(cache="on", batch_size=1, prompt_len=args.prompt, new_tokens=args.new)
    ids, mask = make_prompts(model, spec)
    clock = ForwardClock(model)
    n = spec.new_tokens

    @torch.no_grad()
    def manual() -> torch.Tensor:
        cache = DynamicCache(config=model.config)
        step = {cache_kwarg(): cache, "use_cache": True, "logits_to_keep": 1}
        out = model(input_ids=ids, attention_mask=mask, **step)
        tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
        am = mask
        for _ in range(n - 1):
            am = torch.cat([am, am.new_ones((am.shape[0], 1))], dim=1)
            out = model(input_ids=tokens[-1], attention_mask=am, **step)
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
        return torch.cat(tokens, dim=1)

    def bare() -> torch.Tensor:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=generate_kwargs(model, spec)["pad_token_id"])
        return out[:, ids.shape[1]:]

    def harness() -> None:
        time_generation(model, spec, ids, mask)

    old_kwargs = {**generate_kwargs(model, spec), "min_new_tokens": n}
    old_kwargs.pop("eos_token_id")

    def min_new() -> None:
        model.generate(input_ids=ids, attention_mask=mask, **old_kwargs)

    # The four produce the same tokens (EOS never comes up with random weights at these lengths;
    # checked here so that the comparison is of equal work).
    reference = manual()
    assert torch.equal(reference, bare()), "manual loop and generate disagree: not the same work"

    calls: list[Callable[[], Any]] = [manual, bare, harness, min_new]
    total: dict[str, list[float]] = {f.__name__: [] for f in calls}
    forward: dict[str, list[float]] = {f.__name__: [] for f in calls}
    for f in calls:  # warm-up
        f()
    for i in range(args.iterations):
        for f in calls if i % 2 else list(reversed(calls)):
            clock.total_s = 0.0
            start = time.thread_time()
            f()
            total[f.__name__].append(time.thread_time() - start)
            forward[f.__name__].append(clock.total_s)

    print(f"{args.model}, batch 1, prompt {args.prompt}, {n} new tokens, cache on, one thread, "
          f"{args.iterations} interleaved iterations; thread CPU time, medians, per generated token")
    print("| call | total ms/token | forward ms/token | outside forward ms/token | total / manual |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = statistics.median(total["manual"])
    for name in total:
        t, fw = statistics.median(total[name]), statistics.median(forward[name])
        outside = statistics.median(a - b for a, b in zip(total[name], forward[name], strict=True))
        print(f"| {name} | {t / n * 1e3:.3f} | {fw / n * 1e3:.3f} | {outside / n * 1e3:.3f} | {t / base:.4f} |")


if __name__ == "__main__":
    main()
