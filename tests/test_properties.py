"""Greedy generation with the KV cache equals generation without it, and broken caches are caught.

Notation: a *case* is a model, a batch of prompts (rows may be left-padded) and a number of new
tokens. ``c[t]`` and ``u[t]`` are one row's scores at step ``t`` (the processed float32 logits that
greedy's argmax sees) with the cache and without it. ``eps`` is torch's machine epsilon of the model
dtype (2**-23, 2**-7, 2**-10 for float32, bfloat16, float16) and ``scale[t] = max_v |u[t][v]|`` over
the finite entries.

**P1, float32 tokens.** For every case, greedy ``generate`` with the cache (dynamic or static)
returns the same token ids as with ``use_cache=False``: every row, every step.

**P2, low-precision tokens (bfloat16, float16).** Both paths round differently, so where the two best
tokens are about as close as that rounding either path may pick either, and the rows then share
nothing. Per row: let ``t*`` be the first step where the uncached top-2 margin
``u[t][top1] - u[t][top2] < TOKEN_TOL[dtype] * eps * scale[t]`` (the number of new tokens if there is
none). The cached tokens equal the uncached ones at every step ``t < t*``; nothing is claimed at ``t*``
or after. Rows are independent (each row's numbers come from that row alone).

**P3, scores on the same prefix (every dtype).** Per row and step, let ``u[t]`` be computed by
uncached ``generate`` on the *cached* run's own prefix (teacher forcing). Then
``max_v |c[t][v] - u[t][v]| <= DELTA[dtype] * eps * scale[t]``.

P3 is the premise of P2: while the prefixes agree, a margin above twice the largest score error
fixes the argmax, hence ``TOKEN_TOL = 2 * DELTA``, and by induction the prefixes agree until ``t*``.
``DELTA`` is measured, with headroom: over 1,000 random cases (9,564 row-steps per dtype, dynamic
and static caches) the largest ``max_v |c - u| / (eps * scale)`` was 48 in float32, 5.9 in bfloat16
and 9.5 in float16, with 99.9th percentiles of 33, 2.1 and 2.9 (see the issue-3 note); hence
``DELTA`` = 128, 12 and 24. The tail is long, so P2's horizon ``t*`` is often short in low
precision; P3 checks every step and keeps its power there.

**The properties can fail.** ``test_*_catch*`` run them against caches that keep a stale value,
return past values permuted, or return past keys one position late, and assert that they fail. The
models come from ``kvperf.kv.configs.build_model``, whose ``init_weights`` makes attention far from
uniform; with transformers' default init (std 0.02) a broken cache often changes no token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from transformers import DynamicCache, cache_utils
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from kvperf.features import missing_state_layers, static_values_have_their_own_width
from kvperf.kv.configs import SmallConfig, build_model, small_configs
from kvperf.kv.families import tiny_model
from kvperf.kv.kv_size import KvShape, cache_kwarg, estimate_kv_cache, measure_layer_bytes, returned_cache
from kvperf.measure.harness import generate_kwargs
from kvperf.measure.prompts import make_prompts
from kvperf.spec import GenerationSpec

#: Bound on max |cached - uncached| score error, in units of eps(dtype) * max |score| (P3).
DELTA: dict[torch.dtype, float] = {torch.float32: 128.0, torch.bfloat16: 12.0, torch.float16: 24.0}
#: Top-2 margins below this many eps(dtype) * max |score| are too close to call (P2).
TOKEN_TOL: dict[torch.dtype, float] = {dtype: 2 * delta for dtype, delta in DELTA.items()}


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Case:
    """One example: a model, a generation spec, and the left padding of each row."""

    small: SmallConfig
    spec: GenerationSpec
    left_pad: tuple[int, ...]
    model_seed: int = 0


@st.composite
def cases(draw: st.DrawFn, caches: tuple[str, ...] = ("on", "static")) -> Case:
    # Windows of 1 are left out: transformers' dynamic sliding layer keeps every position then,
    # and its output is wrong (test_sliding_window_of_one_is_a_transformers_defect).
    small = draw(small_configs(min_window=2))
    batch = draw(st.integers(1, 3))
    prompt = draw(st.integers(1, 16))
    spec = GenerationSpec(cache=draw(st.sampled_from(caches)), batch_size=batch, prompt_len=prompt,
                          new_tokens=draw(st.integers(2, 10)), seed=draw(st.integers(0, 1000)))
    left_pad = tuple(draw(st.lists(st.integers(0, prompt - 1), min_size=batch, max_size=batch)))
    return Case(small, spec, left_pad, model_seed=draw(st.integers(0, 1000)))


@dataclass(frozen=True)
class Run:
    """A case run with the cache and without it."""

    case: Case
    dtype: torch.dtype
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    cached: Any
    uncached: Any

    def tokens(self, out: Any, row: int, step: int) -> int:
        return int(out.sequences[row, self.prompt_ids.shape[1] + step])


def _greedy(model: Any, spec: GenerationSpec, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            cache: Any = None, new_tokens: int | None = None) -> Any:
    kwargs = {**generate_kwargs(model, spec), "output_scores": True}
    if new_tokens is not None:
        kwargs.update(max_new_tokens=new_tokens)
    if cache is not None:
        kwargs[cache_kwarg()] = cache
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def run_case(model: Any, case: Case, cache_factory: Callable[[], Any] | None = None) -> Run:
    """Generate ``case`` with the cache and without. ``cache_factory`` makes the cache passed as
    ``past_key_values`` (a broken one, in the mutation tests); by default ``generate`` makes its own."""
    input_ids, attention_mask = make_prompts(model, case.spec, left_pad=case.left_pad)
    uncached = _greedy(model, replace(case.spec, cache="off"), input_ids, attention_mask)
    cached = _greedy(model, case.spec, input_ids, attention_mask,
                     cache=cache_factory() if cache_factory is not None else None)
    return Run(case, model.dtype, input_ids, attention_mask, cached, uncached)


def _scale(scores: torch.Tensor, multiple: float, dtype: torch.dtype) -> float:
    return multiple * torch.finfo(dtype).eps * float(scores[torch.isfinite(scores)].abs().max())


def token_violation(run: Run) -> str | None:
    """P1 (float32) or P2 (low precision): the first forbidden token difference, described, or None."""
    for row in range(run.case.spec.batch_size):
        for step in range(run.case.spec.new_tokens):
            scores = run.uncached.scores[step][row]
            top2 = scores.topk(2).values
            margin = float(top2[0] - top2[1])
            tol = _scale(scores, TOKEN_TOL[run.dtype], run.dtype) if run.dtype != torch.float32 else 0.0
            if margin < tol:  # t* of this row: nothing is claimed from here on
                break
            want, got = run.tokens(run.uncached, row, step), run.tokens(run.cached, row, step)
            if want != got:
                return (f"row {row}, step {step}: cached token {got} != uncached {want} "
                        f"(uncached top-2 margin {margin:.4g}, tolerance {tol:.4g})")
    return None


def score_violation(model: Any, run: Run) -> str | None:
    """P3: the first step whose cached scores leave the uncached scores of the same prefix by more
    than ``DELTA``, described, or None. One uncached one-token ``generate`` per step."""
    spec = replace(run.case.spec, cache="off")
    prompt = run.prompt_ids.shape[1]
    sequences = run.cached.sequences
    for step in range(spec.new_tokens):
        mask = torch.cat([run.prompt_mask, torch.ones_like(sequences[:, prompt:prompt + step])], dim=1)
        teacher = _greedy(model, spec, sequences[:, :prompt + step], mask, new_tokens=1).scores[0]
        for row in range(spec.batch_size):
            cached, uncached = run.cached.scores[step][row], teacher[row]
            finite = torch.isfinite(uncached)
            error = float((cached - uncached)[finite].abs().max()) if bool(finite.any()) else 0.0
            bound = _scale(uncached, DELTA[run.dtype], run.dtype)
            if not torch.equal(finite, torch.isfinite(cached)) or error > bound:
                return f"row {row}, step {step}: |cached - uncached| = {error:.4g} > {bound:.4g}"
    return None


# --- the properties -----------------------------------------------------------------------------------


@given(case=cases())
def test_p1_cached_tokens_equal_uncached_float32(case: Case) -> None:
    """P1: identical token ids in float32, dynamic and static cache, left padding included."""
    model = build_model(case.small, "float32", seed=case.model_seed)
    violation = token_violation(run_case(model, case))
    assert violation is None, violation


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@given(case=cases())
def test_p2_cached_tokens_equal_uncached_until_close_call(dtype: str, case: Case) -> None:
    """P2: identical token ids before each row's first step with an uncached top-2 margin below
    ``TOKEN_TOL[dtype] * eps * max |score|``."""
    model = build_model(case.small, dtype, seed=case.model_seed)
    violation = token_violation(run_case(model, case))
    assert violation is None, violation


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@given(case=cases())
def test_p3_cached_scores_match_uncached_on_same_prefix(dtype: str, case: Case) -> None:
    """P3: at every step, cached scores are within ``DELTA[dtype] * eps * max |score|`` of the
    uncached scores computed on the same prefix."""
    model = build_model(case.small, dtype, seed=case.model_seed)
    violation = score_violation(model, run_case(model, case))
    assert violation is None, violation


def test_sliding_window_of_one_is_a_transformers_defect() -> None:
    """transformers keeps ``keys[..., -w + 1:, :]``; for w = 1 that is every position, and the dynamic
    cache's tokens leave the uncached ones. The static cache is right. If this starts to fail,
    transformers fixed it: let ``cases`` draw windows of 1 and update kv_size's formula."""
    small = SmallConfig("mistral", 2, 2, 1, 8, 64, sliding_window=1)
    model = build_model(small, "float32", seed=3)
    spec = GenerationSpec(cache="on", batch_size=2, prompt_len=9, new_tokens=8)
    assert token_violation(run_case(model, Case(small, spec, (3, 0)))) is not None
    assert token_violation(run_case(model, Case(small, replace(spec, cache="static"), (3, 0)))) is None


#: Fixed cases for the cache modes that are too slow (compiled) or need a GPU (offloaded) to be drawn by
#: hypothesis: full attention with left padding, and a sliding window shorter than the prompt. The
#: quantized modes are left out on purpose: they change the scores by design, so P1 does not hold.
FIXED_CASES = (
    Case(SmallConfig("llama", 2, 4, 2, 8, 64), GenerationSpec(batch_size=2, prompt_len=7, new_tokens=6, seed=1),
         (0, 3)),
    Case(SmallConfig("mistral", 2, 4, 2, 8, 64, sliding_window=4),
         GenerationSpec(batch_size=1, prompt_len=9, new_tokens=6, seed=2), (0,)),
)


def _compiled_violation(case: Case, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """P1's violation for ``case`` run with ``cache="compiled"``, compiled with the ``aot_eager`` backend
    (TorchDynamo and AOTAutograd without inductor's C++ build: seconds, not a minute)."""
    from transformers import CompileConfig

    from kvperf.measure import cache_modes
    from kvperf.measure.compiling import compiled_frames

    def aot_eager(device_type: str) -> CompileConfig:
        config = CompileConfig(backend="aot_eager", mode=None)
        config._compile_all_devices = True  # type: ignore[assignment]
        return config

    monkeypatch.setattr(cache_modes, "_compile_config", aot_eager)
    torch._dynamo.reset()  # a fresh model per case: no recompile limit carried over from other tests
    model = build_model(case.small, "float32", seed=case.model_seed)
    compiled = replace(case, spec=replace(case.spec, cache="compiled"))
    before = compiled_frames()
    violation = token_violation(run_case(model, compiled))
    assert compiled_frames() > before  # the cached run went through torch.compile
    return violation


@pytest.mark.parametrize("case", FIXED_CASES, ids=["llama-left-pad", "mistral-sliding"])
def test_p1_compiled_static_cache_equals_uncached(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """P1 for ``cache="compiled"``: transformers' compiled decode path (TorchDynamo's capture of the static
    cache's in-place updates, AOTAutograd) gives the uncached tokens. Inductor's generated kernels take a
    minute to build on a CPU; their output is checked in ``benchmarks/caches_study.py`` (the compiled
    case's output hash equals the eager static one's)."""
    violation = _compiled_violation(case, monkeypatch)
    assert violation is None, violation


@pytest.mark.parametrize("case", FIXED_CASES, ids=["llama-left-pad", "mistral-sliding"])
def test_p1_compiled_catches_a_broken_static_cache(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same property fails when the compiled static cache reads each key one position late (the
    broken update is traced into the compiled graph like the real one), for full and sliding layers."""
    from transformers import cache_utils

    def shifted_keys(original: Callable[..., Any]) -> Callable[..., Any]:
        def update(self: Any, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = original(self, key_states, value_states, *args, **kwargs)
            if key_states.shape[-2] == 1:
                keys = torch.roll(keys, shifts=1, dims=-2)
            return keys, values
        return update

    for name in ("StaticLayer", "StaticSlidingWindowLayer"):
        layer_class = getattr(cache_utils, name, None)
        if layer_class is not None and "update" in vars(layer_class):
            monkeypatch.setattr(layer_class, "update", shifted_keys(layer_class.update))
    assert _compiled_violation(case, monkeypatch) is not None


@pytest.mark.gpu
@pytest.mark.parametrize("cache", ["offloaded", "offloaded_static"])
@pytest.mark.parametrize("case", FIXED_CASES, ids=["llama-left-pad", "mistral-sliding"])
def test_p1_offloaded_caches_equal_uncached(case: Case, cache: str) -> None:
    """P1 for the offloaded caches, which need CUDA (layers travel between the GPU and the CPU)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU, and torch.cuda.is_available() is False here")
    model = build_model(case.small, "float32", seed=case.model_seed).to("cuda")
    violation = token_violation(run_case(model, replace(case, spec=replace(case.spec, cache=cache))))
    assert violation is None, violation


# --- broken caches: the properties must fail on them ----------------------------------------------------


class StaleValuesLayer(DynamicLayer):
    """A decode step uses its own value, but stores a copy of the previous position's value: later
    steps read a stale value there (a lost write)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        decoding = self.get_seq_length() > 0 and key_states.shape[-2] == 1
        keys, values = super().update(key_states, value_states)
        if decoding:
            self.values = torch.cat([values[..., :-1, :], values[..., -2:-1, :]], dim=-2)
        return keys, values


class PermutedValuesLayer(DynamicLayer):
    """Returns the past values in reverse order while the keys stay in place. (Permuting keys and
    values together would change nothing: attention is a weighted sum over a set.)"""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states)
        if key_states.shape[-2] == 1 and values.shape[-2] > 2:
            values = torch.cat([values[..., :-1, :].flip(-2), values[..., -1:, :]], dim=-2)
        return keys, values


class ShiftedKeysLayer(DynamicLayer):
    """Returns each past key one position late (an off-by-one read): position p gets the key of
    p - 1, position 0 keeps its own."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states)
        if key_states.shape[-2] == 1 and keys.shape[-2] > 2:
            past = keys[..., :-1, :]
            keys = torch.cat([past[..., :1, :], past[..., :-1, :], keys[..., -1:, :]], dim=-2)
        return keys, values


BROKEN_LAYERS: dict[str, type[DynamicLayer]] = {
    "stale-values": StaleValuesLayer,
    "permuted-values": PermutedValuesLayer,
    "shifted-keys": ShiftedKeysLayer,
}


def cache_of(layer_class: type[DynamicLayer]) -> Callable[[], DynamicCache]:
    """A factory of ``DynamicCache`` whose layers are ``layer_class`` (created lazily, one per layer)."""

    def make() -> DynamicCache:
        cache = DynamicCache()
        cache.layer_class_to_replicate = layer_class
        return cache

    return make


#: Fixed cases, one per family, with left padding, for deterministic mutation tests.
MUTATION_CASES = [
    Case(SmallConfig("gpt2", 2, 4, 4, 8, 64), GenerationSpec(batch_size=2, prompt_len=6, new_tokens=8), (2, 0)),
    Case(SmallConfig("llama", 2, 4, 2, 8, 64, hidden_size=48),
         GenerationSpec(batch_size=2, prompt_len=6, new_tokens=8), (0, 3)),
    Case(SmallConfig("mistral", 1, 4, 1, 8, 64, sliding_window=12),
         GenerationSpec(batch_size=1, prompt_len=7, new_tokens=8), (0,)),
    Case(SmallConfig("qwen2", 2, 2, 1, 16, 256, sliding_window=10),
         GenerationSpec(batch_size=2, prompt_len=5, new_tokens=8), (1, 0)),
    Case(SmallConfig("gpt_bigcode", 1, 4, 1, 8, 64), GenerationSpec(batch_size=1, prompt_len=8, new_tokens=8), (0,)),
    Case(SmallConfig("falcon", 2, 4, 2, 8, 64), GenerationSpec(batch_size=2, prompt_len=6, new_tokens=8), (0, 2)),
]
DTYPES = ["float32", "bfloat16", "float16"]


def _runs(dtype: str, cache_factory: Callable[[], Any]) -> Iterator[tuple[Any, Run]]:
    for case in MUTATION_CASES:
        model = build_model(case.small, dtype, seed=case.model_seed)
        yield model, run_case(model, case, cache_factory)


@pytest.mark.parametrize("dtype", DTYPES)
def test_injected_correct_cache_passes(dtype: str) -> None:
    """Control: a plain ``DynamicCache`` passed the way the broken ones are passed satisfies every
    property, so the failures below come from the breakage, not from the injection."""
    for model, run in _runs(dtype, cache_of(DynamicLayer)):
        assert token_violation(run) is None, run.case.small.family
        assert score_violation(model, run) is None, run.case.small.family


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("breakage", sorted(BROKEN_LAYERS))
def test_score_property_catches_broken_cache(breakage: str, dtype: str) -> None:
    """P3 fails for every family's case with every broken cache, in every dtype."""
    missed = [run.case.small.family for model, run in _runs(dtype, cache_of(BROKEN_LAYERS[breakage]))
              if score_violation(model, run) is None]
    assert not missed, f"the {breakage} cache passed P3 in {dtype} for {missed}"


@pytest.mark.parametrize("breakage", sorted(BROKEN_LAYERS))
def test_float32_token_property_catches_broken_cache(breakage: str) -> None:
    """P1 fails for every family's case with every broken cache."""
    missed = [run.case.small.family for _, run in _runs("float32", cache_of(BROKEN_LAYERS[breakage]))
              if token_violation(run) is None]
    assert not missed, f"the {breakage} cache passed P1 for {missed}"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("breakage", sorted(BROKEN_LAYERS))
def test_low_precision_token_property_catches_broken_cache(breakage: str, dtype: str) -> None:
    """P2 claims nothing after a row's first close call, so it cannot fail on every case; hypothesis
    searches its own strategy for a case where it does fail (deterministically) and shrinks it."""

    def caught(case: Case) -> bool:
        model = build_model(case.small, dtype, seed=case.model_seed)
        return token_violation(run_case(model, case, cache_of(BROKEN_LAYERS[breakage]))) is not None

    # Generate only: the first failing case is the evidence, shrinking it would only cost time.
    # P2 catches few random cases in bfloat16 (about 2% for stale values), hence the long search.
    search = settings(max_examples=500, derandomize=True, database=None, deadline=None,
                      phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])
    find(cases(caches=("on",)), caught, settings=search)  # raises NoSuchExample if P2 never fails


# --- latent-attention, hybrid and sliding-window families -----------------------------------------------
#
# The properties above run over kvperf.kv.configs' six families; these run P1 and the formula over three
# more layer types, built with kvperf.kv.families.tiny_config at drawn sizes: DeepSeek-V3's multi-head
# latent attention (the cache holds the compressed latent and the rotary key), Qwen3-Next's hybrid of
# gated DeltaNet layers (conv and recurrent states) and attention, and OLMo 3's sliding and full layers.
# (Gemma 3's sliding layers are no good here: its final logit soft-capping keeps the greedy token of a
# broken sliding cache although the scores move by 15; P1 cannot see it, P3 would.)
# Each is shown to fail on a broken cache of its own type.

#: The families and the sizes hypothesis draws for each (tiny_config overrides). Qwen3-Next only where
#: transformers' Cache holds its DeltaNet states (5.5 on; kvperf.features.missing_state_layers).
LAYER_TYPE_FAMILIES = ("deepseek_v3", "qwen3_next", "olmo3") if missing_state_layers() is None else (
    "deepseek_v3", "olmo3")


def skip_without_state_layers(model_type: str) -> None:
    if model_type == "qwen3_next" and (why := missing_state_layers()) is not None:
        pytest.skip(why)


@dataclass(frozen=True)
class FamilyCase:
    """A case on a tiny model of ``model_type`` with ``overrides`` (kvperf.kv.families.tiny_config)."""

    model_type: str
    overrides: tuple[tuple[str, int], ...]
    spec: GenerationSpec
    left_pad: tuple[int, ...]
    model_seed: int = 0

    def model(self, dtype: str = "float32") -> Any:
        return tiny_model(self.model_type, dtype, seed=self.model_seed, **dict(self.overrides))


def _family_sizes(draw: st.DrawFn, model_type: str, static: bool) -> dict[str, int]:
    if model_type == "deepseek_v3":
        rope = draw(st.sampled_from([4, 8]))
        sizes = {"num_attention_heads": draw(st.sampled_from([2, 4])),
                 "kv_lora_rank": draw(st.sampled_from([8, 16, 32])), "qk_rope_head_dim": rope, "head_dim": rope,
                 "qk_nope_head_dim": draw(st.sampled_from([8, 16])),
                 "v_head_dim": draw(st.sampled_from([8, 16, 24]))}
        if static and not static_values_have_their_own_width():
            # transformers 4.57's StaticLayer allocates values at the keys' width: narrower values fail in
            # its index_copy_, so static cases there draw values as wide as the expanded keys.
            sizes["v_head_dim"] = sizes["qk_nope_head_dim"] + rope
        return sizes
    if model_type == "qwen3_next":
        return {"linear_num_key_heads": draw(st.sampled_from([1, 2])),
                "linear_key_head_dim": draw(st.sampled_from([8, 16])),
                "linear_num_value_heads": draw(st.sampled_from([2, 4])),
                "linear_value_head_dim": draw(st.sampled_from([8, 16])),
                "linear_conv_kernel_dim": draw(st.sampled_from([2, 3, 4]))}
    return {"sliding_window": draw(st.integers(2, 6)), "num_key_value_heads": draw(st.sampled_from([1, 2]))}


@st.composite
def family_cases(draw: st.DrawFn, model_types: tuple[str, ...] = LAYER_TYPE_FAMILIES,
                 caches: tuple[str, ...] = ("on", "static")) -> FamilyCase:
    model_type = draw(st.sampled_from(model_types))
    batch = draw(st.integers(1, 3))
    prompt = draw(st.integers(1, 12))
    spec = GenerationSpec(cache=draw(st.sampled_from(caches)), batch_size=batch, prompt_len=prompt,
                          new_tokens=draw(st.integers(2, 8)), seed=draw(st.integers(0, 1000)))
    left_pad = tuple(draw(st.lists(st.integers(0, prompt - 1), min_size=batch, max_size=batch)))
    sizes = _family_sizes(draw, model_type, spec.cache == "static")
    return FamilyCase(model_type, tuple(sorted(sizes.items())), spec, left_pad,
                      model_seed=draw(st.integers(0, 1000)))


#: Fewer examples than the six-family properties: a tiny model of these families takes longer to build.
FAMILY_SETTINGS = settings(max_examples=12)


@FAMILY_SETTINGS
@given(case=family_cases())
def test_p1_on_latent_hybrid_and_sliding_families(case: FamilyCase) -> None:
    """P1 over latent attention, hybrid and sliding layers: float32 token ids with the cache (dynamic or
    static) equal those without it."""
    violation = token_violation(run_case(case.model(), case))  # type: ignore[arg-type]
    assert violation is None, violation


def family_size_mismatch(case: FamilyCase, dtype: str, formula: Callable[..., Any] = estimate_kv_cache) -> str | None:
    """The formula against the cache of ``case``'s generation, layer by layer."""
    model = case.model(dtype)
    input_ids, attention_mask = make_prompts(model, case.spec, left_pad=case.left_pad)
    cache = returned_cache(_greedy(model, case.spec, input_ids, attention_mask))
    seq_len = case.spec.prompt_len + case.spec.new_tokens - 1
    estimate = formula(model.config, case.spec.batch_size, seq_len, dtype,
                       "static" if case.spec.cache == "static" else "dynamic", prompt_len=case.spec.prompt_len)
    measured = measure_layer_bytes(cache)
    return None if estimate.layer_bytes == measured else f"formula {estimate.layer_bytes} != measured {measured}"


@FAMILY_SETTINGS
@given(case=family_cases(), dtype=st.sampled_from(["float32", "bfloat16"]))
def test_formula_on_latent_hybrid_and_sliding_families(case: FamilyCase, dtype: str) -> None:
    """The formula equals the measured cache, per layer, for the three layer types in both dtypes."""
    mismatch = family_size_mismatch(case, dtype)
    assert mismatch is None, mismatch


#: transformers' layer of conv and recurrent states (5.5 on); before, Qwen3-Next keeps them in a cache class of
#: its own and its tests skip (the stand-in base only lets the broken subclasses below be defined).
LinearAttentionLayer: Any = getattr(cache_utils, "LinearAttentionLayer", DynamicLayer)


class FrozenRecurrentLayer(LinearAttentionLayer):
    """A decode step computes its recurrent state but does not store it: every step starts again from
    the prefill's state (a lost write)."""

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0,
                               **kwargs: Any) -> torch.Tensor:
        if self.is_recurrent_states_initialized[state_idx]:
            return recurrent_states
        return super().update_recurrent_state(recurrent_states, state_idx, **kwargs)


class ResetRecurrentLayer(LinearAttentionLayer):
    """Stores zeros for the recurrent state of every decode step: the next step forgets the prefix."""

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0,
                               **kwargs: Any) -> torch.Tensor:
        decoding = self.is_recurrent_states_initialized[state_idx]
        stored = super().update_recurrent_state(recurrent_states, state_idx, **kwargs)
        if decoding:
            stored.zero_()
            return recurrent_states
        return stored


class ShiftedKeysSlidingLayer(DynamicSlidingWindowLayer):
    """A sliding layer that returns each past key one position late (``ShiftedKeysLayer``'s read)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states)
        if key_states.shape[-2] == 1 and keys.shape[-2] > 2:
            past = keys[..., :-1, :]
            keys = torch.cat([past[..., :1, :], past[..., :-1, :], keys[..., -1:, :]], dim=-2)
        return keys, values


def config_cache_with(model: Any, replaced: type, broken: type) -> Callable[[], DynamicCache]:
    """A factory of the ``DynamicCache`` transformers builds for ``model``, with every layer of class
    ``replaced`` turned into ``broken`` (a subclass that keeps its state and changes one method)."""

    def make() -> DynamicCache:
        cache = DynamicCache(config=model.config)
        for layer in cache.layers:
            if type(layer) is replaced:
                layer.__class__ = broken
        return cache

    return make


#: One fixed case per new layer type, with left padding, for the mutation tests.
FAMILY_MUTATION_CASES = {
    "deepseek_v3": FamilyCase("deepseek_v3", (), GenerationSpec(batch_size=2, prompt_len=7, new_tokens=8), (0, 2)),
    "qwen3_next": FamilyCase("qwen3_next", (), GenerationSpec(batch_size=2, prompt_len=7, new_tokens=8), (0, 2)),
    "olmo3": FamilyCase("olmo3", (), GenerationSpec(batch_size=2, prompt_len=9, new_tokens=8), (0, 2)),
}
#: Per family: the broken caches of its own layer type (a factory given the model).
FAMILY_BREAKAGES: dict[str, dict[str, Callable[[Any], Callable[[], Any]]]] = {
    "deepseek_v3": {name: (lambda model, layer=layer: cache_of(layer)) for name, layer in BROKEN_LAYERS.items()},
    "qwen3_next": {
        "frozen-recurrent-state": lambda model: config_cache_with(model, LinearAttentionLayer, FrozenRecurrentLayer),
        "reset-recurrent-state": lambda model: config_cache_with(model, LinearAttentionLayer, ResetRecurrentLayer),
    },
    "olmo3": {
        "shifted-sliding-keys": lambda model: config_cache_with(model, DynamicSlidingWindowLayer,
                                                                 ShiftedKeysSlidingLayer),
    },
}


@pytest.mark.parametrize("model_type", sorted(FAMILY_MUTATION_CASES))
def test_family_control_cache_passes(model_type: str) -> None:
    """Control: transformers' own cache for the model, passed the way the broken ones are, passes P1."""
    skip_without_state_layers(model_type)
    case = FAMILY_MUTATION_CASES[model_type]
    model = case.model()
    run = run_case(model, case, lambda: DynamicCache(config=model.config))  # type: ignore[arg-type]
    assert token_violation(run) is None


@pytest.mark.parametrize(("model_type", "breakage"), [(m, b) for m, breaks in FAMILY_BREAKAGES.items() for b in breaks])
def test_p1_catches_broken_cache_of_each_layer_type(model_type: str, breakage: str) -> None:
    """P1 fails on a broken latent-attention, linear-attention (recurrent state) and sliding layer."""
    skip_without_state_layers(model_type)
    case = FAMILY_MUTATION_CASES[model_type]
    model = case.model()
    run = run_case(model, case, FAMILY_BREAKAGES[model_type][breakage](model))  # type: ignore[arg-type]
    assert token_violation(run) is not None, f"the {breakage} cache passed P1 on {model_type}"


def _other_latent_layout(config: Any, *args: Any, **kwargs: Any) -> Any:
    """Sizes multi-head latent attention in the layout this release does not cache: keys and values
    expanded to every head (what transformers cached before 5.15) where kvperf sizes the latent and the
    rotary key (what it caches from 5.15), and the latent where kvperf sizes expanded keys and values."""
    shape = KvShape.from_config(config)
    heads, rope = config.num_attention_heads, config.qk_rope_head_dim
    expanded = {"key_heads": heads, "key_dim": config.qk_nope_head_dim + rope, "value_heads": heads,
                "value_dim": config.v_head_dim}
    latent = {"key_heads": 1, "key_dim": config.kv_lora_rank, "value_heads": 1, "value_dim": rope}
    layers = tuple(replace(layer, **(expanded if layer.key_heads == 1 else latent)) for layer in shape.layers)
    return estimate_kv_cache(replace(shape, layers=layers), *args, **kwargs)


def _state_in_model_dtype(config: Any, *args: Any, **kwargs: Any) -> Any:
    """Keeps the recurrent states in the model's dtype (they are float32 in transformers' scans)."""
    shape = KvShape.from_config(config)
    layers = tuple(replace(layer, recurrent_itemsize=0) for layer in shape.layers)
    return estimate_kv_cache(replace(shape, layers=layers), *args, **kwargs)


def _no_state(config: Any, *args: Any, **kwargs: Any) -> Any:
    """Counts keys and values only, as a formula that knows attention alone would."""
    shape = KvShape.from_config(config)
    layers = tuple(replace(layer, conv_elements=0, recurrent_elements=0) for layer in shape.layers)
    return estimate_kv_cache(replace(shape, layers=layers), *args, **kwargs)


@pytest.mark.parametrize(("model_type", "dtype", "formula"), [
    ("deepseek_v3", "float32", _other_latent_layout),
    ("qwen3_next", "bfloat16", _state_in_model_dtype),
    ("qwen3_next", "float32", _no_state),
], ids=["other-latent-layout", "state-in-model-dtype", "no-state"])
def test_formula_property_catches_broken_formula_of_each_layer_type(model_type: str, dtype: str,
                                                                    formula: Callable[..., Any]) -> None:
    skip_without_state_layers(model_type)
    case = FAMILY_MUTATION_CASES[model_type]
    assert family_size_mismatch(case, dtype) is None
    assert family_size_mismatch(case, dtype, formula) is not None
