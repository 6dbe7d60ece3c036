"""Hostile and corrupt result files: `kvperf compare` and `kvperf report` answer each with one line
naming the file and the fix, exit 2, and never a traceback (exit 1 would read as a regression)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kvperf.cli import main
from kvperf.errors import BadInputError
from kvperf.gate.baseline import load_baseline
from tests.test_compare import BASE, CASE, info, result_json
from tests.test_report import _case


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def with_info(**changes: Any) -> dict[str, Any]:
    """A valid result file whose one case has ``changes`` in its extra_info (None deletes a field)."""
    case = info(BASE)
    for key, value in changes.items():
        if value is None:
            del case[key]
        else:
            case[key] = value
    data = result_json({CASE: info(BASE)})
    data["benchmarks"][0]["extra_info"] = case
    return data


def hostile_files(tmp_path: Path) -> list[tuple[Path, str]]:
    env_bad = result_json({CASE: info(BASE)})
    env_bad["machine_info"]["kvperf"]["cpu_count"] = "two"
    long_int = '{"benchmarks": [], "kvperf": {"schema": ' + "9" * 5000 + "}}"
    return [
        (write(tmp_path / "deep.json", "[" * 200_000 + "]" * 200_000),
         "deep.json: nested too deeply to be a result file: regenerate the file with `pytest benchmarks "
         "--benchmark-json=FILE`"),
        (write(tmp_path / "digits.json", long_int), "digits.json: not a result file (Exceeds the limit"),
        (write(tmp_path / "others.json", with_info(cpu_others_samples=3)),
         "others.json: benchmarks[0] (test_matrix[cache=on-bs=1-prompt=8-new=4-fp32]): 'cpu_others_samples' is 3, "
         "not a non-empty list of finite, non-negative numbers or nulls (one per timed round)"),
        (write(tmp_path / "inf.json", json.dumps(with_info(e2e_s_samples=[0.01, float("inf"), 0.01, 0.01, 0.01]))),
         "'e2e_s_samples' holds inf at index 1, not only positive, finite numbers"),
        (write(tmp_path / "nan.json", json.dumps(with_info(tpot_s_samples=[float("nan")] * 5))),
         "'tpot_s_samples' holds nan at index 0, not only positive, finite numbers"),
        (write(tmp_path / "zero.json", with_info(e2e_s_samples=[0.0] * 5)),
         "'e2e_s_samples' holds 0.0 at index 0, not only positive, finite numbers"),
        (write(tmp_path / "median.json", with_info(e2e_s="fast")),
         "'e2e_s' is 'fast', not a positive, finite number"),
        (write(tmp_path / "bytes.json", with_info(kv_cache_bytes="4096")),
         "'kv_cache_bytes' is '4096', not a whole number of bytes (-1: not measured)"),
        (write(tmp_path / "flops.json", with_info(flops_per_token=[1])),
         "'flops_per_token' is a JSON list, not a finite number of at least 0"),
        (write(tmp_path / "model.json", with_info(model=7)), "'model' is 7, not a string"),
        (write(tmp_path / "wait.json", with_info(cpu_wait_samples=[0.0, 0.0])),
         "its per-round lists differ in length (cpu_wait_samples 2, e2e_s_samples 5, tokens_per_s_samples 5, "
         "tpot_s_samples 5, ttft_s_samples 5)"),
        (write(tmp_path / "env.json", env_bad), "env.json: machine_info.kvperf.cpu_count is 'two', not int"),
    ]


def test_hostile_result_files_are_refused_by_the_reader(tmp_path: Path):
    for path, message in hostile_files(tmp_path):
        with pytest.raises(BadInputError) as excinfo:
            load_baseline(path)
        assert message in str(excinfo.value), path.name


def test_hostile_result_files_give_compare_one_line_and_exit_2(tmp_path: Path, capsys):
    good = write(tmp_path / "good.json", result_json({CASE: info(BASE)}))
    for path, message in hostile_files(tmp_path):
        for args in (["compare", str(good), str(path)], ["compare", str(path), str(good)]):
            assert main(args) == 2, path.name
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, path.name
            assert err.startswith(f"kvperf: error: {path}: ") and message in err, (path.name, err)


def test_100k_samples_in_one_case_compare_in_a_couple_of_seconds(tmp_path: Path, capsys):
    samples = [0.0100 + (i % 97) * 1e-6 for i in range(100_000)]
    data = with_info(e2e_s_samples=samples, ttft_s_samples=[0.001] * 100_000,
                     tpot_s_samples=[(t - 0.001) / 3 for t in samples],
                     tokens_per_s_samples=[4 / t for t in samples], cpu_wait_samples=[0.0] * 100_000)
    big = write(tmp_path / "big.json", data)
    assert big.stat().st_size > 800_000
    good = write(tmp_path / "good.json", result_json({CASE: info(BASE)}))
    main(["compare", str(good), str(good)])  # import what a comparison needs before the clock starts
    capsys.readouterr()
    start = time.perf_counter()
    assert main(["compare", str(big), str(big)]) == 0
    assert time.perf_counter() - start < 3.0
    assert capsys.readouterr().out.splitlines()[-1] == ("verdict: no regression (1 case compared; timings "
                                                       "(reported): 4 of 4 tested)")


def test_json_constants_are_read_but_refused_where_kvperf_reads_a_number(tmp_path: Path):
    from kvperf.gate.result_file import check_case, read_json

    path = write(tmp_path / "x.json", '{"a": [NaN, Infinity, -Infinity]}')
    assert read_json(path)["a"][1] == float("inf")  # in a field kvperf does not read, harmless
    with pytest.raises(BadInputError, match="'ttft_s' is -inf, not a positive, finite number"):
        check_case({"ttft_s": float("-inf")}, "benchmarks[0]", "x.json")
    check_case({"cpu_wait_samples": [None, 0.0], "cpu_others_samples": [None, 0.5], "itl_s": "not read"},
               "benchmarks[0]", "x.json")  # no contention record on this OS: null is allowed


def report_file(tmp_path: Path, name: str, case: dict[str, Any], schema: Any = 1) -> Path:
    return write(tmp_path / name, {"benchmarks": [{"name": "t", "extra_info": case}], "kvperf": {"schema": schema}})


def test_report_checks_the_types_it_reads_and_the_schema_version(tmp_path: Path, capsys):
    good = _case("matrix", "on", 32, 0.1)
    cases = [
        (report_file(tmp_path, "bytes.json", dict(good, kv_cache_bytes="1 KiB")),
         "bytes.json: benchmarks[0]: 'kv_cache_bytes' is '1 KiB', not a whole number of bytes"),
        (report_file(tmp_path, "zero.json", dict(good, e2e_s=0)), "'e2e_s' is 0, not a positive, finite number"),
        (report_file(tmp_path, "batch.json", dict(good, batch_size=True)),
         "'batch_size' is True, not a whole number of at least 1"),
        (report_file(tmp_path, "cache.json", dict(good, cache=None)), "'cache' is None, not a string"),
        (report_file(tmp_path, "nodtype.json", {k: v for k, v in good.items() if k != "dtype"}),
         "nodtype.json: benchmarks[0] has no 'dtype'"),
        (report_file(tmp_path, "newer.json", good, schema=99),
         "newer.json: written by a newer kvperf (schema 99, this kvperf reads up to 1)"),
        (report_file(tmp_path, "newcase.json", dict(good, kvperf_schema=2)),
         "newcase.json: written by a newer kvperf (schema 2"),
        (write(tmp_path / "noblock.json", {"benchmarks": [{"name": "t", "extra_info": good}]}),
         "noblock.json: not a kvperf result file (no 'kvperf' schema block)"),
        (write(tmp_path / "deep.json", "[" * 200_000 + "]" * 200_000), "deep.json: nested too deeply"),
    ]
    for path, message in cases:
        assert main(["report", str(path)]) == 2, path.name
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and message in err, (path.name, err)
    assert main(["report", str(report_file(tmp_path, "good.json", good))]) == 0


def test_a_zero_kv_size_gets_no_fit_instead_of_an_error(tmp_path: Path, capsys):
    cases = [dict(_case("context", "on", 32, 0.1, prompt_len=p), kv_cache_bytes=0) for p in (32, 64)]
    path = write(tmp_path / "r.json", {"benchmarks": [{"name": "t", "extra_info": c} for c in cases],
                                       "kvperf": {"schema": 1}})
    assert main(["report", str(path)]) == 0
    assert "float32 KV bytes against cached positions: no fit (a value is zero or not measured)" in (
        capsys.readouterr().out)


def test_report_plots_into_a_file_or_an_unwritable_place_is_one_line(tmp_path: Path, capsys):
    pytest.importorskip("matplotlib")
    path = report_file(tmp_path, "good.json", _case("batch", "on", 32, 0.1))
    (tmp_path / "a_file").write_text("mine")
    for target in (tmp_path / "a_file", tmp_path / "a_file" / "sub"):
        assert main(["report", str(path), "--plots", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith(f"kvperf: error: --plots {target}: cannot create the directory (")
    assert (tmp_path / "a_file").read_text() == "mine"
