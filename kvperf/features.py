"""What the installed transformers release does, where kvperf's numbers depend on it: detected, not
read from the version number.

kvperf supports transformers 4.57 (the last 4.x line) through the newest 5.x. Most of what differs
between them kvperf handles where it happens (the cache keyword, ``kvperf.kv.kv_size.cache_kwarg``; the
static cache a model keeps between calls, ``kvperf.measure.harness.forget_static_cache``). What is left is
here, each answer found by a probe of the installed code, so that a backport or a release that does
things differently is still sized right:

* ``quanto_residual_cycle``: how many decode steps the full-precision residual of a quantized cache
  holds before it is folded into the quantized part. With ``residual_length`` R of 2 or more it is
  R on every release; with R of 0 or 1, releases before 5.20 append one token to an empty residual
  before they check its length (``QuantizedLayer.update``), so the residual empties every second step.
* ``missing_quantized_backend``: the ``QuantizedCache`` backends kvperf sizes that this release (or
  this environment) lacks: fp8 arrived in transformers 5.21; quanto needs optimum-quanto, hqq needs hqq.
* ``missing_cache_implementation``: a ``cache_implementation`` name this release's ``generate`` lacks.
* ``missing_compiler``: why ``generate`` cannot compile its forward pass here (no TorchDynamo on this
  Python, no way to ask transformers to compile on a CPU, no C++ compiler for inductor's CPU kernels).
* ``missing_state_layers``: whether transformers' ``Cache`` holds the conv and recurrent states of
  linear-attention, Mamba and short-conv layers (``LinearAttentionLayer``, from 5.5). Before, each
  such family kept its states in a cache class of its own (``Qwen3NextDynamicCache``, ``MambaCache``,
  ``HybridMambaAttentionDynamicCache``, ...), which kvperf does not size: it refuses them, naming 5.5.
* ``static_values_have_their_own_width``: whether ``StaticLayer`` allocates its values at their own
  head dim. 4.57 allocates them at the keys' width, so a static cache of a model whose values are
  narrower than its keys (DeepSeek's expanded latent attention with ``v_head_dim`` below
  ``qk_nope_head_dim + qk_rope_head_dim``) fails in transformers' ``index_copy_``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from typing import Any

import torch

__all__ = ["BACKEND_SINCE", "STATE_LAYERS_SINCE", "missing_cache_implementation", "missing_compiler",
           "missing_quantized_backend", "missing_state_layers", "quanto_residual_cycle",
           "static_values_have_their_own_width"]

#: The oldest transformers release with each ``QuantizedCache`` backend that kvperf supports.
BACKEND_SINCE = {"quanto": "4.57", "hqq": "4.57", "fp8": "5.21"}
#: The layer class of each backend in ``transformers.cache_utils``: its presence is the feature.
_BACKEND_LAYER = {"quanto": "QuantoQuantizedLayer", "hqq": "HQQQuantizedLayer", "fp8": "Fp8QuantizedLayer"}
#: The package each backend needs beside transformers, and the command that installs it.
_BACKEND_PACKAGE = {"quanto": ("optimum.quanto", "optimum-quanto", "pip install 'kvperf[quantized]'"),
                    "hqq": ("hqq", "hqq", "pip install hqq")}
#: The oldest transformers release whose ``Cache`` holds linear-attention and Mamba states
#: (``cache_utils.LinearAttentionLayer``; 5.4.0 has no such class, 5.5.0 has it).
STATE_LAYERS_SINCE = "5.5"


def missing_quantized_backend(backend: str) -> str | None:
    """``None`` when ``QuantizedCache(backend=...)`` can run here, else why not, naming the release or
    the package it needs (a skip reason, or the text of an error)."""
    from transformers import __version__, cache_utils

    if getattr(cache_utils, _BACKEND_LAYER[backend], None) is None:
        return (f"the {backend} backend of transformers' QuantizedCache needs transformers "
                f"{BACKEND_SINCE[backend]} or newer (this is {__version__}): pip install -U transformers")
    if backend in _BACKEND_PACKAGE:
        module, package, command = _BACKEND_PACKAGE[backend]
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            return f"the {backend} backend needs {package}, which is not installed: {command}"
    return None


def missing_cache_implementation(name: str) -> str | None:
    """``None`` when ``generate(cache_implementation=name)`` exists in this release, else why not."""
    from transformers import __version__
    from transformers.generation import configuration_utils

    names = getattr(configuration_utils, "ALL_CACHE_IMPLEMENTATIONS", ())
    if name in names:
        return None
    return (f"transformers {__version__} has no cache_implementation={name!r} (it offers "
            f"{', '.join(names) or 'none'}): pip install -U transformers")


def missing_compiler(device_type: str) -> str | None:
    """``None`` when ``generate`` can compile the forward pass on ``device_type``, else why not."""
    import shutil

    from torch._dynamo.eval_frame import is_dynamo_supported

    if not is_dynamo_supported():
        return "torch.compile (TorchDynamo) does not support this Python; use a Python that torch.compile supports"
    from transformers.generation import configuration_utils

    if not hasattr(configuration_utils, "CompileConfig"):
        return "this transformers release has no CompileConfig for generate: pip install -U transformers"
    if device_type == "cpu":
        if "_compile_all_devices" not in vars(configuration_utils.CompileConfig):
            return ("this transformers release compiles generate on accelerators only (CompileConfig has no "
                    "_compile_all_devices): pip install -U transformers, or run on cuda")
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx[-1] if isinstance(inductor_config.cpp.cxx, tuple) else inductor_config.cpp.cxx
        candidates = [c for c in (os.environ.get("CXX"), cxx, "g++", "clang++") if c]
        if not any(shutil.which(c) for c in candidates):
            return ("torch.compile's inductor needs a C++ compiler for CPU kernels and none was found "
                    f"({', '.join(dict.fromkeys(candidates))}): install g++ or set CXX")
    return None


@functools.cache
def _appends_to_an_empty_residual() -> bool:
    """Whether ``QuantizedLayer.update`` keeps a decode token in an empty residual of length limit 1.

    Runs the installed ``QuantizedLayer`` with an identity "quantization" on a one-element cache: a
    prefill, then one decode step, with ``residual_length=1``. Releases from 5.20 fold the token into
    the quantized part at once; older ones keep it in the residual."""
    from transformers.cache_utils import QuantizedLayer

    class _Identity(QuantizedLayer):  # type: ignore[misc]
        def _quantize(self, tensor: torch.Tensor, axis: int = 0) -> torch.Tensor:
            return tensor

        def _dequantize(self, q_tensor: torch.Tensor) -> torch.Tensor:
            return q_tensor

    layer: Any = _Identity(residual_length=1)
    state = torch.zeros(1, 1, 1, 1)
    layer.update(state, state)  # prefill: quantized at once
    layer.update(state, state)  # one decode step
    keys = layer.keys
    return isinstance(keys, torch.Tensor) and keys.dim() == 4 and keys.shape[-2] == 1


def quanto_residual_cycle(residual_length: int) -> int:
    """Decode steps after which the quantized cache's full-precision residual is empty again: after
    ``n`` decode steps it holds ``n mod cycle`` tokens.

    ``residual_length`` when it is 2 or more; for 0 and 1, 1 (every token is quantized at once) from
    transformers 5.20, 2 before (see the module docstring; probed, not read from the version)."""
    if residual_length >= 2:
        return residual_length
    return 2 if _appends_to_an_empty_residual() else 1


def missing_state_layers() -> str | None:
    """``None`` when transformers' ``Cache`` holds conv and recurrent states (``LinearAttentionLayer``),
    else why kvperf cannot size linear-attention, Mamba and short-conv families here, naming the release
    it needs (a skip reason, or the end of an error)."""
    from transformers import __version__, cache_utils

    if getattr(cache_utils, "LinearAttentionLayer", None) is not None:
        return None
    return (f"transformers {__version__} keeps the conv and recurrent states of linear-attention, Mamba and "
            f"short-conv layers in a cache class of each model's own, which kvperf does not size; it sizes them "
            f"from transformers {STATE_LAYERS_SINCE}, whose Cache holds them (LinearAttentionLayer): "
            "pip install -U transformers")


@functools.cache
def static_values_have_their_own_width() -> bool:
    """Whether ``StaticLayer`` allocates values at the values' own head dim (it is handed them when it
    allocates: ``lazy_initialization(key_states, value_states)``, 5.0 on) rather than at the keys'."""
    from transformers.cache_utils import StaticLayer

    return "value_states" in inspect.signature(StaticLayer.lazy_initialization).parameters
