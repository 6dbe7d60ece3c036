"""The cost of a run before it starts: FLOPs by formula, and a rate measured on the model just now.

A case's time is mostly two things: the model's matrix work, which kvperf can count from the shapes,
and a fixed cost per decode step (Python, ``generate``'s bookkeeping, kernel launches), which
dominates on small models. So one ``generate`` call of a spec is estimated as

    ``new_tokens * step_overhead_s + estimated_call_flops / flops_per_s``

where ``estimated_call_flops`` is a formula (``ModelWork``, read off the model's modules) and the two
rates are measured on the loaded model by ``measure_rates``: a call of many cheap steps and a call of
an expensive prefill, solved for the two unknowns. After its timed rounds a case makes two untimed
calls, peak memory and the FLOP count, which run every operation through Python (a dispatch mode):
on a small model they cost several timed calls. ``measure_rates`` times them on the many-steps call
too, as seconds per step (``untimed_step_s``) besides their FLOPs. It is an estimate, and named so: what it
leaves out (element-wise work, memory traffic that grows with the context, the slower FLOP-count
pass) shows in how far the measured case times land from it, which the session's ETA then corrects
(``kvperf.measure.progress``).

The formula counts what torch's FLOP counter counts (``kvperf.measure.work``), 2 FLOPs per
multiply-add: every linear layer's weights once per position the model runs (``progress.positions``:
with a cache, the prompt once and then one position a step; without, the whole prefix every step),
the LM head once per sequence and step (``generate`` keeps one row of logits, ``logits_to_keep=1``),
and attention as ``4 * heads * head_dim`` per query and key, without causal masking (as SDPA's
formula): the prompt against itself, then one query a step against the keys held (a static cache
holds all ``prompt + new - 1`` positions from the start; without a cache, the prefix against itself
every step).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvperf.measure.progress import format_duration, positions
from kvperf.spec import GenerationSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["CallRates", "ModelWork", "estimate_line", "estimated_call_flops", "estimated_call_s", "estimated_case_s",
           "measure_rates", "model_work"]

#: FLOPs that the calibration's prefill call aims at: enough to rise above the step overhead on a CPU
#: (about 0.1-1 s), few enough to keep the calibration short.
_CALIBRATION_FLOPS = 2e9
#: Decode steps of the calibration's many-steps call.
_CALIBRATION_STEPS = 32
#: Each calibration call is timed this many times after one untimed warm-up; the median is kept.
_CALIBRATION_REPEATS = 3


@dataclass(frozen=True)
class ModelWork:
    """What a model's matrix work costs, per unit, by formula (``model_work``)."""

    #: 2 x the weights of every linear layer but the LM head: FLOPs per position through the model.
    linear_flops_per_position: int
    #: 2 x the LM head's weights: FLOPs per row of logits.
    head_flops_per_row: int
    #: 4 x heads x head_dim, summed over the layers: attention FLOPs per query per key.
    attention_flops_per_query_key: int


def model_work(model: PreTrainedModel) -> ModelWork:
    """``ModelWork`` of a loaded model, from its linear modules and its config's attention shape."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    linear = head_flops = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            flops = 2 * module.weight.numel()
            if module is head:
                head_flops = flops
            else:
                linear += flops
    text = model.config.get_text_config(decoder=True)
    layers = getattr(text, "num_hidden_layers", 0) or 0
    heads = getattr(text, "num_attention_heads", 0) or 0
    head_dim = getattr(text, "head_dim", None) or ((getattr(text, "hidden_size", 0) or 0) // max(heads, 1))
    return ModelWork(linear, head_flops, 4 * layers * heads * head_dim)


def _query_keys(spec: GenerationSpec) -> int:
    """Query-key pairs of one call, per sequence (see the module docstring)."""
    prompt, new = spec.prompt_len, spec.new_tokens
    if spec.cache == "off":
        return sum((prompt + step) ** 2 for step in range(new))
    held = prompt + new - 1
    decode = (new - 1) * held if spec.cache == "static" else sum(prompt + step for step in range(1, new))
    return prompt * prompt + decode


def estimated_call_flops(work: ModelWork, spec: GenerationSpec) -> int:
    """FLOPs of one ``generate`` call of ``spec``, by formula (an estimate of what
    ``kvperf.measure.work`` counts)."""
    batch = spec.batch_size
    return (work.linear_flops_per_position * positions(batch, spec.prompt_len, spec.new_tokens, spec.cache)
            + work.head_flops_per_row * batch * spec.new_tokens
            + work.attention_flops_per_query_key * batch * _query_keys(spec))


@dataclass(frozen=True)
class CallRates:
    """The two rates of a loaded model, measured (``measure_rates``)."""

    #: Wall time a ``generate`` step costs besides its FLOPs.
    step_overhead_s: float
    #: FLOPs per second of the model's work; None when the calibration could not tell the work from the
    #: overhead (a model so small that its FLOPs are lost in the noise): then steps alone are counted.
    flops_per_s: float | None
    #: Wall time the calibration took.
    calibration_s: float
    #: Wall time a step costs the two untimed calls after a case's rounds together (peak memory, FLOP
    #: count), besides their FLOPs.
    untimed_step_s: float = 0.0


def estimated_call_s(work: ModelWork, rates: CallRates, spec: GenerationSpec) -> float:
    """Seconds of one ``generate`` call of ``spec``: an estimate from the formula and the rates."""
    compute = estimated_call_flops(work, spec) / rates.flops_per_s if rates.flops_per_s else 0.0
    return spec.new_tokens * rates.step_overhead_s + compute


def estimated_case_s(work: ModelWork, rates: CallRates, spec: GenerationSpec, timed_calls: int) -> float:
    """Seconds of a case: ``timed_calls`` calls (warm-ups and rounds) and the two untimed ones after."""
    compute = estimated_call_flops(work, spec) / rates.flops_per_s if rates.flops_per_s else 0.0
    return timed_calls * estimated_call_s(work, rates, spec) + spec.new_tokens * rates.untimed_step_s + 2 * compute


def _calibration_specs(work: ModelWork, max_positions: int | None) -> tuple[GenerationSpec, GenerationSpec]:
    limit = max_positions or 2048
    steps = min(_CALIBRATION_STEPS, max(2, limit // 2))
    many_steps = GenerationSpec(cache="on", batch_size=1, prompt_len=1, new_tokens=steps)
    per_position = max(1, work.linear_flops_per_position + work.attention_flops_per_query_key * limit // 4)
    prompt = max(1, min(limit // 2, 256))
    batch = int(max(1, min(16, _CALIBRATION_FLOPS / per_position / prompt)))
    one_prefill = GenerationSpec(cache="on", batch_size=batch, prompt_len=prompt, new_tokens=2)
    return many_steps, one_prefill


def measure_rates(model: PreTrainedModel, work: ModelWork, max_positions: int | None) -> CallRates:
    """Time a call of many cheap steps (``a``) and one of an expensive prefill and a step (``b``), and solve
    ``t = steps * step_overhead_s + flops / flops_per_s`` for both rates (medians of a few calls)."""
    import time

    from kvperf.measure.harness import measure_peak_memory, time_generation
    from kvperf.measure.prompts import make_prompts
    from kvperf.measure.work import measure_work

    start = time.perf_counter()
    specs = _calibration_specs(work, max_positions)
    prompts = [make_prompts(model, spec) for spec in specs]
    times: list[list[float]] = [[], []]
    for repeat in range(_CALIBRATION_REPEATS + 1):
        for index, (spec, (input_ids, attention_mask)) in enumerate(zip(specs, prompts, strict=True)):
            seconds = time_generation(model, spec, input_ids, attention_mask).e2e_s
            if repeat:  # the first round is a warm-up
                times[index].append(seconds)
    (a, b), (t_a, t_b) = specs, (statistics.median(t) for t in times)
    f_a, f_b = estimated_call_flops(work, a), estimated_call_flops(work, b)
    # t_a = n_a * o + f_a * k and t_b = n_b * o + f_b * k, with k = 1 / flops_per_s
    n_a, n_b = a.new_tokens, b.new_tokens
    seconds_per_flop = (t_b / n_b - t_a / n_a) / (f_b / n_b - f_a / n_a) if f_b * n_a > f_a * n_b else 0.0
    passes_start = time.perf_counter()  # once: they cost the same from the first call on
    measure_peak_memory(model, a, *prompts[0])
    measure_work(model, a, *prompts[0])
    untimed = time.perf_counter() - passes_start
    seconds_per_flop = max(0.0, seconds_per_flop)  # <= 0: the work is lost in the overhead's noise
    untimed_step_s = max(0.0, (untimed - 2 * f_a * seconds_per_flop) / n_a)
    if not seconds_per_flop:  # count the steps alone
        return CallRates(t_a / n_a, None, time.perf_counter() - start, untimed_step_s)
    overhead = max(0.0, (t_a - f_a * seconds_per_flop) / n_a)
    return CallRates(overhead, 1 / seconds_per_flop, time.perf_counter() - start, untimed_step_s)


def estimate_line(total_s: float, cases: int, calls: int, flops: int, model: str,
                  rates: dict[str, CallRates]) -> str:
    """The estimate of a run, printed before its first case."""
    def rate(r: CallRates) -> str:
        compute = f"{r.flops_per_s / 1e9:.3g} GFLOP/s and " if r.flops_per_s else "(its FLOPs lost in the noise) "
        return f"{compute}{r.step_overhead_s * 1e3:.3g} ms a step, {r.untimed_step_s * 1e3:.3g} ms untimed"

    measured = "; ".join(f"{dtype}: {rate(r)}" for dtype, r in rates.items())
    spent = sum(r.calibration_s for r in rates.values())
    return (f"kvperf: estimated {format_duration(total_s)} for {cases} case(s): {calls} generate calls, "
            f"{flops / 1e9:.3g} GFLOP by formula, at the rates of {model} measured just now in "
            f"{format_duration(spent)} ({measured}); the ETA refines as cases end")
