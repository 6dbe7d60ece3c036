"""A model that ships its own code is refused in one line that keeps its hint (trust_remote_code), from
the command line and under pytest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvperf.cli import main

HINT = ("ships its own code, which kvperf runs only when allowed (trust_remote_code): read that code, then pass "
        "--trust-remote-code (--kvperf-trust-remote-code under pytest)")


@pytest.fixture
def remote_code_model(tmp_path: Path) -> Path:
    """A model directory whose config names classes of its own (auto_map), as hub models with custom code do."""
    model = tmp_path / "custom-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "custom-kv", "architectures": ["CustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}))
    (model / "configuration_custom.py").write_text(
        "from transformers import PretrainedConfig\n\nclass CustomConfig(PretrainedConfig):\n"
        "    model_type = 'custom-kv'\n")
    return model


@pytest.mark.parametrize("argv", [["run"], ["kv-size"], ["kv-size", "config.json"]])
def test_the_command_line_refusal_keeps_its_hint(remote_code_model: Path, capsys, argv):
    name = str(remote_code_model / argv[1]) if len(argv) > 1 else str(remote_code_model)
    assert main([argv[0], name]) == 2
    assert capsys.readouterr().err == f"kvperf: error: model {name!r} {HINT}\n"


def test_the_pytest_refusal_keeps_its_hint(remote_code_model: Path, pytester: pytest.Pytester):
    pytester.makepyfile(test_bench="def test_nothing(kvperf_bench):\n    pass\n")
    result = pytester.runpytest("--kvperf-model", str(remote_code_model), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == f"ERROR: model {str(remote_code_model)!r} {HINT}"
