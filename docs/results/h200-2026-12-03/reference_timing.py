"""Where the eager reference's seconds go on a GPU: transformers' eager tiny Gemma-2 (``EagerTarget``, the
golden float64 model and a same-dtype baseline) at the GPU tier's lengths, each call timed, then one call
of each dtype under torch.profiler. Run from the checkout root (torch and transformers; Unsloth for
``unsloth``):
    PYTHONPATH=. python3 docs/results/h200-2026-12-03/reference_timing.py [cuda|cpu] [SCALE] [unsloth]
SCALE divides the lengths (a quick check on CPU: ``cpu 16``); ``unsloth``: import Unsloth first, as every
GPU tier worker does (it patches transformers and torch on import).
"""

import sys
import time

import torch

if "unsloth" in sys.argv[3:]:
    import unsloth  # noqa: F401

from gemma2_regress.model import tiny
from gemma2_regress.model.eager import EagerTarget
from gemma2_regress.model.session import ModelSession

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
scale = int(sys.argv[2]) if len(sys.argv) > 2 else 1
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
path = tiny.checkpoint(tiny.tiny_config(), seed=0, init="large")
torch.manual_seed(0)
for dtype in (torch.float64, torch.bfloat16):
    target = EagerTarget(path, dtype, device, session=ModelSession())
    for bsz, length in ((1, 4097), (1, 16384), (4, 8192)):
        ids = torch.randint(4, 512, (bsz, length // scale))
        took = []
        for _ in range(3):
            sync()
            start = time.perf_counter()
            target.forward(ids, labels=ids)
            sync()
            took.append(round(time.perf_counter() - start, 3))
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
        print(f"forward {dtype} b{bsz} L{length // scale}: {took} s, peak {peak:.1f} GiB", flush=True)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(4, 512, (1, 4094 // scale))
    for _ in range(2):
        sync()
        start = time.perf_counter()
        target.generate(ids, None, 6)
        sync()
        print(
            f"generate {dtype} b1 prompt{4094 // scale} new6: {time.perf_counter() - start:.3f} s", flush=True
        )
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else []
    )
    ids = torch.randint(4, 512, (1, 16384 // scale))
    with torch.profiler.profile(activities=acts) as prof:
        target.forward(ids, labels=ids)
        sync()
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    print(f"profile {dtype} b1 L{16384 // scale}:", flush=True)
    print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=50), flush=True)
