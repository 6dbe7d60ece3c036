from __future__ import annotations

import pytest
import torch

from kvperf import GenerationSpec, load_model, run_generation
from kvperf.measure import harness
from kvperf.measure.harness import count_generated_tokens, generate_kwargs


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gpt2")


@pytest.mark.parametrize("cache", ["on", "off", "static"])
def test_result_fields_are_consistent(model, cache):
    spec = GenerationSpec(cache=cache, batch_size=2, prompt_len=16, new_tokens=9)
    result = run_generation(model, spec, warmup_runs=0)
    assert result.generated_tokens == 2 * 9
    assert len(result.itl_s) == spec.new_tokens - 1
    assert all(x > 0 for x in result.itl_s)
    assert 0 < result.ttft_s < result.e2e_s
    assert result.tpot_s == pytest.approx((result.e2e_s - result.ttft_s) / (spec.new_tokens - 1))
    assert result.tokens_per_s == pytest.approx(18 / result.e2e_s)
    # The streamer's clock covers the call: first token + decode gaps fit inside e2e.
    assert result.ttft_s + sum(result.itl_s) <= result.e2e_s
    assert result.itl_p50_s <= result.itl_p95_s <= result.itl_p99_s <= max(result.itl_s)
    assert result.peak_memory_bytes > 0
    assert (result.kv_cache_bytes == 0) == (cache == "off")


def test_kv_bytes_match_the_cached_positions(model):
    # K and V, 2 layers, batch 2, 4 heads x 16 dims, prompt + new - 1 positions, 4 bytes.
    result = run_generation(model, GenerationSpec(batch_size=2, prompt_len=16, new_tokens=9), warmup_runs=0)
    assert result.kv_cache_bytes == 2 * 2 * 2 * 64 * (16 + 9 - 1) * 4


def test_output_hash_is_the_generated_tokens_and_the_same_with_every_cache(model):
    """The fingerprint of a call: equal across calls and cache modes (the cache must not change greedy
    tokens in float32), different for other prompts."""
    spec = GenerationSpec(batch_size=2, prompt_len=16, new_tokens=9)
    first, again = (run_generation(model, spec, warmup_runs=0, measure_memory=False) for _ in range(2))
    assert first.output_sha256 is not None and len(first.output_sha256) == 64
    assert first.output_sha256 == again.output_sha256
    for cache in ("off", "static"):
        other = GenerationSpec(cache=cache, batch_size=2, prompt_len=16, new_tokens=9)
        assert run_generation(model, other, warmup_runs=0, measure_memory=False).output_sha256 == first.output_sha256
    reseeded = GenerationSpec(batch_size=2, prompt_len=16, new_tokens=9, seed=1)
    assert run_generation(model, reseeded, warmup_runs=0, measure_memory=False).output_sha256 != first.output_sha256


def test_static_cache_is_sized_for_each_spec_alone(model):
    """generate() would reuse the largest static length of earlier calls; kvperf must not."""
    run_generation(model, GenerationSpec(cache="static", prompt_len=64, new_tokens=9), warmup_runs=0)
    small = run_generation(model, GenerationSpec(cache="static", prompt_len=16, new_tokens=9), warmup_runs=0)
    assert small.kv_cache_bytes == 2 * 2 * 1 * 64 * (16 + 9 - 1) * 4


def test_exactly_new_tokens_even_when_eos_is_likely(model):
    """EOS stopping is off: a model that prefers EOS still produces every token."""
    biased = load_model("tiny-gpt2")
    with torch.no_grad():
        biased.transformer.wte.weight[biased.config.eos_token_id] *= 50  # EOS wins every argmax
    result = run_generation(biased, GenerationSpec(batch_size=3, prompt_len=8, new_tokens=12), warmup_runs=0)
    assert result.generated_tokens == 36


def test_token_count_is_every_position_after_the_prompt():
    sequences = torch.tensor([[9, 9, 5, 0, 0, 0], [9, 9, 5, 6, 7, 8]])  # prompt of 2
    assert count_generated_tokens(sequences, 2) == 4 + 4


def test_a_call_that_ends_early_is_refused(model, monkeypatch):
    """The check after the call: if a stopping criterion cut the output short, the harness says so."""
    spec = GenerationSpec(batch_size=1, prompt_len=8, new_tokens=6)
    original = harness.generate_kwargs
    monkeypatch.setattr(harness, "generate_kwargs", lambda m, s: {**original(m, s), "max_new_tokens": 4})
    with pytest.raises(RuntimeError, match="generate produced 4 tokens, expected 1 x 6"):
        run_generation(model, spec, warmup_runs=0)


def test_generate_arguments_fix_the_token_count_and_are_greedy(model):
    kwargs = generate_kwargs(model, GenerationSpec(cache="off", new_tokens=7))
    assert kwargs["max_new_tokens"] == 7 and kwargs["eos_token_id"] is None
    # min_new_tokens would add per-step logits processors that a user's generate call does not run
    assert "min_new_tokens" not in kwargs
    assert kwargs["do_sample"] is False and kwargs["num_beams"] == 1
    assert kwargs["use_cache"] is False
    assert generate_kwargs(model, GenerationSpec(cache="static"))["cache_implementation"] == "static"


def test_cpu_peak_memory_is_reproducible_and_grows_with_the_batch(model):
    small = GenerationSpec(batch_size=1, prompt_len=32, new_tokens=4)
    large = GenerationSpec(batch_size=8, prompt_len=32, new_tokens=4)
    first = run_generation(model, small, warmup_runs=0).peak_memory_bytes
    second = run_generation(model, small, warmup_runs=0).peak_memory_bytes
    assert first == second
    assert run_generation(model, large, warmup_runs=0).peak_memory_bytes > first


def test_memory_pass_can_be_skipped(model):
    result = run_generation(model, GenerationSpec(prompt_len=8, new_tokens=3), measure_memory=False)
    assert result.peak_memory_bytes == -1


def test_summary_is_flat_and_has_no_raw_latencies(model):
    summary = run_generation(model, GenerationSpec(prompt_len=8, new_tokens=3), warmup_runs=0).summary()
    assert "itl_s" not in summary and "spec" not in summary
    assert {"e2e_s", "ttft_s", "tpot_s", "tokens_per_s", "peak_memory_bytes", "kv_cache_bytes",
            "generated_tokens", "itl_p50_s", "itl_p95_s"} <= summary.keys()


@pytest.mark.gpu
def test_cuda_timing_and_allocator_peak():
    gpu_model = load_model("tiny-gpt2", device="cuda")
    result = run_generation(gpu_model, GenerationSpec(batch_size=2, prompt_len=16, new_tokens=8))
    assert result.device.startswith("cuda")
    assert 0 < result.ttft_s < result.e2e_s
    # The allocator's peak includes the weights, which are already on the device.
    weights = sum(p.numel() * p.element_size() for p in gpu_model.parameters())
    assert result.peak_memory_bytes >= weights
