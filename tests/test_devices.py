"""The multi-GPU paths on a machine without a GPU: a tiny-gpt2 on the CPU whose ``hf_device_map`` names
two GPUs, and ``torch.cuda``'s synchronize and allocator statistics replaced by fakes that record what
the harness asks of them."""

from __future__ import annotations

import time
import types

import pytest
import torch
from transformers import DynamicCache

from kvperf import GenerationSpec, load_model
from kvperf.kv.kv_size import measure_cache_bytes, measure_cache_bytes_by_device
from kvperf.measure import harness
from kvperf.measure.devices import device_name, input_device, model_devices
from kvperf.measure.memory import measure_peak, model_bytes, model_bytes_by_device
from kvperf.measure.prompts import make_prompts

#: Blocks 0 on GPU 0 and 1 on GPU 1: what accelerate writes for a model spread over two GPUs.
TWO_GPUS = {"transformer.wte": 0, "transformer.wpe": 0, "transformer.h.0": 0, "transformer.h.1": 1,
            "transformer.ln_f": 1, "lm_head": 1}
CUDA0, CUDA1 = torch.device("cuda:0"), torch.device("cuda:1")


@pytest.fixture
def two_gpu_model():
    model = load_model("tiny-gpt2")
    model.hf_device_map = dict(TWO_GPUS)
    return model


class FakeCuda:
    """``torch.cuda``'s synchronize and allocator statistics for two GPUs, logging every call."""

    def __init__(self, allocated: dict[str, int], peak: dict[str, int]) -> None:
        self.log: list[str] = []
        self.allocated, self.peak = allocated, peak

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: self.log.append(f"sync {d}"))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: self.allocated[str(d)])
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: self.peak[str(d)])
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: self.log.append(f"reset {d}"))


def test_the_devices_come_from_the_map_and_the_weights():
    model = load_model("tiny-gpt2")
    assert model_devices(model) == (torch.device("cpu"),)
    model.hf_device_map = {**TWO_GPUS, "transformer.h.1": "cuda:1", "transformer.ln_f": "disk"}
    assert model_devices(model) == (torch.device("cpu"), CUDA0, CUDA1)
    assert device_name(3) == "cuda:3" and device_name(torch.device("cpu")) == "cpu"
    assert input_device(model) == torch.device("cpu")  # the embeddings' device


def test_every_gpu_of_the_map_is_synchronised_before_every_clock_read(two_gpu_model, monkeypatch):
    fake = FakeCuda({}, {})
    fake.install(monkeypatch)
    # The harness's clocks, logged into the same list: each read must follow a sync of both GPUs.
    clock = types.SimpleNamespace(perf_counter=lambda: fake.log.append("clock") or time.perf_counter(),
                                  thread_time=time.thread_time)
    monkeypatch.setattr(harness, "time", clock)
    spec = GenerationSpec(prompt_len=8, new_tokens=4)
    input_ids, attention_mask = make_prompts(two_gpu_model, spec)
    harness.time_generation(two_gpu_model, spec, input_ids, attention_mask)
    clocks = [i for i, entry in enumerate(fake.log) if entry == "clock"]
    assert len(clocks) == spec.new_tokens + 2  # start, every token, end
    for i in clocks:
        assert fake.log[i - 2:i] == ["sync cuda:0", "sync cuda:1"]
    assert fake.log.count("sync cuda:0") == fake.log.count("sync cuda:1") == len(clocks)


def test_peak_memory_is_taken_on_every_device_and_summed(two_gpu_model, monkeypatch):
    fake = FakeCuda(allocated={"cuda:0": 1000, "cuda:1": 500}, peak={"cuda:0": 4000, "cuda:1": 2500})
    fake.install(monkeypatch)
    spec = GenerationSpec(prompt_len=8, new_tokens=3)
    input_ids, attention_mask = make_prompts(two_gpu_model, spec)
    _, peak = measure_peak(lambda: harness._generate(two_gpu_model, spec, input_ids, attention_mask), two_gpu_model)
    assert {"reset cuda:0", "reset cuda:1"} <= set(fake.log)
    above = dict(peak.peak_above_weights_bytes_by_device)
    assert above["cuda:0"] == 3000 and above["cuda:1"] == 2000 and above["cpu"] > 0  # the real CPU count
    assert peak.peak_above_weights_bytes == sum(above.values())
    assert peak.weights_bytes_by_device == {"cpu": model_bytes(two_gpu_model), "cuda:0": 0, "cuda:1": 0}
    assert peak.total_bytes == sum(peak.total_bytes_by_device.values())
    assert peak.total_bytes_by_device["cuda:1"] == 2000
    # The allocator says nothing of what was alive at its peak: the parts are null, with the reason.
    assert peak.peak_kv_cache_bytes is None and peak.peak_activations_bytes is None
    assert peak.method == "cuda-allocator+cpu-storages"
    assert peak.note == "the CUDA allocator does not record which tensors were alive at its peak"


def test_the_result_carries_the_per_device_figures(two_gpu_model, monkeypatch):
    FakeCuda(allocated={"cuda:0": 0, "cuda:1": 0}, peak={"cuda:0": 700, "cuda:1": 300}).install(monkeypatch)
    result = harness.run_generation(two_gpu_model, GenerationSpec(prompt_len=8, new_tokens=3), warmup_runs=0)
    assert result.peak_memory_bytes == sum(result.peak_memory_bytes_by_device.values())
    assert {k: result.peak_memory_bytes_by_device[k] for k in ("cuda:0", "cuda:1")} == {"cuda:0": 700, "cuda:1": 300}
    assert result.kv_cache_bytes_by_device == {"cpu": result.kv_cache_bytes}  # the cache's tensors are on the CPU


def test_offloaded_weights_count_on_the_cpu_and_disk_ones_are_named():
    """A weight that accelerate offloaded is on ``meta``: its map entry says where it is held."""
    model = load_model("tiny-gpt2")
    whole = model_bytes(model)
    h0 = sum(p.numel() * p.element_size() for p in model.transformer.h[0].parameters())
    h1 = sum(p.numel() * p.element_size() for p in model.transformer.h[1].parameters())
    for block in (model.transformer.h[0], model.transformer.h[1]):
        for name, param in list(block.named_parameters()):
            owner = block.get_submodule(name.rpartition(".")[0])
            setattr(owner, name.rpartition(".")[2], torch.nn.Parameter(param.to("meta")))
    model.hf_device_map = {"": 0, "transformer.h.0": "cpu", "transformer.h.1": "disk"}
    by_device, uncounted = model_bytes_by_device(model)
    assert by_device == {"cpu": whole - h1}
    assert uncounted == h1 and h0 > 0


def test_kv_bytes_are_summed_over_the_devices_of_the_layers():
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)
    cache.update(torch.zeros(1, 2, 5, 4, device="meta"), torch.zeros(1, 2, 5, 4, device="meta"), 1)
    by_device = measure_cache_bytes_by_device(cache)
    assert by_device["cpu"] == 2 * 2 * 5 * 4 * 4 and set(by_device) == {"cpu", "meta"}
    assert sum(by_device.values()) == measure_cache_bytes(cache)
    assert measure_cache_bytes_by_device(None) == {}


@pytest.mark.parametrize("value", [[1, 2], {"cuda:0": -1}, {"cuda:0": 1.5}, {"cpu": True}, 7])
def test_a_damaged_per_device_field_is_refused_by_the_reader(value):
    from kvperf.errors import BadInputError
    from kvperf.gate.result_file import check_case

    check_case({"peak_memory_bytes_by_device": {"cpu": 10, "cuda:0": 0}}, "benchmarks[0]", "f.json")
    with pytest.raises(BadInputError, match=r"^f\.json: benchmarks\[0\]: 'kv_cache_bytes_by_device' is .*, not an "
                                            r"object of device name to a whole number of bytes: "):
        check_case({"kv_cache_bytes_by_device": value}, "benchmarks[0]", "f.json")
