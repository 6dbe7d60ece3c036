"""Every cache implementation on one model: compile time, TPOT interleaved in one process, KV bytes
against the formula, and whether the tokens equal the eager static cache's.

Not a pytest file: the study behind the README's "Cache implementations" table. Every mode that can
run here (``kvperf.measure.cache_modes.cache_unavailable``) gets one warm-up call (for ``compiled``,
the call that compiles, timed: ``compile_s``), then ``--turns`` turns in which each mode runs one
timed ``generate`` call in turn, so that a slow spell of the shared machine hits every mode alike.
TPOT is reported in wall time and in the timing thread's CPU time (one torch thread), as medians
over the turns; the ratio is the mode's CPU-time TPOT over the eager static cache's.

    python benchmarks/caches_study.py [--model tiny-gpt2] [--dtype float32] [--batch 1] [--prompt 32]
                                      [--new 32] [--turns 7] [--cold]

``--cold`` points inductor at an empty cache directory, so ``compile_s`` is a first compile on a fresh
machine (CI); without it, kernels an earlier process built are loaded from ``/tmp/torchinductor_<user>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-gpt2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--cold", action="store_true", help="an empty inductor cache: a first compile")
    args = parser.parse_args()
    if args.cold:  # before torch is imported: inductor reads it once
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="kvperf-inductor-")

    import torch

    from kvperf.errors import UsageError
    from kvperf.kv.kv_size import spec_kv_cache_bytes
    from kvperf.measure.cache_modes import CACHE_IMPLEMENTATIONS, cache_unavailable
    from kvperf.measure.harness import _generate, time_generation, warm_compile
    from kvperf.measure.prompts import make_prompts
    from kvperf.models import load_model
    from kvperf.spec import CACHE_MODES, GenerationSpec

    torch.set_num_threads(1)
    model = load_model(args.model, dtype=args.dtype)
    print(f"{args.model}, {args.dtype}, batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, CPU, one "
          f"thread, {args.turns} interleaved turns, inductor cache {'empty' if args.cold else 'as found'}")
    modes: list[str] = []
    compile_s: dict[str, str] = {}
    for mode in CACHE_MODES:
        reason = cache_unavailable(mode, "cpu", model.config)
        if reason is not None:
            print(f"skipped {mode}: {reason}")
            continue
        spec = GenerationSpec(cache=mode, batch_size=args.batch, prompt_len=args.prompt,  # type: ignore[arg-type]
                              new_tokens=args.new)
        ids, mask = make_prompts(model, spec)
        compiled = warm_compile(model, spec, ids, mask)
        if compiled is not None:
            compile_s[mode] = f"{compiled.compile_s:.1f} ({compiled.compiled_frames} frames)"
        _generate(model, spec, ids, mask)  # the warm-up every mode gets
        modes.append(mode)
    timings: dict[str, list] = {m: [] for m in modes}
    for _ in range(args.turns):
        for mode in modes:
            spec = GenerationSpec(cache=mode, batch_size=args.batch, prompt_len=args.prompt,  # type: ignore[arg-type]
                                  new_tokens=args.new)
            ids, mask = make_prompts(model, spec)
            timings[mode].append(time_generation(model, spec, ids, mask))
    steps = args.new - 1

    def tpot(mode: str, cpu: bool) -> float:
        return statistics.median(((t.e2e_cpu_s - t.ttft_cpu_s) if cpu else (t.e2e_s - t.ttft_s)) / steps
                                 for t in timings[mode])

    base = tpot("static", cpu=True)
    static_sha = timings["static"][0].output_sha256
    print("| mode | transformers | compile s | TPOT ms (wall) | TPOT ms (thread CPU) | CPU TPOT / static | "
          "KV bytes | formula | tokens = static | recompiles in timed calls |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for mode in modes:
        first = timings[mode][0]
        spec = GenerationSpec(cache=mode, batch_size=args.batch, prompt_len=args.prompt,  # type: ignore[arg-type]
                              new_tokens=args.new)
        try:
            formula = f"{spec_kv_cache_bytes(model.config, spec, model.dtype):,}"
        except UsageError:
            formula = "null"
        recompiles = sum(t.recompiles or 0 for t in timings[mode]) if mode in compile_s else "-"
        same = {t.output_sha256 for t in timings[mode]} == {static_sha}
        print(f"| {mode} | {CACHE_IMPLEMENTATIONS[mode].transformers} | {compile_s.get(mode, '-')} | "
              f"{tpot(mode, False) * 1e3:.3f} | {tpot(mode, True) * 1e3:.3f} | {tpot(mode, True) / base:.2f} | "
              f"{first.kv_cache_bytes:,} | {formula} | {'yes' if same else 'no'} | {recompiles} |", flush=True)


if __name__ == "__main__":
    main()
