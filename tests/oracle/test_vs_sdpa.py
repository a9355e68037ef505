"""The oracle (softcap off) against PyTorch's ``scaled_dot_product_attention``.

SDPA is an independent implementation of ``softmax(Q K^T * scale + mask) V``; fed the oracle's own
boolean visibility (``masks.allowed``) and K/V heads repeated for GQA, it must agree with the
oracle wherever the cap is off. Judged by the suite's one rule with the roles turned round: the
oracle in each precision is the target, SDPA in float64 the golden, SDPA in that precision the
baseline. What this pins: the scale ``query_pre_attn_scalar**-0.5``, masking, GQA head mapping,
the q_len < kv_len offset and the softmax; the window convention itself is pinned in
test_vs_transformers.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given

from gemma2_regress.kernel.cases import Case, make_inputs
from gemma2_regress.kernel.strategies import small_window_cases
from gemma2_regress.reference import masks, oracle, tolerance

PRECISIONS = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, key_valid, dtype) -> torch.Tensor:
    """SDPA with an explicit boolean mask; query head h reads kv head h // groups (gathered by index)."""
    groups = case.n_heads // case.n_kv_heads
    kv_head = torch.arange(case.n_heads) // groups
    q, k, v = (x.to(dtype) for x in (q, k[:, kv_head], v[:, kv_head]))
    vis = masks.allowed(case.q_len, case.kv_len, case.window, key_valid)
    vis = vis[:, None] if vis.dim() == 3 else vis
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=vis, scale=case.scalar**-0.5)
    return out.transpose(1, 2).reshape(case.bsz, case.q_len, -1)


def check_against_sdpa(case: Case, dtype: torch.dtype) -> tolerance.Comparison:
    case = dataclasses.replace(case, softcap=None)
    x = make_inputs(case)
    valid = masks.valid_queries(x.key_valid, case.q_len)
    target = oracle.attention(
        x.q,
        x.k,
        x.v,
        scalar=case.scalar,
        softcap=None,
        window=case.window,
        key_valid=x.key_valid,
        dtype=dtype,
    )
    golden = sdpa(x.q, x.k, x.v, case, x.key_valid, torch.float64)
    baseline = sdpa(x.q, x.k, x.v, case, x.key_valid, dtype)
    kw = dict(scalar=case.scalar, softcap=None, window=case.window, key_valid=x.key_valid)
    floor = torch.as_tensor(tolerance.attention_floor(x.q, x.k, x.v, dtype=dtype, **kw)).expand_as(golden)
    if valid is not None:  # SDPA is undefined (NaN) on a fully padded query row: compare real rows only
        target, golden, baseline, floor = target[valid], golden[valid], baseline[valid], floor[valid]
    cmp = tolerance.compare(target, golden, baseline, dtype=dtype, floor=floor)
    assert cmp.ok, f"oracle vs SDPA ({dtype}) for {case.short()}: {cmp.describe()}"
    return cmp


@pytest.mark.parametrize("dtype", PRECISIONS)
@given(case=small_window_cases(dtypes=("float32",)))
@example(case=Case(bsz=3, q_len=70, kv_len=70, window=32, pad_side="left", pads=(5, 0, 70)))
@example(
    case=Case(bsz=2, n_heads=8, n_kv_heads=2, q_len=1, kv_len=65, window=64, pad_side="right", pads=(0, 9))
)
def test_oracle_matches_sdpa(case: Case, dtype: torch.dtype) -> None:
    check_against_sdpa(case, dtype)


def test_sdpa_check_is_sensitive() -> None:
    """The comparison can fail: the oracle with the window off by one is caught."""
    case = Case(bsz=1, q_len=40, kv_len=40, window=8, softcap=None, logit_std=0.5)
    x = make_inputs(case)
    wrong = oracle.attention(x.q, x.k, x.v, scalar=case.scalar, softcap=None, window=9, dtype=torch.float64)
    golden = sdpa(x.q, x.k, x.v, case, None, torch.float64)
    cmp = tolerance.compare(wrong, golden, golden, dtype=torch.float64)
    assert not cmp.ok and cmp.err_target > 1e-3, cmp.describe()
