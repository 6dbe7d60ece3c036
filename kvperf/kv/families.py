"""Tiny configs of every causal-LM family in the installed transformers, for the families study and tests.

``tiny_config(model_type)`` starts from the family's default config (``AutoConfig.for_model``) and
shrinks it: 2 to 4 layers that keep one layer of each distinct layer type of the default (attention,
sliding, linear attention, Mamba, conv, ...) in their order, hidden size 64, 4 attention heads over 2
KV heads (4 for families without grouped-query attention), head dim 16, windows (sliding, chunked,
local) of 4 tokens so that a prompt of a few tokens overflows them, and small experts, latent ranks
and recurrent states. Per-layer lists of the default are cut to the same layers; sub-configs
(vision and audio towers, text configs of composite models) are shrunk the same way.

Some families need more than that to build at all: their defaults leave a required size unset, tie
one size to another, or need a layer pattern that two layers cannot express. ``_OVERRIDES`` holds
those settings, one family per entry, each with the reason.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from kvperf.errors import UsageError
from kvperf.models import init_weights
from kvperf.spec import parse_dtype

__all__ = ["causal_lm_types", "tiny_config", "tiny_model"]

_LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "num_decoder_layers")
_ENCODER_LAYER_COUNTS = ("encoder_layers", "num_encoder_layers")
#: Lists that name each layer's type, in the order they are looked for.
_TYPE_LISTS = ("layer_types", "layers_block_type", "block_types", "attn_layers", "attention_layers")
#: The small value of every size attribute a default config has (only those it has are set).
_SIZES: dict[str, int] = {
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "emb_dim": 64,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4, "attention_heads": 4,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "num_encoder_attention_heads": 4, "num_decoder_attention_heads": 4,
    "head_dim": 16,
    "intermediate_size": 128, "ffn_dim": 128, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "n_inner": 128,
    "dff": 128, "feed_forward_size": 128, "ffn_hidden_size": 128, "dim_ff": 128, "intermediate_size_mlp": 128,
    "dense_intermediate_size": 128, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "expert_ffn_hidden_size": 32, "shared_intermediate_size": 32, "moe_shared_expert_intermediate_size": 32,
    "shared_experts_intermediate_size": 32,
    "num_experts": 4, "n_routed_experts": 4, "num_local_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_k": 2, "num_experts_per_token": 2,
    "n_group": 1, "topk_group": 1, "num_expert_group": 1,
    "kv_lora_rank": 32, "q_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 24,
    "sliding_window": 4, "attention_chunk_size": 4, "window_size": 4, "local_attention": 4,
    "attention_window_size": 4, "sliding_window_size": 4,
    "mamba_d_state": 16, "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_num_heads": 8, "mamba_head_dim": 16,
    "ssm_state_size": 16, "state_size": 16, "time_step_rank": 8, "mamba_dt_rank": 8, "mamba_chunk_size": 16,
    "chunk_size": 16, "mamba_d_ssm": 128,
    "linear_key_head_dim": 16, "linear_value_head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "linear_head_dim": 16, "linear_num_heads": 4,
    "index_head_dim": 16, "index_n_heads": 2, "index_topk": 4,
    "lru_width": 64, "embedding_size": 64, "hidden_size_per_layer_input": 16, "laurel_rank": 8,
    "swa_num_attention_heads": 4, "swa_num_key_value_heads": 1, "swa_head_dim": 8,
    "word_embed_proj_dim": 64, "dim_head": 16, "attention_head_size": 16, "rotary_dim": 8,
    "query_pre_attn_scalar": 16, "embedding_dim": 64, "adapter_in_dim": 64, "adapter_input_size": 64,
    "hc_lowrank": 16, "ple_embed_dim": 16,
    "ngram_vocab_size_base": 1000, "d_rel": 4, "rel_extent": 16,
}

#: The small sizes of per-layer overrides (heterogeneous configs), other than the global ones.
_LAYER_SIZES: dict[str, int] = {"head_dim": 32, "kv_lora_rank": 48, "qk_nope_head_dim": 24}

#: Settings without which a family's tiny config does not build or keeps no layer of some type.
_OVERRIDES: dict[str, dict[str, Any]] = {
    # Attention only on the layers listed; the default lists none.
    "bamba": {"attn_layer_indices": [1]},
    # One attention layer every attn_layer_period layers, from attn_layer_offset.
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1},
    # The default is Mamba on every layer.
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    # Blocks cycle through block_types (recurrent, recurrent, attention): three layers show all of it.
    "recurrent_gemma": {"num_hidden_layers": 3},
    # Attention on the layers in full_attn_idxs, short convolutions elsewhere.
    "lfm2": {"full_attn_idxs": [1], "layer_types": ["conv", "full_attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    # Hybrid (Mamba + shared attention) layers every attn_layer_period; tying needs two of them.
    "zamba": {"layer_pattern": 2, "attn_layer_period": 2, "attn_layer_offset": 1},
    "zamba2": {"layer_pattern": 2, "hybrid_layer_ids": [1, 3]},
    # hidden_size * expand must equal num_heads * head_dim.
    "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 2},
    # Required sizes that default to None.
    "deepseek_v2": {"num_experts_per_tok": 2, "topk_method": "greedy"},
    "dots1": {"num_local_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2},
    # Sliding layers need head_dim = qk_nope_head_dim + qk_rope_head_dim of their own overrides (24 + 8).
    "dots3_note": {"text_config": {"head_dim": 32}},
    "dots3_note_text": {"head_dim": 32},
    "hunyuan_v1_dense": {"head_dim": 16},
    "hunyuan_v1_moe": {"head_dim": 16},
    "ministral": {"head_dim": 16},
    "nemotron": {"num_key_value_heads": 2},
    "qwen4_exp": {"text_config": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16,
                                  "indexer_budget": 8, "indexer_compress_ratio": 4}},
    "qwen4_exp_text": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 8,
                       "indexer_compress_ratio": 4},
    # The default leaves RoPE unset for the layer types it lists (transformers cannot build it either).
    "cohere_compass_text": {"rope_parameters": {t: {"rope_type": "default", "rope_theta": 10000.0}
                                                for t in ("sliding_attention", "full_attention")}},
    "dbrx": {"attn_config": {"rope_theta": 10000.0, "kv_n_heads": 2, "clip_qkv": 8.0}},
    # An assistant (drafter) model has no per-layer inputs (transformers cannot build the default either).
    "gemma4_assistant": {"text_config": {"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0}},
    "zaya": {"num_experts_per_tok": 1},
    # The KV-sharing layers (the last num_kv_shared_layers) reuse the cache of the last earlier layer of
    # their type, so every type needs a layer before the shared ones: (sliding, full) twice.
    "gemma3n_text": {"layer_pattern": 2, "num_kv_shared_layers": 2},
    "gemma4_text": {"layer_pattern": 2, "num_kv_shared_layers": 2},
    "gemma4_unified_text": {"layer_pattern": 2, "num_kv_shared_layers": 2},
    "gemma3n": {"layer_pattern": 2, "text_config": {"num_kv_shared_layers": 2}},
    "gemma4": {"layer_pattern": 2, "text_config": {"num_kv_shared_layers": 2}},
    "gemma4_unified": {"layer_pattern": 2, "text_config": {"num_kv_shared_layers": 2}},
    # Input, recurrent and output blocks must add up to num_hidden_layers.
    "dory": {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"], "num_hidden_layers": 3,
             "n_input_layers": 1, "n_recurrent_layers": 1, "n_output_layers": 1},
    # Positions are factored into axial_pos_shape, whose product must be the position limit.
    "reformer": {"axial_pos_shape": [16, 32], "axial_pos_embds_dim": [32, 32],
                 "max_position_embeddings": 512, "local_attn_chunk_length": 4, "lsh_attn_chunk_length": 4,
                 "attn_layers": ["local", "local"]},
    # xLSTM's heads split the hidden size into query/key and value parts of their own.
    "xlstm": {"num_heads": 2, "qk_dim_factor": 1.0},
}


def causal_lm_types() -> tuple[str, ...]:
    """Every model type in the installed transformers' causal-LM auto mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return tuple(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))


def _layer_indices(data: dict[str, Any], layers: int, repeat: int) -> list[int]:
    """The first layer of each distinct type (at most 4), ``repeat`` times over; at least 2 layers."""
    for key in _TYPE_LISTS:
        types = data.get(key)
        if isinstance(types, list) and len(types) == layers:
            firsts = list({str(t): i for i, t in reversed(list(enumerate(types)))}.values())
            picked = sorted(firsts)[:4]
            if repeat > 1:  # the same pattern again, from the next layers of each type
                later = range(max(picked) + 1, layers)
                again = sorted(next(j for j in later if str(types[j]) == str(types[i])) for i in picked)
                picked = picked + again
            break
    else:
        picked = [0]
    picked += [i for i in range(layers) if i not in picked][: max(0, 2 - len(picked))]
    return sorted(picked)


def _small_layer_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """A heterogeneous config's overrides of one layer, shrunk to other small sizes than the global ones
    (head dim 32, latent rank 48, 1 KV head unless there is one per query head), so that layers still differ."""
    small = {key: _LAYER_SIZES.get(key, _SIZES.get(key, value)) if isinstance(value, int) else value
             for key, value in overrides.items()}
    if "num_key_value_heads" in overrides:
        same = overrides["num_key_value_heads"] == overrides.get("num_attention_heads")
        small["num_key_value_heads"] = small.get("num_attention_heads", 4) if same else 1
    return small


def _small_kwargs(config: PretrainedConfig, repeat: int = 1) -> dict[str, Any]:
    data = config.to_dict()
    out: dict[str, Any] = {}
    layers = next((data[k] for k in _LAYER_COUNTS if isinstance(data.get(k), int) and data[k] > 0), None)
    if layers is not None:
        picked = _layer_indices(data, layers, repeat)
        for key in _LAYER_COUNTS:
            if data.get(key) == layers:
                out[key] = len(picked)
        for key, value in data.items():
            if isinstance(value, list) and len(value) == layers > 1 and key not in out:
                out[key] = [value[i] for i in picked]
        per_layer = data.get("per_layer_config")
        if isinstance(per_layer, dict):  # heterogeneous configs: overrides keyed by layer index ("05")
            by_index = {int(key): value for key, value in per_layer.items()}
            out["per_layer_config"] = {new: _small_layer_overrides(by_index[old])
                                       for new, old in enumerate(picked) if old in by_index}
    for key in _ENCODER_LAYER_COUNTS:
        if isinstance(data.get(key), int):
            out[key] = 2
    for key, value in _SIZES.items():
        if isinstance(data.get(key), int) and not isinstance(data[key], bool):
            out[key] = value
    if "qk_rope_head_dim" in out and "head_dim" in out:
        out["head_dim"] = out["qk_rope_head_dim"]  # MLA configs: head_dim is the rotary part
    heads = data.get("num_attention_heads") or data.get("n_head")
    for key in ("num_key_value_heads", "num_kv_heads"):
        if isinstance(data.get(key), int):
            out[key] = 4 if data[key] == heads else 2
    for name in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, name, None)
        if isinstance(sub, PretrainedConfig):
            small = _small_kwargs(sub, repeat if name == "text_config" else 1)
            out[name] = {"model_type": sub.model_type, **small} if getattr(sub, "model_type", "") else small
    return out


def tiny_config(model_type: str, **overrides: Any) -> PretrainedConfig:
    """A small config of ``model_type`` (see the module docstring); ``overrides`` are set last."""
    settings = dict(_OVERRIDES.get(model_type, {}))
    repeat = settings.pop("layer_pattern", 1)
    try:
        default = AutoConfig.for_model(model_type)
    except ValueError as exc:
        if model_type not in _OVERRIDES:
            raise UsageError(f"unknown model_type {model_type!r} ({' '.join(str(exc).split())[:120]}): use one of "
                             "kvperf.kv.families.causal_lm_types()") from None
        default = AutoConfig.for_model(model_type, **settings)  # a default that does not build on its own
    kwargs = _small_kwargs(default, repeat)
    # A causal LM decodes: BERT-style families (bert, roberta, electra, ...) attend both ways unless
    # is_decoder is set, which transformers asks for when they are loaded as causal LMs.
    kwargs["is_decoder"] = True
    for key, value in {**settings, **overrides}.items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = value
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, dtype: str | torch.dtype = "float32", seed: int = 0,
               **overrides: Any) -> PreTrainedModel:
    """The ``AutoModelForCausalLM`` of ``tiny_config(model_type)`` with ``init_weights(seed)``, in eval mode."""
    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    init_weights(model, seed=seed)
    model = model.to(dtype=torch_dtype)
    model.eval()
    return model
