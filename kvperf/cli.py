"""kvperf: time generation, size the KV cache, report experiments and compare runs against a baseline.

Exit codes: 0 success, 1 a regression was found (``compare``, ``ab``), 2 bad input (a one-line message
on stderr, never a traceback), 3 a side of ``kvperf ab`` failed (its log is named).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kvperf.errors import EXIT_BAD_INPUT, KvperfError, UsageError

if TYPE_CHECKING:
    from kvperf.compare import Comparison

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on a usage error already; keep its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"kvperf: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _cmd_run(args: argparse.Namespace) -> int:
    from kvperf.harness import run_generation
    from kvperf.models import load_model
    from kvperf.spec import GenerationSpec

    spec = GenerationSpec(cache=args.cache, batch_size=args.batch, prompt_len=args.prompt,
                          new_tokens=args.new_tokens, seed=args.seed)
    model = load_model(args.model, dtype=args.dtype, device=args.device,
                       trust_remote_code=args.trust_remote_code)
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
    p.add_argument("--cache", default="on", help="on (dynamic), off (use_cache=False) or static")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt tokens")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls before the timed one")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    p.add_argument("--json", action="store_true", help="print one JSON object, raw latencies included")
    p.set_defaults(handler=_cmd_run)


def _cmd_kv_size(args: argparse.Namespace) -> int:
    from kvperf.capacity import format_bytes, kv_size_report
    from kvperf.kv_size import Quantization
    from kvperf.models import load_config

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
    from kvperf.compare import parse_thresholds

    if not 0 <= args.max_cpu_wait <= 1:
        raise UsageError(f"--max-cpu-wait {args.max_cpu_wait} must be in [0, 1], e.g. 0.05")
    return parse_thresholds(args.threshold)


def _print_comparison(comparison: Comparison, args: argparse.Namespace) -> int:
    """Print in ``--format`` (``--all`` for the table); the exit code of the comparison."""
    from kvperf.render import render_markdown, render_table

    if args.format == "json":
        print(json.dumps(comparison.to_json(), indent=2))
    elif args.format == "markdown":
        print(render_markdown(comparison), end="")
    else:
        print(render_table(comparison, everything=args.all))
    return comparison.exit_code


def _cmd_compare(args: argparse.Namespace) -> int:
    from kvperf.baseline import load_baseline
    from kvperf.compare import compare

    thresholds = _thresholds(args)
    comparison = compare(load_baseline(args.baseline), load_baseline(args.current), thresholds=thresholds,
                         timings=args.timings, allow_env_mismatch=args.allow_env_mismatch,
                         max_cpu_wait=args.max_cpu_wait)
    return _print_comparison(comparison, args)


def _add_compare(sub: argparse._SubParsersAction[_Parser]) -> None:
    from kvperf.compare import MAX_CPU_WAIT, METRICS

    p = sub.add_parser("compare", help="verdicts of a run against a baseline; exit 1 on a regression",
                       description="Compare two kvperf result files (pytest-benchmark JSON). Exit codes: 0 no "
                                   "regression, 1 at least one regression, 2 bad input.")
    p.add_argument("baseline", help="the baseline JSON (e.g. baselines/<environment key>/quick.json)")
    p.add_argument("current", help="the JSON of the run to judge (pytest benchmarks --benchmark-json=FILE)")
    defaults = ", ".join(f"{m.name} {m.default_threshold_pct:g}" for m in METRICS)
    p.add_argument("--threshold", action="append", default=[], metavar="METRIC=PCT",
                   help=f"regression threshold of one metric in percent (repeatable); defaults: {defaults}")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table", help="output format")
    p.add_argument("--all", action="store_true", help="table: list unchanged verdicts too")
    p.add_argument("--timings", choices=("gate", "auto", "skip"), default="gate",
                   help="gate: compare timings, refuse another machine's baseline; auto: compare timings only "
                        "when the machine matches; skip: deterministic metrics only (default gate)")
    p.add_argument("--allow-env-mismatch", action="store_true",
                   help="compare environments that differ in a field that matters")
    p.add_argument("--max-cpu-wait", type=float, default=MAX_CPU_WAIT, metavar="SHARE",
                   help=f"leave out rounds whose threads waited for a core longer than this share of the round "
                        f"(default {MAX_CPU_WAIT})")
    p.set_defaults(handler=_cmd_compare)


def _cmd_ab(args: argparse.Namespace) -> int:
    from kvperf.ab import Side, default_cpus, parse_cpus, parse_env_items, run_ab
    from kvperf.baseline import load_baseline
    from kvperf.compare import compare
    from kvperf.render import render_markdown

    thresholds = _thresholds(args)
    pytest_args = list(args.pytest_args)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    sides = [Side(name, python=getattr(args, f"{name}_python"), directory=getattr(args, f"{name}_dir"),
                  env=parse_env_items(getattr(args, f"{name}_env"), f"--{name}-env"))
             for name in ("baseline", "current")]
    for side in sides:
        side.check()
    cpus = default_cpus() if args.cpus is None else parse_cpus(args.cpus)
    print(f"kvperf ab: running `pytest {' '.join(pytest_args or ['benchmarks'])}` for both sides, taking turns; "
          f"logs in {args.out}/baseline.log and {args.out}/current.log", file=sys.stderr, flush=True)
    run = run_ab(sides[0], sides[1], args.out, pytest_args or ["benchmarks"], overwrite=args.overwrite,
                 cpus=cpus, fixed_malloc=args.malloc == "fixed")
    if run.paired_turns == 0:
        print("kvperf ab: warning: the sides never took turns (does each side's kvperf have `kvperf ab`?): their "
              "timings were measured one run after the other, not side by side", file=sys.stderr)
    # The two sides may differ in software on purpose (a torch upgrade): compare anyway, and say how.
    comparison = compare(load_baseline(run.baseline_json), load_baseline(run.current_json), thresholds=thresholds,
                         timings="gate", allow_env_mismatch=True, max_cpu_wait=args.max_cpu_wait)
    (Path(args.out) / "comparison.md").write_text(render_markdown(comparison))
    return _print_comparison(comparison, args)


def _add_ab(sub: argparse._SubParsersAction[_Parser]) -> None:
    from kvperf.compare import MAX_CPU_WAIT

    p = sub.add_parser(
        "ab", help="benchmark a baseline and a current checkout side by side, taking turns, and compare them",
        description="Run the benchmarks of two sides (each a Python with kvperf installed and a checkout) as two "
                    "pytest sessions that take turns round by round, so both see the same machine, then compare "
                    "them like `kvperf compare`. Writes baseline.json, current.json, their logs and "
                    "comparison.md into --out. Exit codes: 0 no regression, 1 at least one regression, 2 bad "
                    "input, 3 a side's session failed. Pytest arguments go after `--` (default: benchmarks).")
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
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier A/B run in --out")
    p.add_argument("--threshold", action="append", default=[], metavar="METRIC=PCT",
                   help="regression threshold of one metric in percent (repeatable), as for compare")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table", help="output format")
    p.add_argument("--all", action="store_true", help="table: list unchanged verdicts too")
    p.add_argument("--max-cpu-wait", type=float, default=MAX_CPU_WAIT, metavar="SHARE",
                   help=f"leave out rounds that waited for a core longer than this share (default {MAX_CPU_WAIT})")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="pytest arguments, after --")
    p.set_defaults(handler=_cmd_ab)


def _cmd_report(args: argparse.Namespace) -> int:
    from kvperf.report import format_table, load_cases, make_plots, make_tables

    cases = load_cases(args.results)
    print("\n".join(format_table(t, args.format) for t in make_tables(cases)), end="")
    if args.plots:
        for path in make_plots(cases, args.plots):
            print(f"wrote {path}")
    return 0


def _add_report(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("report", help="tables (and plots) of the experiments in benchmark JSON files")
    p.add_argument("results", nargs="+", help="files written by pytest benchmarks --benchmark-json=FILE")
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR (needs kvperf[plot])")
    p.set_defaults(handler=_cmd_report)


def build_parser() -> _Parser:
    parser = _Parser(prog="kvperf", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_kv_size(sub)
    _add_report(sub)
    _add_compare(sub)
    _add_ab(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KvperfError as exc:
        sys.stderr.write(f"kvperf: error: {exc}\n")
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
