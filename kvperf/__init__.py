"""kvperf: a performance-regression suite for the KV cache of transformers causal language models.

The names below are imported on first use (PEP 562), so that ``import kvperf.<module>``, the pytest
plugin and ``kvperf --help`` do not pay for torch and transformers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvperf.ab import Side, run_ab
    from kvperf.baseline import Baseline, load_baseline
    from kvperf.compare import Comparison, compare
    from kvperf.errors import BadInputError, KvperfError, ModelNotAvailableError, UsageError
    from kvperf.harness import GenerationResult, run_generation
    from kvperf.kv_size import (
        KvSizeEstimate,
        Quantization,
        estimate_kv_cache,
        kv_bytes_per_token,
        kv_cache_bytes,
        measure_cache_bytes,
    )
    from kvperf.models import PRESETS, load_model
    from kvperf.prompts import make_prompts
    from kvperf.spec import GenerationSpec
    from kvperf.work import measure_work

#: Where each public name lives.
_MODULES = {
    "PRESETS": "kvperf.models",
    "BadInputError": "kvperf.errors",
    "Baseline": "kvperf.baseline",
    "Comparison": "kvperf.compare",
    "GenerationResult": "kvperf.harness",
    "GenerationSpec": "kvperf.spec",
    "KvSizeEstimate": "kvperf.kv_size",
    "KvperfError": "kvperf.errors",
    "ModelNotAvailableError": "kvperf.errors",
    "Quantization": "kvperf.kv_size",
    "Side": "kvperf.ab",
    "UsageError": "kvperf.errors",
    "compare": "kvperf.compare",
    "estimate_kv_cache": "kvperf.kv_size",
    "kv_bytes_per_token": "kvperf.kv_size",
    "kv_cache_bytes": "kvperf.kv_size",
    "load_baseline": "kvperf.baseline",
    "load_model": "kvperf.models",
    "make_prompts": "kvperf.prompts",
    "measure_cache_bytes": "kvperf.kv_size",
    "measure_work": "kvperf.work",
    "run_ab": "kvperf.ab",
    "run_generation": "kvperf.harness",
}

__all__ = [
    "PRESETS",
    "BadInputError",
    "Baseline",
    "Comparison",
    "GenerationResult",
    "GenerationSpec",
    "KvSizeEstimate",
    "KvperfError",
    "ModelNotAvailableError",
    "Quantization",
    "Side",
    "UsageError",
    "compare",
    "estimate_kv_cache",
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
