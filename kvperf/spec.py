"""What a run is: the frozen description of one generation case, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from kvperf.errors import UsageError

__all__ = ["CACHE_MODES", "DTYPES", "CacheMode", "GenerationSpec", "dtype_short_name", "parse_dtype"]

CacheMode = Literal["on", "off", "static"]
#: "on" is transformers' default dynamic cache, "off" is ``use_cache=False`` (every step recomputes the
#: whole prefix), "static" is the preallocated ``StaticCache`` (``cache_implementation="static"``).
CACHE_MODES: tuple[str, ...] = ("on", "off", "static")

#: The dtypes kvperf accepts, by the names users type, with the short form used in benchmark ids.
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "fp32"),
    "bfloat16": (torch.bfloat16, "bf16"),
    "float16": (torch.float16, "fp16"),
}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def parse_dtype(name: str) -> torch.dtype:
    """Return the torch dtype for a user-supplied name such as ``"bfloat16"`` or ``"bf16"``."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[key][0]


def dtype_short_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``, the form used in benchmark ids."""
    for full, short in DTYPES.values():
        if full == dtype:
            return short
    raise UsageError(f"unsupported dtype {dtype}: use one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class GenerationSpec:
    """One generation case. The model, its dtype and its device are not part of the spec: they come
    from the model the spec is run on, so that one spec can be run across models.

    Decoding is always greedy with ``max_new_tokens == new_tokens`` and EOS stopping off, so that
    every run produces exactly ``batch_size * new_tokens`` tokens and timings are comparable.
    """

    cache: CacheMode = "on"
    batch_size: int = 1
    prompt_len: int = 128
    new_tokens: int = 64
    #: Seed of the prompt token ids (see ``kvperf.make_prompts``).
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cache not in CACHE_MODES:
            raise UsageError(f"unknown cache mode {self.cache!r}: use one of {', '.join(CACHE_MODES)}")
        for name in ("batch_size", "prompt_len", "new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.new_tokens < 2:
            # TPOT and inter-token latencies need at least one decode step after the first token.
            raise UsageError(f"new_tokens must be at least 2 to time decode steps, got {self.new_tokens}")

    @property
    def total_len(self) -> int:
        """Positions the sequence reaches: prompt plus generated tokens."""
        return self.prompt_len + self.new_tokens

    def case_id(self, dtype: torch.dtype | None = None) -> str:
        """A readable id such as ``cache=on-bs=4-prompt=128-new=64-bf16``."""
        parts = [f"cache={self.cache}", f"bs={self.batch_size}", f"prompt={self.prompt_len}",
                 f"new={self.new_tokens}"]
        if dtype is not None:
            parts.append(dtype_short_name(dtype))
        return "-".join(parts)
