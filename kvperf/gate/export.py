"""kvperf's metrics in the formats of the trackers users already have.

pytest-benchmark's JSON, which those trackers parse, holds one time per case: the whole ``generate``
call. The metrics a KV-cache suite is about (TTFT, TPOT, tokens/s, FLOPs per token, KV bytes, peak
memory) are in its ``extra_info``, which no tracker reads. ``kvperf export`` writes them out:

* ``github-smaller`` / ``github-bigger``: github-action-benchmark's ``customSmallerIsBetter`` and
  ``customBiggerIsBetter`` tools, a JSON list of ``{"name", "unit", "value", "range", "extra"}``.
  A file holds one direction, so latencies, FLOPs and bytes go in one and tokens/s in the other.
* ``bencher``: Bencher Metric Format, ``{benchmark: {measure: {"value", "lower_value",
  "upper_value"}}}``, all metrics in one file; the bounds are the fastest and slowest round.

A case's name is its experiment, its spec and dtype, and the model, e.g.
``length[cache=on-bs=1-prompt=8-new=500-fp32] distilgpt2``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from kvperf.spec import dtype_short_name

__all__ = ["EXPORT_FORMATS", "ExportMetric", "export_cases"]

ExportFormat = Literal["github-smaller", "github-bigger", "bencher"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("github-smaller", "github-bigger", "bencher")
Row = dict[str, Any]


@dataclass(frozen=True)
class ExportMetric:
    """One exported metric: where it is in ``extra_info``, its label, unit and scale, and its direction."""

    field: str
    label: str
    #: Bencher's measure slug (at most 64 characters).
    slug: str
    unit: str
    scale: float
    bigger_is_better: bool = False


METRICS: tuple[ExportMetric, ...] = (
    ExportMetric("ttft_s", "TTFT", "ttft-ms", "ms", 1e3),
    ExportMetric("tpot_s", "TPOT", "tpot-ms", "ms", 1e3),
    ExportMetric("e2e_s", "e2e", "e2e-ms", "ms", 1e3),
    ExportMetric("tokens_per_s", "tokens/s", "tokens-per-s", "tokens/s", 1.0, bigger_is_better=True),
    ExportMetric("flops_per_token", "FLOPs/token", "flops-per-token", "FLOP", 1.0),
    ExportMetric("kv_cache_bytes", "KV bytes", "kv-cache-bytes", "bytes", 1.0),
    ExportMetric("peak_memory_bytes", "peak memory", "peak-memory-bytes", "bytes", 1.0),
)


def case_name(case: Row) -> str:
    spec = (f"cache={case['cache']}-bs={case['batch_size']}-prompt={case['prompt_len']}-new={case['new_tokens']}-"
            f"{dtype_short_name(case['dtype'])}")
    return f"{case.get('experiment', 'custom')}[{spec}] {case.get('model', '?')}"


def _samples(case: Row, metric: ExportMetric) -> list[float]:
    raw = case.get(f"{metric.field}_samples") or []
    return [v * metric.scale for v in raw if isinstance(v, (int, float))]


def _value(case: Row, metric: ExportMetric) -> float | None:
    value = case.get(metric.field)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        return None  # not measured (peak memory -1 on some devices) or not recorded
    return float(value) * metric.scale


def _github(cases: Iterable[Row], bigger: bool) -> list[dict[str, Any]]:
    entries = []
    for case in cases:
        for metric in METRICS:
            value = _value(case, metric)
            if metric.bigger_is_better != bigger or value is None:
                continue
            entry: dict[str, Any] = {"name": f"{case_name(case)} - {metric.label}", "unit": metric.unit,
                                     "value": value}
            samples = _samples(case, metric)
            if len(samples) > 1:
                entry["range"] = f"± {(max(samples) - min(samples)) / 2:.6g}"
                entry["extra"] = f"median of {len(samples)} rounds; fastest to slowest {min(samples):.6g} to " \
                                 f"{max(samples):.6g} {metric.unit}"
            entries.append(entry)
    return entries


def _bencher(cases: Iterable[Row]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for case in cases:
        measures: dict[str, dict[str, float]] = {}
        for metric in METRICS:
            value = _value(case, metric)
            if value is None:
                continue
            measures[metric.slug] = {"value": value}
            samples = _samples(case, metric)
            if samples:
                measures[metric.slug].update(lower_value=min(samples), upper_value=max(samples))
        out[case_name(case)] = measures
    return out


def export_cases(cases: Iterable[Row], fmt: ExportFormat) -> Any:
    """The JSON-ready export of ``cases``.

    The cases are ``extra_info`` dicts, checked by ``kvperf.report.experiments.load_cases``.
    """
    if fmt == "bencher":
        return _bencher(cases)
    return _github(cases, bigger=fmt == "github-bigger")
