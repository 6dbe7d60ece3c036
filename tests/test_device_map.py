"""Device maps (``kvperf.device_map``): parsing and checks with one-line errors, and a model split by a
map between CPU modules that generates the same tokens with the same numbers as the unsplit one."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from importlib.util import find_spec

import pytest
import torch

from kvperf import GenerationSpec, load_model, run_generation
from kvperf.cli import main
from kvperf.device_map import check_device_map, check_modules, parse_device_map, require_accelerate
from kvperf.errors import UsageError

HAS_ACCELERATE = find_spec("accelerate") is not None
needs_accelerate = pytest.mark.skipif(not HAS_ACCELERATE, reason="accelerate is not installed: "
                                      "pip install 'kvperf[multi-device]'")
if HAS_ACCELERATE:  # imported here, not first inside a pytester run (which would drop it again)
    import accelerate

#: tiny-gpt2 spread module by module over CPU entries, the tied LM head with its embedding.
GPT2_SPLIT = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu", "transformer.h.1": "cpu",
              "transformer.ln_f": "cpu", "lm_head": "cpu"}
LLAMA_SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
               "model.rotary_emb": "cpu", "lm_head": "cpu"}
SPEC = GenerationSpec(batch_size=2, prompt_len=8, new_tokens=4)
#: Every number a result reports that is not a clock reading.
EXACT = ("device", "dtype", "generated_tokens", "kv_cache_bytes", "kv_cache_bytes_by_device", "peak_memory_bytes",
         "peak_memory_bytes_by_device", "weights_bytes", "peak_above_weights_bytes", "peak_kv_cache_bytes",
         "peak_activations_bytes", "peak_memory_note", "output_sha256")


def _exact(model, spec):
    summary = run_generation(model, spec, warmup_runs=0).summary()
    return {key: summary[key] for key in EXACT}


def _write(tmp_path, data, name="map.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_auto_and_a_json_file_are_read(tmp_path):
    assert parse_device_map("auto") == parse_device_map(" AUTO ") == "auto"
    assert parse_device_map(_write(tmp_path, {"a": 0, "b": "cuda:1", "": "cpu"})) == {"a": 0, "b": "cuda:1", "": "cpu"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "--device-map '{path}': no such file: give auto or a JSON file of module name to device"),
        ("[1", '--device-map \'{path}\' is not valid JSON: write an object such as {{"transformer.h.0": 0, '
               '"transformer.h.1": 1}}'),
        ("[]", '--device-map must be auto or a non-empty object of module name to device, such as '
               '{{"transformer.h.0": 0, "transformer.h.1": 1}}'),
        ("{}", '--device-map must be auto or a non-empty object of module name to device, such as '
               '{{"transformer.h.0": 0, "transformer.h.1": 1}}'),
        ('{"lm_head": "tpu"}', "--device-map: module 'lm_head' has device 'tpu': use a GPU index (0, 1, ...), "
                               "cuda:N or cpu"),
        ('{"lm_head": -1}', "--device-map: module 'lm_head' has device -1: use a GPU index (0, 1, ...), cuda:N or cpu"),
        ('{"lm_head": true}', "--device-map: module 'lm_head' has device True: use a GPU index (0, 1, ...), "
                              "cuda:N or cpu"),
        ('{"lm_head": "disk"}', "--device-map: module 'lm_head' is offloaded to disk, which kvperf does not "
                                "benchmark (it would time file reads): use cpu to offload it to host memory"),
    ],
)
def test_a_bad_map_file_is_one_line_naming_it(tmp_path, content, message):
    path = str(tmp_path / "missing.json") if content is None else _write(tmp_path, content)
    with pytest.raises(UsageError) as error:
        parse_device_map(path)
    assert str(error.value) == message.format(path=path)


def test_a_map_must_fit_the_device():
    with pytest.raises(UsageError, match=r"^--device-map places modules on cuda:0, cuda:1 but the device is cpu: "):
        check_device_map({"a": 0, "b": "cuda:1", "c": "cpu"}, device="cpu")
    with pytest.raises(UsageError, match=r"^--device-map places every module on the CPU but the device is cuda: "):
        check_device_map({"a": "cpu"}, device="cuda")
    check_device_map({"a": 0, "c": "cpu"}, device="cuda:0")  # cpu entries on a GPU run: offloaded
    check_device_map("auto", device="cuda")


def test_a_map_must_name_the_model_s_modules_and_cover_its_parameters():
    model = load_model("tiny-gpt2")
    with pytest.raises(UsageError) as error:
        check_modules(model, {**GPT2_SPLIT, "transformer.h.7": "cpu"})
    assert str(error.value) == ("--device-map: the model has no module 'transformer.h.7': use names from "
                                "model.named_modules() (its top-level modules: transformer, lm_head), or \"\" for "
                                "the whole model")
    with pytest.raises(UsageError) as error:
        check_modules(model, {k: v for k, v in GPT2_SPLIT.items() if k != "transformer.h.1"})
    assert str(error.value) == ("--device-map gives no device for parameter 'transformer.h.1.ln_1.weight': add its "
                                "module, or a parent of it")
    check_modules(model, GPT2_SPLIT)
    check_modules(model, {"": "cpu"})


def test_without_accelerate_the_error_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate now raises ImportError
    with pytest.raises(UsageError) as error:
        require_accelerate("--kvperf-device-map")
    assert str(error.value) == ("--kvperf-device-map needs accelerate, which is not installed: "
                                "pip install 'kvperf[multi-device]'")


@needs_accelerate
@pytest.mark.parametrize(("preset", "device_map", "spec"), [
    ("tiny-gpt2", GPT2_SPLIT, SPEC),
    ("tiny-gpt2", GPT2_SPLIT, replace(SPEC, cache="static")),
    ("tiny-llama-gqa", LLAMA_SPLIT, SPEC),
])
def test_a_model_split_between_cpu_modules_matches_the_unsplit_one(preset, device_map, spec):
    whole = load_model(preset)
    split = load_model(preset, device_map=device_map)
    assert split.hf_device_map == device_map
    expected = _exact(whole, spec)
    assert _exact(split, spec) == expected
    assert expected["peak_memory_bytes_by_device"] == {"cpu": expected["peak_memory_bytes"]}
    assert expected["kv_cache_bytes_by_device"] == {"cpu": expected["kv_cache_bytes"]}


@needs_accelerate
def test_accelerate_s_hooks_on_every_module_change_no_number():
    """``force_hooks``: every module runs behind accelerate's ``AlignDevicesHook`` (the hooks that move
    activations between GPUs), as a multi-device model does; kvperf's clocks, memory count and cache
    watch run through them."""
    hooked = accelerate.dispatch_model(load_model("tiny-gpt2"), GPT2_SPLIT, force_hooks=True)
    assert hasattr(hooked.transformer.h[1], "_hf_hook")
    assert _exact(hooked, SPEC) == _exact(load_model("tiny-gpt2"), SPEC)


@needs_accelerate
def test_auto_on_the_cpu_keeps_the_model_whole():
    model = load_model("tiny-gpt2", device_map="auto")
    assert model.hf_device_map == {"": "cpu"}
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}


@needs_accelerate
def test_run_takes_a_device_map_and_reports_per_device(tmp_path, capsys):
    path = _write(tmp_path, GPT2_SPLIT)
    assert main(["run", "tiny-gpt2", "--prompt", "8", "--new-tokens", "4", "--device-map", path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak_memory_bytes_by_device"] == {"cpu": data["peak_memory_bytes"]}
    assert data["kv_cache_bytes_by_device"] == {"cpu": data["kv_cache_bytes"]} and data["kv_cache_bytes"] > 0


@needs_accelerate
@pytest.mark.parametrize(("content", "argv", "message"), [
    ({"transformer.h.0": 0, "": "cpu"}, [],
     "kvperf: error: --device-map places modules on cuda:0 but the device is cpu: pass --device cuda (--kvperf-device "
     "cuda under pytest), or map every module to cpu\n"),
    ({"transformer.h.0": "cpu"}, [],
     "kvperf: error: the device map gives no device for parameter 'transformer.wte.weight': add its module, or a "
     "parent of it\n"),
])
def test_run_refuses_a_bad_map_in_one_line(tmp_path, capsys, content, argv, message):
    path = _write(tmp_path, content)
    assert main(["run", "tiny-gpt2", "--prompt", "8", "--new-tokens", "4", "--device-map", path, *argv]) == 2
    assert capsys.readouterr().err == message


BENCH_FILE = """
from kvperf import GenerationSpec

def test_custom(kvperf_bench):
    kvperf_bench(GenerationSpec(batch_size=1, prompt_len=4, new_tokens=3))
"""
PLUGIN_ARGS = ["--kvperf-model", "tiny-gpt2", "--kvperf-rounds", "1", "--kvperf-warmup", "0", "-p", "no:cacheprovider"]


@needs_accelerate
def test_the_plugin_loads_the_model_by_the_map_and_records_per_device(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    (pytester.path / "map.json").write_text(json.dumps(GPT2_SPLIT))
    result = pytester.runpytest(*PLUGIN_ARGS, "--kvperf-device-map", "map.json", "--benchmark-json=out.json")
    result.assert_outcomes(passed=1)
    info = json.loads((pytester.path / "out.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["peak_memory_bytes_by_device"] == {"cpu": info["peak_memory_bytes"]}
    assert info["kv_cache_bytes_by_device"] == {"cpu": info["kv_cache_bytes"]}
    assert info["device_map"] == GPT2_SPLIT


@needs_accelerate
def test_the_plugin_refuses_a_map_of_unknown_modules_at_start_up(pytester: pytest.Pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    (pytester.path / "map.json").write_text(json.dumps({"transformer.h.9": "cpu"}))
    result = pytester.runpytest(*PLUGIN_ARGS, "--kvperf-device-map", "map.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == ("ERROR: --kvperf-device-map: the model has no module 'transformer.h.9': use "
                                      "names from model.named_modules() (its top-level modules: transformer, "
                                      "lm_head), or \"\" for the whole model")


@pytest.mark.gpu
@needs_accelerate
def test_auto_on_the_gpus_matches_one_gpu():
    """Where GPUs exist: ``auto`` spreads tiny-llama-gqa evenly over them; the tokens and KV bytes equal
    those of the model on ``cuda:0``, and the per-device figures sum to the totals."""
    spec = replace(SPEC, prompt_len=16)
    single = run_generation(load_model("tiny-llama-gqa", device="cuda"), spec, warmup_runs=0)
    spread = run_generation(load_model("tiny-llama-gqa", device="cuda", device_map="auto"), spec, warmup_runs=0)
    assert spread.output_sha256 == single.output_sha256
    assert spread.kv_cache_bytes == single.kv_cache_bytes == sum(spread.kv_cache_bytes_by_device.values())
    assert spread.peak_memory_bytes == sum(spread.peak_memory_bytes_by_device.values())


@pytest.mark.gpu
@needs_accelerate
def test_a_map_over_two_gpus_reports_both():
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two CUDA GPUs, this machine has {torch.cuda.device_count()}")
    split = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 1,
             "model.norm": 1, "lm_head": 1}
    spec = replace(SPEC, prompt_len=16)
    single = run_generation(load_model("tiny-llama-gqa", device="cuda"), spec, warmup_runs=0)
    result = run_generation(load_model("tiny-llama-gqa", device="cuda", device_map=split), spec, warmup_runs=0)
    assert result.output_sha256 == single.output_sha256
    assert set(result.peak_memory_bytes_by_device) == {"cuda:0", "cuda:1"}
    assert set(result.kv_cache_bytes_by_device) == {"cuda:0", "cuda:1"}
    assert result.kv_cache_bytes == single.kv_cache_bytes
