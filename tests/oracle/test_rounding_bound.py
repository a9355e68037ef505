"""The rounding bounds behind the rule's floor and the metamorphic properties.

``rounding.rounding_bound`` claims that any evaluation of the oracle's steps in a dtype lies within
it of the exact result; ``rounding.half_rounding_bound`` claims the same in half precision for an
evaluation that accumulates in float32. Checked here against the float64 oracle on Hypothesis's inputs (the claim
can fail: a bound derived wrongly shows as a ratio above 1), and for usefulness: in float32 it stays
far below what a semantic slip moves, so the floor it sets cannot hide a wrong window or cap.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import example, given

from gemma2_regress.kernel.cases import Case, make_inputs
from gemma2_regress.kernel.strategies import small_window_cases
from gemma2_regress.plugins import report
from gemma2_regress.reference import oracle, rounding, tolerance


@given(case=small_window_cases())
@example(case=Case(bsz=2, q_len=70, kv_len=70, window=32, pad_side="left", pads=(5, 70), logit_std=100.0))
@example(case=Case(q_len=130, kv_len=130, window=None, softcap=None, logit_std=100.0, scalar=256.0))
def test_oracle_stays_within_its_rounding_bound(case: Case) -> None:
    """|oracle(dtype) - oracle(float64)| <= bound(dtype) + bound(float64), elementwise, every dtype
    (``half_rounding_bound`` in half precision: the oracle accumulates in float32 there)."""
    x = make_inputs(case)
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=x.key_valid)
    slack = rounding.rounding_bound(x.q, x.k, x.v, dtype=torch.float64, **kw)
    for dtype in (torch.float32, case.torch_dtype):
        xs = [t.to(dtype) for t in (x.q, x.k, x.v)]  # the bound is of the dtype's own inputs
        out = oracle.attention(*xs, dtype=dtype, **kw).double()
        golden = oracle.attention(*xs, dtype=torch.float64, **kw)
        bound = rounding.rounding_bound(*xs, dtype=dtype, **kw) + slack
        if dtype in (torch.bfloat16, torch.float16):
            bound = rounding.half_rounding_bound(*xs, dtype=dtype, **kw) + slack
        ratio = float(torch.where(bound == torch.inf, 0.0, (out - golden).abs() / bound).max())
        report.record(
            "rounding_bound",
            f"oracle[{str(dtype).removeprefix('torch.')}]",
            "ok" if ratio <= 1 else "mismatch",
            ratio,
            case.short(),
        )
        assert ratio <= 1, f"oracle in {dtype} beyond its rounding bound (ratio {ratio:.3g}): {case.short()}"


@given(case=small_window_cases(dtypes=("float32",)))
def test_float32_floor_is_far_below_a_window_slip(case: Case) -> None:
    """The float32 floor stays below a tenth of what one key more or less in the window moves (at
    near-uniform attention, where that move is smallest): it never absorbs a window bug."""
    case = dataclasses.replace(case.unpadded(), logit_std=0.5)
    if case.window is None or case.kv_len <= case.window:
        return
    x = make_inputs(case)
    kw = dict(scalar=case.scalar, softcap=case.softcap, key_valid=None)
    right = oracle.attention(x.q, x.k, x.v, window=case.window, **kw)
    wide = oracle.attention(x.q, x.k, x.v, window=case.window + 1, **kw)
    floor = tolerance.attention_floor(x.q, x.k, x.v, window=case.window, dtype=torch.float32, **kw)
    moved = (wide - right).abs().amax(-1)  # per query row
    rows = moved > 1e-3 * x.v.abs().max()  # rows where the extra key is not a near-copy of the mean
    if rows.any():
        assert bool((torch.as_tensor(floor).amax(-1)[rows] < 0.1 * moved[rows]).all()), case.short()


def test_rule_with_arithmetic_floor_still_catches_a_wrong_window() -> None:
    """The float32 comparison, floor included, fails an oracle whose window is off by one."""
    case = Case(bsz=2, q_len=80, kv_len=80, window=16, logit_std=5.0)
    x = make_inputs(case)
    kw = dict(scalar=case.scalar, softcap=case.softcap, key_valid=None)
    golden = oracle.attention(x.q, x.k, x.v, window=16, dtype=torch.float64, **kw)
    baseline = oracle.attention(x.q, x.k, x.v, window=16, dtype=torch.float32, **kw)
    wrong = oracle.attention(x.q, x.k, x.v, window=17, dtype=torch.float32, **kw)
    floor = tolerance.attention_floor(x.q, x.k, x.v, window=16, dtype=torch.float32, **kw)
    cmp = tolerance.compare(wrong, golden, baseline, dtype=torch.float32, floor=floor)
    assert cmp.kind == "mismatch" and cmp.ratio > 10, cmp.describe()
    assert tolerance.compare(baseline, golden, baseline, dtype=torch.float32, floor=floor).ok


def test_half_floor_is_finite_where_the_worst_case_promises_nothing() -> None:
    """bfloat16 over 300 keys: n u >= 1, so ``rounding_bound`` is infinite, and the half-precision
    floor is ``half_rounding_bound`` instead, finite and below |v|."""
    case = Case(q_len=4, kv_len=300, window=None, dtype="bfloat16")
    x = make_inputs(case)
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=None)
    assert bool(torch.isinf(rounding.rounding_bound(x.q, x.k, x.v, dtype=torch.bfloat16, **kw)).all())
    floor = tolerance.attention_floor(x.q, x.k, x.v, dtype=torch.bfloat16, **kw)
    assert torch.equal(floor, rounding.half_rounding_bound(x.q, x.k, x.v, dtype=torch.bfloat16, **kw))
    assert bool(torch.isfinite(floor).all()) and float(floor.max()) < float(x.v.abs().max())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("logit_std", [0.5, 5.0, 25.0])
def test_rule_with_half_floor_still_catches_a_wrong_window(dtype: str, logit_std: float) -> None:
    """In half precision too, the rule with its floor fails an oracle whose window is one key off
    either way (measured ratios 5 to 120; the slip moves outputs by O(|v|), the floor by O(u t))."""
    case = Case(bsz=2, q_len=80, kv_len=80, window=16, logit_std=logit_std, dtype=dtype)
    x, dt = make_inputs(case), case.torch_dtype
    kw = dict(scalar=case.scalar, softcap=case.softcap, key_valid=None)
    golden = oracle.attention(x.q, x.k, x.v, window=16, dtype=torch.float64, **kw)
    baseline = oracle.attention(x.q, x.k, x.v, window=16, dtype=dt, **kw)
    floor = tolerance.attention_floor(x.q, x.k, x.v, window=16, dtype=dt, **kw)
    for window in (15, 17):
        wrong = oracle.attention(x.q, x.k, x.v, window=window, dtype=dt, **kw)
        cmp = tolerance.compare(wrong, golden, baseline, dtype=dt, floor=floor)
        assert cmp.kind == "mismatch" and cmp.ratio > 4, f"window {window}: {cmp.describe()}"
    assert tolerance.compare(baseline, golden, baseline, dtype=dt, floor=floor).ok


def test_half_bound_for_long_inputs_holds_and_is_looser(monkeypatch) -> None:
    """Above ``EXACT_SPREAD`` the half-precision bound trades its exact |v_j - out| for |v_j| + |out|:
    at least the exact bound everywhere, and the oracle in bfloat16 still within it."""
    case = Case(
        bsz=2, q_len=70, kv_len=70, window=32, pad_side="left", pads=(5, 0), dtype="bfloat16", logit_std=25.0
    )
    x = make_inputs(case)
    kw = dict(
        scalar=case.scalar,
        softcap=case.softcap,
        window=case.window,
        key_valid=x.key_valid,
        dtype=torch.bfloat16,
    )
    exact = rounding.half_rounding_bound(x.q, x.k, x.v, **kw)
    monkeypatch.setattr(rounding, "EXACT_SPREAD", 0)
    cheap = rounding.half_rounding_bound(x.q, x.k, x.v, **kw)
    assert bool((cheap >= exact).all()) and bool((cheap > exact).any())
    del kw["dtype"]
    golden = oracle.attention(x.q, x.k, x.v, dtype=torch.float64, **kw)
    out = oracle.attention(x.q, x.k, x.v, dtype=torch.bfloat16, **kw).double()
    assert bool(((out - golden).abs() <= cheap).all())


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "looser"])
def test_half_bound_in_parts_is_the_bound_of_whole_chunks(exact: bool, monkeypatch) -> None:
    """``half_rounding_bound``'s elementwise steps in parts of 64 query rows (the last part longer) give,
    on one thread, the bound of whole chunks to the bit: with a window, the cap, left padding (rows that
    see no key), a cached prefix and flash-attn's two-sided ``visible``, in the exact and the looser form."""
    if not exact:
        monkeypatch.setattr(rounding, "EXACT_SPREAD", 0)
    padded = Case(bsz=2, q_len=300, kv_len=300, window=40, pad_side="left", pads=(5, 0), dtype="bfloat16")
    prefix = Case(q_len=200, kv_len=260, window=None, softcap=None, dtype="float16", logit_std=25.0)
    i, j = torch.arange(200)[:, None], torch.arange(260)[None]
    two_sided = (j >= i + 60 - 7) & (j <= i + 60 + 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case, visible in ((padded, None), (prefix, None), (prefix, two_sided)):
            x = make_inputs(case)
            kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=x.key_valid)
            kw |= dict(dtype=case.torch_dtype, visible=visible)
            bounds = []
            for entries in (1, 2**62):  # parts of 64 rows; one part a chunk
                monkeypatch.setattr(rounding, "PART_ENTRIES", entries)
                bounds.append(rounding.half_rounding_bound(x.q, x.k, x.v, **kw))
            assert torch.equal(*bounds), f"{case.short()} visible={visible is not None}"
    finally:
        torch.set_num_threads(threads)
