"""Metamorphic properties of the oracle: relations between its own outputs, no second implementation.

Each runs in float64 and in float32, the kernels' working precision. Two runs whose tensors differ
in shape may sum in another order (BLAS picks kernels by shape, CPU capability and threads), so
such pairs are held to twice ``rounding.rounding_bound``, the worst case of the arithmetic: about
1e-11 of |v| in float64, where any semantic slip is of the order of |v| itself. In bf16/fp16 that
worst case bounds nothing past a few hundred keys; the low-precision baseline is judged against
SDPA, flex and transformers by the tolerance rule instead (test_vs_*.py). Runs of identical shapes
are compared bit for bit: the same kernels on the same shapes and 64-byte-aligned buffers in one
process sum in the same order, and a key outside the window has weight exactly 0.
The window-boundary, batch and padding properties are the shared ones in
``gemma2_regress.kernel.properties`` that the GPU tier also runs on kernels.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from fixtures import child
from gemma2_regress import unsloth_adapter
from gemma2_regress.kernel import properties
from gemma2_regress.kernel.cases import GEMMA2_WINDOW, Case, Inputs, make_inputs
from gemma2_regress.kernel.strategies import small_window_cases
from gemma2_regress.reference import masks, oracle, rounding


def oracle_fn(case: Case, dtype: torch.dtype):
    """The oracle as an ``attn(q, k, v, key_valid)`` callable with the case's scale, cap and window."""
    return functools.partial(_call, scalar=case.scalar, softcap=case.softcap, window=case.window, dtype=dtype)


def _call(q, k, v, key_valid, **kw):
    return oracle.attention(q, k, v, key_valid=key_valid, **kw)


DTYPES = (torch.float64, torch.float32)


def reorder_bound(case: Case, x: Inputs, dtype: torch.dtype, extra_keys: int = 0) -> torch.Tensor:
    """How far two runs of the oracle in ``dtype`` on these inputs may differ: each is within
    ``rounding.rounding_bound`` of the exact result, whatever order its sums take."""
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=x.key_valid)
    return 2 * rounding.rounding_bound(x.q, x.k, x.v, dtype=dtype, extra_keys=extra_keys, **kw)


# --- the window boundary -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window", [1, 2, 3, 16, 63, GEMMA2_WINDOW])
def test_window_boundary(window: int, dtype: torch.dtype) -> None:
    """Uniform attention (q = 0): the value W-1 keys back moves the last output, W back does not."""
    case = Case(softcap=50.0, window=window)

    def last_query_only(q, k, v, key_valid):  # the property reads the last query; skip the rest
        return oracle_fn(case, dtype)(q[:, :, -1:], k, v, key_valid)

    effects = properties.check_window_boundary(
        last_query_only, f"oracle[{dtype}]", window=window, dtype=dtype
    )
    assert effects[window] == 0.0 and effects[window + 1] == 0.0, effects  # exactly: weight 0, not small


@given(case=small_window_cases(allow_global=False), where=st.floats(0, 1))
def test_key_outside_window_has_no_effect(case: Case, where: float) -> None:
    """Any logits (capped, curved range included): replacing k and v W or more keys back from the
    last query leaves its output bit-identical (its weight is exactly 0, not small)."""
    if case.kv_len <= case.window:
        return
    x = make_inputs(case.unpadded())
    back = case.window + round(where * (case.kv_len - 1 - case.window))
    pos = case.kv_len - 1 - back
    k2, v2 = x.k.clone(), x.v.clone()
    k2[:, :, pos] = -k2[:, :, pos]
    v2[:, :, pos] += 10
    for dtype in (torch.float64, case.torch_dtype):  # same shapes: bit for bit in any dtype
        attn = oracle_fn(case, dtype)
        assert torch.equal(attn(x.q, k2, v2, None)[:, -1], attn(x.q, x.k, x.v, None)[:, -1]), (
            f"key {back} back (>= W) was seen ({dtype}): {case.short()}"
        )
    if case.logit_std <= 0.5:  # near-uniform weights: the key W-1 back must show
        v3 = x.v.clone()
        v3[:, :, case.kv_len - case.window] += 10
        attn = oracle_fn(case, torch.float64)
        moved = (attn(x.q, x.k, v3, None) - attn(x.q, x.k, x.v, None))[:, -1].abs().max()
        assert moved > 1e-6, f"key W-1 back was not seen: {case.short()}"


# --- prefixes and the cached-prefix offset -------------------------------------------------------


@given(case=small_window_cases(), where=st.floats(0, 1))
@example(case=Case(bsz=2, q_len=70, kv_len=70, window=32, pad_side="left", pads=(5, 70)), where=0.5)
def test_causal_prefix_stability(case: Case, where: float) -> None:
    """The first p outputs of a full sequence equal the outputs of its first p tokens alone."""
    case = dataclasses.replace(case, q_len=case.kv_len)
    p = 1 + round(where * (case.kv_len - 1))
    x = make_inputs(case)
    kv = x.key_valid
    for dtype in DTYPES:
        attn = oracle_fn(case, dtype)
        full = attn(x.q, x.k, x.v, kv)[:, :p].double()
        prefix = attn(x.q[:, :, :p], x.k[:, :, :p], x.v[:, :, :p], None if kv is None else kv[:, :p]).double()
        excess = (full - prefix).abs() - reorder_bound(case, x, dtype)[:, :p]
        if kv is not None:
            excess = excess[kv[:, :p].bool()]  # real rows
        d = float(excess.max()) if excess.numel() else -1.0
        assert d <= 0, f"prefix {p} differs beyond the rounding bound by {d:.3g} ({dtype}): {case.short()}"


@given(case=small_window_cases())
def test_cached_prefix_offset(case: Case) -> None:
    """q_len < kv_len (queries after a cached prefix) equals the last q_len rows of the full square."""
    x = make_inputs(case)
    head = torch.randn(case.bsz, case.n_heads, case.kv_len - case.q_len, case.head_dim, dtype=x.q.dtype)
    q_full = torch.cat([head, x.q], 2)
    for dtype in DTYPES:
        attn = oracle_fn(case, dtype)
        square = attn(q_full, x.k, x.v, x.key_valid)[:, -case.q_len :].double()
        tail = attn(x.q, x.k, x.v, x.key_valid).double()
        excess = (square - tail).abs() - reorder_bound(case, x, dtype)  # padded query rows too
        d = float(excess.max())
        assert d <= 0, (
            f"cached-prefix rows differ beyond the rounding bound by {d:.3g} ({dtype}): {case.short()}"
        )


# --- heads, batch rows, padding ------------------------------------------------------------------


@given(case=small_window_cases())
def test_gqa_equals_mha_with_repeated_kv(case: Case) -> None:
    """GQA equals MHA on K/V heads repeated so that query head h reads kv head h // groups."""
    x = make_inputs(case)
    groups = case.n_heads // case.n_kv_heads
    idx = torch.arange(case.n_heads) // groups
    for dtype in (torch.float64, case.torch_dtype):  # the same arithmetic on the same shapes: bit for bit
        attn = oracle_fn(case, dtype)
        gqa = attn(x.q, x.k, x.v, x.key_valid)
        mha = attn(x.q, x.k[:, idx], x.v[:, idx], x.key_valid)
        assert torch.equal(gqa, mha), f"GQA != MHA with repeated K/V ({dtype}): {case.short()}"


@given(case=small_window_cases(), r0=st.integers(0, 200), n=st.integers(1, 200))
def test_mask_block_is_the_slice_and_key_span_covers_it(case: Case, r0: int, n: int) -> None:
    """``masks.allowed`` of a block equals that slice of the whole, and no query of the block sees a key
    outside ``masks.key_span``."""
    x = make_inputs(case)
    rows = (min(r0, case.q_len - 1), min(r0, case.q_len - 1) + min(n, case.q_len - min(r0, case.q_len - 1)))
    whole = masks.allowed(case.q_len, case.kv_len, case.window, x.key_valid)
    c0, c1 = masks.key_span(case.q_len, case.kv_len, case.window, rows)
    block = masks.allowed(case.q_len, case.kv_len, case.window, x.key_valid, rows=rows, cols=(c0, c1))
    assert torch.equal(block, whole[..., rows[0] : rows[1], c0:c1])
    outside = whole[..., rows[0] : rows[1], :].clone()
    outside[..., c0:c1] = False
    assert not bool(outside.any()), f"a query of rows {rows} sees a key outside {(c0, c1)}: {case.short()}"


@given(case=small_window_cases(dtypes=("float32", "bfloat16")))
def test_allowed_and_additive_state_the_rule_key_by_key(case: Case) -> None:
    """``masks.allowed`` is the module's rule written out key by key (query row r at absolute position
    i = kv_len - q_len + r sees key j iff j <= i, i - W < j and j is not a pad of its row), and
    ``masks.additive`` turns it into 0 where seen and ``finfo(dtype).min`` where not, in that dtype."""
    x = make_inputs(case)
    vis = masks.allowed(case.q_len, case.kv_len, case.window, x.key_valid)
    valid = x.key_valid.tolist() if x.key_valid is not None else [[1] * case.kv_len] * case.bsz
    for b in range(len(valid) if vis.dim() == 3 else 1):
        rule = [
            [
                j <= i and (case.window is None or i - case.window < j) and bool(valid[b][j])
                for j in range(case.kv_len)
            ]
            for i in range(case.kv_len - case.q_len, case.kv_len)
        ]
        assert (vis[b] if vis.dim() == 3 else vis).tolist() == rule, case.short()
    add = masks.additive(vis, case.torch_dtype)
    assert add.dtype == case.torch_dtype and add.shape == vis.shape
    assert torch.equal(add == 0, vis) and bool((add[~vis] == torch.finfo(case.torch_dtype).min).all())


@given(case=small_window_cases(), block=st.integers(1, 9))
@example(case=Case(bsz=2, q_len=40, kv_len=40, window=8, pad_side="left", pads=(0, 20)), block=4)
def test_blocked_evaluation_equals_the_whole(case: Case, block: int) -> None:
    """Queries taken ``block`` at a time over only the keys they may see (every key in a block where a
    query sees none) equal all queries over all keys: the keys left out weigh exactly 0. The shapes
    differ, so the sums may be grouped otherwise: within the reorder bound."""
    x = make_inputs(case)
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=x.key_valid)
    for dtype in DTYPES:
        whole = oracle.attention(x.q, x.k, x.v, dtype=dtype, query_block=None, **kw)
        blocked = oracle.attention(x.q, x.k, x.v, dtype=dtype, query_block=block, **kw)
        excess = (whole - blocked).abs() - reorder_bound(case, x, dtype)
        assert float(excess.max()) <= 0, f"blocked != whole ({dtype}, block {block}): {case.short()}"


@given(case=small_window_cases())
@example(case=Case(bsz=3, q_len=40, kv_len=40, window=8, pad_side="right", pads=(0, 40, 3)))
def test_row_in_batch_equals_row_alone(case: Case) -> None:
    x = make_inputs(case)
    for dtype in DTYPES:
        properties.check_batch_invariance(
            oracle_fn(case, dtype), x, f"oracle[{dtype}]", atol=reorder_bound(case, x, dtype)
        )


@given(case=small_window_cases(), pad=st.integers(1, 130), side=st.sampled_from(["left", "right"]))
def test_padded_row_equals_unpadded_row(case: Case, pad: int, side: str) -> None:
    """Junk pad tokens on either side leave the real tokens' outputs unchanged."""
    case = dataclasses.replace(case.unpadded(), q_len=case.kv_len)
    x = make_inputs(case)
    for dtype in DTYPES:
        properties.check_padding_invariance(
            oracle_fn(case, dtype),
            x,
            f"oracle[{dtype}]",
            pad=pad,
            side=side,
            atol=reorder_bound(case, x, dtype, extra_keys=pad),
        )


# --- the cap -------------------------------------------------------------------------------------


@given(case=small_window_cases())
@example(case=Case(logit_std=100.0, q_len=64, kv_len=64, window=64))
def test_capped_logits_lie_inside_the_cap(case: Case) -> None:
    """Every capped logit is t * tanh(raw / t): inside (-t, t), same sign as raw, no larger than it."""
    t = case.softcap
    x = make_inputs(case)
    idx = torch.arange(case.n_heads) // (case.n_heads // case.n_kv_heads)
    raw = torch.einsum("bhqd,bhkd->bhqk", x.q.double(), x.k.double()[:, idx]) / case.scalar**0.5

    def logit_bound(dtype: torch.dtype) -> torch.Tensor:  # the worst rounding of a logit, capped or raw
        return rounding.logit_rounding_bound(x.q, x.k, scalar=case.scalar, softcap=t, dtype=dtype)

    raw_err = logit_bound(torch.float64)  # raw itself is a float64 einsum, rounded too
    for dtype in (torch.float64, case.torch_dtype):
        _, scores = oracle.attention(
            x.q,
            x.k,
            x.v,
            scalar=case.scalar,
            softcap=t,
            window=case.window,
            key_valid=x.key_valid,
            dtype=dtype,
            return_scores=True,
        )
        s = scores.double()
        if dtype == torch.float64:  # strict: |raw / t| stays far below where tanh rounds to 1 in float64
            assert float(s.abs().max()) < t, f"capped logit reached the cap {t}: {case.short()}"
            off = float(((s - t * torch.tanh(raw / t)).abs() - 2 * raw_err).max())
            assert off <= 0, (
                f"capped logit off t * tanh(raw / t) by {off:.3g} beyond rounding: {case.short()}"
            )
            if float(raw.abs().max()) > t:  # the cap did something visible on this input
                assert float((s - raw).abs().max()) > 1.0, case.short()
        else:  # in low precision tanh may round to exactly 1: the cap is reached, never passed
            assert float(s.abs().max()) <= t, f"capped logit beyond the cap {t} ({dtype}): {case.short()}"
        tol = logit_bound(dtype) + raw_err
        assert bool((s.abs() <= raw.abs() + tol).all()), f"the cap enlarged a logit ({dtype}): {case.short()}"
        assert bool((s * raw >= -tol).all()), f"the cap flipped a sign ({dtype}): {case.short()}"


def test_uncapped_oracle_does_not_cap() -> None:
    """softcap=None returns the raw scaled logits (so the checks above are not vacuous)."""
    case = Case(logit_std=100.0, window=None, q_len=16, kv_len=16)
    x = make_inputs(case)
    _, scores = oracle.attention(x.q, x.k, x.v, scalar=16.0, softcap=None, window=None, return_scores=True)
    assert float(scores.abs().max()) > 50.0


@pytest.mark.unsloth
def test_the_oracle_runs_no_unsloth_code_after_unsloth_is_imported() -> None:
    """The kernel tier's reference (float64 golden, same-dtype baseline and the rule's floor, for a
    left-padded windowed case) calls no function of Unsloth's and nothing ``torch.compile``d, though
    this process imported Unsloth, which patches torch and transformers on import: the oracle shares
    no code with the kernels it judges. In this test process: a run with a test marked ``unsloth``
    imports Unsloth before its first test (``fixtures/model.py``), as every GPU tier worker does, so the
    patches are those every other test of the run meets."""
    unsloth_adapter.load()  # imported already; the call says why where the import failed
    case = Case(bsz=2, q_len=40, kv_len=40, window=16, pad_side="left", pads=(3, 0), dtype="bfloat16")
    inputs = make_inputs(case, "cpu")
    with child.unsloth_calls() as seen:
        properties.reference(case, inputs)
    assert sorted(name for name, _ in seen["unsloth"]) == [], seen["unsloth"]
    assert seen["dynamo"] == set(), f"the oracle ran Dynamo: {sorted(seen['dynamo'])}"
