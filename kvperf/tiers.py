"""Benchmark tiers: which cases each experiment runs, on which model.

``quick`` runs on every CI job on a CPU: ``tiny-gpt2``, every experiment at small sizes, in about a
minute. ``full`` is the experiments of the README's "The experiments, one command each" at their
real sizes on ``distilgpt2``, for a GPU runner or a patient CPU (8-17 hours on 2 vCPUs). ``cpu`` is
the full tier's sizes on ``tiny-llama-gqa``, which a 2-vCPU machine runs in minutes.

Experiments (the names are the ``kvperf_experiment`` markers of ``benchmarks/``):

* ``matrix``: cache on (dynamic) / static / off x batch sizes x prompt lengths, the regression grid.
* ``length``: cache on vs off against the number of new tokens (the README's experiment 1: O(n^2) vs O(n)).
* ``batch``: throughput and per-token latency against batch size (experiment 2).
* ``context``: per-token latency and memory against prompt length (experiment 3).
* ``first_token``: TTFT against TPOT for a short prompt (experiment 4).
* ``caches``: every cache implementation transformers offers (``kvperf.measure.cache_modes``) at one
  size; each that cannot run here is skipped with the reason. The quick tier runs the cheap ones;
  ``compiled`` (a compile of tens of seconds on a CPU) is in the full and cpu tiers.
* ``sliding``: the dynamic and static caches of a model with sliding-window layers
  (``tiny-mistral-sliding``, window 16) on a prompt longer than the window, so the cache evicts.

Every case also records the KV-cache bytes measured from the tensors beside the formula
(experiment 5).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import product

from kvperf.errors import UsageError
from kvperf.spec import CacheMode, GenerationSpec, canonical_dtype

__all__ = ["DEFAULT_DTYPES", "EXPERIMENTS", "MAX_CPU_THREADS", "MAX_ROUNDS", "MAX_WARMUP_ROUNDS", "TIERS", "Case",
           "Tier", "get_tier", "ordered_experiments"]

EXPERIMENTS = ("matrix", "length", "batch", "context", "first_token", "caches", "sliding")
#: The dtypes every tier runs in, by device type (``--kvperf-dtypes`` overrides them).
DEFAULT_DTYPES: dict[str, tuple[str, ...]] = {
    "cpu": ("float32", "bfloat16"),
    "cuda": ("float32", "bfloat16", "float16"),
}
#: Upper bounds of the per-case repetitions and of torch's threads. Far above any useful value; they
#: exist so that a typo (an extra zero, a pasted number) is refused instead of running for days.
MAX_ROUNDS = 10_000
MAX_WARMUP_ROUNDS = 1_000
MAX_CPU_THREADS = 1_024
_ON_OFF: tuple[CacheMode, ...] = ("on", "off")
_MATRIX_CACHES: tuple[CacheMode, ...] = ("on", "static", "off")
#: The ``caches`` experiment: every mode the matrix lacks, and beside them in the full and cpu tiers the
#: eager static and dynamic caches at the same size, so compiled against eager is read in one table.
_CHEAP_CACHES: tuple[CacheMode, ...] = ("quanto", "hqq", "fp8", "offloaded", "offloaded_static")
_ALL_CACHES: tuple[CacheMode, ...] = ("on", "static", "compiled", *_CHEAP_CACHES)


@dataclass(frozen=True)
class Case:
    """One benchmark case: an experiment's spec in one dtype."""

    experiment: str
    spec: GenerationSpec
    dtype: str
    #: The model it runs on when not the tier's (the ``sliding`` experiment's preset).
    model: str | None = None

    @property
    def id(self) -> str:
        return self.spec.case_id(canonical_dtype(self.dtype))


@dataclass(frozen=True)
class Tier:
    """The cases of every experiment, the model they run on, and how often each is repeated."""

    name: str
    model: str
    new_tokens: int
    batch_sizes: tuple[int, ...]
    prompt_lens: tuple[int, ...]
    length_new_tokens: tuple[int, ...]
    length_prompt_len: int
    sweep_batch_sizes: tuple[int, ...]
    batch_prompt_len: int
    sweep_prompt_lens: tuple[int, ...]
    first_token_prompt_len: int
    rounds: int
    warmup_rounds: int
    #: CPU threads for torch (``torch.set_num_threads``); None keeps torch's default (one per core).
    #: The quick tier uses 1: a tiny model gains nothing from intra-op threads, and on a shared
    #: runner spinning OpenMP threads that compete for cores turn small noise into 10x outliers.
    cpu_threads: int | None
    experiments: tuple[str, ...] = field(default=EXPERIMENTS)
    #: The cache modes of the ``caches`` experiment (``kvperf.spec.CACHE_MODES``), and of ``sliding``,
    #: with the model that has sliding-window layers (``None``: no ``sliding`` cases).
    cache_modes: tuple[CacheMode, ...] = ()
    sliding_modes: tuple[CacheMode, ...] = ()
    sliding_model: str | None = None

    def specs(self, experiment: str) -> list[GenerationSpec]:
        """The specs of one experiment, in a stable order."""
        if experiment == "matrix":
            return [GenerationSpec(cache=c, batch_size=b, prompt_len=p, new_tokens=self.new_tokens)
                    for c, b, p in product(_MATRIX_CACHES, self.batch_sizes, self.prompt_lens)]
        if experiment == "length":
            return [GenerationSpec(cache=c, batch_size=1, prompt_len=self.length_prompt_len, new_tokens=n)
                    for c, n in product(_ON_OFF, self.length_new_tokens)]
        if experiment == "batch":
            return [GenerationSpec(cache="on", batch_size=b, prompt_len=self.batch_prompt_len,
                                   new_tokens=self.new_tokens) for b in self.sweep_batch_sizes]
        if experiment == "context":
            return [GenerationSpec(cache="on", batch_size=1, prompt_len=p, new_tokens=self.new_tokens)
                    for p in self.sweep_prompt_lens]
        if experiment == "caches":
            return [GenerationSpec(cache=c, batch_size=1, prompt_len=self.batch_prompt_len, new_tokens=self.new_tokens)
                    for c in self.cache_modes]
        if experiment == "sliding":
            # The window is 16 and every tier's batch prompt is at least 32 long: the cache evicts.
            return [GenerationSpec(cache=c, batch_size=1, prompt_len=self.batch_prompt_len, new_tokens=self.new_tokens)
                    for c in (self.sliding_modes if self.sliding_model is not None else ())]
        if experiment == "first_token":
            return [GenerationSpec(cache="on", batch_size=1, prompt_len=self.first_token_prompt_len,
                                   new_tokens=self.new_tokens)]
        raise UsageError(f"unknown experiment {experiment!r}: use one of {', '.join(EXPERIMENTS)}")

    def cases(self, experiment: str, dtypes: tuple[str, ...]) -> list[Case]:
        model = self.sliding_model if experiment == "sliding" else None
        return [Case(experiment, spec, dtype, model) for spec in self.specs(experiment) for dtype in dtypes]

    def with_overrides(self, *, batch_sizes: tuple[int, ...] | None = None,
                       prompt_lens: tuple[int, ...] | None = None, new_tokens: int | None = None,
                       rounds: int | None = None, warmup_rounds: int | None = None,
                       model: str | None = None, cpu_threads: int | None = None) -> Tier:
        """The tier with the user's command-line choices applied (None keeps the tier's value)."""
        changes: dict[str, object] = {}
        if batch_sizes is not None:
            changes.update(batch_sizes=batch_sizes, sweep_batch_sizes=batch_sizes)
        if prompt_lens is not None:
            changes.update(prompt_lens=prompt_lens, sweep_prompt_lens=prompt_lens)
        for key, value in (("new_tokens", new_tokens), ("rounds", rounds),
                           ("warmup_rounds", warmup_rounds), ("model", model), ("cpu_threads", cpu_threads)):
            if value is not None:
                changes[key] = value
        return replace(self, **changes)  # type: ignore[arg-type]

    def max_total_len(self) -> int:
        """The longest prompt + new tokens any case of this tier reaches."""
        return max(s.total_len for e in self.experiments for s in self.specs(e))


TIERS: dict[str, Tier] = {
    "quick": Tier(
        name="quick", model="tiny-gpt2", new_tokens=32,
        batch_sizes=(1, 4), prompt_lens=(32, 128),
        length_new_tokens=(8, 16, 32, 64, 128), length_prompt_len=8,
        sweep_batch_sizes=(1, 2, 4, 8), batch_prompt_len=32, sweep_prompt_lens=(32, 64, 128, 256),
        first_token_prompt_len=8, rounds=5, warmup_rounds=1, cpu_threads=1,
        cache_modes=_CHEAP_CACHES, sliding_modes=("on", "static"), sliding_model="tiny-mistral-sliding",
    ),
    "full": Tier(
        name="full", model="distilgpt2", new_tokens=128,
        batch_sizes=(1, 4), prompt_lens=(128, 512),
        length_new_tokens=(10, 50, 100, 250, 500), length_prompt_len=8,
        sweep_batch_sizes=(1, 2, 4, 8, 16), batch_prompt_len=128, sweep_prompt_lens=(32, 128, 256, 512, 768),
        first_token_prompt_len=8, rounds=3, warmup_rounds=1, cpu_threads=None,
        cache_modes=_ALL_CACHES, sliding_modes=("on", "static", "compiled"), sliding_model="tiny-mistral-sliding",
    ),
    # The full tier's sizes (10-500 new tokens, batch up to 16, prompts up to 768) on a model a CPU runs
    # in minutes: tiny-llama-gqa (2 layers, hidden 128, 1024 positions). What it shows is the shape
    # of each experiment (cache on O(n) against off O(n^2), batching, context), not distilgpt2's times.
    "cpu": Tier(
        name="cpu", model="tiny-llama-gqa", new_tokens=128,
        batch_sizes=(1, 4), prompt_lens=(128, 512),
        length_new_tokens=(10, 50, 100, 250, 500), length_prompt_len=8,
        sweep_batch_sizes=(1, 2, 4, 8, 16), batch_prompt_len=128, sweep_prompt_lens=(32, 128, 256, 512, 768),
        first_token_prompt_len=8, rounds=3, warmup_rounds=1, cpu_threads=1,
        cache_modes=_ALL_CACHES, sliding_modes=("on", "static", "compiled"), sliding_model="tiny-mistral-sliding",
    ),
}


def ordered_experiments(names: Iterable[str]) -> list[str]:
    """``names`` in the order of ``EXPERIMENTS`` (the README's), unknown ones (``custom``) after, by name."""
    present = set(names)
    return [n for n in EXPERIMENTS if n in present] + sorted(present - set(EXPERIMENTS))


def get_tier(name: str) -> Tier:
    if name not in TIERS:
        raise UsageError(f"unknown tier {name!r}: use one of {', '.join(TIERS)}")
    return TIERS[name]
