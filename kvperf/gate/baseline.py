"""Baselines: pytest-benchmark JSON files that kvperf can trust, read and write.

A baseline is exactly the JSON that pytest-benchmark writes (``--benchmark-json``), so that
``pytest-benchmark compare FILE`` still reads it, with two additions made by kvperf's plugin:

* ``machine_info["kvperf"]``: the environment fingerprint (``kvperf.gate.env.Environment``) with its key;
* ``"kvperf": {"schema": N}`` at the top level, the version of kvperf's layout, and in every kvperf
  benchmark ``extra_info["kvperf_schema"]`` (see ``kvperf.measure.bench``);
* at the top level too: ``kvperf_subset`` and ``kvperf_selection``, whether and how the run's options
  narrowed its tier (``kvperf.gate.selection``), and ``kvperf_skipped_cases``, the cases the run selected
  but skipped (out of memory, no GPU), each with its ``name``, ``model`` and ``reason``.

Baselines live under ``baselines/<environment key>/<tier>.json``, so that a run finds the baseline
of its own environment. Writing is atomic: the JSON goes to a temporary file in the same directory,
which is then linked (when refusing to replace) or renamed over the target, so a reader never sees
half a file and an interrupted write leaves the old baseline intact. A write that fails (a full
disk, a read-only file system, a failed ``fsync`` or rename) raises ``OSError`` and leaves nothing
behind: no target, no temporary file. ``check_writable`` finds most such problems before a run, and
``write_fallback`` keeps the results of a run whose baseline could not be written anyway.

Every problem with an input file raises ``BadInputError`` with a one-line message that names the
file and the fix.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvperf.errors import BadInputError
from kvperf.gate.env import Environment
from kvperf.gate.result_file import check_case, check_environment, check_schema, read_json

__all__ = [
    "BASELINE_DIR",
    "Baseline",
    "CaseKey",
    "SkippedCase",
    "baseline_from_json",
    "baseline_path",
    "check_writable",
    "dumps",
    "load_baseline",
    "probe_write",
    "write_baseline",
    "write_fallback",
]

#: Default directory of baselines, relative to the project root.
BASELINE_DIR = "baselines"

#: A case is matched across files by its benchmark name (which holds every parameter of the case,
#: dtype included) and its model.
CaseKey = tuple[str, str]


@dataclass(frozen=True)
class SkippedCase:
    """A case the run selected but did not measure, and why (``kvperf_skipped_cases``)."""

    name: str
    model: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "model": self.model, "reason": self.reason}


@dataclass(frozen=True)
class Baseline:
    """A kvperf result file: where it came from, its environment, and the ``extra_info`` of each case."""

    source: str
    schema: int
    environment: Environment
    cases: dict[CaseKey, dict[str, Any]]
    #: Benchmarks in the file that kvperf did not write (no ``kvperf_schema``); not compared.
    foreign_benchmarks: int = 0
    #: ``kvperf_subset``: the run's options narrowed its tier; None in a file that does not say.
    subset: bool | None = None
    #: ``kvperf_selection``: the run's case-selecting options (``kvperf.gate.selection.Selection.to_json``).
    selection: dict[str, Any] | None = None
    #: ``kvperf_skipped_cases``: cases the run selected but skipped, e.g. out of memory.
    skipped_cases: tuple[SkippedCase, ...] = ()


def baseline_path(directory: str | Path, environment_key: str, tier: str) -> Path:
    """``<directory>/<environment key>/<tier>.json``."""
    return Path(directory) / environment_key / f"{tier}.json"


def dumps(data: dict[str, Any]) -> str:
    """Serialise as pytest-benchmark does (its encoder turns unserialisable parameters into text)."""
    from pytest_benchmark.utils import safe_dumps

    return str(safe_dumps(data, ensure_ascii=True, indent=4))


def baseline_from_json(data: Any, source: str) -> Baseline:
    """Check that ``data`` (parsed JSON) is a kvperf result file and index its cases."""
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BadInputError(f"{source}: not a pytest-benchmark JSON file (no 'benchmarks' list): "
                            "pass a file written by `pytest benchmarks --benchmark-json=FILE`")
    block = data.get("kvperf")
    if not isinstance(block, dict) or "schema" not in block:
        raise BadInputError(f"{source}: not a kvperf baseline (no 'kvperf' schema block): pass a file written "
                            "by `pytest benchmarks` with kvperf installed (--benchmark-json or "
                            "--kvperf-save-baseline)")
    schema = check_schema(block["schema"], "'kvperf.schema'", source)
    machine = data.get("machine_info")
    env_data = machine.get("kvperf") if isinstance(machine, dict) else None
    if not isinstance(env_data, dict):
        raise BadInputError(f"{source}: no environment fingerprint (machine_info.kvperf): regenerate the "
                            "file with kvperf's pytest plugin enabled")
    check_environment(env_data, source)
    try:
        environment = Environment.from_json(env_data)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{source}: bad environment fingerprint ({exc}): regenerate the file") from None
    cases: dict[CaseKey, dict[str, Any]] = {}
    foreign = 0
    for index, bench in enumerate(data["benchmarks"]):
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if not isinstance(info, dict) or "kvperf_schema" not in info:
            foreign += 1
            continue
        check_schema(info["kvperf_schema"], f"benchmarks[{index}].extra_info.kvperf_schema", source)
        name = bench.get("name")
        if not isinstance(name, str):
            raise BadInputError(f"{source}: benchmarks[{index}] has no name: the file is damaged, regenerate it")
        check_case(info, f"benchmarks[{index}] ({name[:80]})", source)
        key = (name, str(info.get("model", "")))
        if key in cases:
            raise BadInputError(f"{source}: case {name} (model {key[1]}) appears twice: keep one run per file")
        cases[key] = info
    if not cases:
        raise BadInputError(f"{source}: holds no kvperf benchmark (no extra_info.kvperf_schema): pass a file "
                            "from a run of kvperf's benchmarks")
    subset = data.get("kvperf_subset")
    if subset is not None and not isinstance(subset, bool):
        raise BadInputError(f"{source}: 'kvperf_subset' is {subset!r}, not true or false: the file is damaged, "
                            "regenerate it")
    selection = data.get("kvperf_selection")
    if selection is not None and not isinstance(selection, dict):
        raise BadInputError(f"{source}: 'kvperf_selection' is not an object: the file is damaged, regenerate it")
    return Baseline(source=source, schema=schema, environment=environment, cases=cases,
                    foreign_benchmarks=foreign, subset=subset, selection=selection,
                    skipped_cases=_skipped_cases(data.get("kvperf_skipped_cases"), source))


def _skipped_cases(raw: Any, source: str) -> tuple[SkippedCase, ...]:
    if raw is None:
        return ()
    fields = ("name", "model", "reason")
    if not isinstance(raw, list) or not all(
            isinstance(item, dict) and all(isinstance(item.get(f), str) for f in fields) for item in raw):
        raise BadInputError(f"{source}: 'kvperf_skipped_cases' is not a list of {{name, model, reason}} texts: "
                            "the file is damaged, regenerate it")
    return tuple(SkippedCase(item["name"], item["model"], item["reason"]) for item in raw)


def load_baseline(path: str | Path) -> Baseline:
    """Read and check a kvperf result file; ``BadInputError`` (one line) on any problem."""
    return baseline_from_json(read_json(path), str(path))



def write_baseline(data: dict[str, Any], path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``data`` (pytest-benchmark's JSON with kvperf's additions) to ``path`` atomically.

    Refuses to replace an existing file unless ``overwrite``: the file is then left untouched and
    ``BadInputError`` says how to replace it. Returns the path written.
    """
    target = Path(path)
    baseline_from_json(data, str(target))  # never write something kvperf could not read back
    if target.exists() and not overwrite:
        raise _exists(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file is `.<name>.<random>.tmp` beside the target (.gitignore covers it): a write
    # killed before the rename leaves only that, never a partial baseline.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it private; a baseline is meant to be shared
            f.write(dumps(data))
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the target appeared meanwhile: never replaces
            except FileExistsError:
                raise _exists(target) from None
            except OSError:  # a file system without hard links
                if target.exists():
                    raise _exists(target) from None
                os.replace(tmp, target)
    finally:
        with suppress(OSError):  # the error that got us here says more than a failed clean-up would
            tmp.unlink(missing_ok=True)
    return target


def check_writable(directory: str | Path, option: str = "--kvperf-save-baseline=DIR") -> None:
    """Refuse, with one line, a directory that a baseline cannot be written into: its nearest existing
    ancestor must be a directory in which a file can be created (checked by creating and removing
    one, which also catches a read-only file system). Nothing is left behind."""
    wanted = Path(directory)
    existing = wanted
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BadInputError(f"{existing}: is not a directory, so no baseline can be saved under {wanted}: "
                            f"pass {option} with a directory")
    try:
        probe_write(existing)
    except OSError as exc:
        raise BadInputError(f"{wanted}: cannot save a baseline there ({_reason(exc)}): pass {option} with a "
                            "writable DIR") from None


def probe_write(directory: str | Path) -> None:
    """Create and remove a file ``.kvperf-write-check.<random>.tmp`` in ``directory`` (git-ignored):
    ``OSError`` when nothing can be written there, a read-only file system included."""
    fd, probe = tempfile.mkstemp(prefix=".kvperf-write-check.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.unlink(probe)


def write_fallback(data: dict[str, Any], stem: str) -> tuple[Path | None, list[str]]:
    """Keep results that could not be written where they were asked to go: ``kvperf-unsaved-<stem>-
    <time>-<random>.json`` in the system's temporary directory, else in the current directory. Returns
    the path written (None when both failed) and why each failed attempt failed."""
    name = f"kvperf-unsaved-{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.json"
    failures: list[str] = []
    for directory in (Path(tempfile.gettempdir()), Path.cwd()):
        try:
            return write_baseline(data, directory / name), failures
        except OSError as exc:
            failures.append(f"{directory}: {_reason(exc)}")
        except BadInputError as exc:
            failures.append(str(exc))
    return None, failures


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _exists(target: Path) -> BadInputError:
    return BadInputError(f"{target}: a baseline already exists: pass --kvperf-overwrite-baseline to replace it "
                         "on purpose, or save to another directory with --kvperf-save-baseline=DIR")
