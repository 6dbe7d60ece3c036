"""What the harness costs: a timed ``time_generation`` call against a bare ``model.generate``.

Both run the same inputs and the same generate arguments; the harness adds its streamer clock, the
device syncs, the token count check and the KV-byte measurement. The two are interleaved round by
round (the bare call runs in pedantic's untimed ``setup``), so drift on a shared machine hits both
alike. The target is an overhead ratio (harness median / bare median) of at most 1.01; the measured
figure is in the README.
"""

from __future__ import annotations

import statistics
import time

import pytest

from kvperf.measure.harness import generate_kwargs, time_generation
from kvperf.measure.prompts import make_prompts
from kvperf.spec import GenerationSpec

#: Paired rounds: many on the tiny quick-tier model, fewer on the full tier's distilgpt2.
ROUNDS = {"quick": 41, "full": 11}


@pytest.mark.parametrize("cache", ["on", "off"])
def test_harness_overhead(benchmark, kvperf_config, kvperf_model, cache):
    model = kvperf_model(kvperf_config.dtypes[0])
    rounds = ROUNDS.get(kvperf_config.tier.name, 11)
    spec = GenerationSpec(cache=cache, batch_size=1, prompt_len=32, new_tokens=64)
    input_ids, attention_mask = make_prompts(model, spec)
    kwargs = generate_kwargs(model, spec)
    bare_s: list[float] = []
    harness_s: list[float] = []

    def bare() -> None:
        start = time.perf_counter()
        model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        bare_s.append(time.perf_counter() - start)

    def harness() -> None:
        start = time.perf_counter()
        time_generation(model, spec, input_ids, attention_mask)
        harness_s.append(time.perf_counter() - start)

    benchmark.group = "overhead"
    benchmark.pedantic(harness, setup=bare, rounds=rounds, warmup_rounds=2, iterations=1)
    bare_s, harness_s = bare_s[-rounds:], harness_s[-rounds:]
    ratio = statistics.median(harness_s) / statistics.median(bare_s)
    benchmark.extra_info.update(
        spec=spec.case_id(), model=kvperf_config.model, bare_median_s=statistics.median(bare_s),
        harness_median_s=statistics.median(harness_s), overhead_ratio=ratio,
        bare_s_samples=bare_s, harness_s_samples=harness_s,
    )
    # Every timed round produced a paired bare call: the comparison is like for like.
    assert len(bare_s) == len(harness_s) == rounds
