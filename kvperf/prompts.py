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
from kvperf.models import max_positions
from kvperf.spec import GenerationSpec

__all__ = ["make_prompts", "pad_token_id"]


def pad_token_id(config: PretrainedConfig) -> int:
    """The id used for left padding: the config's pad token, else its EOS token, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return 0


def _special_ids(config: PretrainedConfig) -> set[int]:
    ids: set[int] = set()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


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
    vocab_size = int(config.vocab_size)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in _special_ids(config)])
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
    device = next(model.parameters()).device
    return input_ids.to(device), attention_mask.to(device)
