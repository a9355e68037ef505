"""The reference's cap, ``t * tanh(x / t)``, out of place against in place on one float64 block, and whether the
two agree to the bit in each dtype (docs/perf.md).

    OMP_NUM_THREADS=1 GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296 \\
        .nox/cpu/bin/python docs/results/cpu-2026-12-05c/cap_in_place.py
"""

import time

import torch


def out_of_place(x: torch.Tensor) -> torch.Tensor:
    return 50.0 * torch.tanh(x / 50.0)


def in_place(x: torch.Tensor) -> torch.Tensor:
    return x.div_(50.0).tanh_().mul_(50.0)


torch.manual_seed(0)
block = torch.randn(1, 4, 128, 4224, dtype=torch.float64) * 30  # a 128-query block over a 4096 window's keys
for f in (out_of_place, in_place, out_of_place, in_place):
    xs = [block.clone() for _ in range(20)]
    t0 = time.perf_counter()
    for x in xs:
        f(x)
    print(f"{f.__name__:13s} {(time.perf_counter() - t0) / 20 * 1e3:6.2f} ms")
t0 = time.perf_counter()
for _ in range(20):
    torch.tanh(block)
print(f"{'tanh alone':13s} {(time.perf_counter() - t0) / 20 * 1e3:6.2f} ms")
for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
    q, k = torch.randn(2, 4, 37, 16, dtype=dtype) * 3, torch.randn(2, 4, 53, 16, dtype=dtype) * 3
    s = q @ k.transpose(-1, -2)
    print(dtype, "equal to the bit:", torch.equal(out_of_place(s.clone()), in_place(s.clone())))
