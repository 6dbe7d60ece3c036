"""The generation harness: one ``model.generate`` call, timed per token, and what it left behind.

Why it is built this way:

* **One generate call.** A loop of ``generate(max_new_tokens=1)`` starts a fresh cache at every
  call, so the "cached" run recomputes everything. Users time ``generate``; so does kvperf.
* **Per-token clocks from inside the call.** A streamer receives every new token as soon as it is
  chosen; it reads the clock there. The first token marks the end of prefill (TTFT), the gaps between
  tokens are the inter-token latencies of the decode steps.
* **Device sync before every clock read.** CUDA kernels run asynchronously: without a sync the clock
  measures how fast Python queued work, not how fast the GPU did it. A model split over several GPUs
  by a device map has every one of them synchronised (``kvperf.measure.devices``).
* **A fixed token count, at no added cost.** Greedy decoding with ``max_new_tokens`` and EOS stopping
  turned off (``eos_token_id=None``): no sequence can end early, so every run produces exactly
  ``batch_size * new_tokens`` tokens, which the harness checks in the output after the call. The
  obvious alternative, ``min_new_tokens == max_new_tokens``, makes transformers add min-length logits
  processors that build ``arange(vocab)``, run ``isin`` against the EOS ids and ``clone`` and
  ``where`` the logits at every step: about 6% of a distilgpt2 decode step that a user's own
  ``generate`` call does not do (``benchmarks/overhead_study.py``).
* **Thread CPU time beside wall time.** Every clock read also reads the calling thread's CPU time
  (``time.thread_time``). On a shared machine the wall time of a round can vary several-fold while
  the CPU time hardly moves. It counts the calling thread only: with more than one torch intra-op
  thread the other threads' work is not in it (the quick tier runs one).
* **Warm-up first.** The first call pays for lazy initialisation, kernel selection and allocator
  growth (often 10x a steady call); it is run and thrown away.
* **Energy from the hardware's counter, read outside the clocks.** With an energy meter
  (``kvperf.measure.energy``), the counter is read once right before the start clocks and once right
  after the end clocks: the reads add nothing to any timing the harness reports.
* **Compilation is a warm-up, timed apart.** A compiled cache mode makes one untimed call first and
  reports its time as ``compile_s``; every timed call counts the frames it compiled, which should
  be none (``recompiles``; see ``kvperf.measure.compiling``).
* **Memory in its own pass.** On CPU, peak memory is counted through a dispatch mode that slows every
  operation (see ``kvperf.measure.memory``), so it is taken in a separate untimed call.

Prefill processes the whole prompt in one forward pass and is compute-bound; each decode step
processes one token per sequence and is bound by reading the weights and the cache, which is why
TTFT and TPOT are reported apart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from kvperf.gate.fingerprint import output_sha256
from kvperf.kv.kv_size import measure_cache_bytes_by_device, returned_cache
from kvperf.measure.cache_modes import COMPILED_MODES, STATIC_MODES, cache_mode_kwargs, eager_mode
from kvperf.measure.compiling import CompileWarmup, compile_warmup, compiled_frames
from kvperf.measure.devices import input_device, model_devices, synchronize
from kvperf.measure.energy import EnergyMeter, energy_meter
from kvperf.measure.memory import PeakMemory, measure_peak
from kvperf.measure.prompts import make_prompts, pad_token_id
from kvperf.spec import GenerationSpec

__all__ = [
    "GenerationResult",
    "GenerationTiming",
    "count_generated_tokens",
    "eager_spec",
    "generate_kwargs",
    "measure_peak_memory",
    "result_from_timing",
    "run_generation",
    "time_generation",
    "warm_compile",
]


class _TokenClock(BaseStreamer):
    """Records a timestamp for every batch of new tokens that ``generate`` hands to its streamer."""

    def __init__(self, devices: tuple[torch.device, ...], slowdown: float = 0.0) -> None:
        self._gpus = tuple(d for d in devices if d.type == "cuda")
        self._saw_prompt = False
        self.stamps_s: list[float] = []
        self.cpu_stamps_s: list[float] = []
        self._slowdown = slowdown  # test-only, see _test_decode_slowdown(); 0.0 in every real run
        self._resumed_s = 0.0

    def put(self, value: Any) -> None:
        if not self._saw_prompt:  # generate first streams the prompt itself
            self._saw_prompt = True
            return
        synchronize(self._gpus)
        self.stamps_s.append(time.perf_counter())
        self.cpu_stamps_s.append(time.thread_time())
        if self._slowdown:
            self._stall()

    def _stall(self) -> None:
        """Test-only: busy-wait ``slowdown`` times the work of the decode step that just ended (its
        time since the previous stall ended), so every decode step costs ``1 + slowdown`` times as
        much. Nothing is added after the first token, so TTFT is unchanged."""
        now = self.stamps_s[-1]
        if len(self.stamps_s) > 1:
            until = now + self._slowdown * (now - self._resumed_s)
            while time.perf_counter() < until:
                pass
        self._resumed_s = time.perf_counter()

    def end(self) -> None:
        pass


def _percentile(values: tuple[float, ...], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of raw samples, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class GenerationTiming:
    """The clock readings of one generate call, with what it produced."""

    e2e_s: float
    ttft_s: float
    itl_s: tuple[float, ...]
    generated_tokens: int
    kv_cache_bytes: int
    #: The calling thread's CPU time over the whole call, up to the first token, and per decode step.
    e2e_cpu_s: float = float("nan")
    ttft_cpu_s: float = float("nan")
    itl_cpu_s: tuple[float, ...] = ()
    #: SHA-256 of the generated token ids (``kvperf.gate.fingerprint.output_sha256``).
    output_sha256: str | None = None
    #: Joules the energy counter counted over the call (``kvperf.measure.energy``); None with the reason.
    energy_j: float | None = None
    energy_source: str | None = None
    energy_note: str | None = "energy was not measured"
    #: ``kv_cache_bytes`` per device the cache's tensors are on (empty with the cache off).
    kv_cache_bytes_by_device: dict[str, int] = field(default_factory=dict)
    #: Frames ``torch.compile`` compiled during the call; ``None`` for a mode that does not compile.
    recompiles: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    """What one measured generation case reports. Times in seconds, memory in bytes."""

    spec: GenerationSpec
    device: str
    dtype: str
    #: Wall time of the whole generate call, prefill included.
    e2e_s: float
    #: Time to first token: prefill plus the first token.
    ttft_s: float
    #: Inter-token latencies, one per decode step after the first token (``new_tokens - 1`` values).
    itl_s: tuple[float, ...] = field(repr=False)
    #: Time per output token after the first: ``(e2e_s - ttft_s) / (new_tokens - 1)``.
    tpot_s: float
    #: Generated tokens per second over the whole call: ``batch_size * new_tokens / e2e_s``.
    tokens_per_s: float
    #: Peak memory of the call, weights included (see ``kvperf.measure.memory``); -1 when not measured.
    peak_memory_bytes: int
    #: Bytes of the key/value tensors the cache holds after generation; 0 with the cache off.
    kv_cache_bytes: int
    #: Tokens generated, counted in the output: ``batch_size * new_tokens``.
    generated_tokens: int
    #: The timed thread's CPU time (``time.thread_time``) over the call, to the first token, and per
    #: output token after the first, read at the same moments as the wall clocks.
    e2e_cpu_s: float = float("nan")
    ttft_cpu_s: float = float("nan")
    tpot_cpu_s: float = float("nan")
    #: The parts of ``peak_memory_bytes`` (``kvperf.measure.memory.PeakMemory``): the weights, what the call
    #: itself had allocated at its peak, and of that the KV cache and everything else. ``None`` when
    #: not measured or not attributable (``peak_memory_note`` says why).
    weights_bytes: int | None = None
    peak_above_weights_bytes: int | None = None
    peak_kv_cache_bytes: int | None = None
    peak_activations_bytes: int | None = None
    peak_memory_note: str | None = None
    #: SHA-256 of the token ids the timed call generated (``kvperf.gate.fingerprint``): the same in every round
    #: of a case in one environment (greedy, seeded), so a comparison can tell when the output changed.
    output_sha256: str | None = None
    #: Joules of the whole call (prefill included) from the hardware's energy counter: NVML's for a GPU,
    #: RAPL's (the whole processor) on CPU; and per generated token. None where no counter could be read,
    #: with the reason in ``energy_note``; ``energy_source`` names the counter.
    energy_j: float | None = None
    energy_per_token_j: float | None = None
    energy_source: str | None = None
    energy_note: str | None = "energy was not measured"
    #: ``peak_memory_bytes`` per device the model uses (``cpu``, ``cuda:0``, ...; one entry unless a device
    #: map split the model), summing to it; empty when not measured.
    peak_memory_bytes_by_device: dict[str, int] = field(default_factory=dict)
    #: ``kv_cache_bytes`` per device the cache's tensors are on, summing to it; empty with the cache off.
    kv_cache_bytes_by_device: dict[str, int] = field(default_factory=dict)
    #: Compiled cache modes (``kvperf.measure.compiling``): the wall time of the untimed call that
    #: compiled, and the frames compiled during this timed call (0 when the warm-up covered compilation).
    #: ``None`` for modes that run eagerly, or when no compiling call was made; ``compile_note`` says why.
    compile_s: float | None = None
    recompiles: int | None = None
    compile_note: str | None = None

    @property
    def itl_p50_s(self) -> float:
        return _percentile(self.itl_s, 50)

    @property
    def itl_p95_s(self) -> float:
        return _percentile(self.itl_s, 95)

    @property
    def itl_p99_s(self) -> float:
        return _percentile(self.itl_s, 99)

    def summary(self) -> dict[str, Any]:
        """Every field except the raw latencies and the spec, plus the percentiles: flat JSON values."""
        data = asdict(self)
        data.pop("itl_s")
        data.pop("spec")
        data.update(itl_p50_s=self.itl_p50_s, itl_p95_s=self.itl_p95_s, itl_p99_s=self.itl_p99_s)
        return data


# Test-only hooks for kvperf's own regression-gate study (benchmarks/gate_study.py). Both are off
# unless their environment variable is set, and cost one dictionary lookup per generate call when off.
# Never set them in a real run: they make the measurements lie on purpose.
#
# KVPERF_TEST_DECODE_SLOWDOWN=0.1  every decode step busy-waits 10% of its own duration (in the
#                                  token clock, so only timed calls slow down; TTFT is unchanged).
# KVPERF_TEST_FORCE_CACHE_OFF=1    ``cache="on"`` specs run with ``use_cache=False``, still labelled
#                                  ``on``: the silently disabled cache the deterministic metrics catch.


def _test_decode_slowdown() -> float:
    raw = os.environ.get("KVPERF_TEST_DECODE_SLOWDOWN")
    return float(raw) if raw else 0.0


def _test_force_cache_off() -> bool:
    return os.environ.get("KVPERF_TEST_FORCE_CACHE_OFF", "") not in ("", "0")


def generate_kwargs(model: PreTrainedModel, spec: GenerationSpec) -> dict[str, Any]:
    """The arguments kvperf passes to ``model.generate`` for ``spec`` (inputs excluded)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": spec.new_tokens,
        # No EOS, so nothing stops a sequence early, and no per-step min-length processors: the
        # token count is fixed and checked after the call (see the module docstring).
        "eos_token_id": None,
        "do_sample": False,
        "num_beams": 1,
        "use_cache": spec.cache != "off" and not (spec.cache == "on" and _test_force_cache_off()),
        "return_dict_in_generate": True,
        "pad_token_id": pad_token_id(model.config),
    }
    kwargs.update(cache_mode_kwargs(model.config, spec.cache, input_device(model).type))
    return kwargs


#: What ``generate`` keeps on a model between static-cache calls, by release: from 5.15 the largest
#: ``max_cache_len`` of earlier calls (``_previous_max_cache_length``), before it the static cache
#: itself (``_cache``), reused and reset whenever it is at least as long and as wide as the new call needs.
_STATIC_CACHE_MEMORY = ("_previous_max_cache_length", "_cache")


def forget_static_cache(model: PreTrainedModel) -> None:
    """Make the next static ``generate`` call on ``model`` build a cache sized for its own spec alone.

    transformers keeps, on the model, either the static cache of an earlier call or its length, so
    that ``torch.compile`` is spared a recompilation. kvperf does not compile, and a case's KV bytes
    and peak memory must not depend on which cases ran before it. Whatever of the two this release
    keeps is dropped (both are looked for: a feature, not a version number, decides)."""
    for name in _STATIC_CACHE_MEMORY:
        if name in vars(model):
            delattr(model, name)


def _prepared_generate(model: PreTrainedModel, spec: GenerationSpec, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, **extra: Any) -> Callable[[], Any]:
    """The ``generate`` call for ``spec``, with everything before it done: the static cache of an earlier
    call dropped and the arguments built (a quantized mode sizes its groups from the config), so that
    a timed call's clocks see ``generate`` alone."""
    if spec.cache in STATIC_MODES:
        forget_static_cache(model)
    kwargs = generate_kwargs(model, spec)
    generate: Any = model.generate  # typed as a Tensor attribute by torch's nn.Module stubs
    return lambda: generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs, **extra)


def _generate(model: PreTrainedModel, spec: GenerationSpec, input_ids: torch.Tensor,
              attention_mask: torch.Tensor, **extra: Any) -> Any:
    return _prepared_generate(model, spec, input_ids, attention_mask, **extra)()


def count_generated_tokens(sequences: torch.Tensor, prompt_len: int) -> int:
    """Tokens generated per the output: every position after the prompt, summed over the batch.

    EOS stopping is off in every kvperf call, so no row ends early and nothing after the prompt is
    padding."""
    return int(sequences[:, prompt_len:].numel())


def _count_generated(out: Any, prompt_len: int, spec: GenerationSpec) -> int:
    generated = count_generated_tokens(out.sequences, prompt_len)
    if generated != spec.batch_size * spec.new_tokens:
        raise RuntimeError(f"generate produced {generated} tokens, expected {spec.batch_size} x "
                           f"{spec.new_tokens}: a stopping criterion ended the call early")
    return generated


def time_generation(
    model: PreTrainedModel,
    spec: GenerationSpec,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    energy: EnergyMeter | None = None,
) -> GenerationTiming:
    """Time one ``generate`` call for ``spec`` on the given prompts (no warm-up, no memory pass).

    ``energy``: a meter of the device's energy counter (``kvperf.measure.energy.energy_meter``), read
    right before the start clocks and right after the end clocks; without one the energy is None."""
    devices = model_devices(model)  # every one of them is synchronised before each clock read
    clock = _TokenClock(devices, slowdown=_test_decode_slowdown())
    call = _prepared_generate(model, spec, input_ids, attention_mask, streamer=clock)
    synchronize(devices)
    if energy is not None:
        energy.start()  # counter read 1: after the sync, before the clocks start
    frames = compiled_frames() if spec.cache in COMPILED_MODES else None
    start = time.perf_counter()
    start_cpu = time.thread_time()
    out = call()
    synchronize(devices)
    end = time.perf_counter()
    end_cpu = time.thread_time()
    reading = energy.stop() if energy is not None else None  # counter read 2: after the clocks stop
    recompiles = None if frames is None else compiled_frames() - frames
    generated = _count_generated(out, input_ids.shape[1], spec)
    stamps = clock.stamps_s
    if len(stamps) != spec.new_tokens:
        raise RuntimeError(f"expected {spec.new_tokens} streamed steps, got {len(stamps)}")
    kv_by_device = measure_cache_bytes_by_device(returned_cache(out)) if spec.cache != "off" else {}
    return GenerationTiming(
        e2e_s=end - start,
        ttft_s=stamps[0] - start,
        itl_s=tuple(b - a for a, b in pairwise(stamps)),
        generated_tokens=generated,
        kv_cache_bytes=sum(kv_by_device.values()),
        e2e_cpu_s=end_cpu - start_cpu,
        ttft_cpu_s=clock.cpu_stamps_s[0] - start_cpu,
        itl_cpu_s=tuple(b - a for a, b in pairwise(clock.cpu_stamps_s)),
        output_sha256=output_sha256(out.sequences, input_ids.shape[1]),
        energy_j=reading.energy_j if reading is not None else None,
        energy_source=reading.source if reading is not None else None,
        energy_note=reading.note if reading is not None else "energy was not measured (no meter given)",
        kv_cache_bytes_by_device=kv_by_device,
        recompiles=recompiles,
    )


def eager_spec(spec: GenerationSpec) -> GenerationSpec:
    """``spec`` with its cache run eagerly (``kvperf.measure.cache_modes.eager_mode``): what the memory and
    FLOP passes run, since dispatch modes cannot look inside compiled kernels."""
    mode = eager_mode(spec.cache)
    return spec if mode == spec.cache else replace(spec, cache=mode)  # type: ignore[arg-type]


def warm_compile(model: PreTrainedModel, spec: GenerationSpec, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> CompileWarmup | None:
    """For a compiled cache mode, make the call that compiles, untimed, and time it
    (``kvperf.measure.compiling``); ``None`` for other modes."""
    if spec.cache not in COMPILED_MODES:
        return None
    devices = model_devices(model)

    def call() -> None:
        _generate(model, spec, input_ids, attention_mask)
        synchronize(devices)

    return compile_warmup(call)


def measure_peak_memory(model: PreTrainedModel, spec: GenerationSpec, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> PeakMemory:
    """Peak memory of one untimed generate call for ``spec``, in parts (see ``kvperf.measure.memory``).

    A compiled mode is measured eagerly (``eager_spec``): the same cache, but the activations of
    eager kernels, which inductor's fused ones may not allocate; the note says so."""
    eager = eager_spec(spec)
    _, peak = measure_peak(lambda: _generate(model, eager, input_ids, attention_mask), model)
    if eager is not spec:
        note = (f"measured in an eager {eager.cache!r} call with the same cache: torch.compile's fused kernels "
                "may allocate fewer intermediates")
        peak = replace(peak, note=f"{peak.note}; {note}" if peak.note else note)
    return peak


def _compile_note(spec: GenerationSpec, compiled: CompileWarmup | None) -> str | None:
    if spec.cache not in COMPILED_MODES:
        return f"cache {spec.cache!r} runs eagerly: nothing is compiled"
    if compiled is None:
        return "no separate compiling call was made, so compilation may be inside the timed call (see recompiles)"
    return None


def result_from_timing(model: PreTrainedModel, spec: GenerationSpec, timing: GenerationTiming,
                       peak: PeakMemory | None, compiled: CompileWarmup | None = None) -> GenerationResult:
    """Assemble a ``GenerationResult`` from one timed call, a memory measurement (``None``: not
    measured) and, for a compiled mode, the call that compiled (``warm_compile``)."""
    param = next(model.parameters())
    decode_steps = spec.new_tokens - 1
    return GenerationResult(
        spec=spec,
        device=str(input_device(model)),
        dtype=str(param.dtype).removeprefix("torch."),
        e2e_s=timing.e2e_s,
        ttft_s=timing.ttft_s,
        itl_s=timing.itl_s,
        tpot_s=(timing.e2e_s - timing.ttft_s) / decode_steps,
        tokens_per_s=timing.generated_tokens / timing.e2e_s,
        peak_memory_bytes=peak.total_bytes if peak is not None else -1,
        kv_cache_bytes=timing.kv_cache_bytes,
        generated_tokens=timing.generated_tokens,
        e2e_cpu_s=timing.e2e_cpu_s,
        ttft_cpu_s=timing.ttft_cpu_s,
        tpot_cpu_s=(timing.e2e_cpu_s - timing.ttft_cpu_s) / decode_steps,
        weights_bytes=peak.weights_bytes if peak is not None else None,
        peak_above_weights_bytes=peak.peak_above_weights_bytes if peak is not None else None,
        peak_kv_cache_bytes=peak.peak_kv_cache_bytes if peak is not None else None,
        peak_activations_bytes=peak.peak_activations_bytes if peak is not None else None,
        peak_memory_note=peak.note if peak is not None else "peak memory was not measured",
        output_sha256=timing.output_sha256,
        energy_j=timing.energy_j,
        energy_per_token_j=timing.energy_j / timing.generated_tokens if timing.energy_j is not None else None,
        energy_source=timing.energy_source,
        energy_note=timing.energy_note,
        peak_memory_bytes_by_device=peak.total_bytes_by_device if peak is not None else {},
        kv_cache_bytes_by_device=dict(timing.kv_cache_bytes_by_device),
        compile_s=compiled.compile_s if compiled is not None else None,
        recompiles=timing.recompiles,
        compile_note=_compile_note(spec, compiled),
    )


def model_energy_meter(model: PreTrainedModel) -> EnergyMeter:
    """The energy meter of the device ``model`` computes on. A model spread over several GPUs gets none,
    with the reason: kvperf reads one GPU's counter, and one GPU's share is not the call's energy."""
    gpus = [str(d) for d in model_devices(model) if d.type == "cuda"]
    if len(gpus) > 1:
        return EnergyMeter(None, f"the model spans {len(gpus)} GPUs ({', '.join(gpus)}): kvperf reads one "
                                 "GPU's energy counter, and one GPU's share is not the call's energy")
    return energy_meter(str(input_device(model)))


def run_generation(
    model: PreTrainedModel,
    spec: GenerationSpec,
    *,
    warmup_runs: int = 1,
    measure_memory: bool = True,
) -> GenerationResult:
    """Warm up, time one ``generate`` call for ``spec`` (reading the device's energy counter around it),
    then measure its peak memory untimed."""
    input_ids, attention_mask = make_prompts(model, spec)
    compiled = warm_compile(model, spec, input_ids, attention_mask)  # a compiled mode's first call, apart
    for _ in range(warmup_runs):
        _generate(model, spec, input_ids, attention_mask)
    with model_energy_meter(model) as meter:
        timing = time_generation(model, spec, input_ids, attention_mask, energy=meter)
    peak = measure_peak_memory(model, spec, input_ids, attention_mask) if measure_memory else None
    return result_from_timing(model, spec, timing, peak, compiled)
