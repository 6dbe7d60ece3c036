"""A/B runs: the baseline and the current code benchmarked side by side, taking turns.

A baseline saved yesterday and a run made today differ by more than their code: on a shared VM the
whole machine drifts, by 5-15% over minutes and up to 2x for seconds at a time (README, "Does the
gate work?"). No statistic of one run can tell that drift from a regression. An A/B run removes it
by design: two pytest sessions, one per side (each in its own Python environment and checkout, so
the two sides may run different kvperf, transformers or torch), run the same benchmarks and take
turns, one round at a time: baseline round 1 of a case, current round 1, baseline round 2, current
round 2, and so on. Both sides' rounds of a case are measured in the same fraction of a second,
under the same machine conditions, and every round follows a round of the other side, so neither
side runs with warmer caches. Then ``kvperf.gate.compare`` judges the two result files as usual.

The turns are a baton passed through two pipes per side. ``kvperf ab`` (``run_ab``) starts both
sessions with ``KVPERF_AB_TURNS=<read fd>,<write fd>`` in their environment; kvperf's pytest plugin
(``Turns``) then holds the turn for each test, passes it to the other side before every round of a
benchmark (pytest-benchmark's untimed ``setup`` of ``pedantic``), and takes it once more for the end
of the session (writing the JSON, the terminal summary). Only one side runs at a time, so neither
slows the other. A side that runs out of tests simply stops asking; the other goes on alone.

Two more things make the sides comparable (both measured in A/A runs, README "A/B runs"): both are
pinned to the same CPU (``--cpus``), since two processes on two vCPUs of a shared host can run at
different speeds for seconds; and both run glibc's allocator with fixed thresholds (``FIXED_MALLOC``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from kvperf.errors import KvperfError, UsageError
from kvperf.gate.baseline import probe_write

__all__ = ["ENV_VAR", "FIXED_MALLOC", "OUTPUTS", "AbRun", "Side", "SideFailedError", "Turns", "default_cpus",
           "parse_cpus", "parse_env_items", "prepare_out", "run_ab"]

#: Environment variable through which ``run_ab`` gives a side its two pipe descriptors.
ENV_VAR = "KVPERF_AB_TURNS"

_ASK, _GO, _DONE = b"?", b"!", b"."

#: glibc tunables both sides run with by default: a fixed mmap threshold (32 MiB, glibc's largest) and
#: no trimming. glibc otherwise moves its mmap threshold with the history of each process, so the same
#: allocation is a fresh, page-faulting mapping in one process and recycled heap in another: in A/A
#: runs, the TTFT of a static-cache case differed by 15-23% between two identical sessions.
FIXED_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


#: What an A/B run writes into its ``--out`` directory (``retries`` holds ``kvperf.gate.ab_retry``'s attempts).
OUTPUTS = ("baseline.json", "current.json", "baseline.log", "current.log", "comparison.md", "retries")


class SideFailedError(KvperfError):
    """One side's benchmark session failed (it crashed, a test failed, or pytest refused its arguments)."""

    exit_code = 3


class Turns:
    """The side's end of the baton: ``with turns.turn(): ...`` runs the block only when it is this side's turn."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd, self._write_fd = read_fd, write_fd
        self._held = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Turns | None:
        """The turns ``run_ab`` set up for this process, or None when it is not an A/B side."""
        raw = (os.environ if environ is None else environ).get(ENV_VAR)
        if not raw:
            return None
        try:
            read_fd, write_fd = (int(v) for v in raw.split(","))
        except ValueError:
            raise UsageError(f"{ENV_VAR}={raw!r} is not '<read fd>,<write fd>': it is set by `kvperf ab`; "
                             "unset it to run the benchmarks on their own") from None
        return cls(read_fd, write_fd)

    def acquire(self) -> None:
        """Ask for the turn and wait for it."""
        if self._held:
            return
        try:
            os.write(self._write_fd, _ASK)
            answer = os.read(self._read_fd, 1)
        except OSError as exc:
            raise KvperfError(f"lost the `kvperf ab` driver ({exc}): run the side again through `kvperf ab`") from None
        if answer != _GO:
            raise KvperfError("the `kvperf ab` driver stopped: run the side again through `kvperf ab`")
        self._held = True

    def release(self) -> None:
        """Hand the turn back (a no-op when not held)."""
        if not self._held:
            return
        self._held = False
        with suppress(OSError):  # the driver is gone; nothing is waiting for the turn
            os.write(self._write_fd, _DONE)

    def pass_turn(self) -> None:
        """Let the other side take one turn, then go on (between two timed rounds of a test)."""
        if self._held:
            self.release()
            self.acquire()

    @contextmanager
    def turn(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


@dataclass(frozen=True)
class Side:
    """How to run one side: which Python (with kvperf installed), in which directory, with which
    extra environment variables."""

    name: str
    python: str = sys.executable
    directory: str = "."
    env: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """``UsageError`` naming the option when the Python or the directory does not exist."""
        if not Path(self.directory).is_dir():
            raise UsageError(f"--{self.name}-dir {self.directory}: no such directory: give the checkout to "
                             f"benchmark on the {self.name} side")
        python = Path(self.python)
        if not (python.is_file() and os.access(python, os.X_OK)):
            raise UsageError(f"--{self.name}-python {self.python}: not an executable file: give the python of a "
                             f"virtual environment with kvperf installed, e.g. .venv/bin/python")


@dataclass(frozen=True)
class AbRun:
    """The two result files an A/B run wrote, and the logs of the two sessions."""

    baseline_json: Path
    current_json: Path
    baseline_log: Path
    current_log: Path
    #: Tests run while the other side was still running too (taking turns); the rest ran alone.
    paired_turns: int


def parse_env_items(items: Sequence[str], option: str) -> dict[str, str]:
    """``["A=1", "B=x"]`` -> ``{"A": "1", "B": "x"}``; ``UsageError`` naming a bad item."""
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or any(c.isspace() for c in name):
            raise UsageError(f"bad {option} {item!r}: write NAME=VALUE, e.g. {option} KVPERF_TEST_DECODE_SLOWDOWN=0.1")
        parsed[name] = value
    return parsed


@dataclass
class _Running:
    side: Side
    process: subprocess.Popen[bytes]
    asks: int  # the driver reads the side's requests here
    gos: int  # and grants the turn here
    alive: bool = True


def _read_byte(fd: int) -> bytes:
    try:
        return os.read(fd, 1)
    except OSError:
        return b""


def _start(side: Side, cmd: Sequence[str], log: Path, cpus: frozenset[int] | None, fixed_malloc: bool) -> _Running:
    ask_r, ask_w = os.pipe()
    go_r, go_w = os.pipe()
    env = {**os.environ, **side.env, ENV_VAR: f"{go_r},{ask_w}"}
    if fixed_malloc:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), FIXED_MALLOC]))
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=side.directory, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, pass_fds=(go_r, ask_w))
    os.close(go_r)
    os.close(ask_w)
    if cpus is not None:
        os.sched_setaffinity(process.pid, cpus)  # threads the side starts later inherit it
    return _Running(side, process, asks=ask_r, gos=go_w)


def _serve(sides: list[_Running]) -> int:
    """Pass the turn between the sides until both are done; the number of turns taken in pairs."""
    paired = 0
    while any(s.alive for s in sides):
        # Wait until every live side is ready (asking) before the first of them runs, so that no side
        # is still starting up (importing torch, collecting) while the other is timed.
        ready = []
        for running in sides:
            if running.alive:
                if _read_byte(running.asks) == _ASK:
                    ready.append(running)
                else:
                    running.alive = False
        if len(ready) == 2:
            paired += 1
        for running in ready:
            try:
                os.write(running.gos, _GO)
            except OSError:
                running.alive = False
                continue
            if _read_byte(running.asks) != _DONE:
                running.alive = False
    for running in sides:
        os.close(running.asks)
        os.close(running.gos)
    return paired


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def default_cpus() -> frozenset[int] | None:
    """The CPU both sides are pinned to by default: the last one this process may run on (None where
    the OS has no CPU affinity)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset({max(os.sched_getaffinity(0))})


def parse_cpus(raw: str) -> frozenset[int] | None:
    """``--cpus``: ``all`` (no pinning) or comma-separated CPU numbers; ``UsageError`` otherwise."""
    if raw == "all":
        return None
    try:
        cpus = frozenset(int(v) for v in raw.split(","))
    except ValueError:
        raise UsageError(f"--cpus {raw!r}: write CPU numbers separated by commas (e.g. 1 or 0,1), or all") from None
    if not hasattr(os, "sched_getaffinity"):
        raise UsageError(f"--cpus {raw}: this OS cannot pin processes to CPUs: pass --cpus all")
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise UsageError(f"--cpus {raw}: CPU(s) {', '.join(map(str, sorted(cpus - allowed)))} not available here "
                         f"(available: {', '.join(map(str, sorted(allowed)))})")
    return cpus


def prepare_out(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Make ``out_dir`` ready for an A/B run's results, before anything runs: create it, check that
    files can be written there, and refuse to replace an earlier run's outputs (``OUTPUTS``) unless
    ``overwrite`` (which then removes the earlier retries). ``UsageError`` naming ``--out`` otherwise."""
    raw = str(out_dir)
    if not raw.strip():
        raise UsageError(f"--out {raw!r}: give a directory for the results, e.g. --out kvperf-ab")
    out = Path(raw)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {raw}: is a file, not a directory: give a directory for the results (it is "
                         "created if needed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe_write(out)
    except OSError as exc:
        raise UsageError(f"--out {raw}: cannot write there ({exc.strerror or type(exc).__name__}): give a "
                         "writable directory") from None
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"--out {raw}: holds the results of an earlier A/B run ({', '.join(existing)}): pass "
                         "--overwrite to replace them, or --out DIR to write elsewhere")
    if overwrite and (out / "retries").is_dir():
        shutil.rmtree(out / "retries")
    return out


def run_ab(baseline: Side, current: Side, out_dir: str | Path, pytest_args: Sequence[str], *,
           overwrite: bool = False, cpus: frozenset[int] | None = None, fixed_malloc: bool = True) -> AbRun:
    """Run ``pytest <pytest_args>`` for both sides, taking turns, writing ``baseline.json`` and
    ``current.json`` (pytest-benchmark JSON, kvperf baselines) and a log per side into ``out_dir``.

    Both sides are pinned to ``cpus`` (None: not pinned) and, with ``fixed_malloc``, run glibc's
    allocator with fixed thresholds (``FIXED_MALLOC``). Refuses to replace an earlier run's outputs
    unless ``overwrite`` (``prepare_out``). Raises ``SideFailedError`` when a side's session fails,
    naming its log."""
    for side in (baseline, current):
        side.check()
    out = prepare_out(out_dir, overwrite=overwrite)
    targets = {s.name: out / f"{s.name}.json" for s in (baseline, current)}
    parts = {name: target.with_name(f".{target.name}.part") for name, target in targets.items()}
    logs = {s.name: out / f"{s.name}.log" for s in (baseline, current)}
    for part in parts.values():
        part.unlink(missing_ok=True)
    running = [_start(s, [s.python, "-m", "pytest", *pytest_args, "-p", "no:cacheprovider",
                          f"--benchmark-json={parts[s.name].resolve()}"], logs[s.name], cpus, fixed_malloc)
               for s in (baseline, current)]
    try:
        paired = _serve(running)
    finally:
        for r in running:
            r.process.wait()
    for r in running:
        name = r.side.name
        if r.process.returncode != 0 or not parts[name].exists():
            raise SideFailedError(f"the {name} side failed (pytest exit {r.process.returncode}: "
                                  f"{_last_line(logs[name])}): see {logs[name]}")
    for name, part in parts.items():
        os.replace(part, targets[name])
    return AbRun(baseline_json=targets[baseline.name], current_json=targets[current.name],
                 baseline_log=logs[baseline.name], current_log=logs[current.name], paired_turns=paired)
