"""The roofline: how far each decode case is from the device's memory-bandwidth limit.

A decode step processes one new position per sequence. Its matrix multiplies are matrix-vector
products (or matrix times ``batch`` vectors), so it does about 2 FLOPs per weight it reads: far too
few to keep the arithmetic units busy. The step is bound by how fast the memory delivers the weights
and the KV cache, and the honest measure of a decode case is the share of the memory bandwidth it
achieves.

**Bytes one decode step reads** (``decode_bytes_per_step``, a formula, not a measurement):

* the weights (``decode_weights_bytes``): every parameter once (``p.numel() * element_size``, a
  parameter tied to another counted once), except an embedding table that only a lookup uses: a step
  gathers ``batch_size`` rows of it (one token or position per sequence), not the table. A table tied
  to the output projection (GPT-2's ``wte`` and ``lm_head``) is read whole by that projection;
* the KV cache, from the formula (``kvperf.kv.kv_size.estimate_kv_cache``), as the **mean over the
  decode steps** (``decode_kv_bytes_per_step``): step ``k`` (``k = 1 .. new_tokens - 1``) attends over
  the ``prompt_len + k`` positions the cache holds once it appended the step's own token, so the
  mean is the sum of the formula's ``kv_bytes`` at those lengths divided by ``new_tokens - 1``. A
  static cache is read whole at every step (attention runs over all ``max_cache_len`` slots, masked);
  a sliding layer holds its window;
* the conv and recurrent states of linear-attention and hybrid layers (``decode_state_bytes``), read
  once per step (the write back is not counted, nor the new position's keys and values written).

Activations, logits and the write of new cache entries are left out: for the models kvperf runs they
are small beside the weights, so the sum is a lower bound on the traffic, and the achieved bandwidth
(``achieved_bandwidth_bytes_per_s = decode_bytes_per_step / tpot_s``, TPOT being the time of one
decode step for the whole batch) is a lower bound on what the memory delivered.

**Arithmetic intensity** (``arithmetic_intensity_flops_per_byte``): the decode FLOPs of one step
(kvperf's count, ``kvperf.measure.work``: ``decode_flops_per_token * batch_size``, itself a mean over
the steps) divided by ``decode_bytes_per_step``. Far left of the machine's ridge point
(``peak_flops_per_s / peak_bandwidth_bytes_per_s``) a case is bandwidth-bound; right of it,
compute-bound.

**The peak** comes from ``kvperf.measure.ceilings`` (NVML or a published figure on a GPU, a STREAM
triad on CPU); a case's ``bandwidth_fraction`` is its achieved bandwidth over that peak.

Where a number cannot be known (a family the formula refuses, a mixture of experts whose step reads
only the routed experts, an unknown GPU, a single generated token), it is None and ``roofline_note``
says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from kvperf.errors import UsageError
from kvperf.kv.kv_layers import KvShape
from kvperf.kv.kv_size import estimate_kv_cache
from kvperf.measure.ceilings import MachineCeilings

__all__ = [
    "DecodeBytes",
    "Roofline",
    "case_roofline",
    "decode_bytes",
    "decode_cache_bytes",
    "weights_read_bytes",
]

# --- the bytes of one decode step --------------------------------------------------------------------


def weights_read_bytes(model: torch.nn.Module, batch_size: int) -> int:
    """Bytes of parameters one decode step reads: every parameter once, but of an embedding table that
    only lookups use, the ``batch_size`` rows a step gathers (see the module doc)."""
    looked_up: dict[int, torch.nn.Parameter] = {}
    streamed: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            target = looked_up if isinstance(module, torch.nn.Embedding) else streamed
            target[id(param)] = param
    total = sum(p.numel() * p.element_size() for p in streamed.values())
    for key, param in looked_up.items():
        if key not in streamed:  # a table tied to a projection is already counted whole
            row = param.numel() // param.shape[0] if param.dim() and param.shape[0] else param.numel()
            total += min(batch_size, param.shape[0] if param.dim() else 1) * row * param.element_size()
    return total


#: Config attributes that give a mixture of experts' expert count.
_EXPERT_ATTRS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _experts(config: Any) -> int:
    configs = [config, getattr(config, "text_config", None)]
    counts = [getattr(c, attr, None) for c in configs if c is not None for attr in _EXPERT_ATTRS]
    return max((n for n in counts if isinstance(n, int) and not isinstance(n, bool)), default=0)


def decode_cache_bytes(config: Any, cache: str, batch_size: int, prompt_len: int, new_tokens: int,
                       dtype: str | torch.dtype) -> tuple[float, int]:
    """``(mean KV bytes per decode step, state bytes)`` of the cache ``cache`` (``on``, ``static`` or
    ``off``) over the ``new_tokens - 1`` decode steps, from the formula (see the module doc).
    ``UsageError`` where the formula refuses the family or there is no decode step."""
    steps = new_tokens - 1
    if steps < 1:
        raise UsageError(f"new_tokens {new_tokens} leaves no decode step: the roofline needs new_tokens >= 2")
    if cache == "off":
        return 0.0, 0
    if cache not in ("on", "static"):
        raise UsageError(f"no formula for the bytes a {cache!r} cache reads per step")
    kind = "static" if cache == "static" else "dynamic"
    shape = config if isinstance(config, KvShape) else KvShape.from_config(config)
    final = prompt_len + steps
    kv_total, state = 0, 0
    for k in range(1, steps + 1):
        estimate = estimate_kv_cache(shape, batch_size, prompt_len + k, dtype, kind, prompt_len=prompt_len,
                                     max_cache_len=final if kind == "static" else None)
        kv_total += estimate.kv_bytes
        state = estimate.state_bytes
    return kv_total / steps, state


@dataclass(frozen=True)
class DecodeBytes:
    """The bytes one decode step reads (see the module doc); None where unknown, with ``roofline_note``."""

    decode_weights_bytes: int | None
    #: Mean over the decode steps of the cache's keys and values (and per-position extras).
    decode_kv_bytes_per_step: float | None
    #: Conv and recurrent states of linear-attention and hybrid layers.
    decode_state_bytes: int | None
    decode_bytes_per_step: float | None
    roofline_note: str | None = None

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def decode_bytes(model: Any, cache: str, batch_size: int, prompt_len: int, new_tokens: int) -> DecodeBytes:
    """The bytes one decode step of this case reads: weights plus the formula's cache (see the module doc)."""
    experts = _experts(model.config)
    if experts > 1:
        return DecodeBytes(None, None, None, None, f"a mixture of experts ({experts} experts): a step reads only "
                           "the experts its tokens are routed to, which the formula cannot know")
    try:
        kv, state = decode_cache_bytes(model.config, cache, batch_size, prompt_len, new_tokens, model.dtype)
    except UsageError as exc:
        return DecodeBytes(None, None, None, None, str(exc))
    weights = weights_read_bytes(model, batch_size)
    note = ("cache off: every step recomputes the whole prefix, so it reads the weights and no cache and is "
            "compute-bound; its bandwidth fraction is low by design") if cache == "off" else None
    return DecodeBytes(weights, kv, state, weights + kv + state, note)


# --- one case's roofline -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Roofline:
    """One decode case against the machine's ceilings; None where unknown, ``roofline_note`` says why."""

    decode_bytes_per_step: float | None
    decode_flops_per_step: float | None
    achieved_bandwidth_bytes_per_s: float | None
    achieved_flops_per_s: float | None
    peak_bandwidth_bytes_per_s: float | None
    #: How the peak was found (STREAM triad, NVML, a published figure), or why it is None.
    peak_bandwidth_note: str
    bandwidth_fraction: float | None
    arithmetic_intensity_flops_per_byte: float | None
    peak_flops_per_s: float | None
    roofline_note: str | None

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def _positive(info: Mapping[str, Any], key: str) -> float | None:
    value = info.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return None


def case_roofline(info: Mapping[str, Any], ceilings: MachineCeilings) -> Roofline:
    """The roofline of one case from its ``extra_info`` (``decode_bytes_per_step``, ``tpot_s``,
    ``decode_flops_per_token``, ``batch_size``, ``roofline_note``) and the machine's ceilings."""
    notes = [str(info["roofline_note"])] if info.get("roofline_note") else []
    nbytes, tpot = _positive(info, "decode_bytes_per_step"), _positive(info, "tpot_s")
    per_token, batch = _positive(info, "decode_flops_per_token"), _positive(info, "batch_size")
    flops = per_token * batch if per_token is not None and batch is not None else None
    if nbytes is None and not notes:
        notes.append("no decode bytes recorded for this case")
    if tpot is None:
        notes.append("no TPOT: the case has no timed decode step")
    achieved = nbytes / tpot if nbytes is not None and tpot is not None else None
    peak = ceilings.peak_bandwidth_bytes_per_s
    if peak is None and achieved is not None:
        notes.append(f"no peak bandwidth: {ceilings.peak_bandwidth_note}")
    llc = ceilings.last_level_cache_bytes
    if nbytes is not None and llc is not None and nbytes <= llc:
        notes.append(f"the bytes of a step fit in the {llc / 2**20:.0f} MiB last-level cache: they can come from the "
                     "cache, not the memory, and the fraction can pass 1")
    return Roofline(
        decode_bytes_per_step=nbytes, decode_flops_per_step=flops, achieved_bandwidth_bytes_per_s=achieved,
        achieved_flops_per_s=flops / tpot if flops is not None and tpot is not None else None,
        peak_bandwidth_bytes_per_s=peak, peak_bandwidth_note=ceilings.peak_bandwidth_note,
        bandwidth_fraction=achieved / peak if achieved is not None and peak else None,
        arithmetic_intensity_flops_per_byte=flops / nbytes if flops is not None and nbytes is not None else None,
        peak_flops_per_s=ceilings.peak_flops_per_s, roofline_note="; ".join(notes) or None)
