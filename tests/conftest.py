"""Hypothesis profiles, and the ``one_thread`` fixture of the model-heavy test modules.

Hypothesis profiles. ``ci`` (the default) is deterministic: the same examples on every run and
machine, no example database, no deadline (CPU timings vary). ``dev`` explores more, at random.

Select one with ``HYPOTHESIS_PROFILE=dev pytest tests/``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

# The plugin imports these on first use (kvperf.plugin). pytester's in-process runs drop the modules
# first imported inside them, and importing torch's parts a second time warns (an error here): so
# the test process imports them once, up front. The same goes for the modeling code of the presets,
# which kvperf.models imports where a model is built: a model class imported a second time is a new
# class that transformers' registries (attention implementations) do not know.
for _module in (
    "kvperf.measure.bench",
    "kvperf.measure.harness",
    "kvperf.models",
    "kvperf.measure.oom",
    "kvperf.measure.prompts",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.llama.modeling_llama",
    "transformers.models.mistral.modeling_mistral",
):
    importlib.import_module(_module)

# Every pytest session that runs a kvperf case measures the machine's roofline ceilings once (a STREAM
# triad and a matmul, about a second); the tests' dozens of sessions skip it, and their subprocesses
# inherit that. tests/test_plugin_roofline.py measures them for real.
os.environ.setdefault("KVPERF_TEST_SKIP_CEILINGS", "1")

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=50,
    print_blob=True,
    # Building a model per example is slow by hypothesis' standards, not by ours.
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=200,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

_profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if _profile not in ("ci", "dev"):
    raise ValueError(f"HYPOTHESIS_PROFILE={_profile!r} is not a profile of kvperf's tests: use ci or dev")
settings.load_profile(_profile)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tiny models on one intra-op thread, then restore torch's setting.

    Tiny models are latency-bound: a second thread only adds hand-offs, which cost ~100x the work
    when another process keeps the cores busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
