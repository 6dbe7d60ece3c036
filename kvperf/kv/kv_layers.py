"""What each layer of a transformers cache holds, read from a model config alone.

transformers gives a cache one layer per decoder layer, of the class that the config's
``layer_types`` names (``cache_utils.DYNAMIC_LAYER_TYPE_MAPPING``):

* ``full_attention``, ``sliding_attention``, ``chunked_attention``: keys and values, one entry per
  cached position (sliding and chunked layers keep a window of them);
* ``indexed_attention`` (DeepSeek sparse attention): keys and values, plus the indexer's keys;
* ``linear_attention``, ``conv`` (Mamba, gated DeltaNet, short convolutions): a conv state and a
  recurrent state whose size does not depend on the sequence length;
* ``hybrid``, ``hybrid_sliding``: both, in one layer;
* ``dummy``, ``moe``, ``mlp``, and layers that reuse another layer's cache (``kv_sharing_modes``,
  gemma3n and gemma4): nothing.

``KvShape.from_config`` reads every layer's shape from the decoder's (text) config, layer by layer
through ``per_layer_config`` where the config is heterogeneous. The head counts and dims that a
modeling file uses instead of the config's own fields are written down per family below, each with
the line that does it. Where transformers' cache for a family cannot be sized from its config, it
refuses with the reason (``UsageError``), and never guesses.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from kvperf.errors import UsageError
from kvperf.features import missing_state_layers

__all__ = ["STANDARD_CACHE_FAMILIES", "KvShape", "LayerShape", "check_model_class"]

_WINDOW_ATTRS = {"sliding_attention": "sliding_window", "chunked_attention": "attention_chunk_size",
                 "hybrid_sliding": "sliding_window"}
_ATTENTION_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "indexed_attention"}
_STATE_TYPES = {"linear_attention", "conv"}
_HYBRID_TYPES = {"hybrid", "hybrid_sliding"}
_EMPTY_TYPES = {"dummy", "moe", "mlp"}
#: Older names of layer types: transformers 5.15 calls the indexed layer of DeepSeek sparse attention
#: ``deepseek_sparse_attention`` (the same ``DynamicIndexedLayer`` and ``StaticIndexedLayer``).
_LAYER_TYPE_ALIASES = {"deepseek_sparse_attention": "indexed_attention"}


@dataclass(frozen=True)
class LayerShape:
    """What one cache layer holds for one sequence: keys and values per cached position (``key_heads``
    heads of ``key_dim`` and ``value_heads`` heads of ``value_dim`` elements), other tensors that grow by
    one entry per position (``extra_per_position``), and a conv and a recurrent state that do not grow.
    ``window`` is the sliding window (or attention chunk) in tokens."""

    layer_type: str
    key_heads: int = 0
    key_dim: int = 0
    value_heads: int = 0
    value_dim: int = 0
    window: int | None = None
    #: ``(elements per position, bytes per element)`` of other per-position tensors; 0 bytes means the
    #: model's dtype. The indexer keys of DeepSeek sparse attention, Qwen4's indexer position ids.
    extra_per_position: tuple[tuple[int, int], ...] = ()
    #: Elements per sequence of the conv state and of the recurrent state, constant in the sequence
    #: length, and their bytes per element (0: the model's dtype; transformers' PyTorch scans keep the
    #: recurrent state of Mamba and DeltaNet layers in float32 whatever the model's dtype).
    conv_elements: int = 0
    recurrent_elements: int = 0
    conv_itemsize: int = 0
    recurrent_itemsize: int = 0

    @property
    def has_state(self) -> bool:
        return self.conv_elements + self.recurrent_elements > 0

    def state_bytes(self, itemsize: int) -> int:
        """Bytes of the conv and recurrent states of one sequence, for a model in ``itemsize`` bytes."""
        return (self.conv_elements * (self.conv_itemsize or itemsize)
                + self.recurrent_elements * (self.recurrent_itemsize or itemsize))

    @property
    def has_kv(self) -> bool:
        """Whether the layer caches keys and values (it may also hold a state)."""
        return self.key_heads * self.key_dim + self.value_heads * self.value_dim > 0

    def position_bytes(self, itemsize: int) -> int:
        """Bytes one more cached position of one sequence adds to this layer."""
        kv = (self.key_heads * self.key_dim + self.value_heads * self.value_dim) * itemsize
        return kv + sum(count * (size or itemsize) for count, size in self.extra_per_position)

    def describe(self) -> str:
        """``full``, ``sliding 4``, ``state``, ``full+state``, ``none``: the layer in a word or two."""
        if not self.has_kv:
            return "state" if self.has_state else "none"
        kind = "full" if self.window is None else f"window {self.window}"
        return f"{kind}+state" if self.has_state else kind


@dataclass(frozen=True)
class KvShape:
    """What a config says about its cache, layer by layer."""

    model_type: str
    layers: tuple[LayerShape, ...]
    #: Positions every attention layer caches beyond the sequence's own (cpmant's prompt prefix).
    extra_positions: int = 0

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> KvShape:
        """Read every layer of the decoder (text) config; refuse, with the reason, what cannot be sized."""
        return _read(config)

    @classmethod
    def uniform(cls, model_type: str, num_layers: int, num_kv_heads: int, head_dim: int,
                layer_windows: tuple[int | None, ...] | None = None) -> KvShape:
        """``num_layers`` attention layers of ``num_kv_heads`` heads of ``head_dim`` for K and for V."""
        windows = layer_windows if layer_windows is not None else (None,) * num_layers
        return cls(model_type, tuple(
            LayerShape("full_attention" if w is None else "sliding_attention", num_kv_heads, head_dim,
                       num_kv_heads, head_dim, w) for w in windows))

    @property
    def num_layers(self) -> int:
        """Layers of the cache, whatever they hold."""
        return len(self.layers)

    @property
    def num_kv_heads(self) -> int | None:
        """The KV heads of every K/V layer, when keys and values have the same heads in all of them
        (``None`` when they differ, 0 for a cache of states alone)."""
        heads = {(layer.key_heads, layer.value_heads) for layer in self.layers if layer.has_kv}
        if not heads:  # a cache of states alone
            return 0
        return next(iter(heads))[0] if len(heads) == 1 and len({*next(iter(heads))}) == 1 else None

    @property
    def head_dim(self) -> int | None:
        """The head dim of keys and values in every K/V layer, when it is one number (``None`` when keys
        and values or layers differ, 0 for a cache of states alone)."""
        dims = {(layer.key_dim, layer.value_dim) for layer in self.layers if layer.has_kv}
        if not dims:
            return 0
        return next(iter(dims))[0] if len(dims) == 1 and len({*next(iter(dims))}) == 1 else None

    @property
    def layer_windows(self) -> tuple[int | None, ...]:
        """Per layer: the window in tokens, ``None`` for full attention and for layers without K/V."""
        return tuple(layer.window for layer in self.layers)

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """Per layer: ``LayerShape.describe``."""
        return tuple(layer.describe() for layer in self.layers)

    @property
    def has_state(self) -> bool:
        return any(layer.has_state for layer in self.layers)


# --- reading a config ---------------------------------------------------------------------------------


def _int_attr(config: Any, *names: str) -> int | None:
    for name in names:
        try:
            value = getattr(config, name, None)
        except RuntimeError:  # a per-layer attribute read on a heterogeneous config: not this one
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _need(config: Any, where: str, *names: str) -> int:
    value = _int_attr(config, *names)
    if value is None or value < 1:
        raise UsageError(f"cannot read {names[0]} from the {where}: it needs a positive {' or '.join(names)}")
    return value


def _model_class(config: PretrainedConfig) -> type | None:
    """The class ``AutoModelForCausalLM`` builds for this config, when transformers has one."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.auto_factory import _get_model_class

    try:
        return _get_model_class(config, AutoModelForCausalLM._model_mapping)  # type: ignore[no-any-return]
    except (KeyError, ValueError, ImportError, AttributeError):
        return None


#: Families whose cache kvperf refuses to size, and the reason. Each is checked against transformers'
#: own code (the file named); ``benchmarks/families_study.py`` confirms that the rest are sized exactly.
_REFUSED: dict[str, str] = {
    "recurrent_gemma": "its recurrent blocks keep their states in the model's own modules, outside the Cache "
                       "(modeling_recurrent_gemma.py), so the cache's bytes are not its memory",
    "hrm_text": "its layer stacks re-run H_cycles x L_cycles times, each pass caching under a layer index of its "
                "own (modeling_hrm_text.py, cycle_offset)",
    "dory": "its recurrent layers re-run n_recurrent_loops times, each loop caching under a layer index of its own "
            "(modeling_dory.py, cache_offset)",
    "xlm": "its generate feeds the whole sequence plus a mask token at every step (XLMWithLMHeadModel."
           "prepare_inputs_for_generation), so its cache does not hold one entry per position",
    "deepseek_v4": "its compressed attention layers cache compressor buffers and compressed keys whose lengths "
                   "follow the compression schedule, not one entry per position (DeepseekV4HCACache)",
}
_OWN_CACHE = {
    "xlstm": "is recurrent (xLSTM): it has no keys and values, only recurrent states in an xLSTMCache",
    "rwkv": "is recurrent (RWKV): it has no keys and values, only recurrent states in a list of tensors",
    "xlnet": "caches a memory of past hidden states (mems), not keys and values",
    "reformer": "caches hidden states and LSH buckets in its own cache, not keys and values",
    "minimax": "keeps its linear-attention states in its own MiniMaxCache",
}


#: Families whose causal LM takes a transformers Cache (the default dynamic cache, and a cache argument
#: to ``forward``) on every supported release. Their model class is not imported to check it: that
#: imports transformers' modeling code, seconds that ``kvperf kv-size`` of a preset needs not wait for
#: (``tests/test_plugin_startup.py`` checks each family against the class transformers builds).
STANDARD_CACHE_FAMILIES = frozenset({"gpt2", "llama", "mistral", "qwen2"})


def _refuse_special(config: PretrainedConfig, text: PretrainedConfig, model_type: str, where: str) -> None:
    if model_type in _REFUSED:
        raise UsageError(f"kvperf cannot size the cache of the {where}: {_REFUSED[model_type]}")
    if text is config and model_type in STANDARD_CACHE_FAMILIES:
        return
    check_model_class(config, text, model_type, where)


def check_model_class(config: PretrainedConfig, text: PretrainedConfig, model_type: str, where: str) -> None:
    """Refuse a family whose causal LM keeps no transformers Cache, from the class transformers builds."""
    cls = _model_class(config) or _model_class(text)
    if cls is None:
        if getattr(config, "is_encoder_decoder", False):
            raise UsageError(f"the {where} is an encoder-decoder without a causal LM in transformers: kvperf sizes "
                             "the cache of what AutoModelForCausalLM loads (a decoder-only model, or the decoder "
                             "of Bart- and Whisper-shaped configs)")
        return
    supports: Callable[[], bool] | None = getattr(cls, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        why = _OWN_CACHE.get(model_type, "keeps a cache of its own instead of a transformers Cache")
        old_release = missing_state_layers()
        # Stateful (Mamba, DeltaNet) and short-conv families had caches of their own before transformers 5.5.
        if old_release is not None and model_type not in _OWN_CACHE and (
                getattr(cls, "_is_stateful", False) or "lfm2" in cls.__name__.lower()):
            why = f"{why}: {old_release}"
        raise UsageError(f"kvperf cannot size the cache of the {where}: {cls.__name__} {why}")
    forward = inspect.signature(getattr(cls, "forward")).parameters  # noqa: B009 - typed as a plain type
    if not {"cache", "past_key_values", "past_key_value", "cache_params", "mems"} & set(forward):
        raise UsageError(f"the {where} caches nothing: {cls.__name__}.forward takes no cache, so every step "
                         "recomputes the whole prefix (its cache stays empty)")


def _caches_latent(config: PretrainedConfig, text: PretrainedConfig) -> bool:
    """Whether this family's multi-head latent attention caches the compressed latent
    (``cache.update(kv_nope, k_rot)`` before ``self.expand_kv``) rather than expanded keys and values.

    Read from the installed attention's ``forward``, family by family: DeepSeek-V3 caches the latent from
    transformers 5.15, GLM-MoE-DSA from 5.18 (5.15 to 5.17 expand first, then cache); before 5.15 there
    is no ``expand_kv`` and every family caches expanded keys and values."""
    cls = _model_class(config) or _model_class(text)
    module = sys.modules.get(cls.__module__) if cls is not None else None
    if module is None:
        return True
    for obj in vars(module).values():
        if isinstance(obj, type) and hasattr(obj, "expand_kv"):
            try:
                source = inspect.getsource(getattr(obj, "forward"))  # noqa: B009 - typed as a plain type
            except (OSError, TypeError):  # no source to read: the layout of the newest releases
                return True
            update, expand = source.find(".update("), source.find("self.expand_kv(")
            return update != -1 and (expand == -1 or update < expand)
    return False


def _layer_types(text: PretrainedConfig, layers: int, where: str) -> list[str]:
    layer_types = getattr(text, "layer_types", None)
    if layer_types is None:  # as transformers infers it: a window on every layer, or on none
        if _int_attr(text, "sliding_window") is not None:
            layer_types = ["sliding_attention"] * layers
        elif _int_attr(text, "attention_chunk_size") is not None:
            layer_types = ["chunked_attention"] * layers
        else:
            layer_types = ["full_attention"] * layers
    layer_types = [_LAYER_TYPE_ALIASES.get(str(t), str(t)) for t in layer_types]
    if len(layer_types) != layers:
        raise UsageError(f"the {where} lists {len(layer_types)} layer_types for {layers} layers: fix layer_types")
    try:
        sharing = getattr(text, "kv_sharing_modes", None)
    except ValueError as exc:  # gemma3n, gemma4: no earlier layer of a type to share from
        raise UsageError(f"the {where} shares keys and values between layers in a way transformers rejects "
                         f"({' '.join(str(exc).split())}): fix num_kv_shared_layers or layer_types") from None
    if sharing is not None:  # layers that reuse an earlier layer's keys and values cache nothing
        layer_types = ["dummy" if mode == "reuse" else t for t, mode in zip(layer_types, sharing, strict=False)]
    elif (shared := _int_attr(text, "num_kv_shared_layers")) and 0 < shared < layers:
        # Releases whose configs have no kv_sharing_modes (before transformers 5.23) build the cache without
        # the last num_kv_shared_layers layers (DynamicCache and StaticCache: layer_types[:-num_kv_shared_layers]).
        layer_types = layer_types[:-shared]
    return layer_types


def _layer_config(text: PretrainedConfig, index: int) -> Any:
    if getattr(text, "is_heterogeneous", False):
        return text.per_layer_config[index]
    return text


def _kv_heads(c: Any, model_type: str, heads: int) -> int:
    if model_type == "falcon":
        # Falcon's new decoder architecture broadcasts its KV groups to every query head *before* it
        # writes the cache, so the cache holds num_attention_heads heads (modeling_falcon.py).
        if getattr(c, "new_decoder_architecture", False):
            return heads
        return 1 if getattr(c, "multi_query", False) else _int_attr(c, "num_kv_heads") or heads
    if getattr(c, "multi_query", False):  # gpt_bigcode and other multi-query configs
        return 1
    return _int_attr(c, "num_key_value_heads", "num_kv_heads") or heads


def _attention(c: Any, model_type: str, layer_type: str, latent: bool, where: str) -> dict[str, int]:
    """Heads and dims of the keys and values one attention layer caches."""
    if _int_attr(c, "kv_lora_rank") is not None:
        rope = _need(c, where, "qk_rope_head_dim")
        if latent:  # the normalised latent and the shared rotary key, each one head (modeling_deepseek_v3.py)
            return {"key_heads": 1, "key_dim": _need(c, where, "kv_lora_rank"), "value_heads": 1, "value_dim": rope}
        expanded = _need(c, where, "num_attention_heads")  # keys and values expanded to every query head
        return {"key_heads": expanded, "key_dim": _need(c, where, "qk_nope_head_dim") + rope,
                "value_heads": expanded, "value_dim": _need(c, where, "v_head_dim")}
    heads = _int_attr(c, "decoder_attention_heads", "num_decoder_attention_heads", "num_attention_heads", "n_head",
                      "attention_heads", "n_heads")
    if heads is None or heads < 1:
        raise UsageError(f"cannot read the head count from the {where}: it needs a positive num_attention_heads "
                         "(or n_head, decoder_attention_heads)")
    sliding = layer_type in ("sliding_attention", "hybrid_sliding")
    if model_type.startswith("inkling") and sliding:  # InklingAttention: swa_* sizes on sliding layers
        swa_kv, swa_dim = _need(c, where, "swa_num_key_value_heads"), _need(c, where, "swa_head_dim")
        return {"key_heads": swa_kv, "key_dim": swa_dim, "value_heads": swa_kv, "value_dim": swa_dim}
    read_dim = _int_attr(c, "dim_head", "attention_head_dim", "head_dim")  # cpmant, zamba, everyone else
    if read_dim is None:
        hidden = _need(c, where, "d_model", "hidden_size", "n_embd")
        if hidden % heads:
            raise UsageError(f"cannot read head_dim from the {where}: give head_dim, or a hidden_size "
                             f"(n_embd) divisible by the {heads} heads")
        read_dim = hidden // heads
    dim = read_dim
    # The decoder of a flat encoder-decoder config has one KV head per query head; its
    # num_key_value_heads, when mapped at all, is the encoder's head count (Whisper's attribute_map).
    decoder = _int_attr(c, "decoder_attention_heads", "num_decoder_attention_heads") is not None
    kv = heads if decoder else _kv_heads(c, model_type, heads)
    if kv < 1 or heads % kv:
        raise UsageError(f"the {where} has {kv} KV heads, which do not divide its {heads} attention heads: "
                         "fix num_key_value_heads")
    if model_type == "mimo_v2_flash" and sliding:  # MiMoV2Attention: num_key_value_heads * 2 on SWA layers
        kv *= 2
    value_dim = _int_attr(c, "v_head_dim") or dim  # mimo_v2_flash: values narrower than keys
    return {"key_heads": kv, "key_dim": dim, "value_heads": kv, "value_dim": value_dim}


def _extra_per_position(c: Any, model_type: str, layer_type: str, where: str) -> tuple[tuple[int, int], ...]:
    if layer_type != "indexed_attention":
        return ()
    # dots3_note computes its indexed layers' rotary embeddings in float32 (Dots3NoteTextModel.forward:
    # inputs_embeds.float()), which promotes the indexer's keys to float32 in any model dtype.
    size = 4 if model_type.startswith("dots3_note") else 0
    extra: tuple[tuple[int, int], ...] = ((_need(c, where, "index_head_dim", "indexer_head_dim"), size),)
    if model_type.startswith("qwen4_exp"):  # Qwen4ExpIndexer keeps its 3-row (mrope) int64 position ids
        extra += ((3, 8),)
    return extra


#: (conv elements, recurrent elements, conv bytes per element, recurrent bytes per element; 0: the model's).
State = tuple[int, int, int, int]
_F32 = 4


def _mamba2(inner: int, groups: int, state: int, kernel: int, heads_x_dim: int) -> State:
    """Mamba-2 mixers: a conv state over x, B and C, and a (heads, head_dim, state) recurrent state."""
    return (inner + 2 * groups * state) * kernel, heads_x_dim * state, 0, _F32


def _gated_delta(c: Any, where: str) -> State:
    """Gated DeltaNet: a conv state over q, k and v, and a (value heads, key dim, value dim) state."""
    hk, dk = _need(c, where, "linear_num_key_heads"), _need(c, where, "linear_key_head_dim")
    hv, dv = _need(c, where, "linear_num_value_heads"), _need(c, where, "linear_value_head_dim")
    return (2 * hk * dk + hv * dv) * _need(c, where, "linear_conv_kernel_dim"), hv * dk * dv, 0, _F32


def _state(c: Any, model_type: str, layer: dict[str, int], where: str) -> State:
    """The conv and recurrent states of one layer, per sequence, as each family's mixer allocates them."""
    family = model_type.removesuffix("_text")
    hidden = _int_attr(c, "hidden_size", "d_model") or 0
    if family in ("mamba", "falcon_mamba"):
        inner = _need(c, where, "intermediate_size")
        return inner * _need(c, where, "conv_kernel"), inner * _need(c, where, "state_size"), 0, _F32
    if family in ("jamba", "zamba"):
        inner = _need(c, where, "mamba_expand") * hidden
        return inner * _need(c, where, "mamba_d_conv"), inner * _need(c, where, "mamba_d_state"), 0, _F32
    if family == "mamba2":
        inner = _need(c, where, "expand") * hidden
        return _mamba2(inner, _need(c, where, "n_groups"), _need(c, where, "state_size"),
                       _need(c, where, "conv_kernel"), _need(c, where, "num_heads") * _need(c, where, "head_dim"))
    if family in ("bamba", "granitemoehybrid", "falcon_h1"):
        inner = _int_attr(c, "mamba_d_ssm") or _need(c, where, "mamba_expand") * hidden
        return _mamba2(inner, _need(c, where, "mamba_n_groups"), _need(c, where, "mamba_d_state"),
                       _need(c, where, "mamba_d_conv"),
                       _need(c, where, "mamba_n_heads") * _need(c, where, "mamba_d_head"))
    if family == "nemotron_h":
        inner = _need(c, where, "mamba_num_heads") * _need(c, where, "mamba_head_dim")
        return _mamba2(inner, _need(c, where, "n_groups"), _need(c, where, "ssm_state_size"),
                       _need(c, where, "conv_kernel"), inner)
    if family == "zamba2":
        inner = _need(c, where, "mamba_expand") * hidden
        return _mamba2(inner, _need(c, where, "mamba_ngroups"), _need(c, where, "mamba_d_state"),
                       _need(c, where, "mamba_d_conv"), inner)
    if family in ("qwen3_next", "qwen3_5", "qwen3_5_moe", "olmo_hybrid", "lara_mini", "qwen4_exp"):
        return _gated_delta(c, where)
    if family in ("kimi_linear", "bailing_hybrid"):  # KDA: one conv state over q, k and v, a (H, D, D) state
        heads, dim = _need(c, where, "linear_num_heads"), _need(c, where, "linear_head_dim")
        return 3 * heads * dim * _need(c, where, "linear_conv_kernel_dim"), heads * dim * dim, 0, _F32
    if family in ("lfm2", "lfm2_moe", "lfm3"):  # a short convolution over the hidden state
        return hidden * _need(c, where, "conv_L_cache"), 0, 0, 0
    if family in ("inkling", "inkling2", "inkling2_loop"):
        # Two short convolutions over the layer's keys and values, two over the hidden state, their
        # states in float32 (InklingShortConvolution casts to float32 before the convolution).
        kernel = _need(c, where, "conv_kernel_size")
        return 2 * (layer["key_heads"] * layer["key_dim"] + hidden) * kernel, 0, _F32, 0
    if family == "zaya":
        # A conv state over the queries and keys, (time0 - 1) + (time1 - 1) wide, and the previous
        # token's delayed half of the values (modeling_zaya.py).
        heads, dim = _need(c, where, "num_attention_heads"), layer["key_dim"]
        width = _need(c, where, "cca_time0") - 1 + _need(c, where, "cca_time1") - 1
        return (heads + layer["key_heads"]) * dim * width, layer["key_heads"] * dim // 2, 0, 0
    raise UsageError(f"kvperf does not know the conv and recurrent state shapes of the {where}: its "
                     "linear-attention layers are not in kvperf's table (kvperf/kv/kv_layers.py)")


def _read(config: PretrainedConfig) -> KvShape:
    text = config.get_text_config(decoder=True)
    if text is not config and type(text) is type(config):
        # A flat encoder-decoder config (Bart, Whisper): get_text_config copies it with the decoder's
        # fields renamed and the originals reset to their defaults; read the decoder_* fields instead.
        text = config
    # transformers sizes a decoder's cache by num_hidden_layers, which a Whisper-shaped config maps to
    # encoder_layers: with a deeper encoder, the layers past the decoder's stay empty.
    created = _int_attr(text, "num_hidden_layers") if _int_attr(text, "decoder_layers") is not None else None
    model_type = str(getattr(text, "model_type", "") or getattr(config, "model_type", "") or "unknown")
    where = f"config of model_type {model_type!r}"
    _refuse_special(config, text, model_type, where)
    # An encoder-decoder's causal LM is its decoder (BartForCausalLM, WhisperForCausalLM), whose depth
    # is decoder_layers: num_hidden_layers maps to encoder_layers in Whisper-shaped configs.
    layers = _int_attr(text, "decoder_layers", "num_decoder_layers", "num_hidden_layers", "n_layer", "num_layers",
                       "n_layers")
    if layers is None or layers < 1:
        raise UsageError(f"cannot read the layer count from the {where}: it needs a positive num_hidden_layers "
                         "(or n_layer, num_layers, decoder_layers)")
    types = _layer_types(text, layers, where)
    # Only multi-head latent attention asks the model class (an import of its modeling code).
    latent = any(_int_attr(_layer_config(text, i), "kv_lora_rank") is not None for i in range(layers)) \
        and _caches_latent(config, text)
    shapes = []
    for index, layer_type in enumerate(types):
        c = _layer_config(text, index)
        if layer_type in _EMPTY_TYPES:
            shapes.append(LayerShape(layer_type))
            continue
        if layer_type not in _ATTENTION_TYPES | _STATE_TYPES | _HYBRID_TYPES:
            raise UsageError(f"layer {index} of the {where} has layer type {layer_type!r}, which kvperf's formula "
                             "does not cover (it covers attention, sliding, chunked, indexed, linear-attention, "
                             "conv and hybrid layers)")
        attention = _attention(c, model_type, layer_type, latent, where) if layer_type not in _STATE_TYPES else {}
        window = None
        if layer_type in _WINDOW_ATTRS:
            window = _int_attr(c, _WINDOW_ATTRS[layer_type])
            if window is None or window < 1:
                raise UsageError(f"layer {index} of the {where} is {layer_type} but {_WINDOW_ATTRS[layer_type]} "
                                 "is not a positive integer")
        conv = recurrent = conv_size = recurrent_size = 0
        if layer_type not in _ATTENTION_TYPES:
            conv, recurrent, conv_size, recurrent_size = _state(c, model_type, attention, where)
        shapes.append(LayerShape(layer_type, window=window, extra_per_position=_extra_per_position(
            c, model_type, layer_type, where), conv_elements=conv, recurrent_elements=recurrent,
            conv_itemsize=conv_size, recurrent_itemsize=recurrent_size, **attention))
    if created is not None and created > len(shapes):
        shapes += [LayerShape("empty")] * (created - len(shapes))
    extra = _int_attr(text, "prompt_length") if model_type == "cpmant" else 0
    return KvShape(model_type, tuple(shapes), extra_positions=extra or 0)
