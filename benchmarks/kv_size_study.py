"""The KV-size formula against the bytes of real caches, for the three presets at full-tier sizes.

Not a pytest file: run it by hand (about 20 minutes on 2 CPU cores, most of it distilgpt2):

    python benchmarks/kv_size_study.py > kv_size_study.md

It prints a Markdown table, one row per preset, batch (batch 4 rows are left-padded by 0, 17, 0, 64
tokens), prompt length and cache (dynamic, static, quanto 4-bit, fp8), 128 new tokens, float32, with
the formula's total bytes, the measured ones, and whether every layer agrees to the byte. quanto
needs ``pip install 'kvperf[quantized]'``. CI runs a cheap version in tests/test_kv_size.py.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from kvperf.kv.kv_size import Quantization, estimate_kv_cache, measure_layer_bytes, returned_cache
from kvperf.measure.prompts import make_prompts
from kvperf.models import load_model
from kvperf.spec import GenerationSpec

SIZES = {"distilgpt2": (128, 512), "tiny-llama-gqa": (128, 512), "tiny-gpt2": (128, 256)}
NEW = 128


def caches(group: int) -> list[tuple[str, dict[str, Any], Quantization | None]]:
    quanto = {"backend": "quanto", "nbits": 4, "q_group_size": group, "residual_length": 128}
    return [
        ("dynamic", {}, None),
        ("static", {"cache_implementation": "static"}, None),
        ("quantized", {"cache_implementation": "quantized", "cache_config": quanto},
         Quantization("quanto", 4, group, 128)),
        ("quantized", {"cache_implementation": "quantized", "cache_config": {"backend": "fp8"}},
         Quantization("fp8")),
    ]


def main() -> None:
    print("| preset | cache | batch | prompt | new | seq_len | formula bytes | measured bytes | equal |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for preset, prompts in SIZES.items():
        model = load_model(preset)
        config = model.config
        heads = config.num_attention_heads
        kv_width = (getattr(config, "num_key_value_heads", None) or heads) * (
            getattr(config, "head_dim", None) or config.hidden_size // heads)
        group = 64 if kv_width % 64 == 0 else 32  # quanto's group must divide the cache's rows
        for batch in (1, 4):
            for prompt in prompts:
                spec = GenerationSpec(batch_size=batch, prompt_len=prompt, new_tokens=NEW)
                ids, mask = make_prompts(model, spec, left_pad=None if batch == 1 else [0, 17, 0, 64])
                for cache, extra, quant in caches(group):
                    if cache == "static":
                        model._previous_max_cache_length = -1  # each size on its own, as a fresh model
                    start = time.time()
                    with torch.no_grad():
                        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                                             min_new_tokens=NEW, do_sample=False, return_dict_in_generate=True,
                                             pad_token_id=config.eos_token_id, **extra)
                    measured = measure_layer_bytes(returned_cache(out))
                    est = estimate_kv_cache(config, batch, prompt + NEW - 1, "float32", cache, prompt_len=prompt,
                                            quantization=quant)
                    label = cache if quant is None else f"quantized {quant.backend}"
                    print(f"| {preset} | {label} | {batch} | {prompt} | {NEW} | {prompt + NEW - 1} | "
                          f"{est.total_bytes:,} | {sum(measured):,} | {est.layer_bytes == measured} |", flush=True)
                    print(f"  {preset} {label} b{batch} p{prompt}: {time.time() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
