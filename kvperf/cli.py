"""The ``kvperf`` command.

Exit codes: 0 success, 1 a regression was found (``compare``), 2 bad input (a one-line message on
stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from kvperf.errors import EXIT_BAD_INPUT, KvperfError

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
    _add_report(sub)
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
