"""``kvperf kv-size``: output, JSON, model sources, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from kvperf.cli import main
from kvperf.kv.configs import SmallConfig
from kvperf.models import PRESETS


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(["kv-size", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data: dict[str, Any] = json.loads(out)
    return data


def test_json_has_the_promised_fields(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ["tiny-llama-gqa", "--batch", "4", "--seq", "1000", "--dtype", "bf16"])
    assert {"bytes_per_token": 256, "total_bytes": 4 * 1000 * 256, "num_layers": 2, "num_kv_heads": 2,
            "head_dim": 16, "dtype": "bfloat16", "cache": "dynamic"}.items() <= data.items()


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kv-size", "distilgpt2", "--batch", "4", "--seq", "1024", "--dtype", "bfloat16",
                 "--device-memory", "24GiB"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "bytes_per_token      18432" in lines
    assert "total_bytes          75,497,472 (72.00 MiB)" in lines
    assert "weight_bytes         163,825,152 (156.24 MiB)" in lines
    assert "max_context_tokens   1024" in lines and "context_limited_by   model positions" in lines
    assert "layer_windows        full x6" in lines


def test_device_memory_gives_the_longest_context(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ["tiny-gpt2", "--device-memory", "1000000"])
    # tiny-gpt2: 2 layers x 4 heads x 16 x 2 x 4 = 1024 bytes per token, 793,600 bytes of weights.
    assert data["weight_bytes"] == 793600 and data["cache_budget_bytes"] == 206400
    assert data["max_context_tokens"] == 206400 // 1024 and data["context_limited_by"] == "memory"


def test_static_and_quantized_caches(capsys: pytest.CaptureFixture[str]) -> None:
    assert _json(capsys, ["tiny-gpt2", "--seq", "100", "--cache", "static"])["total_bytes"] == 100 * 1024
    fp8 = _json(capsys, ["tiny-gpt2", "--seq", "100", "--cache", "quantized", "--backend", "fp8"])
    assert fp8["total_bytes"] == 2 * 2 * (100 * 4 * 16 + 4) and fp8["backend"] == "fp8"
    quanto = _json(capsys, ["tiny-gpt2", "--seq", "300", "--cache", "quantized", "--nbits", "2",
                            "--residual-length", "16"])
    # prompt 285 + 15 decode steps: 285 positions quantized (4 x 285 x 16 / 64 = 285 groups, packed four
    # to a byte in ceil(285 / 4) = 72 rows of 64), 15 positions in the float32 residual.
    assert quanto["total_bytes"] == 2 * 2 * (72 * 64 + 2 * 285 * 4 + 15 * 4 * 16 * 4)
    assert (quanto["nbits"], quanto["q_group_size"], quanto["residual_length"]) == (2, 64, 16)


def test_reads_a_config_json_and_a_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = SmallConfig("qwen2", 4, 4, 2, 8, 64, sliding_window=32).to_config()
    config.save_pretrained(tmp_path)
    by_file = _json(capsys, [str(tmp_path / "config.json"), "--seq", "100"])
    by_dir = _json(capsys, [str(tmp_path), "--seq", "100"])
    assert by_file["layer_windows"] == [None, None, 32, 32] and by_file["total_bytes"] == by_dir["total_bytes"]
    # K and V x 2 KV heads x head_dim 8 x 4 bytes per position; two full layers, two 32-token windows.
    assert by_file["total_bytes"] == 2 * 2 * 8 * 4 * (100 + 100 + 32 + 32)


def test_auto_without_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class NVMLError(Exception):
        pass

    def no_driver() -> None:
        raise NVMLError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(NVMLError=NVMLError, nvmlInit=no_driver))
    assert main(["kv-size", "tiny-gpt2", "--device-memory", "auto"]) == 2
    assert capsys.readouterr().err == (
        "kvperf: error: --device-memory auto: no NVIDIA GPU is present (NVML: NVML Shared Library Not Found): "
        "pass the memory instead, e.g. --device-memory 24GiB\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["tiny-gpt2", "--dtype", "int8"], "unknown dtype 'int8': use one of float32, bfloat16, float16"),
    (["tiny-gpt2", "--batch", "-2"], "batch_size must be a positive integer, got -2"),
    (["tiny-gpt2", "--seq", "0"], "seq_len must be a positive integer, got 0"),
    (["tiny-gpt2", "--device-memory=-8GB"], "device memory '-8GB' is negative: give a size such as 24GiB or 80GB"),
    (["tiny-gpt2", "--cache", "quantized", "--nbits", "3"], "nbits must be 2 or 4 for the quanto backend, got 3"),
    (["no-such-model"], "model 'no-such-model' is not a preset (tiny-gpt2, distilgpt2, tiny-llama-gqa, "
                        "tiny-mistral-sliding), a local "
                        "directory, or a hub id in the local cache: use a preset, or download it first with "
                        "`hf download no-such-model`"),
    (["tiny-gpt2", "--device-memory", "0"],
     "--device-memory '0' is not positive: give the memory for weights and cache, e.g. 24GiB or 80GB"),
    (["tiny-gpt2", "--device-memory", "0.4"],
     "--device-memory '0.4' is not positive: give the memory for weights and cache, e.g. 24GiB or 80GB"),
    (["tiny-gpt2", "--device-memory="], "--device-memory is empty: give bytes, a size such as 24GiB or 80GB, or auto"),
    (["tiny-gpt2", "--dtype="], "--dtype is empty: give float32, bfloat16 or float16, or leave the option out"),
    ([""], "MODEL is empty: give a preset (tiny-gpt2, distilgpt2, tiny-llama-gqa), a model directory or a hub id"),
], ids=["dtype", "batch", "seq", "memory", "nbits", "model", "memory-0", "memory-below-1", "memory-empty",
        "dtype-empty", "model-empty"])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["kv-size", *argv]) == 2
    assert capsys.readouterr().err == f"kvperf: error: {message}\n"


def test_unreadable_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": ')
    assert main(["kv-size", str(tmp_path / "config.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvperf: error: cannot read model config '{tmp_path / 'config.json'}': ")
    assert err.count("\n") == 1


def test_config_without_kv_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    assert main(["kv-size", str(tmp_path / "config.json")]) == 2
    assert capsys.readouterr().err == (
        "kvperf: error: the config of model_type 't5' is an encoder-decoder without a causal LM in transformers: "
        "kvperf sizes the cache of what AutoModelForCausalLM loads (a decoder-only model, or the decoder of Bart- "
        "and Whisper-shaped configs)\n")


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["kv-size", "tiny-gpt2", "--cache", "paged"])
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_presets_are_all_sized(capsys: pytest.CaptureFixture[str]) -> None:
    for name in PRESETS:
        assert _json(capsys, [name])["total_bytes"] > 0
