"""Every cache mode: the generate arguments it selects, where it runs, and why it is skipped where it
cannot (``kvperf.measure.cache_modes``, ``kvperf.features``, ``kvperf.measure.compiling``)."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace
from typing import Any

import pytest
import torch
from transformers import CompileConfig

from kvperf.errors import UsageError
from kvperf.features import missing_cache_implementation, missing_compiler
from kvperf.kv.kv_size import Quantization, estimate_kv_cache, mode_quantization, spec_kv_cache_bytes
from kvperf.measure import compiling
from kvperf.measure.cache_modes import CACHE_IMPLEMENTATIONS, cache_mode_kwargs, cache_unavailable, eager_mode
from kvperf.measure.harness import GenerationTiming, eager_spec, result_from_timing
from kvperf.models import load_config
from kvperf.spec import CACHE_MODES, GenerationSpec
from kvperf.tiers import TIERS

GPT2 = load_config("tiny-gpt2")  # kv_heads x head_dim = 64
GQA = load_config("tiny-llama-gqa")  # 2 x 16 = 32
SLIDING = load_config("tiny-mistral-sliding")


def test_every_mode_has_an_implementation_in_the_spec_order() -> None:
    assert tuple(CACHE_IMPLEMENTATIONS) == CACHE_MODES
    for mode in CACHE_MODES:
        GenerationSpec(cache=mode)  # type: ignore[arg-type]  # every mode is a valid spec


@pytest.mark.parametrize(("mode", "device", "expected"), [
    ("on", "cpu", {}),
    ("off", "cpu", {}),
    ("static", "cpu", {"cache_implementation": "static"}),
    # On an accelerator transformers compiles a static generate by itself: static stays eager.
    ("static", "cuda", {"cache_implementation": "static", "disable_compile": True}),
    ("offloaded", "cuda", {"cache_implementation": "offloaded"}),
    ("offloaded_static", "cuda", {"cache_implementation": "offloaded_static", "disable_compile": True}),
    ("fp8", "cpu", {"cache_implementation": "quantized", "cache_config": {"backend": "fp8"}}),
    ("quanto", "cpu", {"cache_implementation": "quantized", "cache_config": {
        "backend": "quanto", "nbits": 4, "q_group_size": 64, "residual_length": 128}}),
    ("hqq", "cpu", {"cache_implementation": "quantized", "cache_config": {
        "backend": "hqq", "nbits": 4, "q_group_size": 64, "residual_length": 128}}),
])
def test_generate_arguments_of_each_mode(mode: str, device: str, expected: dict[str, Any]) -> None:
    assert cache_mode_kwargs(GPT2, mode, device) == expected


def test_quantized_group_size_divides_the_cache_width() -> None:
    """quanto refuses a group that does not divide kv_heads x head_dim: 32 for the GQA preset."""
    assert cache_mode_kwargs(GQA, "quanto", "cpu")["cache_config"]["q_group_size"] == 32
    assert mode_quantization("quanto", GQA) == Quantization("quanto", 4, 32, 128)
    assert mode_quantization("static", GQA) is None


def test_compiled_mode_compiles_on_cpu_with_the_default_mode() -> None:
    """reduce-overhead (CUDA graphs) does not exist on a CPU; on CUDA transformers' default is kept."""
    cpu = cache_mode_kwargs(GPT2, "compiled", "cpu")
    assert cpu["cache_implementation"] == "static"
    assert cpu["compile_config"].mode == "default" and cpu["compile_config"]._compile_all_devices is True
    cuda = cache_mode_kwargs(GPT2, "compiled", "cuda")["compile_config"]
    assert cuda.to_dict() == CompileConfig().to_dict() and not cuda._compile_all_devices


def test_offloaded_caches_are_skipped_off_cuda_with_the_reason() -> None:
    for mode in ("offloaded", "offloaded_static"):
        reason = cache_unavailable(mode, "cpu")
        assert reason is not None and "needs cuda" in reason and "this run is on cpu" in reason
        assert cache_unavailable(mode, "cuda") is None  # this release has both implementations


def test_quantized_cache_refuses_sliding_layers_by_name() -> None:
    # quanto: the backend every supported release has (fp8 needs 5.21, and says so first)
    assert cache_unavailable("quanto", "cpu", SLIDING) == (
        "cache 'quanto' (QuantizedCache) holds full-attention layers only, and this mistral model has layers of "
        "window 16: use cache on or static for it")
    assert cache_unavailable("quanto", "cpu", GPT2) is None


def test_missing_backend_package_is_the_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "hqq" else real(name, *args))
    assert cache_unavailable("hqq", "cpu") == "the hqq backend needs hqq, which is not installed: pip install hqq"


def test_missing_cache_implementation_names_the_release() -> None:
    assert missing_cache_implementation("offloaded") is None
    reason = missing_cache_implementation("paged_offloaded")
    assert reason is not None and "has no cache_implementation='paged_offloaded'" in reason
    assert reason.endswith("pip install -U transformers")


def test_compiled_mode_without_a_cpp_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    reason = missing_compiler("cpu")
    assert reason is not None and reason.startswith("torch.compile's inductor needs a C++ compiler")
    assert cache_unavailable("compiled", "cpu") == reason
    assert missing_compiler("cuda") is None  # inductor's GPU kernels are Triton, not C++


def test_compiled_mode_without_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo.eval_frame as eval_frame

    monkeypatch.setattr(eval_frame, "is_dynamo_supported", lambda: False)
    assert cache_unavailable("compiled", "cuda") == (
        "torch.compile (TorchDynamo) does not support this Python; use a Python that torch.compile supports")


def test_formula_of_each_mode() -> None:
    """Compiled and offloaded caches hold what their eager, on-device twins hold; HQQ is null with why."""
    spec = GenerationSpec(batch_size=2, prompt_len=32, new_tokens=8)
    bytes_of = {mode: spec_kv_cache_bytes(GQA, replace(spec, cache=mode), "float32")  # type: ignore[arg-type]
                for mode in CACHE_MODES if mode != "hqq"}
    assert bytes_of["compiled"] == bytes_of["offloaded_static"] == bytes_of["static"]
    assert bytes_of["offloaded"] == bytes_of["on"] and bytes_of["off"] == 0
    assert bytes_of["quanto"] == estimate_kv_cache(GQA, 2, 39, cache="quantized", prompt_len=32,
                                                   quantization=Quantization("quanto", 4, 32, 128)).total_bytes
    assert bytes_of["fp8"] == estimate_kv_cache(GQA, 2, 39, cache="quantized",
                                                quantization=Quantization("fp8")).total_bytes
    with pytest.raises(UsageError, match="does not size HQQ"):
        spec_kv_cache_bytes(GQA, replace(spec, cache="hqq"))


def test_memory_and_flop_passes_run_compiled_modes_eagerly() -> None:
    spec = GenerationSpec(cache="compiled")
    assert eager_mode("compiled") == "static" and eager_spec(spec) == replace(spec, cache="static")
    assert eager_spec(GenerationSpec(cache="quanto")).cache == "quanto"


def test_compile_warmup_counts_the_frames_it_compiled() -> None:
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    compiled = torch.compile(twice, backend="eager")
    warmup = compiling.compile_warmup(lambda: compiled(torch.ones(3)))
    assert warmup.compiled_frames == 1 and warmup.compile_s > 0
    # TorchDynamo was reset: the same shapes compile again, so compile_s is never a cached call's.
    assert compiling.compile_warmup(lambda: compiled(torch.ones(3))).compiled_frames == 1
    before = compiling.compiled_frames()
    compiled(torch.ones(3))
    assert compiling.compiled_frames() == before  # no recompilation for the same shapes


@pytest.mark.parametrize(("counts", "done", "tried"), [([(5, 5), (5, 5)], 0, 0), ([(5, 5), (7, 6)], 1, 2)])
def test_compile_warmup_refuses_a_call_that_did_not_compile(monkeypatch: pytest.MonkeyPatch,
                                                            counts: list[tuple[int, int]], done: int,
                                                            tried: int) -> None:
    """Nothing compiled (recompile limit reached), or a frame given up: the case would time eager code."""
    readings = iter(counts)
    monkeypatch.setattr(compiling, "frame_counts", lambda: next(readings))
    with pytest.raises(RuntimeError, match=f"compiled {done} of the {tried} frame"):
        compiling.compile_warmup(lambda: None)


def _timing(recompiles: int | None) -> GenerationTiming:
    return GenerationTiming(e2e_s=1.0, ttft_s=0.1, itl_s=(0.3, 0.3, 0.3), generated_tokens=4, kv_cache_bytes=8,
                            recompiles=recompiles)


class _Model:
    def parameters(self) -> Any:
        return iter([torch.zeros(1)])


def test_result_reports_compile_time_apart_or_says_why_not() -> None:
    spec = GenerationSpec(cache="compiled", prompt_len=4, new_tokens=4)
    model: Any = _Model()
    result = result_from_timing(model, spec, _timing(0), None, compiling.CompileWarmup(12.5, 3))
    assert (result.compile_s, result.recompiles, result.compile_note) == (12.5, 0, None)
    missing = result_from_timing(model, spec, _timing(2), None)
    assert missing.compile_s is None and missing.recompiles == 2 and "no separate compiling call" in str(
        missing.compile_note)
    eager = result_from_timing(model, replace(spec, cache="static"), _timing(None), None)
    assert (eager.compile_s, eager.recompiles, eager.compile_note) == (
        None, None, "cache 'static' runs eagerly: nothing is compiled")


def test_tiers_keep_the_baseline_cases_and_add_the_caches() -> None:
    """The quick tier's matrix is what the committed baseline holds; compiled, the slow one, is full/cpu only."""
    quick = TIERS["quick"]
    assert [s.cache for s in quick.specs("matrix")][::4] == ["on", "static", "off"]
    assert "compiled" not in quick.cache_modes and {"quanto", "hqq", "fp8", "offloaded"} <= set(quick.cache_modes)
    for name in ("full", "cpu"):
        assert set(TIERS[name].cache_modes) == set(CACHE_MODES) - {"off"}
    sliding = quick.cases("sliding", ("float32",))
    assert [(c.spec.cache, c.model) for c in sliding] == [("on", "tiny-mistral-sliding"),
                                                          ("static", "tiny-mistral-sliding")]
    assert all(c.spec.prompt_len > 16 for c in sliding)  # longer than the window: the cache evicts
    assert all(c.model is None for c in quick.cases("caches", ("float32",)))


def test_committed_quick_baseline_still_matches_the_quick_tier() -> None:
    """Every case of the committed quick baseline is still a quick-tier case with the same id, and every
    quick-tier case is in it, or listed there as skipped (a cache this machine cannot run) (the
    harness-overhead cases are not the tier's)."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "baselines"
    files = [json.loads(path.read_text()) for path in root.glob("*/quick.json")]
    assert files
    quick = TIERS["quick"]
    tier = {f"test_{e}[{c.id}]" for e in quick.experiments for c in quick.cases(e, ("float32", "bfloat16"))}
    for data in files:
        names = {b["name"] for b in data["benchmarks"]
                 if b["name"].startswith(tuple(f"test_{e}[" for e in quick.experiments))}
        skipped = {case["name"] for case in data.get("kvperf_skipped_cases") or []}
        assert names <= tier
        assert tier - names == skipped


def test_static_cache_of_values_narrower_than_keys_is_refused_where_transformers_cannot_hold_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a release whose StaticLayer allocates values at the keys' width (4.57), a model with narrower
    values gets the reason, naming the release it needs, instead of transformers' index_copy_ error;
    on later releases it runs."""
    from kvperf.features import static_values_have_their_own_width
    from kvperf.kv.families import tiny_config
    from kvperf.measure import cache_modes

    config = tiny_config("deepseek_v2")
    config.v_head_dim = config.qk_nope_head_dim  # narrower than the keys' nope + rope dims
    reason = cache_unavailable("static", "cpu", config)
    if static_values_have_their_own_width():
        assert reason is None
    else:
        assert reason is not None and "needs transformers 5.0 or newer" in reason
    monkeypatch.setattr(cache_modes, "static_values_have_their_own_width", lambda: False)
    for mode in ("static", "compiled"):
        reason = cache_unavailable(mode, "cpu", config)
        assert reason is not None and reason.startswith("a static cache of this deepseek_v2 model holds keys ")
    assert cache_unavailable("on", "cpu", config) is None
    assert cache_unavailable("static", "cpu", GPT2) is None  # keys and values of one width
