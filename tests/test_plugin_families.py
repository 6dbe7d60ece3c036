"""The plugin on the models users ship: a latent-attention (DeepSeek-V3), a hybrid (Qwen3-Next) and a
composite (Gemma 3) model, each saved with ``save_pretrained`` and loaded through ``--kvperf-model``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvperf.features import missing_state_layers
from kvperf.kv.families import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH_FILE = """
import pytest

@pytest.mark.kvperf_experiment("matrix")
def test_matrix(kvperf_case, kvperf_bench):
    kvperf_bench(kvperf_case)
"""
ARGS = ["--kvperf-batch-sizes", "2", "--kvperf-prompt-lens", "6", "--kvperf-new-tokens", "3", "--kvperf-rounds", "1",
        "--kvperf-warmup", "0", "--kvperf-dtypes", "float32", "-p", "no:cacheprovider"]


@pytest.mark.parametrize("model_type", ["deepseek_v3", "qwen3_next", "gemma3"])
def test_plugin_benchmarks_a_saved_family(pytester: pytest.Pytester, tmp_path: Path, model_type: str) -> None:
    """Cache on, off and static all pass, and each cached case records the formula's bytes, equal to
    the bytes measured from the cache (the hybrid's include its constant state)."""
    directory = tmp_path / model_type
    tiny_model(model_type).save_pretrained(directory)
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*ARGS, "--kvperf-model", str(directory), "--benchmark-json=out.json")
    result.assert_outcomes(passed=3)
    data = json.loads((pytester.path / "out.json").read_text())
    infos = {b["extra_info"]["cache"]: b["extra_info"] for b in data["benchmarks"]}
    assert set(infos) == {"on", "off", "static"}
    if model_type == "qwen3_next" and (why := missing_state_layers()) is not None:
        # Before transformers 5.5 the hybrid's states live in its own cache class: measured, not sized.
        for cache in ("on", "static"):
            assert infos[cache]["kv_cache_bytes"] > 0 and infos[cache]["kv_cache_formula_bytes"] is None
            assert why in infos[cache]["kv_cache_formula_note"]
        return
    for cache in ("on", "static"):
        info = infos[cache]
        assert info["kv_cache_bytes"] > 0 and "kv_cache_formula_note" not in info
        assert info["kv_cache_formula_bytes"] == info["kv_cache_bytes"], cache
    assert infos["off"]["kv_cache_bytes"] == infos["off"]["kv_cache_formula_bytes"] == 0


def test_plugin_benchmarks_a_family_the_formula_refuses(pytester: pytest.Pytester, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """XLNet caches mems, which kvperf's formula refuses: its cases still pass, with the formula null and
    the reason beside it, and ``kvperf report`` shows the reason."""
    directory = tmp_path / "xlnet"
    tiny_model("xlnet").save_pretrained(directory)
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest(*ARGS, "--kvperf-model", str(directory), "--benchmark-json=out.json")
    result.assert_outcomes(passed=3)
    data = json.loads((pytester.path / "out.json").read_text())
    info = next(b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["cache"] == "on")
    assert info["kv_cache_formula_bytes"] is None
    assert "caches a memory of past hidden states (mems)" in info["kv_cache_formula_note"]

    from kvperf.cli import main

    capsys.readouterr()
    assert main(["report", str(pytester.path / "out.json")]) == 0
    report = capsys.readouterr().out
    assert "null" in report and "No formula: kvperf cannot size the cache of the config of model_type 'xlnet'" in report
