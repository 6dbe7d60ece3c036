"""KV-cache bytes: measured from the tensors a real cache object holds."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["measure_cache_bytes"]


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return 0


def measure_cache_bytes(cache: Any) -> int:
    """Bytes of the key and value tensors held by a transformers ``Cache`` (0 for ``None``).

    Counts, per layer, the tensors the layer holds: ``keys`` and ``values`` for dynamic and static
    layers (a static layer's are preallocated to ``max_cache_len``).
    """
    if cache is None:
        return 0
    total = 0
    for layer in getattr(cache, "layers", ()):
        if not getattr(layer, "is_initialized", True):
            continue
        total += _tensor_bytes(getattr(layer, "keys", None)) + _tensor_bytes(getattr(layer, "values", None))
    return total
