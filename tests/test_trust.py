"""Every number kvperf reports, checked against an independent measurement of the same call.

* FLOPs: an analytic count of the matrix work of a GPT-2 shape and a grouped-query Llama shape, for
  the cache on, off and static. Equal to the FLOP.
* KV bytes: the sum of the bytes of the tensors in the cache that ``generate`` returned, and the
  formula. Equal to the byte.
* CPU peak memory: the allocator's own record (``torch.profiler``, ``kvperf.measure.memory.allocator_peak_bytes``),
  for every preset and cache mode. Equal within ``SCRATCH_TOLERANCE_BYTES``.
* TTFT and TPOT: a hand-written decode loop that carries the cache, in thread CPU time. Within the
  tolerances below.

What each protects, and how it was seen to fail (closing note of issue 8): a missing attention
formula or a static cache attending over the wrong length breaks the FLOP counts; a cache measure
that skips the values or counts a storage twice breaks the KV bytes; counting views of existing
weights (the old measure) breaks the peak; a clock read in the wrong place, or per-step work that a
user's call does not do (``min_new_tokens``: +5% TPOT on distilgpt2), breaks the timings.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from itertools import pairwise
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from kvperf.kv.kv_size import cache_kwarg, returned_cache, spec_kv_cache_bytes
from kvperf.measure.harness import _generate, forget_static_cache, measure_peak_memory, time_generation
from kvperf.measure.memory import SCRATCH_TOLERANCE_BYTES, allocator_peak_bytes
from kvperf.measure.prompts import make_prompts
from kvperf.measure.work import count_flops, measure_work
from kvperf.models import PRESETS, load_model
from kvperf.spec import GenerationSpec

CACHES = ("on", "off", "static")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """One intra-op thread: all of the work is on the thread whose CPU time is read."""


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {}


def _model(models: dict[str, Any], name: str) -> Any:
    if name not in models:
        models[name] = load_model(name)
    return models[name]


# --- FLOPs ------------------------------------------------------------------------------------------


def _layer_matmul_flops(config: Any, batch: int, queries: int) -> int:
    """Projections and MLP of one layer for ``queries`` new positions per row (2 FLOPs a multiply-add)."""
    tokens = batch * queries
    if config.model_type == "gpt2":  # c_attn (3h), c_proj (h), c_fc (4h), mlp c_proj (4h)
        return 2 * tokens * config.n_embd * config.n_embd * (3 + 1 + 4 + 4)
    h, heads, dim = config.hidden_size, config.num_attention_heads, config.head_dim
    kv_heads = config.num_key_value_heads
    qkv = 2 * tokens * h * (heads + 2 * kv_heads) * dim
    out = 2 * tokens * heads * dim * h
    mlp = 3 * 2 * tokens * h * config.intermediate_size  # gate, up, down
    return qkv + out + mlp


# What transformers computes differs between releases in two places that these counts see. Each is
# probed on the installed release (a feature, not a version number), with a call too small to time.


@functools.cache
def static_prefill_attends_to_the_prompt_only() -> bool:
    """Whether transformers' SDPA attention, in a causal prefill without a mask, slices a static cache's
    preallocated keys and values down to the prompt (``sdpa_attention_forward``, from 5.14). Before,
    the prefill attends over every preallocated position, the masked ones included."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal = True
    query, keys = torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 4, 4)  # 2 prompt positions of 4 allocated
    with count_flops() as counter:
        sdpa_attention_forward(module, query, keys, keys, None)
    return bool(counter.get_total_flops() == 2 * 2 * 2 * 2 * 4)  # QK^T and AV over 2 keys, not 4


@functools.cache
def rotary_matmul_flops_per_position(model: Any) -> int:
    """FLOPs a Llama's rotary embedding counts per position per row: ``2 x head_dim / 2`` where the
    release computes the angles with a matmul of the frequencies and the positions (before 5.15),
    0 where it multiplies them element-wise."""
    rotary = model.model.rotary_emb
    positions = torch.arange(8)[None, :]
    with count_flops() as counter:
        rotary(torch.zeros(1, 8, model.config.hidden_size), positions)
    return counter.get_total_flops() // 8


def _forward_flops(model: Any, batch: int, queries: int, keys: int) -> int:
    """One forward pass: every layer's matmuls, attention over ``keys`` positions (QK^T and AV, for
    every query head: a GQA model's shared KV heads are repeated), the LM head on the last position
    only (generate asks for ``logits_to_keep=1``), and a Llama's rotary angles where they are a matmul."""
    config = model.config
    heads = config.num_attention_heads
    dim = config.n_embd // config.n_head if config.model_type == "gpt2" else config.head_dim
    attention = 2 * 2 * batch * heads * queries * keys * dim
    lm_head = 2 * batch * config.hidden_size * config.vocab_size
    rotary = 0 if config.model_type == "gpt2" else rotary_matmul_flops_per_position(model) * batch * queries
    return config.num_hidden_layers * (_layer_matmul_flops(config, batch, queries) + attention) + lm_head + rotary


def analytic_flops(model: Any, spec: GenerationSpec) -> tuple[int, int]:
    """(prefill, total) FLOPs of one generate call, from the shapes alone.

    Cache off: every step runs the whole sequence so far. Cache on: prefill runs the prompt, each
    decode step one position over everything cached. Static: the same, but decode attends over all
    ``prompt + new - 1`` preallocated positions (masked, still computed); prefill attends over the
    prompt only where the release slices the keys and values to the prompt (5.14 on), else over all
    of them."""
    p, n, b = spec.prompt_len, spec.new_tokens, spec.batch_size
    if spec.cache == "off":
        steps = [(p + i, p + i) for i in range(n)]
    elif spec.cache == "on":
        steps = [(p, p)] + [(1, p + i) for i in range(1, n)]
    else:
        prefill_keys = p if static_prefill_attends_to_the_prompt_only() else p + n - 1
        steps = [(p, prefill_keys)] + [(1, p + n - 1)] * (n - 1)
    flops = [_forward_flops(model, b, q, k) for q, k in steps]
    return flops[0], sum(flops)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama-gqa"])
def test_flops_equal_the_analytic_count(models: dict[str, Any], preset: str, cache: str) -> None:
    model = _model(models, preset)
    spec = GenerationSpec(cache=cache, batch_size=2, prompt_len=16, new_tokens=5)  # type: ignore[arg-type]
    work = measure_work(model, spec, *make_prompts(model, spec))
    assert (work.prefill_flops, work.flops) == analytic_flops(model, spec)


# --- KV bytes ---------------------------------------------------------------------------------------


def _tensor_sum_bytes(cache: Any) -> int:
    """The cache's bytes as the plain sum of its key and value tensors (no storage deduplication)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@pytest.mark.parametrize("cache", ["on", "static"])
@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama-gqa"])
def test_kv_bytes_equal_the_cache_tensors_and_the_formula(models: dict[str, Any], preset: str, cache: str) -> None:
    model = _model(models, preset)
    spec = GenerationSpec(cache=cache, batch_size=3, prompt_len=12, new_tokens=6)  # type: ignore[arg-type]
    ids, mask = make_prompts(model, spec)
    timing = time_generation(model, spec, ids, mask)
    returned = returned_cache(_generate(model, spec, ids, mask))
    assert timing.kv_cache_bytes == _tensor_sum_bytes(returned) == spec_kv_cache_bytes(model.config, spec)


# --- CPU peak memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_cpu_peak_equals_the_allocators_figure(models: dict[str, Any], preset: str, cache: str) -> None:
    model = _model(models, preset)
    spec = GenerationSpec(cache=cache, batch_size=2, prompt_len=24, new_tokens=6)  # type: ignore[arg-type]
    ids, mask = make_prompts(model, spec)
    _generate(model, spec, ids, mask)  # first-call allocations (lazy state) out of the way of both
    # Before transformers 5.15 generate keeps its static cache on the model; the next call drops it
    # (forget_static_cache), and when the cycle holding it is collected inside the allocator's window
    # its figure moves by up to a cache. Drop and collect it first, so both measures start alike.
    forget_static_cache(model)
    gc.collect()
    _, allocator = allocator_peak_bytes(lambda: _generate(model, spec, ids, mask))
    peak = measure_peak_memory(model, spec, ids, mask)
    assert 0 <= allocator - peak.peak_above_weights_bytes <= SCRATCH_TOLERANCE_BYTES


# --- TTFT and TPOT ----------------------------------------------------------------------------------

#: Tolerances on harness / manual loop in thread CPU time (distilgpt2 shape, prompt 32, 8 new tokens,
#: 12 interleaved rounds; TTFT: the median of the per-round ratios; TPOT: the ratio of the medians of
#: every decode step's CPU time). Measured in 12 runs of this test on the 2-core VM with other test
#: suites running: TTFT 1.011-1.036, TPOT 0.992-1.017. generate prepares its inputs, cache and logits
#: processors once before the first token (about 1.5 ms of 64 ms), so TTFT gets more room above 1.
#: Fixing the token count with ``min_new_tokens`` instead, as kvperf used to, gave TPOT 1.05.
TPOT_RATIO = (0.97, 1.03)
TTFT_RATIO = (0.97, 1.07)


def _manual_loop(model: Any, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> tuple[float, list[float]]:
    """TTFT and the per-step times of a hand-written greedy decode loop that carries a
    ``DynamicCache``, in thread CPU time: the prompt's forward pass and first argmax, then one forward
    and argmax per further token."""
    with torch.no_grad():
        start = time.thread_time()
        step = {cache_kwarg(): DynamicCache(config=model.config), "use_cache": True, "logits_to_keep": 1}
        token = model(input_ids=ids, attention_mask=mask, **step).logits[:, -1].argmax(-1, keepdim=True)
        stamps = [time.thread_time()]
        for _ in range(new_tokens - 1):
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            token = model(input_ids=token, attention_mask=mask, **step).logits[:, -1].argmax(-1, keepdim=True)
            stamps.append(time.thread_time())
    return stamps[0] - start, [b - a for a, b in pairwise(stamps)]


def _ratios(model: Any, spec: GenerationSpec, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(TTFT, TPOT) of the harness over the manual loop, in thread CPU time, from 12 interleaved rounds."""
    ttft_ratios: list[float] = []
    manual_steps: list[float] = []
    harness_steps: list[float] = []
    for i in range(12):
        # alternate the order, so that neither side always runs right after the other
        for side in ("manual", "harness") if i % 2 else ("harness", "manual"):
            if side == "manual":
                manual_ttft, steps = _manual_loop(model, ids, mask, spec.new_tokens)
                manual_steps += steps
            else:
                timing = time_generation(model, spec, ids, mask)
                harness_steps += timing.itl_cpu_s
                # CPU and wall clocks are read together (wall first, so a few microseconds apart):
                # one thread's CPU time can't exceed the wall time
                assert timing.ttft_cpu_s <= timing.ttft_s + 1e-3 and timing.e2e_cpu_s <= timing.e2e_s + 1e-3
                assert timing.e2e_cpu_s == pytest.approx(timing.ttft_cpu_s + sum(timing.itl_cpu_s), abs=1e-3)
        ttft_ratios.append(timing.ttft_cpu_s / manual_ttft)
    return statistics.median(ttft_ratios), statistics.median(harness_steps) / statistics.median(manual_steps)


def test_ttft_and_tpot_match_a_manual_decode_loop_in_cpu_time(models: dict[str, Any]) -> None:
    """Up to three measurements: the first inside both tolerances passes. Other processes on the cores
    move a ratio by a few percent either way (TPOT 1.041 once, at a load average of 8 on 2 vCPUs);
    added per-step work moves it the same way every time (``min_new_tokens``: 1.046-1.050 in 3 of 3)."""
    model = _model(models, "distilgpt2")
    spec = GenerationSpec(cache="on", batch_size=1, prompt_len=32, new_tokens=8)
    ids, mask = make_prompts(model, spec)
    _manual_loop(model, ids, mask, spec.new_tokens)  # warm-up
    time_generation(model, spec, ids, mask)
    seen: list[tuple[float, float]] = []
    for _ in range(3):
        ttft, tpot = _ratios(model, spec, ids, mask)
        seen.append((ttft, tpot))
        print(f"TTFT ratio {ttft:.4f}, TPOT ratio {tpot:.4f}")  # shown with -s; the tolerance study reads it
        if TTFT_RATIO[0] <= ttft <= TTFT_RATIO[1] and TPOT_RATIO[0] <= tpot <= TPOT_RATIO[1]:
            return
    shown = ", ".join(f"TTFT {a:.4f} TPOT {b:.4f}" for a, b in seen)
    pytest.fail(f"harness / manual loop outside TTFT {TTFT_RATIO} or TPOT {TPOT_RATIO} in 3 of 3 tries: {shown}")
