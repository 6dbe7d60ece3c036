"""What a run is: the frozen description of one generation case, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kvperf.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["CACHE_MODES", "DTYPES", "DTYPE_NAMES", "CacheMode", "GenerationSpec", "canonical_dtype",
           "dtype_short_name", "parse_dtype"]

CacheMode = Literal["on", "off", "static", "compiled", "quanto", "hqq", "fp8", "offloaded", "offloaded_static"]
#: "on" is transformers' default dynamic cache, "off" is ``use_cache=False`` (every step recomputes the
#: whole prefix), "static" is the preallocated ``StaticCache`` (``cache_implementation="static"``).
#: The others are transformers' other cache implementations (``kvperf.measure.cache_modes`` maps each
#: to its ``generate`` arguments and says where it runs): "compiled" is the static cache with the
#: forward pass under ``torch.compile``; "quanto", "hqq" and "fp8" the ``QuantizedCache`` backends;
#: "offloaded" and "offloaded_static" the dynamic and static caches that keep layers on the CPU (CUDA
#: only). Sliding-window layers are not a mode: a model whose config has them gets them in "on" and
#: "static" (``DynamicSlidingWindowLayer``, ``StaticSlidingWindowLayer``).
CACHE_MODES: tuple[str, ...] = ("on", "off", "static", "compiled", "quanto", "hqq", "fp8", "offloaded",
                                "offloaded_static")

#: The dtypes kvperf accepts, by the names users type, with the short form used in benchmark ids.
#: Plain names, so that reading a spec does not import torch (the plugin loads in every pytest
#: session); ``DTYPES`` maps them to torch dtypes on first use.
_SHORT_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DTYPE_NAMES: tuple[str, ...] = tuple(_SHORT_NAMES)
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}

if TYPE_CHECKING:
    DTYPES: dict[str, tuple[torch.dtype, str]]


def __getattr__(name: str) -> Any:
    if name == "DTYPES":  # torch's dtypes, imported on first use
        import torch

        return {full: (getattr(torch, full), short) for full, short in _SHORT_NAMES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def canonical_dtype(name: str) -> str:
    """``"bf16"`` -> ``"bfloat16"``: the name of a user-supplied dtype, without importing torch."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _SHORT_NAMES:
        raise UsageError(f"unknown dtype {name!r}: use one of {', '.join(DTYPE_NAMES)}")
    return key


def parse_dtype(name: str) -> torch.dtype:
    """Return the torch dtype for a user-supplied name such as ``"bfloat16"`` or ``"bf16"``."""
    import torch

    dtype: torch.dtype = getattr(torch, canonical_dtype(name))
    return dtype


def dtype_short_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` (or ``"bfloat16"``) -> ``"bf16"``, the form used in benchmark ids."""
    name = str(dtype).removeprefix("torch.")
    if name not in _SHORT_NAMES:
        raise UsageError(f"unsupported dtype {dtype}: use one of {', '.join(DTYPE_NAMES)}")
    return _SHORT_NAMES[name]


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

    def case_id(self, dtype: torch.dtype | str | None = None) -> str:
        """A readable id such as ``cache=on-bs=4-prompt=128-new=64-bf16``."""
        parts = [f"cache={self.cache}", f"bs={self.batch_size}", f"prompt={self.prompt_len}",
                 f"new={self.new_tokens}"]
        if dtype is not None:
            parts.append(dtype_short_name(dtype))
        return "-".join(parts)
