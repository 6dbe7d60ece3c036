"""Exports to the trackers users have: github-action-benchmark's custom JSON and Bencher's BMF, each
checked against its documented format."""

from __future__ import annotations

import json

from kvperf.cli import main
from kvperf.gate.export import export_cases
from tests.test_report import _case


def _cases() -> list[dict]:
    on = {**_case("length", "on", 100, 0.5), "model": "distilgpt2", "flops_per_token": 1.6e8,
          "e2e_s_samples": [0.45, 0.5, 0.6], "tokens_per_s_samples": [222.2, 200.0, 166.7]}
    off = {**_case("length", "off", 100, 2.0), "model": "distilgpt2", "flops_per_token": 8.1e9,
           "peak_memory_bytes": -1}
    return [on, off]


def test_github_action_benchmark_custom_json():
    smaller = export_cases(_cases(), "github-smaller")
    assert all(set(e) <= {"name", "unit", "value", "range", "extra"} and {"name", "unit", "value"} <= set(e)
               for e in smaller)
    assert all(isinstance(e["value"], float) and isinstance(e["name"], str) for e in smaller)
    names = [e["name"] for e in smaller]
    assert names[:6] == [f"length[cache=on-bs=1-prompt=8-new=100-fp32] distilgpt2 - {m}"
                         for m in ("TTFT", "TPOT", "e2e", "FLOPs/token", "KV bytes", "peak memory")]
    e2e = smaller[2]
    assert (e2e["unit"], e2e["value"], e2e["range"]) == ("ms", 500.0, "± 75")
    assert e2e["extra"] == "median of 3 rounds; fastest to slowest 450 to 600 ms"
    # peak memory not measured (-1) is left out, not exported as a value
    assert not any(n.startswith("length[cache=off") and n.endswith("peak memory") for n in names)
    bigger = export_cases(_cases(), "github-bigger")
    assert [(e["name"].rsplit(" - ", 1)[1], e["unit"]) for e in bigger] == [("tokens/s", "tokens/s")] * 2


def test_bencher_metric_format():
    bmf = export_cases(_cases(), "bencher")
    on = bmf["length[cache=on-bs=1-prompt=8-new=100-fp32] distilgpt2"]
    assert set(on) == {"ttft-ms", "tpot-ms", "e2e-ms", "tokens-per-s", "flops-per-token", "kv-cache-bytes",
                       "peak-memory-bytes"}
    assert on["e2e-ms"] == {"value": 500.0, "lower_value": 450.0, "upper_value": 600.0}
    assert on["flops-per-token"] == {"value": 1.6e8}
    # BMF's schema: an object of objects of {value (required), lower_value, upper_value}, all numbers,
    # measure slugs at most 64 characters
    for measures in bmf.values():
        for slug, metric in measures.items():
            assert len(slug) <= 64 and "value" in metric and set(metric) <= {"value", "lower_value", "upper_value"}
            assert all(isinstance(v, float) for v in metric.values())
            assert metric.get("lower_value", metric["value"]) <= metric["value"] <= metric.get("upper_value",
                                                                                               metric["value"])


def test_the_export_command(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": [{"name": "x", "extra_info": {"kvperf_schema": 1, **c}}
                                               for c in _cases()], "kvperf": {"schema": 1}}))
    assert main(["export", str(path), "--format", "bencher"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["export", str(path), "--format", "github-bigger"]) == 0
    assert [e["value"] for e in json.loads(capsys.readouterr().out)] == [200.0, 50.0]
