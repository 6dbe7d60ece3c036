"""Device maps: a model spread over several devices by accelerate, for models that do not fit one GPU.

A device map says which device holds each module: ``{"transformer.h.0": 0, "transformer.h.1": 1,
...}`` (an ``int`` is a GPU index), or ``"auto"``, which lets accelerate spread the modules evenly
over the GPUs and put what does not fit on the CPU. kvperf takes one through
``load_model(device_map=...)``, ``--kvperf-device-map auto|FILE.json`` under pytest and
``kvperf run --device-map``.

The device (``--kvperf-device``) still says where the model computes, and the map how it is spread
there: with ``cuda``, ``auto`` spreads the modules over every visible GPU (``CUDA_VISIBLE_DEVICES``
chooses them), and a ``cpu`` entry offloads its modules to host memory (accelerate copies them to
the GPU for their forward); with ``cpu``, ``auto`` and every entry place modules on the CPU, which
is how the multi-device path is tested without a GPU. ``disk`` entries are refused: a disk-offloaded
model times its file reads, and kvperf cannot count the memory of memory-mapped weights.

accelerate is an optional dependency: ``pip install 'kvperf[multi-device]'``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import nn

from kvperf.errors import UsageError

__all__ = ["AUTO", "DeviceMap", "check_device_map", "check_modules", "dispatch", "parse_device_map",
           "require_accelerate"]

#: A device map: ``"auto"``, or module name (``""``: the whole model) -> GPU index, ``cpu``, ``cuda``,
#: ``cuda:N``.
DeviceMap: TypeAlias = "str | Mapping[str, int | str]"

AUTO = "auto"
_CUDA = re.compile(r"cuda(:\d+)?")
_INSTALL = "pip install 'kvperf[multi-device]'"


def require_accelerate(option: str) -> Any:
    """The ``accelerate`` module; a one-line ``UsageError`` with the install command when it is missing."""
    try:
        import accelerate
    except ImportError:
        raise UsageError(f"{option} needs accelerate, which is not installed: {_INSTALL}") from None
    return accelerate


def parse_device_map(raw: str, option: str = "--device-map") -> DeviceMap:
    """``auto``, or the device map in the JSON file ``raw`` (an object of module name to device),
    checked (``check_device_map``)."""
    if raw.strip().lower() == AUTO:
        return AUTO
    path = Path(raw)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{option} {raw!r}: no such file: give auto or a JSON file of module name to device") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UsageError(f"{option} {raw!r}: cannot read the file ({reason}): give auto or a readable JSON file") \
            from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise UsageError(f"{option} {raw!r} is not valid JSON: write an object such as "
                         '{"transformer.h.0": 0, "transformer.h.1": 1}') from None
    check_device_map(data, option)
    return dict(data)


def _entry_device(module: str, value: Any, option: str) -> str:
    """The device an entry names (``cpu``, ``cuda:N``, ``cuda``), or ``UsageError``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"cuda:{value}"
    if isinstance(value, str) and (value == "cpu" or _CUDA.fullmatch(value)):
        return value
    if value == "disk":
        raise UsageError(f"{option}: module {module!r} is offloaded to disk, which kvperf does not benchmark (it "
                         "would time file reads): use cpu to offload it to host memory")
    raise UsageError(f"{option}: module {module!r} has device {value!r}: use a GPU index (0, 1, ...), "
                     "cuda:N or cpu")


def check_device_map(device_map: Any, option: str = "--device-map", device: str | None = None) -> None:
    """Refuse a device map that is not ``auto`` or an object of module name to GPU index, ``cuda:N`` or
    ``cpu``; with ``device``, also one that does not fit it (GPU entries on ``cpu``, none on ``cuda``)."""
    if isinstance(device_map, str) and device_map == AUTO:
        return
    if not isinstance(device_map, Mapping) or not device_map:
        raise UsageError(f"{option} must be auto or a non-empty object of module name to device, such as "
                         '{"transformer.h.0": 0, "transformer.h.1": 1}')
    devices = set()
    for module, value in device_map.items():
        if not isinstance(module, str):
            raise UsageError(f"{option}: module name {module!r} is not a string: use names from "
                             "model.named_modules()")
        devices.add(_entry_device(module, value, option))
    if device is None:
        return
    gpus = sorted(d for d in devices if d != "cpu")
    device_type = device.split(":", 1)[0]
    if device_type == "cpu" and gpus:
        raise UsageError(f"{option} places modules on {', '.join(gpus)} but the device is cpu: pass --device "
                         "cuda (--kvperf-device cuda under pytest), or map every module to cpu")
    if device_type == "cuda" and not gpus:
        raise UsageError(f"{option} places every module on the CPU but the device is {device}: pass --device cpu "
                         "(--kvperf-device cpu under pytest), or map modules to GPUs")


def check_modules(model: nn.Module, device_map: Mapping[str, int | str], option: str = "--device-map") -> None:
    """Refuse a map that names a module ``model`` does not have, or leaves a parameter without a device."""
    names = dict(model.named_modules())
    unknown = [m for m in device_map if m not in names]
    if unknown:
        example = ", ".join(n for n, _ in list(model.named_children())[:3])
        raise UsageError(f"{option}: the model has no module {unknown[0]!r}: use names from "
                         f"model.named_modules() (its top-level modules: {example}), or \"\" for the whole model")
    for param, _ in model.named_parameters():
        if not any(m == "" or param == m or param.startswith(f"{m}.") for m in device_map):
            raise UsageError(f"{option} gives no device for parameter {param!r}: add its module, or a parent of it")


def _auto(model: nn.Module, device: torch.device, dtype: torch.dtype) -> dict[str, int | str]:
    """The ``auto`` map of ``model``, as transformers makes it for ``from_pretrained(device_map="auto")``:
    on ``cuda``, accelerate's balanced map (the modules spread evenly over the visible GPUs, what does not
    fit on the CPU); on ``cpu``, host memory alone."""
    from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if device.type == "cpu":
        memory = {"cpu": get_max_memory()["cpu"]}
    else:
        memory = get_balanced_memory(model, dtype=dtype, no_split_module_classes=no_split)
    return dict(infer_auto_device_map(model, max_memory=memory, dtype=dtype, no_split_module_classes=no_split))


def dispatch(model: nn.Module, device_map: DeviceMap, device: torch.device,
             option: str = "--device-map") -> nn.Module:
    """Place ``model`` (built on the CPU) by ``device_map`` with accelerate's ``dispatch_model``, which
    sets ``model.hf_device_map`` and adds the hooks that move activations between devices."""
    require_accelerate(option)
    from accelerate import dispatch_model

    check_device_map(device_map, option, str(device))
    dtype = next(model.parameters()).dtype
    resolved = _auto(model, device, dtype) if isinstance(device_map, str) else dict(device_map)
    if "disk" in resolved.values():
        raise UsageError(f"{option} auto would offload part of the model to disk (it does not fit in the GPUs and "
                         "host memory): use a smaller --dtype or a machine with more memory")
    check_modules(model, resolved, option)
    _check_gpu_indices(resolved, option)
    return dispatch_model(model, device_map=resolved)


def _check_gpu_indices(device_map: Mapping[str, int | str], option: str) -> None:
    gpus = [torch.device(f"cuda:{v}" if isinstance(v, int) else v) for v in device_map.values() if v != "cpu"]
    if not gpus:
        return
    if not torch.cuda.is_available():
        raise UsageError(f"{option} places modules on GPUs but CUDA is not available here: use a machine with "
                         "GPUs, or map every module to cpu")
    count = torch.cuda.device_count()
    missing = sorted({str(d) for d in gpus if (d.index or 0) >= count})
    if missing:
        raise UsageError(f"{option} places modules on {', '.join(missing)} but this machine has {count} GPU(s): "
                         "use indices below that")
