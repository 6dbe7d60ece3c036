"""The benchmark matrix and the README's experiments ("The experiments, one command each"), one test each.

Which cases run is decided by the tier (``--kvperf-tier quick|full|cpu``) and the ``--kvperf-*`` options;
see ``kvperf.tiers``. Each case records its spec, its result and the raw per-token latencies in
``benchmark.extra_info``.
"""

from __future__ import annotations

import pytest


@pytest.mark.kvperf_experiment("matrix")
def test_matrix(kvperf_case, kvperf_bench):
    """Cache on/off x batch size x prompt length x dtype: the regression grid."""
    kvperf_bench(kvperf_case)


@pytest.mark.kvperf_experiment("length")
def test_length(kvperf_case, kvperf_bench):
    """Cache on vs off against output length: total time O(n) with the cache, O(n^2) without."""
    kvperf_bench(kvperf_case)


@pytest.mark.kvperf_experiment("batch")
def test_batch(kvperf_case, kvperf_bench):
    """Throughput and per-token latency against batch size, cache on."""
    kvperf_bench(kvperf_case)


@pytest.mark.kvperf_experiment("context")
def test_context(kvperf_case, kvperf_bench):
    """Per-token latency and peak memory against prompt length, cache on."""
    kvperf_bench(kvperf_case)


@pytest.mark.kvperf_experiment("first_token")
def test_first_token(kvperf_case, kvperf_bench):
    """Time to first token (prefill) against time per output token, for a short prompt."""
    kvperf_bench(kvperf_case)


@pytest.mark.kvperf_experiment("caches")
def test_caches(kvperf_case, kvperf_bench):
    """Every cache implementation transformers offers (compiled static, quantized, offloaded) at one size;
    each that cannot run here is skipped with the reason (kvperf.measure.cache_modes)."""
    kvperf_bench(kvperf_case)


@pytest.mark.kvperf_experiment("sliding")
def test_sliding(kvperf_case, kvperf_bench):
    """The dynamic and static caches of a sliding-window model on a prompt longer than its window."""
    kvperf_bench(kvperf_case)
