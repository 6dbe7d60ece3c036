"""kvperf: a performance-regression suite for the KV cache of transformers causal language models.

The names below are imported on first use (PEP 562), so that ``import kvperf.<module>``, the pytest
plugin and ``kvperf --help`` do not pay for torch and transformers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvperf.errors import BadInputError, KvperfError, ModelNotAvailableError, UsageError
    from kvperf.gate.ab import Side, run_ab
    from kvperf.gate.baseline import Baseline, load_baseline
    from kvperf.gate.compare import Comparison, compare
    from kvperf.kv.kv_size import (
        KvSizeEstimate,
        Quantization,
        estimate_kv_cache,
        kv_bytes_per_token,
        kv_cache_bytes,
        measure_cache_bytes,
    )
    from kvperf.measure.energy import energy_meter
    from kvperf.measure.harness import GenerationResult, run_generation
    from kvperf.measure.prompts import make_prompts
    from kvperf.measure.roofline import Roofline, case_roofline
    from kvperf.measure.telemetry import GpuTelemetry, gpu_telemetry
    from kvperf.measure.work import measure_work
    from kvperf.models import PRESETS, load_model
    from kvperf.spec import GenerationSpec

#: Where each public name lives.
_MODULES = {
    "PRESETS": "kvperf.models",
    "BadInputError": "kvperf.errors",
    "Baseline": "kvperf.gate.baseline",
    "Comparison": "kvperf.gate.compare",
    "GenerationResult": "kvperf.measure.harness",
    "GenerationSpec": "kvperf.spec",
    "GpuTelemetry": "kvperf.measure.telemetry",
    "Roofline": "kvperf.measure.roofline",
    "case_roofline": "kvperf.measure.roofline",
    "energy_meter": "kvperf.measure.energy",
    "gpu_telemetry": "kvperf.measure.telemetry",
    "KvSizeEstimate": "kvperf.kv.kv_size",
    "KvperfError": "kvperf.errors",
    "ModelNotAvailableError": "kvperf.errors",
    "Quantization": "kvperf.kv.kv_size",
    "Side": "kvperf.gate.ab",
    "UsageError": "kvperf.errors",
    "compare": "kvperf.gate.compare",
    "estimate_kv_cache": "kvperf.kv.kv_size",
    "kv_bytes_per_token": "kvperf.kv.kv_size",
    "kv_cache_bytes": "kvperf.kv.kv_size",
    "load_baseline": "kvperf.gate.baseline",
    "load_model": "kvperf.models",
    "make_prompts": "kvperf.measure.prompts",
    "measure_cache_bytes": "kvperf.kv.kv_size",
    "measure_work": "kvperf.measure.work",
    "run_ab": "kvperf.gate.ab",
    "run_generation": "kvperf.measure.harness",
}

__all__ = [
    "PRESETS",
    "BadInputError",
    "Baseline",
    "Comparison",
    "GenerationResult",
    "GenerationSpec",
    "GpuTelemetry",
    "KvSizeEstimate",
    "KvperfError",
    "ModelNotAvailableError",
    "Quantization",
    "Roofline",
    "Side",
    "UsageError",
    "case_roofline",
    "compare",
    "energy_meter",
    "estimate_kv_cache",
    "gpu_telemetry",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "load_baseline",
    "load_model",
    "make_prompts",
    "measure_cache_bytes",
    "measure_work",
    "run_ab",
    "run_generation",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'kvperf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
