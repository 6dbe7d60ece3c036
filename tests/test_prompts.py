from __future__ import annotations

import pytest
import torch

from kvperf import GenerationSpec, UsageError, load_model, make_prompts


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gpt2")


def test_prompts_have_the_exact_length_and_are_deterministic(model):
    spec = GenerationSpec(batch_size=3, prompt_len=17, new_tokens=4, seed=5)
    ids, mask = make_prompts(model, spec)
    assert ids.shape == mask.shape == (3, 17)
    assert bool(mask.all())
    again, _ = make_prompts(model, spec)
    assert torch.equal(ids, again)
    other, _ = make_prompts(model, GenerationSpec(batch_size=3, prompt_len=17, new_tokens=4, seed=6))
    assert not torch.equal(ids, other)


def test_prompts_contain_no_special_tokens(model):
    ids, _ = make_prompts(model, GenerationSpec(batch_size=4, prompt_len=256, new_tokens=2))
    assert model.config.eos_token_id not in ids.unique().tolist()


def test_left_padding_masks_the_start_of_each_row(model):
    spec = GenerationSpec(batch_size=3, prompt_len=8, new_tokens=2)
    _, mask = make_prompts(model, spec, left_pad=[0, 3, 7])
    assert mask.sum(dim=1).tolist() == [8, 5, 1]
    assert mask[1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]


@pytest.mark.parametrize(
    ("spec", "left_pad", "message"),
    [
        (GenerationSpec(prompt_len=500, new_tokens=20), None,
         "prompt_len 500 + new_tokens 20 exceeds the model's 512 positions: use a shorter prompt or fewer new tokens"),
        (GenerationSpec(batch_size=2, prompt_len=8, new_tokens=2), [1],
         "left_pad has 1 entries for a batch of 2: give one pad count per row"),
        (GenerationSpec(batch_size=1, prompt_len=8, new_tokens=2), [8],
         "left_pad[0] = 8 must be in [0, 7] so that every row keeps a real token"),
    ],
)
def test_bad_prompt_requests_are_usage_errors(model, spec, left_pad, message):
    with pytest.raises(UsageError) as info:
        make_prompts(model, spec, left_pad=left_pad)
    assert str(info.value) == message


def test_composite_config_prompts_come_from_its_text_config():
    """Gemma3Config has no vocab_size of its own; image placeholder ids are never drawn."""
    from kvperf.kv.families import tiny_model
    from kvperf.measure.prompts import pad_token_id

    model = tiny_model("gemma3")
    assert "vocab_size" not in model.config.to_dict()
    ids, _ = make_prompts(model, GenerationSpec(batch_size=4, prompt_len=64, new_tokens=2))
    text = model.config.get_text_config()
    assert int(ids.max()) < text.vocab_size
    assert model.config.image_token_id not in ids and model.config.boi_token_id not in ids
    assert pad_token_id(model.config) == text.pad_token_id


def test_pad_token_outside_the_vocabulary_is_not_used():
    """A pad or EOS id past the vocabulary cannot be embedded: the next candidate (or 0) is."""
    from transformers import LlamaConfig

    from kvperf.measure.prompts import pad_token_id

    assert pad_token_id(LlamaConfig(vocab_size=100, pad_token_id=None, eos_token_id=128001)) == 0
    assert pad_token_id(LlamaConfig(vocab_size=100, pad_token_id=None, eos_token_id=[7, 128001])) == 7
