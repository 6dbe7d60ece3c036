from __future__ import annotations

import json

import pytest

from kvperf.cli import main
from kvperf.errors import BadInputError
from kvperf.report.experiments import format_table, load_cases, make_plots, make_tables


def _case(experiment, cache, new_tokens, e2e_s, batch_size=1, prompt_len=8, dtype="float32"):
    return {
        "kvperf_schema": 1, "experiment": experiment, "cache": cache, "batch_size": batch_size,
        "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": dtype, "e2e_s": e2e_s,
        "ttft_s": e2e_s / 10, "tpot_s": e2e_s / new_tokens, "tokens_per_s": batch_size * new_tokens / e2e_s,
        "itl_p50_s": e2e_s / new_tokens, "itl_p95_s": 1.2 * e2e_s / new_tokens, "peak_memory_bytes": 2**20,
        "kv_cache_bytes": 0 if cache == "off" else 1024 * (prompt_len + new_tokens - 1) * batch_size,
        "kv_cache_formula_bytes": 0 if cache == "off" else 1024 * (prompt_len + new_tokens - 1) * batch_size,
    }


@pytest.fixture
def results(tmp_path):
    ns = [10, 20, 40, 80]
    cases = [_case("length", "on", n, 0.001 * n) for n in ns] + [_case("length", "off", n, 1e-4 * n * n) for n in ns]
    cases += [_case("batch", "on", 32, 0.1, batch_size=b) for b in (1, 2, 4)]
    cases += [_case("context", "on", 32, 0.1, prompt_len=p) for p in (32, 64, 128)]
    cases += [_case("first_token", "on", 32, 0.1)]
    cases += [_case("matrix", c, 32, 0.1 if c == "on" else 0.3) for c in ("on", "off")]
    path = tmp_path / "results.json"
    benchmarks = [{"name": "x", "extra_info": c} for c in cases]
    path.write_text(json.dumps({"benchmarks": benchmarks, "kvperf": {"schema": 1}}))
    return path


def test_tables_cover_every_experiment_and_fit_the_exponents(results):
    tables = {t.title.split(" (")[0]: t for t in make_tables(load_cases([results]))}
    length = tables["Cache on vs off against output length"]
    assert length.rows[-1][:5] == ("float32", "80", "80.00", "640.00", "8.00x")
    assert any("cache on: O(n^1.00" in note for note in length.notes)
    assert any("cache off: O(n^2.00" in note for note in length.notes)
    assert tables["Benchmark matrix"].rows[1][9] == "3.00x"  # cache on row, off / on
    assert tables["First-token vs next-token latency"].rows[0][4] == "3.20"
    formula = tables["KV-cache formula against the measured tensors"]
    assert formula.notes == ("10 of 10 cases agree to the byte.",)  # specs shared by experiments count once
    assert all(row[-1] == "+0" for row in formula.rows)
    markdown = format_table(length, "markdown")
    assert markdown.startswith("### Cache on vs off") and "| --- |" in markdown


def test_formula_table_shows_a_mismatch():
    case = _case("matrix", "on", 4, 0.1)
    case["kv_cache_formula_bytes"] += 1024  # a formula one position off
    (table,) = [t for t in make_tables([case]) if t.title.startswith("KV-cache formula")]
    assert table.rows[0][-1] == "-1,024"
    assert table.notes == ("0 of 1 cases agree to the byte.",)


def test_energy_table_shows_measured_cases_and_counts_the_nulls_by_reason():
    measured = _case("matrix", "on", 4, 0.1) | {"energy_j": 2.5, "energy_per_token_j": 0.625,
                                                 "energy_source": "rapl", "energy_note": None}
    unread = _case("matrix", "off", 4, 0.3) | {"energy_j": None, "energy_per_token_j": None,
                                                "energy_source": None, "energy_note": "RAPL not readable"}
    (table,) = [t for t in make_tables([measured, unread]) if t.title.startswith("Energy")]
    assert table.rows == (("matrix", "on", "float32", "1", "8", "4", "2.5", "625", "rapl"),)
    assert table.notes[-1] == "null in 1 of 2 cases: RAPL not readable"
    assert not [t for t in make_tables([_case("matrix", "on", 4, 0.1)]) if t.title.startswith("Energy")]


def test_plots_are_written(results, tmp_path):
    pytest.importorskip("matplotlib")
    paths = make_plots(load_cases([results]), tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["batch.png", "context.png", "length.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_cli_report(results, capsys):
    assert main(["report", str(results), "--format", "markdown"]) == 0
    assert "### Batching, cache on" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "r.json: no such file: check the path"),
        ("{trunc", "r.json: not valid JSON (line 1, column 2)"),
        ('{"machine_info": {}}', "r.json: has no 'benchmarks' list"),
        ('{"benchmarks": [{"name": "t", "extra_info": {}}], "kvperf": {"schema": 1}}',
         "no kvperf cases in the given files"),
    ],
)
def test_bad_results_files(tmp_path, capsys, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInputError) as excinfo:
        load_cases([path])
    assert message in str(excinfo.value)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
