"""Running one generation case under pytest-benchmark and recording everything it measured.

pytest-benchmark times the calls; kvperf's own clocks inside each call give TTFT and the per-token
latencies. Every round's raw values go into ``benchmark.extra_info`` beside the medians, so the JSON
that ``--benchmark-json`` or ``--benchmark-autosave`` writes holds all of it, and a later comparison
can test for noise on the raw samples instead of trusting one statistic.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from transformers import PreTrainedModel

from kvperf.errors import UsageError
from kvperf.gate.env import Contention, CpuContention
from kvperf.kv.kv_size import spec_kv_cache_bytes
from kvperf.measure.compiling import CompileWarmup
from kvperf.measure.energy import energy_summary
from kvperf.measure.harness import (
    GenerationResult,
    GenerationTiming,
    eager_spec,
    measure_peak_memory,
    model_energy_meter,
    result_from_timing,
    time_generation,
    warm_compile,
)
from kvperf.measure.prompts import make_prompts
from kvperf.measure.roofline import decode_bytes
from kvperf.measure.work import measure_work
from kvperf.spec import GenerationSpec

__all__ = ["SCHEMA_VERSION", "benchmark_generation", "extra_info"]

#: Version of the layout of kvperf's ``extra_info``; bumped when a field changes meaning.
SCHEMA_VERSION = 1

#: Result fields whose per-round values are kept raw (``<name>_samples``) beside their median.
SAMPLED_FIELDS = ("e2e_s", "ttft_s", "tpot_s", "tokens_per_s", "itl_p50_s", "itl_p95_s", "itl_p99_s",
                  "e2e_cpu_s", "ttft_cpu_s", "tpot_cpu_s")


def benchmark_generation(
    benchmark: Any,
    model: PreTrainedModel,
    spec: GenerationSpec,
    *,
    rounds: int,
    warmup_rounds: int,
    before_round: Callable[[], None] | None = None,
    compiled: CompileWarmup | None = None,
) -> list[GenerationResult]:
    """Time ``spec`` with ``benchmark.pedantic`` (one generate call per round, after warm-up rounds),
    then measure peak memory and count FLOPs (``kvperf.measure.work``) in untimed calls, and add the bytes
    one decode step reads (``kvperf.measure.roofline``). Returns one result
    per timed round.

    Also writes to ``benchmark.extra_info`` what the results don't carry: the FLOP counts, and
    ``cpu_wait_samples`` and ``cpu_others_samples``, the CPU contention of every timed round
    (``kvperf.gate.env.CpuContention``), which let a comparison leave out rounds that another process
    slowed down.

    ``before_round`` runs, untimed, before every round (warm-up ones too): ``kvperf ab`` passes the
    turn to the other side there (``kvperf.gate.ab.Turns.pass_turn``).

    A compiled cache mode first makes the call that compiles, untimed, before the warm-up rounds
    (``kvperf.measure.harness.warm_compile``), unless the caller made it already (``compiled``); its
    time goes into ``compile_s``, and ``recompiles_in_timed_rounds`` sums the frames compiled during
    the timed rounds (0 unless something recompiled)."""
    input_ids, attention_mask = make_prompts(model, spec)
    if compiled is None:
        compiled = warm_compile(model, spec, input_ids, attention_mask)
    timings: list[GenerationTiming] = []
    contention: list[Contention] = []
    # Made once per case, outside the rounds: opening NVML or powercap is not part of any round.
    energy = model_energy_meter(model)

    def one_call() -> None:
        meter = CpuContention()
        meter.start()
        timings.append(time_generation(model, spec, input_ids, attention_mask, energy=energy))
        contention.append(meter.stop())

    with energy:
        benchmark.pedantic(one_call, setup=before_round, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    # Warm-up rounds run the same function; keep only the timed rounds. With --benchmark-disable,
    # pytest-benchmark calls it once and there is nothing to drop.
    timed = timings[-rounds:] if len(timings) > rounds else timings
    peak = measure_peak_memory(model, spec, input_ids, attention_mask)
    benchmark.extra_info.update(measure_work(model, eager_spec(spec), input_ids, attention_mask).summary())
    # The formula's bytes beside the measured ones, so every report can set one against the other. A
    # family the formula cannot size still benchmarks: the formula is null, with the reason.
    try:
        benchmark.extra_info["kv_cache_formula_bytes"] = spec_kv_cache_bytes(model.config, spec, model.dtype)
    except UsageError as exc:
        benchmark.extra_info.update(kv_cache_formula_bytes=None, kv_cache_formula_note=str(exc))
    # The bytes one decode step reads (weights, the formula's cache, states), for the roofline
    # (kvperf.measure.roofline); null with the reason where the formula cannot know them.
    benchmark.extra_info.update(decode_bytes(model, spec.cache, spec.batch_size, spec.prompt_len,
                                             spec.new_tokens).summary())
    benchmark.extra_info["cpu_wait_samples"] = [c.wait for c in contention[-len(timed):]]
    benchmark.extra_info["cpu_others_samples"] = [c.others for c in contention[-len(timed):]]
    if compiled is not None:
        benchmark.extra_info["recompiles_in_timed_rounds"] = sum(t.recompiles or 0 for t in timed)
        benchmark.extra_info["compiled_frames_in_warmup"] = compiled.compiled_frames
    return [result_from_timing(model, spec, timing, peak, compiled) for timing in timed]


#: Energy fields, which are None in rounds where the counter could not tell (``_energy_info``).
_ENERGY_FIELDS = ("energy_j", "energy_per_token_j", "energy_source", "energy_note")


def _energy_info(results: list[GenerationResult]) -> dict[str, Any]:
    """The case's energy (``kvperf.measure.energy.energy_summary``), the counter, and the raw joules of each
    round (``energy_j_samples``, None where a round was not measured)."""
    joules = [r.energy_j for r in results]
    note = next((r.energy_note for r in results if r.energy_j is None), None)
    return {"energy_j_samples": joules, "energy_source": results[0].energy_source,
            **energy_summary(joules, results[0].generated_tokens, note)}


def extra_info(results: list[GenerationResult], **context: Any) -> dict[str, Any]:
    """The ``extra_info`` of one case: spec, context, medians of every result field over the rounds,
    the raw per-round values, and the raw inter-token latencies of every round."""
    first = results[0]
    info: dict[str, Any] = {"kvperf_schema": SCHEMA_VERSION, **context, **asdict(first.spec)}
    summaries = [r.summary() for r in results]
    for key, value in summaries[0].items():
        if key in _ENERGY_FIELDS:
            continue
        if isinstance(value, float):
            info[key] = statistics.median(s[key] for s in summaries)
        else:  # exact per case: memory, KV bytes, token counts, device, dtype
            info[key] = value
    for key in SAMPLED_FIELDS:
        info[f"{key}_samples"] = [s[key] for s in summaries]
    # The output hash of the first round is the case's; how many the rounds produced says whether it is
    # deterministic here (kvperf.gate.fingerprint).
    info.update(_energy_info(results))
    info["output_sha256_distinct"] = len({r.output_sha256 for r in results})
    info["itl_s"] = [list(r.itl_s) for r in results]
    info["rounds"] = len(results)
    return info
