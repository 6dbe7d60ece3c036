"""The output fingerprint: the hash of the generated token ids, and the JSON a run records it in."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch

from kvperf.gate.fingerprint import output_sha256
from tests.test_plugin import BENCH_FILE, TINY


def test_the_hash_is_sha256_of_the_shape_and_the_little_endian_int64_ids() -> None:
    sequences = torch.tensor([[7, 7, 1, 2], [7, 7, 3, -4]])  # a prompt of 2, then 2 generated per row
    expected = hashlib.sha256(b"(2, 2)" + struct.pack("<4q", 1, 2, 3, -4)).hexdigest()
    assert output_sha256(sequences, 2) == expected
    assert output_sha256(sequences.to(torch.int32), 2) == expected
    assert output_sha256(torch.tensor([[7, 7, 1, 2, 3, -4]]), 2) != expected  # the same ids in another shape
    assert output_sha256(sequences, 1) != expected  # a prompt token is not output


def test_every_case_records_its_output_hash_and_that_its_rounds_agreed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*TINY, "-k", "matrix", "--kvperf-dtypes", "float32", "--benchmark-json=out.json")
    result.assert_outcomes(passed=6)
    infos = {b["name"]: b["extra_info"] for b in json.loads((pytester.path / "out.json").read_text())["benchmarks"]}
    assert all(len(i["output_sha256"]) == 64 and i["output_sha256_distinct"] == 1 for i in infos.values())
    by_batch = {bs: {i["output_sha256"] for i in infos.values() if i["batch_size"] == bs} for bs in (1, 2)}
    # The cache mode never changes greedy float32 tokens; the batch (other prompts) does.
    assert len(by_batch[1]) == len(by_batch[2]) == 1 and by_batch[1] != by_batch[2]
