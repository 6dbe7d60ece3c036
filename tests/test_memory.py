"""The CPU measure of peak memory: only storages allocated during the call, released when freed.

The allocator's own figure (``torch.profiler`` with ``profile_memory``) is the reference here and in
``tests/test_trust.py``. The old measure, which counted views of existing weights as new, fails
``test_views_of_existing_weights_are_not_counted`` and ``test_a_tied_lm_head_is_not_counted``.
"""

from __future__ import annotations

import pytest
import torch

from kvperf.measure.memory import LiveTensorBytes, allocator_peak_bytes, model_bytes


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


class _Linears(torch.nn.Module):
    """Plain ``nn.Linear`` layers: ``F.linear`` runs ``aten.t(weight)``, a view of a weight that
    existed before the call."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(8, 16)
        self.second = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class _TiedLM(torch.nn.Module):
    """An embedding and an LM head that share one weight, as GPT-2's do."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(32, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(self.embed(ids), self.embed.weight)


def test_views_of_existing_weights_are_not_counted():
    """Only storages the call allocates count: the old measure counted ``aten.t(weight)`` as new
    memory, never released it, and so added every weight a second time (552 bytes here)."""
    model, x = _Linears(), torch.ones(2, 8)
    with torch.no_grad(), LiveTensorBytes() as counter:
        hidden = model.first(x)  # 2 x 16 floats
        out = model.second(hidden)  # 2 x 4 floats, while the hidden state is alive
    assert counter.peak_bytes == 2 * 16 * 4 + 2 * 4 * 4
    del hidden, out
    assert counter.live_bytes == 0


def test_a_tied_lm_head_is_not_counted():
    model, ids = _TiedLM(), torch.tensor([[1, 2, 3]])
    with torch.no_grad(), LiveTensorBytes() as counter:
        logits = model(ids)
    # the embedded prompt (3 x 8 floats) and the logits (3 x 32 floats); the head is the embedding
    assert counter.peak_bytes == 3 * 8 * 4 + 3 * 32 * 4
    assert logits.shape == (1, 3, 32)


def test_constants_built_outside_the_dispatcher_are_counted():
    """``torch.tensor(...)`` builds its storage before the dispatcher sees it (``aten.lift_fresh``)."""
    with LiveTensorBytes() as counter:
        ids = torch.tensor([1, 2, 3, 4], dtype=torch.int64)
    assert counter.peak_bytes == 32
    del ids


@pytest.mark.parametrize("module", [_Linears(), _TiedLM()], ids=["linear", "tied"])
def test_peak_equals_the_allocators_figure(module):
    x = torch.ones(2, 8) if isinstance(module, _Linears) else torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        _, expected = allocator_peak_bytes(lambda: module(x))
        with LiveTensorBytes() as counter:
            module(x)
    assert counter.peak_bytes == expected


def test_peak_parts_add_up_and_the_cache_is_attributed():
    from kvperf import GenerationSpec, load_model
    from kvperf.measure.harness import measure_peak_memory
    from kvperf.measure.prompts import make_prompts

    model = load_model("tiny-gpt2")
    for cache in ("on", "off", "static"):
        spec = GenerationSpec(cache=cache, batch_size=2, prompt_len=16, new_tokens=8)
        peak = measure_peak_memory(model, spec, *make_prompts(model, spec))
        assert peak.total_bytes == peak.weights_bytes + peak.peak_above_weights_bytes
        assert peak.weights_bytes == model_bytes(model)
        assert peak.peak_kv_cache_bytes + peak.peak_activations_bytes == peak.peak_above_weights_bytes
        # per position of one row: 2 layers x K and V x 64 dims x 4 bytes
        per_position = 2 * 2 * 64 * 4
        # the static cache is allocated whole before prefill (23 positions); the dynamic cache's
        # peak is in prefill, with the prompt's 16 positions cached; no cache, nothing attributed
        expected = {"on": 2 * 16 * per_position, "off": 0, "static": 2 * 23 * per_position}[cache]
        assert peak.peak_kv_cache_bytes == expected, cache
