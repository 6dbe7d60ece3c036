"""The run's estimate: the FLOP formula against torch's count, and the two rates solved from two calls."""

from __future__ import annotations

import pytest

from kvperf.measure import cost
from kvperf.measure.cost import (
    CallRates,
    ModelWork,
    estimated_call_flops,
    estimated_call_s,
    estimated_case_s,
    measure_rates,
    model_work,
)
from kvperf.models import load_model
from kvperf.spec import GenerationSpec

_SPECS = [GenerationSpec(cache=c, batch_size=b, prompt_len=p, new_tokens=n)
          for c in ("on", "static", "off") for b, p, n in ((1, 8, 6), (3, 5, 4))]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama-gqa"])
def test_the_formula_is_what_torch_counts(name: str):
    from kvperf.measure.prompts import make_prompts
    from kvperf.measure.work import measure_work

    model = load_model(name)
    work = model_work(model)
    for spec in _SPECS:
        input_ids, attention_mask = make_prompts(model, spec)
        counted = measure_work(model, spec, input_ids, attention_mask).flops
        # Equal on 5.24; older releases run a little more (static prefill over the whole static length
        # before 5.15, kvperf.measure.work): an estimate for the ETA, so within 1% on every release.
        assert abs(estimated_call_flops(work, spec) - counted) <= 0.01 * counted, spec


def test_the_formula_by_hand():
    work = ModelWork(linear_flops_per_position=100, head_flops_per_row=10, attention_flops_per_query_key=1)
    # cache on, prompt 4, 3 new: positions 4 + 2; head rows 3; query-keys 4*4 + 1*5 + 1*6
    assert estimated_call_flops(work, GenerationSpec(cache="on", batch_size=1, prompt_len=4, new_tokens=3)) == \
        600 + 30 + 27
    # static: every decode step attends over all 6 preallocated positions
    assert estimated_call_flops(work, GenerationSpec(cache="static", batch_size=1, prompt_len=4, new_tokens=3)) == \
        600 + 30 + 16 + 2 * 6
    # off, batch 2: positions 4 + 5 + 6 per sequence, query-keys 16 + 25 + 36
    assert estimated_call_flops(work, GenerationSpec(cache="off", batch_size=2, prompt_len=4, new_tokens=3)) == \
        2 * (1500 + 30 + 77)
    rates = CallRates(step_overhead_s=0.5, flops_per_s=100.0, calibration_s=0.0)
    spec = GenerationSpec(cache="on", batch_size=1, prompt_len=4, new_tokens=3)
    assert estimated_call_s(work, rates, spec) == pytest.approx(3 * 0.5 + 657 / 100)
    assert estimated_call_s(work, CallRates(0.5, None, 0.0), spec) == 1.5
    # a case of 4 timed calls and the two untimed ones: 3 steps of 0.25 s and twice the FLOPs
    assert estimated_case_s(work, CallRates(0.5, 100.0, 0.0, untimed_step_s=0.25), spec, 4) == \
        pytest.approx(4 * (1.5 + 6.57) + 0.75 + 2 * 6.57)


def _fake_clock(monkeypatch: pytest.MonkeyPatch, work: ModelWork, overhead_s: float, flops_per_s: float) -> None:
    """time_generation that takes ``steps * overhead + flops / rate``, without running anything."""
    from kvperf.measure import harness

    class _Timing:
        def __init__(self, spec: GenerationSpec):
            self.e2e_s = spec.new_tokens * overhead_s + estimated_call_flops(work, spec) / flops_per_s

    _no_model(monkeypatch)
    monkeypatch.setattr(harness, "time_generation", lambda model, spec, *args: _Timing(spec))


def _no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """No prompts and no untimed passes (they take no time here)."""
    monkeypatch.setattr("kvperf.measure.prompts.make_prompts", lambda model, spec: (None, None))
    monkeypatch.setattr("kvperf.measure.harness.measure_peak_memory", lambda *args: None)
    monkeypatch.setattr("kvperf.measure.work.measure_work", lambda *args: None)


def test_the_two_rates_are_solved_from_two_calls(monkeypatch: pytest.MonkeyPatch):
    work = ModelWork(linear_flops_per_position=10**6, head_flops_per_row=10**5, attention_flops_per_query_key=100)
    _fake_clock(monkeypatch, work, overhead_s=0.002, flops_per_s=5e9)
    rates = measure_rates(object(), work, max_positions=1024)  # type: ignore[arg-type]
    assert rates.step_overhead_s == pytest.approx(0.002)
    assert rates.flops_per_s == pytest.approx(5e9)
    assert rates.untimed_step_s == 0  # the passes took less than their FLOPs at that rate


def test_work_lost_in_the_overhead_counts_the_steps_alone(monkeypatch: pytest.MonkeyPatch):
    work = ModelWork(linear_flops_per_position=10, head_flops_per_row=1, attention_flops_per_query_key=1)
    from kvperf.measure import harness

    class _Timing:  # the many-steps call is slower per step than the prefill call: noise, not work
        def __init__(self, spec: GenerationSpec):
            self.e2e_s = spec.new_tokens * (0.003 if spec.new_tokens > 2 else 0.001)

    _no_model(monkeypatch)
    monkeypatch.setattr(harness, "time_generation", lambda model, spec, *args: _Timing(spec))
    rates = cost.measure_rates(object(), work, max_positions=512)  # type: ignore[arg-type]
    assert rates.flops_per_s is None and rates.step_overhead_s == pytest.approx(0.003)
