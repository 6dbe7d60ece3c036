"""Small random configs of six attention families, drawn by the hypothesis properties.

One frozen description (``SmallConfig``) covers six families of plain attention (every causal-LM
family of transformers has a tiny config in ``kvperf.kv.families``):

* ``gpt2``: GPT-2 style names (``n_layer``, ``n_head``, ``n_embd``), one KV head per query head.
* ``llama``: grouped-query attention with an explicit ``head_dim`` that differs from
  ``hidden_size / num_attention_heads``.
* ``mistral``: grouped-query attention with a sliding window on every layer.
* ``qwen2``: grouped-query attention, the first ``max_window_layers`` layers full, the rest sliding.
* ``gpt_bigcode``: multi-query attention (``multi_query=True``: one KV head).
* ``falcon``: multi-query with one KV head, or the "new decoder architecture" with several KV
  groups (whose cache transformers stores broadcast to every query head).

Models are built with ``kvperf.models.init_weights`` so that attention is far from uniform: a cache
that returns wrong past keys or values then changes the greedy tokens (see that module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from transformers import (
    AutoModelForCausalLM,
    FalconConfig,
    GPT2Config,
    GPTBigCodeConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

from kvperf.errors import UsageError
from kvperf.models import init_weights
from kvperf.spec import parse_dtype

__all__ = ["FAMILIES", "SLIDING_FAMILIES", "SmallConfig", "build_model", "small_configs"]

#: Families with a ``SmallConfig``; the ones in ``SLIDING_FAMILIES`` need a ``sliding_window``.
FAMILIES: tuple[str, ...] = ("gpt2", "llama", "mistral", "qwen2", "gpt_bigcode", "falcon")
SLIDING_FAMILIES: tuple[str, ...] = ("mistral", "qwen2")
#: Token ids of the small configs: 0 is BOS, 1 is EOS and padding; prompts never draw them.
BOS_ID, EOS_ID = 0, 1


@dataclass(frozen=True)
class SmallConfig:
    """A small model of one family. ``hidden_size`` defaults to ``num_heads * head_dim``; only
    ``llama`` and ``qwen2`` can take another value (they carry an explicit ``head_dim``)."""

    family: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    hidden_size: int | None = None
    sliding_window: int | None = None
    max_positions: int = 256

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UsageError(f"unknown family {self.family!r}: use one of {', '.join(FAMILIES)}")
        if self.num_heads % self.num_kv_heads:
            raise UsageError(f"num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}")
        if self.family == "gpt2" and self.num_kv_heads != self.num_heads:
            raise UsageError("gpt2 has one KV head per query head: set num_kv_heads = num_heads")
        if self.family == "gpt_bigcode" and self.num_kv_heads not in (1, self.num_heads):
            raise UsageError("gpt_bigcode has 1 KV head (multi_query) or num_heads: set num_kv_heads to one")
        if (self.sliding_window is not None) != (self.family in SLIDING_FAMILIES):
            raise UsageError(f"sliding_window is required for {', '.join(SLIDING_FAMILIES)} and "
                             f"not allowed for {self.family}")
        if self.hidden_size is not None and self.family not in ("llama", "qwen2"):
            raise UsageError(f"{self.family} derives head_dim from hidden_size: leave hidden_size unset")

    @property
    def hidden(self) -> int:
        return self.hidden_size if self.hidden_size is not None else self.num_heads * self.head_dim

    def to_config(self) -> PretrainedConfig:
        """The transformers config this describes (BOS 0, EOS and padding 1)."""
        common: dict[str, Any] = {"vocab_size": self.vocab_size, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
                  "pad_token_id": EOS_ID}
        hidden = self.hidden
        if self.family == "gpt2":
            return GPT2Config(n_layer=self.num_layers, n_head=self.num_heads, n_embd=hidden,
                              n_positions=self.max_positions, **common)
        if self.family == "gpt_bigcode":
            return GPTBigCodeConfig(n_layer=self.num_layers, n_head=self.num_heads, n_embd=hidden,
                                    n_positions=self.max_positions, multi_query=self.num_kv_heads == 1,
                                    **common)
        if self.family == "falcon":
            # One KV head is classic multi-query; several KV groups need the new decoder architecture.
            groups: dict[str, Any] = {"multi_query": True} if self.num_kv_heads == 1 else {
                "new_decoder_architecture": True, "num_kv_heads": self.num_kv_heads}
            return FalconConfig(num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                                hidden_size=hidden, max_position_embeddings=self.max_positions,
                                **groups, **common)
        llama_like: dict[str, Any] = {"num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
                      "num_key_value_heads": self.num_kv_heads, "hidden_size": hidden,
                      "intermediate_size": 2 * hidden, "max_position_embeddings": self.max_positions,
                      "tie_word_embeddings": False, **common}
        if self.family == "llama":
            return LlamaConfig(head_dim=self.head_dim, **llama_like)
        if self.family == "mistral":
            return MistralConfig(sliding_window=self.sliding_window, **llama_like)
        # qwen2: the first half of the layers (at least one) full attention, the rest sliding.
        config = Qwen2Config(use_sliding_window=True, sliding_window=self.sliding_window,
                             max_window_layers=max(1, self.num_layers // 2), **llama_like)
        config.head_dim = self.head_dim
        return config


def build_model(small: SmallConfig, dtype: str | torch.dtype = "float32", seed: int = 0) -> PreTrainedModel:
    """The model of ``small`` with ``init_weights(seed)``, in ``dtype``, in eval mode, on CPU."""
    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_config(small.to_config())
    init_weights(model, seed=seed)
    model = model.to(dtype=torch_dtype)
    model.eval()
    return model


@st.composite
def small_configs(
    draw: st.DrawFn,
    families: tuple[str, ...] = FAMILIES,
    min_window: int = 1,
    max_layers: int = 2,
) -> SmallConfig:
    """A hypothesis strategy of ``SmallConfig``: 1 to ``max_layers`` layers, 1, 2 or 4 heads, KV heads
    dividing them, head_dim 4 to 16, hidden size at most 64, vocabulary 32 to 256, windows of
    ``min_window`` to 12 tokens (so that prompts of up to a few dozen tokens overflow them)."""
    family = draw(st.sampled_from(families))
    heads = draw(st.sampled_from([1, 2, 4]))
    if family == "gpt2":
        kv_heads = heads
    elif family == "gpt_bigcode":
        kv_heads = draw(st.sampled_from(sorted({1, heads})))
    else:
        kv_heads = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    head_dim = draw(st.sampled_from([4, 8, 16]))
    return SmallConfig(
        family=family,
        num_layers=draw(st.integers(1, max_layers)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=draw(st.sampled_from([32, 64, 256])),
        hidden_size=draw(st.sampled_from([None, 16, 48])) if family in ("llama", "qwen2") else None,
        sliding_window=draw(st.integers(min_window, 12)) if family in SLIDING_FAMILIES else None,
    )
