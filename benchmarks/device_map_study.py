"""What accelerate's hooks cost per generated token: a GPT-2-shaped preset as it is, and with
``AlignDevicesHook`` on every module (a device map over CPU entries, ``force_hooks=True``: the hooks a
model spread over several GPUs runs through). Thread CPU time of kvperf's timed call, interleaved (the
order reversed every iteration), one torch thread; then the cost of ``model_devices``, which every
timed call runs before its clock starts.

    python benchmarks/device_map_study.py distilgpt2 9
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from accelerate import dispatch_model

from kvperf import GenerationSpec, load_model
from kvperf.measure.devices import model_devices
from kvperf.measure.harness import time_generation
from kvperf.measure.prompts import make_prompts

torch.set_num_threads(1)
name = sys.argv[1] if len(sys.argv) > 1 else "distilgpt2"
plain = load_model(name)
dm = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "lm_head": "cpu", "transformer.ln_f": "cpu",
      **{f"transformer.h.{i}": "cpu" for i in range(plain.config.n_layer)}}
hooked = dispatch_model(load_model(name), dm, force_hooks=True)
spec = GenerationSpec(prompt_len=128, new_tokens=32)
ids, mask = make_prompts(plain, spec)
res = {"plain": [], "hooked": []}
for m in (plain, hooked):
    time_generation(m, spec, ids, mask)
for it in range(int(sys.argv[2]) if len(sys.argv) > 2 else 7):
    order = [("plain", plain), ("hooked", hooked)][:: 1 if it % 2 == 0 else -1]
    for label, m in order:
        t = time_generation(m, spec, ids, mask)
        res[label].append(t.e2e_cpu_s / spec.new_tokens * 1e3)
p, h = statistics.median(res["plain"]), statistics.median(res["hooked"])
print(f"{name}: plain {p:.3f} ms/token, hooked {h:.3f} ms/token, ratio {h / p:.4f} "
      f"(thread CPU time, medians of {len(res['plain'])})")
n = 2000
t0 = time.thread_time()
for _ in range(n):
    model_devices(plain)
print(f"model_devices({name}): {(time.thread_time() - t0) / n * 1e6:.1f} us per call (thread CPU time)")
