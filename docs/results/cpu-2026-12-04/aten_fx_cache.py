"""torch.compile under an ``ATEN_CPU_CAPABILITY`` setting, in a fresh Inductor cache folder and in one filled
without the setting (docs/tolerance.md, "Portability"). Prints, per compiled function, the largest difference
from eager and whether the compiled output is finite. Run with the cpu session's Python:

    F=$(mktemp -d); python THIS; ATEN_CPU_CAPABILITY=avx2 TORCHINDUCTOR_CACHE_DIR=$F python THIS   # fine
    TORCHINDUCTOR_CACHE_DIR=$F python THIS; ATEN_CPU_CAPABILITY=avx2 TORCHINDUCTOR_CACHE_DIR=$F python THIS
    # the second line's avx2 run: garbage (with ATEN_CPU_CAPABILITY=default: a C++ compile error)
"""

import os

import torch


def affine(x):
    return x * 2 + 1


def capped(x):
    return torch.tanh(x / 50.0) * 50.0


def attention(q, k):
    s = 50.0 * torch.tanh((q @ k.transpose(-1, -2)) / 4.0 / 50.0)
    return torch.softmax(s, -1)


torch.manual_seed(0)
q, k = torch.randn(2, 4, 37, 16), torch.randn(2, 4, 37, 16)
cases = [
    ("x * 2 + 1", affine, (torch.randn(64, 64),)),
    ("50 tanh(x / 50)", capped, (torch.randn(8, 37, 37) * 50,)),
    ("capped attention, float32", attention, (q, k)),
    ("capped attention, bfloat16", attention, (q.bfloat16(), k.bfloat16())),
]
for name, fn, args in cases:
    eager = fn(*args).float()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)(*args).float()
    print(
        f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '')!r} {name}: "
        f"max |compiled - eager| {(compiled - eager).abs().max().item():.3g}, "
        f"finite {bool(torch.isfinite(compiled).all())}"
    )
