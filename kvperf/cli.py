"""kvperf: time generation, size the KV cache, report experiments and compare runs against a baseline.

Exit codes:
  0  success; for compare and ab: no regression in the cases compared
  1  a regression was found (compare, ab), and nothing else
  2  bad input: a one-line message on stderr, never a traceback (a bad option, an unreadable or
     damaged file, files with no case in common, cases in one file only without --allow-partial)
  3  a side of `kvperf ab` failed (its log is named)
  5  run: the case does not fit in memory (one line with its size)
  8  compare, ab: timings were gated (--timings gate) but none could be tested (all too noisy, or
     no raw samples): not a pass
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvperf.errors import EXIT_BAD_INPUT, KvperfError, UsageError
from kvperf.text import terminal_safe

if TYPE_CHECKING:
    from kvperf.gate.ab import AbRun
    from kvperf.gate.compare import Comparison

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on a usage error already; keep its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(terminal_safe(f"kvperf: error: {message} (see `{self.prog} --help`)") + "\n")
        raise SystemExit(EXIT_BAD_INPUT)


#: Largest ``--batch`` of ``kvperf run``: torch's tensor sizes overflow beyond it (the memory runs out
#: long before, and that is reported as out of memory).
MAX_BATCH_SIZE = 2**31 - 1
#: Seeds that torch's generators take (``torch.Generator.manual_seed``): 64 bits, unsigned here.
MAX_SEED = 2**64 - 1


def _in_range(option: str, value: int, minimum: int, maximum: int) -> None:
    if not minimum <= value <= maximum:
        raise UsageError(f"{option} must be in [{minimum}, {maximum}], got {value}")


def _named(what: str, value: str | None) -> None:
    """Refuse an empty text argument, which would otherwise mean the current directory or a default."""
    if value is not None and not value.strip():
        raise UsageError(f"{what} is empty: {_NAMED_HINTS[what]}")


_NAMED_HINTS = {
    "MODEL": "give a preset (tiny-gpt2, distilgpt2, tiny-llama-gqa), a model directory or a hub id",
    "--dtype": "give float32, bfloat16 or float16, or leave the option out",
    "--device-memory": "give bytes, a size such as 24GiB or 80GB, or auto",
}


def _check_run_args(args: argparse.Namespace) -> None:
    from kvperf.tiers import MAX_WARMUP_ROUNDS

    _named("MODEL", args.model)
    if args.batch > MAX_BATCH_SIZE:  # below 1 is GenerationSpec's to refuse
        raise UsageError(f"--batch must be at most {MAX_BATCH_SIZE}, got {args.batch}")
    _in_range("--warmup", args.warmup, 0, MAX_WARMUP_ROUNDS)
    _in_range("--seed", args.seed, 0, MAX_SEED)


def _check_cache_available(args: argparse.Namespace, spec: Any, config: Any = None) -> None:
    """A cache mode this device, release, environment (or model, once ``config`` is known) lacks: one line."""
    from kvperf.measure.cache_modes import cache_unavailable

    reason = cache_unavailable(spec.cache, args.device.split(":", 1)[0], config)
    if reason is not None:
        raise UsageError(f"--cache {spec.cache}: {reason}")


def _cmd_run(args: argparse.Namespace) -> int:
    from kvperf.measure.harness import run_generation
    from kvperf.measure.oom import out_of_memory_as_error, requested_size
    from kvperf.models import load_model
    from kvperf.spec import GenerationSpec

    _check_run_args(args)
    device_map = None
    if args.device_map is not None:
        from kvperf.device_map import check_device_map, parse_device_map

        device_map = parse_device_map(args.device_map, "--device-map")
        check_device_map(device_map, "--device-map", args.device)
    spec = GenerationSpec(cache=args.cache, batch_size=args.batch, prompt_len=args.prompt,
                          new_tokens=args.new_tokens, seed=args.seed)
    _check_cache_available(args, spec)
    with out_of_memory_as_error(requested_size(spec, args.dtype, args.device), args.device,
                                hint="use a smaller --batch, --prompt or --new-tokens, or a smaller --dtype"):
        model = load_model(args.model, dtype=args.dtype, device=args.device,
                           trust_remote_code=args.trust_remote_code, device_map=device_map)
        _check_cache_available(args, spec, model.config)
        result = run_generation(model, spec, warmup_runs=args.warmup)
    summary = {"model": args.model, "spec": spec.case_id(), **result.summary()}
    if args.json:
        print(json.dumps({**summary, "itl_s": list(result.itl_s)}))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            shown = f"{value:.6g}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {shown}")
    return 0


def _add_run(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("run", help="time one generation case and print its GenerationResult")
    p.add_argument("model", help="a preset (tiny-gpt2, distilgpt2, tiny-llama-gqa), a directory or a hub id")
    p.add_argument("--cache", default="on",
                   help="on (dynamic), off (use_cache=False), static, compiled (static + torch.compile), quanto, hqq, "
                        "fp8 (quantized), offloaded or offloaded_static (CUDA)")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--device-map", metavar="auto|FILE.json",
                   help="spread the model over several devices with accelerate: auto, or a JSON file of module "
                        "name to device (GPU index, cuda:N or cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt tokens (0 to 2**64-1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls before the timed one (0 to 1000)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    p.add_argument("--json", action="store_true", help="print one JSON object, raw latencies included")
    p.set_defaults(handler=_cmd_run)


def _cmd_kv_size(args: argparse.Namespace) -> int:
    from kvperf.kv.capacity import format_bytes, kv_size_report, parse_bytes
    from kvperf.kv.kv_size import Quantization
    from kvperf.models import load_config

    _named("MODEL", args.model)
    _named("--dtype", args.dtype)
    _named("--device-memory", args.device_memory)
    if args.device_memory is not None and args.device_memory.strip().lower() != "auto" \
            and parse_bytes(args.device_memory) <= 0:
        raise UsageError(f"--device-memory {args.device_memory!r} is not positive: give the memory for weights and "
                         "cache, e.g. 24GiB or 80GB")
    config = load_config(args.model, trust_remote_code=args.trust_remote_code)
    quantization = Quantization(args.backend, args.nbits, args.q_group_size, args.residual_length)
    report = kv_size_report(args.model, config, batch_size=args.batch, seq_len=args.seq, dtype=args.dtype,
                            cache=args.cache, quantization=quantization, device_memory=args.device_memory)
    if args.json:
        print(json.dumps(report))
        return 0
    report.pop("layer_bytes")
    windows = ["-" if kind in ("state", "none") else "full" if w is None else w  # "-": no keys and values
               for kind, w in zip(report["layer_kinds"], report["layer_windows"], strict=True)]
    report["layer_kinds"] = _layer_runs(report["layer_kinds"])
    report["layer_windows"] = _layer_runs(windows)
    for key in ("num_kv_heads", "head_dim"):  # None: layers (or keys and values) differ
        if report[key] is None:
            report[key] = "varies (see layer_kinds)"
    width = max(len(k) for k in report)
    for key, value in report.items():
        shown = format_bytes(value) if key.endswith("_bytes") and isinstance(value, int) else value
        print(f"{key:<{width}}  {shown}")
    return 0


def _layer_runs(values: Sequence[object]) -> str:
    """``full x2, window 4 x2`` for runs of equal layers; a pattern that repeats is written once:
    ``(state x3, full x1) x12``."""
    from itertools import groupby

    runs = [f"{value} x{len(list(run))}" for value, run in groupby(values)]
    for period in range(1, len(runs) // 2 + 1):
        if len(runs) % period == 0 and runs == runs[:period] * (len(runs) // period):
            return f"({', '.join(runs[:period])}) x{len(runs) // period}"
    return ", ".join(runs)


def _add_kv_size(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("kv-size", help="KV-cache bytes per token and in all, and the longest context that fits")
    p.add_argument("model", help="a preset, a model directory, a config.json, or a hub id in the local cache")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch")
    p.add_argument("--seq", type=int, help="positions per sequence (default: the model's position limit)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the config's dtype, else float32)")
    p.add_argument("--cache", choices=("dynamic", "static", "quantized"), default="dynamic", help="cache class")
    p.add_argument("--device-memory", metavar="BYTES|auto",
                   help="memory for weights and cache: bytes, 24GiB, 80GB, ... or auto (free memory of "
                        "the current GPU, through NVML); adds the longest context that fits")
    p.add_argument("--backend", choices=("quanto", "fp8"), default="quanto", help="quantized cache backend")
    p.add_argument("--nbits", type=int, default=4, help="quanto: bits per element (2 or 4)")
    p.add_argument("--q-group-size", type=int, default=64, help="quanto: elements per scale and zero point")
    p.add_argument("--residual-length", type=int, default=128, help="quanto: full-precision residual tokens")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub config's own code to run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_kv_size)


def _thresholds(args: argparse.Namespace) -> dict[str, float]:
    """``--threshold`` parsed, and ``--max-cpu-wait`` checked (``compare`` and ``ab``)."""
    from kvperf.gate.compare import parse_thresholds

    if not 0 <= args.max_cpu_wait <= 1:
        raise UsageError(f"--max-cpu-wait {args.max_cpu_wait} must be in [0, 1], e.g. 0.05")
    return parse_thresholds(args.threshold)


def _print_comparison(comparison: Comparison, args: argparse.Namespace) -> int:
    """Print in ``--format`` (``--all`` for the table); the exit code of the comparison."""
    from kvperf.gate.render import render_markdown, render_table

    if args.format == "json":
        print(json.dumps(comparison.to_json(), indent=2))
    elif args.format == "markdown":
        print(render_markdown(comparison), end="")
    elif args.format == "markdown-summary":
        from kvperf.gate.markdown_summary import render_markdown_summary

        print(render_markdown_summary(comparison), end="")
    else:
        print(render_table(comparison, everything=args.all))
    return comparison.exit_code


def _cmd_compare(args: argparse.Namespace) -> int:
    from kvperf.gate.baseline import load_baseline
    from kvperf.gate.compare import compare

    thresholds = _thresholds(args)
    comparison = compare(load_baseline(args.baseline), load_baseline(args.current), thresholds=thresholds,
                         timings=args.timings, allow_env_mismatch=args.allow_env_mismatch,
                         max_cpu_wait=args.max_cpu_wait, allow_partial=args.allow_partial,
                         gate_output=args.gate_output)
    return _print_comparison(comparison, args)


_COMPARE_EXIT_CODES = ("Exit codes: 0 no regression in the cases compared, 1 at least one regression, 2 bad input "
                       "(including files with no case in common, or cases in one file only without "
                       "--allow-partial), {extra}8 timings gated (--timings gate) but none could be tested: "
                       "not a pass.")


def _add_partial(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-partial", action="store_true",
                   help="compare only the cases both runs have: cases missing from the current run or new in it "
                        "are listed instead of refused (at least one case must be in both)")
    p.add_argument("--gate-output", action="store_true",
                   help="a case whose generated token ids changed is a regression (default: a note that the "
                        "output changed)")


def _add_compare(sub: argparse._SubParsersAction[_Parser]) -> None:
    from kvperf.gate.compare import MAX_CPU_WAIT, METRICS

    p = sub.add_parser("compare", help="verdicts of a run against a baseline; exit 1 on a regression",
                       description="Compare two kvperf result files (pytest-benchmark JSON). "
                                   + _COMPARE_EXIT_CODES.format(extra=""))
    p.add_argument("baseline", help="the baseline JSON (e.g. baselines/<environment key>/quick.json)")
    p.add_argument("current", help="the JSON of the run to judge (pytest benchmarks --benchmark-json=FILE)")
    defaults = ", ".join(f"{m.name} {m.default_threshold_pct:g}" for m in METRICS)
    p.add_argument("--threshold", action="append", default=[], metavar="METRIC=PCT",
                   help=f"regression threshold of one metric in percent (repeatable); defaults: {defaults}")
    p.add_argument("--format", choices=("table", "json", "markdown", "markdown-summary"), default="table",
                   help="output format; markdown-summary fits a GitHub comment (65,536 characters): regressions "
                        "first, the other changes folded")
    p.add_argument("--all", action="store_true", help="table: list unchanged verdicts too")
    p.add_argument("--timings", choices=("gate", "report", "auto", "skip"), default="report",
                   help="report (default): gate on the deterministic metrics (FLOPs, KV bytes, CPU peak memory) and "
                        "show timings of the same machine without failing on them, since on a shared machine they "
                        "drift between runs by more than any useful threshold; gate: fail on timings too, refuse "
                        "another machine's baseline (a dedicated runner); auto: gate timings only when the machine "
                        "matches; skip: deterministic metrics only. `kvperf ab` always gates timings")
    p.add_argument("--allow-env-mismatch", action="store_true",
                   help="compare environments that differ in a field that matters")
    p.add_argument("--max-cpu-wait", type=float, default=MAX_CPU_WAIT, metavar="SHARE",
                   help=f"leave out rounds whose threads waited for a core longer than this share of the round "
                        f"(default {MAX_CPU_WAIT})")
    _add_partial(p)
    p.set_defaults(handler=_cmd_compare)


def _cmd_ab(args: argparse.Namespace) -> int:
    import time

    from kvperf.gate.ab import Side, default_cpus, parse_cpus, parse_env_items, prepare_out, run_ab
    from kvperf.gate.ab_retry import extend_noisy
    from kvperf.gate.baseline import load_baseline
    from kvperf.gate.compare import compare
    from kvperf.gate.render import render_markdown

    thresholds = _thresholds(args)
    if not 0 <= args.retry_budget_s <= 86_400:
        raise UsageError(f"--retry-budget-s {args.retry_budget_s:g} must be in [0, 86400] seconds, e.g. 120 "
                         "(0: no retries)")
    pytest_args = list(args.pytest_args)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    pytest_args = pytest_args or ["benchmarks"]
    sides = [Side(name, python=getattr(args, f"{name}_python"), directory=getattr(args, f"{name}_dir"),
                  env=parse_env_items(getattr(args, f"{name}_env"), f"--{name}-env"))
             for name in ("baseline", "current")]
    for side in sides:
        side.check()
    cpus = default_cpus() if args.cpus is None else parse_cpus(args.cpus)
    out = prepare_out(args.out, overwrite=args.overwrite)
    print(f"kvperf ab: running `pytest {shlex.join(pytest_args)}` for both sides, taking turns; "
          f"logs in {out}/baseline.log and {out}/current.log", file=sys.stderr, flush=True)
    start = time.monotonic()
    run = run_ab(sides[0], sides[1], out, pytest_args, overwrite=args.overwrite, cpus=cpus,
                 fixed_malloc=args.malloc == "fixed")
    first_run_s = time.monotonic() - start
    if run.paired_turns == 0:
        print("kvperf ab: warning: the sides never took turns (does each side's kvperf have `kvperf ab`?): their "
              "timings were measured one run after the other, not side by side", file=sys.stderr)

    def compare_files(baseline_json: Path, current_json: Path) -> Comparison:
        # The two sides may differ in software on purpose (a torch upgrade): compare anyway, and say how.
        return compare(load_baseline(baseline_json), load_baseline(current_json), thresholds=thresholds,
                       timings="gate", allow_env_mismatch=True, max_cpu_wait=args.max_cpu_wait,
                       allow_partial=args.allow_partial, gate_output=args.gate_output)

    def run_cases(cases: Sequence[tuple[str, str]], extra: Sequence[str], retry_out: Path) -> AbRun:
        return run_ab(sides[0], sides[1], retry_out, [*pytest_args, *extra], cpus=cpus,
                      fixed_malloc=args.malloc == "fixed")

    try:
        comparison = compare_files(run.baseline_json, run.current_json)
    except KvperfError as exc:
        raise type(exc)(f"{exc} (the results of both sides are kept in {out})") from None
    comparison, _ = extend_noisy(run, comparison, out_dir=out, run_cases=run_cases, compare_files=compare_files,
                                 budget_s=args.retry_budget_s, first_run_s=first_run_s,
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
    code = _print_comparison(comparison, args)
    target = out / "comparison.md"
    try:
        target.write_text(render_markdown(comparison), encoding="utf-8")
    except OSError as exc:
        raise KvperfError(f"{target}: cannot write the comparison ({exc.strerror or type(exc).__name__}); the "
                          f"results of both sides are in {out}") from None
    return code


def _add_ab(sub: argparse._SubParsersAction[_Parser]) -> None:
    from kvperf.gate.ab_retry import RETRY_BUDGET_S
    from kvperf.gate.compare import MAX_CPU_WAIT

    p = sub.add_parser(
        "ab", help="benchmark a baseline and a current checkout side by side, taking turns, and compare them",
        description="Run the benchmarks of two sides (each a Python with kvperf installed and a checkout) as two "
                    "pytest sessions that take turns round by round, so both see the same machine, then compare "
                    "them like `kvperf compare`. Cases whose timings were too noisy to test are run again, both "
                    "sides taking turns, within --retry-budget-s. Writes baseline.json, current.json, their logs, "
                    "retries/ and comparison.md into --out, and never replaces an earlier run's files there "
                    "without --overwrite. " + _COMPARE_EXIT_CODES.format(extra="3 a side's session failed, ")
                    + " Pytest arguments go after `--` (default: benchmarks).")
    for name in ("baseline", "current"):
        p.add_argument(f"--{name}-python", default=sys.executable, metavar="PYTHON",
                       help=f"python of the {name} side's environment (default: this one)")
        p.add_argument(f"--{name}-dir", default=".", metavar="DIR",
                       help=f"checkout the {name} side runs in (default: the current directory)")
        p.add_argument(f"--{name}-env", action="append", default=[], metavar="NAME=VALUE",
                       help=f"environment variable for the {name} side only (repeatable)")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="CPUs both sides are pinned to, comma-separated, or all (default: the last CPU; give as "
                        "many as the benchmarks' torch threads)")
    p.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                   help="fixed: both sides run glibc malloc with fixed thresholds, so allocation costs do not "
                        "depend on each process's history (default); default: leave the allocator alone")
    p.add_argument("--out", default="kvperf-ab", metavar="DIR", help="directory for the results (default kvperf-ab)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier A/B run in --out (its JSON, logs, retries and "
                        "comparison.md)")
    p.add_argument("--retry-budget-s", type=float, default=RETRY_BUDGET_S, metavar="SECONDS",
                   help="time to spend running again the cases whose timings were too noisy to test, adding "
                        f"their rounds (default {RETRY_BUDGET_S:g}; 0: no retries)")
    _add_partial(p)
    p.add_argument("--threshold", action="append", default=[], metavar="METRIC=PCT",
                   help="regression threshold of one metric in percent (repeatable), as for compare")
    p.add_argument("--format", choices=("table", "json", "markdown", "markdown-summary"), default="table",
                   help="output format; markdown-summary fits a GitHub comment (65,536 characters): regressions "
                        "first, the other changes folded")
    p.add_argument("--all", action="store_true", help="table: list unchanged verdicts too")
    p.add_argument("--max-cpu-wait", type=float, default=MAX_CPU_WAIT, metavar="SHARE",
                   help=f"leave out rounds that waited for a core longer than this share (default {MAX_CPU_WAIT})")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="pytest arguments, after --")
    p.set_defaults(handler=_cmd_ab)


def _cmd_report(args: argparse.Namespace) -> int:
    from kvperf.report.experiments import format_table, load_cases, make_plots, make_tables

    if args.plots is not None and not args.plots.strip():
        raise UsageError("--plots '' names no directory: give one for the PNG files, e.g. --plots plots, "
                         "or leave the option out")
    cases = load_cases(args.results)
    print("\n".join(format_table(t, args.format) for t in make_tables(cases)), end="")
    if args.plots:
        for path in make_plots(cases, args.plots):
            print(f"wrote {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from kvperf.gate.export import export_cases
    from kvperf.report.experiments import load_cases

    print(json.dumps(export_cases(load_cases(args.results), args.format), indent=2))
    return 0


def _add_export(sub: argparse._SubParsersAction[_Parser]) -> None:
    from kvperf.gate.export import EXPORT_FORMATS

    p = sub.add_parser("export", help="kvperf's metrics for github-action-benchmark or Bencher, on stdout",
                       description="Write TTFT, TPOT, e2e, tokens/s, FLOPs per token, KV bytes and peak memory of "
                                   "every case as github-action-benchmark's customSmallerIsBetter (github-smaller) or "
                                   "customBiggerIsBetter (github-bigger) JSON, or Bencher Metric Format (bencher).")
    p.add_argument("results", nargs="+", help="files written by pytest benchmarks --benchmark-json=FILE")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="the tracker's format")
    p.set_defaults(handler=_cmd_export)


def _add_report(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("report", help="tables (and plots) of the experiments in benchmark JSON files")
    p.add_argument("results", nargs="+", help="files written by pytest benchmarks --benchmark-json=FILE")
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR (needs kvperf[plot])")
    p.set_defaults(handler=_cmd_report)


def _cmd_env(args: argparse.Namespace) -> int:
    import re

    from kvperf.gate.env import current_environment
    from kvperf.measure.energy import energy_meter

    if not re.fullmatch(r"(cpu|cuda)(:\d+)?", args.device):
        raise UsageError(f"--device {args.device!r} is not a device: use cpu, cuda or cuda:N")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise UsageError(f"--torch-threads must be at least 1, got {args.torch_threads}")
    device_type = args.device.split(":", 1)[0]
    env = current_environment(device_type, torch_threads=args.torch_threads, device=args.device)
    data = env.to_json()
    # Which energy counter a run on the CPU and on the GPU would read, or why there is none.
    sources = {}
    for kind, device in (("cpu", "cpu"), ("cuda", args.device if device_type == "cuda" else "cuda")):
        with energy_meter(device) as meter:
            sources[kind] = {"source": meter.source, "note": meter.note}
    data["energy_sources"] = sources
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            for inner, item in value.items():
                if isinstance(item, dict):
                    rows += [(f"{key}.{inner}.{name}", v) for name, v in item.items()]
                else:
                    rows.append((f"{key}.{inner}", item))
        else:
            rows.append((key, value))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(terminal_safe(f"{key:<{width}}  {'-' if value is None else value}"))
    return 0


def _add_env(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("env", help="the environment fingerprint: CPU, torch, transformers, GPU telemetry, energy",
                       description="Print the environment fingerprint kvperf records with every result (its key "
                                   "names the baseline directory), the GPU's NVML telemetry, and which energy "
                                   "counter a run would read; null (-) fields come with the reason (note).")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: the device the benchmarks run on")
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="intra-op threads the benchmarks use (part of the key; default: torch's current setting; "
                        "the quick tier runs 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_env)


def build_parser() -> _Parser:
    doc = __doc__ or ""
    parser = _Parser(prog="kvperf", description=doc.splitlines()[0] if doc else None,
                     epilog=doc[doc.index("Exit codes:"):] if "Exit codes:" in doc else None,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_kv_size(sub)
    _add_report(sub)
    _add_export(sub)
    _add_compare(sub)
    _add_ab(sub)
    _add_env(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at interpreter exit
        return code
    except KvperfError as exc:
        sys.stderr.write(terminal_safe(f"kvperf: error: {exc}") + "\n")
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (``kvperf export ... | head``): not an error of kvperf's. Point stdout at
        # /dev/null so that the interpreter's final flush does not raise again, and exit as `yes | head` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
