"""kvperf.gate.ab: the turn-taking of two sides, its bad inputs, and `kvperf ab` end to end."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from kvperf.cli import main
from kvperf.errors import UsageError
from kvperf.gate.ab import ENV_VAR, Side, Turns, _serve, _start, parse_cpus, parse_env_items, run_ab

# A side that appends "<name><i>" to a log at each of its rounds, passing the turn between rounds
# as kvperf's plugin does between benchmark rounds. With --die-at, it exits in the middle of a turn.
SIDE = textwrap.dedent("""
    import sys
    from kvperf.gate.ab import Turns
    name, log, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    die_at = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    turns = Turns.from_env()
    turns.acquire()
    for i in range(rounds):
        if i:
            turns.pass_turn()
        if i == die_at:
            raise SystemExit(7)
        with open(log, "a") as f:
            f.write(f"{name}{i}\\n")
    turns.release()
""")


def _run_sides(tmp_path: Path, *sides: tuple[str, int, int]) -> tuple[list[str], int, list[int]]:
    script = tmp_path / "side.py"
    script.write_text(SIDE)
    log = tmp_path / "order.log"
    running = [_start(Side(name), [sys.executable, str(script), name, str(log), str(rounds), str(die_at)],
                      tmp_path / f"{name}.out", cpus=None, fixed_malloc=False)
               for name, rounds, die_at in sides]
    paired = _serve(running)
    codes = [r.process.wait() for r in running]
    return log.read_text().split(), paired, codes


def test_sides_take_strict_turns_round_by_round(tmp_path):
    order, paired, codes = _run_sides(tmp_path, ("A", 3, -1), ("B", 3, -1))
    assert order == ["A0", "B0", "A1", "B1", "A2", "B2"]
    assert codes == [0, 0] and paired == 3


def test_a_side_with_more_rounds_goes_on_alone(tmp_path):
    order, paired, codes = _run_sides(tmp_path, ("A", 2, -1), ("B", 4, -1))
    assert order == ["A0", "B0", "A1", "B1", "B2", "B3"]
    assert codes == [0, 0] and paired == 2


def test_a_side_dying_in_its_turn_does_not_hang_the_other(tmp_path):
    order, _, codes = _run_sides(tmp_path, ("A", 3, 1), ("B", 3, -1))
    assert order == ["A0", "B0", "B1", "B2"]
    assert codes == [7, 0]


def test_a_side_that_never_asks_runs_before_the_other(tmp_path):
    # A side whose kvperf predates `kvperf ab` ignores the pipes: the other waits for it to finish.
    script = tmp_path / "side.py"
    script.write_text(SIDE)
    log = tmp_path / "order.log"
    old = _start(Side("A"), [sys.executable, "-c", f"open({str(log)!r}, 'a').write('old\\n')"],
                 tmp_path / "A.out", cpus=None, fixed_malloc=False)
    new = _start(Side("B"), [sys.executable, str(script), "B", str(log), "2"], tmp_path / "B.out", cpus=None,
                 fixed_malloc=False)
    assert _serve([old, new]) == 0
    assert [old.process.wait(), new.process.wait()] == [0, 0]
    assert log.read_text().split() == ["old", "B0", "B1"]


def test_turns_come_only_from_kvperf_ab():
    assert Turns.from_env({}) is None
    assert isinstance(Turns.from_env({ENV_VAR: "3,4"}), Turns)
    with pytest.raises(UsageError, match=f"{ENV_VAR}='x' is not .*unset it"):
        Turns.from_env({ENV_VAR: "x"})


def test_bad_env_items_and_cpus_name_the_option():
    assert parse_env_items(["A=1", "B=x=y"], "--current-env") == {"A": "1", "B": "x=y"}
    with pytest.raises(UsageError, match="bad --current-env 'A': write NAME=VALUE"):
        parse_env_items(["A"], "--current-env")
    assert parse_cpus("all") is None
    with pytest.raises(UsageError, match="--cpus 'one': write CPU numbers"):
        parse_cpus("one")
    if hasattr(__import__("os"), "sched_getaffinity"):
        with pytest.raises(UsageError, match="not available here"):
            parse_cpus("4096")


BENCH = textwrap.dedent("""
    from kvperf import GenerationSpec

    def test_tiny(kvperf_bench):
        kvperf_bench(GenerationSpec(cache="on", batch_size=1, prompt_len=8, new_tokens=4))
""")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "test_tiny_bench.py").write_text(BENCH)
    return tmp_path


def _ab_args(checkout: Path, *extra: str) -> list[str]:
    return ["ab", "--baseline-dir", str(checkout), "--current-dir", str(checkout), "--out", str(checkout / "ab"),
            "--cpus", "all", "--retry-budget-s", "0", *extra, "--", "test_tiny_bench.py", "-q", "--kvperf-rounds", "3",
            "--kvperf-warmup", "0"]


def test_the_plugin_passes_the_turn_before_every_round(checkout):
    run = run_ab(Side("baseline", directory=str(checkout)), Side("current", directory=str(checkout)),
                 checkout / "ab", ["test_tiny_bench.py", "-q", "--kvperf-rounds", "3", "--kvperf-warmup", "1"])
    # Turns taken by both sides: the test's start, before each of 1 warm-up and 3 timed rounds, and the
    # end of the session.
    assert run.paired_turns == 6
    assert "1 passed" in run.current_log.read_text()


def test_ab_catches_a_cache_disabled_on_the_current_side(checkout, capsys):
    code = main(_ab_args(checkout, "--current-env", "KVPERF_TEST_FORCE_CACHE_OFF=1", "--format", "json"))
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    verdicts = {(v["metric"], v["verdict"]) for v in out["verdicts"]}
    assert ("flops_per_token", "regressed") in verdicts and ("kv_bytes", "improved") in verdicts
    for side in ("baseline", "current"):
        data = json.loads((checkout / "ab" / f"{side}.json").read_text())
        assert [b["name"] for b in data["benchmarks"]] == ["test_tiny"]
        assert data["benchmarks"][0]["extra_info"]["rounds"] == 3
    assert (checkout / "ab" / "comparison.md").read_text().startswith("#")
    # The results of a finished A/B run are not replaced unless asked.
    assert main(_ab_args(checkout)) == 2
    assert "holds the results of an earlier A/B run (baseline.json, current.json, baseline.log, current.log, " \
           "comparison.md): pass --overwrite" in capsys.readouterr().err


def test_ab_reports_a_failing_side_with_exit_3(checkout, capsys):
    args = _ab_args(checkout)
    assert main([*args, "--kvperf-rounds", "0"]) == 3
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("kvperf: error: the baseline side failed (pytest exit 4: ")
    assert "baseline.log" in err


def test_ab_bad_python_is_exit_2(checkout, capsys):
    assert main(_ab_args(checkout, "--current-python", str(checkout / "nope"))) == 2
    assert capsys.readouterr().err == (f"kvperf: error: --current-python {checkout / 'nope'}: not an executable file: "
                                       "give the python of a virtual environment with kvperf installed, e.g. "
                                       ".venv/bin/python\n")

