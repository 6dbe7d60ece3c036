"""Deterministic prompts of an exact token length.

Prompts are token ids drawn from a generator seeded with ``spec.seed``, so the same spec gives the
same batch on every machine and no tokenizer is needed (presets have none). Special tokens (BOS,
EOS, padding) are never drawn, so no prompt ends a sequence early or looks padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PretrainedConfig, PreTrainedModel

from kvperf.errors import UsageError
from kvperf.measure.devices import input_device
from kvperf.models import max_positions
from kvperf.spec import GenerationSpec

__all__ = ["make_prompts", "pad_token_id"]


def _text_first(config: PretrainedConfig) -> tuple[PretrainedConfig, ...]:
    """The text config of a composite config (Gemma 3, Qwen3.5 with a vision tower), then the config."""
    text = config.get_text_config(decoder=True)
    return (text, config) if text is not config else (config,)


def pad_token_id(config: PretrainedConfig) -> int:
    """The id used for left padding: the (text) config's pad token, else its EOS token, else 0. An id
    outside the vocabulary (a tiny config that kept its family's EOS id) cannot be embedded: skipped."""
    vocab = next((v for v in (getattr(c, "vocab_size", None) for c in _text_first(config))
                  if isinstance(v, int) and v > 0), None)
    for source in _text_first(config):
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(source, attr, None)
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int) and (vocab is None or 0 <= value < vocab):
                return value
    return 0


def _special_ids(config: PretrainedConfig) -> set[int]:
    """Every id a config names as a special token: BOS, EOS, padding, and the image, video and audio
    placeholders of multimodal configs (``*_token_id``, ``*_token_index``), which make the model look
    for inputs that a text prompt does not carry."""
    ids: set[int] = set()
    for source in _text_first(config):
        for attr, value in source.to_dict().items():
            if not attr.endswith(("token_id", "token_ids", "token_index")):
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
    return ids


def _vocab_size(config: PretrainedConfig) -> int:
    for source in _text_first(config):
        value = getattr(source, "vocab_size", None)
        if isinstance(value, int) and value > 0:
            return value
    raise UsageError(f"the config of model_type {getattr(config, 'model_type', '?')!r} has no vocab_size, "
                     "in itself or in its text config: kvperf cannot draw prompt tokens; set vocab_size")


def make_prompts(
    model: PreTrainedModel,
    spec: GenerationSpec,
    *,
    left_pad: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(input_ids, attention_mask)``, both ``(batch_size, prompt_len)`` on the model's device.

    ``left_pad[b]`` pad tokens (attention mask 0) replace the start of row ``b``, as a tokenizer with
    ``padding_side="left"`` would produce for a shorter prompt. Each row keeps at least one real token.
    """
    config = model.config
    limit = max_positions(config)
    if limit is not None and spec.prompt_len + spec.new_tokens > limit:
        raise UsageError(
            f"prompt_len {spec.prompt_len} + new_tokens {spec.new_tokens} exceeds the model's "
            f"{limit} positions: use a shorter prompt or fewer new tokens"
        )
    vocab_size = _vocab_size(config)
    special = _special_ids(config)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special])
    generator = torch.Generator().manual_seed(spec.seed)
    picks = torch.randint(0, len(allowed), (spec.batch_size, spec.prompt_len), generator=generator)
    input_ids = allowed[picks]
    attention_mask = torch.ones_like(input_ids)
    if left_pad is not None:
        if len(left_pad) != spec.batch_size:
            raise UsageError(f"left_pad has {len(left_pad)} entries for a batch of {spec.batch_size}: "
                             "give one pad count per row")
        for row, pads in enumerate(left_pad):
            if not 0 <= pads < spec.prompt_len:
                raise UsageError(f"left_pad[{row}] = {pads} must be in [0, {spec.prompt_len - 1}] "
                                 "so that every row keeps a real token")
            input_ids[row, :pads] = pad_token_id(config)
            attention_mask[row, :pads] = 0
    device = input_device(model)  # the embeddings' device: a device map may put them elsewhere than cuda:0
    return input_ids.to(device), attention_mask.to(device)
