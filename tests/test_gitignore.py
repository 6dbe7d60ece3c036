"""What a killed save and the README's commands leave in a checkout is ignored by git; baselines are not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ignored(path: str) -> bool:
    done = subprocess.run(["git", "check-ignore", "--quiet", "--no-index", path], cwd=ROOT, check=False)
    return done.returncode == 0


@pytest.fixture(autouse=True)
def _checkout() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists() or not (ROOT / ".gitignore").exists():
        pytest.skip("not a git checkout")


@pytest.mark.parametrize("path", [
    # kvperf.gate.baseline's temporary file (`.<name>.<random>.tmp`) and write check, left by a killed save
    ".quick.json.k2j3x9a_.tmp", "baselines/cpu-amd-epyc-2cpu-torch2.13.0-cpu-4006c621/.quick.json.k2j3x9a_.tmp",
    "baselines/.kvperf-write-check.abc123.tmp",
    # what the README's and CI's commands write
    "quick.json", "length.json", "batch.json", "context.json", "first.json", "full.json", "current.json", "out.json",
    "plots/length.png", "gate/current.json", "kvperf-ab/comparison.md", "ab/baseline.json",
    "kvperf-unsaved-quick-20260101-120000-a1b2c3.json",
    # the venvs of .ci/run: the newest and the oldest supported transformers
    ".venv/bin/python", ".venv-oldest/bin/python",
])
def test_leftovers_are_ignored(path: str):
    assert ignored(path)


@pytest.mark.parametrize("path", ["baselines/cpu-amd-epyc-2cpu-torch2.13.0-cpu-4006c621/quick.json",
                                  "baselines/cuda-nvidia-h100-16cpu-torch2.13.0-1a2b3c4d/full.json",
                                  "benchmarks/test_generation.py"])
def test_baselines_and_sources_are_not(path: str):
    assert not ignored(path)
