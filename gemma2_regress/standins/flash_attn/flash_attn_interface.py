"""flash-attn 2.6.3's three attention entry points, as a plain PyTorch reference.

Semantics, as documented in Dao-AILab/flash-attention v2.6.3 (``flash_attn/flash_attn_interface.py``
docstrings; ``tests/test_flash_attn.py``'s ``attention_ref`` / ``construct_local_mask``; and
``csrc/flash_attn/flash_api.cpp`` / ``src/softmax.h`` where the docstrings are silent):

- Layouts: q ``(batch, seqlen_q, nheads, headdim)``, k / v ``(batch, seqlen_k, nheads_k, headdim)``;
  ``nheads`` a multiple of ``nheads_k``, query head ``h`` reads kv head ``h // (nheads // nheads_k)``.
- Scores: ``S = (q k^T) * softmax_scale`` (default ``headdim ** -0.5``); with ``softcap > 0``,
  ``S = softcap * tanh(S / softcap)``, applied before masking; ``softcap == 0`` turns it off.
- Which keys a query sees (bottom-right alignment): with ``window_size = (left, right)``, query ``i``
  sees key ``j`` iff ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``; a
  negative bound (-1) is unbounded on its side; ``causal=True`` sets ``right = 0``. So
  ``causal=True, window_size=(W - 1, 0)`` lets the last query see exactly its ``W`` last keys.
- A query row that sees no key outputs 0 (the docstrings' "If the row of the mask is all zero, the
  output will be zero"), and its log-sum-exp is ``+inf`` (``softmax.h``: ``sum == 0 -> INFINITY``).
- ``softmax_lse`` is the natural-log sum of ``exp(S)`` over the keys the row sees, float32.
- Output dtype = input dtype; this reference accumulates in float32 (float64 for float64 inputs).

Where this stand-in differs from the real package, on purpose:

- It runs on any device and dtype (the real kernels take only fp16/bf16 on sm80+ GPUs).
- It checks what the kernels leave unchecked and the caller must get right: sequence lengths within
  ``max_seqlen_*``, ``cu_seqlens`` non-decreasing and within the tensors, cache lengths within the
  cache. It writes NaN into varlen output rows that no ``cu_seqlens_q`` segment covers (flash-attn
  leaves them unwritten: reading them is the caller's bug, made visible).
- ``return_attn_probs=True`` returns ``S_dmask = None``: what flash-attn 2.6.3 returns when
  ``dropout_p == 0`` (the probabilities exist only with dropout; newer releases return an empty tensor).
- Not implemented, each raising a one-line ``NotImplementedError`` naming the argument: ``dropout_p``
  other than 0, ``alibi_slopes``, ``rotary_cos`` / ``rotary_sin``, ``block_table`` (paged KV cache).
  ``deterministic`` is accepted (this forward is deterministic; so is flash-attn's), as are
  ``num_splits`` and ``rotary_interleaved`` (a performance knob, and an option of the rotary it lacks).
- The compiled extension, ``flash_attn_cuda`` (its name in 2.6.3; ``flash_attn_gpu`` from 2.7.1, which
  Unsloth tries first), is a stub: importing it works (Unsloth imports it to test the install), calling
  anything on it raises.
- A right bound of -1 with a left bound >= 0 is unbounded, as ``flash_api.cpp`` (``set_params_fprop``)
  makes it; the test reference ``construct_local_mask`` reads that -1 literally, a case the real
  tests never draw (their local windows have both bounds >= 0).
"""

from __future__ import annotations

import itertools
import math
import operator
import types
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

__all__ = [
    "flash_attn_cuda",
    "flash_attn_func",
    "flash_attn_gpu",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
]

MAX_HEADDIM = 256  # flash-attn 2.6.3's forward kernels: "only supports head dimension at most 256"


class _CudaExtensionStub(types.ModuleType):
    """Where flash-attn's compiled extension would be. Any public attribute is a function that raises,
    so a caller that reaches past the Python interface into the kernels fails loudly, naming the call."""

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        if name.startswith("_"):  # introspection (copy, pickle, inspect) must see a plain module
            raise AttributeError(name)

        def unavailable(*args: object, **kwargs: object) -> NoReturn:
            raise NotImplementedError(
                f"flash-attn stand-in: {self.__name__}.{name} is flash-attn's CUDA extension, which this "
                "pure-PyTorch reference does not have; call flash_attn_func / flash_attn_varlen_func / "
                "flash_attn_with_kvcache instead"
            )

        return unavailable


flash_attn_gpu = _CudaExtensionStub("flash_attn_2_cuda")
flash_attn_cuda = flash_attn_gpu  # the name in 2.6.3 (flash_attn_gpu from 2.7.1); Unsloth tries both


# --- argument checks --------------------------------------------------------------------------------


def _not_implemented(name: str, why: str) -> NoReturn:
    raise NotImplementedError(f"flash-attn stand-in: {name} {why}")


def _check_unsupported(dropout_p: float, alibi_slopes: torch.Tensor | None) -> None:
    if dropout_p != 0:
        _not_implemented("dropout_p", f"must be 0.0 (evaluation); got {dropout_p}")
    if alibi_slopes is not None:
        _not_implemented("alibi_slopes", "is not supported (pass None)")


def _softcap(softcap: float) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"flash-attn stand-in: softcap must be a float (0.0 = off), got {softcap!r}")
    if softcap < 0 or math.isnan(softcap):
        raise ValueError(f"flash-attn stand-in: softcap must be >= 0 (0.0 = off), got {softcap}")
    return float(softcap)


def _window(window_size: Sequence[int], causal: bool) -> tuple[int, int]:
    """``(left, right)`` with -1 for an unbounded side; ``causal`` makes ``right`` 0."""
    try:
        left, right = (int(operator.index(w)) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"flash-attn stand-in: window_size must be two ints (left, right), got {window_size!r}"
        ) from None
    left, right = max(left, -1), max(right, -1)  # the kernels treat any negative bound as unbounded
    return (left, 0) if causal else (left, right)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_dims: int) -> None:
    """Shapes, dtypes and devices of q and k / v, as flash-attn's ``CHECK_SHAPE`` / dtype checks."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != q_dims:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"flash-attn stand-in: {name} must be a {q_dims}-d tensor, got {got}")
        if not t.is_floating_point():
            raise ValueError(f"flash-attn stand-in: {name} must be floating point, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"flash-attn stand-in: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(
            f"flash-attn stand-in: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    if k.shape != v.shape:
        raise ValueError(f"flash-attn stand-in: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    nheads, nheads_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"flash-attn stand-in: headdim of q ({d}) and k ({k.shape[-1]}) differ")
    if d > MAX_HEADDIM:
        raise ValueError(
            f"flash-attn stand-in: headdim {d} > {MAX_HEADDIM}, which flash-attn does not support"
        )
    if nheads_k == 0 or nheads % nheads_k:
        raise ValueError(
            f"flash-attn stand-in: nheads ({nheads}) must be a multiple of nheads_k ({nheads_k})"
        )


def _int32_vector(name: str, t: object, length: int) -> list[int]:
    """A ``(length,)`` int32 tensor's values (flash-attn checks ``dtype == torch.int32``)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or tuple(t.shape) != (length,):
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(
            f"flash-attn stand-in: {name} must be an int32 tensor of shape ({length},), got {got}"
        )
    return [int(x) for x in t.tolist()]


# --- the computation --------------------------------------------------------------------------------


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    softcap: float,
    window: tuple[int, int],
    key_start: list[int],
    key_end: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q ``(b, sq, h, d)`` over k / v ``(b, sk, hk, d)``: ``(out in q.dtype, lse float32 (b, h, sq))``.

    Row ``r``'s keys are positions ``key_start[r] <= j < key_end[r]``, counted from ``key_start[r]``
    (``n = key_end - key_start`` of them); query ``i`` sits at key position ``i + n - sq`` (bottom-right)
    and sees the keys of ``window`` around it.
    """
    b, sq, h, _ = q.shape
    sk, hk = k.shape[1], k.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dev = q.device
    if sk == 0:  # no keys at all: every row sees none (amax below needs a key to reduce over)
        return torch.zeros_like(q), torch.full((b, h, sq), math.inf, device=dev)
    start = torch.tensor(key_start, device=dev).view(b, 1, 1)
    end = torch.tensor(key_end, device=dev).view(b, 1, 1)
    i = torch.arange(sq, device=dev).view(1, sq, 1)
    j = torch.arange(sk, device=dev).view(1, 1, sk)
    at = i + (end - start) - sq  # the query's own position, counted from key_start
    pos = j - start
    seen = (j >= start) & (j < end)
    left, right = window
    if left >= 0:
        seen = seen & (pos >= at - left)
    if right >= 0:
        seen = seen & (pos <= at + right)

    groups = h // hk
    qh = q.to(acc).transpose(1, 2)  # (b, h, sq, d)
    kh = k.to(acc).repeat_interleave(groups, dim=2).transpose(1, 2)  # head h -> kv head h // groups
    vh = v.to(acc).repeat_interleave(groups, dim=2).transpose(1, 2)
    scores = (qh @ kh.transpose(-1, -2)) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~seen[:, None], -math.inf)
    # Softmax written out so that a row seeing no key gives weights 0 (not NaN) and a finite gradient.
    top = scores.amax(-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, 0.0)
    weights = torch.exp(scores - top)
    total = weights.sum(-1, keepdim=True)
    some = total > 0
    probs = weights / torch.where(some, total, 1.0)
    out = (probs @ vh).transpose(1, 2).to(q.dtype)
    lse = torch.where(some, top + torch.log(torch.where(some, total, 1.0)), math.inf)
    return out, lse.squeeze(-1).to(torch.float32)


# --- the interface ----------------------------------------------------------------------------------


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, None]:
    """Dense attention: q ``(batch, seqlen_q, nheads, d)``, k / v ``(batch, seqlen_k, nheads_k, d)``.

    Query ``i`` sees key ``j`` iff ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``
    (``window_size = (left, right)``, -1 unbounded, ``causal`` means ``right = 0``); a row that sees no
    key gives 0. Returns ``out`` ``(batch, seqlen_q, nheads, d)`` in q's dtype, or with
    ``return_attn_probs`` ``(out, softmax_lse (batch, nheads, seqlen_q) float32, None)``.
    Differentiable (plain PyTorch autograd).
    """
    _check_unsupported(dropout_p, alibi_slopes)
    _check_qkv(q, k, v, q_dims=4)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"flash-attn stand-in: batch of q ({q.shape[0]}) and k ({k.shape[0]}) differ")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    b, sk = q.shape[0], k.shape[1]
    out, lse = _attend(
        q,
        k,
        v,
        scale=scale,
        softcap=_softcap(softcap),
        window=_window(window_size, causal),
        key_start=[0] * b,
        key_end=[sk] * b,
    )
    return (out, lse, None) if return_attn_probs else out


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, None]:
    """Packed sequences: q ``(total_q, nheads, d)``, k / v ``(total_k, nheads_k, d)``; sequence ``s`` is
    rows ``cu_seqlens_q[s]:cu_seqlens_q[s+1]`` of q and ``cu_seqlens_k[s]:cu_seqlens_k[s+1]`` of k / v
    (int32 ``(nseq + 1,)``). Each sequence attends only within itself, as ``flash_attn_func`` would on it
    alone (bottom-right alignment on its own two lengths). Returns ``out`` ``(total_q, nheads, d)``,
    or ``(out, softmax_lse (nheads, total_q) float32, None)``; rows no segment covers are NaN.
    """
    _check_unsupported(dropout_p, alibi_slopes)
    if block_table is not None:
        _not_implemented("block_table", "(paged KV) is not supported (pass None)")
    _check_qkv(q, k, v, q_dims=3)
    nseq = cu_seqlens_q.shape[0] - 1 if isinstance(cu_seqlens_q, torch.Tensor) else -1
    cu_q = _int32_vector("cu_seqlens_q", cu_seqlens_q, max(nseq + 1, 1))
    cu_k = _int32_vector("cu_seqlens_k", cu_seqlens_k, len(cu_q))
    for name, cu, total, longest in (
        ("q", cu_q, q.shape[0], max_seqlen_q),
        ("k", cu_k, k.shape[0], max_seqlen_k),
    ):
        lengths = [b - a for a, b in itertools.pairwise(cu)]
        if cu[0] < 0 or any(n < 0 for n in lengths) or cu[-1] > total:
            raise ValueError(
                f"flash-attn stand-in: cu_seqlens_{name} must be non-decreasing within 0..{total}, got {cu}"
            )
        if lengths and max(lengths) > longest:
            raise ValueError(
                f"flash-attn stand-in: a sequence of {max(lengths)} exceeds max_seqlen_{name}={longest}"
            )
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    cap, window = _softcap(softcap), _window(window_size, causal)
    nheads = q.shape[1]
    # Each sequence runs alone on its own slices: nothing of another sequence enters its arithmetic.
    outs, lses = [q.new_full((cu_q[0], *q.shape[1:]), math.nan)], [q.new_full((nheads, cu_q[0]), math.nan)]
    for s in range(len(cu_q) - 1):
        qs, ks = q[cu_q[s] : cu_q[s + 1]], k[cu_k[s] : cu_k[s + 1]]
        o, lse = _attend(
            qs[None],
            ks[None],
            v[cu_k[s] : cu_k[s + 1]][None],
            scale=scale,
            softcap=cap,
            window=window,
            key_start=[0],
            key_end=[ks.shape[0]],
        )
        outs.append(o[0])
        lses.append(lse[0])
    tail = q.shape[0] - cu_q[-1]
    outs.append(q.new_full((tail, *q.shape[1:]), math.nan))
    lses.append(q.new_full((nheads, tail), math.nan))
    out = torch.cat(outs)
    if not return_attn_probs:
        return out
    return out, torch.cat(lses, dim=1).to(torch.float32), None


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    cache_seqlens: int | torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: torch.Tensor | None = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q ``(batch, seqlen_q, nheads, d)`` over a KV cache ``(batch_cache, seqlen_cache, nheads_k, d)``.

    Row ``b`` uses cache row ``cache_batch_idx[b]`` (default ``b``). If ``k`` / ``v``
    ``(batch, seqlen_new, nheads_k, d)`` are given they are first written *into the caches in place*
    at positions ``cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1``. Row ``b``'s keys are then
    positions ``cache_leftpad[b] <= j < cache_seqlens[b] + seqlen_new`` (``cache_seqlens`` an int or
    int32 ``(batch,)``, default the whole cache; ``cache_leftpad`` int32 ``(batch,)``, default 0),
    counted from ``cache_leftpad[b]``; the window and ``causal`` apply to those positions with
    bottom-right alignment, as in ``flash_attn_func``. Returns ``out`` ``(batch, seqlen_q, nheads, d)``,
    or ``(out, softmax_lse (batch, nheads, seqlen_q) float32)``. No backward (as flash-attn): runs
    under ``torch.no_grad``.
    """
    if rotary_cos is not None or rotary_sin is not None:
        _not_implemented("rotary_cos/rotary_sin", "(rotary inside the kernel) is not supported (pass None)")
    if block_table is not None:
        _not_implemented("block_table", "(paged KV cache) is not supported (pass None)")
    _check_unsupported(0.0, alibi_slopes)
    _check_qkv(q, k_cache, v_cache, q_dims=4)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"flash-attn stand-in: {name} must have a contiguous last dimension")
    if (k is None) != (v is None):
        raise ValueError("flash-attn stand-in: k and v must be given together")
    b = q.shape[0]
    batch_cache, seqlen_cache = k_cache.shape[0], k_cache.shape[1]
    rows = list(range(b)) if cache_batch_idx is None else _int32_vector("cache_batch_idx", cache_batch_idx, b)
    if any(r < 0 or r >= batch_cache for r in rows):
        raise ValueError(
            f"flash-attn stand-in: batch {b} does not index a cache of batch {batch_cache}: {rows}"
        )
    new = 0
    if k is not None:
        if cache_seqlens is None:
            raise ValueError("flash-attn stand-in: cache_seqlens is required when k / v are appended")
        _check_qkv(q, k, v, q_dims=4)
        if k.shape[0] != b or k.shape[2] != k_cache.shape[2]:
            raise ValueError(
                f"flash-attn stand-in: k {tuple(k.shape)} does not match q batch {b} and cache heads {k_cache.shape[2]}"
            )
        new = k.shape[1]
    if cache_seqlens is None:
        lengths = [seqlen_cache] * b
    elif isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        lengths = [cache_seqlens] * b
    else:
        lengths = _int32_vector("cache_seqlens", cache_seqlens, b)
    pads = [0] * b if cache_leftpad is None else _int32_vector("cache_leftpad", cache_leftpad, b)
    for row, (n, p) in enumerate(zip(lengths, pads, strict=True)):
        if not 0 <= p <= n or n + new > seqlen_cache:
            raise ValueError(
                f"flash-attn stand-in: row {row}: need 0 <= cache_leftpad ({p}) <= cache_seqlens ({n}) and "
                f"cache_seqlens + {new} new <= seqlen_cache ({seqlen_cache})"
            )
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    cap, window = _softcap(softcap), _window(window_size, causal)
    with torch.no_grad():
        if k is not None and v is not None:
            for row, (cache_row, n) in enumerate(zip(rows, lengths, strict=True)):
                k_cache[cache_row, n : n + new] = k[row]
                v_cache[cache_row, n : n + new] = v[row]
        index = torch.tensor(rows, device=k_cache.device)
        out, lse = _attend(
            q,
            k_cache[index],
            v_cache[index],
            scale=scale,
            softcap=cap,
            window=window,
            key_start=pads,
            key_end=[n + new for n in lengths],
        )
    return (out, lse) if return_softmax_lse else out
