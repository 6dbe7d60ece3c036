"""kvperf's pytest plugin (entry point ``pytest11``): options, markers, fixtures and hooks.

This part runs the cases; ``kvperf.plugin_gate`` (registered through ``pytest_plugins``) saves and
compares their results.

A benchmark file asks for ``kvperf_case`` (parametrized over the tier's cases of the experiment
named by its ``kvperf_experiment`` marker) and ``kvperf_bench`` (runs a case or any
``GenerationSpec`` under pytest-benchmark and fills ``benchmark.extra_info``)::

    @pytest.mark.kvperf_experiment("matrix")
    def test_generate(kvperf_case, kvperf_bench):
        kvperf_bench(kvperf_case)

The plugin loads in every pytest session of an environment where kvperf is installed, so it imports
nothing heavy until it is used: torch, transformers and the model's config are loaded when a test
asks for a kvperf fixture, or at start-up when a ``--kvperf-*`` option is given (to refuse a bad one
before anything runs).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from kvperf.errors import KvperfError, OutOfMemoryError
from kvperf.gate.ab import ENV_VAR as AB_ENV_VAR
from kvperf.gate.ab import Turns
from kvperf.measure.progress import (
    PROGRESS_MODES,
    SessionProgress,
    format_duration,
    plan_line,
    positions,
    rounds_within,
)
from kvperf.spec import GenerationSpec, canonical_dtype
from kvperf.tiers import (
    DEFAULT_DTYPES,
    EXPERIMENTS,
    MAX_CPU_THREADS,
    MAX_ROUNDS,
    MAX_WARMUP_ROUNDS,
    TIERS,
    Case,
    Tier,
    get_tier,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from kvperf.measure.ceilings import MachineCeilings
    from kvperf.measure.harness import GenerationResult

#: The baselines and the regression gate are a plugin of their own, registered with this one.
pytest_plugins = ["kvperf.plugin_gate"]

__all__ = ["KvperfConfig", "add_option", "kvperf_config_of", "session_ceilings"]

_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")

def _int_list(option: str, raw: str | None) -> tuple[int, ...] | None:
    if raw is None:
        return None
    try:
        values = tuple(int(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise KvperfError(f"{option} takes comma-separated integers, got {raw!r}") from None
    if not values or any(v < 1 for v in values):
        raise KvperfError(f"{option} values must be positive integers, got {raw!r}")
    return values


def _in_range(option: str, value: int | None, minimum: int, maximum: int | None = None) -> int | None:
    if value is None:
        return None
    if maximum is not None and not minimum <= value <= maximum:
        raise KvperfError(f"{option} must be in [{minimum}, {maximum}], got {value}")
    if value < minimum:
        raise KvperfError(f"{option} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class KvperfConfig:
    """The benchmark run the user asked for on the command line."""

    tier: Tier
    device: str
    dtypes: tuple[str, ...]
    trust_remote_code: bool
    #: ``--kvperf-device-map``: ``"auto"``, module name -> device, or None (the whole model on ``device``).
    device_map: str | dict[str, int | str] | None = None

    @property
    def model(self) -> str:
        return self.tier.model

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda`` (the device was checked on construction)."""
        return self.device.split(":", 1)[0]

    @classmethod
    def from_pytest_config(cls, config: pytest.Config) -> KvperfConfig:
        opt = config.getoption
        tier = get_tier(opt("kvperf_tier")).with_overrides(
            model=opt("kvperf_model"),
            batch_sizes=_int_list("--kvperf-batch-sizes", opt("kvperf_batch_sizes")),
            prompt_lens=_int_list("--kvperf-prompt-lens", opt("kvperf_prompt_lens")),
            new_tokens=_in_range("--kvperf-new-tokens", opt("kvperf_new_tokens"), 2),
            rounds=_in_range("--kvperf-rounds", opt("kvperf_rounds"), 1, MAX_ROUNDS),
            warmup_rounds=_in_range("--kvperf-warmup", opt("kvperf_warmup"), 0, MAX_WARMUP_ROUNDS),
            cpu_threads=_in_range("--kvperf-threads", opt("kvperf_threads"), 1, MAX_CPU_THREADS),
        )
        budget_s = opt("kvperf_case_budget_s")
        if budget_s is not None and not budget_s > 0:
            raise KvperfError(f"--kvperf-case-budget-s must be above 0 seconds, got {budget_s:g}: give the time one "
                              "case may take, e.g. 120")
        device = opt("kvperf_device")
        if not _DEVICE.fullmatch(device):
            import torch  # only to tell a device torch knows from no device at all

            try:
                torch.device(device)
            except RuntimeError:
                raise KvperfError(f"--kvperf-device {device!r} is not a device: use cpu, cuda or cuda:N") from None
            raise KvperfError(f"--kvperf-device {device!r} is not supported: use cpu, cuda or cuda:N")
        raw_dtypes = opt("kvperf_dtypes")
        if raw_dtypes is None:
            raw_dtypes = ",".join(DEFAULT_DTYPES[device.split(":", 1)[0]])
        try:
            dtypes = tuple(dict.fromkeys(canonical_dtype(d) for d in raw_dtypes.split(",") if d.strip()))
        except KvperfError as exc:
            raise KvperfError(f"--kvperf-dtypes: {exc}") from None
        if not dtypes:
            raise KvperfError("--kvperf-dtypes is empty: give e.g. float32,bfloat16")
        from kvperf.models import load_config, max_positions

        model_config = load_config(tier.model, trust_remote_code=opt("kvperf_trust_remote_code"))
        limit = max_positions(model_config)
        if limit is not None and tier.max_total_len() > limit:
            raise KvperfError(
                f"tier {tier.name!r} reaches {tier.max_total_len()} positions (prompt + new tokens) but "
                f"model {tier.model!r} has {limit}: pass shorter --kvperf-prompt-lens / --kvperf-new-tokens"
            )
        return cls(tier=tier, device=device, dtypes=dtypes,
                   trust_remote_code=opt("kvperf_trust_remote_code"),
                   device_map=_device_map(opt("kvperf_device_map"), device, model_config))


def _device_map(raw: str | None, device: str, model_config: Any) -> str | dict[str, int | str] | None:
    """``--kvperf-device-map``, checked at start-up against the device and the model's modules (on an
    empty model: no weights are made)."""
    if raw is None:
        return None
    from kvperf.device_map import check_device_map, check_modules, parse_device_map, require_accelerate

    option = "--kvperf-device-map"
    device_map = parse_device_map(raw, option)
    check_device_map(device_map, option, device)
    require_accelerate(option)
    if isinstance(device_map, str):
        return device_map
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(model_config)
    check_modules(empty, device_map, option)
    return dict(device_map)


#: The default of every ``--kvperf-*`` option, by its dest (``add_option``).
_OPTION_DEFAULTS: dict[str, Any] = {}


def add_option(group: pytest.OptionGroup, name: str, **kwargs: Any) -> None:
    """``group.addoption``, remembering the default: a session that sets none of kvperf's options
    loads nothing heavy until a kvperf fixture is used."""
    group.addoption(name, **kwargs)
    default = kwargs.get("default", False if kwargs.get("action") == "store_true" else None)
    _OPTION_DEFAULTS[kwargs.get("dest") or name.lstrip("-").replace("-", "_")] = default


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvperf", "kvperf KV-cache benchmarks")
    add_option(group, "--kvperf-tier", default="quick", help=f"benchmark tier: {', '.join(TIERS)} (default quick)")
    add_option(group, "--kvperf-model", default=None,
                    help="preset, local directory or cached hub id (default: the tier's model)")
    add_option(group, "--kvperf-device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_option(group, "--kvperf-device-map", default=None, metavar="auto|FILE.json",
               help="spread the model over several devices with accelerate: auto, or a JSON file of module name "
                    "to device (GPU index, cuda:N or cpu); see README 'Multi-device models'")
    add_option(group, "--kvperf-dtypes", default=None,
                    help="comma-separated dtypes (default float32,bfloat16 on CPU; float16 too on CUDA)")
    add_option(group, "--kvperf-batch-sizes", default=None, help="comma-separated batch sizes (override the tier)")
    add_option(group, "--kvperf-prompt-lens", default=None,
                    help="comma-separated prompt lengths in tokens (override the tier)")
    add_option(group, "--kvperf-new-tokens", type=int, default=None, help="new tokens per sequence (override)")
    add_option(group, "--kvperf-rounds", type=int, default=None, help="timed rounds per case (override)")
    add_option(group, "--kvperf-warmup", type=int, default=None, help="untimed warm-up rounds per case (override)")
    add_option(group, "--kvperf-threads", type=int, default=None,
                    help="torch CPU threads while benchmarking (default: 1 in quick, torch's default in full)")
    add_option(group, "--kvperf-case-budget-s", type=float, default=None, metavar="SECONDS",
               help="time budget of one case: its first warm-up call is timed, and it runs only as many timed "
                    "rounds as fit (at least one), and says so")
    add_option(group, "--kvperf-progress", choices=PROGRESS_MODES, default="auto",
               help="progress lines with an ETA: auto (default: for cases whose calls take 2 s or more), all "
                    "(every case and round), none")
    add_option(group, "--kvperf-trust-remote-code", action="store_true", default=False,
                    help="allow a hub model's own code to run (off by default)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped with a reason when none is present")
    config.addinivalue_line("markers", "kvperf_experiment(name): which experiment's cases kvperf_case runs "
                                       f"({', '.join(EXPERIMENTS)})")
    try:
        if _asked_for_kvperf(config):  # check the options now, before anything runs
            config.stash[CONFIG_KEY] = KvperfConfig.from_pytest_config(config)
        turns = Turns.from_env()
        if turns is not None:
            _check_ab_pipes(os.environ[AB_ENV_VAR])
    except KvperfError as exc:
        raise pytest.UsageError(str(exc)) from None
    if turns is not None:
        config.stash[_TURNS_KEY] = turns


def _asked_for_kvperf(config: pytest.Config) -> bool:
    """Whether a ``--kvperf-*`` option has other than its default value."""
    return any(config.getoption(dest) != default for dest, default in _OPTION_DEFAULTS.items())


def kvperf_config_of(config: pytest.Config) -> KvperfConfig:
    """The run's ``KvperfConfig``, built on first use (it loads the model's config: not in a session
    that never uses kvperf). A bad default can't happen; a bad option was refused at start-up."""
    if CONFIG_KEY not in config.stash:
        try:
            config.stash[CONFIG_KEY] = KvperfConfig.from_pytest_config(config)
        except KvperfError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[CONFIG_KEY]


def _check_ab_pipes(raw: str) -> None:
    """``kvperf ab`` hands each side two pipes; a value left over in the environment names none."""
    for fd in (int(v) for v in raw.split(",")):  # Turns.from_env checked the form
        try:
            is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
        except OSError:
            is_pipe = False
        if not is_pipe:
            raise KvperfError(f"{AB_ENV_VAR}={raw!r} is set but no `kvperf ab` run is behind it (descriptor {fd} "
                              f"is not an open pipe): it is left over in the environment; `unset {AB_ENV_VAR}` "
                              "to run the benchmarks on their own")


#: The run's ``KvperfConfig`` (also read by ``kvperf.plugin_gate``).
CONFIG_KEY = pytest.StashKey["KvperfConfig"]()
_TURNS_KEY = pytest.StashKey[Turns]()
_PROGRESS_KEY = pytest.StashKey[SessionProgress]()
#: The planned cases, by test name (``pytest_collection_finish``), for the run's estimate.
_PLANNED_KEY = pytest.StashKey["list[tuple[str, Case]]"]()
#: Cases whose rounds the budget lowered: name -> (rounds run, rounds of the tier, one call's seconds).
BUDGETED_KEY = pytest.StashKey["dict[str, tuple[int, int, float]]"]()
_MODELS_KEY = pytest.StashKey["dict[tuple[str, str, str], PreTrainedModel]"]()
#: The machine's roofline ceilings, measured once per session at the first case (``session_ceilings``);
#: ``kvperf.plugin_gate`` records them in the environment of the results.
CEILINGS_KEY = pytest.StashKey["MachineCeilings"]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kvperf_case" not in metafunc.fixturenames:
        return
    cfg = kvperf_config_of(metafunc.config)
    marker = metafunc.definition.get_closest_marker("kvperf_experiment")
    experiment = marker.args[0] if marker and marker.args else "matrix"
    marks = [pytest.mark.gpu] if cfg.device_type == "cuda" else []
    cases = cfg.tier.cases(experiment, cfg.dtypes)
    metafunc.parametrize("kvperf_case", [pytest.param(c, id=c.id, marks=marks) for c in cases])


_NO_GPU = "needs a CUDA GPU, and torch.cuda.is_available() is False here"


def _skip_without_gpu(device: str) -> None:
    """Skip the calling test when ``device`` is CUDA and this machine has none: a user's own benchmark
    file under ``--kvperf-device cuda`` is skipped like the tier's cases, not failed."""
    import torch

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        pytest.skip(_NO_GPU)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return  # and torch stays unimported
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=_NO_GPU)
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kvperf_config(pytestconfig: pytest.Config) -> KvperfConfig:
    """The kvperf options of this run."""
    return kvperf_config_of(pytestconfig)


@pytest.fixture(scope="session")
def kvperf_model(pytestconfig: pytest.Config, kvperf_config: KvperfConfig) -> Callable[..., PreTrainedModel]:
    """``kvperf_model(dtype, model=None)``: the run's model (or ``model``, a case's own) in that dtype,
    loaded once per session (never timed).

    Also applies the tier's ``--kvperf-threads`` setting, since every benchmark asks for a model."""
    import torch

    from kvperf.models import load_model

    models = pytestconfig.stash.setdefault(_MODELS_KEY, {})

    def get(dtype: str, model: str | None = None) -> PreTrainedModel:
        _skip_without_gpu(kvperf_config.device)
        threads = kvperf_config.tier.cpu_threads
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        name = model or kvperf_config.model
        key = (name, dtype, kvperf_config.device)
        if key not in models:
            models[key] = load_model(name, dtype=dtype, device=kvperf_config.device,
                                     trust_remote_code=kvperf_config.trust_remote_code,
                                     device_map=kvperf_config.device_map)
        return models[key]

    return get


def _writer(config: pytest.Config) -> Callable[[str], None]:
    """A line to the terminal from inside a test: pytest's capture is suspended for it."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.ensure_newline()
                reporter.write_line(line)
        else:
            reporter.ensure_newline()
            reporter.write_line(line)

    return write


def _calls_per_case(cfg: KvperfConfig) -> int:
    """Warm-ups, rounds, and the untimed peak-memory and FLOP-count calls."""
    return cfg.tier.warmup_rounds + cfg.tier.rounds + 2


def _planned(items: list[pytest.Item]) -> list[tuple[str, Case]] | None:
    """Name and case of every kvperf case that will run, when all are known before the run (a
    ``kvperf_bench`` test with a spec of its own is known only when it runs)."""
    planned = []
    for item in items:
        if "kvperf_bench" not in getattr(item, "fixturenames", ()) or item.get_closest_marker("skip"):
            continue
        case = getattr(getattr(item, "callspec", None), "params", {}).get("kvperf_case")
        if not isinstance(case, Case):
            return None
        planned.append((item.name, case))
    return planned or None


def _positions(spec: GenerationSpec) -> int:
    return positions(spec.batch_size, spec.prompt_len, spec.new_tokens, spec.cache)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Size the run before it starts (``kvperf.measure.progress.plan_line``)."""
    config = session.config
    planned = _planned(session.items)
    if planned is None or config.getoption("kvperf_progress") == "none":
        return
    calls = _calls_per_case(kvperf_config_of(config))
    config.stash[_PLANNED_KEY] = planned
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(plan_line([(name, _positions(case.spec)) for name, case in planned], calls))


def _session_progress(request: pytest.FixtureRequest, models: Callable[..., PreTrainedModel]) -> SessionProgress:
    config = request.config
    if _PROGRESS_KEY not in config.stash:
        total = sum("kvperf_bench" in getattr(item, "fixturenames", ()) for item in request.session.items)
        progress = SessionProgress(total_cases=max(total, 1), write=_writer(config),
                                   mode=config.getoption("kvperf_progress"))
        config.stash[_PROGRESS_KEY] = progress
        planned = config.stash.get(_PLANNED_KEY, None)
        if planned is not None and progress.mode != "none":
            _estimate(progress, planned, models, kvperf_config_of(config))
    return config.stash[_PROGRESS_KEY]


def _estimate(progress: SessionProgress, planned: list[tuple[str, Case]], models: Callable[..., PreTrainedModel],
              cfg: KvperfConfig) -> None:
    """Estimate the run before its first case (``kvperf.measure.cost``) and say so."""
    from kvperf.measure.cost import (
        estimate_line,
        estimated_call_flops,
        estimated_call_s,
        estimated_case_s,
        measure_rates,
        model_work,
    )
    from kvperf.models import max_positions

    calls = _calls_per_case(cfg)
    rates, flops = {}, 0
    for model_name, dtype in dict.fromkeys((case.model or cfg.model, case.dtype) for _, case in planned):
        model = models(dtype, model_name)
        work = model_work(model)
        label = dtype if model_name == cfg.model else f"{model_name} {dtype}"  # a case's own model
        rates[label] = measure_rates(model, work, max_positions(model.config))
        for name, case in planned:
            if (case.model or cfg.model, case.dtype) == (model_name, dtype):
                progress.estimated_call_s[name] = estimated_call_s(work, rates[label], case.spec)
                progress.estimated_case_s[name] = estimated_case_s(work, rates[label], case.spec, calls - 2)
                flops += estimated_call_flops(work, case.spec) * calls
    progress.estimated_total_s = sum(progress.estimated_case_s.values())
    progress.write(estimate_line(progress.estimated_total_s, len(planned), len(planned) * calls, flops, cfg.model,
                                 rates))


@pytest.fixture
def kvperf_bench(
    benchmark: Any, request: pytest.FixtureRequest, pytestconfig: pytest.Config, kvperf_config: KvperfConfig,
    kvperf_model: Callable[..., PreTrainedModel],
) -> Callable[..., list[GenerationResult]]:
    """``kvperf_bench(case_or_spec, dtype=None)``: benchmark one case and record it in extra_info.

    Accepts a ``Case`` from ``kvperf_case`` or any ``GenerationSpec`` (then in ``dtype``, by default
    the first of ``--kvperf-dtypes``). Returns one ``GenerationResult`` per timed round.
    """
    import torch

    from kvperf.measure.bench import benchmark_generation, extra_info
    from kvperf.measure.cache_modes import cache_unavailable
    from kvperf.measure.harness import warm_compile
    from kvperf.measure.oom import out_of_memory_as_error, requested_size
    from kvperf.measure.prompts import make_prompts
    from kvperf.measure.roofline import case_roofline

    def run(case: Case | GenerationSpec, dtype: str | None = None) -> list[GenerationResult]:
        if isinstance(case, GenerationSpec):
            case = Case("custom", case, dtype or kvperf_config.dtypes[0])
        benchmark.group = case.experiment
        turns = pytestconfig.stash.get(_TURNS_KEY, None)
        device = kvperf_config.device
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            _forget(pytestconfig, benchmark)
            _skip_without_gpu(device)
        model_name = case.model or kvperf_config.model
        unavailable = cache_unavailable(case.spec.cache, torch.device(device).type)
        progress = _session_progress(request, kvperf_model).case(request.node.name)
        if unavailable is not None:  # a cache implementation this device, release or environment lacks
            _forget(pytestconfig, benchmark)
            progress.session.drop_estimate(request.node.name)
            pytest.skip(unavailable)
        rounds, warmup = kvperf_config.tier.rounds, kvperf_config.tier.warmup_rounds
        tier_calls = rounds + warmup
        call_estimate_s = progress.session.estimated_call_s.get(request.node.name, 0.0)
        case_estimate_s = progress.session.estimated_case_s.get(request.node.name, 0.0)
        if case_estimate_s:  # the peak-memory and FLOP-count calls: several rounds' time on a small model
            progress.untimed_estimate_s = case_estimate_s - tier_calls * call_estimate_s

        def before_round() -> None:
            progress.before_round()
            if turns is not None:
                turns.pass_turn()

        # A case that does not fit is skipped with its size, and the session goes on (kvperf.measure.oom).
        try:
            with out_of_memory_as_error(requested_size(case.spec, case.dtype, device), device):
                model = kvperf_model(case.dtype, case.model)
                _check_fits(model, case.spec, model_name)
                unavailable = cache_unavailable(case.spec.cache, torch.device(device).type, model.config)
                if unavailable is not None:  # the model has layers this cache cannot hold
                    _forget(pytestconfig, benchmark)
                    progress.session.drop_estimate(request.node.name)
                    pytest.skip(unavailable)
                # A compiled mode compiles in its first call: made here, before the budget's timed call.
                compiled = warm_compile(model, case.spec, *make_prompts(model, case.spec))
                rounds, warmup, call_s, note = _within_budget(pytestconfig, model, case.spec, rounds, warmup)
                session = progress.session
                # the budget's first timed call, and the rounds it took away, change what is ahead
                case_estimate_s += call_estimate_s * (warmup + rounds + (call_s is not None) - tier_calls)
                if session.estimated_total_s is not None:
                    session.estimated_total_s += case_estimate_s - session.estimated_case_s.get(request.node.name, 0)
                progress.plan(rounds, warmup, call_s, note)
                results = benchmark_generation(benchmark, model, case.spec, rounds=rounds, warmup_rounds=warmup,
                                               before_round=before_round, compiled=compiled)
        except OutOfMemoryError as exc:
            _forget(pytestconfig, benchmark)
            progress.session.drop_estimate(request.node.name, case_estimate_s)
            pytest.skip(str(exc))
        progress.done(case_estimate_s)
        if rounds < kvperf_config.tier.rounds and call_s is not None:
            pytestconfig.stash.setdefault(BUDGETED_KEY, {})[request.node.name] = (
                rounds, kvperf_config.tier.rounds, call_s)
            benchmark.extra_info["rounds_planned"] = kvperf_config.tier.rounds
        benchmark.extra_info.update(extra_info(
            results, experiment=case.experiment, tier=kvperf_config.tier.name, model=model_name,
            torch_threads=torch.get_num_threads(),
        ))
        benchmark.extra_info.update(case_roofline(benchmark.extra_info, session_ceilings(pytestconfig, device))
                                    .summary())
        if kvperf_config.device_map is not None:  # how the model was spread (a run without a map: no entry)
            benchmark.extra_info["device_map"] = kvperf_config.device_map
        return results

    return run


def session_ceilings(config: pytest.Config, device: str) -> MachineCeilings:
    """The machine's roofline ceilings (``kvperf.measure.ceilings``), measured at the first call of the
    session, untimed and between cases, with the threads the benchmarks use; the same value after."""
    if CEILINGS_KEY not in config.stash:
        import torch

        from kvperf.measure.ceilings import measure_ceilings

        gpu, gpu_name = None, None
        if torch.device(device).type == "cuda":
            from kvperf.gate.env import current_environment

            env = current_environment("cuda", root=config.rootpath)
            # The GPU telemetry (kvperf.measure.telemetry) where this kvperf records it, else the name alone.
            gpu, gpu_name = getattr(env, "gpu", None), env.gpu_name
        config.stash[CEILINGS_KEY] = measure_ceilings(device, gpu, gpu_name)
    return config.stash[CEILINGS_KEY]


def _check_fits(model: PreTrainedModel, spec: GenerationSpec, name: str) -> None:
    """A spec longer than the model's positions fails in one line, not in a traceback from inside
    ``generate``."""
    from kvperf.models import max_positions

    limit = max_positions(model.config)
    if limit is not None and spec.total_len > limit:
        pytest.fail(f"{spec.case_id()} reaches {spec.total_len} positions (prompt {spec.prompt_len} + "
                    f"{spec.new_tokens} new tokens) but model {name!r} has {limit}: give a shorter prompt_len or "
                    "new_tokens, or a model with more positions (--kvperf-model)", pytrace=False)


def _within_budget(config: pytest.Config, model: PreTrainedModel, spec: GenerationSpec, rounds: int,
                   warmup: int) -> tuple[int, int, float | None, str]:
    """Rounds and warm-ups under ``--kvperf-case-budget-s``: the first warm-up call is made and timed
    here (an extra untimed call with ``--kvperf-warmup 0``), then as many rounds run as fit. Returns
    them, that call's seconds (None without a budget) and a note when the rounds were lowered."""
    budget_s = config.getoption("kvperf_case_budget_s")
    if budget_s is None:
        return rounds, warmup, None, ""
    import time

    from kvperf.measure.harness import time_generation
    from kvperf.measure.prompts import make_prompts

    input_ids, attention_mask = make_prompts(model, spec)
    start = time.perf_counter()
    time_generation(model, spec, input_ids, attention_mask)
    call_s = time.perf_counter() - start
    warmup = max(0, warmup - 1)
    fit = rounds_within(budget_s, call_s, rounds, warmup)
    if fit >= rounds:
        return rounds, warmup, call_s, ""
    return fit, warmup, call_s, (f"one call takes {format_duration(call_s)}: {fit} of {rounds} timed round(s) fit in "
                                 f"--kvperf-case-budget-s {budget_s:g}")


def _forget(config: pytest.Config, benchmark: Any) -> None:
    """Keep what a failed case measured before it failed out of pytest-benchmark's table and JSON."""
    benchmark.has_error = True  # pytest-benchmark leaves such a benchmark out of its JSON
    stats = getattr(benchmark, "stats", None)
    session = getattr(config, "_benchmarksession", None)
    if stats is not None and session is not None:  # and out of its table
        session.benchmarks[:] = [b for b in session.benchmarks if b is not stats]


# A/B runs (kvperf.gate.ab): under `kvperf ab`, every test and the end of the session wait for this side's turn.

def _acquire(turns: Turns) -> None:
    """Wait for this side's turn; a driver that went away ends the session with one line, not an
    INTERNALERROR."""
    try:
        turns.acquire()
    except KvperfError as exc:
        pytest.exit(f"kvperf: {exc}", returncode=pytest.ExitCode.INTERRUPTED)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    turns = item.config.stash.get(_TURNS_KEY, None)
    if turns is None:
        return (yield)
    _acquire(turns)
    try:
        return (yield)
    finally:
        turns.release()


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    result = yield
    turns = session.config.stash.get(_TURNS_KEY, None)
    if turns is not None:  # the session's end (JSON, summaries) runs in a turn too, until unconfigure
        _acquire(turns)
    return result


def pytest_unconfigure(config: pytest.Config) -> None:
    turns = config.stash.get(_TURNS_KEY, None)
    if turns is not None:
        turns.release()
