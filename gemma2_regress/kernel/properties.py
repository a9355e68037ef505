"""Property functions shared by the CPU and GPU tiers: each runs one case and asserts a verdict.

Tests call these with a target and a device; they never copy the comparison logic. A failure
message names the case, the measurements and the versions, so a CI log is a bug report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import hypothesis
import torch

from gemma2_regress import records
from gemma2_regress.kernel.cases import Case, Inputs, make_inputs
from gemma2_regress.kernel.targets import AttentionTarget
from gemma2_regress.plugins import report
from gemma2_regress.reference import oracle, store, tolerance
from gemma2_regress.reference.masks import valid_queries
from gemma2_regress.versions import one_line


def failure_message(prop: str, target: str, case: Case, detail: str) -> str:
    return f"{prop} failed for {target}\n  case: {case.short()}\n  {detail}\n  versions: {one_line()}"


# Every case of one test's examples (5 at the real window, twice: static-mask targets take them unpadded),
# so that the next target finds them all; an entry holds (batch, tokens, features) tensors, a few MB at 8k.
PREPARED_CASES = 64


@functools.lru_cache(maxsize=PREPARED_CASES)
def prepared(case: Case, device: str) -> tuple[Inputs, torch.Tensor, torch.Tensor, float | torch.Tensor]:
    """Inputs, golden, baseline and the rule's floor for a case, kept for the next target given the same case.

    Hypothesis (derandomized) draws the same cases for every target of a parametrized test, one target
    after another, and the float64 reference at 8k tokens costs seconds: the targets of one test share it,
    and on CPU the next run finds it on disk (``reference.store``: keyed by the inputs, the code and the
    CPU's roundings).
    """
    inputs = make_inputs(case, device)
    if not store.enabled(device, case.bsz * case.n_heads * case.q_len * case.kv_len):
        return (inputs, *reference(case, inputs))
    digest = store.key(
        (inputs.q, inputs.k, inputs.v, inputs.key_valid),
        (case.scalar, case.softcap, case.window, case.dtype),
        (reference, oracle.attention, tolerance.attention_floor),
    )
    return (inputs, *store.fetch(records.cache_folder(), digest, lambda: reference(case, inputs)))


def reference(case: Case, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
    """(golden float64, baseline in the case's dtype, ``tolerance.attention_floor``) for one case."""
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=inputs.key_valid)
    golden = oracle.attention(inputs.q, inputs.k, inputs.v, dtype=torch.float64, **kw)
    baseline = oracle.attention(inputs.q, inputs.k, inputs.v, dtype=case.torch_dtype, **kw)
    floor = tolerance.attention_floor(inputs.q, inputs.k, inputs.v, dtype=case.torch_dtype, **kw)
    return golden, baseline, floor


def check_kernel_matches_oracle(target: AttentionTarget, case: Case, device: str) -> tolerance.Comparison:
    """The target's output equals the oracle's within the tolerance rule, at every real query."""
    inputs, golden, baseline, floor = prepared(case, device)
    out = target.run(case, inputs.clone())  # a clone: the cached inputs must survive an in-place target
    valid = valid_queries(inputs.key_valid, case.q_len)
    cmp = tolerance.compare(out, golden, baseline, dtype=case.torch_dtype, valid=valid, floor=floor)
    report.record("kernel_matches_oracle", target.name, cmp.kind, cmp.ratio, case.short(), device=device)
    _climb(cmp, target.name)
    assert cmp.ok, failure_message("kernel_matches_oracle", target.name, case, cmp.describe())
    return cmp


def _climb(cmp: tolerance.Comparison, label: str) -> None:
    """Steer Hypothesis toward the largest error ratio (only inside @given)."""
    try:
        hypothesis.target(min(cmp.ratio, 1e6), label=label)
    except hypothesis.errors.InvalidArgument:
        pass


# --- Metamorphic properties over any attention callable (no second implementation needed) ---------
# ``attn(q, k, v, key_valid) -> (bsz, q_len, n_heads * head_dim)`` with q ``(b, h, q, d)``, k/v
# ``(b, kv_h, kv, d)`` and the queries the last ``q_len`` positions, as ``oracle.attention``. The
# oracle tests (tests/oracle/test_invariants.py) run them on the oracle; the GPU tier can run them
# on a kernel target by wrapping it in such a callable.

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def window_boundary_effects(
    attn: AttentionFn,
    *,
    window: int,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[int, float]:
    """How much the last query's output moves when the value ``back`` keys behind it changes.

    Construction that makes the boundary observable: q = 0, so every logit is 0 (capped or not) and
    attention is uniform over exactly the keys the window admits. Adding ``window`` to every entry
    of one value vector then moves the last query's output by ``window / n_seen`` if that key is
    seen and by 0 if not: with the ``i - W < j <= i`` window (``n_seen = W``) the returned max
    change is 1.0 for ``back`` in {0, W-2, W-1} and 0.0 for ``back`` in {W, W+1}. The legacy
    ``i - W <= j`` convention (W+1 keys) shows as ~1.0 at ``back = W``.
    """
    kv_len = window + 2
    g = torch.Generator().manual_seed(seed)
    q = torch.zeros(1, n_heads, kv_len, head_dim)
    k = torch.randn(1, n_kv_heads, kv_len, head_dim, generator=g)
    v = torch.randn(1, n_kv_heads, kv_len, head_dim, generator=g)
    cast = {"dtype": dtype, "device": device}
    base = attn(q.to(**cast), k.to(**cast), v.to(**cast), None)[:, -1].to(torch.float64)
    effects: dict[int, float] = {}
    for back in sorted({0, max(0, window - 2), window - 1, window, window + 1}):
        v2 = v.clone()
        v2[:, :, kv_len - 1 - back] += float(window)
        out = attn(q.to(**cast), k.to(**cast), v2.to(**cast), None)[:, -1].to(torch.float64)
        effects[back] = float((out - base).abs().max().cpu())
    return effects


def check_window_boundary(
    attn: AttentionFn,
    label: str,
    *,
    window: int,
    seen_tol: float = 0.05,
    unseen_tol: float = 0.01,
    **kw: object,
) -> dict[int, float]:
    """Assert the ``i - W < j <= i`` window: keys 0..W-1 back are seen (effect ~1), W and W+1 back are not."""
    effects = window_boundary_effects(attn, window=window, **kw)  # type: ignore[arg-type]
    bad = [
        f"{back} back: effect {eff:.4g} (want {'~1' if back < window else '0'})"
        for back, eff in effects.items()
        if (abs(eff - 1.0) > seen_tol if back < window else eff > unseen_tol)
    ]
    hint = ""
    if bad and effects.get(window, 0.0) > 0.5:
        hint = " (key W back is seen: looks like the legacy i-W <= j convention, W+1 keys)"
    assert not bad, (
        f"window_boundary failed for {label} at W={window}: "
        + "; ".join(bad)
        + hint
        + f"\n  versions: {one_line()}"
    )
    return effects


def _beyond(diff: torch.Tensor, atol: float | torch.Tensor) -> tuple[float, float]:
    """(largest difference, largest excess over ``atol``), ``atol`` a number or a tensor of ``diff``'s shape."""
    if not diff.numel():
        return 0.0, -1.0
    return float(diff.max()), float((diff - atol).max())


def check_batch_invariance(
    attn: AttentionFn,
    inputs: Inputs,
    label: str,
    *,
    atol: float | torch.Tensor,
) -> float:
    """Each row of a batch equals that row run alone, at its real queries, within ``atol`` (a number,
    or a bound per output element, ``(bsz, q_len, features)``); returns the max difference."""
    q, k, v, kv = inputs.q, inputs.k, inputs.v, inputs.key_valid
    full = attn(q, k, v, kv).to(torch.float64)
    valid = valid_queries(kv, q.shape[2])
    bound = torch.as_tensor(atol, dtype=torch.float64).expand_as(full).cpu()
    worst = 0.0
    for b in range(q.shape[0]):
        row_kv = None if kv is None else kv[b : b + 1]
        alone = attn(q[b : b + 1], k[b : b + 1], v[b : b + 1], row_kv).to(torch.float64)
        diff, tol = (full[b : b + 1] - alone).abs().cpu(), bound[b : b + 1]
        if valid is not None:
            diff, tol = diff[valid[b : b + 1].cpu()], tol[valid[b : b + 1].cpu()]
        d, excess = _beyond(diff, tol)
        assert excess <= 0, (
            f"batch_invariance failed for {label}: row {b} differs by {d:.3g} alone vs in batch, "
            f"{excess:.3g} beyond the bound"
        )
        worst = max(worst, d)
    return worst


def check_padding_invariance(
    attn: AttentionFn,
    inputs: Inputs,
    label: str,
    *,
    pad: int,
    side: str,
    atol: float | torch.Tensor,
    seed: int = 0,
) -> float:
    """An unpadded batch equals the same batch with ``pad`` junk tokens on ``side``, at the real queries,
    within ``atol`` (a number, or a bound per element of the unpadded output).

    ``inputs`` must be unpadded with q_len == kv_len. The junk keys/values are random, so a pad key
    that leaks into attention moves the output. Returns the max difference.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    q, k, v = inputs.q, inputs.k, inputs.v
    if inputs.key_valid is not None or q.shape[2] != k.shape[2]:
        raise ValueError("check_padding_invariance needs unpadded inputs with q_len == kv_len")
    g = torch.Generator().manual_seed(seed)

    def junk(x: torch.Tensor) -> torch.Tensor:
        return (torch.randn(*x.shape[:2], pad, x.shape[3], generator=g) * 3).to(x.dtype).to(x.device)

    def put(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([junk(x), x] if side == "left" else [x, junk(x)], dim=2)

    bsz, n = q.shape[0], q.shape[2]
    real = slice(pad, n + pad) if side == "left" else slice(0, n)
    key_valid = torch.zeros(bsz, n + pad, dtype=torch.long, device=q.device)
    key_valid[:, real] = 1
    ref = attn(q, k, v, None).to(torch.float64)
    out = attn(put(q), put(k), put(v), key_valid).to(torch.float64)[:, real]
    d, excess = _beyond((out - ref).abs().cpu(), torch.as_tensor(atol, dtype=torch.float64).cpu())
    assert excess <= 0, (
        f"padding_invariance failed for {label}: {side} pad {pad} moves real outputs by {d:.3g}, "
        f"{excess:.3g} beyond the bound"
    )
    return d
