"""kvperf: a performance-regression suite for the KV cache of transformers causal language models."""

from kvperf.errors import KvperfError, ModelNotAvailableError, UsageError
from kvperf.harness import GenerationResult, run_generation
from kvperf.models import PRESETS, load_model
from kvperf.prompts import make_prompts
from kvperf.spec import GenerationSpec

__all__ = [
    "PRESETS",
    "GenerationResult",
    "GenerationSpec",
    "KvperfError",
    "ModelNotAvailableError",
    "UsageError",
    "load_model",
    "make_prompts",
    "run_generation",
]
