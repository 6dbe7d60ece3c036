"""Does the regression gate work? The A/A, sensitivity and cache-disabled study of the README.

Not a pytest file (pytest collects only ``test_*.py``): run it by hand, on a machine you want
figures for. It takes 30-60 minutes on a 2-core CPU runner.

    python benchmarks/gate_study.py collect --out /tmp/gate   # the runs (JSON files)
    python benchmarks/gate_study.py analyze --out /tmp/gate   # the tables (Markdown)

``collect`` repeats, ``--pairs`` times (10 by default), an iteration of:

* two runs of the quick tier (``pytest benchmarks -k 'not overhead' --benchmark-json``; the harness
  overhead benchmark is not a kvperf case): one A/A pair;
* one run of ``--slow-k`` cases (``test_matrix`` by default) per ``--slowdowns`` level, with every
  decode step slowed by that fraction (``KVPERF_TEST_DECODE_SLOWDOWN``, a test-only hook of
  ``kvperf.measure.harness``);
* one run of the same cases with the cache forced off under its ``cache=on`` label
  (``KVPERF_TEST_FORCE_CACHE_OFF``).

The runs of an iteration follow each other, so each pair's two sides are minutes apart, as a
baseline and a pull request's run would be at best. Every run holds ``flock /tmp/kvperf-timing.lock``
so that other timing jobs on a shared machine wait for it (and it for them).

``analyze`` compares, for each iteration i: the A/A pair (first run as baseline, second as current),
and every slowed or cache-off run against the first A/A run of its iteration. It counts kvperf's
``regressed`` verdicts (default thresholds) and, on the same pairs, the benchmarks that
pytest-benchmark's own ``--benchmark-compare-fail=median:5%`` would fail (its own check class,
applied to the two files' stats).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOCK = "/tmp/kvperf-timing.lock"


def _pytest(out: Path, name: str, k: str, env_extra: dict[str, str], extra: list[str]) -> None:
    target = out / f"{name}.json"
    if target.exists():  # resumable: a finished run is kept
        return
    env = {**os.environ, **env_extra}
    cmd = [sys.executable, "-m", "pytest", str(REPO / "benchmarks"), "-q", "-p", "no:cacheprovider",
           "-k", k, f"--benchmark-json={out / (name + '.part')}", *extra]
    if shutil.which("flock"):
        cmd = ["flock", LOCK, *cmd]
    start = time.monotonic()
    with (out / f"{name}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise SystemExit(f"gate_study: {name} failed (exit {rc}); see {out / (name + '.log')}")
    (out / f"{name}.part").rename(target)
    print(f"{name}: {time.monotonic() - start:.0f} s", flush=True)


def _ab(out: Path, name: str, k: str, current_env: dict[str, str], extra: list[str]) -> None:
    """One ``kvperf ab`` run: baseline side -> ``<name>.base.json`` (``aa<i>a.json`` for an A/A
    pair), current side -> ``<name>.json``."""
    base_name = f"{name[:-1]}a" if name.startswith("aa") else f"{name}.base"
    if (out / f"{name}.json").exists():  # resumable: a finished run is kept
        return
    run_dir = out / "ab" / name
    env_args = [a for key, value in current_env.items() for a in ("--current-env", f"{key}={value}")]
    cmd = [sys.executable, "-m", "kvperf.cli", "ab", "--out", str(run_dir), "--overwrite", "--format", "json",
           *env_args, "--", str(REPO / "benchmarks"), "-q", "-k", k, *extra]
    if shutil.which("flock"):
        cmd = ["flock", LOCK, *cmd]
    start = time.monotonic()
    with (out / f"{name}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc not in (0, 1):
        raise SystemExit(f"gate_study: {name} failed (exit {rc}); see {out / (name + '.log')}")
    shutil.copyfile(run_dir / "baseline.json", out / f"{base_name}.json")
    shutil.copyfile(run_dir / "current.json", out / f"{name}.json")
    print(f"{name}: {time.monotonic() - start:.0f} s (A/B)", flush=True)


def collect(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = args.pytest_args.split() if args.pytest_args else []
    if args.ab:
        for i in range(args.pairs):
            _ab(out, f"aa{i:02d}b", "not overhead", {}, extra)
            for level in args.slowdowns:
                _ab(out, f"slow{round(level * 100):02d}_{i:02d}", args.slow_k,
                    {"KVPERF_TEST_DECODE_SLOWDOWN": str(level)}, extra)
            _ab(out, f"cacheoff_{i:02d}", args.slow_k, {"KVPERF_TEST_FORCE_CACHE_OFF": "1"}, extra)
        return
    for i in range(args.pairs):
        _pytest(out, f"aa{i:02d}a", "not overhead", {}, extra)
        _pytest(out, f"aa{i:02d}b", "not overhead", {}, extra)
        for level in args.slowdowns:
            _pytest(out, f"slow{round(level * 100):02d}_{i:02d}", args.slow_k,
                    {"KVPERF_TEST_DECODE_SLOWDOWN": str(level)}, extra)
        _pytest(out, f"cacheoff_{i:02d}", args.slow_k, {"KVPERF_TEST_FORCE_CACHE_OFF": "1"}, extra)


def _pb_failures(baseline: Path, current: Path, check_spec: str) -> int:
    """Benchmarks that pytest-benchmark's ``--benchmark-compare-fail=<check_spec>`` fails."""
    import json

    from pytest_benchmark.utils import parse_compare_fail

    check = parse_compare_fail(check_spec)
    base = {b["fullname"]: b["stats"] for b in json.loads(baseline.read_text())["benchmarks"]}
    failures = 0
    for bench in json.loads(current.read_text())["benchmarks"]:
        if bench["fullname"] in base and check.fails(bench["stats"], base[bench["fullname"]]):
            failures += 1
    return failures


#: kvperf's thresholds for the analysis; the CPU-time metrics are opt-in, so the study sets theirs.
THRESHOLDS: dict[str, float] = {"e2e_cpu": 5.0, "ttft_cpu": 10.0, "tpot_cpu": 5.0}
#: The metrics of each kind, by name: wall-clock timings, thread-CPU-time timings, deterministic.
_KINDS: dict[str, set[str]] = {
    "wall": {"e2e", "ttft", "tpot", "tokens_per_s"},
    "cpu": {"e2e_cpu", "ttft_cpu", "tpot_cpu"},
    "exact": {"peak_memory", "kv_bytes", "flops_per_token"},
}


def _kvperf(baseline: Path, current: Path) -> Any:
    from kvperf.gate.baseline import load_baseline
    from kvperf.gate.compare import compare

    return compare(load_baseline(baseline), load_baseline(current), thresholds=THRESHOLDS)


def _aa_floor(out: Path, pairs: list[str]) -> list[str]:
    """Per timing metric, the largest lower bound of the 95% interval of the slowdown seen in A/A: the
    smallest threshold at which these A/A pairs would have had no regressed verdict."""
    from kvperf.gate.baseline import load_baseline
    from kvperf.gate.compare import METRICS, compare

    timing = [m for m in METRICS if m.timing]
    zero = {m.name: 0.0 for m in timing}  # opt-in metrics included: each has a threshold here
    worst = {m.name: 0.0 for m in timing}
    for i in pairs:
        cmp = compare(load_baseline(out / f"aa{i}a.json"), load_baseline(out / f"aa{i}b.json"), thresholds=zero)
        for v in cmp.verdicts:
            if v.metric in worst and v.ci_low is not None and v.ci_high is not None:
                cost_low = 1 / v.ci_high if v.metric == "tokens_per_s" else v.ci_low
                worst[v.metric] = max(worst[v.metric], (cost_low - 1) * 100)
    return [f"| {name} | {value:.1f}% |" for name, value in worst.items()]


def _runs(out: Path, pattern: str) -> list[Path]:
    """The current sides matching ``pattern`` (not the baseline sides of A/B runs)."""
    return sorted(p for p in out.glob(pattern) if not p.name.endswith(".base.json"))


def _baseline_of(run: Path) -> Path:
    """What a slowed or cache-off run is compared with: its own baseline side when it was an A/B run,
    else the first A/A run of its iteration."""
    own = run.with_name(f"{run.stem}.base.json")
    return own if own.exists() else run.with_name(f"aa{run.stem.split('_')[1]}a.json")


def analyze(args: argparse.Namespace) -> None:
    from kvperf.gate.compare import parse_thresholds

    THRESHOLDS.update(parse_thresholds(args.threshold))
    out = Path(args.out)
    pairs = sorted(p.name[2:4] for p in out.glob("aa*b.json"))
    if args.pairs:
        pairs = [p for p in pairs if p in {f"{int(v):02d}" for v in args.pairs.split(",")}]
    lines = ["## A/A: the quick tier against itself", "",
             "| pair | kvperf regressed verdicts: wall / CPU time / deterministic | timing verdicts too noisy | "
             "pytest-benchmark median:5% failing benchmarks |", "|---|---|---|---|"]
    aa_flagged = {"wall": 0, "cpu": 0, "exact": 0}
    pb_flagged = 0
    for i in pairs:
        cmp = _kvperf(out / f"aa{i}a.json", out / f"aa{i}b.json")
        pb = _pb_failures(out / f"aa{i}a.json", out / f"aa{i}b.json", "median:5%")
        pb_flagged += pb > 0
        regressed = {kind: sum(v.verdict == "regressed" and v.metric in names for v in cmp.verdicts)
                     for kind, names in _KINDS.items()}
        for kind, n in regressed.items():
            aa_flagged[kind] += n > 0
        counts = cmp.counts()
        timing_verdicts = sum(v.metric in _KINDS["wall"] | _KINDS["cpu"] for v in cmp.verdicts)
        lines.append(f"| {i} | {regressed['wall']} / {regressed['cpu']} / {regressed['exact']} | "
                     f"{counts['noisy']} of {timing_verdicts} | {pb} |")
    lines += ["", f"Pairs failed: on wall-time metrics {aa_flagged['wall']} of {len(pairs)}, on CPU-time metrics "
              f"{aa_flagged['cpu']} of {len(pairs)}, on deterministic metrics {aa_flagged['exact']} of {len(pairs)}; "
              f"pytest-benchmark median:5% {pb_flagged} of {len(pairs)}. Thresholds: {THRESHOLDS or 'defaults'}.", "",
              "Largest A/A slowdown that kvperf was 95% sure of, per metric (the smallest threshold with no "
              "A/A regression on these pairs):", "", "| metric | A/A floor |", "|---|---|",
              *_aa_floor(out, pairs), ""]
    levels = sorted({p.name.split("_")[0][4:] for p in _runs(out, "slow*_*.json")})
    lines += ["## Sensitivity: decode steps slowed on purpose", "",
              "| slowdown | pairs flagged by kvperf: wall / CPU time | TPOT regressed (cases, all pairs) | "
              "TPOT CPU regressed | pairs flagged by pytest-benchmark median:5% |", "|---|---|---|---|---|"]
    for level in levels:
        flagged = {"wall": 0, "cpu": 0}
        pb_hits = 0
        hits = {"tpot": 0, "tpot_cpu": 0}
        totals = {"tpot": 0, "tpot_cpu": 0}
        runs = [r for r in _runs(out, f"slow{level}_*.json") if r.stem.split("_")[1] in pairs]
        for run in runs:
            base = _baseline_of(run)
            cmp = _kvperf(base, run)
            for kind in flagged:
                flagged[kind] += any(v.verdict == "regressed" and v.metric in _KINDS[kind] for v in cmp.verdicts)
            pb_hits += _pb_failures(base, run, "median:5%") > 0
            for metric in hits:
                judged = [v for v in cmp.verdicts if v.metric == metric and v.verdict not in ("new", "missing")]
                totals[metric] += len(judged)
                hits[metric] += sum(v.verdict == "regressed" for v in judged)
        lines.append(f"| {int(level)}% | {flagged['wall']} / {flagged['cpu']} of {len(runs)} | "
                     f"{hits['tpot']} of {totals['tpot']} | {hits['tpot_cpu']} of {totals['tpot_cpu']} | "
                     f"{pb_hits} of {len(runs)} |")
    runs = [r for r in _runs(out, "cacheoff_*.json") if r.stem.split("_")[1] in pairs]
    lines += ["", "## Cache disabled under a cache=on label", "",
              "| pair | kvperf exit | FLOPs/token regressed (cache=on cases) | KV bytes changed |", "|---|---|---|---|"]
    for run in runs:
        i = run.stem.split("_")[1]
        cmp = _kvperf(_baseline_of(run), run)
        flops = [v for v in cmp.verdicts if v.metric == "flops_per_token" and "cache=on" in v.case
                 and v.verdict not in ("new", "missing")]
        kv = [v for v in cmp.verdicts if v.metric == "kv_bytes" and "cache=on" in v.case
              and v.verdict not in ("new", "missing")]
        lines.append(f"| {i} | {cmp.exit_code} | {sum(v.verdict == 'regressed' for v in flops)} of {len(flops)} | "
                     f"{sum(v.verdict != 'unchanged' for v in kv)} of {len(kv)} |")
    report = "\n".join(lines) + "\n"
    (out / f"gate_study{'-' + args.tag if args.tag else ''}.md").write_text(report)
    print(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="run the benchmarks (resumable)")
    c.add_argument("--out", required=True, help="directory for the JSON files and logs")
    c.add_argument("--pairs", type=int, default=10, help="iterations (A/A pairs), default 10")
    c.add_argument("--slowdowns", type=lambda s: [float(v) for v in s.split(",")], default=[0.05, 0.10, 0.20],
                   help="comma-separated decode slowdowns, default 0.05,0.10,0.20")
    c.add_argument("--slow-k", default="test_matrix", help="pytest -k of the slowed and cache-off runs")
    c.add_argument("--pytest-args", default="", help="extra pytest arguments for every run")
    c.add_argument("--ab", action="store_true",
                   help="every pair is one `kvperf ab` run (both sides taking turns) instead of two runs in a row")
    c.set_defaults(func=collect)
    a = sub.add_parser("analyze", help="compare the runs and print the tables")
    a.add_argument("--out", required=True, help="directory written by collect")
    a.add_argument("--threshold", action="append", default=[], metavar="METRIC=PCT",
                   help="kvperf thresholds to analyse with (default: kvperf's defaults)")
    a.add_argument("--pairs", default=None, help="comma-separated pair numbers to use (default: all)")
    a.add_argument("--tag", default="", help="suffix of the report's file name")
    a.set_defaults(func=analyze)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
