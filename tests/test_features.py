"""What kvperf detects about the installed transformers release: the errors and skip reasons it gives."""

from __future__ import annotations

import importlib.util

import pytest
import transformers
from transformers import cache_utils

from kvperf.features import (
    missing_quantized_backend,
    missing_state_layers,
    quanto_residual_cycle,
    static_values_have_their_own_width,
)


def test_a_backend_this_release_lacks_names_the_release_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cache_utils, "Fp8QuantizedLayer", raising=False)
    assert missing_quantized_backend("fp8") == (
        "the fp8 backend of transformers' QuantizedCache needs transformers 5.21 or newer "
        f"(this is {transformers.__version__}): pip install -U transformers")


def test_quanto_without_its_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "optimum.quanto" else real(name, *args))
    assert missing_quantized_backend("quanto") == ("the quanto backend needs optimum-quanto, which is not installed: "
                                                   "pip install 'kvperf[quantized]'")


def test_the_residual_cycle_is_the_residual_length_from_two_up() -> None:
    """Below two it is probed (1 or 2 by release); ``test_kv_size.py`` checks it against real caches."""
    assert [quanto_residual_cycle(r) for r in (2, 3, 128)] == [2, 3, 128]
    assert quanto_residual_cycle(0) == quanto_residual_cycle(1) in (1, 2)


def test_state_layers_are_detected_as_generate_uses_them() -> None:
    """``missing_state_layers`` is None exactly where Qwen3-Next's ``generate`` returns a transformers cache
    of layers (LinearAttentionLayer), not a cache class of the model's own; otherwise it names 5.5."""
    import torch

    from kvperf.kv.families import tiny_model
    from kvperf.kv.kv_size import returned_cache
    from kvperf.measure.harness import generate_kwargs
    from kvperf.measure.prompts import make_prompts
    from kvperf.spec import GenerationSpec

    model = tiny_model("qwen3_next")
    spec = GenerationSpec(batch_size=1, prompt_len=4, new_tokens=2)
    ids, mask = make_prompts(model, spec)
    with torch.no_grad():
        cache = returned_cache(model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs(model, spec)))
    has_layers = any(type(layer).__name__ == "LinearAttentionLayer" for layer in getattr(cache, "layers", ()))
    why = missing_state_layers()
    assert (why is None) == has_layers, (why, type(cache).__name__)
    if why is not None:
        assert f"transformers {transformers.__version__} keeps" in why and "from transformers 5.5" in why


def test_static_values_width_is_detected_as_the_static_layer_allocates() -> None:
    """A static layer handed keys 6 wide and values 4 wide: where values have their own width it stores
    them 4 wide; elsewhere (4.57) it allocates them 6 wide and the write fails."""
    import torch

    layer = cache_utils.StaticLayer(max_cache_len=3)
    keys, values = torch.zeros(1, 1, 2, 6), torch.zeros(1, 1, 2, 4)
    position = {"cache_position": torch.arange(2)}
    if static_values_have_their_own_width():
        layer.update(keys, values, position)
        assert layer.values.shape[-1] == 4 and layer.keys.shape[-1] == 6
    else:
        with pytest.raises(RuntimeError):
            layer.update(keys, values, position)
        assert layer.values.shape[-1] == 6
