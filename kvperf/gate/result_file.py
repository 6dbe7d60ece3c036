"""Reading a kvperf result file that may be corrupt or hostile: the JSON, then every field kvperf reads.

``kvperf compare``, ``kvperf report``, ``kvperf ab`` and ``--kvperf-compare`` read JSON that anyone
can hand them: a file cut short by a full disk, mangled by a merge, or written to break the reader.
Whatever is in it, the reader gives one ``BadInputError`` that names the file, the field and the
fix, never a traceback, and never a wrong verdict:

* the JSON itself: missing, unreadable, empty, truncated, not JSON, nested too deep to parse (a
  ``RecursionError`` in the parser), or an integer too long to convert;
* every field of a kvperf case that a comparison or a report reads is checked for its type and
  range (``check_case``): timings and their per-round samples are positive, finite numbers (a NaN
  or an ``Infinity`` sample would give a NaN interval and a silent "unchanged"), byte counts and
  token counts are whole numbers, names are strings, and the per-round lists of a case all have
  one value per round;
* the environment fingerprint has the types ``Environment`` declares (``check_environment``).

Fields that kvperf does not read (``itl_s``, pytest-benchmark's own statistics, other benchmarks'
``extra_info``) are not checked: a comparison does not depend on them.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvperf.errors import BadInputError
from kvperf.gate.env import Environment
from kvperf.measure.telemetry import GpuTelemetry

__all__ = [
    "REPORT_FIELDS",
    "check_case",
    "check_environment",
    "check_schema",
    "read_json",
]

_FIX = "regenerate the file with `pytest benchmarks --benchmark-json=FILE`"

#: Times and rates: positive and finite, as a median and as per-round samples (``<field>_samples``).
_TIMINGS = ("e2e_s", "ttft_s", "tpot_s", "tokens_per_s", "itl_p50_s", "itl_p95_s", "itl_p99_s")
#: Byte counts: whole numbers, -1 where a count was not measured (peak memory on some devices).
_BYTES = ("peak_memory_bytes", "kv_cache_bytes", "kv_cache_formula_bytes", "weights_bytes",
          "peak_above_weights_bytes", "peak_kv_cache_bytes", "peak_activations_bytes")
#: Byte counts that are null where kvperf cannot know them, with the reason beside them: the formula of
#: a family it refuses (``kv_cache_formula_note``), the parts of a CUDA peak (``peak_memory_note``).
_NULLABLE_BYTES = ("kv_cache_formula_bytes", "weights_bytes", "peak_above_weights_bytes", "peak_kv_cache_bytes",
                   "peak_activations_bytes")
#: Whole numbers of at least 1.
_COUNTS = ("batch_size", "prompt_len", "new_tokens", "generated_tokens", "rounds")
#: Finite numbers of at least 0.
_AMOUNTS = ("flops", "flops_per_token", "prefill_flops", "decode_flops_per_token")
#: The roofline's numbers (``kvperf.measure.roofline``): finite numbers of at least 0, or null where kvperf
#: cannot know them (``roofline_note`` says why).
_ROOFLINE_AMOUNTS = ("decode_bytes_per_step", "decode_weights_bytes", "decode_kv_bytes_per_step",
                     "decode_state_bytes", "decode_flops_per_step", "achieved_bandwidth_bytes_per_s",
                     "achieved_flops_per_s", "peak_bandwidth_bytes_per_s", "bandwidth_fraction",
                     "arithmetic_intensity_flops_per_byte", "peak_flops_per_s")
_TEXTS = ("model", "cache", "dtype", "device", "experiment")
#: Byte counts per device (``cpu``, ``cuda:0``, ...): objects of device name to a whole number of bytes.
_BY_DEVICE = ("peak_memory_bytes_by_device", "kv_cache_bytes_by_device")
#: Per-round CPU contention (``kvperf.gate.env.CpuContention``) and energy (``kvperf.measure.energy``):
#: finite numbers of at least 0, or null where the OS or the hardware cannot tell.
_CONTENTION = ("cpu_wait_samples", "cpu_others_samples", "energy_j_samples")
#: Finite numbers of at least 0, or null with the reason beside them (``energy_note``).
_NULLABLE_AMOUNTS = (*_ROOFLINE_AMOUNTS, "energy_j", "energy_per_token_j")
#: Strings, or null.
_NULLABLE_TEXTS = ("energy_note", "energy_source")

#: What ``kvperf report`` needs in every case (``check_case(required=...)``).
REPORT_FIELDS = ("cache", "dtype", "batch_size", "prompt_len", "new_tokens", "e2e_s", "ttft_s", "tpot_s",
                 "tokens_per_s", "itl_p50_s", "itl_p95_s", "peak_memory_bytes", "kv_cache_bytes")


def read_json(path: str | Path) -> Any:
    """The parsed JSON of ``path``; ``BadInputError`` naming the file and the fix for any problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{source}: no such file: check the path, or save a baseline first with "
                            "`pytest benchmarks --kvperf-save-baseline`") from None
    except IsADirectoryError:
        raise BadInputError(f"{source}: is a directory: pass the JSON file inside it") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise BadInputError(f"{source}: cannot read the file ({reason}): check its permissions and "
                            "encoding") from None
    if not text.strip():
        raise BadInputError(f"{source}: is empty: regenerate it with `pytest benchmarks --benchmark-json=FILE`")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "truncated" if _truncated(text, exc) else "not valid JSON"
        raise BadInputError(f"{source}: {hint} (line {exc.lineno}, column {exc.colno}): regenerate the file, "
                            "an interrupted write or a bad merge can leave it like this") from None
    except RecursionError:
        raise BadInputError(f"{source}: nested too deeply to be a result file: {_FIX}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadInputError(f"{source}: not a result file ({str(exc)[:80]}): {_FIX}") from None


def _truncated(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether the text stops inside JSON rather than going wrong: the error is at its end, or in its
    last token, cut short (a string never closed, a number or ``true``/``false``/``null`` begun)."""
    rest = text[exc.pos:].rstrip()
    return (exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated string")
            or any(word.startswith(rest) for word in ("true", "false", "null"))
            or re.fullmatch(r"-?[0-9.eE+-]+", rest) is not None)


def _supported_schema() -> int:
    # Imported here: kvperf.measure.bench pulls in torch, which `kvperf compare` never needs otherwise.
    from kvperf.measure.bench import SCHEMA_VERSION

    return SCHEMA_VERSION


def check_schema(value: Any, where: str, source: str) -> int:
    """``value`` as a kvperf schema version this kvperf reads; ``BadInputError`` naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"{source}: {where} is {_shown(value)}, not a kvperf schema version: "
                            "regenerate the file with `pytest benchmarks --benchmark-json=FILE`")
    supported = _supported_schema()
    if value > supported:
        raise BadInputError(f"{source}: written by a newer kvperf (schema {value}, this kvperf reads up to "
                            f"{supported}): upgrade kvperf (`pip install -U kvperf`)")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """``value`` for a message, short whatever its size."""
    if isinstance(value, (list, dict)):
        return f"a JSON {'list' if isinstance(value, list) else 'object'}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(name: str, value: Any) -> str | None:
    """What a field kvperf reads should be, when ``value`` is not that (None: fine, or not read)."""
    if name in _TIMINGS:
        ok = _is_number(value) and 0 < value < math.inf
        return None if ok else "a positive, finite number"
    if name in _BYTES:
        if value is None and name in _NULLABLE_BYTES:
            return None
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= -1
        return None if ok else "a whole number of bytes (-1: not measured)"
    if name in _COUNTS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else "a whole number of at least 1"
    if name in _AMOUNTS or name in _NULLABLE_AMOUNTS:
        ok = (_is_number(value) and 0 <= value < math.inf) or (value is None and name in _NULLABLE_AMOUNTS)
        return None if ok else "a finite number of at least 0" + (", or null" if name in _NULLABLE_AMOUNTS else "")
    if name in _NULLABLE_TEXTS:
        return None if value is None or isinstance(value, str) else "a string or null"
    if name in _TEXTS:
        return None if isinstance(value, str) else "a string"
    if name in _BY_DEVICE:
        ok = isinstance(value, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values())
        return None if ok else "an object of device name to a whole number of bytes"
    return None


def _check_list(value: Any, timing: bool) -> str | None:
    """What is wrong with ``value`` as a list of per-round values (None: nothing). Timings are positive
    and finite; contention shares are finite and non-negative, or null where the OS cannot tell."""
    kind = "positive, finite numbers" if timing else "finite, non-negative numbers or nulls"
    if not isinstance(value, list) or not value:
        return f"is {_shown(value)}, not a non-empty list of {kind} (one per timed round)"
    for index, item in enumerate(value):
        if item is None and not timing:
            continue
        if not (_is_number(item) and math.isfinite(item) and (item > 0 if timing else item >= 0)):
            return f"holds {_shown(item)} at index {index}, not only {kind}"
    return None


def check_case(info: Mapping[str, Any], where: str, source: str, *, required: tuple[str, ...] = ()) -> None:
    """Check every field of a case's ``extra_info`` that kvperf reads; ``where`` locates the case in
    messages (e.g. ``benchmarks[3]``). ``required``: fields that must be present."""
    for name in required:
        if name not in info:
            raise BadInputError(f"{source}: {where} has no '{name}': {_FIX}")
    rounds: dict[str, int] = {}
    for name, value in info.items():
        if name in _CONTENTION or (name.endswith("_samples") and name.removesuffix("_samples") in _TIMINGS):
            problem = _check_list(value, timing=name not in _CONTENTION)
            if problem is None:
                rounds[name] = len(value)
        else:
            expected = _check_value(name, value)
            problem = None if expected is None else f"is {_shown(value)}, not {expected}"
        if problem is not None:
            raise BadInputError(f"{source}: {where}: '{name}' {problem}: the file is damaged or was not written "
                                f"by kvperf; {_FIX}")
    if len(set(rounds.values())) > 1:
        counts = ", ".join(f"{name} {count}" for name, count in sorted(rounds.items()))
        raise BadInputError(f"{source}: {where}: its per-round lists differ in length ({counts}): the file is "
                            f"damaged; {_FIX}")


def _allowed_types(hint: Any) -> tuple[type, ...]:
    """``str | None`` -> ``(str, NoneType)``; a ``float`` takes an ``int`` too (JSON writes ``2e10`` either way)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return (*allowed, int) if float in allowed and int not in allowed else allowed


def _check_types(data: Mapping[str, Any], cls: type, where: str, source: str) -> None:
    """Check the fields of ``data`` against the type hints of the dataclass ``cls``."""
    for name, hint in typing.get_type_hints(cls).items():
        if name not in data:
            continue  # Environment.from_json names a missing required field
        value, allowed = data[name], _allowed_types(hint)
        if GpuTelemetry in allowed:  # the nested GPU fingerprint: an object of its own fields, or null
            if isinstance(value, dict):
                _check_types(value, GpuTelemetry, f"{where}.{name}", source)
                continue
            allowed = tuple(dict if t is GpuTelemetry else t for t in allowed)
        if float in allowed:  # JSON writes 250.0 W as 250.0, but another writer may write 250
            allowed = (*allowed, int)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = " or ".join("null" if t is type(None) else "object" if t is dict else t.__name__ for t in allowed
                                if t is not int or float not in allowed)
            raise BadInputError(f"{source}: {where}.{name} is {_shown(value)}, not {names}: the "
                                f"environment fingerprint is damaged; {_FIX}")


def check_environment(data: Mapping[str, Any], source: str) -> None:
    """Check the types of the environment fingerprint (``machine_info.kvperf``) against ``Environment``,
    its GPU telemetry (``gpu``, ``kvperf.measure.telemetry.GpuTelemetry``) included."""
    _check_types(data, Environment, "machine_info.kvperf", source)
