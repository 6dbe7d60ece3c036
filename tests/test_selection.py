"""Which options narrow a tier, and how the selection is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvperf.gate.selection import Selection, narrowed_by, relative_args
from kvperf.tiers import get_tier

QUICK = get_tier("quick")


def reasons(tier=QUICK, *, dtypes=("float32", "bfloat16"), device_type="cpu", args=("benchmarks",), keyword="",
            markexpr="", deselected_tests=0, tier_cases=True) -> tuple[str, ...]:
    return narrowed_by(tier, QUICK, dtypes=dtypes, device_type=device_type, args=args, keyword=keyword,
                       markexpr=markexpr, deselected_tests=deselected_tests, tier_cases=tier_cases)


def test_the_whole_tier_is_not_a_subset():
    assert reasons() == ()
    assert reasons(dtypes=("float32", "bfloat16", "float16")) == ()  # more dtypes gate more, not less
    assert reasons(QUICK.with_overrides(rounds=2, warmup_rounds=0, cpu_threads=2)) == ()  # how, not which
    assert reasons(keyword="test_", deselected_tests=0) == ()  # a -k that keeps everything


@pytest.mark.parametrize(("change", "expected"), [
    ({"deselected_tests": 40, "keyword": "matrix"}, "40 test(s) deselected by -k 'matrix'"),
    ({"deselected_tests": 2, "markexpr": "not gpu"}, "2 test(s) deselected by -m 'not gpu'"),
    ({"deselected_tests": 3}, "3 test(s) deselected"),
    ({"args": ("benchmarks/test_generation.py::test_matrix",)}, "node id benchmarks/test_generation.py::test_matrix"),
    ({"tier": QUICK.with_overrides(model="tiny-llama-gqa")},
     "--kvperf-model 'tiny-llama-gqa' instead of the tier's 'tiny-gpt2'"),
    ({"tier": QUICK.with_overrides(batch_sizes=(1,))},
     "--kvperf-batch-sizes 1 instead of the tier's 1,4 and 1,2,4,8"),
    ({"tier": QUICK.with_overrides(prompt_lens=(32,))},
     "--kvperf-prompt-lens 32 instead of the tier's 32,128 and 32,64,128,256"),
    ({"tier": QUICK.with_overrides(new_tokens=8)}, "--kvperf-new-tokens 8 instead of the tier's 32"),
    ({"dtypes": ("float32",)}, "--kvperf-dtypes float32 leaves out bfloat16"),
    ({"dtypes": ("float32", "bfloat16"), "device_type": "cuda"}, "--kvperf-dtypes float32,bfloat16 leaves out float16"),
])
def test_each_narrowing_option_is_one_reason(change, expected):
    assert reasons(**change) == (expected,)


def test_a_file_of_its_own_cases_is_not_narrowed_by_the_tier_s_sizes_or_dtypes():
    tier = QUICK.with_overrides(batch_sizes=(1,), new_tokens=4)
    assert reasons(tier, dtypes=("float32",), tier_cases=False) == ()
    assert reasons(QUICK.with_overrides(model="distilgpt2"), tier_cases=False) == (
        "--kvperf-model 'distilgpt2' instead of the tier's 'tiny-gpt2'",)


def test_selection_json_and_subset_flag():
    selection = Selection(tier="quick", model="tiny-gpt2", device_type="cpu", dtypes=("float32",), args=("b",),
                          keyword="on", markexpr="", deselected_tests=1, narrowed_by=("1 test(s) deselected",))
    assert selection.subset is True
    assert selection.to_json() == {"tier": "quick", "model": "tiny-gpt2", "device_type": "cpu", "dtypes": ["float32"],
                                   "args": ["b"], "keyword": "on", "markexpr": "", "deselected_tests": 1,
                                   "narrowed_by": ["1 test(s) deselected"]}


def test_args_inside_the_rootdir_are_recorded_relative(tmp_path: Path):
    root = tmp_path / "home" / "alice" / "project"
    assert relative_args([str(root / "benchmarks"), f"{root}/b/test_x.py::test_y[a::b]", "benchmarks", "/opt/b.py",
                          str(root)], root) == ("benchmarks", "b/test_x.py::test_y[a::b]", "benchmarks", "/opt/b.py",
                                                ".")
