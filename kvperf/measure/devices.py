"""The devices a model uses, and a synchronisation of all of them before a clock read.

A model loaded with a device map (``kvperf.device_map``, accelerate) runs its layers on several
devices: its blocks on ``cuda:0`` and ``cuda:1``, or some of them on the CPU. CUDA kernels run
asynchronously on every GPU, so a clock read must wait for each GPU the model used, not only the
first: a sync of ``cuda:0`` alone returns while ``cuda:1`` still computes the last layers.

The set is read from ``model.hf_device_map`` (what accelerate placed where: an ``int`` is a GPU index,
``"cpu"`` and ``"disk"`` are offload targets) and from the devices of the model's parameters and
buffers (a model placed without a map has none). ``meta`` (the placeholder of a weight that accelerate
offloaded) and ``disk`` are not devices that compute.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["device_name", "input_device", "model_devices", "synchronize"]

#: Targets of a device map that hold weights but never compute.
_NOT_COMPUTING = ("meta", "disk")


def device_name(device: Any) -> str:
    """The name of a device-map value or a ``torch.device`` as torch writes it: ``0`` -> ``cuda:0``,
    ``"cuda"`` -> ``cuda:0`` (the current device), ``"cpu"`` -> ``cpu``."""
    if isinstance(device, int) and not isinstance(device, bool):
        return f"cuda:{device}"
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and torch_device.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return f"cuda:{index}"
    return str(torch_device)


def _sort_key(device: torch.device) -> tuple[int, str, int]:
    return (device.type != "cpu", device.type, device.index or 0)


def model_devices(model: nn.Module) -> tuple[torch.device, ...]:
    """Every device that ``model`` computes on or keeps tensors on, CPU first, then by type and index:
    the values of ``model.hf_device_map`` and the devices of its parameters and buffers, without
    ``meta`` and ``disk``."""
    names: set[str] = set()
    hf_map = getattr(model, "hf_device_map", None)
    if isinstance(hf_map, dict):
        names |= {device_name(v) for v in hf_map.values() if str(v) not in _NOT_COMPUTING}
    held = {tensor.device for tensor in [*model.parameters(), *model.buffers()]}
    names |= {device_name(d) for d in held if d.type not in _NOT_COMPUTING}
    if not names:  # every weight offloaded: accelerate computes on its execution device
        names.add(str(input_device(model)))
    return tuple(sorted((torch.device(n) for n in names), key=_sort_key))


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings, or, where accelerate offloaded
    them (``meta``), the execution device of the hook on the embeddings or on the model; else the first
    parameter's device."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    for module in (embeddings, model):
        if module is None:
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
        execution = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if execution is not None:
            return torch.device(device_name(execution))
    return next(model.parameters()).device


def synchronize(devices: Iterable[torch.device]) -> None:
    """Wait until every CUDA device in ``devices`` has finished its queued work (CPU work is
    synchronous: nothing to wait for)."""
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
