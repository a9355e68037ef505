"""The flash-attn stand-in (``gemma2_regress/standins/flash_attn``) proven against the suite's references.

The stand-in is imported by its package path, never through ``sys.path``: these tests check the
reference itself, whatever flash-attn the machine has. What is proven (``docs/flash.md``):

1. ``flash_attn_func`` == the float64 oracle for Gemma-2's use (causal, ``window_size=(W-1, 0)``,
   softcap, GQA, ``q_len <= kv_len`` bottom-right), windows at and around the sequence length, and
   the real W = 4096; the oracle's window-boundary property holds for it.
2. ``flash_attn_func`` == an independent reference written here from flash-attn's docstrings and its
   ``attention_ref`` (explicit left AND right bounds, -1 unbounded, non-causal, ``seqlen_q > seqlen_k``,
   rows that see no key -> 0 and log-sum-exp +inf); and its gradient (``gradcheck``).
3. ``flash_attn_varlen_func``: packed == each sequence alone, no attention across ``cu_seqlens``.
4. ``flash_attn_with_kvcache``: one-token decode with ``cache_seqlens`` and ``cache_leftpad`` == the
   oracle on each row's valid slice, left-padded; k / v appended in place; ``cache_batch_idx``.
5. Shapes, dtypes, the return tuples; the public functions reject what flash-attn 2.6.3 rejects,
   with its exception and its exact text (each wrong call next to the valid call it differs from),
   and accept what it accepts; one-line errors of the stand-in's own on what it does not support.
6. Each comparison can fail: deliberately wrong calls are caught by the same checks.

The public functions take float16 / bfloat16 only, as flash-attn; the float32 / float64 proofs go
through their private twins with ``any_dtype=True`` (``entry``): the same code, less that one check.

Every output comparison is ``tolerance.compare`` (golden float64, a baseline in the target's dtype,
the rule's floor); where a float32/float64 floor is needed for a window the oracle cannot express it
is ``rounding.rounding_bound`` with every key visible, which bounds any window's; in half precision
``rounding.half_rounding_bound`` over the keys each row sees (``flash_floor``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from gemma2_regress.kernel import properties
from gemma2_regress.kernel.cases import GEMMA2_WINDOW, Case, make_inputs
from gemma2_regress.kernel.strategies import GEOMETRIES, LOGIT_STDS, small_window_cases
from gemma2_regress.plugins import report
from gemma2_regress.reference import oracle, rounding, tolerance
from gemma2_regress.standins.flash_attn import flash_attn_interface as fa

DTYPES = [
    pytest.param(torch.float64, id="float64"),
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.bfloat16, id="bfloat16"),
    pytest.param(torch.float16, id="float16"),
]
INF = math.inf


def entry(name: str, dtype: torch.dtype) -> Callable[..., Any]:
    """The public ``name`` for float16 / bfloat16 (all that flash-attn takes); for float32 / float64
    its private twin with ``any_dtype=True``, the same code less the dtype check (the proofs)."""
    if dtype in fa.FLASH_DTYPES:
        return getattr(fa, name)
    return functools.partial(getattr(fa, f"_{name}"), any_dtype=True)


def flash(x: torch.Tensor) -> torch.Tensor:
    """The oracle's ``(b, heads, len, d)`` <-> flash-attn's ``(b, len, heads, d)``."""
    return x.transpose(1, 2)


def flat(out: torch.Tensor) -> torch.Tensor:
    """flash-attn's output ``(b, len, heads, d)`` -> the oracle's ``(b, len, heads * d)``."""
    return out.reshape(*out.shape[:2], -1)


def flash_window(window: int | None) -> tuple[int, int]:
    """The oracle's window W (``i - W < j <= i``, W keys) as flash-attn's ``window_size`` with causal."""
    return (-1, -1) if window is None else (window - 1, 0)


def judge(prop: str, cmp: tolerance.Comparison, dtype: torch.dtype, case: str) -> None:
    """Record the ratio in the run's summary (worst ratio per property) and assert the verdict."""
    name = str(dtype).removeprefix("torch.")
    report.record(prop, f"flash-attn stand-in[{name}]", cmp.kind, cmp.ratio, case)
    assert cmp.ok, f"{prop} ({name}) for {case}: {cmp.describe()}"


def flash_floor(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    softcap: float,
    window_size: tuple[int, int],
    causal: bool,
    dtype: torch.dtype,
) -> float | torch.Tensor:
    """The rule's floor for flash-layout q ``(b, sq, h, d)``, k / v ``(b, sk, hk, d)`` under any window,
    as ``tolerance.attention_floor``: in float32 / float64 ``rounding.rounding_bound`` with every key
    seen (a query row alone sees all keys), at least the bound of any subset (it grows with the keys
    seen: their largest logit error, logit range and |v|); in half precision
    ``rounding.half_rounding_bound`` over the keys each row sees (the stand-in accumulates in float32)."""
    if k.shape[1] == 0:
        return tolerance.FLOOR[dtype]
    qo, ko, vo = flash(q), flash(k), flash(v)
    kw = dict(scalar=scale**-2, softcap=softcap or None, window=None, dtype=dtype)
    if dtype not in (torch.float32, torch.float64):
        vis = flash_visible(q.shape[1], k.shape[1], window_size, causal)
        return rounding.half_rounding_bound(qo, ko, vo, visible=vis, **kw).reshape(*q.shape)
    rows = [rounding.rounding_bound(qo[:, :, i : i + 1], ko, vo, **kw) for i in range(qo.shape[2])]
    return torch.cat(rows, dim=1).clamp(min=tolerance.FLOOR[dtype]).reshape(*q.shape)


# --- 1. against the oracle: Gemma-2's use --------------------------------------------------------


def compare_with_oracle(
    case: Case, dtype: torch.dtype, window_size: tuple[int, int] | None = None
) -> tolerance.Comparison:
    """``flash_attn_func`` (causal, ``window_size`` default ``flash_window(case.window)``) vs the oracle."""
    case = case.unpadded()
    x = make_inputs(case)
    q, k, v = (t.to(dtype) for t in (x.q, x.k, x.v))
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window)
    golden = oracle.attention(q, k, v, dtype=torch.float64, **kw)
    baseline = oracle.attention(q, k, v, dtype=dtype, **kw)
    floor = tolerance.attention_floor(q, k, v, dtype=dtype, **kw)
    out = entry("flash_attn_func", dtype)(
        flash(q),
        flash(k),
        flash(v),
        softmax_scale=case.scalar**-0.5,
        causal=True,
        window_size=flash_window(case.window) if window_size is None else window_size,
        softcap=case.softcap or 0.0,
    )
    assert out.dtype == dtype and out.shape == (case.bsz, case.q_len, case.n_heads, case.head_dim)
    return tolerance.compare(flat(out), golden, baseline, dtype=dtype, floor=floor)


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=small_window_cases(dtypes=("float32",)))
@example(case=Case(bsz=2, n_heads=8, n_kv_heads=2, head_dim=8, q_len=1, kv_len=65, window=64, scalar=256.0))
@example(case=Case(q_len=40, kv_len=70, window=32, logit_std=50.0))
def test_dense_matches_oracle(case: Case, dtype: torch.dtype) -> None:
    judge("flash_vs_oracle", compare_with_oracle(case, dtype), dtype, case.short())


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    kv_len=st.integers(1, 48),
    q_frac=st.floats(0, 1),
    delta=st.sampled_from([-1, 0, 1]),
    geometry=st.sampled_from(GEOMETRIES),
    std=st.sampled_from(LOGIT_STDS),
    seed=st.integers(0, 2**16),
)
def test_window_edge_around_the_length(
    kv_len: int, q_frac: float, delta: int, geometry: tuple, std: float, seed: int, dtype: torch.dtype
) -> None:
    """Windows W = kv_len - 1, kv_len, kv_len + 1: the last query sees all keys but one, all, all."""
    n_heads, n_kv, d, scalar = geometry
    q_len = 1 + round(q_frac * (kv_len - 1))
    window = max(1, kv_len + delta)
    case = Case(n_heads=n_heads, n_kv_heads=n_kv, head_dim=d, scalar=scalar, q_len=q_len, kv_len=kv_len)
    case = dataclasses.replace(case, window=window, logit_std=std, seed=seed)
    judge("flash_vs_oracle_window_edge", compare_with_oracle(case, dtype), dtype, case.short())


@pytest.mark.parametrize("kv_len", [GEMMA2_WINDOW - 1, GEMMA2_WINDOW, GEMMA2_WINDOW + 1])
def test_real_window(kv_len: int) -> None:
    """Gemma-2's W = 4096 (``window_size=(4095, 0)``) with the last 16 queries, in all four dtypes."""
    case = Case(n_heads=2, n_kv_heads=1, q_len=16, kv_len=kv_len, window=GEMMA2_WINDOW, logit_std=25.0)
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        judge("flash_vs_oracle_real_window", compare_with_oracle(case, dtype), dtype, case.short())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [1, 2, 3, 16, 63, GEMMA2_WINDOW])
def test_window_boundary(window: int, dtype: torch.dtype) -> None:
    """The oracle's boundary property on the stand-in (q = 0, uniform attention): the value W-1 back
    moves the last output, W and W+1 back leave it exactly unchanged (weight 0, not small)."""

    def last_query(q, k, v, key_valid):
        out = entry("flash_attn_func", dtype)(
            flash(q[:, :, -1:]), flash(k), flash(v), causal=True, window_size=(window - 1, 0), softcap=50.0
        )
        return flat(out)

    effects = properties.check_window_boundary(last_query, f"stand-in[{dtype}]", window=window, dtype=dtype)
    assert effects[window] == 0.0 and effects[window + 1] == 0.0, effects


# --- 2. against a reference written here from flash-attn's documentation --------------------------


@functools.lru_cache(maxsize=256)  # the reference and the floor ask for the same masks again and again
def flash_visible(sq: int, sk: int, window_size: tuple[int, int], causal: bool) -> torch.Tensor:
    """``(sq, sk)`` bool: query ``i`` sees key ``j`` iff ``i + sk - sq - left <= j <= i + sk - sq + right``
    (a negative bound is unbounded; ``causal`` sets right = 0), tested pair by pair. Read-only (cached)."""
    left, right = window_size[0], 0 if causal else window_size[1]
    vis = torch.zeros(sq, sk, dtype=torch.bool)
    for i in range(sq):
        for j in range(sk):
            vis[i, j] = (left < 0 or j >= i + sk - sq - left) and (right < 0 or j <= i + sk - sq + right)
    return vis


def flash_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    softcap: float,
    window_size: tuple[int, int],
    causal: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """flash-attn's documented forward, written out independently of the stand-in.

    q ``(b, sq, h, d)``, k / v ``(b, sk, hk, d)``. Query ``i`` sees key ``j`` iff
    ``i + sk - sq - left <= j <= i + sk - sq + right`` (a negative bound is unbounded; ``causal`` sets
    right = 0), tested pair by pair below; query head ``h`` reads kv head ``h // (heads / kv_heads)``
    (gathered by index). Scores ``softcap * tanh(scale q.k / softcap)`` (softcap > 0) in ``dtype``,
    softmax in float32 (float64 for float64), rows that see no key -> 0 and log-sum-exp +inf.
    Returns ``(out (b, sq, h, d) in dtype, lse (b, h, sq) in the softmax dtype)``.
    """
    sq, h = q.shape[1], q.shape[2]
    sk, hk = k.shape[1], k.shape[2]
    vis = flash_visible(sq, sk, window_size, causal)
    kv_head = torch.arange(h) // (h // hk)
    qd, kd, vd = q.to(dtype), k[:, :, kv_head].to(dtype), v[:, :, kv_head].to(dtype)
    scores = torch.einsum("bqhd,bkhd->bhqk", qd * scale, kd)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    sm = torch.float64 if dtype == torch.float64 else torch.float32
    logits = scores.to(sm).masked_fill(~vis, -INF)
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row of -inf only softmaxes to NaN: 0
    lse = torch.logsumexp(logits, dim=-1).masked_fill(~vis.any(-1), INF)
    out = torch.einsum("bhqk,bkhd->bqhd", probs.to(dtype), vd)
    return out, lse


@dataclasses.dataclass(frozen=True)
class Problem:
    """A general flash-attn call: any window (left / right / -1), causal or not, any length relation."""

    bsz: int
    q_len: int
    kv_len: int
    geometry: tuple[int, int, int, float]  # (heads, kv heads, head_dim, scalar): softmax_scale = scalar**-0.5
    window_size: tuple[int, int]
    causal: bool
    softcap: float
    logit_std: float
    seed: int

    @property
    def scale(self) -> float:
        return self.geometry[3] ** -0.5

    def short(self) -> str:
        h, hk, d, s = self.geometry
        return (
            f"b{self.bsz} h{h}/{hk} d{d} q{self.q_len}/kv{self.kv_len} window_size={self.window_size} "
            f"causal={self.causal} cap={self.softcap:g} s={s:g} std={self.logit_std:g} seed={self.seed}"
        )

    def tensors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v in flash layout; logits with standard deviation ``logit_std`` (as ``make_inputs``)."""
        h, hk, d, s = self.geometry
        g = torch.Generator().manual_seed(self.seed)
        m = math.sqrt(self.logit_std * math.sqrt(s) / math.sqrt(d))
        q = torch.randn(self.bsz, self.q_len, h, d, generator=g) * m
        k = torch.randn(self.bsz, self.kv_len, hk, d, generator=g) * m
        v = torch.randn(self.bsz, self.kv_len, hk, d, generator=g)
        return q.to(dtype), k.to(dtype), v.to(dtype)

    def kwargs(self) -> dict:
        return dict(
            softmax_scale=self.scale, causal=self.causal, window_size=self.window_size, softcap=self.softcap
        )


@st.composite
def problems(draw: st.DrawFn, max_len: int = 16) -> Problem:
    q_len, kv_len = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    bound = st.one_of(st.just(-1), st.integers(0, max(q_len, kv_len) + 1))
    return Problem(
        bsz=draw(st.integers(1, 3)),
        q_len=q_len,
        kv_len=kv_len,
        geometry=draw(st.sampled_from(GEOMETRIES)),
        window_size=(draw(bound), draw(bound)),
        causal=draw(st.booleans()),
        softcap=draw(st.sampled_from([0.0, 50.0, 5.0])),
        logit_std=draw(st.sampled_from(LOGIT_STDS)),
        seed=draw(st.integers(0, 2**16)),
    )


def compare_with_reference(
    p: Problem, dtype: torch.dtype, call: Callable[..., tuple] | None = None
) -> tolerance.Comparison:
    """The stand-in (or ``call``, a wrong one in the sensitivity test) vs ``flash_reference`` by the rule;
    also checks the no-key rows (exactly 0, lse +inf) and, in float64, the log-sum-exp."""
    q, k, v = p.tensors(dtype)
    kw = p.kwargs()
    out, lse, s_dmask = (call or entry("flash_attn_func", dtype))(q, k, v, return_attn_probs=True, **kw)
    ref_kw = dict(scale=p.scale, softcap=p.softcap, window_size=p.window_size, causal=p.causal)
    golden, lse_golden = flash_reference(q, k, v, dtype=torch.float64, **ref_kw)
    baseline, _ = flash_reference(q, k, v, dtype=dtype, **ref_kw)
    floor = flash_floor(q, k, v, dtype=dtype, **ref_kw)
    cmp = tolerance.compare(
        flat(out), flat(golden), flat(baseline), dtype=dtype, floor=flat_floor(floor, out)
    )
    none_seen = torch.isinf(lse_golden)  # (b, h, sq)
    assert s_dmask is None and lse.dtype == torch.float32 and lse.shape == (p.bsz, p.geometry[0], p.q_len)
    assert torch.equal(torch.isinf(lse), none_seen) and bool((lse[none_seen] > 0).all()), p.short()
    assert bool((flash(out)[none_seen] == 0).all()), f"a row that sees no key is not 0: {p.short()}"
    if dtype == torch.float64:  # the lse rounded to float32 once, as the golden's own float32 rounding
        seen = ~none_seen
        c = tolerance.compare(lse[seen], lse_golden[seen], lse_golden[seen].float(), dtype=torch.float32)
        assert c.ok, f"softmax_lse vs reference for {p.short()}: {c.describe()}"
    return cmp


def flat_floor(floor: float | torch.Tensor, out: torch.Tensor) -> float | torch.Tensor:
    return floor if isinstance(floor, float) else flat(floor.expand_as(out))


@pytest.mark.parametrize("dtype", DTYPES)
@given(p=problems())
@example(p=Problem(2, 9, 4, (4, 2, 16, 16.0), (-1, -1), True, 50.0, 25.0, 1))  # seqlen_q > seqlen_k, causal
@example(p=Problem(1, 6, 12, (4, 1, 16, 256.0), (2, 3), False, 5.0, 50.0, 2))  # both bounds, right > 0
@example(p=Problem(1, 8, 8, (2, 2, 32, 32.0), (-1, 2), False, 0.0, 5.0, 3))  # left unbounded, right 2
@example(p=Problem(1, 8, 8, (2, 2, 32, 32.0), (2, -1), False, 0.0, 5.0, 4))  # right unbounded
def test_dense_matches_reference(p: Problem, dtype: torch.dtype) -> None:
    judge("flash_vs_reference", compare_with_reference(p, dtype), dtype, p.short())


def test_gradient() -> None:
    """flash_attn_func is differentiable (Unsloth trains through it): float64 gradcheck, with a softcap,
    a window with both bounds, GQA and rows that see no key (seqlen_q > seqlen_k)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 5, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 4, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 4, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    for kw in (dict(causal=True, window_size=(1, 0)), dict(window_size=(0, 1), softcap=2.0)):
        dense = entry("flash_attn_func", torch.float64)
        assert torch.autograd.gradcheck(lambda q, k, v, kw=kw, f=dense: f(q, k, v, **kw), (q, k, v))


SPAN_EMPTY_ROWS = [(0, 12), (3, 7), (5, 5)]  # a row of every key, a short span, a row with no key at all


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@given(
    p=problems(),
    spans=st.lists(st.tuples(st.integers(0, 17), st.integers(0, 17)), min_size=3, max_size=3),
    query_block=st.integers(1, 5),
)
@example(  # causal window, more queries than a row's keys: leading rows see none; row 2 has no key
    p=Problem(3, 9, 12, (4, 2, 16, 16.0), (2, 0), True, 50.0, 25.0, 5), spans=SPAN_EMPTY_ROWS, query_block=2
)
@example(  # both bounds, right > 0, no cap
    p=Problem(2, 7, 15, (4, 1, 16, 256.0), (3, 2), False, 0.0, 5.0, 6), spans=[(2, 15), (0, 6)], query_block=3
)
def test_blocks_equal_every_query_over_its_keys_at_once(
    p: Problem, spans: list[tuple[int, int]], query_block: int, dtype: torch.dtype
) -> None:
    """``_attend`` in blocks of ``query_block`` queries, each over only the keys some query of the block
    sees, == every query over its row's keys at once: ``flash_reference`` (unblocked, mask pair by pair)
    on row ``r``'s slice ``[key_start[r], key_end[r])`` of a longer k / v, uneven per row and NaN outside.
    In float64 to summation order; in every dtype a row that sees no key is exactly 0 with lse +inf and
    no NaN leaks in. The float64 gradients are those of every query in one block, and finite."""
    bounds = [sorted(min(x, p.kv_len) for x in pair) for pair in spans[: p.bsz]]  # [start, end) per row
    starts, ends = [a for a, _ in bounds], [b for _, b in bounds]
    q, k, v = p.tensors(dtype)
    for r, (a, b) in enumerate(zip(starts, ends, strict=True)):
        for t in (k, v):
            t[r, :a], t[r, b:] = math.nan, math.nan  # where the kernels read nothing
    kw = dict(scale=p.scale, softcap=p.softcap, window=fa._window(p.window_size, p.causal))
    kw |= dict(key_start=starts, key_end=ends)
    out, lse = fa._attend(q, k, v, query_block=query_block, **kw)
    assert out.dtype == dtype and lse.dtype == torch.float32 and not bool(out.isnan().any()), p.short()
    ref_kw = dict(scale=p.scale, softcap=p.softcap, window_size=p.window_size, causal=p.causal)
    for r, (a, b) in enumerate(zip(starts, ends, strict=True)):
        rows = slice(r, r + 1)
        want, want_lse = flash_reference(q[rows], k[rows, a:b], v[rows, a:b], dtype=torch.float64, **ref_kw)
        none_seen = torch.isinf(want_lse)
        assert torch.equal(torch.isinf(lse[rows]), none_seen), f"row {r} keys {a}..{b}: {p.short()}"
        assert bool((lse[rows][none_seen] > 0).all() and (flash(out[rows])[none_seen] == 0).all()), p.short()
        if dtype == torch.float64:
            torch.testing.assert_close(out[rows], want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(lse[rows][~none_seen], want_lse[~none_seen].float())
    if dtype != torch.float64:
        return
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(p.seed), dtype=dtype)
    grads = []
    for block in (query_block, None):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        (fa._attend(*leaves, query_block=block, **kw)[0] * weights).sum().backward()
        grads.append([t.grad for t in leaves])
    for blocked, whole in zip(*grads, strict=True):
        assert bool(blocked.isfinite().all()), p.short()
        torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)


# --- 3. varlen --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Packing:
    """Sequences of (q_len, kv_len) packed one after another, with one window / cap / geometry."""

    lengths: tuple[tuple[int, int], ...]
    geometry: tuple[int, int, int, float]
    window_size: tuple[int, int]
    causal: bool
    softcap: float
    logit_std: float
    seed: int

    def short(self) -> str:
        h, hk, d, s = self.geometry
        return (
            f"lengths={list(self.lengths)} h{h}/{hk} d{d} window_size={self.window_size} causal={self.causal} "
            f"cap={self.softcap:g} s={s:g} std={self.logit_std:g} seed={self.seed}"
        )

    def problem(self, s: int) -> Problem:
        q_len, kv_len = self.lengths[s]
        return Problem(
            1,
            q_len,
            kv_len,
            self.geometry,
            self.window_size,
            self.causal,
            self.softcap,
            self.logit_std,
            self.seed + s,
        )

    def cu_seqlens(self) -> tuple[torch.Tensor, torch.Tensor]:
        cq, ck = [0], [0]
        for q_len, kv_len in self.lengths:
            cq.append(cq[-1] + q_len)
            ck.append(ck[-1] + kv_len)
        return torch.tensor(cq, dtype=torch.int32), torch.tensor(ck, dtype=torch.int32)

    def packed(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = [self.problem(s).tensors(dtype) for s in range(len(self.lengths))]
        return tuple(torch.cat([p[i][0] for p in parts]) for i in range(3))  # type: ignore[return-value]


@st.composite
def packings(draw: st.DrawFn) -> Packing:
    same = draw(st.booleans())  # Unsloth packs with one cu_seqlens for q and k
    n = draw(st.integers(1, 4))
    lengths = []
    for _ in range(n):
        q_len = draw(st.integers(1, 12))
        lengths.append((q_len, q_len if same else draw(st.integers(1, 12))))
    bound = st.one_of(st.just(-1), st.integers(0, 13))
    return Packing(
        lengths=tuple(lengths),
        geometry=draw(st.sampled_from(GEOMETRIES)),
        window_size=(draw(bound), draw(bound)),
        causal=draw(st.booleans()),
        softcap=draw(st.sampled_from([0.0, 50.0])),
        logit_std=draw(st.sampled_from(LOGIT_STDS)),
        seed=draw(st.integers(0, 2**16)),
    )


def compare_packed_with_alone(
    pk: Packing, dtype: torch.dtype, varlen: Callable[..., tuple] | None = None
) -> tolerance.Comparison:
    """Target: the packed run's rows of each sequence; golden: ``flash_reference`` on the sequence alone in
    float64; baseline: ``flash_attn_func`` on the sequence alone in ``dtype``. Likewise softmax_lse."""
    q, k, v = pk.packed(dtype)
    cu_q, cu_k = pk.cu_seqlens()
    max_q, max_k = (max(lens) for lens in zip(*pk.lengths, strict=True))
    p0 = pk.problem(0)
    varlen = varlen or entry("flash_attn_varlen_func", dtype)
    out, lse, _ = varlen(q, k, v, cu_q, cu_k, max_q, max_k, return_attn_probs=True, **p0.kwargs())
    assert out.shape == q.shape and lse.shape == (q.shape[1], q.shape[0]) and lse.dtype == torch.float32
    golden, baseline, floors, lse_golden, lse_alone = [], [], [], [], []
    for s in range(len(pk.lengths)):
        p = pk.problem(s)
        qs, ks, vs = p.tensors(dtype)
        ref_kw = dict(scale=p.scale, softcap=p.softcap, window_size=p.window_size, causal=p.causal)
        g, lg = flash_reference(qs, ks, vs, dtype=torch.float64, **ref_kw)
        alone, la, _ = entry("flash_attn_func", dtype)(qs, ks, vs, return_attn_probs=True, **p.kwargs())
        golden.append(g[0])
        baseline.append(alone[0])
        floors.append(flash_floor(qs, ks, vs, dtype=dtype, **ref_kw))
        lse_golden.append(lg[0])
        lse_alone.append(la[0])

    def rows(parts: list[torch.Tensor]) -> torch.Tensor:  # (total_q, 1, heads * d), as flat() would give
        return torch.cat(parts).reshape(out.shape[0], 1, -1)

    fl = floors[0] if isinstance(floors[0], float) else rows([f[0] for f in floors])
    cmp = tolerance.compare(rows([out]), rows(golden), rows(baseline), dtype=dtype, floor=fl)
    lg, la = torch.cat(lse_golden, dim=1), torch.cat(lse_alone, dim=1)
    seen = torch.isfinite(lg)
    assert torch.equal(torch.isinf(lse), ~seen), f"lse +inf rows differ: {pk.short()}"
    c = tolerance.compare(lse[seen], lg[seen], la[seen], dtype=torch.float32)
    assert c.ok, f"varlen softmax_lse vs alone ({dtype}) for {pk.short()}: {c.describe()}"
    return cmp


@pytest.mark.parametrize("dtype", DTYPES)
@given(pk=packings())
@example(pk=Packing(((5, 5), (1, 1), (9, 9)), (4, 2, 16, 16.0), (3, 0), True, 50.0, 25.0, 7))  # Unsloth's
def test_varlen_equals_each_sequence_alone(pk: Packing, dtype: torch.dtype) -> None:
    judge("flash_varlen_vs_alone", compare_packed_with_alone(pk, dtype), dtype, pk.short())


def check_no_attention_across(pk: Packing, varlen: Callable[..., torch.Tensor] | None = None) -> None:
    """Changing every other sequence's q, k and v leaves a sequence's output rows bit-identical: each
    sequence's rows come from its own slices only, with the same shapes and operations in the same
    order, so no other sequence's value can enter its arithmetic, not even by rounding."""
    q, k, v = pk.packed(torch.float32)
    cu_q, cu_k = pk.cu_seqlens()
    max_q, max_k = (max(lens) for lens in zip(*pk.lengths, strict=True))
    kw = pk.problem(0).kwargs()
    varlen = varlen or entry("flash_attn_varlen_func", torch.float32)
    base = varlen(q, k, v, cu_q, cu_k, max_q, max_k, **kw)
    for s in range(len(pk.lengths)):
        rows_q = torch.zeros(q.shape[0], dtype=torch.bool)
        rows_k = torch.zeros(k.shape[0], dtype=torch.bool)
        rows_q[cu_q[s] : cu_q[s + 1]] = True
        rows_k[cu_k[s] : cu_k[s + 1]] = True
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        q2[~rows_q] = -q2[~rows_q]
        k2[~rows_k] = -3 * k2[~rows_k]
        v2[~rows_k] += 10
        out = varlen(q2, k2, v2, cu_q, cu_k, max_q, max_k, **kw)
        assert torch.equal(out[rows_q], base[rows_q]), f"sequence {s} saw another sequence: {pk.short()}"


@given(pk=packings())
def test_varlen_no_attention_across_boundaries(pk: Packing) -> None:
    check_no_attention_across(pk)


def test_varlen_rows_outside_the_segments_are_nan() -> None:
    """flash-attn leaves q rows that no cu_seqlens_q segment covers unwritten; the stand-in writes NaN
    there (reading them is the caller's bug) and the covered rows are those of the exact cover."""
    pk = Packing(((3, 3), (4, 4)), (4, 2, 16, 16.0), (-1, -1), True, 50.0, 5.0, 0)
    q, k, v = pk.packed(torch.float32)
    cu_q, cu_k = pk.cu_seqlens()
    kw = pk.problem(0).kwargs()
    varlen = entry("flash_attn_varlen_func", torch.float32)
    full = varlen(q, k, v, cu_q, cu_k, 4, 4, **kw)
    pad = torch.ones(2, *q.shape[1:])
    out = varlen(torch.cat([q, pad]), k, v, cu_q, cu_k, 4, 4, **kw)
    assert torch.equal(out[: q.shape[0]], full) and bool(out[q.shape[0] :].isnan().all())
    inner = varlen(q, k, v, cu_q[1:], cu_k[1:], 4, 4, **kw)  # first segment uncovered
    assert bool(inner[:3].isnan().all()) and torch.equal(inner[3:], full[3:])


# --- 4. the KV cache: Unsloth's one-token decode ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decode:
    """One-token decode over a cache of ``cache_len`` slots: row b holds ``lengths[b]`` keys, the first
    ``pads[b]`` of them left padding; ``window`` the oracle's W (None: global)."""

    lengths: tuple[int, ...]
    pads: tuple[int, ...]
    cache_len: int
    window: int | None
    geometry: tuple[int, int, int, float]
    causal: bool
    logit_std: float
    seed: int
    softcap: float | None = 50.0

    def short(self) -> str:
        h, hk, d, s = self.geometry
        return (
            f"lengths={list(self.lengths)} pads={list(self.pads)} cache={self.cache_len} W={self.window} "
            f"h{h}/{hk} d{d} s={s:g} causal={self.causal} cap={self.softcap} std={self.logit_std:g} seed={self.seed}"
        )

    def tensors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q ``(b, 1, h, d)``; the caches in Unsloth's layout, ``(cache_len, b, hk, d)`` buffers seen
        through ``permute(1, 0, 2, 3)``, junk past each row's length and in its padding: |x| ~ 50, every
        fourth slot NaN (flash-attn never reads those keys, so nothing of them may reach the output)."""
        h, hk, d, s = self.geometry
        b = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed)
        m = math.sqrt(self.logit_std * math.sqrt(s) / math.sqrt(d))
        q = torch.randn(b, 1, h, d, generator=g) * m
        k = torch.randn(self.cache_len, b, hk, d, generator=g) * m
        v = torch.randn(self.cache_len, b, hk, d, generator=g)
        for row, (n, p) in enumerate(zip(self.lengths, self.pads, strict=True)):
            for buf in (k, v):
                junk = 50 * torch.randn(buf.shape[0], hk, d, generator=g)
                junk[::4] = math.nan
                keep = torch.zeros(buf.shape[0], dtype=torch.bool)
                keep[p:n] = True
                buf[:, row][~keep] = junk[~keep]
        return q.to(dtype), k.to(dtype).permute(1, 0, 2, 3), v.to(dtype).permute(1, 0, 2, 3)


@st.composite
def decodes(draw: st.DrawFn) -> Decode:
    b = draw(st.integers(1, 4))
    cache_len = draw(st.integers(1, 40))
    same = draw(st.booleans())  # Unsloth passes one int for every row
    first = draw(st.integers(1, cache_len))
    lengths = tuple(first if same else draw(st.integers(1, cache_len)) for _ in range(b))
    pads = tuple(draw(st.integers(0, n - 1)) for n in lengths)
    n = max(lengths)
    window = draw(
        st.one_of(st.none(), st.sampled_from(sorted({max(1, n - 1), n, n + 1})), st.integers(1, 41))
    )
    return Decode(
        lengths=lengths,
        pads=pads,
        cache_len=cache_len,
        window=window,
        geometry=draw(st.sampled_from(GEOMETRIES)),
        causal=draw(st.booleans()),
        logit_std=draw(st.sampled_from(LOGIT_STDS)),
        seed=draw(st.integers(0, 2**16)),
    )


def compare_decode_with_oracle(
    dc: Decode, dtype: torch.dtype, *, pass_leftpad: bool = True, seqlens_shift: int = 0
) -> tolerance.Comparison:
    """``flash_attn_with_kvcache`` as Unsloth calls it vs the oracle run per row on the row's keys
    ``[:lengths[b]]`` with ``pads[b]`` keys of left padding (``key_valid``): the query is the last
    position, so W counts back from it, padding included, as flash-attn counts from the leftpad."""
    q, k_cache, v_cache = dc.tensors(dtype)
    scalar = dc.geometry[3]
    same = len(set(dc.lengths)) == 1
    seqlens = (
        dc.lengths[0] + seqlens_shift if same else torch.tensor(dc.lengths, dtype=torch.int32) + seqlens_shift
    )
    out = entry("flash_attn_with_kvcache", dtype)(
        q,
        k_cache,
        v_cache,
        cache_seqlens=seqlens,
        cache_leftpad=torch.tensor(dc.pads, dtype=torch.int32) if pass_leftpad else None,
        softmax_scale=scalar**-0.5,
        causal=dc.causal,
        window_size=flash_window(dc.window),
        softcap=dc.softcap or 0.0,
    )
    assert out.shape == q.shape and out.dtype == dtype
    golden, baseline, floors = [], [], []
    for row, (n, p) in enumerate(zip(dc.lengths, dc.pads, strict=True)):
        qo = flash(q[row : row + 1])
        # the oracle masks the padding but multiplies by it: its keys there are zeros, not the junk
        kr, vr = k_cache[row : row + 1, :n].clone(), v_cache[row : row + 1, :n].clone()
        kr[:, :p], vr[:, :p] = 0, 0
        ko, vo = flash(kr), flash(vr)
        valid = torch.ones(1, n, dtype=torch.long)
        valid[:, :p] = 0
        kw = dict(scalar=scalar, softcap=dc.softcap, window=dc.window, key_valid=valid)
        golden.append(oracle.attention(qo, ko, vo, dtype=torch.float64, **kw))
        baseline.append(oracle.attention(qo, ko, vo, dtype=dtype, **kw))
        fl = tolerance.attention_floor(qo, ko, vo, dtype=dtype, **kw)
        floors.append(torch.as_tensor(fl, dtype=torch.float64).expand_as(golden[-1]))
    return tolerance.compare(
        flat(out), torch.cat(golden), torch.cat(baseline), dtype=dtype, floor=torch.cat(floors)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(dc=decodes())
@example(dc=Decode((9, 9, 9), (0, 3, 8), 12, 4, (4, 2, 16, 16.0), False, 25.0, 5))  # Unsloth: int seqlens
@example(dc=Decode((1,), (0,), 2, None, (4, 1, 16, 256.0), False, 0.5, 0))  # Unsloth's start-up probe shape
def test_decode_matches_oracle(dc: Decode, dtype: torch.dtype) -> None:
    judge("flash_decode_vs_oracle", compare_decode_with_oracle(dc, dtype), dtype, dc.short())


def test_decode_row_without_keys_is_zero() -> None:
    """cache_leftpad == cache_seqlens: the row sees no key; flash-attn's convention is 0 (lse +inf)."""
    dc = Decode((5, 5), (0, 0), 6, 3, (4, 2, 16, 16.0), False, 5.0, 0)
    q, k, v = dc.tensors(torch.float32)
    out, lse = entry("flash_attn_with_kvcache", torch.float32)(
        q,
        k,
        v,
        cache_seqlens=5,
        cache_leftpad=torch.tensor([2, 5], dtype=torch.int32),
        return_softmax_lse=True,
    )
    assert bool((out[1] == 0).all()) and bool((lse[1] == INF).all())
    assert bool(out[0].abs().sum() > 0) and bool(torch.isfinite(lse[0]).all())


@st.composite
def appends(draw: st.DrawFn) -> tuple[Problem, tuple[int, ...], tuple[int, ...], int, bool]:
    """(a Problem giving geometry / window / cap / q_len, cache lengths, leftpads, new tokens, Unsloth layout)."""
    new = draw(st.integers(1, 4))
    b = draw(st.integers(1, 3))
    p = draw(problems(max_len=4))
    # flash-attn refuses more query rows than cache slots when appending; a one-token GQA query
    # without a window counts nheads // nheads_k rows there (the module's REJECTIONS)
    cache_len = draw(st.integers(max(new, p.q_len, p.geometry[0] // p.geometry[1]), 20))
    lengths = tuple(draw(st.integers(0, cache_len - new)) for _ in range(b))
    pads = tuple(draw(st.integers(0, n)) for n in lengths)
    p = dataclasses.replace(p, bsz=b, kv_len=cache_len)
    return p, lengths, pads, new, draw(st.booleans())


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=appends())
def test_kvcache_appends_in_place(
    case: tuple[Problem, tuple[int, ...], tuple[int, ...], int, bool], dtype: torch.dtype
) -> None:
    """k / v given: written into the caches in place at ``cache_seqlens`` (nothing else changes), then
    the queries attend over ``[cache_leftpad, cache_seqlens + new)``, positions counted from the
    leftpad: == the reference on exactly that slice of keys, window bottom-right aligned."""
    p, lengths, pads, new, unsloth_layout = case
    q, k_cache, v_cache = p.tensors(dtype)
    if unsloth_layout:  # a permuted view: the writes must land in the underlying buffer
        k_cache = k_cache.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
        v_cache = v_cache.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    g = torch.Generator().manual_seed(p.seed + 1)
    k_new = torch.randn(p.bsz, new, p.geometry[1], p.geometry[2], generator=g).to(dtype)
    v_new = torch.randn(p.bsz, new, p.geometry[1], p.geometry[2], generator=g).to(dtype)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    out = entry("flash_attn_with_kvcache", dtype)(
        q,
        k_cache,
        v_cache,
        k=k_new,
        v=v_new,
        cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
        cache_leftpad=torch.tensor(pads, dtype=torch.int32),
        **p.kwargs(),
    )
    written = torch.zeros(k_cache.shape[:2], dtype=torch.bool)
    for row, n in enumerate(lengths):
        written[row, n : n + new] = True
        assert torch.equal(k_cache[row, n : n + new], k_new[row]) and torch.equal(
            v_cache[row, n : n + new], v_new[row]
        )
    assert torch.equal(k_cache[~written], k_before[~written]) and torch.equal(
        v_cache[~written], v_before[~written]
    )
    ref_kw = dict(scale=p.scale, softcap=p.softcap, window_size=p.window_size, causal=p.causal)
    for row, (n, pad) in enumerate(zip(lengths, pads, strict=True)):
        keys = slice(pad, n + new)
        qr, kr, vr = q[row : row + 1], k_cache[row : row + 1, keys], v_cache[row : row + 1, keys]
        golden, _ = flash_reference(qr, kr, vr, dtype=torch.float64, **ref_kw)
        baseline, _ = flash_reference(qr, kr, vr, dtype=dtype, **ref_kw)
        floor = flash_floor(qr, kr, vr, dtype=dtype, **ref_kw)
        cmp = tolerance.compare(
            flat(out[row : row + 1]),
            flat(golden),
            flat(baseline),
            dtype=dtype,
            floor=flat_floor(floor, golden),
        )
        judge("flash_kvcache_append_vs_reference", cmp, dtype, f"row {row} keys {pad}..{n + new} {p.short()}")


def test_kvcache_batch_idx() -> None:
    """cache_batch_idx: row b reads (and appends to) cache row cache_batch_idx[b]."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 1, 4, 16, generator=g)
    k_cache, v_cache = torch.randn(5, 10, 2, 16, generator=g), torch.randn(5, 10, 2, 16, generator=g)
    k_new, v_new = torch.randn(2, 1, 2, 16, generator=g), torch.randn(2, 1, 2, 16, generator=g)
    idx = torch.tensor([3, 1], dtype=torch.int32)
    seqlens = torch.tensor([4, 7], dtype=torch.int32)
    gathered_k, gathered_v = k_cache[idx.long()].clone(), v_cache[idx.long()].clone()
    kw = dict(cache_seqlens=seqlens, window_size=(2, 0), softcap=50.0)
    kvcache = entry("flash_attn_with_kvcache", torch.float32)
    out = kvcache(q, k_cache, v_cache, k=k_new, v=v_new, cache_batch_idx=idx, **kw)
    want = kvcache(q, gathered_k, gathered_v, k=k_new, v=v_new, **kw)
    assert torch.equal(out, want)  # the same computation on the same values and shapes
    assert torch.equal(k_cache[3, 4], k_new[0, 0]) and torch.equal(v_cache[1, 7], v_new[1, 0])


# --- 5. shapes, dtypes, return values, errors ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_dtypes_and_returns(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, h, 8, generator=g).to(dtype) for n, h in ((3, 4), (5, 2), (5, 2)))
    dense, varlen, kvcache = (
        entry(f"flash_attn_{n}", dtype) for n in ("func", "varlen_func", "with_kvcache")
    )
    out = dense(q, k, v, causal=True, deterministic=True)
    assert out.dtype == dtype and out.shape == (2, 3, 4, 8)
    out2, lse, s_dmask = dense(q, k, v, causal=True, return_attn_probs=True)
    assert (
        torch.equal(out, out2) and lse.dtype == torch.float32 and lse.shape == (2, 4, 3) and s_dmask is None
    )
    cu = torch.tensor([0, 3, 6], dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 10], dtype=torch.int32)
    qv, kv, vv = q.reshape(6, 4, 8), k.reshape(10, 2, 8), v.reshape(10, 2, 8)
    o, lse_v, s_v = varlen(qv, kv, vv, cu, cu_k, 3, 5, causal=True, return_attn_probs=True)
    assert (
        o.dtype == dtype and o.shape == (6, 4, 8) and lse_v.shape == (4, 6) and lse_v.dtype == torch.float32
    )
    assert s_v is None
    o, lse_k = kvcache(q, k.clone(), v.clone(), cache_seqlens=5, return_softmax_lse=True)
    assert (
        o.dtype == dtype
        and o.shape == (2, 3, 4, 8)
        and lse_k.shape == (2, 4, 3)
        and lse_k.dtype == torch.float32
    )
    assert isinstance(kvcache(q, k.clone(), v.clone()), torch.Tensor)


# A valid float16 call of each public function; the tables below change one argument at a time.

SHAPES = {  # the floating tensors of each call, (..., head_dim) last
    "dense": dict(q=(1, 2, 4), k=(1, 3, 2), v=(1, 3, 2)),
    "varlen": dict(q=(5, 4), k=(6, 2), v=(6, 2)),
    "kvcache": dict(q=(2, 1, 4), k_cache=(2, 6, 2), v_cache=(2, 6, 2), k=(2, 1, 2), v=(2, 1, 2)),
}


def tensors(call: str, dtype: torch.dtype = torch.float16, head_dim: int = 8) -> dict[str, torch.Tensor]:
    """The floating tensors of ``call``'s valid arguments as zeros, in ``dtype`` with ``head_dim``."""
    return {name: _h(*shape, head_dim, dtype=dtype) for name, shape in SHAPES[call].items()}


def _h(*shape: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype)


def _i32(*values: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def _gapped(*values: int) -> torch.Tensor:
    """``values`` as an int32 vector that is not contiguous (every other element of a longer one)."""
    return torch.tensor([x for v in values for x in (v, -1)], dtype=torch.int32)[::2]


def dense_call(**over: Any) -> Any:
    """``flash_attn_func``: GQA 4/2, causal, softcap; ``over`` replaces arguments."""
    return fa.flash_attn_func(**(tensors("dense") | dict(causal=True, softcap=50.0) | over))


def varlen_call(**over: Any) -> Any:
    """``flash_attn_varlen_func``: two sequences of 2 / 3 queries over 3 / 3 keys."""
    args = dict(cu_seqlens_q=_i32(0, 2, 5), cu_seqlens_k=_i32(0, 3, 6), max_seqlen_q=3, max_seqlen_k=3)
    return fa.flash_attn_varlen_func(**(tensors("varlen") | args | dict(causal=True, softcap=50.0) | over))


def kvcache_call(**over: Any) -> Any:
    """``flash_attn_with_kvcache``: two rows, one token appended, every index tensor given."""
    args = dict(cache_seqlens=_i32(3, 5), cache_batch_idx=_i32(1, 0), cache_leftpad=_i32(0, 1))
    args |= dict(window_size=(3, 0), softcap=50.0)
    return fa.flash_attn_with_kvcache(**(tensors("kvcache") | args | over))


F32, F64, BF16, I64 = torch.float32, torch.float64, torch.bfloat16, torch.int64
DTYPE = "FlashAttention only support fp16 and bf16 data type"
SAME_K, SAME_V = "query and key must have the same dtype", "query and value must have the same dtype"
BATCH = "batch size must be positive"
HEADDIM = "FlashAttention forward only supports head dimension at most 256"
HEADS = "Number of heads in key/value must divide number of heads in query"
CAP_DROPOUT = "Softcapping does not support dropout for now"
DENSE_KV = "must have shape (batch_size, seqlen_k, num_heads_k, head_size_og)"
VARLEN_KV = "must have shape (total_k, num_heads_k, head_size_og)"
CACHE = "must have shape (batch_size_c, seqlen_k, num_heads_k, head_size_og)"
NEW_KV = "must have shape (batch_size, seqlen_knew, num_heads_k, head_size_og)"
APPEND_LEN = "If key is supplied, it must have seqlen <= the seqlen of the KV cache"
# One query token of GQA 8/1 over a cache of 3 slots: without a window 2.6.3 regroups it into 8 rows.
_REGROUPED = functools.partial(
    kvcache_call,
    q=_h(2, 1, 8, 8),
    k_cache=_h(2, 3, 1, 8),
    v_cache=_h(2, 3, 1, 8),
    k=_h(2, 1, 1, 8),
    v=_h(2, 1, 1, 8),
    cache_seqlens=_i32(1, 2),
)
# An int cache_seqlens becomes torch.full((k_cache.shape[0],), ...): one entry per cache row.
_THREE_CACHE_ROWS = functools.partial(kvcache_call, k_cache=_h(3, 6, 2, 8), v_cache=_h(3, 6, 2, 8))

# name: (exception, flash-attn 2.6.3's exact message, a valid call, the one change that must fail it).
# RuntimeError: csrc/flash_attn/flash_api.cpp (mha_fwd, mha_varlen_fwd, mha_fwd_kvcache);
# AssertionError: flash_attn/flash_attn_interface.py (flash_attn_with_kvcache).
REJECTIONS: dict[str, tuple[type[Exception], str, Callable[..., Any], dict[str, Any]]] = {
    "dense float32": (RuntimeError, DTYPE, dense_call, tensors("dense", F32)),
    "dense float64": (RuntimeError, DTYPE, dense_call, tensors("dense", F64)),
    "dense bf16 k": (RuntimeError, SAME_K, dense_call, dict(k=_h(1, 3, 2, 8, dtype=BF16))),
    "dense float32 v": (RuntimeError, SAME_V, dense_call, dict(v=_h(1, 3, 2, 8, dtype=F32))),
    "dense head_dim 264": (RuntimeError, HEADDIM, dense_call, tensors("dense", head_dim=264)),
    "dense batch 0": (
        RuntimeError,
        BATCH,
        dense_call,
        dict(q=_h(0, 2, 4, 8), k=_h(0, 3, 2, 8), v=_h(0, 3, 2, 8)),
    ),
    "dense heads 4 over 3": (RuntimeError, HEADS, dense_call, dict(k=_h(1, 3, 3, 8), v=_h(1, 3, 3, 8))),
    "dense k head_dim": (RuntimeError, f"k {DENSE_KV}", dense_call, dict(k=_h(1, 3, 2, 16))),
    "dense k batch": (RuntimeError, f"k {DENSE_KV}", dense_call, dict(k=_h(2, 3, 2, 8), v=_h(2, 3, 2, 8))),
    "dense v length": (RuntimeError, f"v {DENSE_KV}", dense_call, dict(v=_h(1, 4, 2, 8))),
    # a 3-d q: C++ reads sizes[3] past its end; CHECK_SHAPE(q) is the check that refuses it
    "dense 3-d q": (
        RuntimeError,
        "q must have shape (batch_size, seqlen_q, num_heads, head_size_og)",
        dense_call,
        dict(q=_h(2, 4, 8)),
    ),
    "dense softcap with dropout": (RuntimeError, CAP_DROPOUT, dense_call, dict(dropout_p=0.1)),
    "varlen float32": (RuntimeError, DTYPE, varlen_call, tensors("varlen", F32)),
    "varlen bf16 v": (RuntimeError, SAME_V, varlen_call, dict(v=_h(6, 2, 8, dtype=BF16))),
    "varlen int64 cu_seqlens_q": (
        RuntimeError,
        "cu_seqlens_q must have dtype int32",
        varlen_call,
        dict(cu_seqlens_q=_i32(0, 2, 5, dtype=I64)),
    ),
    "varlen int64 cu_seqlens_k": (
        RuntimeError,
        "cu_seqlens_k must have dtype int32",
        varlen_call,
        dict(cu_seqlens_k=_i32(0, 3, 6, dtype=I64)),
    ),
    "varlen gapped cu_seqlens_q": (
        RuntimeError,
        "cu_seqlens_q must be contiguous",
        varlen_call,
        dict(cu_seqlens_q=_gapped(0, 2, 5)),
    ),
    "varlen gapped cu_seqlens_k": (
        RuntimeError,
        "cu_seqlens_k must be contiguous",
        varlen_call,
        dict(cu_seqlens_k=_gapped(0, 3, 6)),
    ),
    "varlen no sequence": (
        RuntimeError,
        BATCH,
        varlen_call,
        dict(cu_seqlens_q=_i32(0), cu_seqlens_k=_i32(0)),
    ),
    "varlen head_dim 264": (RuntimeError, HEADDIM, varlen_call, tensors("varlen", head_dim=264)),
    "varlen heads 4 over 3": (RuntimeError, HEADS, varlen_call, dict(k=_h(6, 3, 8), v=_h(6, 3, 8))),
    "varlen k head_dim": (RuntimeError, f"k {VARLEN_KV}", varlen_call, dict(k=_h(6, 2, 16))),
    "varlen v rows": (RuntimeError, f"v {VARLEN_KV}", varlen_call, dict(v=_h(5, 2, 8))),
    "varlen cu_seqlens_k length": (
        RuntimeError,
        "cu_seqlens_k must have shape (batch_size + 1)",
        varlen_call,
        dict(cu_seqlens_k=_i32(0, 6)),
    ),
    "varlen 2-d cu_seqlens_q": (
        RuntimeError,
        "cu_seqlens_q must have shape (batch_size + 1)",
        varlen_call,
        dict(cu_seqlens_q=_i32(0, 2, 5)[None]),
    ),
    "varlen softcap with dropout": (RuntimeError, CAP_DROPOUT, varlen_call, dict(dropout_p=0.1)),
    "kvcache float32": (RuntimeError, DTYPE, kvcache_call, tensors("kvcache", F32)),
    "kvcache bf16 k_cache": (RuntimeError, SAME_K, kvcache_call, dict(k_cache=_h(2, 6, 2, 8, dtype=BF16))),
    "kvcache bf16 v_cache": (RuntimeError, SAME_V, kvcache_call, dict(v_cache=_h(2, 6, 2, 8, dtype=BF16))),
    "kvcache k_cache last dim": (
        AssertionError,
        "k_cache must have contiguous last dimension",
        kvcache_call,
        dict(k_cache=_h(2, 6, 2, 16)[..., ::2]),
    ),
    "kvcache v_cache last dim": (
        AssertionError,
        "v_cache must have contiguous last dimension",
        kvcache_call,
        dict(v_cache=_h(2, 6, 2, 16)[..., ::2]),
    ),
    "kvcache head_dim 264": (RuntimeError, HEADDIM, kvcache_call, tensors("kvcache", head_dim=264)),
    "kvcache batch 0": (RuntimeError, BATCH, kvcache_call, dict(q=_h(0, 1, 4, 8))),
    "kvcache heads 4 over 3": (
        RuntimeError,
        HEADS,
        kvcache_call,
        dict(k_cache=_h(2, 6, 3, 8), v_cache=_h(2, 6, 3, 8)),
    ),
    "kvcache k_cache head_dim": (
        RuntimeError,
        f"kcache {CACHE}",
        kvcache_call,
        dict(k_cache=_h(2, 6, 2, 16)),
    ),
    "kvcache v_cache length": (RuntimeError, f"vcache {CACHE}", kvcache_call, dict(v_cache=_h(2, 5, 2, 8))),
    "kvcache k without v": (
        RuntimeError,
        "If key is supplied, value must also be passed in",
        kvcache_call,
        dict(v=None),
    ),
    "kvcache k without cache_seqlens": (
        RuntimeError,
        "If key is supplied, seqlens_k must also be passed in",
        kvcache_call,
        dict(cache_seqlens=None),
    ),
    "kvcache 7 queries over 6 slots": (RuntimeError, APPEND_LEN, kvcache_call, dict(q=_h(2, 7, 4, 8))),
    "kvcache one GQA token regrouped": (RuntimeError, APPEND_LEN, _REGROUPED, dict(window_size=(-1, -1))),
    "kvcache bf16 k": (
        RuntimeError,
        "Key must have the same dtype as query",
        kvcache_call,
        dict(k=_h(2, 1, 2, 8, dtype=BF16)),
    ),
    "kvcache float32 v": (
        RuntimeError,
        "Value must have the same dtype as query",
        kvcache_call,
        dict(v=_h(2, 1, 2, 8, dtype=F32)),
    ),
    "kvcache k heads": (RuntimeError, f"k {NEW_KV}", kvcache_call, dict(k=_h(2, 1, 1, 8))),
    "kvcache v length": (RuntimeError, f"v {NEW_KV}", kvcache_call, dict(v=_h(2, 2, 2, 8))),
    "kvcache int64 cache_seqlens": (
        RuntimeError,
        "seqlens_k must have dtype int32",
        kvcache_call,
        dict(cache_seqlens=_i32(3, 5, dtype=I64)),
    ),
    "kvcache gapped cache_seqlens": (
        RuntimeError,
        "seqlens_k must be contiguous",
        kvcache_call,
        dict(cache_seqlens=_gapped(3, 5)),
    ),
    "kvcache cache_seqlens length": (
        RuntimeError,
        "seqlens_k must have shape (batch_size)",
        kvcache_call,
        dict(cache_seqlens=_i32(3)),
    ),
    "kvcache int cache_seqlens, 3 cache rows": (
        RuntimeError,
        "seqlens_k must have shape (batch_size)",
        _THREE_CACHE_ROWS,
        dict(cache_seqlens=3),
    ),
    "kvcache int64 cache_leftpad": (
        RuntimeError,
        "leftpad_k must have dtype int32",
        kvcache_call,
        dict(cache_leftpad=_i32(0, 1, dtype=I64)),
    ),
    "kvcache gapped cache_leftpad": (
        RuntimeError,
        "leftpad_k must be contiguous",
        kvcache_call,
        dict(cache_leftpad=_gapped(0, 1)),
    ),
    "kvcache cache_leftpad length": (
        RuntimeError,
        "leftpad_k must have shape (batch_size)",
        kvcache_call,
        dict(cache_leftpad=_i32(0, 1, 0)),
    ),
    "kvcache int64 cache_batch_idx": (
        RuntimeError,
        "cache_batch_idx must have dtype int32",
        kvcache_call,
        dict(cache_batch_idx=_i32(1, 0, dtype=I64)),
    ),
}


@pytest.mark.parametrize("name", list(REJECTIONS), ids=[n.replace(" ", "_") for n in REJECTIONS])
def test_rejects_what_flash_attn_rejects(name: str) -> None:
    """The call runs; with the one change it raises flash-attn 2.6.3's exception and exact text."""
    exc, message, call, change = REJECTIONS[name]
    assert isinstance(call(), torch.Tensor)
    with pytest.raises(exc) as info:
        call(**change)
    assert type(info.value) is exc and str(info.value) == message


def test_runs_the_dtypes_flash_attn_runs() -> None:
    """All three public functions run in float16 and bfloat16 and refuse float32 with flash-attn's text;
    the twins take float32 with ``any_dtype=True`` only."""
    for kind, call in (("dense", dense_call), ("varlen", varlen_call), ("kvcache", kvcache_call)):
        for half in fa.FLASH_DTYPES:
            assert call(**tensors(kind, half)).dtype == half
        with pytest.raises(RuntimeError, match=DTYPE):
            call(**tensors(kind, F32))
    q, k, v = tensors("dense", F32).values()
    assert fa._flash_attn_func(q, k, v, any_dtype=True).dtype == F32
    with pytest.raises(RuntimeError, match=DTYPE):
        fa._flash_attn_func(q, k, v, any_dtype=False)


def test_accepts_a_non_contiguous_last_dimension() -> None:
    """q / k / v whose last dimension is strided: 2.6.3's wrapper copies them (``maybe_contiguous``)
    rather than refusing them; the result is the contiguous call's, bit for bit."""
    g = torch.Generator().manual_seed(0)

    def strided(*shape: int) -> torch.Tensor:
        return torch.randn(*shape[:-1], 2 * shape[-1], generator=g).to(torch.float16)[..., ::2]

    q, k, v = strided(1, 2, 4, 8), strided(1, 3, 2, 8), strided(1, 3, 2, 8)
    assert q.stride(-1) == 2
    assert torch.equal(
        dense_call(q=q, k=k, v=v), dense_call(q=q.contiguous(), k=k.contiguous(), v=v.contiguous())
    )
    qv, kv, vv = strided(5, 4, 8), strided(6, 2, 8), strided(6, 2, 8)
    assert torch.equal(
        varlen_call(q=qv, k=kv, v=vv), varlen_call(q=qv.contiguous(), k=kv.contiguous(), v=vv.contiguous())
    )
    qc, kn, vn = strided(2, 1, 4, 8), strided(2, 1, 2, 8), strided(2, 1, 2, 8)
    caches = [torch.randn(2, 6, 2, 8, generator=g).to(torch.float16) for _ in range(2)]
    out = kvcache_call(q=qc, k=kn, v=vn, k_cache=caches[0].clone(), v_cache=caches[1].clone())
    want = kvcache_call(
        q=qc.contiguous(),
        k=kn.contiguous(),
        v=vn.contiguous(),
        k_cache=caches[0].clone(),
        v_cache=caches[1].clone(),
    )
    assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [4, 12, 250])
def test_accepts_a_head_dim_off_the_multiples_of_8(head_dim: int, dtype: torch.dtype) -> None:
    """2.6.3's forward pads such a head dimension to a multiple of 8 (``head_size_og % 8``) and slices
    the output back: accepted, and == the oracle by the rule."""
    case = Case(
        n_heads=4, n_kv_heads=2, head_dim=head_dim, scalar=float(head_dim), q_len=5, kv_len=9, window=4
    )
    judge("flash_vs_oracle_odd_head_dim", compare_with_oracle(case, dtype), dtype, case.short())


def test_softcap_at_most_zero_is_off() -> None:
    """flash-attn caps only ``if (softcap > 0.0)``: a negative or NaN cap is no cap (and a positive one,
    here small enough to bind, does change the result)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, n, h, 8, generator=g).mul(3).half() for n, h in ((4, 4), (6, 2), (6, 2)))
    off = dense_call(q=q, k=k, v=v, softcap=0.0)
    for cap in (-1.0, math.nan):
        assert torch.equal(dense_call(q=q, k=k, v=v, softcap=cap), off), cap
    assert not torch.equal(dense_call(q=q, k=k, v=v, softcap=1.0), off)


def test_kvcache_ignores_v_without_k() -> None:
    """2.6.3 reads ``v`` only when ``k`` is given: a lone ``v`` changes neither the output nor the cache."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 1, 4, 8, generator=g).half()
    k_cache, v_cache = (torch.randn(2, 6, 2, 8, generator=g).half() for _ in range(2))
    lone_v = torch.randn(2, 1, 2, 8, generator=g).half()
    v_before = v_cache.clone()
    with_v = kvcache_call(q=q, k_cache=k_cache, v_cache=v_cache, k=None, v=lone_v)
    assert torch.equal(v_cache, v_before)
    assert torch.equal(with_v, kvcache_call(q=q, k_cache=k_cache, v_cache=v_cache, k=None, v=None))
    appended = kvcache_call(q=q, k_cache=k_cache.clone(), v_cache=v_cache.clone(), k=lone_v, v=lone_v)
    assert not torch.equal(appended, with_v)  # the same v with a k is appended and attended to


FLASH_263_PARAMETERS = {  # flash_attn/flash_attn_interface.py at v2.6.3
    "flash_attn_func": "q k v dropout_p softmax_scale causal window_size softcap alibi_slopes deterministic "
    "return_attn_probs",
    "flash_attn_varlen_func": "q k v cu_seqlens_q cu_seqlens_k max_seqlen_q max_seqlen_k dropout_p softmax_scale "
    "causal window_size softcap alibi_slopes deterministic return_attn_probs block_table",
    "flash_attn_with_kvcache": "q k_cache v_cache k v rotary_cos rotary_sin cache_seqlens cache_batch_idx "
    "cache_leftpad block_table softmax_scale causal window_size softcap rotary_interleaved alibi_slopes "
    "num_splits return_softmax_lse",
}


@pytest.mark.parametrize("name", list(FLASH_263_PARAMETERS))
def test_signatures(name: str) -> None:
    """Each public function has 2.6.3's parameters and defaults (transformers inspects them), and its
    twin the same ones plus the keyword ``any_dtype``, which is how the public one calls it."""
    public = inspect.signature(getattr(fa, name)).parameters
    twin = dict(inspect.signature(getattr(fa, f"_{name}")).parameters)
    assert list(public) == FLASH_263_PARAMETERS[name].split()
    assert twin.pop("any_dtype").kind is inspect.Parameter.KEYWORD_ONLY
    assert [(p.name, p.default) for p in twin.values()] == [(p.name, p.default) for p in public.values()]


# The stand-in's own errors: what it does not implement, and what the kernels would read out of bounds.
# name (the argument the message names): (exception, a valid call, the one change that must fail it).
ERRORS: dict[str, tuple[type[Exception], Callable[..., Any], dict[str, Any]]] = {
    "dropout_p": (NotImplementedError, dense_call, dict(dropout_p=0.1, softcap=0.0)),
    "alibi_slopes": (NotImplementedError, dense_call, dict(alibi_slopes=torch.zeros(4))),
    "rotary_cos": (NotImplementedError, kvcache_call, dict(rotary_cos=torch.zeros(6, 4))),
    "block_table": (
        NotImplementedError,
        kvcache_call,
        dict(block_table=torch.zeros(2, 1, dtype=torch.int32)),
    ),
    "block_table ": (
        NotImplementedError,
        varlen_call,
        dict(block_table=torch.zeros(2, 1, dtype=torch.int32)),
    ),
    "softcap": (TypeError, dense_call, dict(softcap=None)),
    "window_size": (ValueError, dense_call, dict(window_size=(1,))),
    "k_cache": (TypeError, kvcache_call, dict(k_cache=[[0.0]])),
    "device": (ValueError, dense_call, dict(k=_h(1, 3, 2, 8).to("meta"))),
    "max_seqlen_k": (ValueError, varlen_call, dict(max_seqlen_k=2)),
    "cu_seqlens_q": (ValueError, varlen_call, dict(cu_seqlens_q=_i32(0, 3, 2))),
    "cu_seqlens_k": (ValueError, varlen_call, dict(cu_seqlens_k=_i32(0, 3, 7))),
    "cache_seqlens": (ValueError, kvcache_call, dict(cache_seqlens=_i32(3, 6))),
    "cache_leftpad": (ValueError, kvcache_call, dict(cache_leftpad=_i32(4, 0))),
    "cache_batch_idx": (ValueError, kvcache_call, dict(cache_batch_idx=_i32(2, 0))),
    "cache_batch_idx ": (ValueError, kvcache_call, dict(cache_batch_idx=_i32(1))),
}


@pytest.mark.parametrize("name", list(ERRORS), ids=[n.strip().replace(" ", "_") for n in ERRORS])
def test_stand_in_errors(name: str) -> None:
    """The call runs; with the one change it raises one line, marked as the stand-in's and naming the
    argument (never a silent wrong answer)."""
    exc, call, change = ERRORS[name]
    assert isinstance(call(), torch.Tensor)
    with pytest.raises(exc) as info:
        call(**change)
    msg = str(info.value)
    assert type(info.value) is exc and msg.startswith("flash-attn stand-in: "), msg
    assert name.strip() in msg and "\n" not in msg, msg


def test_cuda_extension_stub_imports_like_a_module() -> None:
    """What Unsloth does to test an install: import the extension (both names), read no attribute of it."""
    from gemma2_regress.standins.flash_attn.flash_attn_interface import flash_attn_cuda, flash_attn_gpu

    assert flash_attn_gpu is flash_attn_cuda and flash_attn_gpu.__name__ == "flash_attn_2_cuda"
    with pytest.raises(NotImplementedError, match=r"flash_attn_2_cuda\.fwd is flash-attn's CUDA extension"):
        flash_attn_gpu.fwd()
    with pytest.raises(AttributeError):
        flash_attn_gpu.__wrapped__  # noqa: B018 (introspection sees a plain module)


def test_activation_in_a_child_process() -> None:
    """``use_flash_attn_standin`` in a fresh interpreter: importing the package imports no flash_attn;
    afterwards ``flash_attn`` imports as Unsloth imports it, ``find_spec`` (what Unsloth's and
    transformers' availability checks use) finds both modules, and Unsloth's own ``_flash_attn_layout``
    (read from the installed file; no ``import unsloth``) calls it flash-attn 2."""
    script = textwrap.dedent(
        """
        import importlib.util, sys
        import gemma2_regress.standins as standins
        assert "flash_attn" not in sys.modules, "importing the package imported flash_attn"
        which = standins.use_flash_attn_standin()
        assert standins.use_flash_attn_standin() == which
        print(which)
        if which.endswith("(real)"):
            raise SystemExit(0)
        assert sys.path.count(standins._HERE) == 1
        from flash_attn import __version__, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
        from flash_attn.flash_attn_interface import flash_attn_gpu
        assert __version__ == "2.6.3", __version__
        for name in ("flash_attn", "flash_attn.flash_attn_interface"):
            assert importlib.util.find_spec(name).origin.startswith(standins._HERE), name
        if importlib.util.find_spec("transformers") is not None:
            from transformers.utils import import_utils
            assert import_utils._is_package_available("flash_attn")[0]
        spec = importlib.util.find_spec("unsloth")
        if spec is not None:
            path = spec.submodule_search_locations[0] + "/import_fixes.py"
            fixes = importlib.util.spec_from_file_location("unsloth_import_fixes_alone", path)
            module = importlib.util.module_from_spec(fixes)
            fixes.loader.exec_module(module)
            if hasattr(module, "_flash_attn_layout"):
                assert module._flash_attn_layout() == "flash_attn_2", module._flash_attn_layout()
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[0] in ("reference stand-in 2.6.3",) or "(real)" in run.stdout


# --- 6. each proof can fail ------------------------------------------------------------------------


def test_oracle_comparison_catches_a_window_off_by_one() -> None:
    """FlashAttention's ``window_size=(W, 0)`` (W + 1 keys, the legacy convention) or ``(W - 2, 0)``
    in place of ``(W - 1, 0)``: the rule against the oracle fails."""
    case = Case(q_len=40, kv_len=40, window=8, logit_std=0.5)
    assert compare_with_oracle(case, torch.float64).ok
    for wrong in ((8, 0), (6, 0)):
        cmp = compare_with_oracle(case, torch.float64, window_size=wrong)
        assert not cmp.ok and cmp.err_target > 1e-3, (wrong, cmp.describe())


def test_reference_comparison_catches_wrong_bounds_and_cap() -> None:
    """A right bound one too wide, a left bound one too narrow, or the cap dropped: caught."""
    p = Problem(1, 10, 12, (4, 2, 16, 16.0), (3, 2), False, 50.0, 50.0, 0)
    assert compare_with_reference(p, torch.float64).ok

    def shifted(dl: int, dr: int, cap: float | None = None) -> Callable[..., tuple]:
        def call(q, k, v, *, window_size, softcap, **kw):
            ws = (window_size[0] + dl, window_size[1] + dr)
            dense = entry("flash_attn_func", q.dtype)
            return dense(q, k, v, window_size=ws, softcap=softcap if cap is None else cap, **kw)

        return call

    for wrong in (shifted(0, 1), shifted(-1, 0), shifted(0, 0, cap=0.0)):
        with pytest.raises(AssertionError):  # either the rule or the no-key / lse checks
            cmp = compare_with_reference(p, torch.float64, call=wrong)
            assert cmp.ok, cmp.describe()


def test_varlen_checks_catch_a_misplaced_boundary_and_a_leak() -> None:
    """Boundaries one token off (cu_seqlens + 1 inside), or one dense run over the whole pack: caught."""
    pk = Packing(((5, 5), (6, 6), (4, 4)), (4, 2, 16, 16.0), (-1, -1), True, 50.0, 5.0, 0)

    def off_by_one(q, k, v, cu_q, cu_k, mq, mk, **kw):
        cq, ck = cu_q.clone(), cu_k.clone()
        cq[1:-1] += 1
        ck[1:-1] += 1
        return entry("flash_attn_varlen_func", q.dtype)(q, k, v, cq, ck, mq + 1, mk + 1, **kw)

    def leaky(q, k, v, cu_q, cu_k, mq, mk, return_attn_probs=False, **kw):
        dense = entry("flash_attn_func", q.dtype)
        out = dense(q[None], k[None], v[None], return_attn_probs=return_attn_probs, **kw)
        if not return_attn_probs:
            return out[0]
        return out[0][0], out[1][0], None

    assert compare_packed_with_alone(pk, torch.float32).ok
    with pytest.raises(AssertionError):
        cmp = compare_packed_with_alone(pk, torch.float32, varlen=off_by_one)
        assert cmp.ok, cmp.describe()
    check_no_attention_across(pk)
    with pytest.raises(AssertionError, match="saw another sequence"):
        check_no_attention_across(pk, varlen=leaky)


def test_decode_comparison_catches_ignored_leftpad_and_wrong_length() -> None:
    """cache_leftpad not passed, or cache_seqlens one too long (a junk key read) / short: caught."""
    dc = Decode((9, 9), (0, 4), 12, 8, (4, 2, 16, 16.0), False, 5.0, 1)
    assert compare_decode_with_oracle(dc, torch.float32).ok
    for kw in (dict(pass_leftpad=False), dict(seqlens_shift=1), dict(seqlens_shift=-1)):
        cmp = compare_decode_with_oracle(dc, torch.float32, **kw)
        assert not cmp.ok, (kw, cmp.describe())
