"""The roofline end to end: a session measures the machine's ceilings once, every case gets its bytes,
bandwidth, fraction and intensity, the environment records the ceilings, and ``kvperf report`` shows them."""

from __future__ import annotations

import json

import pytest

from kvperf.cli import main
from kvperf.measure.ceilings import SKIP_ENV_VAR

BENCH_FILE = """
import pytest

@pytest.mark.kvperf_experiment("matrix")
def test_matrix(kvperf_case, kvperf_bench):
    kvperf_bench(kvperf_case)
"""


def test_a_session_measures_the_ceilings_once_and_every_case_gets_its_roofline(pytester: pytest.Pytester,
                                                                               monkeypatch, capsys):
    monkeypatch.delenv(SKIP_ENV_VAR, raising=False)  # the one test that measures them for real
    calls: list[str] = []
    from kvperf.measure import ceilings

    original = ceilings.measure_ceilings

    def counted(*args, **kwargs):
        calls.append(str(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(ceilings, "measure_ceilings", counted)
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest("--kvperf-batch-sizes", "1,2", "--kvperf-prompt-lens", "8", "--kvperf-new-tokens",
                                "4", "--kvperf-rounds", "2", "--kvperf-warmup", "0", "--kvperf-dtypes", "float32",
                                "--benchmark-json=out.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)  # cache on, off and static x batch 1 and 2
    assert calls == ["cpu"]  # once per session, not per case
    data = json.loads((pytester.path / "out.json").read_text())
    env = data["machine_info"]["kvperf"]
    assert env["peak_bandwidth_bytes_per_s"] > 0 and env["peak_bandwidth_note"].startswith("STREAM triad with torch")
    assert env["peak_flops_per_s"] > 0
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        assert info["peak_bandwidth_bytes_per_s"] == env["peak_bandwidth_bytes_per_s"]
        assert info["achieved_bandwidth_bytes_per_s"] == pytest.approx(info["decode_bytes_per_step"] / info["tpot_s"])
        assert info["bandwidth_fraction"] == pytest.approx(info["achieved_bandwidth_bytes_per_s"]
                                                           / info["peak_bandwidth_bytes_per_s"])
        assert info["arithmetic_intensity_flops_per_byte"] == pytest.approx(
            info["decode_flops_per_token"] * info["batch_size"] / info["decode_bytes_per_step"])
    assert main(["report", str(pytester.path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "Roofline: decode against the memory-bandwidth limit" in out
    assert f"peak bandwidth {env['peak_bandwidth_bytes_per_s'] / 1e9:.3g} GB/s: STREAM triad" in out
