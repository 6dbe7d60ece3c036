from __future__ import annotations

import math

import pytest
import torch

from kvperf import PRESETS, ModelNotAvailableError, load_model
from kvperf.models import load_config


def test_distilgpt2_preset_has_the_real_shape():
    # Built on the meta device: the shapes without allocating 330 MB.
    from transformers import AutoModelForCausalLM

    config = load_config("distilgpt2")
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size, config.n_positions) == (
        6, 768, 12, 50257, 1024)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # transformers 5.0 leaves the LM head of a model built on the meta device untied
    assert sum(p.numel() for p in model.parameters()) == 81_912_576  # ~81.9M, LM head tied


def test_tiny_llama_preset_uses_grouped_query_attention():
    config = load_config("tiny-llama-gqa")
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.num_attention_heads % config.num_key_value_heads == 0


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama-gqa"])
def test_same_preset_and_seed_give_bit_identical_weights(name):
    a, b = load_model(name), load_model(name)
    c = load_model(name, seed=1)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_load_model_places_dtype_device_and_eval_mode():
    model = load_model("tiny-gpt2", dtype="bfloat16", device="cpu")
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def _attention_entropy(model) -> float:
    """Mean entropy of the last position's attention over 64 positions, 1.0 being uniform."""
    model.set_attn_implementation("eager")  # SDPA does not return attention weights
    ids = torch.randint(2, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        weights = model(ids, output_attentions=True).attentions[-1][0, :, -1, :]
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1) / math.log(64)
    return float(entropy.mean().detach())


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama-gqa"])
def test_attention_is_not_near_uniform(name):
    """transformers' default init (std 0.02) gives near-uniform attention, which hides a broken cache."""
    from transformers import AutoModelForCausalLM

    assert _attention_entropy(load_model(name)) < 0.6
    default = AutoModelForCausalLM.from_config(load_config(name)).eval()
    assert _attention_entropy(default) > 0.99


def test_from_pretrained_round_trip(tmp_path):
    model = load_model("tiny-llama-gqa")
    model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="float32")
    assert type(loaded) is type(model)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_unknown_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("no-such-org/no-such-model")
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in PRESETS)


def test_bad_directory_names_the_directory(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelNotAvailableError, match="cannot load model from"):
        load_model(str(tmp_path))


def test_remote_code_stays_off_by_default(tmp_path):
    model = load_model("tiny-gpt2")
    model.config.auto_map = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    model.save_pretrained(tmp_path)
    marker = tmp_path / "remote-code-ran"
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    loaded = load_model(str(tmp_path))
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    assert not marker.exists()


@pytest.mark.parametrize(("value", "expected"), [(-1, None), (0, None), (512, 512)])
def test_position_limit_of_minus_one_is_no_limit(value, expected):
    """XLNet's max_position_embeddings of -1 (relative positions) means no limit."""
    from transformers import LlamaConfig

    from kvperf.models import max_positions

    config = LlamaConfig(num_hidden_layers=1)
    config.max_position_embeddings = value
    assert max_positions(config) == expected


def test_position_limit_of_a_composite_config_is_its_text_config_s():
    from transformers import Gemma3Config

    from kvperf.models import max_positions

    config = Gemma3Config(text_config={"max_position_embeddings": 333})
    assert max_positions(config) == 333
