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
        (["run", "tiny-gpt2", "--warmup", "99999999999999999999"],
         "kvperf: error: --warmup must be in [0, 1000], got 99999999999999999999\n"),
        (["run", "tiny-gpt2", "--warmup", "-5"], "kvperf: error: --warmup must be in [0, 1000], got -5\n"),
        (["run", "tiny-gpt2", "--seed", str(2**64)],
         f"kvperf: error: --seed must be in [0, {2**64 - 1}], got {2**64}\n"),
        (["run", "tiny-gpt2", "--seed", "-1"], f"kvperf: error: --seed must be in [0, {2**64 - 1}], got -1\n"),
        (["run", "tiny-gpt2", "--batch", str(10**20)],
         f"kvperf: error: --batch must be at most {2**31 - 1}, got {10**20}\n"),
        (["report", "no-such.json", "--plots", ""], "kvperf: error: --plots '' names no directory: give one for "
                                                    "the PNG files, e.g. --plots plots, or leave the option out\n"),
        (["run", "tiny-gpt2", "--cache", "offloaded"],
         "kvperf: error: --cache offloaded: cache 'offloaded' (DynamicCache(offloading=True)) keeps layers in CPU "
         "memory and copies them to the GPU as they are needed, so it needs cuda, and this run is on cpu: run it on "
         "a GPU machine with --kvperf-device cuda (kvperf run: --device cuda)\n"),
        (["run", "tiny-mistral-sliding", "--cache", "quanto"],
         "kvperf: error: --cache quanto: cache 'quanto' (QuantizedCache) holds full-attention layers only, and this "
         "mistral model has layers of window 16: use cache on or static for it\n"),
        (["run", ""], "kvperf: error: MODEL is empty: give a preset (tiny-gpt2, distilgpt2, tiny-llama-gqa), a model "
                      "directory or a hub id\n"),
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


def test_the_largest_seed_runs(capsys):
    assert main(["run", "tiny-gpt2", "--prompt", "8", "--new-tokens", "2", "--seed", str(2**64 - 1), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generated_tokens"] == 2


@pytest.mark.parametrize("where", ["generate", "load"])
def test_out_of_memory_is_one_line_and_exit_5(capsys, monkeypatch, where):
    """What torch raises when memory runs out (faked: the machine's memory is never exhausted)."""
    import torch

    import kvperf.measure.harness
    import kvperf.models
    from tests.test_oom import CPU_OOM

    def fail(*args, **kwargs):
        raise RuntimeError(CPU_OOM) if where == "generate" else torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(kvperf.measure.harness if where == "generate" else kvperf.models,
                        "run_generation" if where == "generate" else "load_model", fail)
    assert main(["run", "tiny-gpt2", "--batch", "64", "--prompt", "500", "--new-tokens", "12"]) == 5
    assert capsys.readouterr().err == (
        "kvperf: error: out of memory for batch 64 x (prompt 500 + 12 new tokens), float32 on cpu: use a smaller "
        "--batch, --prompt or --new-tokens, or a smaller --dtype\n")


def test_a_reader_that_goes_away_is_not_a_traceback() -> None:
    """``kvperf ... | head``: the pipe closes before kvperf has written everything; kvperf exits quietly
    with 141 (as ``yes | head`` does), with no BrokenPipeError traceback on stderr."""
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-m", "kvperf.cli", "kv-size", "tiny-gpt2", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader goes away before the first byte
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
