"""kvperf's CPU peak memory against the allocator's own figure, and its parts, for every preset.

Not a pytest file: the study behind the README's peak-memory table (``tests/test_trust.py`` keeps
the same check at small sizes). For each preset and cache mode it runs one warm-up ``generate``, then
the same call under ``torch.profiler`` with memory profiling (the allocator's record of every
allocation and free: the largest live total above the start, plus the weights), then kvperf's
measure (``kvperf.measure.harness.measure_peak_memory``), and prints both, their ratio and difference, and
kvperf's parts of the peak.

    python benchmarks/memory_study.py [--batch 1] [--prompt 128] [--new 64] [--dtype float32]
"""

from __future__ import annotations

import argparse

import torch

from kvperf.measure.cache_modes import COMPILED_MODES, cache_unavailable
from kvperf.measure.harness import _generate, measure_peak_memory
from kvperf.measure.memory import allocator_peak_bytes
from kvperf.measure.prompts import make_prompts
from kvperf.models import PRESETS, load_model
from kvperf.spec import CACHE_MODES, GenerationSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, {args.dtype}, CPU, one thread")
    print("| preset, cache | kvperf | allocator | ratio | allocator - kvperf | weights | "
          "KV cache at peak | activations at peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in PRESETS:
        model = load_model(name, dtype=args.dtype)
        for cache in CACHE_MODES:
            # Compiled kernels are opaque to both measures; what cannot run here has nothing to measure.
            if cache in COMPILED_MODES or cache_unavailable(cache, "cpu", model.config):
                continue
            spec = GenerationSpec(cache=cache, batch_size=args.batch, prompt_len=args.prompt,  # type: ignore[arg-type]
                                  new_tokens=args.new)
            ids, mask = make_prompts(model, spec)
            _generate(model, spec, ids, mask)  # warm-up: lazy state out of the way of both measures
            _, above = allocator_peak_bytes(lambda: _generate(model, spec, ids, mask))  # noqa: B023
            peak = measure_peak_memory(model, spec, ids, mask)
            allocator = peak.weights_bytes + above
            print(f"| {name}, {cache} | {peak.total_bytes:,} | {allocator:,} | "
                  f"{peak.total_bytes / allocator:.4f} | {allocator - peak.total_bytes} | {peak.weights_bytes:,} | "
                  f"{peak.peak_kv_cache_bytes:,} | {peak.peak_activations_bytes:,} |", flush=True)


if __name__ == "__main__":
    main()
