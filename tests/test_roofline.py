"""The roofline: the bytes a decode step reads, by hand; null with the reason where unknown; the report,
the plot and the comparison show the fraction."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kvperf.errors import UsageError
from kvperf.kv.families import tiny_config
from kvperf.kv.kv_layers import KvShape, LayerShape
from kvperf.measure.ceilings import MachineCeilings
from kvperf.measure.roofline import case_roofline, decode_bytes, decode_cache_bytes, weights_read_bytes
from kvperf.models import load_model
from kvperf.report.experiments import format_table, make_plots, make_tables

# tiny-gpt2: 2 layers, n_embd 64, 4 heads of 16, vocab 1024, 512 positions, float32.
#   wte 1024 x 64, tied to lm_head: read whole by the output projection          65,536
#   per layer: ln_1 128, c_attn 64 x 192 + 192, c_proj 64 x 64 + 64, ln_2 128,
#              c_fc 64 x 256 + 256, c_proj 256 x 64 + 64                   49,984 x 2 = 99,968
#   ln_f                                                                                128
#   = 165,632 parameters x 4 bytes = 662,528 bytes, plus the rows of wpe (512 x 64) a step gathers:
#   64 x 4 = 256 bytes per sequence.
GPT2_STREAMED_BYTES = 165_632 * 4
GPT2_KV_BYTES_PER_POSITION = 2 * 2 * 4 * 16 * 4  # layers x (K, V) x heads x head_dim x float32


@pytest.fixture(scope="module")
def gpt2() -> Any:
    return load_model("tiny-gpt2", dtype="float32")


def test_the_weights_a_step_reads_by_hand(gpt2):
    assert weights_read_bytes(gpt2, batch_size=1) == GPT2_STREAMED_BYTES + 256
    assert weights_read_bytes(gpt2, batch_size=3) == GPT2_STREAMED_BYTES + 3 * 256  # one wpe row per sequence


def test_the_bytes_of_a_dynamic_step_are_the_mean_over_the_decode_steps(gpt2):
    # prompt 8, 10 new tokens: steps 1..9 attend over 9..17 positions, 13 on average.
    got = decode_bytes(gpt2, "on", batch_size=2, prompt_len=8, new_tokens=10)
    assert got.decode_weights_bytes == GPT2_STREAMED_BYTES + 2 * 256
    assert got.decode_kv_bytes_per_step == 2 * 13 * GPT2_KV_BYTES_PER_POSITION
    assert got.decode_state_bytes == 0
    assert got.decode_bytes_per_step == GPT2_STREAMED_BYTES + 2 * 256 + 2 * 13 * GPT2_KV_BYTES_PER_POSITION
    assert got.roofline_note is None


def test_a_static_step_reads_the_whole_preallocated_cache_and_cache_off_none(gpt2):
    static = decode_bytes(gpt2, "static", batch_size=1, prompt_len=8, new_tokens=10)
    assert static.decode_kv_bytes_per_step == 17 * GPT2_KV_BYTES_PER_POSITION  # max_cache_len = 8 + 10 - 1
    off = decode_bytes(gpt2, "off", batch_size=1, prompt_len=8, new_tokens=10)
    assert off.decode_kv_bytes_per_step == 0 and off.decode_bytes_per_step == GPT2_STREAMED_BYTES + 256
    assert off.roofline_note is not None and off.roofline_note.startswith("cache off: every step recomputes")


def test_recurrent_states_are_read_once_per_step_and_sliding_layers_hold_their_window():
    shape = KvShape("hybrid-test", (
        LayerShape("full_attention", 2, 8, 2, 8),
        LayerShape("sliding_attention", 2, 8, 2, 8, window=4),
        LayerShape("linear_attention", conv_elements=10, recurrent_elements=20, recurrent_itemsize=4),
    ))
    kv, state = decode_cache_bytes(shape, "on", batch_size=2, prompt_len=4, new_tokens=3, dtype=torch.float16)
    per_position = 2 * (2 * 8 + 2 * 8) * 2  # batch 2, K and V of 2 heads x 8, float16
    # steps 1 and 2 hold 5 and 6 positions; the sliding layer keeps its window of 4
    assert kv == (per_position * (5 + 6) + per_position * (4 + 4)) / 2
    assert state == 2 * (10 * 2 + 20 * 4)  # conv state in float16, recurrent state in float32


def _stub(config: Any) -> torch.nn.Module:
    class Stub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.proj = torch.nn.Linear(4, 4)

        @property
        def dtype(self) -> torch.dtype:
            return torch.float32

    return Stub()


def test_refused_families_experts_and_single_tokens_are_null_with_the_reason():
    refused = decode_bytes(_stub(tiny_config("xlm")), "on", 1, 8, 4)
    assert refused.decode_bytes_per_step is None and refused.decode_weights_bytes is None
    assert "generate feeds the whole sequence" in (refused.roofline_note or "")
    experts = decode_bytes(_stub(tiny_config("mixtral")), "on", 1, 8, 4)
    assert experts.decode_bytes_per_step is None
    assert (experts.roofline_note or "").startswith("a mixture of experts (4 experts): a step reads only")
    with pytest.raises(UsageError, match="new_tokens 1 leaves no decode step"):
        decode_cache_bytes(KvShape.uniform("t", 1, 1, 8), "on", 1, 8, 1, "float32")
    # and the case's roofline: every number null, the formula's reason kept
    ceilings = MachineCeilings(10e9, "triad", 50e9, "matmul", None)
    line = case_roofline({**refused.summary(), "tpot_s": 0.01, "decode_flops_per_token": 1e6, "batch_size": 1},
                         ceilings)
    assert (line.achieved_bandwidth_bytes_per_s, line.bandwidth_fraction, line.arithmetic_intensity_flops_per_byte,
            line.decode_bytes_per_step) == (None, None, None, None)
    assert line.roofline_note == refused.roofline_note


def test_a_case_against_the_ceilings():
    info = {"decode_bytes_per_step": 2e6, "tpot_s": 0.001, "decode_flops_per_token": 1.5e6, "batch_size": 2,
            "roofline_note": None}
    line = case_roofline(info, MachineCeilings(10e9, "triad", 50e9, "matmul", 2**25))
    assert line.achieved_bandwidth_bytes_per_s == pytest.approx(2e9)
    assert line.bandwidth_fraction == pytest.approx(0.2)
    assert line.decode_flops_per_step == 3e6 and line.achieved_flops_per_s == pytest.approx(3e9)
    assert line.arithmetic_intensity_flops_per_byte == pytest.approx(1.5)
    assert line.roofline_note == ("the bytes of a step fit in the 32 MiB last-level cache: they can come from the "
                                  "cache, not the memory, and the fraction can pass 1")
    unknown = case_roofline(info, MachineCeilings(None, "no published figure for Foo GPU"))
    assert unknown.bandwidth_fraction is None and unknown.achieved_bandwidth_bytes_per_s == pytest.approx(2e9)
    assert unknown.roofline_note == "no peak bandwidth: no published figure for Foo GPU"


def _roofline_case(cache: str, batch: int, fraction: float, note: str | None = None) -> dict[str, Any]:
    peak = 10e9
    nbytes = 1e6 * batch
    tpot = nbytes / (fraction * peak)
    return {"experiment": "matrix", "cache": cache, "dtype": "float32", "batch_size": batch, "prompt_len": 8,
            "new_tokens": 16, "model": "tiny-gpt2", "tier": "quick", "device": "cpu", "tpot_s": tpot,
            "e2e_s": 16 * tpot, "ttft_s": tpot, "tokens_per_s": batch / tpot, "itl_p50_s": tpot, "itl_p95_s": tpot,
            "peak_memory_bytes": 10**7, "kv_cache_bytes": 4096, "decode_bytes_per_step": nbytes,
            "achieved_bandwidth_bytes_per_s": fraction * peak, "peak_bandwidth_bytes_per_s": peak,
            "peak_bandwidth_note": "STREAM triad with torch, 1 thread(s)", "bandwidth_fraction": fraction,
            "arithmetic_intensity_flops_per_byte": 0.5 * batch, "achieved_flops_per_s": 0.5 * batch * fraction * peak,
            "peak_flops_per_s": 40e9, "roofline_note": note}


def test_the_report_has_a_roofline_table_with_the_peak_and_the_notes():
    cases = [_roofline_case("on", 1, 0.25), _roofline_case("off", 4, 0.031, "cache off: compute-bound"),
             {**_roofline_case("on", 2, 0.5), "decode_bytes_per_step": None, "achieved_bandwidth_bytes_per_s": None,
              "bandwidth_fraction": None, "arithmetic_intensity_flops_per_byte": None, "roofline_note": "refused"}]
    table = next(t for t in make_tables(cases) if t.title.startswith("Roofline"))
    assert table.headers[-4:] == ("achieved GB/s", "of peak", "FLOP/byte", "note")
    by_cache = {(row[1], row[3]): row for row in table.rows}
    assert by_cache[("on", "1")][-4:] == ("2.5", "25.0%", "0.5", "")
    assert by_cache[("off", "4")][-4:] == ("0.31", "3.1%", "2", "[1]")
    assert by_cache[("on", "2")][-5:] == ("null", "null", "null", "null", "[2]")
    assert table.notes[0] == "peak bandwidth 10 GB/s: STREAM triad with torch, 1 thread(s)"
    assert table.notes[-2:] == ("[1] cache off: compute-bound", "[2] refused")
    assert "25.0%" in format_table(table, "markdown")


def test_the_roofline_plot_is_written_with_both_roofs(tmp_path):
    figure = pytest.importorskip("matplotlib.figure")
    seen: list[Any] = []
    original = figure.Figure.savefig

    def keep(fig: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(fig)
        original(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figure.Figure, "savefig", keep)
        paths = make_plots([_roofline_case("on", 1, 0.25), _roofline_case("static", 4, 0.4)], tmp_path)
    assert [p.name for p in paths] == ["roofline.png"] and paths[0].stat().st_size > 10_000
    (fig,) = seen
    roofs, bandwidth = fig.axes
    labels = [t.get_text() for t in roofs.get_legend().get_texts()]
    assert "bandwidth roof 10 GB/s" in labels and "compute roof 40 GFLOP/s (float32 matmul)" in labels
    assert roofs.get_xlabel() == "arithmetic intensity (decode FLOPs per byte read)"
    points = [c for c in bandwidth.collections if c.__class__.__name__ == "PathCollection"]
    assert sorted(round(float(y), 3) for c in points for _, y in c.get_offsets()) == [2.5, 4.0]  # GB/s
