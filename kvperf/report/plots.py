"""Plots of the experiments that stand alone: each says what ran, shows the spread, and flags what
should not be trusted.

* The title names the model, tier, device, dtypes, prompt and new tokens of the cases plotted.
* Each point is the median of the case's rounds; its bar spans the fastest to the slowest round.
* Cache mode is a line style *and* a marker (on: solid, static: dotted, off: dashed); dtype is a
  colour, the same in every panel.
* Power-law fits (``kvperf.report.scaling``) are drawn as thin lines, with their exponents in the legend.
* A case whose rounds waited for a core (``kvperf.report.physics.contended``) is circled in red.

Needs matplotlib (``pip install 'kvperf[plot]'``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kvperf.errors import UsageError
from kvperf.report.physics import contended
from kvperf.report.scaling import fit_power_law

__all__ = ["make_plots"]

Row = dict[str, Any]

_STYLE = {"on": ("-", "o"), "static": (":", "^"), "off": ("--", "s")}
_COLOURS = {"float32": "tab:blue", "bfloat16": "tab:orange", "float16": "tab:green"}


def _values(cases: Sequence[Row], key: str) -> set[str]:
    return {str(c.get(key, "?")) for c in cases}


def _title(experiment: str, cases: Sequence[Row]) -> str:
    """``experiment 1: cache on vs off against length | distilgpt2, tier full, cpu, float32 | prompt 8, new 10-500``."""
    def span(key: str) -> str:
        values = sorted({int(c[key]) for c in cases})
        return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"

    what = ", ".join(sorted(_values(cases, "model")))
    tiers = ", ".join(sorted(_values(cases, "tier")))
    devices = ", ".join(sorted(_values(cases, "device")))
    dtypes = ", ".join(sorted(_values(cases, "dtype")))
    batches = span("batch_size")
    return (f"{experiment}\n{what}, tier {tiers}, {devices}, {dtypes}; batch {batches}, prompt {span('prompt_len')}, "
            f"new tokens {span('new_tokens')}")


def _series(cases: Sequence[Row], x: str) -> list[tuple[tuple[str, str], list[Row]]]:
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for case in cases:
        groups[(case["dtype"], case["cache"])].append(case)
    return [(key, sorted(rows, key=lambda c: c[x])) for key, rows in sorted(groups.items())]


def _spread(cases: Sequence[Row], field: str, scale: float) -> tuple[list[float], list[float], list[float]]:
    """Medians and the distances down to the fastest and up to the slowest round."""
    mid, low, high = [], [], []
    for c in cases:
        median = c[field] * scale
        samples = [v * scale for v in c.get(f"{field}_samples") or [] if isinstance(v, (int, float))] or [median]
        mid.append(median)
        low.append(max(0.0, median - min(samples)))
        high.append(max(0.0, max(samples) - median))
    return mid, low, high


def _line(ax: Any, xs: Sequence[float], cases: Sequence[Row], field: str, scale: float, dtype: str, cache: str,
          label: str) -> None:
    style, marker = _STYLE.get(cache, ("-.", "x"))
    mid, low, high = _spread(cases, field, scale)
    ax.errorbar(xs, mid, yerr=[low, high], linestyle=style, marker=marker, color=_COLOURS.get(dtype, "tab:gray"),
                capsize=3, markersize=5, label=label)
    busy = [(x, y) for x, y, c in zip(xs, mid, cases, strict=True) if contended(c) is not None]
    if busy:
        ax.scatter(*zip(*busy, strict=True), s=160, facecolors="none", edgecolors="red", linewidths=1.5, zorder=5)


def _fit(ax: Any, xs: Sequence[float], ys: Sequence[float], dtype: str, label: str) -> str:
    if len(set(xs)) < 2 or min(ys) <= 0:
        return ""
    fit = fit_power_law(xs, ys)
    grid = [min(xs) * (max(xs) / min(xs)) ** (i / 50) for i in range(51)]
    ax.plot(grid, [fit.predict(x) for x in grid], color=_COLOURS.get(dtype, "tab:gray"), linewidth=0.8, alpha=0.6)
    return f"{label}: n^{fit.exponent:.2f}"


def _memory(ax: Any, xs: Sequence[float], cases: Sequence[Row], dtype: str) -> None:
    colour = _COLOURS.get(dtype, "tab:gray")
    ax.plot(xs, [c["kv_cache_bytes"] / 2**20 for c in cases], "o-", color=colour, label=f"KV, {dtype}")
    ax.plot(xs, [c["peak_memory_bytes"] / 2**20 for c in cases], "s--", color=colour, label=f"peak, {dtype}")


def _busy_note(fig: Any, cases: Sequence[Row], bars: bool = True) -> None:
    busy = sum(contended(c) is not None for c in cases)
    text = (("bars: fastest to slowest round; " if bars else "points: medians of the rounds; ") +
            (f"red circles: {busy} case(s) whose rounds waited for a core (cpu_wait > 5%): timings unreliable"
             if busy else "no case waited for a core"))
    fig.text(0.5, 0.005, text, ha="center", va="bottom", fontsize=7, color="red" if busy else "black")


def _ceilings(cases: Sequence[Row], key: str) -> list[float]:
    return sorted({float(c[key]) for c in cases if isinstance(c.get(key), (int, float)) and c[key] > 0})


def _plain_label(value: float, _position: Any) -> str:
    return f"{value:g}"


def _roofline(axes: Any, cases: Sequence[Row]) -> None:
    """Left: achieved FLOP rate against arithmetic intensity, under the bandwidth slope and the measured
    compute roof. Right: achieved bandwidth against the bytes a step reads, under the peak."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    _plain = FuncFormatter(_plain_label)
    ax1, ax2 = axes
    for (dtype, cache), mine in _series(cases, "arithmetic_intensity_flops_per_byte"):
        marker = _STYLE.get(cache, ("-.", "x"))[1]
        colour = _COLOURS.get(dtype, "tab:gray")
        panels = ((ax1, [c["arithmetic_intensity_flops_per_byte"] for c in mine],
                   [c["achieved_flops_per_s"] / 1e9 for c in mine]),
                  (ax2, [c["decode_bytes_per_step"] / 2**20 for c in mine],
                   [c["achieved_bandwidth_bytes_per_s"] / 1e9 for c in mine]))
        for ax, xs, ys in panels:
            ax.scatter(xs, ys, marker=marker, color=colour, label=f"cache {cache}, {dtype}", zorder=3)
            busy = [(x, y) for x, y, c in zip(xs, ys, mine, strict=True) if contended(c) is not None]
            if busy:
                ax.scatter(*zip(*busy, strict=True), s=160, facecolors="none", edgecolors="red", linewidths=1.5)
    intensities = [c["arithmetic_intensity_flops_per_byte"] for c in cases]
    low, high = min(intensities) / 3, max(intensities) * 3
    flops = _ceilings(cases, "peak_flops_per_s")
    for peak in _ceilings(cases, "peak_bandwidth_bytes_per_s"):
        ridge = flops[-1] / peak if flops else high
        xs = [low, min(max(ridge, low), high)]
        ax1.plot(xs, [x * peak / 1e9 for x in xs], "k-", linewidth=1.2, label=f"bandwidth roof {peak / 1e9:.3g} GB/s")
        ax2.axhline(peak / 1e9, color="k", linewidth=1.2, label=f"peak bandwidth {peak / 1e9:.3g} GB/s")
    bandwidth = _ceilings(cases, "peak_bandwidth_bytes_per_s")
    for peak in flops:  # flat from the ridge point (of the highest bandwidth roof) on
        start = max(low, min(peak / bandwidth[-1], high)) if bandwidth else low
        ax1.plot([start, high], [peak / 1e9] * 2, "k--", linewidth=1.2,
                 label=f"compute roof {peak / 1e9:.3g} GFLOP/s (float32 matmul)")
    if not flops:
        ax1.text(0.02, 0.98, "compute roof not measured", transform=ax1.transAxes, va="top", fontsize=8)
    ax1.set(xscale="log", yscale="log", xlabel="arithmetic intensity (decode FLOPs per byte read)",
            ylabel="achieved GFLOP/s (decode FLOPs per step / TPOT)",
            title="Roofline: every case under the machine's roofs")
    ax2.set(xscale="log", yscale="log", xlabel="MiB one decode step reads (weights + KV cache + states)",
            ylabel="achieved GB/s (bytes per step / TPOT)", title="Achieved bandwidth against the bytes a step reads")
    for ax in (ax1, ax2):  # plain numbers; minor ticks labelled only on an axis of under 1.5 decades
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            axis.set_major_formatter(_plain)
            axis.set_minor_formatter(_plain if hi < 30 * lo else NullFormatter())
        ax.tick_params(which="both", labelsize=7)
        ax.tick_params(axis="x", which="both", labelrotation=45)


def make_plots(cases: list[Row], out_dir: str | Path) -> list[Path]:
    """Write one PNG per plotted experiment (``length.png``, ``batch.png``, ``context.png``) and the
    roofline of every case that has one (``roofline.png``) into ``out_dir``, and return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'kvperf[plot]'") from None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--plots {out}: cannot create the directory ({exc.strerror or type(exc).__name__}): "
                         "give a directory kvperf can write to") from None
    groups: dict[str, list[Row]] = defaultdict(list)
    for case in cases:
        groups[str(case.get("experiment", "custom"))].append(case)
    written: list[Path] = []

    def save(name: str, title: str, group: Sequence[Row], draw: Callable[[Any], None], panels: int = 2,
             bars: bool = True) -> None:
        fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5))
        draw(axes)
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        _busy_note(fig, group, bars)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = out / name
        try:
            fig.savefig(path, dpi=110)
        except OSError as exc:
            raise UsageError(f"--plots {out}: cannot write {path.name} ({exc.strerror or type(exc).__name__}): "
                             "give a directory kvperf can write to") from None
        finally:
            plt.close(fig)
        written.append(path)

    if "length" in groups:
        def length(axes: Any) -> None:
            ax1, ax2 = axes
            for (dtype, cache), mine in _series(groups["length"], "new_tokens"):
                ns = [c["new_tokens"] for c in mine]
                fit = _fit(ax1, ns, [c["e2e_s"] for c in mine], dtype, "fit")
                label = f"cache {cache}, {dtype}" + (f" ({fit})" if fit else "")
                _line(ax1, ns, mine, "e2e_s", 1.0, dtype, cache, label)
                per_token = [{**c, "e2e_s": c["e2e_s"] / c["new_tokens"],
                              "e2e_s_samples": [v / c["new_tokens"] for v in c.get("e2e_s_samples") or []]}
                             for c in mine]
                _line(ax2, ns, per_token, "e2e_s", 1e3, dtype, cache, f"cache {cache}, {dtype}")
            ax1.set(xscale="log", yscale="log", xlabel="new tokens", ylabel="whole generate call (s)",
                    title="Total time against new tokens (log-log; thin lines: power-law fits)")
            ax2.set(xlabel="new tokens", ylabel="e2e / new tokens (ms), prefill included",
                    title="Time per generated token")

        save("length.png", _title("Experiment 1: cache on vs off against output length", groups["length"]),
             groups["length"], length)
    if "batch" in groups:
        def batch(axes: Any) -> None:
            ax1, ax2, ax3 = axes
            for (dtype, cache), mine in _series(groups["batch"], "batch_size"):
                bs = [c["batch_size"] for c in mine]
                _line(ax1, bs, mine, "tokens_per_s", 1.0, dtype, cache, f"tokens/s, cache {cache}, {dtype}")
                _line(ax2, bs, mine, "itl_p50_s", 1e3, dtype, "on", f"ITL p50, {dtype}")
                _line(ax2, bs, mine, "itl_p95_s", 1e3, dtype, "off", f"ITL p95, {dtype}")
                _memory(ax3, bs, mine, dtype)
            ax3.set(xlabel="batch size", ylabel="MiB", title="Memory: KV cache (solid), peak (dashed)")
            ax1.set(xlabel="batch size", ylabel="generated tokens/s (all sequences)", title="Throughput")
            ax2.set(xlabel="batch size", ylabel="inter-token latency (ms)",
                    title="Per-token latency: p50 (solid) and p95 (dashed)")

        save("batch.png", _title("Experiment 2: batching, cache on", groups["batch"]), groups["batch"], batch, 3)
    if "context" in groups:
        def context(axes: Any) -> None:
            ax1, ax2, ax3 = axes
            for (dtype, cache), mine in _series(groups["context"], "prompt_len"):
                ps = [c["prompt_len"] for c in mine]
                _line(ax1, ps, mine, "ttft_s", 1e3, dtype, cache, f"TTFT, {dtype}")
                _line(ax2, ps, mine, "itl_p50_s", 1e3, dtype, "on", f"ITL p50, {dtype}")
                _line(ax2, ps, mine, "itl_p95_s", 1e3, dtype, "off", f"ITL p95, {dtype}")
                _memory(ax3, ps, mine, dtype)
            ax3.set(xlabel="prompt tokens", ylabel="MiB", title="Memory: KV cache (solid), peak (dashed)")
            ax1.set(xlabel="prompt tokens", ylabel="time to first token (ms): prefill + first token",
                    title="TTFT against context")
            ax2.set(xlabel="prompt tokens", ylabel="inter-token latency (ms)",
                    title="Per-token latency: p50 (solid) and p95 (dashed)")

        save("context.png", _title("Experiment 3: context length, cache on, batch 1", groups["context"]),
             groups["context"], context, 3)
    roofline = [c for c in cases if all(isinstance(c.get(k), (int, float)) and c[k] > 0 for k in (
        "arithmetic_intensity_flops_per_byte", "achieved_flops_per_s", "decode_bytes_per_step",
        "achieved_bandwidth_bytes_per_s"))]
    if roofline:
        save("roofline.png", _title("Roofline: decode steps against the memory-bandwidth limit", roofline),
             roofline, lambda axes: _roofline(axes, roofline), bars=False)
    return written
