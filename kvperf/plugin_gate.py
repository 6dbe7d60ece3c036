"""kvperf's pytest plugin, part 2: baselines and the regression gate (registered by ``kvperf.plugin``).

``--kvperf-save-baseline`` saves the session's results as a baseline (``kvperf.gate.baseline``);
``--kvperf-compare`` compares them with one (``kvperf.gate.compare``) and fails the session on a regression.
What the gate promises (README, "What kvperf promises: runs and baselines"):

* Everything it can check before a run, it checks before any benchmark runs, with one ``ERROR:`` line
  and exit 4: a bad or mismatched baseline, an existing one, a directory that can't be written, a
  subset of the tier saved as its default baseline without ``--kvperf-save-subset``.
* It never reports a pass for a comparison of nothing: when no kvperf case ran (all skipped or
  deselected) or none of them is in the baseline, the session exits 6 (``EXIT_NOTHING_COMPARED``).
* It never loses a run: when the baseline can't be written at the end, the results go to a fallback
  file, one line says where, and the session exits 7 (``EXIT_SAVE_FAILED``); never a traceback.
* A saved file says what it holds: ``kvperf_subset``, ``kvperf_selection`` (``kvperf.gate.selection``) and
  ``kvperf_skipped_cases`` at its top level, and no hostname.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest

from kvperf.errors import EXIT_NOTHING_COMPARED, EXIT_SAVE_FAILED, KvperfError
from kvperf.gate.baseline import (
    BASELINE_DIR,
    Baseline,
    SkippedCase,
    baseline_from_json,
    baseline_path,
    check_writable,
    load_baseline,
    write_baseline,
    write_fallback,
)
from kvperf.gate.compare import EXIT_UNTESTED, TIMING_MODES, Comparison, TimingMode, compare, parse_thresholds
from kvperf.gate.env import Environment, current_environment, mismatched_fields
from kvperf.gate.render import render_table
from kvperf.gate.selection import Selection, narrowed_by, relative_args
from kvperf.plugin import BUDGETED_KEY, CEILINGS_KEY, CONFIG_KEY, add_option, kvperf_config_of
from kvperf.report.summary import write_summary
from kvperf.tiers import get_tier

__all__: list[str] = []  # hooks only

_DEFAULT = "<default>"  # the const of --kvperf-save-baseline / --kvperf-compare given without a value

_GATE_KEY = pytest.StashKey["_Gate"]()
_ENV_KEY = pytest.StashKey[Environment]()
#: Lines for the terminal summary.
_OUTCOME_KEY = pytest.StashKey[list[str]]()
_COMPARISON_KEY = pytest.StashKey[Comparison]()
#: Tests removed from the collection by -k, -m, --deselect, --lf.
_DESELECTED_KEY = pytest.StashKey[int]()
_SELECTION_KEY = pytest.StashKey[Selection]()
#: Skipped kvperf cases by test name.
_SKIPPED_KEY = pytest.StashKey[dict[str, SkippedCase]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvperf", "kvperf KV-cache benchmarks")
    # Baselines and the regression gate (kvperf.gate.baseline, kvperf.gate.compare). Options with an optional
    # value take it with "=": `pytest benchmarks --kvperf-compare=FILE`.
    add_option(group, "--kvperf-save-baseline", nargs="?", const=_DEFAULT, default=None, metavar="DIR",
                    help=f"save this run as the baseline of its environment: DIR/<environment key>/<tier>.json "
                         f"(DIR default: {BASELINE_DIR}/ in the project root)")
    add_option(group, "--kvperf-overwrite-baseline", action="store_true", default=False,
                    help="let --kvperf-save-baseline replace an existing baseline")
    add_option(group, "--kvperf-save-subset", action="store_true", default=False,
                    help="let --kvperf-save-baseline save part of the tier (-k, -m, a node id, fewer dtypes, other "
                         "sizes or model) as the tier's default baseline; the file says so (kvperf_subset)")
    add_option(group, "--kvperf-compare", nargs="?", const=_DEFAULT, default=None, metavar="PATH",
                    help="compare this run with PATH (default: the saved baseline of this environment) and "
                         "fail the session on a regression")
    add_option(group, "--kvperf-threshold", action="append", default=[], metavar="METRIC=PCT",
                    help="regression threshold of one metric in percent, e.g. tpot=5 (repeatable)")
    add_option(group, "--kvperf-timings", choices=TIMING_MODES, default="report",
                    help="report (default): gate on FLOPs, KV bytes and CPU peak memory, show the timings of a "
                         "baseline from this machine without failing on them (on a shared machine they drift "
                         "between runs by more than any useful threshold); gate: fail on timings too, for a "
                         "dedicated runner (refuses another machine's baseline); auto: gate timings only when the "
                         "machine matches; skip: deterministic metrics only")
    add_option(group, "--kvperf-allow-env-mismatch", action="store_true", default=False,
                    help="compare against a baseline from a different environment anyway")
    add_option(group, "--kvperf-benchmark-table", action="store_true", default=False,
                    help="also print pytest-benchmark's whole-call tables (by default kvperf prints its own summary "
                         "instead when kvperf cases ran; the JSON is the same either way)")
    add_option(group, "--kvperf-allow-partial", action="store_true", default=False,
                    help="a partial comparison is intended: baseline cases missing from this run, or cases "
                         "new in it, are listed instead of refused (at least one case must still match)")


@pytest.hookimpl(trylast=True)  # after kvperf.plugin's, which reads the run's options
def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[_GATE_KEY] = _Gate.from_pytest_config(config)
    except KvperfError as exc:
        raise pytest.UsageError(str(exc)) from None


def _uses_kvperf(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    return any(name in fixtures for name in ("kvperf_case", "kvperf_bench", "kvperf_model", "kvperf_config"))


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        config = items[0].config
        config.stash[_DESELECTED_KEY] = config.stash.get(_DESELECTED_KEY, 0) + len(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Record which of the tier's cases were selected; refuse to save a subset as the tier's baseline."""
    config = session.config
    if CONFIG_KEY not in config.stash and not any(_uses_kvperf(item) for item in session.items):
        return  # a session without kvperf cases: nothing to record, and nothing imported
    cfg = kvperf_config_of(config)
    opt = config.getoption
    default, device_type = get_tier(cfg.tier.name), cfg.device_type
    args = relative_args(config.args, config.rootpath)
    keyword, markexpr, deselected = opt("keyword") or "", opt("markexpr") or "", config.stash.get(_DESELECTED_KEY, 0)
    selection = Selection(
        tier=cfg.tier.name, model=cfg.model, device_type=device_type, dtypes=cfg.dtypes, args=args, keyword=keyword,
        markexpr=markexpr, deselected_tests=deselected,
        narrowed_by=narrowed_by(cfg.tier, default, dtypes=cfg.dtypes, device_type=device_type, args=args,
                                keyword=keyword, markexpr=markexpr, deselected_tests=deselected,
                                tier_cases=any("kvperf_case" in getattr(i, "fixturenames", ()) for i in session.items)))
    config.stash[_SELECTION_KEY] = selection
    gate = config.stash[_GATE_KEY]
    if gate.save_path is not None and gate.save_is_default and selection.subset and not opt("kvperf_save_subset"):
        raise pytest.UsageError(
            f"{gate.save_path}: refusing to save part of tier {cfg.tier.name!r} as its baseline "
            f"({'; '.join(selection.narrowed_by)}): save the whole tier, pass --kvperf-save-baseline=DIR to save "
            "elsewhere, or --kvperf-save-subset to save it here marked as a subset")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Remember every kvperf case that was skipped (no GPU, out of memory) and why: a saved baseline lists them."""
    report = yield
    fixtures = getattr(item, "fixturenames", ())
    if report.skipped and not hasattr(report, "wasxfail") and ("kvperf_bench" in fixtures or "kvperf_case" in fixtures):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        model = kvperf_config_of(item.config).model
        skipped = item.config.stash.setdefault(_SKIPPED_KEY, {})
        skipped[item.name] = SkippedCase(name=item.name, model=model, reason=reason.removeprefix("Skipped: "))
    return report


def _environment(config: pytest.Config) -> Environment:
    """This session's environment fingerprint, computed once."""
    if _ENV_KEY not in config.stash:
        cfg = kvperf_config_of(config)
        threads = getattr(cfg.tier, "cpu_threads", None)
        config.stash[_ENV_KEY] = current_environment(cfg.device_type, root=config.rootpath,
                                                     torch_threads=threads, device=cfg.device)
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
    #: ``--kvperf-allow-partial``: cases in one file only are listed, not refused.
    allow_partial: bool = False
    #: The save goes to the tier's default baseline (``baselines/<key>/<tier>.json`` of the project).
    save_is_default: bool = False
    #: Why the baseline compared with is not this environment's own (``_default_baseline``).
    baseline_note: str = ""

    @classmethod
    def from_pytest_config(cls, config: pytest.Config) -> _Gate:
        opt = config.getoption
        save, compare_to = opt("kvperf_save_baseline"), opt("kvperf_compare")
        thresholds = parse_thresholds(opt("kvperf_threshold"))
        gate = cls(save_path=None, overwrite=opt("kvperf_overwrite_baseline"), baseline=None,
                   thresholds=thresholds, timings=cast(TimingMode, opt("kvperf_timings")),
                   allow_env_mismatch=opt("kvperf_allow_env_mismatch"),
                   allow_partial=opt("kvperf_allow_partial"))
        if save is not None and not save.strip():
            raise KvperfError("--kvperf-save-baseline= names no directory (it would save into the current one): "
                              "give --kvperf-save-baseline=DIR, or no value for baselines/ in the project root")
        if compare_to is not None and not compare_to.strip():
            raise KvperfError("--kvperf-compare= names no file: give --kvperf-compare=FILE, or no value for the "
                              "baseline of this environment")
        if save is None and compare_to is None:
            return gate
        env, tier = _environment(config), kvperf_config_of(config).tier.name
        default_dir = config.rootpath / BASELINE_DIR
        save_path, save_is_default = None, False
        if save is not None:
            save_dir = default_dir if save == _DEFAULT else Path(save)
            save_is_default = save_dir.resolve() == default_dir.resolve()
            save_path = baseline_path(save_dir, env.key(), tier)
            if save_path.exists() and not gate.overwrite:
                raise KvperfError(f"{save_path}: a baseline already exists: pass --kvperf-overwrite-baseline to "
                                  "replace it on purpose, or --kvperf-save-baseline=DIR to save elsewhere")
            # Now, not after the whole run: a directory that can't be written would lose it.
            check_writable(save_path.parent)
        baseline, baseline_note = None, ""
        if compare_to is not None:
            if compare_to == _DEFAULT:
                path, baseline, baseline_note = _default_baseline(default_dir, env, tier)
            else:
                path = Path(compare_to)
                baseline = load_baseline(path)
            if not gate.allow_env_mismatch:
                _check_environment(path, baseline.environment, env, gate.timings)
        return cls(save_path=save_path, overwrite=gate.overwrite, baseline=baseline, thresholds=thresholds,
                   timings=gate.timings, allow_env_mismatch=gate.allow_env_mismatch, allow_partial=gate.allow_partial,
                   save_is_default=save_is_default, baseline_note=baseline_note)


def _default_baseline(directory: Path, env: Environment, tier: str) -> tuple[Path, Baseline, str]:
    """The baseline ``--kvperf-compare`` uses without a path: this environment's own
    (``DIR/<key>/<tier>.json``), else a committed one of the same software and device, the same
    hardware first (a fresh clone has no baseline of its own machine: it gets the deterministic
    metrics gated against the reference, and its timings left out, never a false regression)."""
    own = baseline_path(directory, env.key(), tier)
    if own.exists():
        return own, load_baseline(own), ""
    candidates = sorted(p for p in directory.glob(f"*/{tier}.json") if p != own)
    if not candidates:
        raise KvperfError(f"no baseline for this environment ({own}): save one first with "
                          "`pytest benchmarks --kvperf-save-baseline`, or pass --kvperf-compare=FILE")
    usable: list[tuple[bool, Path, Baseline]] = []
    other_software: list[str] = []
    installs: list[str] = []
    for path in candidates:
        baseline = load_baseline(path)
        mismatch = mismatched_fields(baseline.environment, env, timings=False)
        if mismatch:
            other_software.append(f"{path} ({'; '.join(mismatch)})")
            installs.append(_install_hint(baseline.environment, env))
        else:
            same_hardware = not mismatched_fields(baseline.environment, env, timings=True, host=False)
            usable.append((not same_hardware, path, baseline))
    if not usable:
        # Not compared across releases: FLOPs and KV bytes can change with torch or transformers (README,
        # "Supported versions"), so such a comparison could report a regression that no code change made.
        install = next((hint for hint in installs if hint), "")
        install = f", install the release it was made with to compare with it ({install})" if install else ""
        raise KvperfError(f"no baseline for this environment ({own}), and the saved ones were made with other "
                          f"software: {', '.join(other_software)}: save one with `pytest benchmarks "
                          f"--kvperf-save-baseline`{install}, or pass --kvperf-compare=FILE "
                          "--kvperf-allow-env-mismatch")
    _, path, baseline = min(usable, key=lambda u: (u[0], str(u[1])))
    return path, baseline, (f"no baseline of this machine ({own}); compared with {path} (same torch, transformers "
                            "and device, another machine)")


def _install_hint(baseline: Environment, current: Environment) -> str:
    """``pip install "torch==2.13.0" "transformers==5.23.0"`` for the libraries that alone tell a
    baseline's software from this one's; empty when something else differs too (the device)."""
    if baseline.device_type != current.device_type:
        return ""
    pins = [f'"{library}=={getattr(baseline, name)}"' for name, library in
            (("torch_version", "torch"), ("transformers_version", "transformers"))
            if getattr(baseline, name) != getattr(current, name) and getattr(baseline, name)]
    return f"`pip install {' '.join(pins)}`" if pins else ""


def _check_environment(path: Path, baseline: Environment, current: Environment, timings: TimingMode) -> None:
    """Refuse a baseline from another environment now, before the benchmarks run, with the fix that
    applies: other software or device changes every metric, so only --kvperf-allow-env-mismatch
    helps; another machine changes timings only, which are gated only under --kvperf-timings gate."""
    exact = mismatched_fields(baseline, current, timings=False)
    timing = mismatched_fields(baseline, current, timings=timings == "gate")
    if exact:
        raise KvperfError(f"{path}: baseline environment differs in {'; '.join(timing)}, which changes every "
                          "metric: use a baseline made with this torch, transformers and device, or "
                          "--kvperf-allow-env-mismatch to compare anyway")
    if timing:
        raise KvperfError(f"{path}: baseline environment differs in {'; '.join(timing)}: timings are gated only "
                          "against a baseline of this machine: use the baseline of this environment, "
                          "--kvperf-timings report (gate the deterministic metrics, leave timings out), or "
                          "--kvperf-allow-env-mismatch")


def _ran_kvperf(config: pytest.Config) -> bool:
    session = getattr(config, "_benchmarksession", None)
    return any("kvperf_schema" in getattr(b, "extra_info", {}) for b in getattr(session, "benchmarks", []))


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Record the environment fingerprint in every JSON that kvperf benchmarks are written to, and drop
    the hostname that pytest-benchmark records (``node``): baselines get committed, and nothing in
    kvperf needs it (the environment key is made of the hardware and software, see ``kvperf.gate.env``)."""
    if _ran_kvperf(config):
        machine_info.pop("node", None)
        env = _environment(config)
        ceilings = config.stash.get(CEILINGS_KEY, None)  # the roofline's, measured at the session's first case
        if ceilings is not None:
            env = replace(env, **ceilings.environment_fields())
        machine_info["kvperf"] = env.to_json()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Mark a JSON holding kvperf benchmarks with kvperf's schema version (it is then a baseline), what
    the run selected (``kvperf_subset``, ``kvperf_selection``) and what it skipped (``kvperf_skipped_cases``)."""
    if any("kvperf_schema" in (b.get("extra_info") or {}) for b in output_json.get("benchmarks", [])):
        from kvperf.measure.bench import SCHEMA_VERSION  # imported already: kvperf cases ran

        output_json["kvperf"] = {"schema": SCHEMA_VERSION}
        selection = config.stash.get(_SELECTION_KEY, None)
        if selection is not None:
            output_json["kvperf_subset"] = selection.subset
            output_json["kvperf_selection"] = selection.to_json()
        output_json["kvperf_skipped_cases"] = [c.to_json() for c in config.stash.get(_SKIPPED_KEY, {}).values()]


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


def _fail(session: pytest.Session, status: int) -> None:
    """Make the session exit with ``status``, unless it already failed for another reason."""
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = status


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    gate = config.stash.get(_GATE_KEY, None)
    if gate is None or (gate.save_path is None and gate.baseline is None) or config.option.collectonly \
            or exitstatus == pytest.ExitCode.USAGE_ERROR:
        return
    lines = config.stash.setdefault(_OUTCOME_KEY, [])
    if not _ran_kvperf(config):
        skipped = list(config.stash.get(_SKIPPED_KEY, {}).values())
        why = f" ({len(skipped)} skipped: {skipped[0].reason}{', ...' if len(skipped) > 1 else ''})" if skipped else ""
        lines.append(f"kvperf: error: no kvperf case ran{why}, so nothing was compared or saved")
        _fail(session, EXIT_NOTHING_COMPARED)
        return
    data = _session_json(config)
    try:
        if gate.baseline is not None:
            current = baseline_from_json(data, "this run")
            if not set(gate.baseline.cases) & set(current.cases):
                lines.append(f"kvperf: error: nothing compared: none of the {len(current.cases)} case(s) of this run "
                             f"is among the {len(gate.baseline.cases)} of the baseline {gate.baseline.source}: "
                             "compare with a baseline of the same tier, model and dtypes")
                _fail(session, EXIT_NOTHING_COMPARED)
            else:
                comparison = compare(gate.baseline, current, thresholds=gate.thresholds, timings=gate.timings,
                                     allow_env_mismatch=gate.allow_env_mismatch, allow_partial=gate.allow_partial,
                                     flag_prefix="--kvperf-")
                config.stash[_COMPARISON_KEY] = comparison
                if comparison.outcome == "regression":
                    _fail(session, pytest.ExitCode.TESTS_FAILED)
                elif comparison.outcome == "untested":
                    _fail(session, EXIT_UNTESTED)
    except KvperfError as exc:
        lines.append(f"kvperf: error: {exc}")
        _fail(session, pytest.ExitCode.USAGE_ERROR)
    if gate.save_path is not None and exitstatus != pytest.ExitCode.OK:
        lines.append(f"kvperf: baseline not saved: the session did not pass (exit {int(exitstatus)})")
    elif gate.save_path is not None:
        _save(session, gate.save_path, gate.overwrite, data, lines)


def _save(session: pytest.Session, path: Path, overwrite: bool, data: dict[str, Any], lines: list[str]) -> None:
    """Write the baseline; if that fails, keep the results in a fallback file and say where, in one line."""
    config = session.config
    try:
        written = write_baseline(data, path, overwrite=overwrite)
    except (OSError, KvperfError) as exc:
        why = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
        fallback, failures = write_fallback(data, path.stem)
        kept = f"this run's results are in {fallback}: move it there once that is fixed" if fallback else \
            f"nor could its results be kept ({'; '.join(failures)}): rerun with --benchmark-json=FILE"
        lines.append(f"kvperf: error: could not save the baseline {path} ({why}); {kept}")
        _fail(session, EXIT_SAVE_FAILED)
        return
    lines.append(f"kvperf: saved baseline {written}")
    selection = config.stash.get(_SELECTION_KEY, None)
    if selection is not None and selection.subset:
        lines.append(f"kvperf: warning: this baseline holds part of tier {selection.tier!r}, and says so "
                     f"(kvperf_subset: true): {'; '.join(selection.narrowed_by)}")
    skipped = config.stash.get(_SKIPPED_KEY, {})
    if skipped:
        lines.append(f"kvperf: warning: {len(skipped)} case(s) skipped, listed in the baseline (kvperf_skipped_cases): "
                     + ", ".join(skipped))


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Before pytest-benchmark's summary: leave its whole-call tables out when kvperf prints its own
    (``--kvperf-benchmark-table`` keeps them). Its regression check and its JSON are untouched."""
    session = getattr(config, "_benchmarksession", None)
    if session is not None and _ran_kvperf(config) and not config.getoption("kvperf_benchmark_table"):
        session.quiet = True


def _kvperf_cases(config: pytest.Config) -> list[dict[str, Any]]:
    session = getattr(config, "_benchmarksession", None)
    return [b.extra_info for b in getattr(session, "benchmarks", []) if "kvperf_schema" in getattr(b, "extra_info", {})]


@pytest.hookimpl(trylast=True, specname="pytest_terminal_summary")  # after pytest-benchmark's tables
def pytest_terminal_summary_kvperf(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """kvperf's summary, one table per experiment, then the baseline section; the verdict last."""
    cases = _kvperf_cases(config)
    if cases:
        terminalreporter.section("kvperf summary")
        write_summary(terminalreporter.write_line, cases)
        budgeted = config.stash.get(BUDGETED_KEY, {})
        if budgeted:
            terminalreporter.write_line(
                f"kvperf: {len(budgeted)} case(s) ran fewer rounds to fit --kvperf-case-budget-s "
                f"{config.getoption('kvperf_case_budget_s'):g} (rounds run of the tier's, one call): "
                + ", ".join(f"{name} {run}/{planned} ({call_s:.1f} s)" for name, (run, planned, call_s)
                            in budgeted.items()))
        json_path = config.getoption("benchmark_json", None)
        if json_path:
            terminalreporter.write_line(f"kvperf: every round is in {json_path}: `kvperf report {json_path}` for the "
                                        "experiments' tables and plots")
        else:
            terminalreporter.write_line("kvperf: add --benchmark-json=FILE to keep every round for `kvperf report "
                                        "FILE` and `kvperf compare`")
    comparison = config.stash.get(_COMPARISON_KEY, None)
    lines = config.stash.get(_OUTCOME_KEY, [])
    if comparison is None and not lines:
        return
    terminalreporter.section("kvperf baseline")
    gate = config.stash.get(_GATE_KEY, None)
    table = render_table(comparison).splitlines() if comparison is not None else []
    for line in table[:-1]:
        terminalreporter.write_line(line)
    if comparison is not None and gate is not None and gate.baseline is not None:
        if gate.baseline_note:
            terminalreporter.write_line(f"kvperf: {gate.baseline_note}")
        terminalreporter.write_line(f"kvperf: environment key {_environment(config).key()} (this run), "
                                    f"{gate.baseline.environment.key()} (baseline {gate.baseline.source})")
    for line in lines:
        terminalreporter.write_line(line)
    if table:  # the verdict comes last
        terminalreporter.write_line(table[-1], red=comparison is not None and bool(comparison.regressions),
                                    green=comparison is not None and comparison.outcome == "pass")
