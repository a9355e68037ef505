"""Hypothesis strategies for attention cases, leaning on the places where attention code breaks.

Lengths cluster at window boundaries (1, W-1, W, W+1, 2W-1, 2W, 2W+1) and at multiples of 64/128
plus or minus one; queries are sometimes fewer than keys (a cached prefix); padding is none, left,
right or on both ends of a row, each row's real length drawn on its own (any row may be the longest,
some rows across the window and others not), one row sometimes fully padded; logits are scaled
into tanh's curved range.
``small_window_cases`` uses windows of 1..64 for many cheap examples; ``real_window_cases`` uses
Gemma-2's real W = 4096 (lengths 4095..4097, 8191..8193) for a few expensive ones.
"""

from __future__ import annotations

from hypothesis import strategies as st

from gemma2_regress.kernel.cases import GEMMA2_WINDOW, Case

# (n_heads, n_kv_heads, head_dim, query_pre_attn_scalar): GQA 2:1, MQA, MHA, GQA 4:1; two with the
# scalar equal to head_dim (Gemma-2 2B) and two not (9B uses 256), so a wrong scale is visible.
# A short menu on purpose: Unsloth's kernel is torch.compile'd and each new geometry recompiles
# (~7 s on CPU), while lengths, batch and padding vary freely without recompiling.
GEOMETRIES = [(4, 2, 16, 16.0), (4, 1, 16, 256.0), (2, 2, 32, 32.0), (8, 2, 8, 256.0)]
# On a GPU the kernel compiles with max-autotune: ~2 min for a new geometry on an H200 (measured
# by `nox -s perf`), so the GPU tier keeps one geometry whose scalar differs from head_dim.
GPU_GEOMETRIES = [(4, 1, 16, 256.0)]
# Below ~1 the cap is linear; around 50 (the Gemma-2 cap) tanh bends; far above it saturates.
LOGIT_STDS = [0.5, 5.0, 25.0, 50.0, 100.0]


def boundary_lengths(window: int, upto: int) -> st.SearchStrategy[int]:
    """Lengths in 1..upto that sit on or next to a window boundary or a tile boundary."""
    special = {1, 2, window - 1, window, window + 1, 2 * window - 1, 2 * window, 2 * window + 1}
    special |= {m + d for m in (64, 128, 256) for d in (-1, 0, 1)}
    special = sorted(n for n in special if 1 <= n <= upto)
    return st.one_of(st.sampled_from(special), st.integers(1, upto))


@st.composite
def small_window_cases(
    draw: st.DrawFn,
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16"),
    max_elems: int = 2**22,
    allow_global: bool = True,
    geometries: tuple[tuple[int, int, int, float], ...] | None = None,
) -> Case:
    """Cheap cases: window 1..64 (or global), up to ~3 windows long, batch 1..8, any padding."""
    window = draw(st.one_of(st.integers(1, 64), st.sampled_from([1, 2, 16, 32, 64])))
    if allow_global and draw(st.booleans()) and draw(st.booleans()):
        window_used: int | None = None
    else:
        window_used = window
    kv_len = draw(boundary_lengths(window, 3 * window + 2))
    q_len = draw(st.one_of(st.just(kv_len), st.integers(1, kv_len)))
    n_heads, n_kv, head_dim, scalar = draw(st.sampled_from(geometries or GEOMETRIES))
    bsz = draw(st.integers(1, 8))
    while bsz > 1 and bsz * n_heads * q_len * kv_len > max_elems:
        bsz -= 1
    padding = draw(paddings(bsz, kv_len, window_used))
    return Case(
        bsz=bsz,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        q_len=q_len,
        kv_len=kv_len,
        window=window_used,
        **padding,
        dtype=draw(st.sampled_from(dtypes)),
        softcap=50.0,
        scalar=scalar,
        logit_std=draw(st.sampled_from(LOGIT_STDS)),
        seed=draw(st.integers(0, 2**16)),
    )


def row_lengths(length: int, window: int | None) -> st.SearchStrategy[int]:
    """One row's real length in 1..length: at the window's edges (W-1, W, W+1: a row inside the window
    or just across it), unpadded, one token, or any; shrinks to ``length`` (no padding)."""
    special = [length, 1] + ([] if window is None else [window - 1, window, window + 1])
    special = list(dict.fromkeys(n for n in special if 1 <= n <= length))
    return st.one_of(st.sampled_from(special), st.integers(1, length))


@st.composite
def paddings(
    draw: st.DrawFn, bsz: int, kv_len: int, window: int | None = None
) -> dict[str, str | tuple[int, ...]]:
    """``Case`` padding fields (``pad_side``, ``pads``, ``right_pads``): a side for the batch (none,
    left, right, or both ends), each row's real length drawn on its own (``row_lengths``), sometimes
    one row, at a drawn index, entirely padding; with "both" each row's pads split between its ends
    at a drawn point."""
    side = draw(st.sampled_from(["none", "left", "right", "both"]))
    if side == "none":
        return {"pad_side": "none", "pads": (), "right_pads": ()}
    real = [draw(row_lengths(kv_len, window)) for _ in range(bsz)]
    if bsz > 1 and draw(st.booleans()):
        real[draw(st.integers(0, bsz - 1))] = 0  # a fully padded row
    return split_pads(draw, side, [kv_len - n for n in real])


def split_pads(draw: st.DrawFn, side: str, totals: list[int]) -> dict[str, str | tuple[int, ...]]:
    """Each row's pad count on ``side``; with "both", split at a drawn point into left and right
    (shrinking toward all on the right)."""
    if side != "both":
        return {"pad_side": side, "pads": tuple(totals), "right_pads": ()}
    lefts = tuple(draw(st.integers(0, t)) for t in totals)
    rights = tuple(t - left for t, left in zip(totals, lefts, strict=True))
    return {"pad_side": "both", "pads": lefts, "right_pads": rights}


@st.composite
def real_window_cases(
    draw: st.DrawFn,
    dtypes: tuple[str, ...] = ("float32",),
    lengths: tuple[int, ...] = (4095, 4096, 4097, 8191, 8192, 8193),
    max_bsz: int = 2,
) -> Case:
    """Gemma-2's real window (4096) with lengths that cross it; small heads keep CPU memory sane."""
    kv_len = draw(st.sampled_from(lengths))
    q_len = draw(st.sampled_from([kv_len, kv_len, 1, 64]))
    # Past 2W the float64 score matrix alone is ~1 GB a row: keep one row there.
    bsz = 1 if kv_len > 2 * GEMMA2_WINDOW - 2 else draw(st.integers(1, max_bsz))
    window = draw(st.sampled_from([GEMMA2_WINDOW, GEMMA2_WINDOW, None]))
    return Case(
        bsz=bsz,
        n_heads=2,
        n_kv_heads=1,
        head_dim=16,
        q_len=q_len,
        kv_len=kv_len,
        window=window,
        **draw(paddings(bsz, kv_len, window)),
        dtype=draw(st.sampled_from(dtypes)),
        softcap=50.0,
        scalar=draw(st.sampled_from([16.0, 256.0])),
        logit_std=draw(st.sampled_from(LOGIT_STDS)),
        seed=draw(st.integers(0, 2**16)),
    )


# The 2024 crash: an evaluation batch longer than the window, with a padding attention_mask.
CRASH_2024 = Case(
    bsz=2,
    n_heads=2,
    n_kv_heads=1,
    head_dim=16,
    q_len=4200,
    kv_len=4200,
    window=GEMMA2_WINDOW,
    pad_side="left",
    pads=(7, 0),
    dtype="float32",
    softcap=50.0,
    scalar=16.0,
    logit_std=25.0,
    seed=853,
)
