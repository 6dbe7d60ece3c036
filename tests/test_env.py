"""The environment fingerprint, its key, which fields matter, and the CPU contention meter."""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from kvperf.gate.baseline import load_baseline
from kvperf.gate.env import (
    CpuContention,
    Environment,
    current_environment,
    fields_that_matter,
    machine_id,
    mismatched_fields,
)
from tests.test_compare import ENV


def test_current_environment_describes_this_process(tmp_path):
    env = current_environment("cpu", root=tmp_path, torch_threads=3)
    assert env.torch_version == torch.__version__ and env.transformers_version == transformers.__version__
    assert env.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert env.device_type == "cpu" and env.torch_threads == 3 and env.cpu_count >= 1 and env.cpu_model
    assert env.git_commit is None and env.git_dirty is None  # tmp_path is not a git checkout
    assert current_environment("cpu", root=tmp_path).torch_threads == torch.get_num_threads()


def test_json_round_trip_and_a_missing_field():
    assert Environment.from_json(ENV.to_json()) == ENV
    assert ENV.to_json()["key"] == ENV.key()
    data = ENV.to_json()
    del data["torch_version"]
    with pytest.raises(ValueError, match=r"^environment lacks torch_version$"):
        Environment.from_json(data)


def test_the_key_changes_with_the_machine_but_not_with_the_commit():
    assert replace(ENV, git_commit="other", git_dirty=True).key() == ENV.key()
    assert replace(ENV, cpu_count=4).key() != ENV.key()
    assert replace(ENV, torch_threads=2).key() != ENV.key()
    assert replace(ENV, transformers_version="5.30.0").key() != ENV.key()
    # GPU facts matter only where the benchmarks ran on the GPU.
    assert replace(ENV, gpu_name="NVIDIA H100").key() == ENV.key()
    cuda = replace(ENV, device_type="cuda", gpu_name="NVIDIA H100", gpu_memory_bytes=80 << 30, gpu_driver="550")
    assert cuda.key().startswith("cuda-nvidia-h100-2cpu-")
    assert replace(cuda, gpu_driver="560").key() != cuda.key()


def test_which_fields_matter():
    assert fields_that_matter(ENV, timings=False) == ("device_type", "torch_version", "transformers_version")
    assert "cpu_model" in fields_that_matter(ENV, timings=True)
    assert "git_commit" not in fields_that_matter(ENV, timings=True)
    assert mismatched_fields(ENV, replace(ENV, cpu_count=8), timings=False) == []
    assert mismatched_fields(ENV, replace(ENV, cpu_count=8), timings=True) == ["cpu_count (2 -> 8)"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the contention counters are Linux's")
def test_contention_of_a_round_that_only_sleeps_is_small():
    meter = CpuContention()
    meter.start()
    time.sleep(0.05)
    contention = meter.stop()
    assert contention.wait is not None and 0 <= contention.wait < 0.5
    assert contention.others is not None and contention.others >= 0


def test_the_machine_identity_is_a_salted_hash_in_the_key(monkeypatch):
    monkeypatch.setenv("KVPERF_MACHINE_ID", "runner-pool-7")
    first = machine_id()
    assert first is not None and len(first) == 16 and int(first, 16) >= 0
    assert "runner" not in first and first == machine_id()
    monkeypatch.setenv("KVPERF_MACHINE_ID", "runner-pool-8")
    assert machine_id() != first
    monkeypatch.delenv("KVPERF_MACHINE_ID")
    here = machine_id()
    assert here is not None and socket.gethostname() not in here
    assert current_environment("cpu", root=".").machine_id == here
    # Same CPU model and count, another machine: another key. No identity recorded: the key it had before.
    assert replace(ENV, machine_id="a").key() != replace(ENV, machine_id="b").key() != ENV.key()
    for path in Path(__file__).parents[1].glob("baselines/*/*.json"):  # committed ones keep their directory
        assert load_baseline(path).environment.key() == path.parent.name
    assert fields_that_matter(ENV, timings=True, host=False) == tuple(
        f for f in fields_that_matter(ENV, timings=True) if f != "machine_id")
