"""Every cache implementation transformers offers, as kvperf's cache modes: what each passes to
``generate``, where it runs, and, where it cannot, why (a skip reason, or a one-line error).

| mode | transformers | runs on |
| --- | --- | --- |
| ``on`` | ``DynamicCache`` (sliding layers: ``DynamicSlidingWindowLayer``) | everywhere |
| ``off`` | ``use_cache=False`` | everywhere |
| ``static`` | ``StaticCache`` (``cache_implementation="static"``), eager | everywhere |
| ``compiled`` | ``StaticCache`` with the forward pass under ``torch.compile`` | where TorchDynamo and inductor run |
| ``quanto``, ``hqq``, ``fp8`` | ``QuantizedCache(backend=...)`` | where the backend is installed |
| ``offloaded`` | ``DynamicCache(offloading=True)`` | CUDA |
| ``offloaded_static`` | ``StaticCache(offloading=True)`` | CUDA |

Why ``static`` passes ``disable_compile`` off the CPU: on an accelerator, transformers compiles the
forward pass of a static-cache ``generate`` call on its own. ``static`` is the eager static cache on
every device, so that ``compiled`` against ``static`` isolates what compilation buys.

Why ``compiled`` runs ``mode="default"`` on a CPU: transformers' ``CompileConfig`` defaults to
``reduce-overhead``, whose CUDA graphs do not exist on a CPU; on CUDA, the default is kept, since it
is what a user's compiled ``generate`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from kvperf.errors import UsageError
from kvperf.features import (
    missing_cache_implementation,
    missing_compiler,
    missing_quantized_backend,
    static_values_have_their_own_width,
)
from kvperf.kv.kv_size import KvShape, mode_quantization, quantizable_kv_width
from kvperf.spec import CACHE_MODES

__all__ = ["CACHE_IMPLEMENTATIONS", "COMPILED_MODES", "STATIC_MODES", "CacheImplementation", "cache_mode_kwargs",
           "cache_unavailable", "eager_mode"]


@dataclass(frozen=True)
class CacheImplementation:
    """One cache mode: the transformers class (and argument) behind it, and the devices it runs on."""

    mode: str
    transformers: str
    #: ``None``: every device torch runs generate on; else the one device type it needs.
    needs_device: str | None = None


CACHE_IMPLEMENTATIONS: dict[str, CacheImplementation] = {c.mode: c for c in (
    CacheImplementation("on", "DynamicCache"),
    CacheImplementation("off", "none (use_cache=False)"),
    CacheImplementation("static", 'StaticCache (cache_implementation="static")'),
    CacheImplementation("compiled", 'StaticCache + torch.compile (cache_implementation="static", compile_config)'),
    CacheImplementation("quanto", 'QuantizedCache(backend="quanto")'),
    CacheImplementation("hqq", 'QuantizedCache(backend="hqq")'),
    CacheImplementation("fp8", 'QuantizedCache(backend="fp8")'),
    CacheImplementation("offloaded", 'DynamicCache(offloading=True) (cache_implementation="offloaded")', "cuda"),
    CacheImplementation("offloaded_static",
                        'StaticCache(offloading=True) (cache_implementation="offloaded_static")', "cuda"),
)}
assert tuple(CACHE_IMPLEMENTATIONS) == CACHE_MODES  # one entry per mode, in the spec's order

#: Modes whose cache is a ``StaticCache``, sized per call (``kvperf.measure.harness.forget_static_cache``).
STATIC_MODES = frozenset({"static", "compiled", "offloaded_static"})
#: Modes whose forward pass ``torch.compile`` compiles: their first call compiles, and is a warm-up.
COMPILED_MODES = frozenset({"compiled"})
_QUANTIZED = ("quanto", "hqq", "fp8")


def eager_mode(mode: str) -> str:
    """The mode that holds the same cache without compiling (``compiled`` -> ``static``): the
    memory and FLOP passes run it, since a dispatch mode cannot see inside compiled kernels."""
    return "static" if mode in COMPILED_MODES else mode


def _compile_config(device_type: str) -> Any:
    from transformers import CompileConfig

    if device_type != "cpu":
        return CompileConfig()
    config = CompileConfig(mode="default")
    # transformers compiles on accelerators only unless told (a class attribute, so set on the instance)
    setattr(config, "_compile_all_devices", True)  # noqa: B010
    return config


def cache_mode_kwargs(config: PretrainedConfig, mode: str, device_type: str) -> dict[str, Any]:
    """The ``generate`` arguments that select ``mode``'s cache (``use_cache`` aside) for a model with
    ``config`` on ``device_type`` (``cpu``, ``cuda``)."""
    if mode in ("on", "off"):
        return {}
    if mode in ("static", "offloaded_static"):
        kwargs: dict[str, Any] = {"cache_implementation": mode}
        if device_type != "cpu":
            kwargs["disable_compile"] = True
        return kwargs
    if mode == "compiled":
        return {"cache_implementation": "static", "compile_config": _compile_config(device_type)}
    if mode == "offloaded":
        return {"cache_implementation": "offloaded"}
    quant = mode_quantization(mode, config)
    assert quant is not None, mode
    cache_config: dict[str, Any] = {"backend": mode}
    if mode != "fp8":  # fp8 quantizes per tensor and refuses the group-wise settings
        cache_config.update(nbits=quant.nbits, q_group_size=quant.q_group_size,
                            residual_length=quant.residual_length)
    return {"cache_implementation": "quantized", "cache_config": cache_config}


def cache_unavailable(mode: str, device_type: str, config: PretrainedConfig | None = None) -> str | None:
    """``None`` when ``mode`` can run on ``device_type`` here (for a model with ``config``, when given),
    else why not: the device it needs, the transformers feature or the package that is missing, with
    the fix, or the layers of the model that the cache cannot hold."""
    impl = CACHE_IMPLEMENTATIONS[mode]
    if impl.needs_device is not None and device_type != impl.needs_device:
        return (f"cache {mode!r} ({impl.transformers.split(' (')[0]}) keeps layers in CPU memory and copies them "
                f"to the GPU as they are needed, so it needs {impl.needs_device}, and this run is on {device_type}: "
                f"run it on a GPU machine with --kvperf-device {impl.needs_device} (kvperf run: --device "
                f"{impl.needs_device})")
    if mode in _QUANTIZED:
        missing = missing_quantized_backend(mode)
        if missing is None and config is not None:
            try:
                shape = KvShape.from_config(config)
            except UsageError:  # a config kvperf cannot read: transformers decides
                return None
            try:
                quantizable_kv_width(shape)
            except UsageError:
                kinds = ", ".join(sorted(set(shape.layer_kinds)))
                return (f"cache {mode!r} (QuantizedCache) holds full-attention layers only, and this "
                        f"{shape.model_type} model has layers of {kinds}: use cache on or static for it")
        return missing
    if mode in STATIC_MODES and config is not None:
        narrow = _values_narrower_than_keys(config)
        if narrow is not None:
            return narrow
    if mode in COMPILED_MODES:
        return missing_compiler(device_type)
    if mode.startswith("offloaded"):
        return missing_cache_implementation(mode)
    return None


def _values_narrower_than_keys(config: PretrainedConfig) -> str | None:
    """Why a static cache cannot hold this model's layers on this release: before 5.0, ``StaticLayer``
    allocates the values at the keys' head dim, so values of another width fail inside transformers
    (``index_copy_``); None where the release or the model is fine."""
    if static_values_have_their_own_width():
        return None
    try:
        shape = KvShape.from_config(config)
    except UsageError:  # a config kvperf cannot read: transformers decides
        return None
    for layer in shape.layers:
        if layer.key_dim and layer.value_dim and layer.value_dim != layer.key_dim:
            from transformers import __version__

            return (f"a static cache of this {shape.model_type} model holds keys {layer.key_dim} and values "
                    f"{layer.value_dim} wide, and transformers {__version__} allocates its values at the keys' "
                    "width (StaticLayer.lazy_initialization), which fails: it needs transformers 5.0 or newer "
                    "(pip install -U transformers), or use cache on")
    return None
