"""Every causal-LM family of the installed transformers through kvperf: formula, harness, cache correctness.

Not a pytest file: run it by hand (13 minutes on 2 CPU cores with ``--jobs 2``):

    python benchmarks/families_study.py --jobs 2 --out families.jsonl > families.md

``--render families.jsonl`` prints the tables of an earlier run again.

For every model type of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` it builds ``kvperf.kv.families.tiny_model``
(2 to 4 layers, hidden 64, windows of 4, kvperf's seeded init) in a child process with a timeout, and
records:

* **formula**: ``estimate_kv_cache`` against ``measure_layer_bytes`` of the cache a real ``generate``
  returned, layer by layer, for the dynamic cache in float32 and bfloat16 and the static cache in
  float32 (2 rows, the second left-padded by 2, prompt 7, 5 new tokens: the windows of 4 overflow).
  ``exact`` when every layer agrees to the byte in all three, ``refused`` when kvperf raises its own
  ``UsageError`` (the reason is kept), ``wrong`` when a number differs, ``crash`` when anything else is
  raised by kvperf's formula. ``no generate`` when transformers' own ``generate`` fails on the tiny
  model, and ``no config`` when the tiny config does not build: both are outside kvperf.
* **harness**: the plugin's ``benchmark_generation`` (with a stand-in for pytest-benchmark's fixture),
  which runs everything ``run_generation`` does (prompts, a timed ``generate``, the memory pass) and
  the FLOP count and the formula, with the cache on, off and static; ``ok`` or the error.
* **cached = uncached**: greedy token ids with the dynamic and the static cache equal those with
  ``use_cache=False`` (float32, the spec above).

It prints a Markdown table of the counts, one row per refusal reason, and one row per family that is
not ``exact`` or ``refused``, or whose harness or correctness check failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import traceback
from collections import Counter, defaultdict
from dataclasses import replace
from queue import Empty
from typing import Any

NEW_TOKENS = 5
PROMPT_LEN = 7
LEFT_PAD = (0, 2)
TIMEOUT_S = 600


class _Benchmark:
    """What ``benchmark_generation`` uses of pytest-benchmark's fixture."""

    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}

    def pedantic(self, fn: Any, setup: Any = None, rounds: int = 1, warmup_rounds: int = 0,
                 iterations: int = 1) -> None:
        for _ in range(rounds + warmup_rounds):
            if setup is not None:
                setup()
            fn()


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if "/kvperf/" in f.filename]
    frame = inside[-1] if inside else frames[-1]
    return f"{frame.filename.split('/')[-2]}/{frame.filename.split('/')[-1]}:{frame.lineno}"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}"


def _generate(model: Any, cache: str, ids: Any, mask: Any) -> Any:
    import torch

    from kvperf.measure.harness import generate_kwargs
    from kvperf.spec import GenerationSpec

    spec = GenerationSpec(cache=cache, batch_size=len(LEFT_PAD), prompt_len=PROMPT_LEN, new_tokens=NEW_TOKENS)
    if hasattr(model, "_previous_max_cache_length"):
        del model._previous_max_cache_length
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, output_scores=True, **generate_kwargs(model, spec))


def _first_difference(cached: Any, uncached: Any) -> str:
    """Where a cached run first picks another token: the step, the uncached top-2 margin there and the
    largest score difference, relative to the largest score. A margin far below the difference is a
    near tie that rounding decides; a difference as large as the scores is a cache that changes them."""
    prompt = cached.sequences.shape[1] - len(cached.scores)
    differs = (cached.sequences[:, prompt:] != uncached.sequences[:, prompt:]).any(dim=0).nonzero()
    step = int(differs[0])
    c, u = cached.scores[step].float(), uncached.scores[step].float()
    top2 = u.topk(2, dim=-1).values
    scale = float(u[u.isfinite()].abs().max())
    margin = float((top2[:, 0] - top2[:, 1]).min())
    gap = float((c - u)[u.isfinite()].abs().max())
    return f"step {step}: top-2 margin {margin / scale:.1e}, score difference {gap / scale:.1e} (of the largest score)"


def study_family(model_type: str) -> dict[str, Any]:
    """Every check of one family (run in a child process)."""
    import torch

    torch.set_num_threads(1)
    from kvperf.errors import UsageError
    from kvperf.kv.families import tiny_config, tiny_model
    from kvperf.kv.kv_size import estimate_kv_cache, measure_layer_bytes, returned_cache
    from kvperf.measure.bench import benchmark_generation
    from kvperf.measure.prompts import make_prompts
    from kvperf.spec import GenerationSpec

    row: dict[str, Any] = {"model_type": model_type}
    try:
        tiny_config(model_type)
        models = {dtype: tiny_model(model_type, dtype) for dtype in ("float32", "bfloat16")}
    except Exception as exc:
        row.update(formula="no config", formula_note=_short(exc))
        return row
    model = models["float32"]
    row["model_class"] = type(model).__name__
    spec = GenerationSpec(batch_size=len(LEFT_PAD), prompt_len=PROMPT_LEN, new_tokens=NEW_TOKENS)
    seq_len = PROMPT_LEN + NEW_TOKENS - 1
    # Formula against measurement.
    outputs: dict[tuple[str, str], Any] = {}
    try:
        ids, mask = make_prompts(model, spec, left_pad=LEFT_PAD)
    except Exception as exc:
        row.update(formula="crash", formula_note=f"make_prompts: {_short(exc)}", formula_where=_where(exc))
        return row
    bare: dict[tuple[str, str], str] = {}  # what transformers' own generate raised, per mode
    for dtype, cache in (("float32", "on"), ("bfloat16", "on"), ("float32", "static"), ("float32", "off")):
        try:
            outputs[dtype, cache] = _generate(models[dtype], cache, ids, mask)
        except Exception as exc:
            bare[dtype, cache] = _short(exc)
    row["transformers_fails"] = {f"{cache} {dtype}": note for (dtype, cache), note in bare.items()}
    if ("float32", "on") not in outputs:
        row.update(formula="no generate", formula_note=bare["float32", "on"])
    else:
        mismatches = []
        try:
            for (dtype, cache), out in outputs.items():
                if cache == "off":
                    continue
                measured = measure_layer_bytes(returned_cache(out))
                estimate = estimate_kv_cache(models[dtype].config, len(LEFT_PAD), seq_len, dtype,
                                             "static" if cache == "static" else "dynamic", prompt_len=PROMPT_LEN)
                if estimate.layer_bytes != measured:
                    mismatches.append(f"{cache} {dtype}: formula {list(estimate.layer_bytes)} != measured "
                                      f"{list(measured)}")
                row.setdefault("state_bytes", estimate.state_bytes)
                row.setdefault("layer_kinds", list(estimate.shape.layer_kinds))
            row["formula"] = "wrong" if mismatches else "exact"
            if mismatches:
                row["formula_note"] = "; ".join(mismatches)
        except UsageError as exc:
            row.update(formula="refused", formula_note=str(exc))
        except Exception as exc:
            row.update(formula="crash", formula_note=_short(exc), formula_where=_where(exc))
    # Cached = uncached greedy tokens.
    if ("float32", "off") in outputs:
        off = outputs["float32", "off"]
        row["cached_equals_uncached"] = {cache: bool(torch.equal(outputs["float32", cache].sequences, off.sequences))
                                         for cache in ("on", "static") if ("float32", cache) in outputs}
        row["first_difference"] = {cache: _first_difference(outputs["float32", cache], off)
                                   for cache, equal in row["cached_equals_uncached"].items() if not equal}
    # The harness and the plugin's benchmark path, each cache mode.
    harness: dict[str, str] = {}
    for cache in ("on", "off", "static"):
        case = replace(spec, cache=cache)  # type: ignore[arg-type]
        try:  # the plugin's path: prompts, timed generate, memory pass, FLOP count, formula
            bench = _Benchmark()
            benchmark_generation(bench, model, case, rounds=1, warmup_rounds=0)
            harness[cache] = "ok"
            if cache == "on":
                row["formula_extra_info"] = {k: v for k, v in bench.extra_info.items() if k.startswith("kv_cache")}
        except Exception as exc:
            failed = bare.get(("float32", cache))
            harness[cache] = (f"transformers' own generate fails too: {failed}" if failed is not None
                              else f"{_short(exc)} at {_where(exc)}")
    row["harness"] = harness
    return row


def _child(model_type: str, queue: Any) -> None:
    try:
        queue.put(study_family(model_type))
    except BaseException as exc:  # the study must report every family, whatever happens in it
        queue.put({"model_type": model_type, "formula": "crash", "formula_note": _short(exc)})


def run_one(model_type: str, timeout_s: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(model_type, queue))
    process.start()
    try:
        waited = 0.0
        while waited < timeout_s:
            try:
                return queue.get(timeout=1.0)  # type: ignore[no-any-return]
            except Empty:
                waited += 1.0
                if not process.is_alive() and queue.empty():
                    return {"model_type": model_type, "formula": "crash",
                            "formula_note": f"the study's process died (exit code {process.exitcode})"}
        return {"model_type": model_type, "formula": "timeout", "formula_note": f"no answer in {timeout_s:.0f} s"}
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()


def _harness_ok(row: dict[str, Any]) -> bool:
    """Every cache mode ran, except those that transformers' own generate cannot run either."""
    harness = row.get("harness", {})
    return bool(harness) and all(v == "ok" or v.startswith("transformers' own") for v in harness.values())


def _reason(note: str) -> str:
    """A refusal's reason without the family's name, so that families with one reason share a row."""
    if " caches nothing: " in note:
        return "caches nothing: " + note.split(" caches nothing: ", 1)[1]
    return note.split("': ", 1)[1] if "': " in note else note


def render(rows: list[dict[str, Any]]) -> str:
    """The Markdown tables of the study."""
    import transformers

    counts = Counter(row["formula"] for row in rows)
    harness_ok = [row for row in rows if _harness_ok(row)]
    generating = [row for row in rows if row["formula"] in ("exact", "refused", "wrong", "crash")]
    equal = [row for row in generating
             if row.get("cached_equals_uncached") and all(row["cached_equals_uncached"].values())]
    unequal = [row for row in generating if row not in equal]
    lines = [f"Families study, transformers {transformers.__version__}: {len(rows)} causal-LM model types.", "",
             "| outcome | families |", "| --- | ---: |"]
    for outcome in ("exact", "refused", "wrong", "crash", "no generate", "no config", "timeout"):
        lines.append(f"| formula {outcome} | {counts.get(outcome, 0)} |")
    lines.append(f"| harness and plugin ok with the cache on, off and static (of the {len(generating)} families "
                 f"whose generate works) | {sum(1 for r in generating if _harness_ok(r))} |")
    lines.append(f"| greedy tokens with the dynamic and static cache equal `use_cache=False` (of "
                 f"{len(generating)}) | {len(equal)} |")
    if unequal:
        lines.append(f"| cached tokens differ from uncached | {', '.join(r['model_type'] for r in unequal)} |")
    del harness_ok
    reasons: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["formula"] == "refused":
            reasons[_reason(row["formula_note"])].append(row["model_type"])
    if reasons:
        lines += ["", "| refused because | families |", "| --- | --- |"]
        for reason, families in sorted(reasons.items(), key=lambda item: (-len(item[1]), item[0])):
            lines.append(f"| {reason} | {', '.join(sorted(families))} |")
    others = [row for row in rows if row["formula"] not in ("exact", "refused") or
              (row["formula"] in ("exact", "refused") and (not _harness_ok(row) or row not in equal))]
    if others:
        lines += ["", "| family | formula | note | harness (on, off, static) | cached = uncached |",
                  "| --- | --- | --- | --- | --- |"]
        for row in sorted(others, key=lambda r: (r["formula"], r["model_type"])):
            harness = row.get("harness", {})
            shown = ", ".join(f"{k}: {v[:80]}" for k, v in harness.items() if v != "ok") or ("ok" if harness else "")
            note = str(row.get("formula_note", ""))[:160].replace("|", "/")
            equal = "; ".join(f"{cache}: differs at {where}"
                              for cache, where in row.get("first_difference", {}).items())
            if not equal and row.get("cached_equals_uncached"):
                equal = ", ".join(f"{cache}: {'yes' if same else 'no'}"
                                  for cache, same in row["cached_equals_uncached"].items())
            lines.append(f"| {row['model_type']} | {row['formula']} | {note} | {shown.replace('|', '/')} | "
                         f"{equal} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("types", nargs="*", help="model types (default: every causal-LM type)")
    parser.add_argument("--out", help="also write one JSON line per family here")
    parser.add_argument("--jobs", type=int, default=1, help="families studied at once (default 1)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per family")
    parser.add_argument("--render", help="only print the tables of a JSON-lines file of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            print(render([json.loads(line) for line in f]))
        return
    from concurrent.futures import ThreadPoolExecutor

    from kvperf.kv.families import causal_lm_types

    types = args.types or list(causal_lm_types())
    rows = []
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - written line by line as families finish
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for row in pool.map(lambda t: run_one(t, args.timeout), types):
                rows.append(row)
                print(f"{row['model_type']}: {row['formula']}", file=sys.stderr, flush=True)
                if out is not None:
                    out.write(json.dumps(row) + "\n")
                    out.flush()
    finally:
        if out is not None:
            out.close()
    print(render(rows))


if __name__ == "__main__":
    main()
