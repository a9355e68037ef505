"""The rounding bounds before (39438e8^) and after (HEAD): bitwise the same on random cases, and their time.

    python docs/results/cpu-2026-12-02/bounds_before_after.py     (from the repository root, torch installed)

Loads the old gemma2_regress/reference/rounding.py from git; random cases cover padding, fully padded
rows, windows, no cap, extra keys, both half dtypes, the exact and chunked half-precision paths, and
``visible`` masks. Prints the worst relative difference (0.0 = bitwise equal) and one timing at 8193
tokens for each bound.
"""

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))
from gemma2_regress.reference import rounding as new

src = subprocess.run(
    ["git", "show", "39438e8^:gemma2_regress/reference/rounding.py"],
    capture_output=True,
    text=True,
    check=True,
).stdout
with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(src)
spec = importlib.util.spec_from_file_location("rounding_old", f.name)
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)


def worst(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
    fin = a.isfinite()
    return float(((a[fin] - b[fin]).abs() / a[fin].abs().clamp(min=1e-300)).max()) if fin.any() else 0.0


g = torch.Generator().manual_seed(0)
full = half = 0.0
for trial in range(48):
    big = trial % 4 == 3
    b, kvh = int(torch.randint(1, 3, (1,), generator=g)), int(torch.randint(1, 3, (1,), generator=g))
    h = kvh * int(torch.randint(1, 3, (1,), generator=g))
    d = 64 if big else int(torch.randint(2, 17, (1,), generator=g))
    kv = 700 if big else int(torch.randint(1, 70, (1,), generator=g))
    ql = kv if big else int(torch.randint(1, kv + 1, (1,), generator=g))
    window, softcap, scale = (
        [None, 1, 3, 16][trial % 4],
        [None, 50.0, 5.0][trial % 3],
        [0.1, 3.0, 40.0][trial % 3],
    )
    q = torch.randn(b, h, ql, d, generator=g) * scale
    k = torch.randn(b, kvh, kv, d, generator=g) * scale
    v = torch.randn(b, kvh, kv, d, generator=g)
    valid = None
    if trial % 2:
        valid = (torch.rand(b, kv, generator=g) > 0.4).long()
        valid[0] = 0 if b > 1 else valid[0]
    kw = dict(scalar=16.0, softcap=softcap, window=window, key_valid=valid, extra_keys=trial % 3)
    if not big:
        for dt in (torch.float32, torch.float64):
            full = max(
                full,
                worst(
                    old.rounding_bound(q, k, v, dtype=dt, **kw), new.rounding_bound(q, k, v, dtype=dt, **kw)
                ),
            )
    visible = torch.rand(ql, kv, generator=g) > 0.5 if trial % 5 == 4 else None
    for dt in (torch.bfloat16, torch.float16):
        x = (q.to(dt), k.to(dt), v.to(dt))
        half = max(
            half,
            worst(
                old.half_rounding_bound(*x, dtype=dt, visible=visible, **kw),
                new.half_rounding_bound(*x, dtype=dt, visible=visible, **kw),
            ),
        )
print(f"worst relative difference: rounding_bound {full}, half_rounding_bound {half}")
torch.manual_seed(1)
q, k, v = torch.randn(1, 2, 8193, 16) * 3, torch.randn(1, 1, 8193, 16) * 3, torch.randn(1, 1, 8193, 16)
for name, fn, dt in (
    ("rounding_bound", "rounding_bound", torch.float32),
    ("half_rounding_bound", "half_rounding_bound", torch.bfloat16),
):
    for label, mod in (("before", old), ("after", new)):
        t = time.perf_counter()
        getattr(mod, fn)(q.to(dt), k.to(dt), v.to(dt), scalar=16.0, softcap=50.0, window=4096, dtype=dt)
        print(f"{name} {label}: {time.perf_counter() - t:.2f} s at 8193 tokens ({dt})")
