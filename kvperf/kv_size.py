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

``bytes_per_token`` is what one more position of one sequence costs in every cached layer:
``2·L·H·D·s`` (for quanto the amortised ``2·L·H·D·(nbits/8 + 2·s/G)``, for fp8 ``2·L·H·D``).
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
from kvperf.spec import GenerationSpec, parse_dtype

__all__ = [
    "CACHE_KINDS",
    "CACHE_NAMES",
    "CacheKind",
    "KvShape",
    "KvSizeEstimate",
    "Quantization",
    "cache_kwarg",
    "cache_tensors",
    "estimate_kv_cache",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "measure_cache_bytes",
    "measure_layer_bytes",
    "returned_cache",
    "spec_kv_cache_bytes",
]

CacheKind = Literal["dynamic", "static", "quantized"]
CACHE_KINDS: tuple[str, ...] = ("dynamic", "static", "quantized")
_WINDOWED_TYPES = {"sliding_attention": "sliding_window", "chunked_attention": "attention_chunk_size"}


def _int_attr(config: PretrainedConfig, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True)
class KvShape:
    """What a config says about its cache: layers, KV heads, head dim, and each layer's window."""

    model_type: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    #: Per layer: ``None`` for full attention, else the sliding window (or attention chunk) in tokens.
    layer_windows: tuple[int | None, ...]

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> KvShape:
        """Read GPT-2 style, Llama/Mistral/Qwen style and multi-query configs; refuse anything else."""
        config = config.get_text_config(decoder=True)
        model_type = str(getattr(config, "model_type", "") or "unknown")
        where = f"config of model_type {model_type!r}"
        if getattr(config, "is_encoder_decoder", False):
            raise UsageError(f"{where} is an encoder-decoder: kvperf sizes decoder-only caches")
        for mla in ("kv_lora_rank", "qk_head_dim", "v_head_dim"):
            if getattr(config, mla, None) is not None:
                raise UsageError(f"{where} has {mla}: keys and values of multi-head latent attention have "
                                 "other shapes, which kvperf's formula does not cover")
        if getattr(config, "is_heterogeneous", False) or getattr(config, "kv_sharing_modes", None):
            raise UsageError(f"{where} varies its attention per layer (per_layer_config or KV sharing), "
                             "which kvperf's formula does not cover")
        layers = _int_attr(config, "num_hidden_layers", "n_layer", "num_layers")
        heads = _int_attr(config, "num_attention_heads", "n_head")
        if layers is None or heads is None or layers < 1 or heads < 1:
            raise UsageError(f"cannot read the KV shape from the {where}: it needs a positive layer count "
                             "(num_hidden_layers or n_layer) and head count (num_attention_heads or n_head)")
        head_dim = _int_attr(config, "head_dim")
        if head_dim is None:
            hidden = _int_attr(config, "hidden_size", "n_embd")
            if hidden is None or hidden % heads:
                raise UsageError(f"cannot read head_dim from the {where}: give head_dim, or a hidden_size "
                                 f"(n_embd) divisible by the {heads} heads")
            head_dim = hidden // heads
        kv_heads = _kv_heads(config, model_type, heads)
        if kv_heads < 1 or heads % kv_heads:
            raise UsageError(f"the {where} has {kv_heads} KV heads, which do not divide its {heads} "
                             "attention heads: fix num_key_value_heads")
        return cls(model_type, layers, kv_heads, head_dim, _layer_windows(config, where, layers))

    def tensor_elements(self, batch_size: int, positions: int) -> int:
        """Elements of one K (or V) tensor of one layer holding ``positions`` positions."""
        return batch_size * self.num_kv_heads * positions * self.head_dim


def _kv_heads(config: PretrainedConfig, model_type: str, heads: int) -> int:
    if model_type == "falcon":
        # Falcon's new decoder architecture broadcasts its KV groups to every query head *before* it
        # writes the cache, so the cache holds num_attention_heads heads (modeling_falcon.py).
        if getattr(config, "new_decoder_architecture", False):
            return heads
        return 1 if getattr(config, "multi_query", False) else _int_attr(config, "num_kv_heads") or heads
    if getattr(config, "multi_query", False):  # gpt_bigcode and other multi-query configs
        return 1
    return _int_attr(config, "num_key_value_heads", "num_kv_heads") or heads


def _layer_windows(config: PretrainedConfig, where: str, layers: int) -> tuple[int | None, ...]:
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:  # as transformers infers it: a window on every layer, or on none
        if _int_attr(config, "sliding_window") is not None:
            layer_types = ["sliding_attention"] * layers
        elif _int_attr(config, "attention_chunk_size") is not None:
            layer_types = ["chunked_attention"] * layers
        else:
            layer_types = ["full_attention"] * layers
    if len(layer_types) != layers:
        raise UsageError(f"the {where} lists {len(layer_types)} layer_types for {layers} layers: fix layer_types")
    windows: list[int | None] = []
    for index, layer_type in enumerate(layer_types):
        if layer_type == "full_attention":
            windows.append(None)
        elif layer_type in _WINDOWED_TYPES:
            window = _int_attr(config, _WINDOWED_TYPES[layer_type])
            if window is None or window < 1:
                raise UsageError(f"layer {index} of the {where} is {layer_type} but "
                                 f"{_WINDOWED_TYPES[layer_type]} is not a positive integer")
            windows.append(window)
        else:
            raise UsageError(f"layer {index} of the {where} has layer type {layer_type!r}, which holds no "
                             "plain KV cache: kvperf's formula covers full, sliding and chunked attention")
    return tuple(windows)


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
    #: Bytes one more position of one sequence adds across every cached layer (see the module doc).
    bytes_per_token: float
    #: Bytes of K and V per layer, in layer order, and their sum.
    layer_bytes: tuple[int, ...]
    total_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON values; the shape's fields at the top level."""
        data = asdict(self)
        data.update(data.pop("shape"))
        data["layer_windows"] = list(self.shape.layer_windows)
        data["layer_bytes"] = list(self.layer_bytes)
        if float(self.bytes_per_token).is_integer():
            data["bytes_per_token"] = int(self.bytes_per_token)
        return data


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value


def _quanto_tensor_bytes(shape: KvShape, batch_size: int, positions: int, q: Quantization, itemsize: int) -> int:
    per_row = shape.num_kv_heads * positions * shape.head_dim  # quanto groups along axis 0 (the batch)
    if per_row % q.q_group_size:
        raise UsageError(f"q_group_size {q.q_group_size} does not divide kv_heads x positions x head_dim = "
                         f"{per_row}, so quanto cannot quantize this cache: choose a group size that divides "
                         f"kv_heads x head_dim = {shape.num_kv_heads * shape.head_dim}")
    groups = batch_size * per_row // q.q_group_size
    packed = math.ceil(groups / (8 // q.nbits)) * q.q_group_size
    scales = q.q_group_size if groups == 1 else groups  # one group: quanto reduces over axis 0 instead
    return packed + 2 * scales * itemsize


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
    """The bytes of K and V that ``cache`` holds after a generation ending with ``seq_len`` positions.

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
    full_bytes = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim
    bytes_per_token: float = full_bytes * itemsize
    if cache == "quantized":
        if any(window is not None for window in shape.layer_windows):
            raise UsageError("transformers' QuantizedCache supports only full-attention layers, and this "
                             f"{shape.model_type} config has sliding ones: size its dynamic or static cache instead")
        if quant.backend == "fp8":
            bytes_per_token = full_bytes
            layer = 2 * (shape.tensor_elements(batch_size, seq_len) + 4)
        else:
            bytes_per_token = full_bytes * (quant.nbits / 8 + 2 * itemsize / quant.q_group_size)
            decode_steps = seq_len - prompt_len
            residual = decode_steps % quanto_residual_cycle(quant.residual_length)
            layer = 2 * (_quanto_tensor_bytes(shape, batch_size, seq_len - residual, quant, itemsize)
                         + shape.tensor_elements(batch_size, residual) * itemsize)
        layer_bytes = (layer,) * shape.num_layers
    else:
        layer_bytes = tuple(
            2 * shape.tensor_elements(batch_size, _positions(cache, window, seq_len, prompt_len, max_cache_len))
            * itemsize
            for window in shape.layer_windows
        )
    return KvSizeEstimate(shape=shape, cache=cache, dtype=str(torch_dtype).removeprefix("torch."),
                          batch_size=batch_size, seq_len=seq_len, bytes_per_token=bytes_per_token,
                          layer_bytes=layer_bytes, total_bytes=sum(layer_bytes))


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
    """Total bytes of K and V (see ``estimate_kv_cache`` for the options and the module for the formula)."""
    return estimate_kv_cache(config, batch_size, seq_len, dtype, cache, **options).total_bytes


def spec_kv_cache_bytes(config: PretrainedConfig | KvShape, spec: GenerationSpec,
                        dtype: str | torch.dtype = "float32") -> int:
    """The formula's bytes for the cache the harness leaves after ``spec``: 0 with the cache off, the
    dynamic cache for ``on``, a static cache of ``prompt_len + new_tokens - 1`` positions for ``static``."""
    if spec.cache == "off":
        return 0
    seq_len = spec.prompt_len + spec.new_tokens - 1
    kind = "static" if spec.cache == "static" else "dynamic"
    return kv_cache_bytes(config, spec.batch_size, seq_len, dtype, kind, prompt_len=spec.prompt_len)


def kv_bytes_per_token(config: PretrainedConfig | KvShape, dtype: str | torch.dtype = "float32") -> int:
    """Bytes of K and V that one position of one sequence takes across every layer: ``2·L·H·D·s``."""
    return int(estimate_kv_cache(config, 1, 1, dtype).bytes_per_token)


# --- measurement ------------------------------------------------------------------------------------

#: Attributes of a transformers cache layer that hold cached states (dense, quantized, indexer).
_STATE_ATTRS = ("keys", "values", "_quantized_keys", "_quantized_values", "indexer_keys")


def _plain_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every plain tensor inside ``value``: tensor subclasses (quanto's packed and quantized tensors)
    are opened with ``__tensor_flatten__``, tuples, lists and dicts (HQQ's metadata) are walked."""
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
#: before (5.24 still accepts it, with a deprecation warning).
CACHE_NAMES = ("cache", "past_key_values")


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


def cache_tensors(cache: Any) -> Iterator[torch.Tensor]:
    """Every plain tensor that the layers of a transformers ``Cache`` hold as cached states (keys,
    values, quantized parts), in layer order; views included, so a storage can come more than once."""
    for layer in getattr(cache, "layers", ()):
        if getattr(layer, "is_initialized", True):
            yield from _plain_tensors([getattr(layer, attr, None) for attr in _STATE_ATTRS])


def measure_layer_bytes(cache: Any) -> tuple[int, ...]:
    """Bytes each layer of a transformers ``Cache`` holds, in layer order (empty for ``None``).

    It counts the storage under the tensors, each storage once: a sliding layer's view of ``w - 1``
    positions sits on the ``w`` positions that were allocated, and that is what is counted. Quantized
    layers count the packed integers, scales and zero points, and the full-precision residual.
    """
    if cache is None:
        return ()
    seen: set[tuple[str, int]] = set()
    sizes = []
    for layer in getattr(cache, "layers", ()):
        if not getattr(layer, "is_initialized", True):
            sizes.append(0)
            continue
        states = [getattr(layer, attr, None) for attr in _STATE_ATTRS]
        sizes.append(_storage_bytes(_plain_tensors(states), seen))
    return tuple(sizes)


def measure_cache_bytes(cache: Any) -> int:
    """Bytes of the key and value states held by a transformers ``Cache`` (0 for ``None``); see
    ``measure_layer_bytes``."""
    return sum(measure_layer_bytes(cache))
