"""Baseline files: every bad input is one clear error, writes are atomic and never replace by accident,
and the ``kvperf compare`` command turns them into exit codes 0, 1 and 2."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kvperf.cli import main
from kvperf.errors import BadInputError
from kvperf.gate.baseline import SkippedCase, baseline_path, load_baseline, write_baseline
from tests.test_compare import BASE, CASE, ENV, info, result_json


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write(tmp_path / "base.json", result_json({CASE: info(BASE)}))


def test_a_result_file_round_trips(good: Path):
    baseline = load_baseline(good)
    assert baseline.schema == 1 and baseline.environment == ENV
    assert list(baseline.cases) == [(CASE, "tiny-gpt2")]


def test_baseline_path_is_keyed_by_environment():
    assert baseline_path("baselines", ENV.key(), "quick") == Path("baselines") / ENV.key() / "quick.json"
    assert ENV.key().startswith("cpu-test-cpu-2cpu-torch2.13.0-cpu-")


def bad_inputs(tmp_path: Path) -> list[tuple[Path, str]]:
    full = json.dumps(result_json({CASE: info(BASE)}), indent=2)
    plain = result_json({CASE: info(BASE)})
    del plain["kvperf"]
    newer = result_json({CASE: info(BASE)})
    newer["kvperf"]["schema"] = 99
    no_env = result_json({CASE: info(BASE)})
    del no_env["machine_info"]["kvperf"]
    (tmp_path / "dir.json").mkdir()
    return [
        (tmp_path / "absent.json", "absent.json: no such file: check the path, or save a baseline first with "
                                   "`pytest benchmarks --kvperf-save-baseline`"),
        (tmp_path / "dir.json", "dir.json: is a directory: pass the JSON file inside it"),
        (write(tmp_path / "empty.json", ""), "empty.json: is empty: regenerate it with `pytest benchmarks "
                                             "--benchmark-json=FILE`"),
        (write(tmp_path / "cut.json", full[: len(full) // 2]),
         "cut.json: truncated (line "),
        # Cut inside a string or a literal: the decoder points at its start, not at the end of the text.
        (write(tmp_path / "cut-string.json", '{"benchmarks": [{"name": "test_matrix[cache=o'),
         "cut-string.json: truncated (line 1, column 26)"),
        (write(tmp_path / "cut-literal.json", '{"benchmarks": [], "kvperf_subset": fa'),
         "cut-literal.json: truncated (line 1, column 37)"),
        (write(tmp_path / "text.json", "hello, world"), "text.json: not valid JSON (line 1, column 1)"),
        (write(tmp_path / "word.json", '{"a": hello}'), "word.json: not valid JSON (line 1, column 7)"),
        (write(tmp_path / "list.json", [1, 2]), "list.json: not a pytest-benchmark JSON file (no 'benchmarks' "
                                                "list): pass a file written by `pytest benchmarks "
                                                "--benchmark-json=FILE`"),
        (write(tmp_path / "plain.json", plain), "plain.json: not a kvperf baseline (no 'kvperf' schema block)"),
        (write(tmp_path / "newer.json", newer), "newer.json: written by a newer kvperf (schema 99, this kvperf "
                                                "reads up to 1): upgrade kvperf (`pip install -U kvperf`)"),
        (write(tmp_path / "noenv.json", no_env), "noenv.json: no environment fingerprint (machine_info.kvperf)"),
    ]


def test_each_bad_input_is_one_clear_error(tmp_path: Path):
    for path, message in bad_inputs(tmp_path):
        with pytest.raises(BadInputError) as excinfo:
            load_baseline(path)
        text = str(excinfo.value)
        assert "\n" not in text
        assert text.startswith(f"{tmp_path}/") and message in text, (path.name, text)


def test_bad_inputs_exit_2_with_one_line_and_no_traceback(tmp_path: Path, good: Path, capsys):
    for path, message in bad_inputs(tmp_path):
        assert main(["compare", str(good), str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and message in err and "Traceback" not in err
        assert err.startswith("kvperf: error: ")


def test_compare_exit_codes_and_formats(tmp_path: Path, good: Path, capsys):
    same = write(tmp_path / "same.json", result_json({CASE: info(BASE)}))
    slow = write(tmp_path / "slow.json", result_json({CASE: info([t * 1.3 for t in BASE])}))
    assert main(["compare", str(good), str(same)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("verdict: no regression (1 case compared; timings (reported): "
                                                        "4 of 4 tested)")
    # Timings against a stored file are reported by default, and gate only when asked (a dedicated runner).
    assert main(["compare", str(good), str(slow)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == ("verdict: no regression (1 case compared; timings (reported): 4 of 4 tested; "
                                    "3 timing(s) slower, reported not gated)")
    assert "0 regressed, 3 slower (timings reported, not gated)" in out
    assert main(["compare", str(good), str(slow), "--timings", "gate"]) == 1
    assert "verdict: REGRESSION" in capsys.readouterr().out
    assert main(["compare", str(good), str(slow), "--timings", "gate", "--threshold", "e2e=50", "--threshold",
                 "tpot=50", "--threshold", "tokens_per_s=50"]) == 0
    capsys.readouterr()
    assert main(["compare", str(good), str(slow), "--timings", "gate", "--format", "markdown"]) == 1
    assert capsys.readouterr().out.startswith("### kvperf: ❌ Performance regression")
    assert main(["compare", str(good), str(slow), "--timings", "gate", "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["counts"]["regressed"] == 3
    assert main(["compare", str(good), str(slow), "--format", "json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert (counts["regressed"], counts["reported"]) == (0, 3)
    assert main(["compare", str(good), str(same), "--threshold", "speed=5"]) == 2
    assert capsys.readouterr().err.startswith("kvperf: error: bad threshold 'speed=5'")


def test_env_mismatch_exits_2_naming_the_fields_unless_allowed(tmp_path: Path, good: Path, capsys):
    other = dict(ENV.to_json(), cpu_model="Other CPU", transformers_version="5.30.0")
    data = result_json({CASE: info(BASE)})
    data["machine_info"]["kvperf"] = other
    moved = write(tmp_path / "moved.json", data)
    assert main(["compare", str(good), str(moved)]) == 2
    err = capsys.readouterr().err
    assert err == ("kvperf: error: environments differ in transformers_version ('5.23.0' -> '5.30.0'): compare "
                   "runs of the same software and device, or pass --allow-env-mismatch to compare anyway\n")
    assert main(["compare", str(good), str(moved), "--allow-env-mismatch"]) == 0
    assert "note: environments differ, compared anyway" in capsys.readouterr().out


def test_write_is_atomic_and_refuses_to_replace(tmp_path: Path):
    target = tmp_path / "baselines" / ENV.key() / "quick.json"
    data = result_json({CASE: info(BASE)})
    assert write_baseline(data, target) == target
    assert load_baseline(target).cases.keys() == {(CASE, "tiny-gpt2")}
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    before = target.read_bytes()
    changed = result_json({CASE: info([t * 2 for t in BASE])})
    with pytest.raises(BadInputError, match="a baseline already exists: pass --kvperf-overwrite-baseline"):
        write_baseline(changed, target)
    assert target.read_bytes() == before
    write_baseline(changed, target, overwrite=True)
    assert load_baseline(target).cases[(CASE, "tiny-gpt2")]["e2e_s_samples"][0] == pytest.approx(0.02)
    assert sorted(os.listdir(target.parent)) == ["quick.json"]  # no temporary file left behind


def test_write_refuses_what_it_could_not_read_back(tmp_path: Path):
    with pytest.raises(BadInputError, match="not a kvperf baseline"):
        write_baseline({"benchmarks": []}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_subset_selection_and_skipped_cases_are_read_back(tmp_path: Path):
    data = result_json({CASE: info(BASE)})
    data.update(kvperf_subset=True, kvperf_selection={"tier": "quick", "narrowed_by": ["node id b.py::t"]},
                kvperf_skipped_cases=[{"name": "test_x[bs=64]", "model": "tiny-gpt2", "reason": "out of memory"}])
    baseline = load_baseline(write(tmp_path / "b.json", data))
    assert baseline.subset is True and baseline.selection == data["kvperf_selection"]
    assert baseline.skipped_cases == (SkippedCase("test_x[bs=64]", "tiny-gpt2", "out of memory"),)
    older = load_baseline(write(tmp_path / "old.json", result_json({CASE: info(BASE)})))
    assert older.subset is None and older.selection is None and older.skipped_cases == ()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("kvperf_subset", "yes", "'kvperf_subset' is 'yes', not true or false"),
    ("kvperf_selection", ["-k"], "'kvperf_selection' is not an object"),
    ("kvperf_skipped_cases", 3, "'kvperf_skipped_cases' is not a list of {name, model, reason} texts"),
    ("kvperf_skipped_cases", [{"name": "t", "model": "m", "reason": 1}],
     "'kvperf_skipped_cases' is not a list of {name, model, reason} texts"),
])
def test_damaged_selection_fields_are_one_clear_error(tmp_path: Path, key: str, value: Any, message: str):
    data = result_json({CASE: info(BASE)})
    data[key] = value
    with pytest.raises(BadInputError) as raised:
        load_baseline(write(tmp_path / "b.json", data))
    assert str(raised.value).startswith(f"{tmp_path / 'b.json'}: {message}: ")
