"""Plots stand alone: a title that says what ran, the spread of the rounds, and contended cases circled."""

from __future__ import annotations

from typing import Any

import pytest

from kvperf.report.plots import make_plots
from tests.test_report import _case

matplotlib = pytest.importorskip("matplotlib")
figure = pytest.importorskip("matplotlib.figure")


def _cases() -> list[dict[str, Any]]:
    cases = []
    for n in (10, 50, 100):
        for cache, per_token in (("on", 0.001), ("off", 0.00002 * n)):
            case = _case("length", cache, n, per_token * n)
            case.update(model="distilgpt2", tier="full", device="cpu",
                        e2e_s_samples=[case["e2e_s"] * f for f in (0.9, 1.0, 1.3)],
                        cpu_wait_samples=[0.6 if (n, cache) == (100, "off") else 0.0] * 3)
            cases.append(case)
    return cases


def test_the_length_plot_says_what_ran_and_circles_the_contended_case(tmp_path, monkeypatch):
    seen: list[Any] = []
    original = figure.Figure.savefig

    def keep(fig: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(fig)
        original(fig, *args, **kwargs)

    monkeypatch.setattr(figure.Figure, "savefig", keep)
    (path,) = make_plots(_cases(), tmp_path)
    assert path.name == "length.png" and path.stat().st_size > 10_000
    (fig,) = seen
    assert fig._suptitle.get_text() == ("Experiment 1: cache on vs off against output length\ndistilgpt2, tier full, "
                                        "cpu, float32; batch 1, prompt 8, new tokens 10-100")
    total, per_token = fig.axes
    assert per_token.get_ylabel() == "e2e / new tokens (ms), prefill included"
    labels = [t.get_text() for t in total.get_legend().get_texts()]
    assert labels == ["cache off, float32 (fit: n^2.00)", "cache on, float32 (fit: n^1.00)"]  # O(n^2) against O(n)
    assert [line.get_linestyle() for line in total.lines if line.get_marker() in ("s", "o")][:2] == ["--", "-"]
    circles = [c for c in total.collections if c.__class__.__name__ == "PathCollection"]  # the red circles
    assert [len(c.get_offsets()) for c in circles] == [1]  # only cache off at 100 tokens waited
    note = [t.get_text() for t in fig.texts if t.get_text().startswith("bars:")]
    assert note == ["bars: fastest to slowest round; red circles: 1 case(s) whose rounds waited for a core "
                    "(cpu_wait > 5%): timings unreliable"]
    # the spread: the error bar of a case spans its fastest to its slowest round
    bars = [c for c in total.collections if c.__class__.__name__ == "LineCollection"]
    assert bars and all(len(b.get_segments()) == 3 for b in bars)
