"""kvperf: a performance-regression suite for the KV cache of transformers causal language models."""

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
