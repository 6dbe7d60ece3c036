"""How long a context fits on a device: its memory, the model's weights, and the KV formula.

``max_context_tokens`` answers "how many positions per sequence can the cache hold in what the
weights leave free". It is an upper bound: activations, the logits, the allocator's fragmentation and
the CUDA context take memory too.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from transformers import PretrainedConfig

from kvperf.errors import UsageError
from kvperf.kv.kv_size import KvShape, Quantization, estimate_kv_cache, kv_cache_bytes, quantizable_kv_width
from kvperf.models import max_positions
from kvperf.spec import DTYPES, parse_dtype

__all__ = [
    "BYTE_UNITS",
    "config_dtype",
    "format_bytes",
    "gpu_free_memory_bytes",
    "kv_size_report",
    "max_context_tokens",
    "parse_bytes",
    "weight_bytes",
]

#: Units ``parse_bytes`` accepts, case-insensitively: decimal (kB, MB, GB, TB) and binary (KiB ... TiB).
BYTE_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)")


def parse_bytes(text: str) -> int:
    """``"24GiB"`` -> 25769803776, ``"80GB"`` -> 80000000000, ``"1048576"`` -> 1048576 (rounded down)."""
    cleaned = text.strip().lower()
    match = _SIZE.fullmatch(cleaned)
    if cleaned.startswith("-"):
        raise UsageError(f"device memory {text!r} is negative: give a size such as 24GiB or 80GB")
    if match is None or match["unit"] not in BYTE_UNITS:
        raise UsageError(f"cannot read device memory {text!r}: give bytes, or a number with one of the units "
                         "kB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. 24GiB, 80GB), or auto")
    return int(float(match["number"]) * BYTE_UNITS[match["unit"]])


def format_bytes(value: int) -> str:
    """``1536`` -> ``"1,536 (1.50 KiB)"``: the exact count, then binary units for reading."""
    scaled, unit = float(value), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if abs(scaled) < 1024:
            break
        scaled, unit = scaled / 1024, next_unit
    return f"{value:,}" if unit == "B" else f"{value:,} ({scaled:.2f} {unit})"


def gpu_free_memory_bytes() -> tuple[int, str]:
    """Free memory of the current GPU through NVML, and the GPU's name.

    The current GPU is the first one in ``CUDA_VISIBLE_DEVICES`` (an index or a ``GPU-``/``MIG-``
    UUID), else GPU 0. NVML numbers GPUs in PCI bus order, as CUDA does with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
    """
    try:
        import pynvml
    except ImportError:
        raise UsageError("--device-memory auto needs pynvml: pip install nvidia-ml-py") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise UsageError(f"--device-memory auto: no NVIDIA GPU is present (NVML: {exc}): "
                         "pass the memory instead, e.g. --device-memory 24GiB") from None
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        if pynvml.nvmlDeviceGetCount() == 0 or visible in ("-1", "none", "NoDevFiles"):
            raise UsageError("--device-memory auto: no NVIDIA GPU is visible: "
                             "pass the memory instead, e.g. --device-memory 24GiB")
        if visible.startswith(("GPU-", "MIG-")):
            handle = pynvml.nvmlDeviceGetHandleByUUID(visible)
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)
        name = pynvml.nvmlDeviceGetName(handle)
        free = int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
    except pynvml.NVMLError as exc:
        raise UsageError(f"--device-memory auto: NVML cannot read the GPU's memory ({exc}): "
                         "pass the memory instead, e.g. --device-memory 24GiB") from None
    finally:
        pynvml.nvmlShutdown()
    return free, name.decode() if isinstance(name, bytes) else str(name)


def weight_bytes(config: PretrainedConfig, dtype: str | torch.dtype = "float32") -> int:
    """Bytes of the model's weights in ``dtype``: its state dict (parameters and persistent buffers),
    counted on the meta device (nothing is allocated; a tied embedding counts once, integer buffers keep
    their own size).

    Non-persistent buffers are left out: they are derived from the config, not weights, and which
    ones a model has depends on the release (GPT-2's ``n_positions``-squared causal mask ``bias`` and
    its ``masked_bias`` before transformers 5.5, rotary ``inv_freq``). Some releases (5.0) build the
    model on the meta device without tying its LM head to the embedding; it is tied here when the
    config asks for it."""
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, ImportError) as exc:
        raise UsageError(f"cannot build the model of model_type {getattr(config, 'model_type', '?')!r} to "
                         f"count its weights ({' '.join(str(exc).split())[:160]}): use a config transformers "
                         "knows, or leave out --device-memory") from None
    model.tie_weights()  # a no-op where from_config tied them already, or the config unties them
    tensors = {id(t): t for t in model.state_dict(keep_vars=True).values()}
    return sum(t.numel() * (torch_dtype.itemsize if t.is_floating_point() else t.element_size())
               for t in tensors.values())


def max_context_tokens(
    config: PretrainedConfig | KvShape,
    batch_size: int,
    budget_bytes: int,
    dtype: str | torch.dtype = "float32",
    cache: str = "dynamic",
    *,
    limit_tokens: int = 2**31,
    quantization: Quantization | None = None,
) -> int:
    """The largest ``seq_len`` (at most ``limit_tokens``) whose cache fits in ``budget_bytes``; 0 if none.

    The cache's bytes include the conv and recurrent states of hybrid models, which do not grow with
    ``seq_len``: they are taken from the budget first. Bytes never decrease with ``seq_len``, so a
    binary search finds it. For quanto, ``q_group_size`` must divide ``kv_heads x head_dim`` so that
    every length can be quantized.
    """
    shape = config if isinstance(config, KvShape) else KvShape.from_config(config)
    quant = quantization or Quantization()
    width = quantizable_kv_width(shape) if cache == "quantized" else 0
    if cache == "quantized" and quant.backend == "quanto" and width % quant.q_group_size:
        raise UsageError(f"q_group_size {quant.q_group_size} must divide kv_heads x head_dim = {width} "
                         "to size every context length")
    if limit_tokens < 1:
        raise UsageError(f"limit_tokens must be a positive integer, got {limit_tokens}")

    def fits(seq_len: int) -> bool:
        return kv_cache_bytes(shape, batch_size, seq_len, dtype, cache, quantization=quant) <= budget_bytes

    if budget_bytes < 0 or not fits(1):
        return 0
    if fits(limit_tokens):
        return limit_tokens
    low, high = 1, limit_tokens  # fits(low) and not fits(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def config_dtype(config: PretrainedConfig) -> str:
    """The dtype a checkpoint was saved in (``config.dtype``) when kvperf knows it, else float32."""
    value = getattr(config, "dtype", None)
    name = str(value).removeprefix("torch.") if value is not None else ""
    return name if name in DTYPES else "float32"


def kv_size_report(
    model: str,
    config: PretrainedConfig,
    *,
    batch_size: int,
    seq_len: int | None,
    dtype: str | None,
    cache: str,
    quantization: Quantization,
    device_memory: str | None,
) -> dict[str, Any]:
    """What ``kvperf kv-size`` prints, as flat JSON values.

    ``seq_len`` defaults to the model's position limit (2048 without one), ``dtype`` to the config's.
    With ``device_memory`` (bytes, a size such as ``24GiB``, or ``auto``), it adds the weights' bytes
    and the longest context per sequence whose cache fits beside them.
    """
    limit = max_positions(config)
    dtype = dtype or config_dtype(config)
    estimate = estimate_kv_cache(config, batch_size, seq_len if seq_len is not None else limit or 2048, dtype, cache,
                                 quantization=quantization)
    data = estimate.to_dict()
    order = ("model_type", "num_layers", "num_kv_heads", "head_dim", "layer_kinds", "layer_windows", "cache",
             "dtype", "bytes_per_token", "batch_size", "seq_len", "kv_bytes", "state_bytes", "total_bytes",
             "layer_bytes")
    report: dict[str, Any] = {"model": model, **{key: data[key] for key in order}}
    if cache == "quantized":
        report.update(backend=quantization.backend, nbits=quantization.nbits,
                      q_group_size=quantization.q_group_size, residual_length=quantization.residual_length)
        if quantization.backend == "fp8":
            for key in ("nbits", "q_group_size", "residual_length"):
                report.pop(key)
    if device_memory is None:
        return report
    if device_memory.strip().lower() == "auto":
        memory, device = gpu_free_memory_bytes()
        device = f"{device} (free memory, NVML)"
    else:
        memory, device = parse_bytes(device_memory), "given"
    weights = weight_bytes(config, dtype)
    report.update(device=device, device_memory_bytes=memory, weight_bytes=weights,
                  cache_budget_bytes=max(0, memory - weights), model_max_positions=limit)
    fit = max_context_tokens(estimate.shape, batch_size, memory - weights, dtype, cache,
                             limit_tokens=limit or 2**31, quantization=quantization)
    grows = estimate.bytes_per_token > 0
    report["max_context_tokens"] = fit if grows or fit == 0 or limit is not None else None
    report["context_limited_by"] = (
        "weights" if memory < weights else
        "memory" if fit == 0 else
        "model positions" if limit is not None and fit == limit else
        "nothing: the cache holds constant state only" if not grows else "memory")
    return report
