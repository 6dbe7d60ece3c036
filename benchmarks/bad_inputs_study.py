"""Bad inputs and faults against the `kvperf` command and its pytest plugin, each in a subprocess.

Every case is a user mistake, a damaged or hostile file, or a machine that cannot do what was asked
(issue 9, items 1, 3, 5, 6 and the comparison parts of 7). For each one the table shows the exit code,
whether a traceback reached the user, the first line of the error, and the exit code kvperf
promises (README, "What kvperf promises"). A user mistake must give one line and exit 2 (4 under
pytest), never a traceback, and never exit 1, which means "regression".

    python benchmarks/bad_inputs_study.py            # about 4 minutes on 2 CPU cores
    python benchmarks/bad_inputs_study.py --only ab  # the cases whose name contains "ab"

The cases use small hand-made result files and, where pytest or `kvperf ab` must run, one tiny
benchmark file (2 rounds of 4 tokens of tiny-gpt2), so that a kvperf that does not refuse a bad input
still finishes quickly. The subprocesses import kvperf from this checkout (PYTHONPATH). pytest does
not collect this file (benchmarks/ collects only test_*.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from kvperf.cli import main; raise SystemExit(main())"]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
TINY = ["--kvperf-rounds", "2", "--kvperf-warmup", "0", "--kvperf-dtypes", "float32"]

BENCH = """
import pytest
from kvperf import GenerationSpec

@pytest.mark.parametrize("cache", ["on", "off"])
def test_case(kvperf_bench, cache):
    kvperf_bench(GenerationSpec(cache=cache, batch_size=1, prompt_len=8, new_tokens=4))
"""

ENV = {"cpu_model": "Study CPU", "cpu_count": 2, "torch_threads": 1, "machine": "x86_64", "system": "Linux",
       "python_version": "3.11", "torch_version": "2.13.0+cpu", "transformers_version": "5.23.0",
       "device_type": "cpu", "git_commit": "abc", "git_dirty": False}
BASE_E2E = [0.0100, 0.0102, 0.0099, 0.0101, 0.0100]


def case_info(e2e: list[float] | None = None, wait: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    """A kvperf case's extra_info with raw samples (4 new tokens)."""
    e2e = e2e or BASE_E2E
    info: dict[str, Any] = {
        "kvperf_schema": 1, "model": "tiny-gpt2", "experiment": "matrix", "cache": "on", "dtype": "float32",
        "batch_size": 1, "prompt_len": 8, "new_tokens": 4, "e2e_s": sorted(e2e)[len(e2e) // 2],
        "e2e_s_samples": e2e, "ttft_s": 0.001, "ttft_s_samples": [0.001] * len(e2e),
        "tpot_s": 0.003, "tpot_s_samples": [(t - 0.001) / 3 for t in e2e], "tokens_per_s": 400.0,
        "tokens_per_s_samples": [4 / t for t in e2e], "itl_p50_s": 0.003, "itl_p95_s": 0.0031,
        "flops_per_token": 1e6, "kv_cache_bytes": 4096, "kv_cache_formula_bytes": 4096,
        "peak_memory_bytes": 10_000, "generated_tokens": 4,
        "cpu_wait_samples": wait if wait is not None else [0.0] * len(e2e),
        "cpu_others_samples": [0.0] * len(e2e),
    }
    info.update(extra)
    return info


def result_file(cases: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    """pytest-benchmark's JSON layout with kvperf's additions."""
    return {"machine_info": {"kvperf": ENV}, "commit_info": {}, "datetime": "2026-01-01T00:00:00",
            "version": "5.3.1", "kvperf": {"schema": 1}, **top,
            "benchmarks": [{"name": name, "fullname": f"bench.py::{name}", "group": None, "params": {},
                            "stats": {}, "extra_info": info} for name, info in cases.items()]}


ON, OFF = "test_case[on]", "test_case[off]"


@dataclass
class Case:
    """One bad input: what to run (``argv``, in ``work``), what to prepare first, and what kvperf promises."""

    item: str
    name: str
    argv: list[str]
    expected: str
    setup: Callable[[Path], None] = lambda work: None
    timeout_s: float = 120.0
    env: dict[str, str] = field(default_factory=dict)


def write(path: Path, data: Any) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _files(work: Path) -> None:
    """The hand-made result files the compare and report cases read."""
    write(work / "good.json", result_file({ON: case_info()}))
    write(work / "other.json", result_file({OFF: case_info()}))
    write(work / "both.json", result_file({ON: case_info(), OFF: case_info()}))
    write(work / "busy.json", result_file({ON: case_info(wait=[0.5] * 5), OFF: case_info(wait=[0.5] * 5)}))
    write(work / "deep.json", "[" * 200_000 + "]" * 200_000)
    write(work / "others_int.json", result_file({ON: case_info(cpu_others_samples=3)}))
    write(work / "inf.json", json.dumps(result_file({ON: case_info(e2e=[0.01, float("inf"), 0.01, 0.01, 0.01])})))
    write(work / "nan.json", json.dumps(result_file({ON: case_info(tpot_s_samples=[float("nan")] * 5)})))
    write(work / "digits.json", '{"benchmarks": [], "kvperf": {"schema": ' + "9" * 5000 + "}}")
    many = [0.0100 + (i % 97) * 1e-6 for i in range(100_000)]
    write(work / "100k.json", result_file({ON: case_info(
        e2e=many, ttft_s_samples=[0.001] * len(many), tpot_s_samples=[(t - 0.001) / 3 for t in many],
        tokens_per_s_samples=[4 / t for t in many], wait=[0.0] * len(many), cpu_others_samples=[0.0] * len(many))}))
    write(work / "bytes_str.json", result_file({ON: case_info(kv_cache_bytes="4096")}))
    newer = result_file({ON: case_info()})
    newer["kvperf"]["schema"] = 99
    write(work / "newer.json", newer)
    write(work / "ansi.json", result_file({"test_x[\x1b[2J\x1b[31mred]": case_info()}))
    write(work / "ansi_flops.json", result_file({"test_x[\x1b[2J\x1b[31mred]": case_info(flops_per_token=2e6)}))
    write(work / "bench.py", BENCH)
    (work / "a_file").write_text("not a directory")


def _earlier_ab_output(name: str) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        (work / f"ab-{name}").mkdir(exist_ok=True)
        (work / f"ab-{name}" / name).write_text("an earlier run's file\n")
    return setup


def _cuda_baseline(work: Path) -> None:
    """A baseline of this machine's quick run, relabelled as CUDA (the study machine has no GPU)."""
    subprocess.run([*PYTEST, "bench.py", *TINY, "--benchmark-json=cpu.json"], cwd=work, env=_env(),
                   capture_output=True, timeout=300, check=False)
    data = json.loads((work / "cpu.json").read_text())
    data["machine_info"]["kvperf"]["device_type"] = "cuda"
    write(work / "cuda.json", data)


def _unwritable_dir() -> str:
    """A directory kvperf cannot create files in: a read-only one, or for root (who writes anywhere
    else) a path in /sys, where nothing can be created."""
    if os.geteuid() != 0:
        ro = Path(tempfile.mkdtemp(prefix="kvperf-ro-"))
        ro.chmod(0o555)
        return str(ro / "ab")
    return "/sys/kvperf-ab"


def cases() -> list[Case]:
    ab = [*CLI, "ab", "--cpus", "all", "--retry-budget-s", "0"]
    ab_tail = ["--", "bench.py", *TINY]
    return [
        # Item 1: a gate that passes when nothing was compared.
        Case("1", "compare: files that share no case", [*CLI, "compare", "good.json", "other.json"], "2"),
        Case("1", "compare: a baseline case missing from the run", [*CLI, "compare", "both.json", "good.json"], "2"),
        Case("1", "compare --allow-partial: a case missing, on purpose",
             [*CLI, "compare", "both.json", "good.json", "--allow-partial"], "0"),
        Case("1", "compare: every timing too noisy to test (gate)", [*CLI, "compare", "busy.json", "busy.json"], "8"),
        Case("1", "pytest: every case skipped (--kvperf-device cuda, no GPU)",
             [*PYTEST, "bench.py", *TINY, "--kvperf-device", "cuda", "--kvperf-compare=cuda.json",
              "--kvperf-timings", "auto"], "6 (nothing compared)", setup=_cuda_baseline, timeout_s=300),
        Case("1", "pytest: a -k subset saved as the tier's baseline",
             [*PYTEST, "bench.py", *TINY, "-k", "on", "--kvperf-save-baseline"], "4 (refused)",
             timeout_s=300),
        Case("1", "pytest: a -k subset saved elsewhere (labelled)",
             [*PYTEST, "bench.py", *TINY, "-k", "on", "--kvperf-save-baseline=subset"], "0 (labelled)",
             timeout_s=300),
        # Item 3: hostile or corrupt result files.
        Case("3", "compare: JSON nested 200,000 deep", [*CLI, "compare", "good.json", "deep.json"], "2"),
        Case("3", "report: JSON nested 200,000 deep", [*CLI, "report", "deep.json"], "2"),
        Case("3", "compare: cpu_others_samples an integer", [*CLI, "compare", "good.json", "others_int.json"], "2"),
        Case("3", "compare: an Infinity sample", [*CLI, "compare", "good.json", "inf.json"], "2"),
        Case("3", "compare: NaN samples", [*CLI, "compare", "good.json", "nan.json"], "2"),
        Case("3", "compare: an integer of 5,000 digits", [*CLI, "compare", "good.json", "digits.json"], "2"),
        Case("3", "compare: 100k samples in one case (817 KB)", [*CLI, "compare", "100k.json", "100k.json"],
             "0 (in seconds)", timeout_s=120),
        Case("3", "report: a string where bytes are expected", [*CLI, "report", "bytes_str.json"], "2"),
        Case("3", "report: schema version 99", [*CLI, "report", "newer.json"], "2"),
        Case("3", "compare: schema version 99", [*CLI, "compare", "good.json", "newer.json"], "2"),
        # Item 5: kvperf ab --out.
        Case("5", "ab --out holding an earlier comparison.md", [*ab, "--out", "ab-comparison.md", *ab_tail], "2",
             setup=_earlier_ab_output("comparison.md"), timeout_s=300),
        Case("5", "ab --out holding an earlier log", [*ab, "--out", "ab-baseline.log", *ab_tail], "2",
             setup=_earlier_ab_output("baseline.log"), timeout_s=300),
        Case("5", "ab --out that is a file", [*ab, "--out", "a_file", *ab_tail], "2", timeout_s=300),
        Case("5", "ab --out where nothing can be written", [*ab, "--out", _unwritable_dir(), *ab_tail], "2",
             timeout_s=300),
        Case("5", "ab --out ''", [*ab, "--out", "", *ab_tail], "2", timeout_s=300),
        # Item 6: numeric and text options (the run and kv-size options are fixed in another branch).
        Case("6", "run --warmup 99999999999999999999",
             [*CLI, "run", "tiny-gpt2", "--prompt", "8", "--new-tokens", "4", "--warmup", "99999999999999999999"],
             "2", timeout_s=30),
        Case("6", "run --warmup -5", [*CLI, "run", "tiny-gpt2", "--prompt", "8", "--new-tokens", "4", "--warmup", "-5"],
             "2"),
        Case("6", "run --seed 2**70", [*CLI, "run", "tiny-gpt2", "--prompt", "8", "--new-tokens", "4", "--seed",
                                       str(2**70)], "2"),
        Case("6", "kv-size --device-memory 0", [*CLI, "kv-size", "tiny-gpt2", "--device-memory", "0"], "2"),
        Case("6", "kv-size --dtype ''", [*CLI, "kv-size", "tiny-gpt2", "--dtype", ""], "2"),
        Case("6", "report --plots ''", [*CLI, "report", "good.json", "--plots", ""], "2"),
        Case("6", "pytest --kvperf-save-baseline=''", [*PYTEST, "bench.py", *TINY, "--kvperf-save-baseline="],
             "4 (refused)", timeout_s=300),
        # Item 7, the comparison parts: names from a file are escaped.
        Case("7", "compare: ANSI escapes in a case name", [*CLI, "compare", "ansi.json", "ansi_flops.json"],
             "1, no raw escape"),
    ]


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "KVPERF_AB_TURNS": ""}


def _first_error(stdout: str, stderr: str) -> str:
    """The line that says what happened: kvperf's own error or verdict, else pytest's, else the
    exception a traceback ended with, else the last line."""
    lines = [line.strip() for line in (stderr + "\n" + stdout).splitlines() if line.strip()]
    err_lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for prefixes in (("kvperf: error", "error:", "internalerror"), ("kvperf:", "verdict:"), ("e  ",)):
        for line in lines:
            if line.lower().startswith(prefixes) or (prefixes == ("e  ",) and line.startswith("E ")):
                return line
    if "Traceback (most recent call last)" in stderr and err_lines:
        return err_lines[-1]
    return lines[-1] if lines else ""


def run_case(case: Case, work: Path) -> tuple[str, bool, str, float]:
    case.setup(work)
    start = time.monotonic()
    try:
        out = subprocess.run(case.argv, cwd=work, env={**_env(), **case.env}, capture_output=True, text=True,
                             timeout=case.timeout_s, check=False, errors="replace")
    except subprocess.TimeoutExpired:
        return f"timeout {case.timeout_s:g} s", False, "", time.monotonic() - start
    seconds = time.monotonic() - start
    both = out.stdout + out.stderr
    traceback = "Traceback (most recent call last)" in both or "INTERNALERROR" in both
    first = _first_error(out.stdout, out.stderr)
    if "\x1b" in both:
        first = "RAW ESCAPE IN OUTPUT: " + first
    return str(out.returncode), traceback, first.encode("unicode_escape").decode()[:110], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    selected = [c for c in cases() if args.only in c.name]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kvperf-bad-inputs-") as tmp:
        work = Path(tmp)
        _files(work)
        for case in selected:
            code, traceback, first, seconds = run_case(case, work)
            rows.append((case.item, case.name, code, case.expected, "yes" if traceback else "no", f"{seconds:.1f}",
                         first))
            print(f"  ran {case.name}: exit {code} in {seconds:.1f} s", file=sys.stderr, flush=True)
    headers = ("item", "input", "exit", "promised", "traceback", "s", "first line of the error")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    print("  ".join(h.ljust(w) for h, w in zip(headers, [*widths, 0], strict=True)).rstrip())
    print("  ".join("-" * w for w in [*widths, 24]))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, [*widths, 0], strict=True)).rstrip())
    kept = sum(r[2] == r[3].split(" ")[0].rstrip(",") for r in rows)
    print(f"\n{len(rows)} bad inputs and faults; {kept} gave the promised exit code; "
          f"{sum(r[4] == 'yes' for r in rows)} tracebacks; {sum(r[2] == '1' for r in rows)} exited 1 "
          f"(1 is promised only for the regression in item 7's case).")


if __name__ == "__main__":
    main()
