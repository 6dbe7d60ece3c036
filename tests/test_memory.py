from __future__ import annotations

import torch

from kvperf.memory import LiveTensorBytes, model_bytes


def test_live_bytes_follow_allocation_and_release():
    with LiveTensorBytes() as counter:
        a = torch.ones(1000, dtype=torch.float32)  # 4000 bytes
        b = a * 2  # another 4000
        view = b[:10]  # a view allocates nothing
        assert counter.live_bytes == 8000
        del a
        assert counter.live_bytes == 4000
        del b, view
        assert counter.live_bytes == 0
    assert counter.peak_bytes == 8000


def test_model_bytes_counts_tied_weights_once():
    from kvperf import load_model

    model = load_model("tiny-gpt2")
    untied = sum(p.numel() * 4 for p in model.parameters())  # parameters() lists a tied weight once
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert model_bytes(model) == untied + buffers
