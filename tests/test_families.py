"""The KV-size formula and the harness on one family of every layer type and special case.

``benchmarks/families_study.py`` runs every causal-LM family of transformers; this is its fast subset.
For each family here: the per-layer bytes of ``estimate_kv_cache`` equal ``measure_layer_bytes`` of
the cache a real ``generate`` returned, for the dynamic cache in float32 and bfloat16 (where the
recurrent states of linear-attention layers stay float32) and for the static cache, with left padding
and windows of 4 that the prompt overflows. Families kvperf refuses are refused with their reason.

On an older transformers (the version check in ``.ci/run`` runs 4.57.6), a family the release does not
have skips, naming what it needs; linear-attention, Mamba and short-conv families, whose states older
releases keep in each model's own cache class, are refused naming the release kvperf needs
(``kvperf.features.missing_state_layers``), and that refusal is tested instead.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import pytest
import torch
from packaging.version import Version
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, WhisperConfig
from transformers import __version__ as transformers_version
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from kvperf.errors import UsageError
from kvperf.features import STATE_LAYERS_SINCE, missing_state_layers
from kvperf.kv.families import causal_lm_types, tiny_config, tiny_model
from kvperf.kv.kv_size import (
    KvShape,
    cache_tensors,
    estimate_kv_cache,
    kv_cache_bytes,
    measure_layer_bytes,
    returned_cache,
)
from kvperf.measure.bench import benchmark_generation
from kvperf.measure.harness import forget_static_cache, generate_kwargs, run_generation
from kvperf.models import init_weights, max_positions
from kvperf.spec import GenerationSpec

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, PROMPT, NEW = 2, 7, 4
LEFT_PAD = (0, 2)

#: One family per layer type and special case, and what it shows.
SIZED = {
    "deepseek_v3": "multi-head latent attention: the latent (kv_lora_rank) and the rotary key, one head each",
    "glm_moe_dsa": "sparse attention: latent attention plus the indexer's keys",
    "mimo_v2_flash": "values narrower than keys, twice the KV heads on sliding layers",
    "gemma3_text": "sliding and full layers",
    "qwen3_next": "hybrid: gated DeltaNet (conv and float32 recurrent states) beside attention",
    "jamba": "hybrid: Mamba beside attention",
    "falcon_h1": "hybrid layers: Mamba-2 and attention in the same layer",
    "lfm2": "short-convolution layers (a conv state, no recurrent state)",
    "mamba": "recurrent only: every layer a Mamba state, no keys and values",
    "nemotron_h": "Mamba-2, attention and layers that cache nothing (MoE, MLP)",
    "gemma3n_text": "KV sharing: the last layers reuse earlier layers' cache",
    "dots3_note_text": "a heterogeneous config: per-layer heads and latent ranks",
    "gemma3": "a composite config (text config inside, as google/gemma-3-*-it)",
    "cpmant": "a prompt prefix of prompt_length positions in every layer",
}
#: Families whose states transformers keeps in each model's own cache class before 5.5 (kvperf refuses those).
STATE_FAMILIES = {"qwen3_next", "jamba", "falcon_h1", "lfm2", "mamba", "nemotron_h"}
REFUSED = {
    "xlstm": "xLSTMForCausalLM is recurrent (xLSTM): it has no keys and values, only recurrent states in an "
             "xLSTMCache",
    "openai-gpt": "caches nothing: OpenAIGPTLMHeadModel.forward takes no cache",
    "recurrent_gemma": "its recurrent blocks keep their states in the model's own modules, outside the Cache",
    "xlnet": "XLNetLMHeadModel caches a memory of past hidden states (mems), not keys and values",
}


@functools.cache
def _model(model_type: str, dtype: str) -> PreTrainedModel:
    return tiny_model(model_type, dtype)


def _generate(model: PreTrainedModel, cache: str) -> Any:
    from kvperf.measure.prompts import make_prompts

    spec = GenerationSpec(cache=cache, batch_size=BATCH, prompt_len=PROMPT, new_tokens=NEW)  # type: ignore[arg-type]
    ids, mask = make_prompts(model, spec, left_pad=LEFT_PAD)
    forget_static_cache(model)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs(model, spec))


def formula_mismatch(model: PreTrainedModel, dtype: str, cache: str) -> str | None:
    measured = measure_layer_bytes(returned_cache(_generate(model, cache)))
    estimate = estimate_kv_cache(model.config, BATCH, PROMPT + NEW - 1, dtype,
                                 "static" if cache == "static" else "dynamic", prompt_len=PROMPT)
    if estimate.layer_bytes == measured:
        return None
    return f"{cache} {dtype}: formula {estimate.layer_bytes} != measured {measured}"


#: transformers' own static cache cannot hold cpmant's prompt prefix (index_copy_ out of bounds).
NO_STATIC = {"cpmant"}


def skip_unless_this_release_has(model_type: str) -> None:
    """Skip, naming what it needs, a family this transformers release lacks or keeps in a cache of its own."""
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"model_type {model_type!r} needs a newer transformers: {transformers_version} does not have it")
    if model_type in STATE_FAMILIES and (why := missing_state_layers()) is not None:
        pytest.skip(f"{model_type}: {why} (test_state_family_refused_naming_the_release_it_needs runs here)")


def _cpmant_generates_with_a_cache() -> bool:
    """transformers 4.57's CpmAnt cannot generate with a cache: its attention mask spans the prompt prefix
    plus the whole sequence while the keys of a decode step span the cache (a shape error)."""
    try:
        _generate(_model("cpmant", "float32"), "on")
    except RuntimeError as exc:
        if "must match the size of tensor" in str(exc):
            return False
        raise
    return True


@pytest.mark.parametrize("model_type", sorted(SIZED))
def test_formula_equals_the_cache_of_family(model_type: str) -> None:
    """Every layer agrees to the byte: dynamic in float32 and bfloat16, static in float32."""
    skip_unless_this_release_has(model_type)
    old_cpmant = model_type == "cpmant" and Version(transformers_version) < Version("5.18")
    if old_cpmant and not _cpmant_generates_with_a_cache():
        pytest.skip(f"transformers {transformers_version}'s CpmAnt fails to generate with a cache (a shape error "
                    "in its attention mask): it needs transformers 5.18 or newer (5.15.1 fails too)")
    modes = [("float32", "on"), ("bfloat16", "on")] + [("float32", "static")] * (model_type not in NO_STATIC)
    for dtype, cache in modes:
        mismatch = formula_mismatch(_model(model_type, dtype), dtype, cache)
        assert mismatch is None, f"{model_type} ({SIZED[model_type]}): {mismatch}"


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_family_refused_with_its_reason(model_type: str) -> None:
    with pytest.raises(UsageError) as info:
        KvShape.from_config(tiny_config(model_type))
    assert REFUSED[model_type] in str(info.value)


@pytest.mark.parametrize("model_type", sorted(STATE_FAMILIES))
def test_state_family_refused_naming_the_release_it_needs(model_type: str) -> None:
    """Before transformers 5.5 these families keep their states in a cache class of their own: kvperf
    refuses to size them, naming the release from which it does."""
    if (why := missing_state_layers()) is None:
        pytest.skip(f"transformers {transformers_version}'s Cache holds linear-attention and Mamba states "
                    "(LinearAttentionLayer): test_formula_equals_the_cache_of_family sizes these families here")
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"model_type {model_type!r} needs a newer transformers: {transformers_version} does not have it")
    with pytest.raises(UsageError) as info:
        KvShape.from_config(tiny_config(model_type))
    assert why in str(info.value) and f"from transformers {STATE_LAYERS_SINCE}" in why


def test_every_family_is_sized_or_refused_by_kvperf() -> None:
    """Reading a config never raises anything but kvperf's own error (dots3_note used to raise
    transformers' AmbiguousGlobalPerLayerAttributeError, mimo_v2_flash and xlstm a wrong reason)."""
    for model_type in causal_lm_types():
        configs = []
        with contextlib.suppress(Exception):  # a config transformers cannot build: the study reports those
            configs.append(tiny_config(model_type))
        with contextlib.suppress(Exception):  # the family's default, full size (dots3_note's tiny one fails)
            configs.append(AutoConfig.for_model(model_type))
        for config in configs:
            with contextlib.suppress(UsageError):
                KvShape.from_config(config)


def _cached_latent_layout(config: Any) -> str:
    """``latent`` or ``expanded``: what layer 0 of the cache of a real DeepSeek-V3 ``generate`` holds (any
    other layout fails the test, so one of the two tests below always runs)."""
    layer = returned_cache(_generate(_model("deepseek_v3", "float32"), "on")).layers[0]
    shapes = (layer.keys.shape[1], layer.keys.shape[-1], layer.values.shape[1], layer.values.shape[-1])
    heads = config.num_attention_heads
    layouts = {(1, config.kv_lora_rank, 1, config.qk_rope_head_dim): "latent",
               (heads, config.qk_nope_head_dim + config.qk_rope_head_dim, heads, config.v_head_dim): "expanded"}
    assert shapes in layouts, f"DeepSeek-V3 caches {shapes}, neither the latent nor expanded keys and values"
    return layouts[shapes]


def test_latent_attention_shapes() -> None:
    """DeepSeek-V3's layers cache the compressed latent (kv_lora_rank) and the shared rotary key
    (qk_rope_head_dim), one head each, not keys and values expanded to every head (transformers 5.15 on)."""
    config = tiny_config("deepseek_v3")
    latent = (1, config.kv_lora_rank, 1, config.qk_rope_head_dim)
    if _cached_latent_layout(config) != "latent":
        pytest.skip(f"transformers {transformers_version} caches DeepSeek-V3's keys and values expanded to every "
                    "head; it caches the latent from 5.15 (test_expanded_latent_attention_shapes runs here)")
    layer = KvShape.from_config(config).layers[0]
    assert (layer.key_heads, layer.key_dim, layer.value_heads, layer.value_dim) == latent
    assert estimate_kv_cache(config, 1, 1).bytes_per_token == config.num_hidden_layers * (
        config.kv_lora_rank + config.qk_rope_head_dim) * 4


def test_expanded_latent_attention_shapes() -> None:
    """Before transformers 5.15, DeepSeek-V3's layers cache keys (qk_nope_head_dim + qk_rope_head_dim) and
    values (v_head_dim) expanded to every attention head: the formula follows what the release caches."""
    config = tiny_config("deepseek_v3")
    heads = config.num_attention_heads
    expanded = (heads, config.qk_nope_head_dim + config.qk_rope_head_dim, heads, config.v_head_dim)
    if _cached_latent_layout(config) != "expanded":
        pytest.skip(f"transformers {transformers_version} caches DeepSeek-V3's latent, not expanded keys and "
                    "values (test_latent_attention_shapes runs here)")
    layer = KvShape.from_config(config).layers[0]
    assert (layer.key_heads, layer.key_dim, layer.value_heads, layer.value_dim) == expanded
    assert estimate_kv_cache(config, 1, 1).bytes_per_token == config.num_hidden_layers * heads * (
        expanded[1] + expanded[3]) * 4


def test_hybrid_reports_kv_and_state_apart() -> None:
    """qwen3_next: the state bytes do not grow with the sequence, the KV bytes grow linearly."""
    skip_unless_this_release_has("qwen3_next")
    config = tiny_config("qwen3_next")
    short, long = estimate_kv_cache(config, 2, 10), estimate_kv_cache(config, 2, 1000)
    assert short.state_bytes == long.state_bytes > 0
    assert long.kv_bytes == 100 * short.kv_bytes > 0
    assert long.total_bytes == long.kv_bytes + long.state_bytes


def test_measurement_sees_conv_and_recurrent_states() -> None:
    """A linear-attention layer's bytes are its conv and recurrent states' storages, found by
    ``cache_tensors`` too (the memory pass attributes them to the cache)."""
    skip_unless_this_release_has("qwen3_next")
    cache = returned_cache(_generate(_model("qwen3_next", "float32"), "on"))
    layer = cache.layers[0]
    states = [layer.conv_states[0], layer.recurrent_states[0]]
    assert measure_layer_bytes(cache)[0] == sum(t.untyped_storage().nbytes() for t in states) > 0
    found = {t.untyped_storage().data_ptr() for t in cache_tensors(cache)}
    assert {t.untyped_storage().data_ptr() for t in states} <= found


def test_encoder_decoder_with_a_deeper_encoder() -> None:
    """A Whisper-shaped config whose encoder is deeper than its decoder (distil-whisper): the causal LM
    fills decoder_layers layers of the cache; transformers creates num_hidden_layers of them, which maps
    to encoder_layers, and the rest stay empty."""
    config = WhisperConfig(encoder_layers=4, decoder_layers=2, d_model=64, encoder_attention_heads=4,
                           decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=512,
                           max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)
    assert config.num_hidden_layers == 4
    model = AutoModelForCausalLM.from_config(config)
    init_weights(model)
    model.eval()
    for read in (config, model.config):
        assert KvShape.from_config(read).layer_kinds == ("full", "full", "none", "none")
    assert formula_mismatch(model, "float32", "on") is None


def test_harness_runs_a_composite_config() -> None:
    """gemma3 (Gemma3Config: no vocab_size on the top level) runs in every cache mode."""
    model = _model("gemma3", "float32")
    assert not hasattr(model.config, "vocab_size") or model.config.get_text_config() is not model.config
    for cache in ("on", "off", "static"):
        spec = GenerationSpec(cache=cache, batch_size=1, prompt_len=6, new_tokens=3)  # type: ignore[arg-type]
        result = run_generation(model, spec, warmup_runs=0, measure_memory=False)
        assert result.generated_tokens == 3
        if cache == "on":
            assert result.kv_cache_bytes == kv_cache_bytes(model.config, 1, 8)


def test_no_position_limit() -> None:
    """XLNet's max_position_embeddings of -1 means no limit: the harness runs it."""
    model = _model("xlnet", "float32")
    assert max_positions(model.config) is None
    result = run_generation(model, GenerationSpec(batch_size=1, prompt_len=6, new_tokens=3), warmup_runs=0,
                            measure_memory=False)
    assert result.generated_tokens == 3


class _Benchmark:
    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}

    def pedantic(self, fn: Any, setup: Any = None, rounds: int = 1, warmup_rounds: int = 0,
                 iterations: int = 1) -> None:
        for _ in range(rounds + warmup_rounds):
            fn()


def test_benchmark_of_a_refused_family_records_the_reason() -> None:
    """The plugin's benchmark path never fails a case on the formula: null, with the reason."""
    bench = _Benchmark()
    benchmark_generation(bench, _model("xlnet", "float32"), GenerationSpec(prompt_len=6, new_tokens=3),
                         rounds=1, warmup_rounds=0)
    assert bench.extra_info["kv_cache_formula_bytes"] is None
    assert REFUSED["xlnet"] in bench.extra_info["kv_cache_formula_note"]
