"""The flash-attn stand-in's ``_attend`` and ``rounding.half_rounding_bound`` before (f5e1764) and after (HEAD).

    OMP_NUM_THREADS=1 python docs/results/cpu-2026-12-02/standin_and_half_bound_before_after.py
    (from the repository root, torch installed)

Loads the old files from git. ``half_rounding_bound`` on random cases (padding, rows that see no key,
windows, no cap, extra keys, both half dtypes, the exact and the looser form, flash-attn's two-sided
``visible``, chunks split into parts): counts the calls whose bound differs in any bit. ``_attend`` on
random calls (uneven key spans per row with NaN outside, two-sided windows, rows that see no key, GQA,
softcap, float64 / float32 / bfloat16, blocks of 1 to 7 queries): the same rows see no key, and the
worst difference over max |v| (blocks sum the same nonzero terms in another grouping, so not bitwise).
Then each once at 8193 tokens, Gemma-2's window, bfloat16.
"""

import importlib.util
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))
from gemma2_regress.kernel.cases import Case, make_inputs
from gemma2_regress.reference import rounding as new_rounding
from gemma2_regress.standins.flash_attn import flash_attn_interface as new_fa


def old_module(path: str, name: str):
    src = subprocess.run(
        ["git", "show", f"f5e1764:{path}"], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(name, f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


old_rounding = old_module("gemma2_regress/reference/rounding.py", "rounding_old")
old_fa = old_module("gemma2_regress/standins/flash_attn/flash_attn_interface.py", "flash_attn_interface_old")
rng = random.Random(0)

calls = parted = differ = 0
for trial in range(200):
    h, hk = rng.choice([(4, 2), (8, 2), (2, 1), (8, 8), (16, 4)])
    d, kv = rng.choice([8, 16, 32]), rng.randint(1, 400)
    ql, bsz = rng.randint(1, kv), rng.randint(1, 3)
    side = rng.choice(["none", "left", "right"])
    case = Case(
        bsz=bsz,
        n_heads=h,
        n_kv_heads=hk,
        head_dim=d,
        q_len=ql,
        kv_len=kv,
        window=rng.choice([None, rng.randint(1, kv + 2)]),
        pad_side=side,
        pads=tuple(rng.randint(0, kv) for _ in range(bsz)) if side != "none" else (),
        dtype=rng.choice(["bfloat16", "float16"]),
        softcap=rng.choice([50.0, None, 5.0]),
        scalar=float(rng.choice([d, 256])),
        logit_std=rng.choice([0.5, 5.0, 25.0, 100.0]),
        seed=trial,
    )
    try:
        x = make_inputs(case)
    except ValueError:  # padding the case does not allow
        continue
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=x.key_valid)
    kw |= dict(dtype=case.torch_dtype, extra_keys=rng.choice([0, 0, 3]))
    if rng.random() < 0.3:
        left, right = rng.randint(-1, kv), rng.randint(-1, kv)
        i, j = torch.arange(ql)[:, None], torch.arange(kv)[None]
        kw["visible"] = ((j >= i + kv - ql - left) | (left < 0)) & ((j <= i + kv - ql + right) | (right < 0))
    for spread in (2**26, 0):
        old_rounding.EXACT_SPREAD = new_rounding.EXACT_SPREAD = spread
        a = old_rounding.half_rounding_bound(x.q, x.k, x.v, **kw)
        b = new_rounding.half_rounding_bound(x.q, x.k, x.v, **kw)
        calls += 1
        differ += not torch.equal(a.nan_to_num(), b.nan_to_num())
        per_row = bsz * h * kv * (d if bsz * h * ql * kv * d <= spread else 1)
        parted += min(ql, 2**24 // per_row) > 64 * max(1, new_rounding.PART_ENTRIES // (64 * per_row))
old_rounding.EXACT_SPREAD = new_rounding.EXACT_SPREAD = 2**26
print(f"half_rounding_bound: {differ} of {calls} calls differ in any bit ({parted} with chunks in parts)")

worst = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 0.0}
same_empty = True
for trial in range(1000):
    b, sq, sk = rng.randint(1, 3), rng.randint(1, 20), rng.randint(0, 24)
    hk = rng.choice([1, 2])
    h, d = hk * rng.choice([1, 2, 4]), rng.choice([4, 8])
    dt = rng.choice(list(worst))
    window = (rng.choice([-1, rng.randint(0, 25)]), rng.choice([-1, 0, rng.randint(0, 25)]))
    ends = [rng.randint(0, sk) for _ in range(b)]
    starts = [rng.randint(0, e) for e in ends]
    g = torch.Generator().manual_seed(trial)
    q = (torch.randn(b, sq, h, d, generator=g) * 2).to(dt)
    k = (torch.randn(b, sk, hk, d, generator=g) * 2).to(dt)
    v = torch.randn(b, sk, hk, d, generator=g).to(dt)
    for r in range(b):
        k[r, : starts[r]], v[r, ends[r] :] = math.nan, math.nan
    kw = dict(
        scale=d**-0.5, softcap=rng.choice([0.0, 5.0, 50.0]), window=window, key_start=starts, key_end=ends
    )
    o0, l0 = old_fa._attend(q, k, v, **kw)
    for block in (None, 1, 2, 3, 7):
        o1, l1 = new_fa._attend(q, k, v, query_block=block, **kw)
        same_empty &= torch.equal(torch.isinf(l0), torch.isinf(l1)) and not bool(o1.isnan().any())
        scale = max(1.0, float(v.nan_to_num().abs().max()) if v.numel() else 0.0)
        worst[dt] = max(worst[dt], float((o0.double() - o1.double()).abs().max()) / scale)
print(f"_attend: rows that see no key the same: {same_empty}; worst |before - after| / max|v|:", end=" ")
print(", ".join(f"{str(dt).removeprefix('torch.')} {w:.3g}" for dt, w in worst.items()))

torch.set_num_threads(1)
n = 8193
case = Case(n_heads=4, n_kv_heads=2, q_len=n, kv_len=n, window=4096, dtype="bfloat16", logit_std=50.0, seed=n)
x = make_inputs(case)
kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, dtype=torch.bfloat16)
bounds = []
for label, mod in (("before", old_rounding), ("after", new_rounding)):
    t = time.perf_counter()
    bounds.append(mod.half_rounding_bound(x.q, x.k, x.v, **kw))
    print(f"half_rounding_bound {label}: {time.perf_counter() - t:.2f} s at {n} tokens (bfloat16)")
print(f"  the two bitwise equal: {torch.equal(*bounds)}")
q, k, v = (t.transpose(1, 2) for t in (x.q, x.k, x.v))
kw = dict(scale=case.scalar**-0.5, softcap=50.0, window=(4095, 0), key_start=[0], key_end=[n])
for label, mod in (("before", old_fa), ("after", new_fa)):
    t = time.perf_counter()
    mod._attend(q, k, v, **kw)
    print(f"_attend {label}: {time.perf_counter() - t:.2f} s at {n} tokens (bfloat16, window_size=(4095, 0))")
