"""Models: offline presets with seeded random weights, and ``from_pretrained`` for anything else.

Weights cannot be downloaded on CI, so the presets build a model from a config and fill it with
seeded random weights. Random weights time the same as trained ones: the work per token depends on
the shapes, not on the values.

The values do matter for correctness tests, though. transformers' default initialisation (normal
with std 0.02) makes every attention logit nearly zero, so attention is close to uniform and a cache
that returns stale or permuted keys still yields the same greedy tokens. ``init_weights`` therefore
draws every projection with std ``gain / sqrt(fan_in)`` (gain 2) and embeddings with std 1: attention
logits then spread over several units, attention is peaked (normalised entropy about 0.3-0.45 on the
tiny presets, against 1.0 for uniform and for the default init), and the argmax depends on which
positions are attended, which is what makes a broken cache visible (see ``tests/test_properties.py``).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from kvperf.device_map import AUTO, DeviceMap, check_device_map, dispatch, require_accelerate
from kvperf.errors import ModelNotAvailableError, UsageError
from kvperf.spec import parse_dtype

if TYPE_CHECKING:  # transformers' modeling code costs seconds of imports: `kvperf kv-size` needs one config
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["PRESETS", "Preset", "init_weights", "load_config", "load_model", "max_positions"]


@dataclass(frozen=True)
class Preset:
    """An offline model: a config factory and what it is for."""

    name: str
    description: str
    make_config: Callable[[], PretrainedConfig]


def _tiny_gpt2() -> PretrainedConfig:
    from transformers import GPT2Config

    return GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1024, n_positions=512,
                      bos_token_id=0, eos_token_id=0)


def _distilgpt2() -> PretrainedConfig:
    from transformers import GPT2Config

    # The exact shape of distilgpt2 (81.9M parameters with the tied LM head).
    return GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                      bos_token_id=50256, eos_token_id=50256)


def _tiny_llama_gqa() -> PretrainedConfig:
    from transformers import LlamaConfig

    # Grouped-query attention: 8 query heads share 2 key/value heads (4 queries per KV head).
    return LlamaConfig(num_hidden_layers=2, hidden_size=128, intermediate_size=256,
                       num_attention_heads=8, num_key_value_heads=2, head_dim=16, vocab_size=1024,
                       max_position_embeddings=1024, bos_token_id=0, eos_token_id=1,
                       tie_word_embeddings=False)


def _tiny_mistral_sliding() -> PretrainedConfig:
    from transformers import MistralConfig

    # Sliding-window attention in every layer, window 16: past 16 positions the dynamic cache keeps
    # the last ones only (DynamicSlidingWindowLayer) and the static cache is 16 long (StaticSlidingWindowLayer).
    return MistralConfig(num_hidden_layers=2, hidden_size=128, intermediate_size=256,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=16, vocab_size=1024,
                         max_position_embeddings=1024, sliding_window=16, bos_token_id=0, eos_token_id=1,
                         tie_word_embeddings=False)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny-gpt2", "GPT-2, 2 layers, n_embd 64, 4 heads, vocab 1024: fast CI", _tiny_gpt2),
        Preset("distilgpt2", "the shape of distilgpt2: 6 layers, n_embd 768, 12 heads, vocab 50257",
               _distilgpt2),
        Preset("tiny-llama-gqa", "Llama, 2 layers, hidden 128, 8 query heads over 2 KV heads", _tiny_llama_gqa),
        Preset("tiny-mistral-sliding", "Mistral, 2 layers, hidden 128, 8 query heads over 2 KV heads, "
               "sliding-window attention (window 16)", _tiny_mistral_sliding),
    )
}


def _preset_list() -> str:
    return ", ".join(PRESETS)


def load_config(name: str, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of a preset, a local model directory, a ``config.json`` path, or a cached hub id."""
    from transformers import AutoConfig

    if name in PRESETS:
        return PRESETS[name].make_config()
    path = Path(name)
    if path.is_file():
        try:
            return AutoConfig.from_pretrained(str(path.parent) if path.name == "config.json" else str(path),
                                              trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            if _needs_remote_code(exc):
                raise _remote_code_refused(name) from None
            raise UsageError(f"cannot read model config {name!r}: {_one_line(exc)}") from None
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code,
                                          local_files_only=_offline(name))
    except (OSError, ValueError, KeyError) as exc:
        raise _not_available(name, exc) from None


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's position embeddings allow, or None when it has no limit.

    A composite config (Gemma 3, Qwen3.5 with a vision tower) is read through its text config; a limit
    of -1, 0 or None (XLNet's relative positions) means no limit."""
    text = config.get_text_config(decoder=True)
    for source in (text, config):
        for attr in ("n_positions", "max_position_embeddings"):
            value = getattr(source, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value if value > 0 else None
    return None


def init_weights(model: nn.Module, seed: int = 0, gain: float = 2.0) -> None:
    """Fill every parameter from a generator seeded with ``seed``, independently of the global RNG.

    Parameters are visited by name in sorted order, so the same model class, config and seed give
    bit-identical weights. See the module docstring for why the scales differ from transformers'.
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    generator = torch.Generator().manual_seed(seed)
    fan_in: dict[str, int] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, nn.Linear):
            fan_in[f"{prefix}weight"] = module.in_features
        elif isinstance(module, Conv1D):  # GPT-2 stores its projections transposed: (in, out)
            fan_in[f"{prefix}weight"] = module.weight.shape[0]
    with torch.no_grad():
        # named_parameters() lists a tied weight once, under its first name.
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            values = torch.empty(param.shape, dtype=torch.float32)
            if name.endswith("bias"):
                values.zero_()
            elif param.dim() == 1:  # LayerNorm / RMSNorm scales
                values.fill_(1.0)
            elif name in fan_in:
                values.normal_(0.0, gain / math.sqrt(fan_in[name]), generator=generator)
            else:  # token and position embeddings
                values.normal_(0.0, 1.0, generator=generator)
            param.copy_(values.to(param.dtype))


def load_model(
    name: str,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    *,
    seed: int = 0,
    trust_remote_code: bool = False,
    device_map: DeviceMap | None = None,
) -> PreTrainedModel:
    """Return the model in eval mode, on ``device``, in ``dtype``.

    ``name`` is a preset (see ``PRESETS``), a local directory, or a Hugging Face hub id that is in
    the local cache (or downloadable when ``HF_HUB_OFFLINE`` is not set). Remote code is executed
    only with ``trust_remote_code=True``. Loading is never part of a timing.

    ``device_map`` (``"auto"`` or module name -> device, see ``kvperf.device_map``) spreads the model
    over several devices of ``device``'s type with accelerate, for a model that does not fit one GPU.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    torch_device = _parse_device(device)
    if device_map is not None:
        check_device_map(device_map, "the device map", str(torch_device))
        require_accelerate("a device map")
    if name in PRESETS:
        config = PRESETS[name].make_config()
        model = AutoModelForCausalLM.from_config(config)
        init_weights(model, seed=seed)
        model = model.to(dtype=torch_dtype)
        if device_map is not None:  # weights are made on the CPU, then dispatched
            model = dispatch(model, device_map, torch_device, "the device map")
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=_offline(name),
                **_placement(device_map, torch_device),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise _not_available(name, exc) from None
    if device_map is None:
        model = model.to(torch_device)
    model.eval()
    return model


def _placement(device_map: DeviceMap | None, device: torch.device) -> dict[str, object]:
    """``from_pretrained``'s placement arguments: ``auto`` on the CPU is limited to host memory (else
    accelerate would use any GPU the machine has)."""
    if device_map is None:
        return {}
    if device_map == AUTO and device.type == "cpu":
        from accelerate.utils import get_max_memory

        return {"device_map": AUTO, "max_memory": {"cpu": get_max_memory()["cpu"]}}
    return {"device_map": device_map if isinstance(device_map, str) else dict(device_map)}


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    if torch_device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    return torch_device


def _offline(name: str) -> bool:
    """Look only at local files for a local path, when the hub is switched off, or when it can't be
    reached (checked with one DNS lookup, so an offline machine fails at once instead of retrying)."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if Path(name).exists() or flag in ("1", "true", "yes", "on"):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return True
    return False


def _needs_remote_code(exc: BaseException) -> bool:
    """transformers refuses a model that ships its own code with a long ValueError naming the argument."""
    return isinstance(exc, ValueError) and "trust_remote_code" in str(exc)


def _remote_code_refused(name: str) -> ModelNotAvailableError:
    # kvperf's own words: transformers' text is too long for one line, and cut short it loses its hint.
    return ModelNotAvailableError(f"model {name!r} ships its own code, which kvperf runs only when allowed "
                                  "(trust_remote_code): read that code, then pass --trust-remote-code "
                                  "(--kvperf-trust-remote-code under pytest)")


def _not_available(name: str, exc: BaseException) -> ModelNotAvailableError:
    if _needs_remote_code(exc):
        return _remote_code_refused(name)
    if Path(name).exists():
        return ModelNotAvailableError(f"cannot load model from {name!r} ({_one_line(exc)}): "
                                      "point to a directory written by save_pretrained")
    if _looks_like_a_path(name):  # `hf download` would not help: a hub id is `org/name`
        return ModelNotAvailableError(f"model {name!r}: no such file or directory: check the path, or give a "
                                      f"preset ({_preset_list()}) or a hub id")
    return ModelNotAvailableError(
        f"model {name!r} is not a preset ({_preset_list()}), a local directory, or a hub id in the "
        f"local cache: use a preset, or download it first with `hf download {name}`"
    )


def _looks_like_a_path(name: str) -> bool:
    """``./model``, ``/models/x``, ``~/x``, ``a/b/c`` or ``config.json``: a local path, never a hub id."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith(".json")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
