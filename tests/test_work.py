"""FLOP counts: exact, attention included, flat per token with the cache and growing without it."""

from __future__ import annotations

import pytest

from kvperf.measure.harness import generate_kwargs
from kvperf.measure.prompts import make_prompts
from kvperf.measure.work import count_flops, measure_work
from kvperf.models import load_model
from kvperf.spec import GenerationSpec


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gpt2")


def work(model, cache: str, prompt_len: int, new_tokens: int = 6, batch_size: int = 1):
    spec = GenerationSpec(cache=cache, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens)
    return measure_work(model, spec, *make_prompts(model, spec))


def test_counts_are_exact_and_repeatable(model):
    first, second = work(model, "on", 16), work(model, "on", 16)
    assert first == second
    assert first.generated_tokens == 6 and first.decode_tokens == 5
    assert 0 < first.prefill_flops < first.flops
    assert first.flops_per_token == first.flops / 6
    assert first.decode_flops_per_token == (first.flops - first.prefill_flops) / 5
    assert work(model, "on", 16, batch_size=2).flops == 2 * first.flops


def test_decode_work_is_flat_with_the_cache_and_grows_without_it(model):
    on_short, on_long = work(model, "on", 8), work(model, "on", 128)
    off_short, off_long = work(model, "off", 8), work(model, "off", 128)
    # With the cache a decode step's work grows only through attention over the context.
    assert on_long.decode_flops_per_token < 1.5 * on_short.decode_flops_per_token
    # Without it every step recomputes the whole prefix: about the sequence length times more.
    assert off_long.decode_flops_per_token > 8 * off_short.decode_flops_per_token
    assert off_long.decode_flops_per_token > 20 * on_long.decode_flops_per_token
    assert on_long.prefill_flops == off_long.prefill_flops  # the same prompt pass


def test_attention_on_cpu_is_counted(model):
    """SDPA on CPU runs aten._scaled_dot_product_flash_attention_for_cpu, which torch's counter
    has no formula for; kvperf adds one, so attention work (which grows with the context) is counted."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = GenerationSpec(cache="on", batch_size=1, prompt_len=64, new_tokens=2)
    input_ids, attention_mask = make_prompts(model, spec)
    counts = {}
    for name, counter in (("kvperf", count_flops()), ("torch", FlopCounterMode(display=False))):
        with counter:
            model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs(model, spec))
        counts[name] = counter.get_total_flops()
    # Per layer, the 64-token prompt pass: QK^T and AV, 2 * 2 * 64 * 64 * 64 FLOPs (4 heads x 16 dims).
    attention = model.config.n_layer * 2 * 2 * 64 * 64 * 64
    assert counts["kvperf"] - counts["torch"] >= attention


def test_static_work_does_not_depend_on_the_case_before(model):
    """generate keeps a static cache (before 5.15) or its length (from 5.15) on the model; the count
    of a static spec is that of its own cache, whatever static case ran before."""
    short = work(model, "static", 8)
    work(model, "static", 64)
    assert work(model, "static", 8) == short
