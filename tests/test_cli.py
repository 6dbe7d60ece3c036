from __future__ import annotations

import json

import pytest

from kvperf.cli import main


def test_run_prints_every_result_field(capsys):
    assert main(["run", "tiny-gpt2", "--prompt", "8", "--new-tokens", "4", "--batch", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["generated_tokens"] == 8 and len(data["itl_s"]) == 3
    assert data["spec"] == "cache=on-bs=2-prompt=8-new=4"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "tiny-gpt2", "--batch", "0"], "kvperf: error: batch_size must be a positive integer, got 0\n"),
        (["run", "tiny-gpt2", "--dtype", "int8"],
         "kvperf: error: unknown dtype 'int8': use one of float32, bfloat16, float16\n"),
        (["run", "tiny-gpt2", "--prompt", "1000"],
         "kvperf: error: prompt_len 1000 + new_tokens 64 exceeds the model's 512 positions: "
         "use a shorter prompt or fewer new tokens\n"),
        (["run", "tiny-gpt2", "--device", "cuda:0"] if not __import__("torch").cuda.is_available()
         else ["run", "tiny-gpt2", "--device", "npu"], None),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvperf: error: ")
    if message is not None:
        assert err == message


def test_argparse_errors_also_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "tiny-gpt2", "--batch", "two"])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
