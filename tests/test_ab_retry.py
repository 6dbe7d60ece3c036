"""kvperf.gate.ab_retry: the cases whose timings were too noisy to test run again within a budget (fake A/B runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvperf.cli import main
from kvperf.gate.ab import AbRun, Side, SideFailedError, prepare_out
from kvperf.gate.ab_retry import MAX_ATTEMPTS, deselect_args, extend_noisy, untested_cases
from kvperf.gate.baseline import load_baseline
from kvperf.gate.compare import compare
from tests.test_ab_out import _fast_args
from tests.test_compare import BASE, info, result_json


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory for both sides; nothing runs in it (the checks come first, or run_ab is faked)."""
    return tmp_path


NOISY = "test_matrix[cache=on-bs=1-prompt=8-new=4-fp32]"
QUIET = "test_matrix[cache=off-bs=1-prompt=8-new=4-fp32]"


def _pair(out: Path, cases: dict[str, dict[str, Any]]) -> AbRun:
    out.mkdir(parents=True, exist_ok=True)
    for side in ("baseline", "current"):
        (out / f"{side}.json").write_text(json.dumps(result_json(cases)))
        (out / f"{side}.log").write_text("fake\n")
    return AbRun(out / "baseline.json", out / "current.json", out / "baseline.log", out / "current.log", 3)


def _compare_files(b: Path, c: Path) -> Any:
    return compare(load_baseline(b), load_baseline(c))


class FakeRuns:
    """``run_cases`` for ``extend_noisy``: each call is one attempt, ``rounds_s`` seconds long on the fake clock,
    whose rounds are quiet from attempt ``quiet_from`` on."""

    def __init__(self, clock: list[float], quiet_from: int = 1, seconds: float = 10.0) -> None:
        self.clock, self.quiet_from, self.seconds = clock, quiet_from, seconds
        self.calls: list[tuple[list[tuple[str, str]], list[str], Path]] = []

    def __call__(self, cases: Any, extra: Any, out: Path) -> AbRun:
        self.calls.append((list(cases), list(extra), out))
        self.clock[0] += self.seconds
        wait = [0.0] * 5 if len(self.calls) >= self.quiet_from else [0.5] * 5
        return _pair(out, {name: info(BASE, wait=wait) for name, _ in cases})


def _first(tmp_path: Path) -> tuple[AbRun, Any]:
    run = _pair(tmp_path, {NOISY: info(BASE, wait=[0.5] * 5), QUIET: info(BASE)})
    return run, _compare_files(run.baseline_json, run.current_json)


def test_noisy_cases_get_more_rounds_until_their_timings_are_tested(tmp_path):
    run, first = _first(tmp_path)
    assert untested_cases(first) == [(NOISY, "tiny-gpt2")] and first.timing_counts()["tested"] == 4
    clock = [0.0]
    fake = FakeRuns(clock, quiet_from=2)
    final, retries = extend_noisy(run, first, out_dir=tmp_path, run_cases=fake, compare_files=_compare_files,
                                  budget_s=100, first_run_s=20, clock=lambda: clock[0])
    # Attempt 1 was as busy as the first run: 10 busy rounds. Attempt 2 added 5 quiet ones: tested.
    assert len(fake.calls) == 2 and retries is not None
    assert [c[0] for c in fake.calls] == [[(NOISY, "tiny-gpt2")]] * 2
    assert fake.calls[0][1] == [f"--deselect=bench.py::{QUIET}"]
    assert [c[2] for c in fake.calls] == [tmp_path / "retries" / "1", tmp_path / "retries" / "2"]
    assert final.timing_counts() == {"total": 8, "tested": 8, "noisy": 0, "no_samples": 0}
    merged = {b["name"]: b["extra_info"] for b in json.loads(run.current_json.read_text())["benchmarks"]}
    assert len(merged[NOISY]["e2e_s_samples"]) == 15 and merged[NOISY]["rounds"] == 15
    assert merged[NOISY]["cpu_wait_samples"] == [0.5] * 10 + [0.0] * 5
    assert merged[NOISY]["kvperf_ab_attempts"] == 3 and len(merged[QUIET]["e2e_s_samples"]) == 5
    assert (retries.attempts, retries.case_runs, retries.spent_s) == (2, 2, 20.0)
    assert final.notes[-1] == ("timings too noisy to test were retried: 2 attempt(s), 2 case run(s), 20 s of the 100 s "
                               "budget (--retry-budget-s); every timing was tested")


def test_retries_stay_within_the_budget_and_the_attempt_limit(tmp_path):
    run, first = _first(tmp_path)
    clock = [0.0]
    never_quiet = FakeRuns(clock, quiet_from=99, seconds=30)
    final, retries = extend_noisy(run, first, out_dir=tmp_path, run_cases=never_quiet, compare_files=_compare_files,
                                  budget_s=50, first_run_s=20, clock=lambda: clock[0])
    # 10 s a case estimated: attempt 1 fits; it took 30 s, so 20 s left fit no second one.
    assert len(never_quiet.calls) == 1 and retries is not None and retries.stopped == "the budget is spent"
    assert untested_cases(final) == [(NOISY, "tiny-gpt2")]

    run, first = _first(tmp_path / "again")
    clock = [0.0]
    never_quiet = FakeRuns(clock, quiet_from=99, seconds=1)
    _, retries = extend_noisy(run, first, out_dir=tmp_path / "again", run_cases=never_quiet,
                              compare_files=_compare_files, budget_s=1000, first_run_s=2, clock=lambda: clock[0])
    assert len(never_quiet.calls) == MAX_ATTEMPTS and retries is not None
    assert retries.stopped == f"stopped after {MAX_ATTEMPTS} attempts"


@pytest.mark.parametrize(("budget_s", "first_run_s"), [(0, 20), (5, 20)])
def test_no_retry_without_budget_for_one_case(tmp_path, budget_s, first_run_s):
    run, first = _first(tmp_path)
    clock = [0.0]
    fake = FakeRuns(clock)
    final, retries = extend_noisy(run, first, out_dir=tmp_path, run_cases=fake, compare_files=_compare_files,
                                  budget_s=budget_s, first_run_s=first_run_s, clock=lambda: clock[0])
    assert fake.calls == [] and retries is None and final == first


def test_a_failed_retry_keeps_the_first_rounds(tmp_path):
    run, first = _first(tmp_path)
    before = run.current_json.read_text()

    def failing(cases: Any, extra: Any, out: Path) -> AbRun:
        raise SideFailedError("the current side failed (pytest exit 1: boom): see x.log")

    final, retries = extend_noisy(run, first, out_dir=tmp_path, run_cases=failing, compare_files=_compare_files,
                                  budget_s=100, first_run_s=1)
    assert retries is not None and retries.stopped.startswith("attempt 1 failed and its rounds are not used (")
    assert run.current_json.read_text() == before and untested_cases(final) == untested_cases(first)


def test_deselect_never_drops_a_case_to_retry_by_prefix():
    keep = ["f.py::test_a", "f.py::test_p[1]"]
    others = ["f.py::test_a", "f.py::test_b", "f.py::test", "f.py::test_p[10]", "f.py::test_p["]
    assert deselect_args(keep, others) == ["--deselect=f.py::test_b", "--deselect=f.py::test_p[10]"]


def test_ab_retries_noisy_cases_through_the_command(checkout, capsys, monkeypatch):
    import kvperf.gate.ab

    calls: list[list[str]] = []

    def fake_run_ab(baseline: Side, current: Side, out_dir: Any, pytest_args: Any, **kwargs: Any) -> AbRun:
        prepare_out(out_dir, overwrite=kwargs.get("overwrite", False))
        calls.append(list(pytest_args))
        wait = [0.5] * 5 if len(calls) == 1 else [0.0] * 5
        return _pair(Path(out_dir), {NOISY: info(BASE, wait=wait), QUIET: info(BASE, wait=wait)})

    monkeypatch.setattr(kvperf.gate.ab, "run_ab", fake_run_ab)
    out = checkout / "ab"
    assert main(_fast_args(checkout, str(out), "--retry-budget-s", "0")) == 8
    assert len(calls) == 1
    assert "verdict: NOT TESTED" in capsys.readouterr().out
    assert (out / "comparison.md").read_text().startswith("### kvperf: ⚠️ Timings not tested: not a pass")

    calls.clear()
    assert main(_fast_args(checkout, str(out), "--overwrite")) == 0
    out_text, err = capsys.readouterr()
    assert calls == [["test_tiny_bench.py"], ["test_tiny_bench.py"]]  # both cases retried: nothing deselected
    assert "kvperf ab: 2 case(s) with timings too noisy to test; running 2 of them again (attempt 1" in err
    assert out_text.splitlines()[-1] == "verdict: no regression (2 cases compared; timings: 8 of 8 tested)"
    assert "timings too noisy to test were retried: 1 attempt(s), 2 case run(s)" in (out / "comparison.md").read_text()
    assert main(_fast_args(checkout, str(out), "--retry-budget-s", "-1")) == 2
    assert "--retry-budget-s -1 must be in [0, 86400] seconds" in capsys.readouterr().err
