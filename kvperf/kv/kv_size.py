"""KV-cache bytes: the exact formula (pure, from a config) and the bytes measured from a real cache.

Notation: ``L`` cached layers, ``H`` KV heads, ``D`` head dim, ``s`` bytes per element of the dtype,
``B`` batch rows, ``S = seq_len`` the positions the cache holds at the end of generation, which is
``prompt_len + new_tokens - 1``: the last generated token is never fed back, so it is never cached.
K and V are two tensors of ``(B, H, positions, D)`` per layer. Per layer, transformers allocates:

* **dynamic, full attention**: ``2·B·H·S·D·s``.
* **dynamic, sliding window ``w``** (and chunked attention, chunk ``w``): the layer keeps a view of the
  last ``w - 1`` positions, but the storage under it is the ``cat`` of those and the newest token:
  ``2·B·H·min(S, w)·D·s`` once a decode step ran. Right after a prefill (``prompt_len == S``) the
  storage still holds the whole prompt: ``2·B·H·S·D·s``. A window of 1 keeps every position
  (transformers slices ``[-w + 1:]``, which is ``[0:]``), so ``2·B·H·S·D·s`` too.
* **static** (``StaticCache``): preallocated, ``2·B·H·M·D·s`` with ``M = max_cache_len``, which
  ``generate`` sets to ``S`` (or larger: a model keeps the largest ``M`` of its earlier static
  calls); sliding layers hold ``min(M, w)`` positions.
* **quantized, quanto backend** (transformers' default, ``nbits`` 2 or 4, group size ``G``, residual
  length ``R``, axis 0): the prefill is quantized at once; each decode step appends to a
  full-precision residual, and when the residual would reach ``R`` tokens everything is
  re-quantized and the residual emptied. After ``n = S - prompt_len`` decode steps the residual
  holds ``r = n mod C`` tokens, the quantized part ``Q = S - r``. The cycle ``C`` is ``R`` when
  ``R >= 2``; when ``R <= 1`` it is 1 (no residual) from transformers 5.20 and 2 before
  (``kvperf.features.quanto_residual_cycle``, probed on the installed release).
  For each of K and V the quantized part is ``g = B·H·Q·D / G`` groups (quanto requires ``G`` to
  divide ``H·Q·D``), stored as ``ceil(g / (8 / nbits))·G`` bytes of packed integers plus ``g`` scales
  and ``g`` zero points in the dtype (``G`` of each when ``g == 1``: quanto then quantizes per
  tensor along the group). Per layer: ``2·(packed + 2·g·s + B·H·r·D·s)``.
* **quantized, fp8 backend**: every position in ``float8_e4m3fn`` plus one float32 scale per
  tensor, no residual: ``2·(B·H·S·D + 4)``.

Layers of other types (``kvperf.kv.kv_layers`` reads them from the config, layer by layer):

* **keys and values of their own widths**: ``B·positions·(Hk·Dk + Hv·Dv)·s``. Multi-head latent
  attention (DeepSeek-V2/V3, MiniCPM3, Kimi, ...) caches, as transformers 5.24 does, the compressed
  latent (``Dk = kv_lora_rank``) and the shared rotary key (``Dv = qk_rope_head_dim``), one head each;
  older releases (DeepSeek-V3 before 5.15, GLM-MoE-DSA before 5.18) cache keys and values expanded to
  every head, and the formula follows what the installed release caches. MiMo-V2-Flash's values are
  narrower than its keys.
* **indexed attention** (DeepSeek sparse attention): also the indexer's keys, ``B·positions·d_index``.
* **linear attention, Mamba, conv layers**: a conv state and a recurrent state per sequence, the same
  at any ``S``: ``B·(conv·s + recurrent·s_r)``, with ``s_r = 4`` where transformers' PyTorch scans keep
  the recurrent state in float32 (Mamba, Mamba-2, gated DeltaNet, KDA).
* **hybrid layers**: both; layers that reuse another layer's cache (KV sharing) or hold none: 0.

The estimate reports ``kv_bytes`` (what grows with ``S``) and ``state_bytes`` (what does not) apart;
``total_bytes`` is their sum and equals what ``measure_cache_bytes`` counts in a real cache.

``bytes_per_token`` is what one more position of one sequence costs in every cached layer:
``2·L·H·D·s`` (for quanto the amortised ``2·L·H·D·(nbits/8 + 2·s/G)``, for fp8 ``2·L·H·D``); in
general the sum over the layers with keys and values of ``(Hk·Dk + Hv·Dv)·s`` and their per-position
extras.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from transformers import PretrainedConfig

from kvperf.errors import UsageError
from kvperf.features import quanto_residual_cycle
from kvperf.kv.kv_layers import KvShape, LayerShape
from kvperf.spec import GenerationSpec, parse_dtype

__all__ = [
    "CACHE_KINDS",
    "CACHE_NAMES",
    "MODE_KINDS",
    "QUANTIZED_NBITS",
    "QUANTIZED_RESIDUAL_LENGTH",
    "CacheKind",
    "KvShape",
    "KvSizeEstimate",
    "LayerShape",
    "Quantization",
    "cache_kwarg",
    "cache_tensors",
    "estimate_kv_cache",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "measure_cache_bytes",
    "measure_cache_bytes_by_device",
    "measure_layer_bytes",
    "mode_quantization",
    "quantizable_kv_width",
    "returned_cache",
    "spec_kv_cache_bytes",
]

CacheKind = Literal["dynamic", "static", "quantized"]
CACHE_KINDS: tuple[str, ...] = ("dynamic", "static", "quantized")


@dataclass(frozen=True)
class Quantization:
    """Settings of transformers' ``QuantizedCache``; the defaults are transformers' own."""

    backend: Literal["quanto", "fp8"] = "quanto"
    nbits: int = 4
    q_group_size: int = 64
    residual_length: int = 128

    def __post_init__(self) -> None:
        if self.backend not in ("quanto", "fp8"):
            raise UsageError(f"unknown quantization backend {self.backend!r}: use quanto or fp8")
        if self.backend == "quanto" and self.nbits not in (2, 4):
            raise UsageError(f"nbits must be 2 or 4 for the quanto backend, got {self.nbits}")
        if self.q_group_size < 1 or self.residual_length < 0:
            raise UsageError(f"q_group_size must be positive and residual_length not negative, got "
                             f"{self.q_group_size} and {self.residual_length}")


@dataclass(frozen=True)
class KvSizeEstimate:
    """The formula's answer for one cache at the end of a generation."""

    shape: KvShape
    cache: str
    dtype: str
    batch_size: int
    seq_len: int
    #: Bytes one more position of one sequence adds across every layer that caches keys and values
    #: (see the module doc); 0 for a cache of states alone.
    bytes_per_token: float
    #: Bytes each layer holds, in layer order (keys, values and per-position extras, plus its state).
    layer_bytes: tuple[int, ...]
    #: Of ``total_bytes``: what grows with the sequence (keys, values, indexer keys), and the conv and
    #: recurrent states, which do not.
    kv_bytes: int
    state_bytes: int
    total_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON values; the shape's summary at the top level."""
        data = asdict(self)
        data.pop("shape")
        shape = self.shape
        data.update(model_type=shape.model_type, num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                    head_dim=shape.head_dim, layer_windows=list(shape.layer_windows),
                    layer_kinds=list(shape.layer_kinds), layer_bytes=list(self.layer_bytes))
        if float(self.bytes_per_token).is_integer():
            data["bytes_per_token"] = int(self.bytes_per_token)
        return data


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value


def _quanto_tensor_bytes(width: int, batch_size: int, positions: int, q: Quantization, itemsize: int) -> int:
    per_row = width * positions  # quanto groups along axis 0 (the batch)
    if per_row % q.q_group_size:
        raise UsageError(f"q_group_size {q.q_group_size} does not divide kv_heads x positions x head_dim = "
                         f"{per_row}, so quanto cannot quantize this cache: choose a group size that divides "
                         f"kv_heads x head_dim = {width}")
    groups = batch_size * per_row // q.q_group_size
    packed = math.ceil(groups / (8 // q.nbits)) * q.q_group_size
    scales = q.q_group_size if groups == 1 else groups  # one group: quanto reduces over axis 0 instead
    return packed + 2 * scales * itemsize


def quantizable_kv_width(shape: KvShape) -> int:
    """``kv_heads x head_dim`` of a cache that transformers' ``QuantizedCache`` can hold: full attention
    with the same heads and dims for keys and values in every layer, nothing else."""
    if shape.extra_positions or any(layer.window is not None or layer.has_state or layer.extra_per_position
                                    or not layer.has_kv for layer in shape.layers):
        raise UsageError("transformers' QuantizedCache holds full-attention layers only, and this "
                         f"{shape.model_type} config has sliding, indexed, state or empty ones: size its dynamic "
                         "or static cache instead")
    width = {(layer.key_heads * layer.key_dim, layer.value_heads * layer.value_dim) for layer in shape.layers}
    if len(width) != 1:
        raise UsageError(f"the layers of this {shape.model_type} config cache keys and values of different widths, "
                         "which kvperf's quantized formula does not cover: size its dynamic or static cache instead")
    keys, values = next(iter(width))
    if keys != values:
        raise UsageError(f"the keys and values of this {shape.model_type} config differ in width ({keys} and "
                         f"{values} per position), which kvperf's quantized formula does not cover: size its "
                         "dynamic or static cache instead")
    return keys


def estimate_kv_cache(
    config: PretrainedConfig | KvShape,
    batch_size: int,
    seq_len: int,
    dtype: str | torch.dtype = "float32",
    cache: str = "dynamic",
    *,
    prompt_len: int | None = None,
    max_cache_len: int | None = None,
    quantization: Quantization | None = None,
) -> KvSizeEstimate:
    """The bytes that ``cache`` holds after a generation ending with ``seq_len`` positions: keys and
    values (and the other per-position tensors) of every layer, plus the conv and recurrent states of
    linear-attention layers, which do not depend on ``seq_len``.

    ``prompt_len`` is how many of the ``seq_len`` positions the prefill wrote; the others were
    appended one per decode step. Only sliding layers (when no decode step ran) and the quantized
    cache (which positions are still in the residual) depend on it. When omitted, it is the prompt
    that leaves the most full-precision residual after at least one decode step:
    ``max(1, seq_len - C + 1)`` with ``C`` the residual's cycle (``residual_length`` from 2 up, see the
    module doc), ``seq_len - 1`` for the other caches, at most ``seq_len``.
    ``max_cache_len`` applies to the static cache and defaults to ``seq_len``.
    """
    shape = config if isinstance(config, KvShape) else KvShape.from_config(config)
    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    itemsize = torch_dtype.itemsize
    _positive("batch_size", batch_size)
    _positive("seq_len", seq_len)
    if cache not in CACHE_KINDS:
        raise UsageError(f"unknown cache {cache!r}: use one of {', '.join(CACHE_KINDS)}")
    quant = quantization or Quantization()
    if prompt_len is None:
        quanto = cache == "quantized" and quant.backend == "quanto"
        cycle = quanto_residual_cycle(quant.residual_length) if quanto else 2
        prompt_len = min(seq_len, max(1, seq_len - cycle + 1))
    if not 1 <= _positive("prompt_len", prompt_len) <= seq_len:
        raise UsageError(f"prompt_len {prompt_len} must be in [1, seq_len = {seq_len}]")
    if max_cache_len is None:
        max_cache_len = seq_len
    if _positive("max_cache_len", max_cache_len) < seq_len:
        raise UsageError(f"max_cache_len {max_cache_len} is shorter than seq_len {seq_len}: a static cache "
                         "cannot hold the sequence; raise max_cache_len")
    bytes_per_token: float = sum(layer.position_bytes(itemsize) for layer in shape.layers)
    states = tuple(batch_size * layer.state_bytes(itemsize) for layer in shape.layers)
    if cache == "quantized":
        width = quantizable_kv_width(shape)
        full_bytes = 2 * shape.num_layers * width
        if quant.backend == "fp8":
            bytes_per_token = full_bytes
            layer = 2 * (batch_size * width * seq_len + 4)
        else:
            bytes_per_token = full_bytes * (quant.nbits / 8 + 2 * itemsize / quant.q_group_size)
            decode_steps = seq_len - prompt_len
            residual = decode_steps % quanto_residual_cycle(quant.residual_length)
            layer = 2 * (_quanto_tensor_bytes(width, batch_size, seq_len - residual, quant, itemsize)
                         + batch_size * width * residual * itemsize)
        kv = (layer,) * shape.num_layers
    else:
        kv = tuple(_layer_kv_bytes(layer, cache, batch_size, seq_len + shape.extra_positions,
                                   prompt_len + shape.extra_positions, max_cache_len + shape.extra_positions,
                                   itemsize)
                   for layer in shape.layers)
    layer_bytes = tuple(a + b for a, b in zip(kv, states, strict=True))
    return KvSizeEstimate(shape=shape, cache=cache, dtype=str(torch_dtype).removeprefix("torch."),
                          batch_size=batch_size, seq_len=seq_len, bytes_per_token=bytes_per_token,
                          layer_bytes=layer_bytes, kv_bytes=sum(kv), state_bytes=sum(states),
                          total_bytes=sum(layer_bytes))


def _layer_kv_bytes(layer: LayerShape, cache: str, batch_size: int, seq_len: int, prompt_len: int,
                    max_cache_len: int, itemsize: int) -> int:
    """Keys, values and per-position extras of one layer. A static cache preallocates keys, values and
    indexer keys for ``max_cache_len`` positions; the indexer's position ids (Qwen4) always grow."""
    if not layer.position_bytes(itemsize):
        return 0
    positions = _positions(cache, layer.window, seq_len, prompt_len, max_cache_len)
    kv = (layer.key_heads * layer.key_dim + layer.value_heads * layer.value_dim) * itemsize
    extra = sum(count * (size or itemsize) * (positions if size == 0 else seq_len)
                for count, size in layer.extra_per_position)
    return batch_size * (kv * positions + extra)


def _positions(cache: str, window: int | None, seq_len: int, prompt_len: int, max_cache_len: int) -> int:
    if cache == "static":
        return max_cache_len if window is None else min(max_cache_len, window)
    # transformers keeps the view ``[-w + 1:]``, which for w = 1 is ``[0:]``: every position.
    if window is None or window == 1 or prompt_len == seq_len:
        return seq_len
    return min(seq_len, window)


def kv_cache_bytes(
    config: PretrainedConfig | KvShape,
    batch_size: int,
    seq_len: int,
    dtype: str | torch.dtype = "float32",
    cache: str = "dynamic",
    **options: Any,
) -> int:
    """Total bytes the cache holds (see ``estimate_kv_cache`` for the options and the module for the formula)."""
    return estimate_kv_cache(config, batch_size, seq_len, dtype, cache, **options).total_bytes


#: The formula's cache kind for each cache mode that holds keys and values (``kvperf.spec.CACHE_MODES``):
#: the compiled and offloaded caches hold what their eager, on-device counterparts hold (offloaded
#: layers sit on the CPU, and the measurement counts every device's storages).
MODE_KINDS = {"on": "dynamic", "offloaded": "dynamic", "static": "static", "compiled": "static",
              "offloaded_static": "static", "quanto": "quantized", "fp8": "quantized", "hqq": "quantized"}
#: transformers' ``QuantizedCache`` defaults, which the quantized modes run with (the group size aside).
QUANTIZED_NBITS = 4
QUANTIZED_RESIDUAL_LENGTH = 128
_MAX_GROUP_SIZE = 64


def mode_quantization(mode: str, config: PretrainedConfig | KvShape) -> Quantization | None:
    """The ``QuantizedCache`` settings of a quantized cache mode (``None`` for the others): transformers'
    defaults (4 bits, residual 128), with the group size at most its default 64 and a power of two that
    divides ``kv_heads x head_dim`` (quanto refuses one that does not). Cache modes that kvperf's
    formula cannot size raise ``UsageError`` from ``spec_kv_cache_bytes``, not here."""
    if mode == "fp8":
        return Quantization("fp8")
    if mode not in ("quanto", "hqq"):
        return None
    shape = config if isinstance(config, KvShape) else KvShape.from_config(config)
    try:
        width = quantizable_kv_width(shape)
    except UsageError:  # sliding or mixed layers: the group size is moot, the formula says why
        width = _MAX_GROUP_SIZE
    group = _MAX_GROUP_SIZE
    while width % group:
        group //= 2
    return Quantization("quanto", QUANTIZED_NBITS, group, QUANTIZED_RESIDUAL_LENGTH)


def spec_kv_cache_bytes(config: PretrainedConfig | KvShape, spec: GenerationSpec,
                        dtype: str | torch.dtype = "float32") -> int:
    """The formula's bytes for the cache the harness leaves after ``spec``: 0 with the cache off, the
    dynamic cache for ``on`` and ``offloaded``, a static cache of ``prompt_len + new_tokens - 1``
    positions for ``static``, ``compiled`` and ``offloaded_static``, the quantized cache with
    ``mode_quantization``'s settings for ``quanto`` and ``fp8``. Raises ``UsageError`` for ``hqq``
    (see ``MODE_KINDS``) and for what the formula cannot size."""
    if spec.cache == "off":
        return 0
    if spec.cache == "hqq":
        raise UsageError("kvperf's formula does not size HQQ's quantized cache (hqq decides the layout of its "
                         "packed tensors and metadata); the measured kv_cache_bytes is exact")
    seq_len = spec.prompt_len + spec.new_tokens - 1
    return kv_cache_bytes(config, spec.batch_size, seq_len, dtype, MODE_KINDS[spec.cache], prompt_len=spec.prompt_len,
                          quantization=mode_quantization(spec.cache, config))


def kv_bytes_per_token(config: PretrainedConfig | KvShape, dtype: str | torch.dtype = "float32") -> int:
    """Bytes of keys and values (and per-position extras) that one position of one sequence takes across
    every layer: ``2·L·H·D·s`` for plain attention."""
    return int(estimate_kv_cache(config, 1, 1, dtype).bytes_per_token)


# --- measurement ------------------------------------------------------------------------------------

#: Attributes of a transformers cache layer that hold cached states: keys and values (dense and
#: quantized), the indexer keys and position ids of sparse attention, the conv and recurrent states of
#: linear-attention layers (dicts keyed by state index).
_STATE_ATTRS = ("keys", "values", "_quantized_keys", "_quantized_values", "indexer_keys", "indexer_position_ids",
                "conv_states", "recurrent_states")
#: Tensors of a cache layer that are bookkeeping, not cached states: the window as a 0-d tensor, and the
#: 0-d position counters of static layers.
_BOOKKEEPING_ATTRS = frozenset({"_sliding_window_tensor", "cumulative_length", "indexer_cumulative_length"})


def _layer_states(layer: Any) -> list[Any]:
    """The cached states of one cache layer. transformers' own layer classes keep them in
    ``_STATE_ATTRS``; a family's own layer class (DeepSeek V4's compressed layers) may keep more, so
    every attribute of those is walked but the bookkeeping ones."""
    if type(layer).__module__ == "transformers.cache_utils":
        return [getattr(layer, attr, None) for attr in _STATE_ATTRS]
    return [value for name, value in vars(layer).items() if name not in _BOOKKEEPING_ATTRS]


def _plain_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every plain tensor inside ``value``: tensor subclasses (quanto's packed and quantized tensors)
    are opened with ``__tensor_flatten__``, tuples, lists and dicts (HQQ's metadata, the conv states
    of linear attention) are walked."""
    if isinstance(value, torch.Tensor):
        flatten = getattr(value, "__tensor_flatten__", None)
        if type(value) is not torch.Tensor and flatten is not None:
            for name in flatten()[0]:
                yield from _plain_tensors(getattr(value, name))
        else:
            yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _plain_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _plain_tensors(item)


def _storage_bytes(tensors: Iterator[torch.Tensor], seen: set[tuple[str, int]]) -> int:
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if storage.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


#: Names under which transformers passes and returns a cache: ``cache`` from 5.24, ``past_key_values``
#: before (5.24 still accepts it, with a deprecation warning); Mamba-based models' ``cache_params``
#: before 5.24 (a transformers ``Cache`` from 5.5, the model's own ``MambaCache`` before).
CACHE_NAMES = ("cache", "past_key_values", "cache_params")


def returned_cache(output: Any) -> Any:
    """The cache that a ``generate`` or forward output (or a forward's keyword arguments) carries,
    under whichever name this transformers release uses; ``None`` if it carries none."""
    keys = output.keys()
    return next((output[name] for name in CACHE_NAMES if name in keys and output[name] is not None), None)


def cache_kwarg() -> str:
    """The keyword under which this transformers release takes a cache in ``generate`` and
    ``forward``: ``cache`` from 5.24 (which deprecates ``past_key_values``), ``past_key_values`` before."""
    from transformers.generation import utils as generation_utils

    return "cache" if "cache" in getattr(generation_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def _cache_entries(cache: Any) -> list[list[Any]]:
    """The cached states of ``cache``, one entry per layer.

    A transformers ``Cache``: one entry per layer (an ``EncoderDecoderCache``: the self-attention
    layer with its cross-attention layer). Families that keep their own cache: one entry per item of a
    tuple or list (XLNet's mems, RWKV's states), else one entry for every tensor the object holds."""
    if cache is None:
        return []
    if hasattr(cache, "self_attention_cache") and hasattr(cache, "cross_attention_cache"):
        own, cross = _cache_entries(cache.self_attention_cache), _cache_entries(cache.cross_attention_cache)
        return [a + b for a, b in zip(own, cross + [[]] * (len(own) - len(cross)), strict=False)] or cross
    if hasattr(cache, "layers"):
        return [_layer_states(layer) if getattr(layer, "is_initialized", True) else []
                for layer in cache.layers]
    if isinstance(cache, (tuple, list)):
        return [[item] for item in cache]
    return [list(vars(cache).values())]


def cache_tensors(cache: Any) -> Iterator[torch.Tensor]:
    """Every plain tensor that a transformers ``Cache`` holds as cached states (keys, values, quantized
    parts, indexer keys, conv and recurrent states), in layer order; views included, so a storage can
    come more than once."""
    for entry in _cache_entries(cache):
        yield from _plain_tensors(entry)


def measure_layer_bytes(cache: Any) -> tuple[int, ...]:
    """Bytes each layer of a transformers ``Cache`` holds, in layer order (empty for ``None``).

    It counts the storage under the tensors, each storage once: a sliding layer's view of ``w - 1``
    positions sits on the ``w`` positions that were allocated, and that is what is counted. Quantized
    layers count the packed integers, scales and zero points, and the full-precision residual;
    linear-attention layers their conv and recurrent states.
    """
    seen: set[tuple[str, int]] = set()
    return tuple(_storage_bytes(_plain_tensors(entry), seen) for entry in _cache_entries(cache))


def measure_cache_bytes(cache: Any) -> int:
    """Bytes of the key and value states held by a transformers ``Cache`` (0 for ``None``), summed over
    every device its layers are on; see ``measure_layer_bytes``."""
    return sum(measure_layer_bytes(cache))


def measure_cache_bytes_by_device(cache: Any) -> dict[str, int]:
    """``measure_cache_bytes`` per device (``cpu``, ``cuda:0``, ...): a model split by a device map keeps
    each layer's cache on that layer's device. Empty for ``None``; the values sum to
    ``measure_cache_bytes``."""
    seen: set[tuple[str, int]] = set()
    by_device: dict[str, int] = {}
    for tensor in cache_tensors(cache):
        device = str(tensor.device)
        nbytes = _storage_bytes(iter((tensor,)), seen)
        if nbytes or device not in by_device:
            by_device[device] = by_device.get(device, 0) + nbytes
    return by_device
