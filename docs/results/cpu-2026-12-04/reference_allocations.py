"""Time the reference's steps at 8193 tokens by block size, with the process's minor page faults, and
Unsloth's evaluation masks built as a pair or one at a time (docs/perf.md, 2026-12-04).

    OMP_NUM_THREADS=1 UNSLOTH_ALLOW_CPU=1 PYTHONPATH=. python docs/results/cpu-2026-12-04/reference_allocations.py
"""

from __future__ import annotations

import resource
import time

import torch

from gemma2_regress.reference import oracle, rounding

L, WINDOW = 8193, 4096


def timed(label: str, fn) -> object:
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{label:<44} wall {wall:6.2f} s  sys {after.ru_stime - before.ru_stime:5.2f} s  "
        f"minor faults {after.ru_minflt - before.ru_minflt:>8}",
        flush=True,
    )
    return out


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); bsz 1, 2 heads, 1 kv head, d 16")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, L, 16, generator=g) for h in (2, 1, 1))
    key_valid = torch.ones(1, L, dtype=torch.bool)
    key_valid[0, :3] = False  # three left pads
    kw = dict(scalar=16.0, softcap=50.0, window=WINDOW)
    for rep in (1, 2):
        for block in (1024, 512, 256, 128):
            timed(
                f"[{rep}] oracle.attention float64, query_block {block}",
                lambda b=block: oracle.attention(q, k, v, query_block=b, **kw),
            )
    default = rounding.PART_ENTRIES
    bounds = {}
    for rep in (1, 2):
        for entries in (2**24, 2**21):
            rounding.PART_ENTRIES = entries
            bounds[entries] = timed(
                f"[{rep}] rounding_bound float32, chunks of 2^{entries.bit_length() - 1}",
                lambda: rounding.rounding_bound(q, k, v, key_valid=key_valid, dtype=torch.float32, **kw),
            )
    rounding.PART_ENTRIES = default
    print(
        "rounding_bound the same to the bit for both chunk sizes:", torch.equal(bounds[2**24], bounds[2**21])
    )

    from gemma2_regress import unsloth_adapter

    u = unsloth_adapter.load()
    am = key_valid.long()
    for rep in (1, 2):
        timed(f"[{rep}] Unsloth eval masks, the pair", lambda: u.eval_masks(am, L, WINDOW, torch.float32))
        timed(
            f"[{rep}] Unsloth eval mask, sliding only",
            lambda: u.eval_mask(am, L, WINDOW, torch.float32, sliding=True),
        )
        timed(
            f"[{rep}] Unsloth eval mask, global only",
            lambda: u.eval_mask(am, L, L + 1, torch.float32, sliding=False),
        )


if __name__ == "__main__":
    main()
