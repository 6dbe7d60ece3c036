from __future__ import annotations

import pytest
import torch

from kvperf import GenerationSpec, UsageError
from kvperf.spec import dtype_short_name, parse_dtype


def test_case_id_is_readable():
    spec = GenerationSpec(cache="on", batch_size=4, prompt_len=128, new_tokens=32)
    assert spec.case_id(torch.bfloat16) == "cache=on-bs=4-prompt=128-new=32-bf16"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"prompt_len": -1}, "prompt_len must be a positive integer, got -1"),
        ({"new_tokens": 1}, "new_tokens must be at least 2 to time decode steps, got 1"),
        ({"cache": "maybe"}, "unknown cache mode 'maybe': use one of on, off, static, compiled, quanto, hqq, fp8, "
                                 "offloaded, offloaded_static"),
        ({"batch_size": True}, "batch_size must be a positive integer, got True"),
    ],
)
def test_bad_spec_is_a_usage_error(kwargs, message):
    with pytest.raises(UsageError) as info:
        GenerationSpec(**kwargs)
    assert str(info.value) == message


def test_dtype_names_and_aliases():
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("Float16") is torch.float16
    assert dtype_short_name(torch.float32) == "fp32"
    with pytest.raises(UsageError, match=r"unknown dtype 'int8': use one of float32, bfloat16, float16"):
        parse_dtype("int8")
