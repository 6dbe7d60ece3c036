"""The smaller points of the first hour: hints that help, a start line that can be pasted back."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvperf.gate.ab
from kvperf.cli import main
from kvperf.errors import KvperfError


@pytest.mark.parametrize("name", ["./no-such-model", "/models/missing", "models/org/missing", "missing/config.json"])
def test_a_missing_local_path_is_not_sent_to_the_hub(name, capsys):
    assert main(["kv-size", name]) == 2
    err = capsys.readouterr().err
    assert err == (f"kvperf: error: model {name!r}: no such file or directory: check the path, or give a preset "
                   "(tiny-gpt2, distilgpt2, tiny-llama-gqa, tiny-mistral-sliding) or a hub id\n")


def test_a_hub_id_still_gets_the_download_hint(capsys):
    assert main(["kv-size", "org/no-such-model"]) == 2
    assert "download it first with `hf download org/no-such-model`" in capsys.readouterr().err


def test_the_ab_start_line_keeps_the_quotes_of_a_k_expression(tmp_path: Path, capsys, monkeypatch):
    def stop(*args: object, **kwargs: object) -> None:
        raise KvperfError("stopped before running (test)")

    monkeypatch.setattr(kvperf.gate.ab, "run_ab", stop)
    argv = ["ab", "--baseline-dir", str(tmp_path), "--current-dir", str(tmp_path), "--out", str(tmp_path / "ab"),
            "--cpus", "all", "--", "benchmarks", "-k", "not overhead"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "kvperf ab: running `pytest benchmarks -k 'not overhead'` for both sides, taking turns;" in err
