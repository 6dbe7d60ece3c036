"""How often each correctness property catches each deliberately broken cache, over random cases.

Not a pytest file: run it by hand, e.g. ``python benchmarks/property_power.py 200`` (200 random
hypothesis cases, derandomized, each in float32, bfloat16 and float16; several minutes on 2 CPU
cores). The broken caches and the properties are those of tests/test_properties.py: P1/P2 compare
token ids, P3 compares scores on the same prefix.
"""

from __future__ import annotations

import collections
import importlib
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings

from kvperf.kv.configs import build_model


def main(examples: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    tp = importlib.import_module("test_properties")
    torch.set_num_threads(1)
    stats: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0, 0])

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=tp.cases(caches=("on",)))
    def run(case: object) -> None:
        for dtype in ("float32", "bfloat16", "float16"):
            model = build_model(case.small, dtype, seed=case.model_seed)  # type: ignore[attr-defined]
            for name, cls in tp.BROKEN_LAYERS.items():
                result = tp.run_case(model, case, tp.cache_of(cls))
                counts = stats[(dtype, name)]
                counts[0] += tp.token_violation(result) is not None
                counts[1] += tp.score_violation(model, result) is not None
                counts[2] += 1

    run()
    for (dtype, name), (tokens, scores, total) in sorted(stats.items()):
        print(f"{dtype:9} {name:16} P1/P2 caught {tokens}/{total}   P3 caught {scores}/{total}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
