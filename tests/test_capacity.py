"""Device memory, weights, and the longest context whose cache fits beside them."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch
from transformers import MistralConfig

from kvperf.errors import UsageError
from kvperf.features import missing_state_layers
from kvperf.kv.capacity import (
    format_bytes,
    gpu_free_memory_bytes,
    kv_size_report,
    max_context_tokens,
    parse_bytes,
    weight_bytes,
)
from kvperf.kv.configs import SmallConfig
from kvperf.kv.kv_size import Quantization
from kvperf.models import PRESETS, load_model


@pytest.mark.parametrize(("text", "expected"), [
    ("1048576", 1048576), ("24GiB", 24 * 2**30), ("80GB", 80 * 10**9), ("80 gb", 80 * 10**9),
    ("1.5KiB", 1536), ("512MiB", 512 * 2**20), ("2TB", 2 * 10**12), ("7b", 7), ("0", 0),
])
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("-5GB", "device memory '-5GB' is negative: give a size such as 24GiB or 80GB"),
    ("24XB", "cannot read device memory '24XB': give bytes, or a number with one of the units kB, MB, GB, TB, "
             "KiB, MiB, GiB, TiB (e.g. 24GiB, 80GB), or auto"),
    ("lots", "cannot read device memory 'lots': give bytes, or a number with one of the units kB, MB, GB, TB, "
             "KiB, MiB, GiB, TiB (e.g. 24GiB, 80GB), or auto"),
])
def test_parse_bytes_refuses_bad_sizes(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_bytes(text)
    assert str(info.value) == message


def test_format_bytes() -> None:
    assert format_bytes(512) == "512"
    assert format_bytes(1536) == "1,536 (1.50 KiB)"
    assert format_bytes(24 * 2**30) == "25,769,803,776 (24.00 GiB)"


def test_max_context_tokens() -> None:
    config = PRESETS["tiny-llama-gqa"].make_config()  # 2 layers x 2 KV heads x 16 x 2 x 4 = 512 B/token
    assert max_context_tokens(config, 1, 512 * 1000) == 1000
    assert max_context_tokens(config, 4, 512 * 1000 + 511) == 250
    assert max_context_tokens(config, 1, 511) == 0
    assert max_context_tokens(config, 1, 512 * 1000, limit_tokens=512) == 512
    mistral = SmallConfig("mistral", 1, 2, 1, 8, 32, sliding_window=16).to_config()
    assert max_context_tokens(mistral, 1, 10**9, limit_tokens=4096) == 4096  # the window caps the cache


def test_max_context_tokens_quantized() -> None:
    config = PRESETS["tiny-llama-gqa"].make_config()
    quant = Quantization(q_group_size=32)
    fit = max_context_tokens(config, 1, 10**6, cache="quantized", quantization=quant)
    assert fit > 10**6 // 512  # more than the float32 cache holds in the same bytes
    with pytest.raises(UsageError, match="q_group_size 64 must divide kv_heads x head_dim = 32"):
        max_context_tokens(config, 1, 10**6, cache="quantized")


def _state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of the storages under a built model's state dict, each storage once (a tied weight is one)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}
    return sum(storages.values())


def test_weight_bytes_match_a_built_model() -> None:
    for name in ("tiny-gpt2", "tiny-llama-gqa"):
        assert weight_bytes(PRESETS[name].make_config(), "float32") == _state_dict_bytes(load_model(name)), name
    # distilgpt2: 81,912,576 parameters with the tied LM head counted once, on every release (4.57 and
    # 5.0 have GPT-2's causal-mask buffers, which are not weights; 5.0 leaves the meta model untied).
    assert weight_bytes(PRESETS["distilgpt2"].make_config(), "bfloat16") == 81912576 * 2


def test_report_without_device_memory() -> None:
    report = kv_size_report("tiny-llama-gqa", PRESETS["tiny-llama-gqa"].make_config(), batch_size=2, seq_len=None,
                            dtype=None, cache="dynamic", quantization=Quantization(), device_memory=None)
    assert (report["seq_len"], report["dtype"]) == (1024, "float32")  # the position limit, the config's dtype
    assert report["total_bytes"] == 2 * 1024 * 512 and "max_context_tokens" not in report


def test_report_with_a_sliding_model_and_its_dtype() -> None:
    config = MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=128, sliding_window=64, max_position_embeddings=10**6,
                           dtype="bfloat16")
    report = kv_size_report("mistral", config, batch_size=1, seq_len=4096, dtype=None, cache="dynamic",
                            quantization=Quantization(), device_memory="1GiB")
    assert report["dtype"] == "bfloat16" and report["layer_windows"] == [64, 64]
    assert report["total_bytes"] == 64 * report["bytes_per_token"]
    assert (report["max_context_tokens"], report["context_limited_by"]) == (10**6, "model positions")


def test_weights_larger_than_the_memory() -> None:
    report = kv_size_report("distilgpt2", PRESETS["distilgpt2"].make_config(), batch_size=1, seq_len=16,
                            dtype="float32", cache="dynamic", quantization=Quantization(), device_memory="100MB")
    assert report["max_context_tokens"] == 0 and report["context_limited_by"] == "weights"
    assert report["cache_budget_bytes"] == 0


def _fake_pynvml(monkeypatch: pytest.MonkeyPatch, *, init_error: bool = False, count: int = 1) -> Any:
    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: (_ for _ in ()).throw(NVMLError("Driver Not Loaded")) if init_error else None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda index: ("index", index),
        nvmlDeviceGetHandleByUUID=lambda uuid: ("uuid", uuid),
        nvmlDeviceGetName=lambda handle: f"Fake GPU {handle[1]}",
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(free=8 * 2**30, total=16 * 2**30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_auto_reads_the_free_memory_of_the_current_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pynvml(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_free_memory_bytes() == (8 * 2**30, "Fake GPU 0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert gpu_free_memory_bytes() == (8 * 2**30, "Fake GPU 3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    assert gpu_free_memory_bytes() == (8 * 2**30, "Fake GPU GPU-1234")


def test_auto_without_a_driver_says_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pynvml(monkeypatch, init_error=True)
    with pytest.raises(UsageError) as info:
        gpu_free_memory_bytes()
    assert str(info.value) == ("--device-memory auto: no NVIDIA GPU is present (NVML: Driver Not Loaded): "
                               "pass the memory instead, e.g. --device-memory 24GiB")


def test_auto_with_no_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pynvml(monkeypatch, count=0)
    with pytest.raises(UsageError, match="no NVIDIA GPU is visible"):
        gpu_free_memory_bytes()


def test_longest_context_of_a_hybrid_leaves_room_for_its_state() -> None:
    """Qwen3-Next's gated DeltaNet states take the same bytes at any length: the budget for keys and
    values is what they leave, and a budget below them fits nothing."""
    from kvperf.kv.families import tiny_config
    from kvperf.kv.kv_size import estimate_kv_cache

    if (why := missing_state_layers()) is not None:
        pytest.skip(why)
    config = tiny_config("qwen3_next")
    one = estimate_kv_cache(config, 2, 1)
    state, per_token = one.state_bytes, 2 * one.bytes_per_token
    assert state > 0 and per_token > 0
    assert max_context_tokens(config, 2, state + 100 * per_token) == 100
    assert max_context_tokens(config, 2, state + 100 * per_token - 1) == 99
    assert max_context_tokens(config, 2, 100 * per_token) < 100  # without room for the state
    assert max_context_tokens(config, 2, state - 1) == 0


def test_report_of_a_cache_of_states_alone() -> None:
    """Mamba's cache does not grow: any context fits once its state does."""
    from kvperf.kv.families import tiny_config

    if (why := missing_state_layers()) is not None:
        pytest.skip(why)
    report = kv_size_report("mamba", tiny_config("mamba"), batch_size=1, seq_len=100, dtype=None, cache="dynamic",
                            quantization=Quantization(), device_memory="1GiB")
    assert report["kv_bytes"] == 0 and report["state_bytes"] == report["total_bytes"] > 0
    assert report["layer_kinds"] == ["state", "state"] and report["num_kv_heads"] == 0
    assert report["max_context_tokens"] is None
    assert report["context_limited_by"] == "nothing: the cache holds constant state only"
