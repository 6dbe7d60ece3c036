"""kvperf's pytest plugin (entry point ``pytest11``): options, markers, fixtures and hooks.

A benchmark file asks for ``kvperf_case`` (parametrized over the tier's cases of the experiment
named by its ``kvperf_experiment`` marker) and ``kvperf_bench`` (runs a case or any
``GenerationSpec`` under pytest-benchmark and fills ``benchmark.extra_info``)::

    @pytest.mark.kvperf_experiment("matrix")
    def test_generate(kvperf_case, kvperf_bench):
        kvperf_bench(kvperf_case)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from transformers import PreTrainedModel

from kvperf.ab import Turns
from kvperf.baseline import BASELINE_DIR, Baseline, baseline_from_json, baseline_path, load_baseline
from kvperf.baseline import write_baseline as write_baseline
from kvperf.bench import SCHEMA_VERSION, benchmark_generation, extra_info
from kvperf.compare import Comparison, TimingMode, compare, parse_thresholds
from kvperf.env import Environment, current_environment, mismatched_fields
from kvperf.errors import KvperfError
from kvperf.harness import GenerationResult
from kvperf.models import load_config, load_model, max_positions
from kvperf.render import render_table
from kvperf.spec import DTYPES, GenerationSpec, parse_dtype
from kvperf.tiers import EXPERIMENTS, TIERS, Case, Tier, get_tier

__all__ = ["KvperfConfig"]


def _name_of(dtype: torch.dtype) -> str:
    return next(name for name, (full, _) in DTYPES.items() if full == dtype)


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


def _positive(option: str, value: int | None, minimum: int = 1) -> int | None:
    if value is not None and value < minimum:
        raise KvperfError(f"{option} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class KvperfConfig:
    """The benchmark run the user asked for on the command line."""

    tier: Tier
    device: str
    dtypes: tuple[str, ...]
    trust_remote_code: bool

    @property
    def model(self) -> str:
        return self.tier.model

    @classmethod
    def from_pytest_config(cls, config: pytest.Config) -> KvperfConfig:
        opt = config.getoption
        tier = get_tier(opt("kvperf_tier")).with_overrides(
            model=opt("kvperf_model"),
            batch_sizes=_int_list("--kvperf-batch-sizes", opt("kvperf_batch_sizes")),
            prompt_lens=_int_list("--kvperf-prompt-lens", opt("kvperf_prompt_lens")),
            new_tokens=_positive("--kvperf-new-tokens", opt("kvperf_new_tokens"), minimum=2),
            rounds=_positive("--kvperf-rounds", opt("kvperf_rounds")),
            warmup_rounds=_positive("--kvperf-warmup", opt("kvperf_warmup"), minimum=0),
            cpu_threads=_positive("--kvperf-threads", opt("kvperf_threads")),
        )
        device = opt("kvperf_device")
        try:
            torch_device = torch.device(device)
        except RuntimeError:
            raise KvperfError(f"--kvperf-device {device!r} is not a device: use cpu, cuda or cuda:N") from None
        if torch_device.type not in ("cpu", "cuda"):
            raise KvperfError(f"--kvperf-device {device!r} is not supported: use cpu, cuda or cuda:N")
        raw_dtypes = opt("kvperf_dtypes")
        if raw_dtypes is None:
            raw_dtypes = "float32,bfloat16,float16" if torch_device.type == "cuda" else "float32,bfloat16"
        try:
            dtypes = tuple(dict.fromkeys(_name_of(parse_dtype(d)) for d in raw_dtypes.split(",") if d.strip()))
        except KvperfError as exc:
            raise KvperfError(f"--kvperf-dtypes: {exc}") from None
        if not dtypes:
            raise KvperfError("--kvperf-dtypes is empty: give e.g. float32,bfloat16")
        model_config = load_config(tier.model, trust_remote_code=opt("kvperf_trust_remote_code"))
        limit = max_positions(model_config)
        if limit is not None and tier.max_total_len() > limit:
            raise KvperfError(
                f"tier {tier.name!r} reaches {tier.max_total_len()} positions (prompt + new tokens) but "
                f"model {tier.model!r} has {limit}: pass shorter --kvperf-prompt-lens / --kvperf-new-tokens"
            )
        return cls(tier=tier, device=device, dtypes=dtypes,
                   trust_remote_code=opt("kvperf_trust_remote_code"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvperf", "kvperf KV-cache benchmarks")
    group.addoption("--kvperf-tier", default="quick", help=f"benchmark tier: {', '.join(TIERS)} (default quick)")
    group.addoption("--kvperf-model", default=None,
                    help="preset, local directory or cached hub id (default: the tier's model)")
    group.addoption("--kvperf-device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    group.addoption("--kvperf-dtypes", default=None,
                    help="comma-separated dtypes (default float32,bfloat16 on CPU; float16 too on CUDA)")
    group.addoption("--kvperf-batch-sizes", default=None, help="comma-separated batch sizes (override the tier)")
    group.addoption("--kvperf-prompt-lens", default=None,
                    help="comma-separated prompt lengths in tokens (override the tier)")
    group.addoption("--kvperf-new-tokens", type=int, default=None, help="new tokens per sequence (override)")
    group.addoption("--kvperf-rounds", type=int, default=None, help="timed rounds per case (override)")
    group.addoption("--kvperf-warmup", type=int, default=None, help="untimed warm-up rounds per case (override)")
    group.addoption("--kvperf-threads", type=int, default=None,
                    help="torch CPU threads while benchmarking (default: 1 in quick, torch's default in full)")
    group.addoption("--kvperf-trust-remote-code", action="store_true", default=False,
                    help="allow a hub model's own code to run (off by default)")
    # Baselines and the regression gate (kvperf.baseline, kvperf.compare). Options with an optional
    # value take it with "=": `pytest benchmarks --kvperf-compare=FILE`.
    group.addoption("--kvperf-save-baseline", nargs="?", const=_DEFAULT, default=None, metavar="DIR",
                    help=f"save this run as the baseline of its environment: DIR/<environment key>/<tier>.json "
                         f"(DIR default: {BASELINE_DIR}/ in the project root)")
    group.addoption("--kvperf-overwrite-baseline", action="store_true", default=False,
                    help="let --kvperf-save-baseline replace an existing baseline")
    group.addoption("--kvperf-compare", nargs="?", const=_DEFAULT, default=None, metavar="PATH",
                    help="compare this run with PATH (default: the saved baseline of this environment) and "
                         "fail the session on a regression")
    group.addoption("--kvperf-threshold", action="append", default=[], metavar="METRIC=PCT",
                    help="regression threshold of one metric in percent, e.g. tpot=5 (repeatable)")
    group.addoption("--kvperf-timings", choices=("gate", "auto", "skip"), default="gate",
                    help="gate: compare timings (refuse another machine's baseline); auto: only when the "
                         "machine matches; skip: deterministic metrics only (default gate)")
    group.addoption("--kvperf-allow-env-mismatch", action="store_true", default=False,
                    help="compare against a baseline from a different environment anyway")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped with a reason when none is present")
    config.addinivalue_line("markers", "kvperf_experiment(name): which experiment's cases kvperf_case runs "
                                       f"({', '.join(EXPERIMENTS)})")
    try:
        config.stash[_CONFIG_KEY] = KvperfConfig.from_pytest_config(config)
        config.stash[_GATE_KEY] = _Gate.from_pytest_config(config)
        turns = Turns.from_env()
    except KvperfError as exc:
        raise pytest.UsageError(str(exc)) from None
    if turns is not None:
        config.stash[_TURNS_KEY] = turns


_CONFIG_KEY = pytest.StashKey["KvperfConfig"]()
_TURNS_KEY = pytest.StashKey[Turns]()
_MODELS_KEY = pytest.StashKey[dict[tuple[str, str, str], PreTrainedModel]]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kvperf_case" not in metafunc.fixturenames:
        return
    cfg = metafunc.config.stash[_CONFIG_KEY]
    marker = metafunc.definition.get_closest_marker("kvperf_experiment")
    experiment = marker.args[0] if marker and marker.args else "matrix"
    marks = [pytest.mark.gpu] if torch.device(cfg.device).type == "cuda" else []
    cases = cfg.tier.cases(experiment, cfg.dtypes)
    metafunc.parametrize("kvperf_case", [pytest.param(c, id=c.id, marks=marks) for c in cases])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU, and torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kvperf_config(pytestconfig: pytest.Config) -> KvperfConfig:
    """The kvperf options of this run."""
    return pytestconfig.stash[_CONFIG_KEY]


@pytest.fixture(scope="session")
def kvperf_model(pytestconfig: pytest.Config, kvperf_config: KvperfConfig) -> Callable[[str], PreTrainedModel]:
    """``kvperf_model(dtype)``: the run's model in that dtype, loaded once per session (never timed).

    Also applies the tier's ``--kvperf-threads`` setting, since every benchmark asks for a model."""
    models = pytestconfig.stash.setdefault(_MODELS_KEY, {})

    def get(dtype: str) -> PreTrainedModel:
        threads = kvperf_config.tier.cpu_threads
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        key = (kvperf_config.model, dtype, kvperf_config.device)
        if key not in models:
            models[key] = load_model(kvperf_config.model, dtype=dtype, device=kvperf_config.device,
                                     trust_remote_code=kvperf_config.trust_remote_code)
        return models[key]

    return get


@pytest.fixture
def kvperf_bench(
    benchmark: Any, pytestconfig: pytest.Config, kvperf_config: KvperfConfig,
    kvperf_model: Callable[[str], PreTrainedModel],
) -> Callable[..., list[GenerationResult]]:
    """``kvperf_bench(case_or_spec, dtype=None)``: benchmark one case and record it in extra_info.

    Accepts a ``Case`` from ``kvperf_case`` or any ``GenerationSpec`` (then in ``dtype``, by default
    the first of ``--kvperf-dtypes``). Returns one ``GenerationResult`` per timed round.
    """

    def run(case: Case | GenerationSpec, dtype: str | None = None) -> list[GenerationResult]:
        if isinstance(case, GenerationSpec):
            case = Case("custom", case, dtype or kvperf_config.dtypes[0])
        model = kvperf_model(case.dtype)
        benchmark.group = case.experiment
        turns = pytestconfig.stash.get(_TURNS_KEY, None)
        results = benchmark_generation(benchmark, model, case.spec, rounds=kvperf_config.tier.rounds,
                                       warmup_rounds=kvperf_config.tier.warmup_rounds,
                                       before_round=turns.pass_turn if turns is not None else None)
        benchmark.extra_info.update(extra_info(
            results, experiment=case.experiment, tier=kvperf_config.tier.name, model=kvperf_config.model,
            torch_threads=torch.get_num_threads(),
        ))
        return results

    return run


# Baselines and the regression gate ------------------------------------------------------------------

_DEFAULT = "<default>"  # the const of --kvperf-save-baseline / --kvperf-compare given without a value


def _environment(config: pytest.Config) -> Environment:
    """This session's environment fingerprint, computed once."""
    if _ENV_KEY not in config.stash:
        cfg = config.stash[_CONFIG_KEY]
        threads = getattr(cfg.tier, "cpu_threads", None)
        config.stash[_ENV_KEY] = current_environment(torch.device(cfg.device).type, root=config.rootpath,
                                                     torch_threads=threads)
    return config.stash[_ENV_KEY]


@dataclass(frozen=True)
class _Gate:
    """What to do with this session's results: save them as a baseline, compare them with one."""

    save_path: Path | None
    overwrite: bool
    baseline: Baseline | None
    thresholds: dict[str, float]
    timings: TimingMode
    allow_env_mismatch: bool

    @classmethod
    def from_pytest_config(cls, config: pytest.Config) -> _Gate:
        opt = config.getoption
        save, compare_to = opt("kvperf_save_baseline"), opt("kvperf_compare")
        thresholds = parse_thresholds(opt("kvperf_threshold"))
        gate = cls(save_path=None, overwrite=opt("kvperf_overwrite_baseline"), baseline=None,
                   thresholds=thresholds, timings=cast(TimingMode, opt("kvperf_timings")),
                   allow_env_mismatch=opt("kvperf_allow_env_mismatch"))
        if save is None and compare_to is None:
            return gate
        env, tier = _environment(config), config.stash[_CONFIG_KEY].tier.name
        default_dir = config.rootpath / BASELINE_DIR
        save_path = None
        if save is not None:
            save_path = baseline_path(default_dir if save == _DEFAULT else Path(save), env.key(), tier)
            if save_path.exists() and not gate.overwrite:
                raise KvperfError(f"{save_path}: a baseline already exists: pass --kvperf-overwrite-baseline to "
                                  "replace it on purpose, or --kvperf-save-baseline=DIR to save elsewhere")
        baseline = None
        if compare_to is not None:
            path = baseline_path(default_dir, env.key(), tier) if compare_to == _DEFAULT else Path(compare_to)
            if compare_to == _DEFAULT and not path.exists():
                raise KvperfError(f"no baseline for this environment ({path}): save one first with "
                                  "`pytest benchmarks --kvperf-save-baseline`, or pass --kvperf-compare=FILE")
            baseline = load_baseline(path)
            # Refuse a baseline from another environment now, before the benchmarks run.
            exact = mismatched_fields(baseline.environment, env, timings=False)
            timing = mismatched_fields(baseline.environment, env, timings=gate.timings == "gate")
            if (exact or timing) and not gate.allow_env_mismatch:
                raise KvperfError(f"{path}: baseline environment differs in {'; '.join(timing or exact)}: use the "
                                  "baseline of this environment, --kvperf-timings auto (deterministic metrics "
                                  "only), or --kvperf-allow-env-mismatch")
        return cls(save_path=save_path, overwrite=gate.overwrite, baseline=baseline, thresholds=thresholds,
                   timings=gate.timings, allow_env_mismatch=gate.allow_env_mismatch)


_GATE_KEY = pytest.StashKey[_Gate]()
_ENV_KEY = pytest.StashKey[Environment]()
_OUTCOME_KEY = pytest.StashKey[list[str]]()
_COMPARISON_KEY = pytest.StashKey[Comparison]()


def _ran_kvperf(config: pytest.Config) -> bool:
    session = getattr(config, "_benchmarksession", None)
    return any("kvperf_schema" in getattr(b, "extra_info", {}) for b in getattr(session, "benchmarks", []))


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Record the environment fingerprint in every JSON that kvperf benchmarks are written to."""
    if _ran_kvperf(config):
        machine_info["kvperf"] = _environment(config).to_json()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Mark a JSON holding kvperf benchmarks with kvperf's schema version: it is then a baseline."""
    if any("kvperf_schema" in (b.get("extra_info") or {}) for b in output_json.get("benchmarks", [])):
        output_json["kvperf"] = {"schema": SCHEMA_VERSION}


def _session_json(config: pytest.Config) -> dict[str, Any]:
    """This session's results as pytest-benchmark writes them for --benchmark-json (its own hooks)."""
    session = config._benchmarksession  # type: ignore[attr-defined]
    machine_info = session.get_machine_info()
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)
    output: dict[str, Any] = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=session.benchmarks, include_data=True, machine_info=machine_info,
        commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=session.benchmarks, output_json=output)
    return output


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    gate = config.stash.get(_GATE_KEY, None)
    if gate is None or (gate.save_path is None and gate.baseline is None):
        return
    lines = config.stash.setdefault(_OUTCOME_KEY, [])
    if not _ran_kvperf(config):
        lines.append("kvperf: no kvperf benchmark ran, so nothing was saved or compared")
        return
    data = _session_json(config)
    try:
        if gate.baseline is not None:
            current = baseline_from_json(data, "this run")
            comparison = compare(gate.baseline, current, thresholds=gate.thresholds, timings=gate.timings,
                                 allow_env_mismatch=gate.allow_env_mismatch, flag_prefix="--kvperf-")
            config.stash[_COMPARISON_KEY] = comparison
            if comparison.regressions and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if gate.save_path is not None and exitstatus != pytest.ExitCode.OK:
            lines.append(f"kvperf: baseline not saved: the session did not pass (exit {int(exitstatus)})")
        elif gate.save_path is not None:
            written = write_baseline(data, gate.save_path, overwrite=gate.overwrite)
            lines.append(f"kvperf: saved baseline {written}")
    except KvperfError as exc:
        lines.append(f"kvperf: error: {exc}")
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR


# A/B runs (kvperf.ab): under `kvperf ab`, every test and the end of the session wait for this side's turn.

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    turns = item.config.stash.get(_TURNS_KEY, None)
    if turns is None:
        return (yield)
    with turns.turn():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    result = yield
    turns = session.config.stash.get(_TURNS_KEY, None)
    if turns is not None:  # the session's end (JSON, summaries) runs in a turn too, until unconfigure
        turns.acquire()
    return result


def pytest_unconfigure(config: pytest.Config) -> None:
    turns = config.stash.get(_TURNS_KEY, None)
    if turns is not None:
        turns.release()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    comparison = config.stash.get(_COMPARISON_KEY, None)
    lines = config.stash.get(_OUTCOME_KEY, [])
    if comparison is None and not lines:
        return
    terminalreporter.section("kvperf baseline")
    if comparison is not None:
        for line in render_table(comparison).splitlines():
            terminalreporter.write_line(line, red=bool(comparison.regressions) and line.startswith("verdict"))
    for line in lines:
        terminalreporter.write_line(line)
