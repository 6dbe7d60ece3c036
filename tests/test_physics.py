"""Results that contradict the physics are flagged: contended cases in every report table, a cache that
costs more FLOPs than no cache, and a cache that costs more time while doing less work."""

from __future__ import annotations

from kvperf.report.experiments import make_tables
from kvperf.report.physics import contended, contradictions
from tests.test_report import _case


def _with(case: dict, *, flops: float, wait: float = 0.0) -> dict:
    return {**case, "flops": flops, "cpu_wait_samples": [wait] * 3}


def test_a_cache_slower_than_no_cache_is_explained_by_the_waiting_or_the_overhead():
    on = _with(_case("length", "on", 100, 0.6), flops=1e9, wait=0.6)
    off = _with(_case("length", "off", 100, 0.2), flops=5e10, wait=0.55)
    (line,) = contradictions([on, off])
    assert line == ("cache on, batch 1, prompt 8, 100 new, float32: took 3.00x the time of the cache off although it "
                    "does 50.0x fewer FLOPs; its rounds waited for a core up to 60% of the time (cpu_wait): the "
                    "machine was busy, rerun on a quiet one")
    quiet = contradictions([_with(on, flops=1e9), _with(off, flops=5e10)])
    assert quiet[0].endswith("no contention was recorded: at this size the per-step overhead outweighs the work saved")
    assert contradictions([_with(_case("length", "on", 100, 0.1), flops=1e9), off]) == []  # faster: as it should be


def test_a_cache_that_does_more_work_than_no_cache_is_a_bug():
    on = _with(_case("matrix", "static", 32, 0.1), flops=6e10)
    off = _with(_case("matrix", "off", 32, 0.3), flops=5e10)
    assert contradictions([on, off]) == [
        "cache static, batch 1, prompt 8, 32 new, float32: does more work than the cache off (60,000,000,000 against "
        "50,000,000,000 FLOPs): the cache is not saving the prefix's work, a bug to look at"]


def test_report_tables_flag_contended_cases_and_contradictions_in_experiment_order():
    cases = [_with(_case("length", "on", 100, 0.6), flops=1e9, wait=0.6),
             _with(_case("length", "off", 100, 0.2), flops=5e10),
             _with(_case("batch", "on", 32, 0.1), flops=1e9), _with(_case("matrix", "on", 32, 0.1), flops=1e9)]
    tables = make_tables(cases)
    assert [t.title.split(" (")[0] for t in tables] == [
        "Benchmark matrix", "Cache on vs off against output length", "Batching, cache on",
        "KV-cache formula against the measured tensors"]
    length = tables[1]
    assert length.headers[-1] == "busy" and length.rows[0][-1] == "! 60%"
    assert any(n.startswith("busy: '! N%' marks a case") for n in length.notes)
    assert any(n.startswith("contradicts the FLOP counts: cache on, batch 1, prompt 8, 100 new") for n in length.notes)
    assert tables[2].rows[0][-1] == "" and not any(n.startswith("busy") for n in tables[2].notes)
    assert contended({"cpu_wait_samples": [0.01, 0.02, 0.9]}) is None  # the median round was quiet
